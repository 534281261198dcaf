package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// runToken mints an HS256 JWT for the REST API, with the secret the manager
// checks ($JOBRUN_JWT_SECRET): for development and tests, not production
// identity.
func runToken(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("jobrun token", flag.ContinueOnError)
	sub := fs.String("sub", "dev-user", "The caller's id (sub).")
	email := fs.String("email", "dev@example.com", "The caller's email.")
	teams := fs.String("team", "", "Comma-separated team ids the caller belongs to (required).")
	role := fs.String("role", "admin", "Role: admin grants jobs:read and jobs:write in the caller's teams.")
	perms := fs.String("permissions", "", "Comma-separated permissions, such as jobs:read,jobs:write.")
	ttl := fs.Duration("ttl", 24*time.Hour, "How long the token is valid.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	secret := os.Getenv("JOBRUN_JWT_SECRET")
	if len(secret) < 32 {
		return errors.New("$JOBRUN_JWT_SECRET must hold the manager's secret (at least 32 bytes)")
	}
	if *teams == "" {
		return errors.New("--team is required")
	}
	claims := jwt.MapClaims{
		"sub": *sub, "email": *email, "teams": strings.Split(*teams, ","), "role": *role,
		"exp": time.Now().Add(*ttl).Unix(), "iat": time.Now().Unix(),
	}
	if *perms != "" {
		claims["permissions"] = strings.Split(*perms, ",")
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		return err
	}
	fmt.Println(signed)
	return nil
}
