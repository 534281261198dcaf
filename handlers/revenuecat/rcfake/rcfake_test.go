package rcfake

import (
	"net/http"
	"strings"
	"testing"
)

// TestDestinationChecksSignatures: the fake ingest endpoint accepts a batch
// signed as the contract says (the value computed outside Go, see
// revenuecat's TestSignKnownAnswer) and refuses and counts anything else.
func TestDestinationChecksSignatures(t *testing.T) {
	d := NewDestination([]byte("whsec-known-answer-secret"))
	defer d.Close()
	body := `{"integration_id":"int-1","project_id":"project-1","run_id":"run-1","records":[]}`
	const good = "sha256=b0c76c909d8b6d7478de712626fe47356eb8b78921880f739a86ef28f27acd91"
	tests := []struct {
		name, signature string
		want            int
	}{
		{"signed with the secret", good, http.StatusOK},
		{"no signature", "", http.StatusUnauthorized},
		{"another byte", good[:len(good)-1] + "0", http.StatusUnauthorized},
		{"without the sha256= prefix", strings.TrimPrefix(good, "sha256="), http.StatusUnauthorized},
		{"another algorithm's name", "sha512=" + strings.TrimPrefix(good, "sha256="), http.StatusUnauthorized},
		{"not hex", "sha256=" + strings.Repeat("z", 64), http.StatusUnauthorized},
		{"truncated", good[:len(good)-2], http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, d.URL(), strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.signature != "" {
				req.Header.Set("X-Jobrun-Signature", tt.signature)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	if st := d.Stats(); st.Deliveries != 1 || st.BadSignatures != len(tests)-1 {
		t.Errorf("stats %+v, want 1 delivery and %d bad signatures", st, len(tests)-1)
	}
}
