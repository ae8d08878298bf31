/* Restated points: a timeline bar whose minute(s) were recomputed after they had
   been reported (late or out-of-order rows) is hatched and outlined, and its
   hover text says "restated at … (run …)". Page scripts call
   SP.restated(chartId, domain, timelineData) after each timeline render; the
   marks restyle the bars (trace 0) in place, so the chart's traces and the
   drill-down's click targets stay as they are. */
(function () {
  "use strict";
  var BUCKETS = { 60: "1m", 300: "5m", 900: "15m", 3600: "1h", 86400: "1d" };
  var last = {};  // chartId -> { key, data } of the latest /api/restatements answer

  function label(r) {
    var run = r.last_run_id ? "run " + String(r.last_run_id).slice(0, 8) : "outside Dagster";
    var text = "restated at " + SP.fmt.time(r.last_restated_at) + " (" + run + ")";
    if (r.windows > 1) { text += " · " + r.windows + " minutes"; }
    if (r.restatements > r.windows) { text += " · " + r.restatements + " restatements"; }
    return text;
  }

  function caption(chart, n) {
    var id = chart.id + "-restated";
    var el = document.getElementById(id);
    if (!el) {
      el = document.createElement("p");
      el.id = id;
      el.className = "restated-caption";
      el.style.cssText = "margin:.3rem 0 0;font-size:.8rem;color:#b45309";
      chart.insertAdjacentElement("afterend", el);
    }
    el.hidden = n === 0;
    el.textContent = n === 0 ? "" : "Hatched bars: " + n + (n === 1 ? " point" : " points") +
      " restated after late or out-of-order data (hover for when and by which run).";
  }

  function mark(chartId, timeline, answer) {
    var chart = document.getElementById(chartId);
    if (!chart || !chart.data || !chart.data.length) { return; }
    var byT = {};
    (answer.points || []).forEach(function (r) { byT[Date.parse(r.t)] = r; });
    var widths = [], colors = [], shapes = [], texts = [], n = 0;
    (timeline.points || []).forEach(function (p) {
      var r = byT[Date.parse(p.t)];
      if (r) { n += 1; }
      widths.push(r ? 2 : 0);
      colors.push(r ? "#b45309" : "rgba(0,0,0,0)");
      shapes.push(r ? "/" : "");
      texts.push(r ? label(r) : "");
    });
    window.Plotly.restyle(chart, { "marker.line.width": [widths], "marker.line.color": [colors],
      "marker.pattern.shape": [shapes], "marker.pattern.fillmode": "overlay", "marker.pattern.fgcolor": "#b45309",
      hovertext: [texts] }, [0]);
    chart.dataset.restated = String(n);
    caption(chart, n);
  }

  SP.restated = function (chartId, domain, timeline) {
    var bucket = BUCKETS[timeline.bucket_seconds];
    if (!bucket || timeline.range === "all" || !timeline.points) { return; }
    var params = { domain: domain, bucket: bucket };
    if (timeline.range) { params.range = timeline.range; } else { params.from = timeline.from; params.to = timeline.to; }
    var key = JSON.stringify(params);
    if (last[chartId] && last[chartId].key === key) { mark(chartId, timeline, last[chartId].data); }
    SP.api("/api/restatements", params).then(function (answer) {
      last[chartId] = { key: key, data: answer };
      mark(chartId, timeline, answer);
    }, function () { /* the marks are an addition: the chart stands without them */ });
  };
})();
