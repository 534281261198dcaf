package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
