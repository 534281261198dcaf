package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseLabels(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string
		wantErr  bool
	}{
		{"none", ``, map[string]string{}, false},
		{"apiserver_request_total", `code="409",component="apiserver",dry_run="",group="jobs.jobrun.dev",resource="jobruns",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"`,
			map[string]string{"code": "409", "component": "apiserver", "dry_run": "", "group": "jobs.jobrun.dev", "resource": "jobruns", "scope": "resource", "subresource": "status", "verb": "PATCH", "version": "v1alpha1"}, false},
		{"escapes", `a="x\"y,z",b="1\\2\n"`, map[string]string{"a": `x"y,z`, "b": "1\\2\n"}, false},
		{"no quotes", `a=x`, nil, true},
		{"unterminated", `a="x`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLabels(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseLabels(%q) error = %v, want error: %v", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); !tt.wantErr && diff != "" {
				t.Errorf("parseLabels(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestWriteKey(t *testing.T) {
	tests := []struct {
		labels map[string]string
		want   string
	}{
		{map[string]string{"verb": "POST", "resource": "pods", "code": "201"}, "POST pods"},
		{map[string]string{"verb": "PUT", "resource": "jobs", "subresource": "status", "code": "200"}, "PUT jobs/status"},
		{map[string]string{"verb": "PATCH", "resource": "jobruns", "subresource": "status", "code": "409"}, "PATCH jobruns/status (409)"},
	}
	for _, tt := range tests {
		if got := writeKey(tt.labels); got != tt.want {
			t.Errorf("writeKey(%v) = %q, want %q", tt.labels, got, tt.want)
		}
	}
}
