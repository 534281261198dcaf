package testenv

import (
	"net/url"
	"testing"

	"k8s.io/client-go/rest"

	"jobrun.dev/jobrun/internal/cutproxy"
)

// Proxy is a TCP proxy on loopback in front of the API server that a test
// can cut (every connection dropped, new ones refused, as when the API
// server is down or restarting) and restore on the same address.
type Proxy struct {
	t testing.TB
	*cutproxy.Proxy
}

// NewProxy starts a proxy to the API server of cfg and returns it with a
// copy of cfg that goes through it (TLS passes through unchanged: the
// server's certificate is valid for 127.0.0.1 on any port). It is cut when
// the test ends.
func NewProxy(t testing.TB, cfg *rest.Config) (*Proxy, *rest.Config) {
	t.Helper()
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cutproxy.New(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Cut)
	proxied := rest.CopyConfig(cfg)
	proxied.Host = "https://" + p.Addr()
	return &Proxy{t: t, Proxy: p}, proxied
}

// Restore listens again on the same address; it fails the test if it
// cannot.
func (p *Proxy) Restore() {
	p.t.Helper()
	if err := p.Proxy.Restore(); err != nil {
		p.t.Fatal(err)
	}
}
