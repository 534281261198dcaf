package main

import (
	"fmt"
)

// Figure is one measured value, with its ceiling when it has one.
type Figure struct {
	Scenario string  `json:"scenario"`
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Ceiling  float64 `json:"ceiling,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Target   string  `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
	// Breakdown splits Value into its parts, such as writes per object by
	// verb and resource.
	Breakdown map[string]float64 `json:"breakdown,omitempty"`
}

func (b *bench) add(f Figure) {
	if f.Ceiling > 0 {
		f.Ratio = f.Value / f.Ceiling
	}
	b.figures = append(b.figures, f)
	b.log("%s: %s = %.3g %s%s", f.Scenario, f.Name, f.Value, f.Unit, f.logBreakdown())
}

// logBreakdown is f's Breakdown for the log, largest part first: " (a
// 3.00, b 1.00)", or "" if it has none.
func (f Figure) logBreakdown() string {
	if len(f.Breakdown) == 0 {
		return ""
	}
	return " (" + breakdown(f.Breakdown) + ")"
}

func met(ok bool) *bool { return &ok }

func (b *bench) print() {
	fmt.Printf("%-12s %-52s %12s %-8s %12s %7s  %s\n", "scenario", "figure", "value", "unit", "ceiling", "ratio", "target")
	for _, f := range b.figures {
		ceiling, ratio := "", ""
		if f.Ceiling > 0 {
			ceiling, ratio = fmt.Sprintf("%.4g", f.Ceiling), fmt.Sprintf("%.2f", f.Ratio)
		}
		target := f.Target
		if f.Met != nil {
			target += map[bool]string{true: " (met)", false: " (MISSED)"}[*f.Met]
		}
		fmt.Printf("%-12s %-52s %12.4g %-8s %12s %7s  %s\n", f.Scenario, f.Name, f.Value, f.Unit, ceiling, ratio, target)
	}
}
