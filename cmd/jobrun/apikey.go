package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"jobrun.dev/jobrun/apiserver"
)

// runAPIKey creates an API key for the REST API: the key is stored hashed in
// a Secret and printed once.
func runAPIKey(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New("usage: jobrun apikey create --team TEAM [--permissions jobs:read,jobs:write] [--email ADDR] [--namespace NS] [--kubeconfig PATH] [--values]")
	}
	fs := flag.NewFlagSet("jobrun apikey create", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "Path to a kubeconfig. Empty: $KUBECONFIG, else in-cluster.")
	namespace := fs.String("namespace", "jobrun-system", "Namespace the REST API serves.")
	team := fs.String("team", "", "The team the key is bound to (required).")
	perms := fs.String("permissions", apiserver.PermJobsRead+","+apiserver.PermJobsWrite, "Comma-separated permissions.")
	email := fs.String("email", "", "Where notifications of runs triggered with the key go.")
	values := fs.Bool("values", false, "Store nothing: print the key and an entry for the Helm chart's auth.apiKeys (GitOps).")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var permissions []string
	if *perms != "" {
		permissions = strings.Split(*perms, ",")
	}
	if *values {
		key, s, err := apiserver.NewAPIKey(*namespace, *team, permissions, *email)
		if err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "API key made, not stored; it is shown only now. Use it as: Authorization: Bearer <key>")
		fmt.Fprintf(os.Stderr, "%s\n", key)
		fmt.Printf("# auth.apiKeys entry of the Helm chart for the key above\n- id: %s\n  team: %s\n  permissions: [%s]\n  email: %q\n  sha256: %s\n",
			apiserver.APIKeyID(s), *team, strings.Join(permissions, ", "), *email, s.StringData["sha256"])
		return nil
	}
	c, err := newClient(*kubeconfig)
	if err != nil {
		return err
	}
	key, err := apiserver.CreateAPIKey(ctx, c, *namespace, *team, permissions, *email)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "API key created; it is shown only now. Use it as: Authorization: Bearer <key>")
	fmt.Println(key)
	return nil
}
