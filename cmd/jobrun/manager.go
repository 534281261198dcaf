package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
	_ "time/tzdata" // JobSchedule time zones, also in images without a zoneinfo database

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/apiserver"
	"jobrun.dev/jobrun/controllers"
	"jobrun.dev/jobrun/internal/notify"
	"jobrun.dev/jobrun/internal/probes"
	jobscheme "jobrun.dev/jobrun/internal/scheme"
)

// leaderElectionID names the Lease that manager replicas compete for. It is a
// constant: replicas of different versions must still exclude each other.
const leaderElectionID = "jobrun-manager.jobs.jobrun.dev"

// Serving the metrics endpoint securely checks the scraper's token and its
// permission to get /metrics.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// managerFlags are the manager role's settings.
type managerFlags struct {
	kubeconfig              string
	metricsAddr             string
	metricsSecure           bool
	probeAddr               string
	leaderElect             bool
	leaderElectionNamespace string
	leaseDuration           time.Duration
	renewDeadline           time.Duration
	retryPeriod             time.Duration
	runnerServiceAccount    string
	allowedServiceAccounts  []string
	allNamespaces           bool
	workers                 int
	apiAddr                 string
	namespace               string
	jwksURL                 string
	corsAllowedOrigins      string
	jwtIssuer               string
	jwtAudience             string
	jwtMaxLifetime          time.Duration
	runControllers          bool
	jwtSecretFile           string
	smtp                    notify.SMTP
	smtpPasswordFile        string
	zap                     zap.Options
}

func parseManagerFlags(args []string) (*managerFlags, error) {
	f := &managerFlags{}
	fs := flag.NewFlagSet("jobrun manager", flag.ContinueOnError)
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Empty: $KUBECONFIG, else the in-cluster service account.")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", ":8443", "Address of the Prometheus metrics endpoint; 0 disables it.")
	fs.BoolVar(&f.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, for callers authenticated and authorized by the API server.")
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
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
	fs.IntVar(&f.workers, "jobrun-workers", 4, "How many runs the JobRun controller reconciles at once.")
	fs.StringVar(&f.apiAddr, "api-bind-address", "", "Address of the Jobs REST API, such as 127.0.0.1:8080; empty: not served. Needs $JOBRUN_JWT_SECRET.")
	fs.StringVar(&f.jwksURL, "jwks-url", "", "URL of the identity provider's JSON Web Key Set: accept RS256/ES256 JWTs signed by its keys instead of HS256 ones.")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "The iss every JWT must carry (the identity provider's issuer URL). Required with --jwks-url; optional with HS256.")
	fs.StringVar(&f.jwtAudience, "jwt-audience", "", "The aud every JWT must include (this API's identifier at the identity provider). Required with --jwks-url; optional with HS256.")
	fs.DurationVar(&f.jwtMaxLifetime, "jwt-max-token-lifetime", apiserver.DefaultMaxTokenLifetime, "Longest JWT lifetime accepted: a token whose exp-iat, or exp-now, is longer is refused.")
	fs.StringVar(&f.corsAllowedOrigins, "api-cors-allowed-origins", "", "Comma-separated origins whose browser pages may call the REST API (CORS), such as https://app.example.com; * for any. Empty: no CORS headers.")
	fs.StringVar(&f.jwtSecretFile, "jwt-secret-file", "", "File holding the HS256 secret (e.g. mounted from a Secret); default: $JOBRUN_JWT_SECRET.")
	fs.StringVar(&f.smtp.Host, "smtp-host", "", "Mail server for run notifications (notify: true); empty: none are sent, and runs record why.")
	fs.IntVar(&f.smtp.Port, "smtp-port", 587, "Mail server port.")
	fs.StringVar(&f.smtp.From, "smtp-from", "jobrun@localhost", "Sender address of notifications.")
	fs.StringVar(&f.smtp.Username, "smtp-username", "", "Mail server user (PLAIN auth); empty: no auth.")
	fs.StringVar(&f.smtpPasswordFile, "smtp-password-file", "", "File holding the mail server password (mounted from a Secret).")
	fs.StringVar(&f.smtp.TLS, "smtp-tls", "starttls", "starttls (required), tls (implicit) or none (loopback only).")
	fs.DurationVar(&f.smtp.RetryWindow, "smtp-retry-window", notify.DefaultRetryWindow, "How long after a run ends its email is retried while the mail server fails (backoff 5s doubling to 5m); the first failure after it is final.")
	fs.StringVar(&f.namespace, "namespace", "jobrun-system", "Namespace of the runs, job types and projects the manager reconciles (unless --all-namespaces) and the REST API serves.")
	f.zap.Development = false
	f.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if f.leaderElect && !(f.leaseDuration > f.renewDeadline && f.renewDeadline > f.retryPeriod && f.retryPeriod > 0) {
		return nil, fmt.Errorf("leader election needs --leader-elect-lease-duration (%s) > --leader-elect-renew-deadline (%s) > --leader-elect-retry-period (%s) > 0", f.leaseDuration, f.renewDeadline, f.retryPeriod)
	}
	if f.smtp.RetryWindow <= 0 {
		return nil, fmt.Errorf("--smtp-retry-window (%s) must be positive", f.smtp.RetryWindow)
	}
	if f.jwksURL != "" {
		if err := apiserver.CheckJWKSURL(f.jwksURL); err != nil {
			return nil, err
		}
		if f.jwtIssuer == "" || f.jwtAudience == "" {
			return nil, fmt.Errorf("--jwks-url needs --jwt-issuer and --jwt-audience: the identity provider signs tokens for other applications too")
		}
	}
	if f.jwtMaxLifetime <= 0 {
		return nil, fmt.Errorf("--jwt-max-token-lifetime (%s) must be positive", f.jwtMaxLifetime)
	}
	for _, o := range f.corsOrigins() {
		if o != "*" && !strings.HasPrefix(o, "https://") && !strings.HasPrefix(o, "http://") {
			return nil, fmt.Errorf("--api-cors-allowed-origins: %q is not an origin (scheme://host[:port], or *)", o)
		}
	}
	if !f.runControllers && f.apiAddr == "" {
		return nil, fmt.Errorf("--run-controllers=false without --api-bind-address leaves nothing to do")
	}
	return f, nil
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

// restConfig loads the client config of every role: from --kubeconfig, else
// $KUBECONFIG or in-cluster. Like controller-runtime's loader, it turns off
// client-go's client-side limit (5 requests/s), which made starting 20 runs
// at once take seconds: the API server's priority and fairness throttles.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = ctrl.GetConfig()
	}
	if err != nil {
		return nil, err
	}
	if cfg.QPS == 0 {
		cfg.QPS = -1
	}
	return cfg, nil
}

// newClient is a client of jobrun's scheme for the kubeconfig (as
// restConfig), for the roles that only read and write objects.
func newClient(kubeconfig string) (client.Client, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading the Kubernetes client config: %w", err)
	}
	scheme, err := jobscheme.New()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

// cacheOptions watches only --namespace unless --all-namespaces: by default
// the manager serves its own namespace, and its RBAC (a Role there) allows
// no more. A standalone REST API replica watches only its namespace either way.
func cacheOptions(f *managerFlags, runIndex *apiserver.RunIndex) cache.Options {
	// Nothing reads managedFields; dropping them keeps the cache of many runs
	// smaller.
	opts := cache.Options{DefaultTransform: cache.TransformStripManagedFields()}
	if !f.allNamespaces || !f.runControllers {
		opts.DefaultNamespaces = map[string]cache.Config{f.namespace: {}}
	}
	if f.apiAddr != "" {
		// The REST API's API keys, from an informer: the only Secrets
		// cached. Its run index notes the cache's JobRun lists (for
		// consistent reads).
		opts.ByObject = map[client.Object]cache.ByObject{&corev1.Secret{}: apiserver.APIKeySecretsCache(f.namespace)}
		opts.NewInformer = runIndex.NewInformer
	}
	return opts
}

// runManager starts the operator and blocks until ctx is cancelled.
func runManager(ctx context.Context, args []string) error {
	f, err := parseManagerFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.zap)))
	log := ctrl.Log.WithName("manager")

	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading the Kubernetes client config: %w", err)
	}
	scheme, err := jobscheme.New()
	if err != nil {
		return err
	}

	metricsOpts := metricsserver.Options{BindAddress: f.metricsAddr, SecureServing: f.metricsSecure}
	if f.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	runIndex := apiserver.NewRunIndex()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsOpts,
		HealthProbeBindAddress:        f.probeAddr,
		LeaderElection:                f.leaderElect,
		LeaderElectionID:              leaderElectionID,
		LeaderElectionNamespace:       f.leaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &f.leaseDuration,
		RenewDeadline:                 &f.renewDeadline,
		RetryPeriod:                   &f.retryPeriod,
		Cache:                         cacheOptions(f, runIndex),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready means the API server answers and serves the jobrun kinds: without
	// the CRDs no reconciler can do anything.
	if err := mgr.AddReadyzCheck("jobrun-api", probes.KindsServed(mgr.GetRESTMapper(), jobsv1alpha1.GroupVersion, "JobRun", "JobType", "JobSchedule", "Project")); err != nil {
		return err
	}

	if f.runControllers {
		opts := []controllers.Option{
			controllers.WithRunnerServiceAccount(f.runnerServiceAccount), controllers.WithAllowedServiceAccounts(f.allowedServiceAccounts...),
			controllers.WithWorkers(f.workers),
		}
		if f.smtp.Host != "" {
			if f.smtpPasswordFile != "" {
				data, err := os.ReadFile(f.smtpPasswordFile)
				if err != nil {
					return fmt.Errorf("reading --smtp-password-file: %w", err)
				}
				f.smtp.Password = strings.TrimSpace(string(data))
			}
			opts = append(opts, controllers.WithNotifier(f.smtp))
		}
		if err := controllers.NewJobRunReconciler(mgr, opts...).SetupWithManager(ctx, mgr); err != nil {
			return fmt.Errorf("setting up the JobRun controller: %w", err)
		}
		if err := controllers.NewJobTypeReconciler(mgr, opts...).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("setting up the JobType controller: %w", err)
		}
		if err := controllers.NewJobScheduleReconciler(mgr, opts...).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("setting up the JobSchedule controller: %w", err)
		}
	}

	if f.apiAddr != "" {
		var jwtAuth apiserver.JWTAuthenticator
		checks := apiserver.JWTChecks{Issuer: f.jwtIssuer, Audience: f.jwtAudience, MaxLifetime: f.jwtMaxLifetime}
		if f.jwksURL != "" {
			// A key set that cannot be fetched now stops the start: the
			// API could accept no JWT.
			if jwtAuth, err = apiserver.JWKS(ctx, f.jwksURL, checks); err != nil {
				return err
			}
		} else {
			secret := os.Getenv("JOBRUN_JWT_SECRET")
			if f.jwtSecretFile != "" {
				data, err := os.ReadFile(f.jwtSecretFile)
				if err != nil {
					return fmt.Errorf("reading --jwt-secret-file: %w", err)
				}
				secret = strings.TrimSpace(string(data))
			}
			if len(secret) < 32 {
				return fmt.Errorf("--api-bind-address is set but neither --jwks-url nor an HS256 secret of at least 32 bytes (--jwt-secret-file or $JOBRUN_JWT_SECRET) is: the REST API cannot check JWTs")
			}
			jwtAuth = apiserver.HS256([]byte(secret), checks)
		}
		if err := runIndex.Register(ctx, mgr.GetCache(), mgr.GetClient(), f.namespace); err != nil {
			return err
		}
		apiKeys, err := apiserver.NewAPIKeyAuthenticator(ctx, mgr.GetCache(), f.namespace)
		if err != nil {
			return err
		}
		api, err := apiserver.New(apiserver.Options{
			Addr: f.apiAddr, Namespace: f.namespace,
			Reader: mgr.GetAPIReader(), Cache: mgr.GetClient(), Writer: mgr.GetClient(), Lister: runIndex,
			Ready: func(ctx context.Context) bool { return runIndex.Synced(ctx) && apiKeys.Synced(ctx) },
			Auth: apiserver.Authenticators{
				JWT:    jwtAuth,
				APIKey: apiKeys,
			},
			CORSAllowedOrigins: f.corsOrigins(),
			Log:                ctrl.Log.WithName("apiserver"),
		})
		if err != nil {
			return err
		}
		if err := mgr.Add(api); err != nil {
			return err
		}
	}

	log.Info("starting", "leaderElection", f.leaderElect, "metrics", f.metricsAddr, "probes", f.probeAddr)
	return mgr.Start(ctx)
}
