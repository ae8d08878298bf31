/* Freshness (GET /api/pipeline/freshness): the pipeline page's table per domain, and the
   "data as of … ago" line of every chart on the e-commerce and restaurant pages, coloured by state
   (ok / late / stale / unknown: the rule of salespulse/freshness.py, shared with Dagster). */
(function () {
  "use strict";
  var NAMES = { ecommerce: "E-commerce", restaurant: "Restaurant" };
  var POLL_MS = 5000;
  // chart panels that read the raw tables (their data is as old as the newest event);
  // every other chart reads the minute reports (as old as the newest report window)
  var RAW_PANELS = { realtime: true };

  function utc(iso) { return new Date(iso).toISOString().slice(11, 19) + " UTC"; }
  function ago(seconds) {
    if (seconds == null) { return "–"; }
    var s = Math.max(0, seconds);
    if (s < 90) { return Math.round(s) + " s ago"; }
    if (s < 5400) { return Math.round(s / 60) + " min ago"; }
    return Math.round(s / 3600) + " h ago";
  }
  function secs(v) { return v == null ? "–" : Number(v).toFixed(v < 10 ? 1 : 0) + " s"; }
  function int(v) { return v == null ? "–" : SP.fmt.int(v); }

  // What each measure says, and the target it is judged by (the tooltip).
  function rowsText(r) {
    return r.samples ? "p95 " + secs(r.p95_s) + " · p50 " + secs(r.p50_s) + " (" + int(r.samples) + " rows, last min)"
      : "no rows stored in the last minute";
  }
  function rowsTarget(r) {
    return "event time → row visible, p95 over the last minute (events stamped over " + r.late_event_s +
      " s before they were stored are late data, left out): ok ≤ " + r.target_s + " s, late ≤ " + r.stale_after_s + " s";
  }
  function reportsText(r) {
    if (!r.has_window) { return r.state === "stale" ? "no report window, though data arrived" : "no data yet"; }
    return "as of " + utc(r.as_of) + " (" + ago(r.age_s) + "), " + secs(r.behind_s) + " behind the newest event";
  }
  function reportsTarget(r) {
    return "newest report window behind the newest event: ok ≤ " + r.target_s + " s, late ≤ " + r.stale_after_s + " s";
  }
  function lagText(l) {
    if (l.messages == null) { return "never observed"; }
    return int(l.messages) + " messages (observed " + ago(l.observation_age_s) + ")" +
      (l.state === "unknown" ? ": too old, is kafka_lag_sensor running?" : "");
  }
  function lagTarget(l) {
    return "consumer lag of " + l.topic + ": ok ≤ " + l.target_messages + ", late ≤ " + l.stale_after_messages +
      " messages; unknown when last observed over " + l.observation_max_age_s + " s ago";
  }

  function badge(state) {
    var b = document.createElement("span");
    b.className = "badge"; b.dataset.state = state; b.textContent = state;
    return b;
  }
  function measureCell(m, text, title) {
    var span = document.createElement("span");
    span.className = "measure"; span.title = title;
    span.append(badge(m.state), " " + text);
    return span;
  }

  // Pipeline page: one row per domain.
  function renderPipeline(d) {
    var domains = Object.keys(d.domains || {}).map(function (k) { return d.domains[k]; });
    SP.table("table-freshness", [
      { label: "domain", value: function (x) { return NAMES[x.domain] || x.domain; } },
      { label: "state", value: function (x) { return badge(x.state); } },
      { label: "rows visible", value: function (x) { return measureCell(x.rows, rowsText(x.rows), rowsTarget(x.rows)); } },
      { label: "reports", value: function (x) { return measureCell(x.reports, reportsText(x.reports), reportsTarget(x.reports)); } },
      { label: "consumer lag", value: function (x) { return measureCell(x.lag, lagText(x.lag), lagTarget(x.lag)); } }
    ], domains);
    document.getElementById("table-freshness").dataset.state = d.state;
    return domains.length > 0;
  }

  // Chart pages: a line under each chart's title.
  function ageLine(panel) {
    var line = panel.querySelector(":scope > .data-age");
    if (!line) {
      line = document.createElement("p");
      line.className = "data-age";
      var title = panel.querySelector(":scope > h2");
      panel.insertBefore(line, title ? title.nextSibling : panel.firstChild);
    }
    return line;
  }
  function describe(panelName, f) {
    if (RAW_PANELS[panelName]) {
      var r = f.rows;
      return { state: r.state, title: rowsTarget(r), text: r.newest_event_at
        ? "data as of " + utc(r.newest_event_at) + ", " + ago(r.newest_event_age_s) +
          (r.samples ? " · rows visible within " + secs(r.p95_s) + " (p95)" : "")
        : "no events yet" };
    }
    var p = f.reports;
    return { state: p.state, title: reportsTarget(p) + (p.has_window ? " (now " + secs(p.behind_s) + ")" : ""),
             text: p.has_window ? "data as of " + utc(p.as_of) + ", " + ago(p.age_s) : reportsText(p) };
  }
  function renderAges(f) {
    document.querySelectorAll("section.panel[data-panel]").forEach(function (panel) {
      if (!panel.querySelector(".chart")) { return; }
      var name = panel.dataset.panel, line = ageLine(panel), about = describe(name, f);
      line.dataset.state = about.state;
      line.dataset.source = RAW_PANELS[name] ? "rows" : "reports";
      line.textContent = about.text;
      line.title = about.state + ": " + about.title;
    });
  }
  function failAges(err) {
    document.querySelectorAll("section.panel[data-panel] > .data-age").forEach(function (line) {
      line.dataset.state = "unknown";
      line.textContent = "data age unknown (" + (err.message || "request failed") + ")";
    });
  }
  function startDataAge(domain) {
    function poll() {
      SP.api("/api/pipeline/freshness", { domain: domain })
        .then(function (d) { renderAges(d.domains[domain]); }, failAges)
        .then(function () { setTimeout(poll, POLL_MS); });
    }
    poll();
  }

  window.SPFreshness = { renderPipeline: renderPipeline };
  document.addEventListener("DOMContentLoaded", function () {
    var domain = document.body.dataset.page;
    if (NAMES[domain]) { startDataAge(domain); }
  });
})();
