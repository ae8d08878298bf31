/* Pipeline page: reconciliation and alert checks (/api/pipeline/checks), the latest outcome of each check with
   its offending windows, failing ones first, and a notice naming them. pipeline.js adds SPChecks.panel to its
   SP.start list (textContent only: descriptions carry figures from the database). */
window.SPChecks = (function () {
  "use strict";
  function utc(iso) { return iso ? new Date(iso).toISOString().slice(11, 16) : "?"; }
  function day(iso) { return iso ? new Date(iso).toISOString().slice(0, 10) : ""; }
  // "2026-12-06 09:05–09:06 UTC mismatch (revenue)"
  function windowText(w) {
    var what = w.kind || "";
    if (w.differs && w.differs.length) { what += " (" + w.differs.join(", ") + ")"; }
    if (w.problems && w.problems.length) { what += " (" + w.problems.join("; ") + ")"; }
    return day(w.start) + " " + utc(w.start) + "–" + utc(w.end) + " UTC " + what;
  }
  function windowsCell(r) {
    var list = document.createElement("ul");
    list.className = "check-windows";
    (r.windows || []).forEach(function (w) {
      var li = document.createElement("li"); li.textContent = windowText(w); li.dataset.windowStart = w.start; list.appendChild(li);
    });
    if (r.windows_total > (r.windows || []).length) {
      var more = document.createElement("li"); more.textContent = "… " + (r.windows_total - r.windows.length) + " more"; list.appendChild(more);
    }
    return list;
  }
  function stateCell(r) {
    var s = document.createElement("span");
    s.className = "badge check-state";
    s.dataset.state = r.passed ? "ok" : (r.severity === "WARN" ? "late" : "stale");
    s.dataset.check = r.check_name; s.dataset.asset = r.asset; s.dataset.passed = String(r.passed);
    s.textContent = r.passed ? "pass" : (r.severity === "WARN" ? "alert" : "fail");
    return s;
  }
  function render(d) {
    var f = SP.fmt;
    var checks = d.checks || [];
    var failing = checks.filter(function (r) { return !r.passed; });
    var box = document.getElementById("checks-notice");
    box.replaceChildren.apply(box, failing.map(function (r) {
      var p = document.createElement("p");
      var first = (r.windows || [])[0];
      p.textContent = (r.severity === "WARN" ? "Alert " : "Check failing ") + r.check_name + " on " + r.asset +
        (first ? ", window " + windowText(first) : "") + ": " + r.description;
      return p;
    }));
    box.hidden = failing.length === 0;
    box.dataset.failing = String(failing.length);
    SP.table("table-checks", [
      { label: "check", value: function (r) { return r.check_name; } },
      { label: "asset", value: function (r) { return r.asset; } },
      { label: "result", value: stateCell },
      { label: "offending windows", value: windowsCell },
      { label: "what it found", value: function (r) { return r.description; } },
      { label: "evaluated", value: function (r) { return f.age(r.evaluated_at) + (r.current ? "" : " (not current)"); } }
    ], checks);
    return checks.length > 0;
  }
  return { render: render, panel: { panels: ["checks"], url: "/api/pipeline/checks", params: { limit: 20 }, render: render } };
})();
