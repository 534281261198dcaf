package apiserver

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// browser is a console client: a cookie jar, redirects not followed.
type browser struct {
	t   testing.TB
	a   *api
	c   *http.Client
	jar *cookiejar.Jar
}

func (a *api) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: a.t, a: a, jar: jar, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// consoleResponse is a console response.
type consoleResponse struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(method, path string, form url.Values, header map[string]string) consoleResponse {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.a.url+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return consoleResponse{status: resp.StatusCode, header: resp.Header, body: string(data)}
}

func (b *browser) get(path string) consoleResponse {
	b.t.Helper()
	return b.do(http.MethodGet, path, nil, nil)
}

func (b *browser) post(path string, form url.Values) consoleResponse {
	b.t.Helper()
	return b.do(http.MethodPost, path, form, nil)
}

// signInWith opens the sign-in page (query, such as "?link=...") and posts
// form, with the page's token, and header.
func (b *browser) signInWith(query string, form url.Values, header map[string]string) consoleResponse {
	b.t.Helper()
	form.Set(csrfField, b.csrf("/ui/sign-in"+query))
	return b.do(http.MethodPost, "/ui/sign-in", form, header)
}

// signIn signs in with credential and checks it worked.
func (b *browser) signIn(credential string) {
	b.t.Helper()
	resp := b.signInWith("", url.Values{"credential": {credential}}, nil)
	if resp.status != http.StatusSeeOther {
		b.t.Fatalf("sign-in: %d, want 303\n%s", resp.status, resp.body)
	}
}

// sessionValue is the jar's session cookie value.
func (b *browser) sessionValue() string {
	u, _ := url.Parse(b.a.url + "/ui/")
	for _, c := range b.jar.Cookies(u) {
		if c.Name == sessionCookie {
			return c.Value
		}
	}
	return ""
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the CSRF token of the page at path.
func (b *browser) csrf(path string) string {
	b.t.Helper()
	resp := b.get(path)
	m := csrfInput.FindStringSubmatch(resp.body)
	if resp.status != http.StatusOK || m == nil {
		b.t.Fatalf("GET %s: %d, no CSRF token\n%s", path, resp.status, resp.body)
	}
	return m[1]
}

func TestConsoleSignIn(t *testing.T) {
	a := newAPI(t)
	b := a.browser()

	resp := b.get("/ui/teams/team-1/runs")
	if resp.status != http.StatusFound || resp.header.Get("Location") != "/ui/sign-in?next=%2Fui%2Fteams%2Fteam-1%2Fruns" {
		t.Fatalf("a page without a session: %d to %q, want 302 to the sign-in", resp.status, resp.header.Get("Location"))
	}
	bad := b.signInWith("", url.Values{"credential": {token(t, jwt.SigningMethodHS256, []byte("another-secret-of-enough-length-for-hs256"), nil)}}, nil)
	if bad.status != http.StatusUnauthorized || !strings.Contains(bad.body, `role="alert"`) || !strings.Contains(bad.body, `id="credential"`) || bad.header.Get("Set-Cookie") != "" {
		t.Fatalf("a bad credential: %d, Set-Cookie %q, want 401, the form with an error and no cookie\n%s", bad.status, bad.header.Get("Set-Cookie"), bad.body)
	}
	// A clean jar: sign in for real and read the cookie's attributes.
	b = a.browser()
	ok := b.signInWith("", url.Values{"credential": {userToken(t)}, "next": {"/ui/teams/team-1/runs?status=running"}}, nil)
	set := ok.header.Get("Set-Cookie")
	if ok.status != http.StatusSeeOther || ok.header.Get("Location") != "/ui/teams/team-1/runs?status=running" {
		t.Fatalf("sign-in: %d to %q, want 303 to next", ok.status, ok.header.Get("Location"))
	}
	for _, attr := range []string{sessionCookie + "=", "Path=/ui", "HttpOnly", "SameSite=Strict"} {
		if !strings.Contains(set, attr) {
			t.Errorf("Set-Cookie %q lacks %s", set, attr)
		}
	}
	if strings.Contains(set, "Secure") {
		t.Errorf("Set-Cookie %q is Secure over plain HTTP", set)
	}
	if strings.Contains(set, userToken(t)[:20]) {
		t.Errorf("Set-Cookie %q shows the credential", set)
	}
	if resp := b.get("/ui/teams/team-1/runs"); resp.status != http.StatusOK || !strings.Contains(resp.body, "Runs of team team-1") {
		t.Fatalf("the runs page with a session: %d\n%s", resp.status, resp.body)
	}

	// The cookie is no credential of the API.
	req, _ := http.NewRequest(http.MethodGet, a.url+"/v1/teams/team-1/jobs", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: b.sessionValue()})
	apiResp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	apiResp.Body.Close()
	if apiResp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/teams/team-1/jobs with the session cookie: %d, want 401", apiResp.StatusCode)
	}

	// A next that leaves the console is ignored.
	b2 := a.browser()
	if resp := b2.signInWith("", url.Values{"credential": {userToken(t)}, "next": {"//evil.example/ui/"}}, nil); resp.header.Get("Location") != "/ui/teams/team-1/runs" {
		t.Errorf("sign-in with an outside next: to %q, want the team's runs", resp.header.Get("Location"))
	}

	// Sign out clears the cookie: pages need a sign-in again.
	out := b.post("/ui/sign-out", url.Values{csrfField: {b.csrf("/ui/teams/team-1/runs")}})
	if out.status != http.StatusSeeOther || !strings.Contains(out.header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("sign-out: %d, Set-Cookie %q", out.status, out.header.Get("Set-Cookie"))
	}
	if resp := b.get("/ui/teams/team-1/runs"); resp.status != http.StatusFound {
		t.Fatalf("a page after sign-out: %d, want 302", resp.status)
	}
}

// TestConsoleSessionCookieSecureOverTLS: the cookie is Secure on a request
// that came over TLS.
func TestConsoleSessionCookieSecureOverTLS(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "https://jobrun.example/ui/sign-in", nil)
	r.TLS = &tls.ConnectionState{}
	w := httptest.NewRecorder()
	setSessionCookie(w, r, "v")
	if set := w.Header().Get("Set-Cookie"); !strings.Contains(set, "Secure") || !strings.Contains(set, "HttpOnly") {
		t.Errorf("over TLS: Set-Cookie %q, want Secure and HttpOnly", set)
	}
}

func TestConsoleSessionIsSealed(t *testing.T) {
	now := time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC)
	tk := newTickets(StreamTicketKey(secret), func() time.Time { return now })
	ss := newSessions(tk, HS256(secret), func() time.Time { return now })
	v := ss.seal("the-credential")
	if strings.Contains(v, "the-credential") {
		t.Fatal("the credential shows in the cookie")
	}
	if got, err := ss.open(v); err != nil || got != "the-credential" {
		t.Fatalf("open: %q %v", got, err)
	}
	// Another replica with the same ticket key opens it; another key does not.
	other := newSessions(newTickets(StreamTicketKey(secret), time.Now), HS256(secret), func() time.Time { return now })
	if _, err := other.open(v); err != nil {
		t.Errorf("a replica with the same key: %v", err)
	}
	stranger := newSessions(newTickets(StreamTicketKey([]byte("another secret")), time.Now), HS256(secret), func() time.Time { return now })
	if _, err := stranger.open(v); err == nil {
		t.Error("a server with another key opened the cookie")
	}
	tampered := []byte(v)
	tampered[len(tampered)-3] ^= 1
	if _, err := ss.open(string(tampered)); err == nil {
		t.Error("a tampered cookie opened")
	}
	now = now.Add(sessionMaxAge + time.Second)
	if _, err := ss.open(v); err == nil {
		t.Error("a session older than sessionMaxAge opened")
	}
}

// TestConsoleTeams: a member sees their team's runs and no other team's,
// on the runs page and the run page alike.
func TestConsoleTeams(t *testing.T) {
	a := newAPI(t)
	mine := a.createTeamRun("run-mine", "team-1", "project-1", "revenuecat_sync")
	theirs := a.createTeamRun("run-theirs", "team-2", "project-x", "revenuecat_sync")
	a.waitBroker(theirs.ResourceVersion)
	b := a.browser()
	b.signIn(userToken(t))

	runs := b.get("/ui/teams/team-1/runs")
	if runs.status != http.StatusOK || !strings.Contains(runs.body, `data-run-id="`+mine.Name+`"`) || strings.Contains(runs.body, theirs.Name) {
		t.Fatalf("team-1's runs page: %d, want %s and not %s\n%s", runs.status, mine.Name, theirs.Name, runs.body)
	}
	if !strings.Contains(runs.body, `aria-label="Progress of run `+mine.Name+`"`) {
		t.Errorf("the row has no labelled progress bar\n%s", runs.body)
	}
	for _, path := range []string{"/ui/runs/" + theirs.Name, "/ui/teams/team-2/runs", "/ui/teams/team-2/trigger", "/ui/runs/no-such-run"} {
		if resp := b.get(path); resp.status != http.StatusNotFound || strings.Contains(resp.body, "project-x") {
			t.Errorf("GET %s: %d, want 404 without the run\n%s", path, resp.status, resp.body)
		}
	}
	patchStatus(t, mine, func(jr *jobsv1alpha1.JobRun) {
		jr.Status.Conditions = []metav1.Condition{{Type: "Started", Status: metav1.ConditionTrue, Reason: "PodRunning", Message: "the handler runs", LastTransitionTime: metav1.Now()}}
	})
	for i, reason := range []string{"PodCreated", "Started"} {
		ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: mine.Name + "." + reason},
			InvolvedObject: corev1.ObjectReference{Kind: "JobRun", APIVersion: jobsv1alpha1.GroupVersion.String(), Namespace: a.ns, Name: mine.Name, UID: mine.UID},
			Reason:         reason, Message: "step " + reason, Type: corev1.EventTypeNormal, Count: 1,
			FirstTimestamp: metav1.NewTime(time.Date(2024, 1, 15, 10, 30, i, 0, time.UTC)), LastTimestamp: metav1.NewTime(time.Date(2024, 1, 15, 10, 30, i, 0, time.UTC))}
		if err := env.Client.Create(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	resp := b.get("/ui/runs/" + mine.Name)
	for _, want := range []string{"manual:user:user-1", "<td>PodRunning</td><td>the handler runs</td>", "<td>PodCreated</td><td>step PodCreated</td>"} {
		if resp.status != http.StatusOK || !strings.Contains(resp.body, want) {
			t.Errorf("my run's page: %d, want %s (triggered_by, conditions, events)\n%s", resp.status, want, resp.body)
		}
	}
	if strings.Index(resp.body, "step PodCreated") > strings.Index(resp.body, "step Started") {
		t.Error("the events are not oldest first")
	}
	// Filters and the cursor are the list endpoint's.
	if resp := b.get("/ui/teams/team-1/runs?status=completed"); resp.status != http.StatusOK || strings.Contains(resp.body, mine.Name) {
		t.Errorf("filtered by status=completed: %d, lists the pending run", resp.status)
	}
	if resp := b.get("/ui/teams/team-1/runs?status=bogus"); resp.status != http.StatusBadRequest || !strings.Contains(resp.body, "invalid status") {
		t.Errorf("status=bogus: %d, want 400 with the API's message\n%s", resp.status, resp.body)
	}
	a.createTeamRun("run-mine-2", "team-1", "project-1", "revenuecat_sync")
	var page1 consoleResponse
	waitFor(t, "the second run listed", func() bool {
		page1 = b.get("/ui/teams/team-1/runs?limit=1")
		return strings.Contains(page1.body, `rel="next"`)
	})
	next := regexp.MustCompile(`href="([^"]+)" rel="next"`).FindStringSubmatch(page1.body)
	if next == nil {
		t.Fatalf("no next link\n%s", page1.body)
	}
	page2 := b.get(strings.ReplaceAll(next[1], "&amp;", "&"))
	if page2.status != http.StatusOK || strings.Count(page2.body, "data-run-id=") != 1 || strings.Contains(page2.body, `rel="next"`) {
		t.Errorf("the next page: %d\n%s", page2.status, page2.body)
	}
}

// waitFor polls cond for up to 30 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConsoleCancelNeedsCSRF(t *testing.T) {
	a := newAPI(t)
	run := a.createTeamRun("run-1", "team-1", "project-1", "revenuecat_sync")
	patchStatus(t, run, running)
	a.waitBroker(run.ResourceVersion)
	b := a.browser()
	b.signIn(userToken(t))
	other := a.browser()
	other.signIn(userToken(t))
	path := "/ui/runs/" + run.Name
	token := b.csrf(path)
	if token == other.csrf(path) {
		t.Fatal("two sessions have the same CSRF token")
	}
	cancelled := func() bool {
		got := &jobsv1alpha1.JobRun{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(run), got); err != nil {
			t.Fatal(err)
		}
		return got.IsCancelRequested()
	}
	for _, c := range []struct {
		name   string
		form   url.Values
		header map[string]string
	}{
		{"no token", url.Values{}, nil},
		{"another session's token", url.Values{csrfField: {other.csrf(path)}}, nil},
		{"a garbage token", url.Values{csrfField: {"x"}}, nil},
		{"the token from another origin", url.Values{csrfField: {token}}, map[string]string{"Origin": "https://evil.example"}},
		{"the token from an opaque origin", url.Values{csrfField: {token}}, map[string]string{"Origin": "null"}},
	} {
		if resp := b.do(http.MethodPost, path+"/cancel", c.form, c.header); resp.status != http.StatusForbidden {
			t.Errorf("cancel with %s: %d, want 403", c.name, resp.status)
		}
	}
	if cancelled() {
		t.Fatal("a refused cancel cancelled the run")
	}
	origin := map[string]string{"Origin": a.url}
	if resp := b.do(http.MethodPost, path+"/cancel", url.Values{csrfField: {token}}, origin); resp.status != http.StatusSeeOther || resp.header.Get("Location") != path+"?cancel=requested" {
		t.Fatalf("cancel with the token: %d to %q, want 303 to the run\n%s", resp.status, resp.header.Get("Location"), resp.body)
	}
	if !cancelled() {
		t.Fatal("the cancel from the page did not annotate the run")
	}
	// The API's 400 for a run that is not running, as a message.
	patchStatus(t, run, completed)
	resp := b.post(path+"/cancel", url.Values{csrfField: {token}})
	if resp.status != http.StatusBadRequest || !strings.Contains(resp.body, "job is not in running status (it is completed)") {
		t.Errorf("cancel of a completed run: %d\n%s", resp.status, resp.body)
	}
	// Sign-out is an action too.
	if resp := b.post("/ui/sign-out", url.Values{}); resp.status != http.StatusForbidden {
		t.Errorf("sign-out without the token: %d, want 403", resp.status)
	}
	// A sign-in from another site is refused: by its Origin, and, from a
	// browser that sends none, by the form's token (a cross-site form
	// cannot read it, and the SameSite cookie that holds it is not sent).
	if resp := a.browser().signInWith("", url.Values{"credential": {userToken(t)}}, map[string]string{"Origin": "https://evil.example"}); resp.status != http.StatusForbidden || resp.header.Get("Set-Cookie") != "" {
		t.Errorf("a cross-site sign-in: %d, Set-Cookie %q", resp.status, resp.header.Get("Set-Cookie"))
	}
	for what, form := range map[string]url.Values{
		"no token":      {"credential": {userToken(t)}},
		"another token": {"credential": {userToken(t)}, csrfField: {"AAAAAAAAAAAAAAAAAAAAAA"}},
	} {
		b := a.browser()
		b.csrf("/ui/sign-in") // the browser has its own token's cookie
		if resp := b.post("/ui/sign-in", form); resp.status != http.StatusForbidden || strings.Contains(resp.header.Get("Set-Cookie"), sessionCookie) {
			t.Errorf("a sign-in with %s: %d, Set-Cookie %q, want 403 and no session", what, resp.status, resp.header.Get("Set-Cookie"))
		}
	}
}

func TestConsoleTrigger(t *testing.T) {
	a := newAPI(t)
	a.seed()
	b := a.browser()
	b.signIn(userToken(t))
	form := b.get("/ui/teams/team-1/trigger?job_type=revenuecat_sync")
	for _, want := range []string{`<label for="param-integration_id">integration_id</label>`, `<option>project-1</option>`, `<label for="params">`} {
		if !strings.Contains(form.body, want) {
			t.Errorf("the trigger form lacks %s\n%s", want, form.body)
		}
	}
	if strings.Contains(form.body, "project-x") {
		t.Error("the trigger form offers another team's project")
	}
	choose := b.get("/ui/teams/team-1/trigger")
	if !strings.Contains(choose.body, "<option>revenuecat_sync</option>") && !strings.Contains(choose.body, "revenuecat_sync") || strings.Contains(choose.body, "<option>cleanup</option>") {
		t.Errorf("the job types offered: want revenuecat_sync and not the system job type cleanup\n%s", choose.body)
	}
	token := b.csrf("/ui/teams/team-1/trigger?job_type=revenuecat_sync")
	submit := url.Values{csrfField: {token}, "job_type": {"revenuecat_sync"}, "project_id": {"project-1"}, "param.integration_id": {"int-9"}, "params": {"{}"}}
	if resp := b.post("/ui/teams/team-1/trigger", url.Values{"job_type": {"revenuecat_sync"}, "project_id": {"project-1"}}); resp.status != http.StatusForbidden {
		t.Errorf("a trigger without the token: %d, want 403", resp.status)
	}
	resp := b.post("/ui/teams/team-1/trigger", submit)
	if resp.status != http.StatusSeeOther || !strings.HasPrefix(resp.header.Get("Location"), "/ui/runs/") {
		t.Fatalf("trigger: %d to %q\n%s", resp.status, resp.header.Get("Location"), resp.body)
	}
	id := strings.TrimPrefix(resp.header.Get("Location"), "/ui/runs/")
	got := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: a.ns, Name: id}, got); err != nil {
		t.Fatal(err)
	}
	if string(got.Spec.Params.Raw) != `{"integration_id":"int-9"}` || got.Spec.TriggeredBy != "manual:user:user-1" || got.Spec.TeamID != "team-1" {
		t.Errorf("the run: params %s, triggered by %s, team %s", got.Spec.Params.Raw, got.Spec.TriggeredBy, got.Spec.TeamID)
	}
	again := b.post("/ui/teams/team-1/trigger", submit)
	if again.status != http.StatusConflict || !strings.Contains(again.body, `href="/ui/runs/`+id+`"`) {
		t.Fatalf("a second trigger: %d, want 409 with a link to %s\n%s", again.status, id, again.body)
	}
	bad := b.post("/ui/teams/team-1/trigger", url.Values{csrfField: {token}, "job_type": {"revenuecat_sync"}, "project_id": {"project-2"}, "params": {`{"nope": 1}`}})
	if bad.status != http.StatusBadRequest || !strings.Contains(bad.body, "invalid params") {
		t.Errorf("params the schema refuses: %d\n%s", bad.status, bad.body)
	}
}

// clock is a test's movable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestConsoleSessionEndsWithItsCredential: the sealed credential is
// authenticated on every request, so an expired JWT ends the session, on
// pages and streams alike.
func TestConsoleSessionEndsWithItsCredential(t *testing.T) {
	clk := &clock{t: time.Now()}
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{jwt: HS256(secret, JWTChecks{Now: clk.now}), now: clk.now, heartbeat: 50 * time.Millisecond})
	run := a.createTeamRun("run-1", "team-1", "project-1", "revenuecat_sync")
	a.waitBroker(run.ResourceVersion)
	b := a.browser()
	b.signIn(token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = clk.now().Add(5 * time.Minute).Unix() }))
	if resp := b.get("/ui/runs/" + run.Name); resp.status != http.StatusOK {
		t.Fatalf("before expiry: %d", resp.status)
	}
	stream := a.consoleStream(b, "/ui/runs/"+run.Name+"/events")
	if stream.StatusCode != http.StatusOK || stream.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("the run's stream with the session: %d %s", stream.StatusCode, stream.Header.Get("Content-Type"))
	}
	open := readStream(t, stream)
	if ev := open.next(); ev.name != "snapshot" {
		t.Fatalf("the stream's first event: %q, want snapshot", ev.name)
	}
	clk.add(5*time.Minute + DefaultJWTLeeway + time.Second)
	if ev := open.next(); ev.name != "revoked" {
		t.Fatalf("the open stream after the JWT expired: %s %s, want revoked", ev.name, ev.data)
	}
	open.expectEnd(10 * time.Second)
	if resp := b.get("/ui/runs/" + run.Name); resp.status != http.StatusFound || !strings.HasPrefix(resp.header.Get("Location"), "/ui/sign-in") {
		t.Fatalf("after the JWT expired: %d to %q, want 302 to the sign-in", resp.status, resp.header.Get("Location"))
	}
	if resp := a.consoleStream(b, "/ui/teams/team-1/events"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a stream after the JWT expired: %d, want 401", resp.StatusCode)
	}
}

// consoleStream opens a console stream with b's cookies.
func (a *api) consoleStream(b *browser, path string) *http.Response {
	a.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, a.url+path, nil)
	u, _ := url.Parse(a.url + path)
	for _, c := range b.jar.Cookies(u) {
		req.AddCookie(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.t.Cleanup(cancel)
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// TestConsoleTeamStream: the team page's stream is the API's team stream
// with the session's principal: a team member gets its runs' changes; no
// session, no stream; another team, 404.
func TestConsoleTeamStream(t *testing.T) {
	a := newAPI(t)
	b := a.browser()
	if resp := a.consoleStream(b, "/ui/teams/team-1/events"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a session: %d, want 401", resp.StatusCode)
	}
	b.signIn(userToken(t))
	if resp := a.consoleStream(b, "/ui/teams/team-2/events"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("another team's stream: %d, want 404", resp.StatusCode)
	}
	st := readStream(t, a.consoleStream(b, "/ui/teams/team-1/events"))
	if ev := st.next(); ev.name != "reset" {
		t.Fatalf("first event %q, want reset", ev.name)
	}
	run := a.createTeamRun("run-1", "team-1", "project-1", "revenuecat_sync")
	patchStatus(t, run, setProgress(4))
	for {
		ev := st.next()
		if ev.name == "run" && ev.run(t)["id"] == run.Name {
			if p, _ := ev.run(t)["progress"].(map[string]any); p != nil && p["processed"] == float64(4) {
				break
			}
		}
	}
}
