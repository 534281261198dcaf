// Package cutproxy is a TCP proxy on loopback that can be cut (every
// connection dropped, new ones refused, as when the API server is down or
// the network between it and a component fails) and restored on the same
// address. Fault tests put it between the Kubernetes API server and the
// components they test.
package cutproxy

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// Proxy forwards every connection on Addr to a target address.
type Proxy struct {
	addr   string
	target string

	mu    sync.Mutex
	l     net.Listener // nil while cut
	conns map[net.Conn]struct{}
}

// New starts a proxy on a free loopback port to target (host:port).
func New(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{addr: l.Addr().String(), target: target, l: l, conns: map[net.Conn]struct{}{}}
	go p.serve(l)
	return p, nil
}

// Addr is the proxy's address (host:port); it stays the same across cuts.
func (p *Proxy) Addr() string { return p.addr }

func (p *Proxy) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.l != l { // cut meanwhile
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut drops every connection and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Restore listens again on the same address; restoring a proxy that is not
// cut does nothing.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		return nil
	}
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("restoring the proxy on %s: %w", p.addr, err)
	}
	p.l = l
	go p.serve(l)
	return nil
}
