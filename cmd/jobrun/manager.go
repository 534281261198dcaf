package main

import (
	"context"
	"fmt"
	"k8s.io/client-go/rest"
	"os"
	"strings"
	_ "time/tzdata" // JobSchedule time zones, also in images without a zoneinfo database

	corev1 "k8s.io/api/core/v1"
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
	"jobrun.dev/jobrun/internal/cachetrim"
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

// cacheOptions watches only --namespace unless --all-namespaces: by default
// the manager serves its own namespace, and its RBAC (a Role there) allows
// no more. A standalone REST API replica watches only its namespace either way.
func cacheOptions(f *managerFlags, runIndex *apiserver.RunIndex) cache.Options {
	// The cache keeps what the controllers and the REST API read, with the
	// strings many runs share kept once: a smaller cache of many runs.
	opts := cache.Options{DefaultTransform: cachetrim.Transform()}
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

// runManager starts the operator and blocks until ctx is cancelled. It only
// wires: the manager, then its probes, controllers and REST API, one setup
// step each.
func runManager(ctx context.Context, args []string) error {
	f, err := parseManagerFlags(args)
	if err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.zap)))
	runIndex := apiserver.NewRunIndex()
	mgr, err := newManager(f, runIndex)
	if err != nil {
		return err
	}
	if err := setupProbes(mgr); err != nil {
		return err
	}
	arch, err := setupArchive(ctx, mgr, f)
	if err != nil {
		return err
	}
	if f.runControllers {
		if err := setupControllers(ctx, mgr, f, arch); err != nil {
			return err
		}
	}
	if f.apiAddr != "" {
		if err := setupAPI(ctx, mgr, f, runIndex, arch); err != nil {
			return err
		}
	}
	ctrl.Log.WithName("manager").Info("starting", "leaderElection", f.leaderElect, "metrics", f.metricsAddr, "probes", f.probeAddr)
	return mgr.Start(ctx)
}

// newManager makes the controller manager: jobrun's scheme, metrics,
// leader election and a cache that feeds runIndex.
func newManager(f *managerFlags, runIndex *apiserver.RunIndex) (ctrl.Manager, error) {
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = f.clientLimits()
	scheme, err := jobscheme.New()
	if err != nil {
		return nil, err
	}
	metricsOpts := metricsserver.Options{BindAddress: f.metricsAddr, SecureServing: f.metricsSecure}
	if f.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsOpts,
		HealthProbeBindAddress:        f.probeAddr,
		PprofBindAddress:              f.pprofAddr,
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
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	return mgr, nil
}

// setupProbes adds /healthz and /readyz to mgr's probe server.
func setupProbes(mgr ctrl.Manager) error {
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready means the API server answers and serves the jobrun kinds: without
	// the CRDs no reconciler can do anything.
	return mgr.AddReadyzCheck("jobrun-api", probes.KindsServed(mgr.GetRESTMapper(), jobsv1alpha1.GroupVersion, "JobRun", "JobType", "JobSchedule", "Project"))
}

// setupControllers adds the JobRun, JobType and JobSchedule reconcilers to
// mgr, all with the same options.
func setupControllers(ctx context.Context, mgr ctrl.Manager, f *managerFlags, arch *archiveConn) error {
	opts, err := reconcilerOptions(f)
	if err != nil {
		return err
	}
	if arch != nil {
		opts = append(opts, controllers.WithArchive(arch, f.archive.liveTTL))
	}
	if f.kueue.enabled {
		if err := controllers.KueueServed(mgr.GetRESTMapper()); err != nil {
			return err
		}
		if f.kueue.positionInterval > 0 {
			opts = append(opts, controllers.WithKueuePositions(controllers.KueuePositions{
				Interval: f.kueue.positionInterval, Limit: f.kueue.positionLimit, Config: visibilityConfig(mgr.GetConfig(), f.kueue),
			}))
		}
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
	return nil
}

// reconcilerOptions are the reconcilers' options from the flags: the pod
// policy, the JobRun workers and, with --smtp-host, the mail notifier.
func reconcilerOptions(f *managerFlags) ([]controllers.Option, error) {
	opts := []controllers.Option{
		controllers.WithRunnerServiceAccount(f.runnerServiceAccount), controllers.WithAllowedServiceAccounts(f.allowedServiceAccounts...),
		controllers.WithWorkers(f.workers),
	}
	if f.kueue.enabled {
		opts = append(opts, controllers.WithKueue(controllers.KueueQueues{Teams: f.kueue.teams, System: f.kueue.system}))
	}
	if f.smtp.Host == "" {
		return opts, nil
	}
	if f.smtpPasswordFile != "" {
		password, err := readSecretFile("--smtp-password-file", f.smtpPasswordFile)
		if err != nil {
			return nil, err
		}
		f.smtp.Password = password
	}
	return append(opts, controllers.WithNotifier(f.smtp)), nil
}

// setupAPI adds the REST API to mgr as a runnable, with its run index (on
// mgr's cache) and its authenticators of JWTs and API keys.
func setupAPI(ctx context.Context, mgr ctrl.Manager, f *managerFlags, runIndex *apiserver.RunIndex, arch *archiveConn) error {
	jwtAuth, err := jwtAuthenticator(ctx, f)
	if err != nil {
		return err
	}
	if err := runIndex.Register(ctx, mgr.GetCache(), mgr.GetClient(), f.namespace); err != nil {
		return err
	}
	apiKeys, err := apiserver.NewAPIKeyAuthenticator(ctx, mgr.GetCache(), f.namespace)
	if err != nil {
		return err
	}
	// The event streams: one more handler on the informer the run index uses.
	broker := apiserver.NewBroker(apiserver.BrokerOptions{})
	if err := broker.Register(ctx, mgr.GetCache()); err != nil {
		return err
	}
	ticketKey, err := streamTicketKey(f)
	if err != nil {
		return err
	}
	var archived apiserver.RunLister
	if arch != nil {
		archived = apiserver.NewArchiveLister(arch)
	}
	api, err := apiserver.New(apiserver.Options{
		Addr: f.apiAddr, Namespace: f.namespace,
		Reader: mgr.GetAPIReader(), Cache: mgr.GetClient(), Writer: mgr.GetClient(), Lister: runIndex, Archive: archived,
		Ready: func(ctx context.Context) bool { return runIndex.Synced(ctx) && apiKeys.Synced(ctx) },
		Auth: apiserver.Authenticators{
			JWT:    jwtAuth,
			APIKey: apiKeys,
		},
		CORSAllowedOrigins: f.corsOrigins(),
		Broker:             broker,
		TicketKey:          ticketKey,
		Log:                ctrl.Log.WithName("apiserver"),
	})
	if err != nil {
		return err
	}
	return mgr.Add(api)
}

// streamTicketKey is the key of the REST API's stream tickets, which every
// replica must share: from --stream-ticket-key-file, else derived from the
// HS256 JWT secret; nil (a random key of this process) with --jwks-url and
// no key file.
func streamTicketKey(f *managerFlags) ([]byte, error) {
	secret, flagName := "", "--stream-ticket-key-file"
	switch {
	case f.streamTicketKeyFile != "":
		var err error
		if secret, err = readSecretFile(flagName, f.streamTicketKeyFile); err != nil {
			return nil, err
		}
	case f.jwksURL != "":
		ctrl.Log.WithName("apiserver").Info("stream tickets are signed with a key of this process: with several REST replicas, they need sticky sessions (or set --stream-ticket-key-file)")
		return nil, nil
	default:
		secret, flagName = os.Getenv("JOBRUN_JWT_SECRET"), "--jwt-secret-file"
		if f.jwtSecretFile != "" {
			var err error
			if secret, err = readSecretFile(flagName, f.jwtSecretFile); err != nil {
				return nil, err
			}
		}
	}
	if len(secret) < 32 {
		return nil, fmt.Errorf("%s: the stream ticket key must be at least 32 bytes", flagName)
	}
	return apiserver.StreamTicketKey([]byte(secret)), nil
}

// jwtAuthenticator checks the REST API's JWTs: with the identity provider's
// key set from --jwks-url, else with the HS256 secret.
func jwtAuthenticator(ctx context.Context, f *managerFlags) (apiserver.JWTAuthenticator, error) {
	checks := apiserver.JWTChecks{Issuer: f.jwtIssuer, Audience: f.jwtAudience, MaxLifetime: f.jwtMaxLifetime}
	if f.jwksURL != "" {
		// A key set that cannot be fetched now stops the start: the API
		// could accept no JWT.
		return apiserver.JWKS(ctx, f.jwksURL, checks)
	}
	secret := os.Getenv("JOBRUN_JWT_SECRET")
	if f.jwtSecretFile != "" {
		var err error
		if secret, err = readSecretFile("--jwt-secret-file", f.jwtSecretFile); err != nil {
			return apiserver.JWTAuthenticator{}, err
		}
	}
	if len(secret) < 32 {
		return apiserver.JWTAuthenticator{}, fmt.Errorf("--api-bind-address is set but neither --jwks-url nor an HS256 secret of at least 32 bytes (--jwt-secret-file or $JOBRUN_JWT_SECRET) is: the REST API cannot check JWTs")
	}
	return apiserver.HS256([]byte(secret), checks), nil
}

// readSecretFile is the secret in the file that flagName names (mounted from a
// Secret), without the surrounding white space an editor leaves.
func readSecretFile(flagName, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", flagName, err)
	}
	return strings.TrimSpace(string(data)), nil
}

// visibilityConfig reaches Kueue's visibility API with the manager's
// credentials: through the API server, or at --kueue-visibility-url.
func visibilityConfig(base *rest.Config, f kueueFlags) *rest.Config {
	cfg := rest.CopyConfig(base)
	if f.visibilityURL != "" {
		cfg.Host = f.visibilityURL
		cfg.TLSClientConfig.CAData, cfg.TLSClientConfig.CAFile = nil, f.visibilityCAFile
	}
	return cfg
}
