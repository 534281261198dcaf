package revenuecat_test

import (
	"testing"

	"jobrun.dev/jobrun/handlers/revenuecat"
)

// TestSignKnownAnswer checks the signature against a value computed outside
// Go, once, with
//
//	printf '%s' '{"integration_id":"int-1","project_id":"project-1","run_id":"run-1","records":[]}' |
//		openssl dgst -sha256 -hmac 'whsec-known-answer-secret'
//
// so that a wrong hash, key or encoding cannot agree with itself.
func TestSignKnownAnswer(t *testing.T) {
	body := []byte(`{"integration_id":"int-1","project_id":"project-1","run_id":"run-1","records":[]}`)
	const want = "sha256=b0c76c909d8b6d7478de712626fe47356eb8b78921880f739a86ef28f27acd91"
	if got := revenuecat.Sign([]byte("whsec-known-answer-secret"), body); got != want {
		t.Errorf("Sign = %q, want %q", got, want)
	}
	if revenuecat.SignatureHeader != "X-Jobrun-Signature" {
		t.Errorf("SignatureHeader = %q, want X-Jobrun-Signature (the product's endpoint reads that one)", revenuecat.SignatureHeader)
	}
}
