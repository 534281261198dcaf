package apiserver

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// The console: server-rendered pages under /ui/, embedded in the binary.
// Its pages read and act through the same functions as the REST routes
// (listPage, visibleRun, cancelRun, triggerRun, teamAccess) with the
// principal of the session (console_session.go), and get live changes from
// the same event streams, served under /ui/ with the session cookie
// (console.js opens them with EventSource).

//go:embed ui/templates/*.html
var consoleTemplates embed.FS

//go:embed ui/static/*.js ui/static/*.css
var consoleStatic embed.FS

// consolePages are the console's pages, each with the layout.
var consolePages = func() map[string]*template.Template {
	funcs := template.FuncMap{
		"pretty":   prettyJSON,
		"statuses": func() []string { return statuses },
		"deref": func(s *string) string {
			if s == nil {
				return ""
			}
			return *s
		},
	}
	pages := map[string]*template.Template{}
	for _, name := range []string{"signin", "home", "runs", "run", "trigger", "stats", "error"} {
		pages[name] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(consoleTemplates, "ui/templates/layout.html", "ui/templates/"+name+".html"))
	}
	return pages
}()

// prettyJSON indents a JSON value for a <pre>.
func prettyJSON(raw json.RawMessage) string {
	var buf bytes.Buffer
	if json.Indent(&buf, raw, "", "  ") != nil {
		return string(raw)
	}
	return buf.String()
}

// page is what every page's template gets.
type page struct {
	Title string
	// P is the signed-in principal (nil on the sign-in page).
	P *Principal
	// CSRF is the session's token for the forms.
	CSRF string
	// Team is the team the page is about, if any.
	Team string
	// Events is the page's event stream (console.js opens it), if any.
	Events string
	// Message is shown at the top (role=alert); ConflictRun is the active
	// run of a 409, linked.
	Message     string
	ConflictRun string
	// Data is the page's own.
	Data any
}

// consoleResource serves /ui/.
type consoleResource struct {
	s *Server
}

func (c consoleResource) routes(r chi.Router) {
	static, _ := fs.Sub(consoleStatic, "ui/static")
	r.Handle("/static/*", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	r.Group(func(r chi.Router) {
		r.Use(c.s.timeout, securityHeaders)
		r.Get("/sign-in", c.signInForm)
		r.Post("/sign-in", c.signIn)
		r.Group(func(r chi.Router) {
			r.Use(c.signedIn, c.csrf)
			r.Get("/", c.home)
			r.Post("/sign-out", c.signOut)
			r.Get("/teams/{teamId}/runs", c.runs)
			r.Get("/teams/{teamId}/stats", c.stats)
			r.Get("/teams/{teamId}/trigger", c.triggerForm)
			r.Post("/teams/{teamId}/trigger", c.trigger)
			r.Get("/runs/{runId}", c.run)
			r.Post("/runs/{runId}/cancel", c.cancel)
		})
	})
	// The streams of the API, with the session's principal; no timeout.
	r.With(c.streamSignedIn, teamCtx(PermJobsRead)).Get("/teams/{teamId}/events", teamsResource(c).events)
	r.With(c.streamSignedIn).Get("/runs/{runId}/events", runsResource(c).events)
}

// securityHeaders keep the pages out of frames and other origins' scripts.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// render writes a page with status.
func (c consoleResource) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	if pr := principalFrom(r.Context()); pr != nil && p.P == nil {
		p.P = pr
		p.CSRF = c.s.sessions.csrfToken(sessionFrom(r.Context()))
	}
	var buf bytes.Buffer
	if err := consolePages[name].Execute(&buf, p); err != nil {
		ae := classify(r, fmt.Errorf("rendering console page %s: %w", name, err))
		http.Error(w, ae.message, ae.status)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fail renders err as the API would map it (classify), as a page.
func (c consoleResource) fail(w http.ResponseWriter, r *http.Request, err error) {
	ae := classify(r, err)
	c.render(w, r, ae.status, "error", page{Title: http.StatusText(ae.status), Message: ae.message})
}

// signedIn is the middleware of the pages: a valid session, or a redirect to
// the sign-in page (the cookie cleared).
func (c consoleResource) signedIn(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, value, err := c.s.sessions.authenticateSession(r)
		if errors.Is(err, errNoSession) {
			if _, cerr := r.Cookie(sessionCookie); cerr == nil {
				setSessionCookie(w, r, "")
			}
			target := "/ui/sign-in"
			if r.Method == http.MethodGet && r.URL.Path != "/ui/" {
				target += "?next=" + url.QueryEscape(r.URL.RequestURI())
			}
			http.Redirect(w, r, target, http.StatusFound)
			return
		}
		if err != nil {
			c.fail(w, r, err)
			return
		}
		ctx := withPrincipal(r.Context(), p)
		next.ServeHTTP(w, r.WithContext(context.WithValue(ctx, sessionKey{}, value)))
	})
}

// streamSignedIn is the middleware of the console's streams: a valid
// session, or the API's 401 (EventSource does not follow a sign-in).
func (c consoleResource) streamSignedIn(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("ticket") {
			writeError(w, r, badRequest("the console's streams take the session cookie, not tickets"))
			return
		}
		p, _, err := c.s.sessions.authenticateSession(r)
		if errors.Is(err, errNoSession) {
			writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, "no valid console session"))
			return
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
		ctx := withRecheck(withPrincipal(r.Context(), p), func(context.Context) (*Principal, error) {
			p, _, err := c.s.sessions.authenticateSession(r)
			if errors.Is(err, errNoSession) {
				return nil, errUnauthenticated
			}
			return p, err
		})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// maxForm bounds a console form (a trigger's params included).
const maxForm = maxTriggerBody + 4096

// csrf is the middleware that refuses a POST of another origin or without
// the session's CSRF token, with 403.
func (c consoleResource) csrf(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, badRequest("unreadable form: %v", err))
				return
			}
			if !sameOrigin(r) || !c.s.sessions.checkCSRF(r, sessionFrom(r.Context())) {
				c.fail(w, r, errorf(http.StatusForbidden, codeForbidden, "this form is stale or came from another site (CSRF check failed): reload the page and try again"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// safeNext is where to go after signing in: a console path, else home.
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(next, "/ui/") || strings.ContainsAny(next, "\\\r\n") {
		return "/ui/"
	}
	return next
}

// signInData is the sign-in page's.
type signInData struct {
	Next string
	// Link is a sign-in link's value and As whom it signs in as, when the
	// page was opened from one.
	Link string
	As   *Principal
}

// signInForm serves GET /ui/sign-in[?next=][&link=]: the credential form,
// or the button of a sign-in link.
func (c consoleResource) signInForm(w http.ResponseWriter, r *http.Request) {
	d := signInData{Next: safeNext(r.URL.Query().Get("next"))}
	p := page{Title: "Sign in", CSRF: signInToken(w, r), Data: &d}
	status := http.StatusOK
	if value := r.URL.Query().Get("link"); value != "" {
		lp, err := c.s.sessions.openLink(value, false)
		if err == nil {
			d.As, err = c.s.sessions.auth.Authenticate(r.Context(), lp.Credential)
		}
		if err == nil {
			d.Link = value
		} else {
			status, p.Message = http.StatusBadRequest, badLinkMessage
		}
	}
	c.render(w, r, status, "signin", p)
}

// signIn serves POST /ui/sign-in: the credential, pasted or from a sign-in
// link, is authenticated exactly as the API would, then sealed into the
// session cookie. A POST without the form's token (console_signin.go) or
// from another origin is refused.
func (c consoleResource) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8192)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, badRequest("unreadable form: %v", err))
		return
	}
	if !checkSignInToken(r) {
		c.fail(w, r, errorf(http.StatusForbidden, codeForbidden, "this sign-in form is stale or came from another site: open the sign-in page again"))
		return
	}
	d := signInData{Next: safeNext(r.PostFormValue("next"))}
	again := func(status int, msg string) {
		c.render(w, r, status, "signin", page{Title: "Sign in", CSRF: signInToken(w, r), Message: msg, Data: &d})
	}
	credential := strings.TrimSpace(r.PostFormValue("credential"))
	if value := r.PostFormValue("link"); value != "" {
		lp, err := c.s.sessions.openLink(value, true)
		if err != nil {
			again(http.StatusBadRequest, badLinkMessage)
			return
		}
		credential = lp.Credential
	}
	if credential == "" || len(credential) > maxCredential {
		again(http.StatusUnauthorized, fmt.Sprintf("Paste a JWT or an API key (at most %d characters).", maxCredential))
		return
	}
	p, err := c.s.sessions.auth.Authenticate(r.Context(), credential)
	if err != nil {
		if credentialRefused(err) {
			msg := "Invalid or expired credential."
			var ae *apiError
			if errors.As(err, &ae) {
				msg = ae.message
			}
			again(http.StatusUnauthorized, msg)
			return
		}
		c.fail(w, r, err)
		return
	}
	setSessionCookie(w, r, c.s.sessions.seal(credential))
	next := d.Next
	if next == "/ui/" && len(p.Teams) > 0 {
		next = "/ui/teams/" + url.PathEscape(p.Teams[0]) + "/runs"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c consoleResource) signOut(w http.ResponseWriter, r *http.Request) {
	setSessionCookie(w, r, "")
	http.Redirect(w, r, "/ui/sign-in", http.StatusSeeOther)
}

// home sends a member of one team to its runs, else lists the teams.
func (c consoleResource) home(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	if len(p.Teams) == 1 {
		http.Redirect(w, r, "/ui/teams/"+url.PathEscape(p.Teams[0])+"/runs", http.StatusFound)
		return
	}
	c.render(w, r, http.StatusOK, "home", page{Title: "Teams"})
}

// runsData is the runs page's.
type runsData struct {
	JobType, Status, ProjectID string
	Runs                       []jobRun
	// Next is the next page's URL, if there is one; Paged: this is not the
	// first page (new runs are not added live).
	Next  string
	Paged bool
}

// runs serves GET /ui/teams/{teamId}/runs: the list endpoint's page, with
// its filters and cursor.
func (c consoleResource) runs(w http.ResponseWriter, r *http.Request) {
	team := chi.URLParam(r, "teamId")
	if err := teamAccess(principalFrom(r.Context()), team, PermJobsRead); err != nil {
		c.fail(w, r, err)
		return
	}
	v := url.Values{}
	for name, vals := range r.URL.Query() {
		if len(vals) > 0 && vals[0] != "" {
			v.Set(name, vals[0]) // an empty filter of the form is no filter
		}
	}
	runs, cursor, hasMore, err := c.s.listPage(r.Context(), team, v)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d := runsData{JobType: v.Get("job_type"), Status: v.Get("status"), ProjectID: v.Get("project_id"), Runs: runs, Paged: v.Has("cursor")}
	if hasMore && cursor != nil {
		next := url.Values{}
		for k := range v {
			next.Set(k, v.Get(k))
		}
		next.Set("cursor", *cursor)
		d.Next = "/ui/teams/" + url.PathEscape(team) + "/runs?" + next.Encode()
	}
	filters := url.Values{}
	for _, name := range []string{"job_type", "status", "project_id"} {
		if v.Has(name) {
			filters.Set(name, v.Get(name))
		}
	}
	events := "/ui/teams/" + url.PathEscape(team) + "/events"
	if len(filters) > 0 {
		events += "?" + filters.Encode()
	}
	c.render(w, r, http.StatusOK, "runs", page{Title: "Runs of " + team, Team: team, Events: events, Data: d})
}

// run serves GET /ui/runs/{runId}: the run as GET /v1/jobs/{runId} shows it.
func (c consoleResource) run(w http.ResponseWriter, r *http.Request) {
	run, err := runsResource(c).visibleRun(r, PermJobsRead, false)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	msg := ""
	if r.URL.Query().Get("cancel") == "requested" {
		msg = "Cancellation requested: the run stops when its handler does."
	}
	c.renderRun(w, r, http.StatusOK, run, msg)
}

// runData is the run page's: the run as the API shows it, its conditions
// and its Kubernetes Events (as of the page's load: the stream carries the
// API's shape, which has neither).
type runData struct {
	Run        jobRun
	Conditions []metav1.Condition
	Timeline   []timelineEntry
	// TimelineError says why there is no timeline, if there is none.
	TimelineError string
}

// timelineEntry is one Event of a run.
type timelineEntry struct {
	Time                  string
	Type, Reason, Message string
	Count                 int32
}

// The console's run page lists the run's Events.
// +kubebuilder:rbac:groups="",resources=events,verbs=list,namespace=system

// maxTimeline bounds the Events a run page reads.
const maxTimeline = 100

// timeline reads run's Events from the API server, oldest first.
func (c consoleResource) timeline(ctx context.Context, run *jobsv1alpha1.JobRun) ([]timelineEntry, error) {
	var events corev1.EventList
	if err := c.s.reader.List(ctx, &events, client.InNamespace(c.s.namespace), client.Limit(maxTimeline),
		client.MatchingFields{"involvedObject.kind": "JobRun", "involvedObject.name": run.Name}); err != nil {
		return nil, err
	}
	at := func(e *corev1.Event) time.Time {
		switch {
		case !e.EventTime.IsZero():
			return e.EventTime.Time
		case !e.LastTimestamp.IsZero():
			return e.LastTimestamp.Time
		case !e.FirstTimestamp.IsZero():
			return e.FirstTimestamp.Time
		}
		return e.CreationTimestamp.Time
	}
	sort.SliceStable(events.Items, func(i, j int) bool { return at(&events.Items[i]).Before(at(&events.Items[j])) })
	out := make([]timelineEntry, 0, len(events.Items))
	for i := range events.Items {
		e := &events.Items[i]
		count := e.Count
		if e.Series != nil {
			count = e.Series.Count
		}
		out = append(out, timelineEntry{Time: formatTime(at(e)), Type: e.Type, Reason: e.Reason, Message: e.Message, Count: count})
	}
	return out, nil
}

func (c consoleResource) renderRun(w http.ResponseWriter, r *http.Request, status int, run *jobsv1alpha1.JobRun, msg string) {
	jr := toJobRun(run)
	d := runData{Run: jr, Conditions: run.Status.Conditions}
	var err error
	if d.Timeline, err = c.timeline(r.Context(), run); err != nil {
		// The page is still worth showing: say why the timeline is not.
		d.TimelineError = "The run's events cannot be read now: " + classify(r, err).message + "."
	}
	c.render(w, r, status, "run", page{Title: "Run " + jr.ID, Team: jr.TeamID, Events: "/ui/runs/" + url.PathEscape(jr.ID) + "/events", Message: msg, Data: d})
}

// cancel serves POST /ui/runs/{runId}/cancel as POST /v1/jobs/{runId}/cancel.
func (c consoleResource) cancel(w http.ResponseWriter, r *http.Request) {
	run, err := runsResource(c).visibleRun(r, PermJobsWrite, true)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if err := c.s.cancelRun(r.Context(), run); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusBadRequest {
			c.renderRun(w, r, http.StatusBadRequest, run, "Not cancelled: "+ae.message+".")
			return
		}
		c.fail(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/runs/"+url.PathEscape(run.Name)+"?cancel=requested", http.StatusSeeOther)
}

// paramField is an input of the trigger form for a top-level property of
// the params schema of a simple type.
type paramField struct {
	Name, Type, Description, Value string
	Required                       bool
}

// triggerData is the trigger page's.
type triggerData struct {
	JobTypes []string
	JobType  string
	Projects []string
	Project  string
	Fields   []paramField
	// Params is the JSON of the params no field holds.
	Params string
	Notify bool
}

// paramSchema is the part of a params schema the form reads.
type paramSchema struct {
	Properties map[string]struct {
		Type        string `json:"type"`
		Description string `json:"description"`
	} `json:"properties"`
	Required []string `json:"required"`
}

// fieldsOf are the form's inputs for jt's params: one per top-level
// property of type string, integer, number or boolean; the rest go in the
// JSON textarea.
func fieldsOf(jt *jobsv1alpha1.JobType) []paramField {
	if jt.Spec.ParamsSchema == nil {
		return nil
	}
	var ps paramSchema
	if json.Unmarshal(jt.Spec.ParamsSchema.Raw, &ps) != nil {
		return nil
	}
	var fields []paramField
	for name, prop := range ps.Properties {
		switch prop.Type {
		case "string", "integer", "number", "boolean":
			fields = append(fields, paramField{Name: name, Type: prop.Type, Description: prop.Description, Required: slices.Contains(ps.Required, name)})
		}
	}
	sort.Slice(fields, func(i, j int) bool { return fields[i].Name < fields[j].Name })
	return fields
}

// triggerChoices fills d's job types (project-scoped ones), the team's
// projects and, for d.JobType, its fields.
func (c consoleResource) triggerChoices(r *http.Request, team string, d *triggerData) error {
	var jts jobsv1alpha1.JobTypeList
	if err := c.s.cache.List(r.Context(), &jts, client.InNamespace(c.s.namespace)); err != nil {
		return err
	}
	for _, jt := range jts.Items {
		if jt.Spec.Scope != jobsv1alpha1.JobTypeScopeSystem {
			d.JobTypes = append(d.JobTypes, jt.Spec.JobType)
		}
	}
	if d.JobType != "" && jobsv1alpha1.MatchesJobTypePattern(d.JobType) && len(d.JobType) <= 63 {
		// As the trigger reads it: a cache miss is confirmed live.
		jt := &jobsv1alpha1.JobType{}
		err := c.s.getConfig(r.Context(), client.ObjectKey{Namespace: c.s.namespace, Name: jobsv1alpha1.JobTypeObjectName(d.JobType)}, jt)
		if client.IgnoreNotFound(err) != nil {
			return err
		}
		if err == nil && jt.Spec.JobType == d.JobType && jt.Spec.Scope != jobsv1alpha1.JobTypeScopeSystem {
			d.Fields = fieldsOf(jt)
			if !slices.Contains(d.JobTypes, d.JobType) {
				d.JobTypes = append(d.JobTypes, d.JobType)
			}
		}
	}
	sort.Strings(d.JobTypes)
	var projects jobsv1alpha1.ProjectList
	if err := c.s.cache.List(r.Context(), &projects, client.InNamespace(c.s.namespace)); err != nil {
		return err
	}
	for _, p := range projects.Items {
		if p.Spec.TeamID == team {
			d.Projects = append(d.Projects, p.Name)
		}
	}
	sort.Strings(d.Projects)
	return nil
}

// triggerForm serves GET /ui/teams/{teamId}/trigger[?job_type=]: choose a
// job type, then its project and params.
func (c consoleResource) triggerForm(w http.ResponseWriter, r *http.Request) {
	team := chi.URLParam(r, "teamId")
	if err := teamAccess(principalFrom(r.Context()), team, PermJobsWrite); err != nil {
		c.fail(w, r, err)
		return
	}
	d := triggerData{JobType: r.URL.Query().Get("job_type"), Params: "{}"}
	if err := c.triggerChoices(r, team, &d); err != nil {
		c.fail(w, r, err)
		return
	}
	msg := ""
	if d.JobType != "" && !slices.Contains(d.JobTypes, d.JobType) {
		msg, d.JobType = "No job type "+d.JobType+" can be triggered.", ""
	}
	c.render(w, r, http.StatusOK, "trigger", page{Title: "Trigger a run", Team: team, Message: msg, Data: d})
}

// trigger serves POST /ui/teams/{teamId}/trigger as POST
// /v1/teams/{teamId}/jobs/trigger: the form's fields and JSON become the
// params; a 409 links the active run.
func (c consoleResource) trigger(w http.ResponseWriter, r *http.Request) {
	team := chi.URLParam(r, "teamId")
	p := principalFrom(r.Context())
	if err := teamAccess(p, team, PermJobsWrite); err != nil {
		c.fail(w, r, err)
		return
	}
	d := triggerData{JobType: r.PostFormValue("job_type"), Project: r.PostFormValue("project_id"), Params: r.PostFormValue("params"), Notify: r.PostFormValue("notify") == "true"}
	if err := c.triggerChoices(r, team, &d); err != nil {
		c.fail(w, r, err)
		return
	}
	again := func(status int, msg, conflictRun string) {
		c.render(w, r, status, "trigger", page{Title: "Trigger a run", Team: team, Message: msg, ConflictRun: conflictRun, Data: d})
	}
	params, err := formParams(r, &d)
	if err != nil {
		again(http.StatusBadRequest, err.Error(), "")
		return
	}
	run, err := c.s.triggerRun(r.Context(), p, team, &triggerRequest{JobType: d.JobType, ProjectID: d.Project, Params: params, Notify: d.Notify})
	var ae *apiError
	switch {
	case errors.As(err, &ae) && ae.status == http.StatusConflict:
		existing, _ := ae.extra["existing_run_id"].(string)
		again(http.StatusConflict, "A run of "+d.JobType+" is already pending or running for project "+d.Project+":", existing)
	case errors.As(err, &ae) && ae.status == http.StatusBadRequest:
		again(http.StatusBadRequest, ae.message, "")
	case err != nil:
		c.fail(w, r, err)
	default:
		http.Redirect(w, r, "/ui/runs/"+url.PathEscape(run.Name), http.StatusSeeOther)
	}
}

// formParams are the params of a trigger form: the JSON textarea's object,
// with each non-empty field of d.Fields set over it (and kept in d for the
// form shown again).
func formParams(r *http.Request, d *triggerData) (json.RawMessage, error) {
	params := map[string]any{}
	if s := strings.TrimSpace(d.Params); s != "" {
		if err := json.Unmarshal([]byte(s), &params); err != nil || params == nil {
			return nil, errors.New("params must be a JSON object, such as {\"items\": 10}")
		}
	}
	for i := range d.Fields {
		f := &d.Fields[i]
		f.Value = strings.TrimSpace(r.PostFormValue("param." + f.Name))
		if f.Value == "" {
			continue
		}
		var err error
		switch f.Type {
		case "string":
			params[f.Name] = f.Value
		case "integer":
			params[f.Name], err = strconv.ParseInt(f.Value, 10, 64)
		case "number":
			params[f.Name], err = strconv.ParseFloat(f.Value, 64)
		case "boolean":
			params[f.Name], err = strconv.ParseBool(f.Value)
		}
		if err != nil {
			return nil, fmt.Errorf("%s must be a%s %s", f.Name, map[bool]string{true: "n"}[f.Type == "integer"], f.Type)
		}
	}
	out, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	if len(out) > maxTriggerBody {
		return nil, fmt.Errorf("params exceed %d bytes", maxTriggerBody)
	}
	return out, nil
}
