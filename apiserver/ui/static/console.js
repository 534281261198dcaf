// jobrun console: live runs. The page's <main data-events> names its event
// stream (same origin: the session cookie authenticates it); each event
// updates the rows or the run with data-run-id, and a run the team page does
// not show yet makes htmx fetch the table again.
(function () {
  "use strict";
  var main = document.querySelector("main[data-events]");
  if (!main || !window.EventSource) return;
  var live = document.getElementById("live");
  var refreshTimer = null;

  function field(el, name) { return el.querySelector('[data-field="' + name + '"]'); }
  function setText(el, name, text) {
    var f = field(el, name);
    if (f && f.textContent !== text) f.textContent = text;
  }

  function refreshTable() {
    var runs = document.getElementById("runs");
    if (!runs || runs.hasAttribute("data-paged") || !window.htmx || refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      htmx.ajax("GET", location.pathname + location.search, { target: "#runs", select: "#runs", swap: "outerHTML" });
    }, 300);
  }

  // A run page's conditions and Events are not in the stream's events:
  // htmx fetches them again after a change, at most once a second.
  var historyTimer = null;
  function refreshHistory() {
    if (!document.getElementById("history") || !window.htmx || historyTimer) return;
    historyTimer = setTimeout(function () {
      historyTimer = null;
      htmx.ajax("GET", location.pathname, { target: "#history", select: "#history", swap: "outerHTML" });
    }, 1000);
  }

  function apply(run) {
    refreshHistory();
    var els = document.querySelectorAll('[data-run-id="' + CSS.escape(run.id) + '"]');
    if (els.length === 0) { refreshTable(); return; }
    els.forEach(function (el) {
      var status = field(el, "status");
      if (status && status.textContent !== run.status) {
        status.textContent = run.status;
        live.textContent = "Run " + run.id + " is " + run.status + ".";
      }
      var bar = el.querySelector("progress");
      var p = run.progress;
      if (bar && p && p.total > 0) {
        bar.max = p.total;
        bar.value = p.processed;
      }
      if (p) {
        setText(el, "counts", p.processed + "/" + p.total);
        setText(el, "message", p.message || "");
      }
      setText(el, "started_at", run.started_at || "");
      setText(el, "completed_at", run.completed_at || "");
      setText(el, "error", run.error || "");
      var result = field(el, "result");
      if (result) result.textContent = JSON.stringify(run.result, null, 2);
      var cancel = field(el, "cancel");
      if (cancel) cancel.hidden = run.status !== "running";
    });
  }

  var es = new EventSource(main.dataset.events);
  function onRun(e) { apply(JSON.parse(e.data).job_run); }
  ["snapshot", "update", "run"].forEach(function (name) { es.addEventListener(name, onRun); });
  es.addEventListener("final", function (e) { onRun(e); es.close(); });
  es.addEventListener("deleted", function (e) {
    var run = JSON.parse(e.data).job_run;
    document.querySelectorAll('[data-run-id="' + CSS.escape(run.id) + '"]').forEach(function (el) {
      var status = field(el, "status");
      if (status) status.textContent = "deleted";
      var cancel = field(el, "cancel");
      if (cancel) cancel.hidden = true;
    });
    live.textContent = "Run " + run.id + " was deleted.";
    if (!document.getElementById("runs")) es.close();
  });
  es.addEventListener("revoked", function () {
    es.close();
    main.dataset.stream = "revoked";
    live.textContent = "Live updates stopped: your sign-in is no longer valid. Reload to sign in again.";
  });
  es.addEventListener("reset", function (e) {
    if (JSON.parse(e.data).reason !== "start") refreshTable();
  });
  main.dataset.stream = "opening";
  es.addEventListener("open", function () { main.dataset.stream = "open"; });
  es.addEventListener("error", function () { main.dataset.stream = "reconnecting"; });
})();
