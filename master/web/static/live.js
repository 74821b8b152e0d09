// pkgfarm dashboard: live build pages. The job rows change state in place when the master's
// event stream (GET /api/v1/events?build=ID, Server-Sent Events) reports a change; each log
// follows its running job line by line, and shows the whole log once the job has ended.
// Without the event stream (an older master, a public page without a log-in), the rows are
// refreshed every few seconds instead.
(function () {
  "use strict";
  var root = document.getElementById("build");
  if (!root) { return; }
  var jobsUrl = root.getAttribute("data-jobs-url");
  var eventsUrl = root.getAttribute("data-events-url");
  var status = document.getElementById("live-status");
  var following = {};   // job id -> true while its log is being followed
  var shown = {};       // job id -> attempt whose whole log is shown
  var pollTimer = null;
  var refreshing = false, again = false;

  function setText(row, field, value) {
    var cell = row.querySelector('[data-field="' + field + '"]');
    if (cell && cell.textContent !== String(value)) { cell.textContent = value; }
  }

  function setBadge(holder, state) {
    var badge = holder.querySelector(".badge");
    if (!badge) { return; }
    badge.textContent = state;
    badge.className = "badge s-" + state;
  }

  function apply(build) {
    setBadge(document.getElementById("build-state"), build.state);
    var restartable = false, cancellable = false;
    build.jobs.forEach(function (job) {
      var row = document.getElementById("job-" + job.id);
      if (!row) { return; }
      row.setAttribute("data-state", job.state);
      row.setAttribute("data-started", job.started_ts || "");
      setBadge(row, job.state);
      ["version", "attempt", "queued", "started", "finished", "duration"].forEach(function (f) {
        setText(row, f, job[f]);
      });
      setText(row, "worker", job.worker || "–");
      var error = document.getElementById("error-" + job.id);
      if (error) { error.textContent = job.error; error.hidden = !job.error; }
      if (["failed", "dep-failed", "cancelled"].indexOf(job.state) >= 0) { restartable = true; }
      if (!job.final) { cancellable = true; }
      showLog(job);
    });
    var restart = document.getElementById("restart");
    if (restart) { restart.disabled = !restartable; }
    var cancel = document.getElementById("cancel");
    if (cancel) { cancel.disabled = !cancellable; }
    root.setAttribute("data-state", build.state);
  }

  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(jobsUrl, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (build) { if (build) { apply(build); } })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function wholeLog(job) {
    var pre = document.getElementById("logtext-" + job.id);
    fetch(job.log_url, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) { return; }
        pre.textContent = text || "(empty log)";
        pre.scrollTop = pre.scrollHeight;
        shown[job.id] = job.attempt;
      })
      .catch(function () {});
  }

  function follow(job) {
    var pre = document.getElementById("logtext-" + job.id);
    following[job.id] = true;
    pre.textContent = "";
    fetch(job.log_url + "?follow=1", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (!r.ok || !r.body) { throw new Error("no stream"); }
        var reader = r.body.getReader();
        var decoder = new TextDecoder();
        function pump() {
          return reader.read().then(function (part) {
            if (part.done) { return; }
            var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.appendChild(document.createTextNode(decoder.decode(part.value, {stream: true})));
            if (stick) { pre.scrollTop = pre.scrollHeight; }
            return pump();
          });
        }
        return pump();
      })
      .catch(function () {})
      .then(function () {
        following[job.id] = false;
        refresh();  // the job ended (or the stream broke): its final state, its whole log
      });
  }

  function showLog(job) {
    if (following[job.id]) { return; }
    if (job.final) {
      if (shown[job.id] !== job.attempt) { wholeLog(job); }
    } else {
      shown[job.id] = null;
      follow(job);
    }
  }

  function poll() {
    if (pollTimer === null) {
      pollTimer = window.setInterval(refresh, 3000);
      if (status) { status.textContent = "Refreshed every 3 s."; }
      root.setAttribute("data-live", "polling");
    }
  }

  function listen() {
    if (!window.EventSource || !eventsUrl) { poll(); return; }
    var source = new EventSource(eventsUrl, {withCredentials: true});
    ["build.created", "build.finished", "job.queued", "job.started", "job.finished",
     "upload.accepted", "reset"].forEach(function (kind) {
      source.addEventListener(kind, refresh);
    });
    source.onopen = function () {
      root.setAttribute("data-live", "events");
      if (status) { status.textContent = "Live."; }
      if (pollTimer !== null) { window.clearInterval(pollTimer); pollTimer = null; }
      refresh();  // whatever changed before the stream opened
    };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) { poll(); }
    };
  }

  // A building job's duration goes on between events (the master's figure replaces it at
  // the next refresh).
  function tick() {
    var now = Date.now() / 1000;
    Array.prototype.forEach.call(document.querySelectorAll("#jobs tr[data-started]"),
      function (row) {
        var started = parseFloat(row.getAttribute("data-started"));
        if (!started || row.getAttribute("data-state") !== "building") { return; }
        var s = Math.max(0, Math.floor(now - started));
        setText(row, "duration", s < 60 ? s + " s" : s < 3600
          ? Math.floor(s / 60) + " min " + (s % 60) + " s"
          : Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min");
      });
  }

  refresh();
  listen();
  window.setInterval(tick, 1000);
}());
