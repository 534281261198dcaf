package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"jobrun.dev/jobrun/internal/selfsigned"
)

// MailServer is a real SMTP server (emersion/go-smtp) on loopback that
// keeps what it receives and can refuse the first few messages, offer TLS
// and require a login.
type MailServer struct {
	// Host and Port are where it listens.
	Host string
	Port int

	opts       MailOptions
	mu         sync.Mutex
	deliveries []Delivery
	refuse     int
}

// MailOptions says how a MailServer behaves; the zero value is a plain
// server that accepts everything.
type MailOptions struct {
	// Refuse is how many messages it refuses first, with a temporary error
	// (451).
	Refuse int
	// TLS is the server's TLS configuration (see NewTLSCert); nil: no TLS.
	// It is offered through STARTTLS unless ImplicitTLS is set.
	TLS *tls.Config
	// ImplicitTLS makes every connection TLS from its first byte (SMTPS).
	ImplicitTLS bool
	// Username and Password, when Username is set, are the one login the
	// server accepts (AUTH PLAIN, offered only over TLS when TLS is set);
	// mail from a session that did not log in is refused.
	Username, Password string
	// OnMessage, when set, is called with each message before the server
	// accepts it: a test can look at the world as it is at that moment.
	OnMessage func(raw string)
}

// Delivery is one message the server accepted, and how it came.
type Delivery struct {
	// Raw is the message as received.
	Raw string
	// TLS is whether the session was encrypted (STARTTLS or implicit TLS).
	TLS bool
	// Username is who logged in to the session; empty: nobody.
	Username string
}

// StartMailServer starts a plain one for t; it refuses the first refuse
// messages with a temporary error (451).
func StartMailServer(t testing.TB, refuse int) *MailServer {
	t.Helper()
	return StartMailServerWith(t, MailOptions{Refuse: refuse})
}

// StartMailServerWith starts one for t as opts say; it stops when t ends.
func StartMailServerWith(t testing.TB, opts MailOptions) *MailServer {
	t.Helper()
	m := &MailServer{opts: opts, refuse: opts.Refuse}
	srv := smtp.NewServer(m)
	srv.Domain = "localhost"
	// Without TLS, a login goes in the clear (loopback only); with it,
	// only after TLS: a client that skipped TLS finds no AUTH offered.
	srv.AllowInsecureAuth = opts.TLS == nil
	var l net.Listener
	var err error
	if opts.ImplicitTLS {
		l, err = tls.Listen("tcp", "127.0.0.1:0", opts.TLS)
	} else {
		srv.TLSConfig = opts.TLS
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(l.Addr().String())
	m.Host = host
	m.Port, _ = strconv.Atoi(port)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return m
}

// Received returns the messages received so far, raw.
func (m *MailServer) Received() []string {
	var raw []string
	for _, d := range m.Deliveries() {
		raw = append(raw, d.Raw)
	}
	return raw
}

// Deliveries returns the messages received so far, with how each came.
func (m *MailServer) Deliveries() []Delivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Delivery(nil), m.deliveries...)
}

// NewSession is go-smtp's Backend.
func (m *MailServer) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &mailSession{m: m, conn: c}, nil
}

type mailSession struct {
	m        *MailServer
	conn     *smtp.Conn
	username string
}

func (s *mailSession) Reset()        {}
func (s *mailSession) Logout() error { return nil }

// AuthMechanisms and Auth make the session a go-smtp AuthSession.
func (s *mailSession) AuthMechanisms() []string {
	if s.m.opts.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *mailSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, password string) error {
		if username != s.m.opts.Username || password != s.m.opts.Password {
			return smtp.ErrAuthFailed
		}
		s.username = username
		return nil
	}), nil
}

func (s *mailSession) Mail(string, *smtp.MailOptions) error {
	if s.m.opts.Username != "" && s.username == "" {
		return smtp.ErrAuthRequired
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.m.refuse > 0 {
		s.m.refuse--
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
	}
	return nil
}
func (s *mailSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *mailSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.m.opts.OnMessage != nil {
		s.m.opts.OnMessage(string(data))
	}
	_, isTLS := s.conn.TLSConnectionState()
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.deliveries = append(s.m.deliveries, Delivery{Raw: string(data), TLS: isTLS, Username: s.username})
	return nil
}

// NewTLSCert makes a self-signed certificate for 127.0.0.1 and localhost,
// valid for an hour: the server's TLS configuration, and the pool a client
// must trust to accept it.
func NewTLSCert(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	certPEM, keyPEM, pool, err := selfsigned.Loopback("jobrun test mail server", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, pool
}
