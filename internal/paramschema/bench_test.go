package paramschema

import "testing"

func BenchmarkValidate(b *testing.B) {
	s := raw(`{"type":"object","properties":{"items":{"type":"integer","minimum":0,"maximum":1000000},"item_ms":{"type":"integer","minimum":0}},"additionalProperties":false}`)
	p := raw(`{"items":10,"item_ms":5}`)
	for b.Loop() {
		if err := Validate(s, p); err != nil {
			b.Fatal(err)
		}
	}
}
