package apiserver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// chromium is the path of a Chromium, or "".
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// artifactsDir is where the browser test keeps its screenshots:
// $JOBRUN_ARTIFACTS/console, or .artifacts/console at the repository's
// root (git-ignored).
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("JOBRUN_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", ".artifacts")
	}
	dir, err := filepath.Abs(filepath.Join(dir, "console"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestConsoleInBrowser drives the console in headless Chromium: sign in with
// the keyboard, the team's runs without another team's, a progress bar that
// moves without a reload while the run's status is patched as the runner
// patches it, cancel from the run page, trigger from the form and its 409,
// another team's run not found. Screenshots go to artifactsDir.
func TestConsoleInBrowser(t *testing.T) {
	path := chromium()
	if path == "" {
		if os.Getenv("JOBRUN_BROWSER") == "require" {
			t.Fatal("JOBRUN_BROWSER=require, but no chromium or chromium-browser is on PATH: make tools-browser installs it")
		}
		t.Skip("no Chromium (chromium or chromium-browser on PATH): make tools-browser installs it; JOBRUN_BROWSER=require makes this a failure")
	}
	start := time.Now()
	a := newAPI(t)
	a.seed()
	run := a.createTeamRun("run-live", "team-1", "project-2", "revenuecat_sync")
	patchStatus(t, run, running)
	theirs := a.createTeamRun("run-theirs", "team-2", "project-x", "revenuecat_sync")
	a.waitBroker(theirs.ResourceVersion)
	shots := artifactsDir(t)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.WindowSize(1200, 900))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute) // generous: a shared 2-core machine
	defer cancel()

	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) bool {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	evalString := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	screenshot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := chromedp.FullScreenshot(100)(ctx, tg) // quality 100: a PNG
			if err != nil {
				return err
			}
			file := filepath.Join(shots, name)
			t.Logf("screenshot: %s", file)
			return os.WriteFile(file, png, 0o644)
		})
	}
	// poll waits for a DOM predicate, with a generous bound: the machine
	// is shared.
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(60*time.Second))
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }

	// Sign in with the keyboard: the page redirects to the form and back.
	step("sign in",
		chromedp.Navigate(a.url+"/ui/teams/team-1/runs"),
		chromedp.WaitVisible(css("#credential")),
		chromedp.SendKeys(css("#credential"), userToken(t)+kb.Enter),
		chromedp.WaitVisible(css(`tr[data-run-id="run-live"]`)),
	)
	if eval(`document.querySelector('[data-run-id="run-theirs"]') !== null`) {
		t.Fatal("team-1's runs page shows team-2's run")
	}

	// Live progress: the runner patches status.progress; the bar follows
	// without a reload (a marker on window survives only without one).
	bar := `document.querySelector('tr[data-run-id="run-live"] progress')`
	step("the stream opens",
		poll(`document.querySelector('main').dataset.stream === 'open'`),
	)
	eval(`window.notReloaded = true`)
	for _, n := range []int64{4, 7} {
		patchStatus(t, run, setProgress(n))
		step("the progress bar moves", poll(bar+`.value === `+strconv.FormatInt(n, 10)))
	}
	// A new run of the team joins the list (htmx fetches the table again).
	a.createTeamRun("run-new", "team-1", "project-1", "revenuecat_sync")
	step("a new run appears", chromedp.WaitVisible(css(`tr[data-run-id="run-new"]`)), screenshot("runs-live-progress.png"))
	if !eval(`window.notReloaded === true`) {
		t.Fatal("the page reloaded to show the progress")
	}

	// Cancel from the run page.
	step("cancel",
		chromedp.Navigate(a.url+"/ui/runs/run-live"),
		chromedp.WaitVisible(css("#cancel")),
		chromedp.Click(css("#cancel")),
		chromedp.WaitVisible(css("#message")), // the run page again, saying so
	)
	waitFor(t, "the cancel annotation", func() bool {
		got := &jobsv1alpha1.JobRun{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(run), got); err != nil {
			t.Fatal(err)
		}
		return got.IsCancelRequested()
	})
	// The runner stops and the run ends: the page shows it live, and the
	// Cancel button goes.
	step("the run page's stream opens", poll(`document.querySelector('main').dataset.stream === 'open'`))
	patchStatus(t, run, func(jr *jobsv1alpha1.JobRun) {
		jr.Status.Phase = jobsv1alpha1.JobRunCancelled
		jr.Status.Conditions = append(jr.Status.Conditions, metav1.Condition{Type: "Finished", Status: metav1.ConditionTrue,
			Reason: "HandlerStopped", Message: "the handler stopped on the cancel request", LastTransitionTime: metav1.Now()})
	})
	step("the run ends live",
		poll(`document.querySelector('[data-field="status"]').textContent === 'cancelled' && document.querySelector('form[data-field="cancel"]').hidden`),
		poll(`document.getElementById('live').textContent.includes('cancelled')`),
		// Its conditions follow too (htmx fetches them after the change).
		poll(`document.getElementById('history').textContent.includes('HandlerStopped')`),
		screenshot("run-cancelled.png"),
	)

	// Trigger from the form, then again: the 409 links the active run.
	fill := chromedp.Steps(
		chromedp.Navigate(a.url+"/ui/teams/team-1/trigger"),
		chromedp.WaitVisible(css("#job_type")),
		chromedp.SetValue(css("#job_type"), "revenuecat_sync"),
		chromedp.Click(css(`#choose-job-type button[type="submit"]`)),
		chromedp.WaitVisible(css("#param-integration_id")),
		chromedp.SendKeys(css("#param-integration_id"), "int-7"),
		chromedp.SetValue(css("#project_id"), "project-1"),
		chromedp.Click(css(`#trigger button[type="submit"]`)),
	)
	step("trigger", fill,
		chromedp.WaitVisible(css("div[data-run-id]")), // the new run's page
	)
	triggered := strings.TrimPrefix(evalString(`location.pathname`), "/ui/runs/")
	step("trigger again: 409", fill,
		chromedp.WaitVisible(css("#conflict-run")),
		screenshot("trigger-409.png"),
	)
	if href := evalString(`document.getElementById('conflict-run').getAttribute('href')`); href != "/ui/runs/"+triggered {
		t.Fatalf("the 409 links %q, want /ui/runs/%s", href, triggered)
	}

	// Another team's run is not found.
	step("another team's run",
		chromedp.Navigate(a.url+"/ui/runs/run-theirs"),
		chromedp.WaitVisible(css("h1")),
		screenshot("other-team-run.png"),
	)
	if title := evalString(`document.title`); !strings.HasPrefix(title, "Not Found") {
		t.Fatalf("another team's run page: title %q, want Not Found", title)
	}
	// The charts of the last day: a day of a job type's runs, some failed.
	for i := range 36 {
		phase, took := jobsv1alpha1.JobRunCompleted, time.Duration(20+i%7*9)*time.Second
		if i%5 == 0 {
			phase = jobsv1alpha1.JobRunFailed
		}
		a.statsRun(fmt.Sprintf("day-%02d", i), "team-1", "demo_sync", start.Add(-time.Duration(i*i)*time.Minute*17/10), phase, took)
	}
	bars := `document.querySelectorAll('section[data-job-type="demo_sync"] rect.bar-runs')`
	step("the charts",
		chromedp.Navigate(a.url+"/ui/teams/team-1/stats"),
		chromedp.WaitVisible(css(`section[data-job-type="demo_sync"] svg`)),
		screenshot("stats.png"),
	)
	// The bars are drawn (the stylesheet fills them; the page's CSP allows
	// no inline style) and the busiest hour's is the chart's full height.
	if !eval(`Array.from(` + bars + `).some(r => r.getBoundingClientRect().height === 60 && getComputedStyle(r).fill !== 'rgb(0, 0, 0)')`) {
		t.Error("the stats page's bars are not drawn at full height with the stylesheet's colour")
	}
	t.Logf("the browser test took %s", time.Since(start).Round(time.Millisecond))
}
