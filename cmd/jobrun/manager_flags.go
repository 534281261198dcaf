package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"jobrun.dev/jobrun/apiserver"
	"jobrun.dev/jobrun/controllers"
	"jobrun.dev/jobrun/internal/notify"
)

// managerFlags are the manager role's settings.
type managerFlags struct {
	kubeconfig              string
	metricsAddr             string
	metricsSecure           bool
	probeAddr               string
	pprofAddr               string
	leaderElect             bool
	leaderElectionNamespace string
	leaseDuration           time.Duration
	renewDeadline           time.Duration
	retryPeriod             time.Duration
	runnerServiceAccount    string
	allowedServiceAccounts  []string
	allNamespaces           bool
	workers                 int
	kubeAPIQPS              float64
	kubeAPIBurst            int
	apiAddr                 string
	namespace               string
	jwksURL                 string
	corsAllowedOrigins      string
	jwtIssuer               string
	jwtAudience             string
	jwtMaxLifetime          time.Duration
	runControllers          bool
	jwtSecretFile           string
	streamTicketKeyFile     string
	smtp                    notify.SMTP
	smtpPasswordFile        string
	archive                 archiveFlags
	kueue                   kueueFlags
	zap                     zap.Options
}

// kueueFlags send run pods through Kueue.
type kueueFlags struct {
	enabled bool
	// teams and system are the ClusterQueues of the teams' and the system
	// LocalQueues.
	teams, system string
	// positionInterval is how often queued runs' positions are read (0:
	// never); positionLimit how many per LocalQueue.
	positionInterval time.Duration
	positionLimit    int
	// visibilityURL and visibilityCAFile reach Kueue's visibility server
	// directly; empty: through the API server (Kueue's APIService).
	visibilityURL, visibilityCAFile string
}

// archiveFlags configure the run archive (PostgreSQL).
type archiveFlags struct {
	// dsn is the archive's connection string; empty: no archive.
	dsn string
	// liveTTL is how long a finished, archived run stays in the API server.
	liveTTL time.Duration
	// retention is how long the archive keeps a finished run; 0: forever.
	retention time.Duration
}

// parseManagerFlags parses and checks the manager role's arguments.
func parseManagerFlags(args []string) (*managerFlags, error) {
	f := &managerFlags{}
	fs := flag.NewFlagSet("jobrun manager", flag.ContinueOnError)
	f.bind(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// bind defines the manager's flags on fs, with f's fields as their values.
func (f *managerFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Empty: $KUBECONFIG, else the in-cluster service account.")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", ":8443", "Address of the Prometheus metrics endpoint; 0 disables it.")
	fs.BoolVar(&f.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, for callers authenticated and authorized by the API server.")
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	fs.StringVar(&f.pprofAddr, "pprof-bind-address", "", "Address of Go's /debug/pprof endpoints (profiles, the heap after a GC with ?gc=1), such as 127.0.0.1:6060; empty: not served. Unauthenticated: bind it to loopback.")
	fs.BoolVar(&f.leaderElect, "leader-elect", true, "Elect a leader, so that only one of several replicas reconciles.")
	fs.StringVar(&f.leaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader-election Lease. Empty: the pod's own namespace (in a cluster).")
	fs.DurationVar(&f.leaseDuration, "leader-elect-lease-duration", 15*time.Second, "How long a leader's Lease lasts without renewal: how long standbys wait after a leader crashed.")
	fs.DurationVar(&f.renewDeadline, "leader-elect-renew-deadline", 10*time.Second, "How long the leader keeps trying to renew its Lease before it gives up leading (and exits).")
	fs.DurationVar(&f.retryPeriod, "leader-elect-retry-period", 2*time.Second, "How often candidates try to take the Lease and the leader renews it.")
	fs.StringVar(&f.runnerServiceAccount, "runner-service-account", controllers.DefaultRunnerServiceAccount, "Service account of run pods whose JobType template names none.")
	fs.Func("allowed-service-accounts", "Comma-separated service accounts that a JobType's pod template may name besides the runner's; a template naming another gets no pod (default: none).", func(v string) error {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				f.allowedServiceAccounts = append(f.allowedServiceAccounts, name)
			}
		}
		return nil
	})
	fs.BoolVar(&f.allNamespaces, "all-namespaces", false, "Reconcile runs, job types and schedules in every namespace (needs cluster-wide RBAC: the chart's manager.clusterWide); default: only in --namespace.")
	fs.BoolVar(&f.runControllers, "run-controllers", true, "Run the controllers. false with --leader-elect=false and --api-bind-address makes a stateless REST API replica, scaled on its own.")
	fs.IntVar(&f.workers, "jobrun-workers", 16, "How many runs the JobRun controller reconciles at once.")
	fs.Float64Var(&f.kubeAPIQPS, "kube-api-qps", -1, "Requests per second the manager may send to the API server on average (a run costs 1 write from creation to pod, ~7 writes and a few reads over its life); negative: no limit of its own, the API server's priority and fairness queues them.")
	fs.IntVar(&f.kubeAPIBurst, "kube-api-burst", 0, "Requests the manager may send at once beyond --kube-api-qps; 0: twice --kube-api-qps.")
	fs.StringVar(&f.apiAddr, "api-bind-address", "", "Address of the Jobs REST API, such as 127.0.0.1:8080; empty: not served. Needs $JOBRUN_JWT_SECRET.")
	fs.StringVar(&f.jwksURL, "jwks-url", "", "URL of the identity provider's JSON Web Key Set: accept RS256/ES256 JWTs signed by its keys instead of HS256 ones.")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "The iss every JWT must carry (the identity provider's issuer URL). Required with --jwks-url; optional with HS256.")
	fs.StringVar(&f.jwtAudience, "jwt-audience", "", "The aud every JWT must include (this API's identifier at the identity provider). Required with --jwks-url; optional with HS256.")
	fs.DurationVar(&f.jwtMaxLifetime, "jwt-max-token-lifetime", apiserver.DefaultMaxTokenLifetime, "Longest JWT lifetime accepted: a token whose exp-iat, or exp-now, is longer is refused.")
	fs.StringVar(&f.corsAllowedOrigins, "api-cors-allowed-origins", "", "Comma-separated origins whose browser pages may call the REST API (CORS), such as https://app.example.com; * for any. Empty: no CORS headers.")
	fs.StringVar(&f.jwtSecretFile, "jwt-secret-file", "", "File holding the HS256 secret (e.g. mounted from a Secret); default: $JOBRUN_JWT_SECRET.")
	fs.StringVar(&f.streamTicketKeyFile, "stream-ticket-key-file", "", "File holding the key (at least 32 bytes) that signs the REST API's stream tickets (for browsers' event streams); every REST replica must have the same one. Default: derived from the HS256 JWT secret; with --jwks-url and no key file, a random key per process, so a ticket only works on the replica that issued it (sticky sessions).")
	fs.StringVar(&f.smtp.Host, "smtp-host", "", "Mail server for run notifications (notify: true); empty: none are sent, and runs record why.")
	fs.IntVar(&f.smtp.Port, "smtp-port", 587, "Mail server port.")
	fs.StringVar(&f.smtp.From, "smtp-from", "jobrun@localhost", "Sender address of notifications.")
	fs.StringVar(&f.smtp.Username, "smtp-username", "", "Mail server user (PLAIN auth); empty: no auth.")
	fs.StringVar(&f.smtpPasswordFile, "smtp-password-file", "", "File holding the mail server password (mounted from a Secret).")
	fs.StringVar(&f.smtp.TLS, "smtp-tls", "starttls", "starttls (required), tls (implicit) or none (loopback only).")
	fs.DurationVar(&f.smtp.RetryWindow, "smtp-retry-window", notify.DefaultRetryWindow, "How long after a run ends its email is retried while the mail server fails (backoff 5s doubling to 5m); the first failure after it is final.")
	fs.StringVar(&f.archive.dsn, "archive-dsn", os.Getenv("JOBRUN_ARCHIVE_DSN"), "PostgreSQL connection string of the run archive, such as postgres://jobrun@db:5432/jobrun?sslmode=verify-full (default $JOBRUN_ARCHIVE_DSN, which the chart sets from a Secret). Empty: no archive; finished runs stay in the API server until their JobType's TTL or history limit deletes them.")
	fs.DurationVar(&f.archive.liveTTL, "archive-live-ttl", time.Hour, "With an archive: how long a finished, archived run stays in the API server (kubectl) before it is deleted; the REST API goes on serving it from the archive. A JobType's shorter ttlSecondsAfterFinished wins.")
	fs.DurationVar(&f.archive.retention, "archive-retention", 90*24*time.Hour, "With an archive: how long it keeps a run after the run finished; older rows are deleted in small batches. 0: forever.")
	fs.BoolVar(&f.kueue.enabled, "kueue", false, "Admit runs through Kueue: each run gets a Kueue Workload, in the LocalQueue jobrun-team-<team> (created on demand) or, for system runs, jobrun-system, and its pod once Kueue admits it. A run waiting for admission is pending with condition Queued; its start timeout counts from its admission.")
	fs.StringVar(&f.kueue.teams, "kueue-team-cluster-queue", "jobrun-teams", "With --kueue: the ClusterQueue the teams' LocalQueues point at.")
	fs.StringVar(&f.kueue.system, "kueue-system-cluster-queue", "jobrun-system", "With --kueue: the ClusterQueue of the system LocalQueue (capacity team runs cannot take).")
	fs.DurationVar(&f.kueue.positionInterval, "kueue-position-interval", 10*time.Second, "With --kueue: how often the leader reads queued runs' positions from Kueue's visibility API (one request per LocalQueue with pending runs) into their Queued condition; 0: never.")
	fs.IntVar(&f.kueue.positionLimit, "kueue-position-limit", 50, "With --kueue: how many queued runs of each LocalQueue, from the front, get their position.")
	fs.StringVar(&f.kueue.visibilityURL, "kueue-visibility-url", "", "With --kueue: the URL of Kueue's visibility server, reached directly with the manager's credentials; empty: through the API server, which serves it when Kueue's APIService (v1beta2.visibility.kueue.x-k8s.io) is installed.")
	fs.StringVar(&f.kueue.visibilityCAFile, "kueue-visibility-ca-file", "", "With --kueue-visibility-url: the certificate (PEM) that the visibility server's is signed by.")
	fs.StringVar(&f.namespace, "namespace", "jobrun-system", "Namespace of the runs, job types and projects the manager reconciles (unless --all-namespaces) and the REST API serves.")
	f.zap.Development = false
	f.zap.BindFlags(fs)
}

// validate refuses settings that contradict each other or cannot work.
func (f *managerFlags) validate() error {
	if f.leaderElect && !(f.leaseDuration > f.renewDeadline && f.renewDeadline > f.retryPeriod && f.retryPeriod > 0) {
		return fmt.Errorf("leader election needs --leader-elect-lease-duration (%s) > --leader-elect-renew-deadline (%s) > --leader-elect-retry-period (%s) > 0", f.leaseDuration, f.renewDeadline, f.retryPeriod)
	}
	if f.smtp.RetryWindow <= 0 {
		return fmt.Errorf("--smtp-retry-window (%s) must be positive", f.smtp.RetryWindow)
	}
	if f.jwksURL != "" {
		if err := apiserver.CheckJWKSURL(f.jwksURL); err != nil {
			return err
		}
		if f.jwtIssuer == "" || f.jwtAudience == "" {
			return fmt.Errorf("--jwks-url needs --jwt-issuer and --jwt-audience: the identity provider signs tokens for other applications too")
		}
	}
	if f.jwtMaxLifetime <= 0 {
		return fmt.Errorf("--jwt-max-token-lifetime (%s) must be positive", f.jwtMaxLifetime)
	}
	for _, o := range f.corsOrigins() {
		if o != "*" && !strings.HasPrefix(o, "https://") && !strings.HasPrefix(o, "http://") {
			return fmt.Errorf("--api-cors-allowed-origins: %q is not an origin (scheme://host[:port], or *)", o)
		}
	}
	if f.kubeAPIQPS == 0 || f.kubeAPIBurst < 0 {
		return fmt.Errorf("--kube-api-qps (%g) must be positive, or negative for no limit, and --kube-api-burst (%d) not negative", f.kubeAPIQPS, f.kubeAPIBurst)
	}
	if f.archive.dsn != "" && (f.archive.liveTTL <= 0 || f.archive.retention < 0) {
		return fmt.Errorf("--archive-live-ttl (%s) must be positive and --archive-retention (%s) not negative", f.archive.liveTTL, f.archive.retention)
	}
	if f.kueue.positionInterval < 0 || (f.kueue.positionInterval > 0 && (f.kueue.positionLimit < 1 || f.kueue.positionLimit > 1000)) {
		return fmt.Errorf("--kueue-position-interval (%s) must not be negative, and --kueue-position-limit (%d) from 1 to 1000", f.kueue.positionInterval, f.kueue.positionLimit)
	}
	if f.kueue.visibilityURL != "" && !strings.HasPrefix(f.kueue.visibilityURL, "https://") {
		return fmt.Errorf("--kueue-visibility-url %q must be an https:// URL", f.kueue.visibilityURL)
	}
	if !f.runControllers && f.apiAddr == "" {
		return fmt.Errorf("--run-controllers=false without --api-bind-address leaves nothing to do")
	}
	return nil
}

// clientLimits are the manager's client-side limits on its requests to the
// API server, as rest.Config's QPS and Burst.
func (f *managerFlags) clientLimits() (qps float32, burst int) {
	if f.kubeAPIQPS < 0 {
		return -1, 0
	}
	burst = f.kubeAPIBurst
	if burst == 0 {
		burst = int(2 * f.kubeAPIQPS)
	}
	return float32(f.kubeAPIQPS), max(burst, 1)
}

// corsOrigins is --api-cors-allowed-origins as a list.
func (f *managerFlags) corsOrigins() []string {
	var out []string
	for o := range strings.SplitSeq(f.corsAllowedOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}
