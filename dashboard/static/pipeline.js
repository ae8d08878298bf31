/* Pipeline page: stale-report / blocked-queue / process-restarting notice, throughput, lag, dead letters with reasons,
   last report, Dagster runs. */
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var f = SP.fmt;
  function byTopic(series, key) {
    var topics = {};
    series.forEach(function (s) { (topics[s.topic] = topics[s.topic] || { x: [], y: [] }); topics[s.topic].x.push(s.t); topics[s.topic].y.push(s[key]); });
    return Object.keys(topics).map(function (t) { return { type: "scatter", mode: "lines+markers", name: SP.esc(t), x: topics[t].x, y: topics[t].y }; });
  }
  var DOMAINS = { ecommerce: "e-commerce", restaurant: "restaurant" };
  function ago(seconds) {
    if (seconds < 90) { return Math.round(seconds) + " s ago"; }
    if (seconds < 5400) { return Math.round(seconds / 60) + " min ago"; }
    return Math.round(seconds / 3600) + " h ago";
  }
  function hhmm(iso) { return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }); }
  // What freshness_sensor last recorded (d.freshness): one line per problem, hidden when all is well.
  // A domain's state is the freshness rule's (salespulse/freshness.py), the freshness table's too.
  function freshnessLines(fr) {
    var lines = [];
    (fr.reports || []).forEach(function (r) {
      var word = r.stale ? "stale" : r.state === "late" ? "late" : null;
      if (!word) { return; }
      var name = DOMAINS[r.domain] || r.domain;
      lines.push(r.newest_window
        ? "Reports are " + word + ": newest " + name + " window " + hhmm(r.newest_window) + ", " +
          Math.round(r.minutes_behind) + " min behind the newest data (target " + r.target_minutes + " min)."
        : "Reports are " + word + ": no " + name + " report window at all, though data arrived (target " +
          r.target_minutes + " min).");
    });
    var q = fr.queue;
    if (q && q.blocked) {
      var n = (q.stalled || []).length;
      lines.push("Runs are queued behind " + n + " run" + (n === 1 ? "" : "s") + " making no progress (" +
        q.queued + " queued; silent: " + q.stalled.map(function (r) { return String(r.run_id).slice(0, 8); }).join(", ") + ").");
    }
    if (!fr.checked_at) {
      lines.push("Report freshness has not been checked yet: freshness_sensor (Dagster daemon) has recorded nothing.");
    } else if (!fr.check_current) {
      lines.push("Report freshness was last checked " + ago(fr.check_age_seconds) + " (every minute when running): " +
        "the Dagster daemon or freshness_sensor is not running, so this may be out of date.");
    }
    return lines;
  }
  // The local stack's processes (d.processes, null outside `make run`): one line per process not running.
  function processLines(processes) {
    return (processes || []).filter(function (p) { return !p.running; }).map(function (p) {
      return "Process " + p.name + " is not running (" + p.state + (p.detail ? ": " + p.detail : "") + ").";
    });
  }
  function renderNotice(d) {
    var box = document.getElementById("freshness-notice");
    var fr = d.freshness || {};
    var down = processLines(d.processes);
    var lines = down.concat(freshnessLines(fr));
    box.replaceChildren.apply(box, lines.map(function (t) { var p = document.createElement("p"); p.textContent = t; return p; }));
    box.hidden = lines.length === 0;
    var late = (fr.reports || []).some(function (r) { return !r.stale && r.state === "late"; });
    box.dataset.state = fr.stale ? "stale" : down.length ? "processes" : late ? "late" : lines.length ? "unchecked" : "ok";
  }
  function render(d) {
    renderNotice(d);
    SP.setCard("throughput", f.num(d.throughput_messages_per_s, 1));
    SP.setCard("ingest", f.num(d.ingest_last_minute.messages_per_s, 1));
    SP.setCard("lag", f.int(d.lag_total));
    SP.setCard("dead_letters", f.int(d.dead_letters.total));
    SP.setCard("last_report", f.age(d.last_report_at));
    var link = document.getElementById("dagster-link");
    if (d.dagster_ui_url && /^https?:\/\//.test(d.dagster_ui_url)) { link.href = d.dagster_ui_url; }
    var series = d.series || [];
    SP.plot("chart-throughput", byTopic(series, "messages_per_s"), { yaxis: { title: { text: "msg/s" }, rangemode: "tozero" } });
    SP.plot("chart-lag", byTopic(series, "lag"), { yaxis: { title: { text: "messages" }, rangemode: "tozero" } });
    SP.table("table-topics", [
      { label: "topic", value: function (r) { return r.topic; } },
      { label: "msg/s", value: function (r) { return f.num(r.messages_per_s, 1); } },
      { label: "lag", value: function (r) { return f.int(r.lag); } },
      { label: "committed", value: function (r) { return f.int(r.committed); } },
      { label: "high watermark", value: function (r) { return f.int(r.high_watermark); } },
      { label: "observed", value: function (r) { return f.age(r.observed_at); } }
    ], d.topics || []);
    SP.table("table-reasons", [
      { label: "reason", value: function (r) { return r.reason; } },
      { label: "topic", value: function (r) { return r.topic; } },
      { label: "count", value: function (r) { return f.int(r.count); } },
      { label: "last seen", value: function (r) { return f.age(r.last_seen); } }
    ], d.dead_letters.reasons || []);
    SP.table("table-recent", [
      { label: "received", value: function (r) { return f.time(r.received_at); } },
      { label: "topic", value: function (r) { return r.topic; } },
      { label: "partition/offset", value: function (r) { return r.partition + "/" + r.offset; } },
      { label: "reason", value: function (r) { return r.reason; } },
      { label: "payload", value: function (r) { return r.payload_preview; } }
    ], d.dead_letters.recent || []);
    var base = (d.dagster_ui_url || "").replace(/\/$/, "");
    SP.table("table-runs", [
      { label: "run", value: function (r) {
          if (!/^https?:\/\//.test(base)) { return r.run_id; }
          var a = document.createElement("a"); a.href = base + "/runs/" + encodeURIComponent(r.run_id);
          a.target = "_blank"; a.rel = "noopener noreferrer"; a.textContent = String(r.run_id).slice(0, 8); return a; } },
      { label: "job", value: function (r) { return r.job_name; } },
      { label: "status", value: function (r) { return r.status; } },
      { label: "partition", value: function (r) { return r.partition; } },
      { label: "recorded", value: function (r) { return f.age(r.recorded_at); } }
    ], d.runs || []);
    return true;
  }
  function has(d, what) {
    if (what === "series") { return (d.series || []).length > 0; }
    if (what === "topics") { return (d.topics || []).length > 0; }
    if (what === "reasons") { return (d.dead_letters.reasons || []).length > 0; }
    if (what === "recent") { return (d.dead_letters.recent || []).length > 0; }
    if (what === "runs") { return (d.runs || []).length > 0; }
    return true;
  }
  // One request feeds every panel; render returns the per-panel empty flags.
  SP.start([{ panels: ["cards", "throughput", "lag", "topics", "reasons", "runs", "recent-dl"], url: "/api/pipeline/status",
    params: { limit: 20 }, render: function (d) {
      render(d);
      return { cards: true, throughput: has(d, "series"), lag: has(d, "series"), topics: has(d, "topics"),
               reasons: has(d, "reasons"), runs: has(d, "runs"), "recent-dl": has(d, "recent") };
    } },
    // freshness per domain (freshness.js): its own endpoint, not the time range
    { panels: ["freshness"], url: "/api/pipeline/freshness", usesRange: false, render: SPFreshness.renderPipeline },
    // reconciliation and alert checks (pipeline_checks.js)
    SPChecks.panel]);
});
