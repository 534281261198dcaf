// Command rcfakeserver serves rcfake's RevenueCat API v2 (/v2/) and ingest
// endpoint (/ingest/revenuecat) on one address, for tests that run
// revenuecat_sync in a real cluster: the real-node test runs it as a pod
// behind a Service in jobrun's namespace. GET /stats answers what the
// endpoint saw (rcfake.Stats) and how many API requests were answered.
//
// It holds -customers customers with one active entitlement each, plus one
// anonymous customer ($RCAnonymousID:…), which a sync skips. It is a test
// program: never part of jobrun's image.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"jobrun.dev/jobrun/handlers/revenuecat"
	"jobrun.dev/jobrun/handlers/revenuecat/rcfake"
)

// Stats is GET /stats's body.
type Stats struct {
	rcfake.Stats
	ListRequests, EntitlementRequests, Unauthorized int
}

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	apiKey := flag.String("api-key", "", "the RevenueCat secret API key the fake accepts (required)")
	project := flag.String("project", "", "the RevenueCat project id (required)")
	secret := flag.String("signing-secret", "", "the ingest endpoint's signing secret (required)")
	customers := flag.Int("customers", 10, "how many (identified) customers the project has")
	flag.Parse()
	if *apiKey == "" || *project == "" || *secret == "" {
		log.Fatal("-api-key, -project and -signing-secret are required")
	}

	rc := rcfake.RevenueCatHandler(*apiKey, *project)
	now := time.Now()
	expires := now.Add(30 * 24 * time.Hour).UnixMilli()
	for i := 1; i <= *customers; i++ {
		rc.Put(revenuecat.Customer{ID: fmt.Sprintf("customer-%04d", i), FirstSeenAt: now.Add(-time.Hour).UnixMilli(), LastSeenAt: now.UnixMilli(), LastSeenPlatform: "ios"},
			revenuecat.ActiveEntitlement{EntitlementID: "premium", ExpiresAt: &expires})
	}
	rc.Put(revenuecat.Customer{ID: "$RCAnonymousID:0123456789abcdef", FirstSeenAt: now.UnixMilli(), LastSeenAt: now.UnixMilli()})
	dest := rcfake.DestinationHandler([]byte(*secret))

	mux := http.NewServeMux()
	mux.Handle("/v2/", rc)
	mux.Handle("POST /ingest/revenuecat", dest)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Stats{Stats: dest.Stats(), ListRequests: rc.Requests("list"),
			EntitlementRequests: rc.Requests("entitlements"), Unauthorized: rc.Requests("unauthorized")})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("serving RevenueCat project %s (%d customers) and the ingest endpoint on %s", *project, *customers, *listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Print(err)
		os.Exit(1)
	}
}
