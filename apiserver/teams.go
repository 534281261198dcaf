package apiserver

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"
)

// teamsResource serves /v1/teams/{teamId}/jobs: a team's runs (list.go)
// and their trigger (trigger.go), each behind teamCtx.
type teamsResource struct {
	s *Server
}

func (tr teamsResource) routes(r chi.Router) {
	r.With(tr.s.timeout, tr.s.auth, teamCtx(PermJobsRead)).Get("/{teamId}/jobs", tr.list)
	r.With(tr.s.timeout, tr.s.auth, teamCtx(PermJobsWrite)).Post("/{teamId}/jobs/trigger", tr.trigger)
	// A stream outlives any request timeout (streams.go).
	r.With(tr.s.streamAuth, teamCtx(PermJobsRead)).Get("/{teamId}/jobs/events", tr.events)
}

// teamKey is the context key of the team a /v1/teams route acts in.
type teamKey struct{}

// teamCtx is the middleware that lets a request act in the path's team only
// if the caller may, with perm: 404 for a team the caller is not in (teams
// cannot be probed), 403 for a member without the permission. The handler
// finds the team with teamFrom.
func teamCtx(perm string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			team := chi.URLParam(r, "teamId")
			if err := teamAccess(principalFrom(r.Context()), team, perm); err != nil {
				writeError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), teamKey{}, team)))
		})
	}
}

// teamAccess says whether p may act in team with perm: a 404 for a team p
// is not in, a 403 for a member without the permission.
func teamAccess(p *Principal, team, perm string) error {
	if !p.InTeam(team) {
		return errorf(http.StatusNotFound, codeNotFound, "team not found")
	}
	if !p.Can(team, perm) {
		return errorf(http.StatusForbidden, codeForbidden, "this credential lacks "+perm+" in team "+team)
	}
	return nil
}

// teamFrom is the team teamCtx let the request act in.
func teamFrom(ctx context.Context) string {
	team, _ := ctx.Value(teamKey{}).(string)
	return team
}
