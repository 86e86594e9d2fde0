// jobmill dashboard: live updates over EventSource, relative times. Our own code, no
// dependencies; every page works without it. Never inserts text as HTML: fresh server
// renderings are parsed with DOMParser (which runs no script) and swapped in.
(function () {
  "use strict";

  function relative(agoMs) {
    var future = agoMs < 0;
    var s = Math.floor(Math.abs(agoMs) / 1000);
    if (s < 2) return "just now";
    var t = s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min" : s < 86400 ? Math.floor(s / 3600) + " h" : Math.floor(s / 86400) + " d";
    return future ? "in " + t : t + " ago";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-rel]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(at)) el.textContent = relative(now - at);
    });
  }

  var refreshing = false;
  var again = false;

  // Fetch this page again and swap its #live part in, unless the user is working inside it.
  function refresh() {
    if (refreshing) { again = true; return; }
    var cur = document.getElementById("live");
    if (!cur) return;
    if (cur.contains(document.activeElement) && document.activeElement !== document.body) return;
    refreshing = true;
    fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        var now = document.getElementById("live");
        if (fresh && now) {
          now.replaceWith(document.importNode(fresh, true));
          tick();
        }
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; setTimeout(refresh, 300); }
      });
  }

  var pending = null;
  function soon() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; refresh(); }, 700);
  }

  function setProgress(job) {
    var bar = document.getElementById("progress");
    var text = document.getElementById("progress-text");
    var state = document.getElementById("job-state");
    if (state && job.state) {
      state.textContent = job.state;
      state.className = "badge " + job.state;
    }
    if (!bar || !job.progress) return;
    var p = job.progress;
    var total = p.total && p.total > 0 ? p.total : 100;
    bar.max = total;
    bar.value = Math.min(p.done, total);
    if (text) text.textContent = p.done + (p.total ? " / " + p.total : "") + (p.message ? " · " + p.message : "");
  }

  function start() {
    var body = document.body;
    tick();
    setInterval(tick, 10000);
    if (!window.EventSource) return;
    var fleet = body.getAttribute("data-events");
    if (fleet) {
      var es = new EventSource(fleet);
      es.addEventListener("state", soon);
      es.onmessage = soon;
    }
    var jobStream = body.getAttribute("data-job-events");
    if (jobStream) {
      var js = new EventSource(jobStream);
      js.addEventListener("progress", function (e) {
        try { setProgress(JSON.parse(e.data)); } catch (err) { /* a malformed event changes nothing */ }
      });
      js.addEventListener("state", function (e) {
        var job = null;
        try { job = JSON.parse(e.data); setProgress(job); } catch (err) { /* ignore */ }
        // The server ends the stream after the terminal state; do not reconnect to it.
        if (job && ["succeeded", "failed", "cancelled"].indexOf(job.state) >= 0) js.close();
        soon();
      });
    }
    var every = parseInt(body.getAttribute("data-refresh") || "", 10);
    if (every > 0) setInterval(refresh, every);
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
