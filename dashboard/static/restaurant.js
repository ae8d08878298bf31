/* Restaurant page: cards, timeline, top items, categories, peak hours, channel mix. */
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var f = SP.fmt;
  var COLORS = ["#ea580c", "#16a34a", "#2563eb", "#f59e0b", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#dc2626", "#4b5563"];
  SP.start([
    { panel: "cards", url: "/api/restaurant/summary", render: function (d) {
        SP.setCard("revenue", f.money(d.revenue));
        SP.setCard("orders", f.int(d.orders));
        SP.setCard("avg_ticket", f.money(d.avg_ticket));
        SP.setCard("items_sold", f.int(d.items_sold));
        return true;
      } },
    { panel: "cards", url: "/api/restaurant/realtime", usesRange: false, render: function (d) {
        SP.setCard("rt_orders", f.int(d.orders));
        return true;
      } },
    { panel: "timeline", url: "/api/restaurant/timeline", render: function (d) {
        var pts = d.points || [];
        var t = pts.map(function (p) { return p.t; });
        SP.plot("chart-timeline", [
          { type: "bar", name: "orders", x: t, y: pts.map(function (p) { return p.orders; }), marker: { color: "#fdba74" } },
          { type: "scatter", mode: "lines", name: "revenue ($)", x: t, y: pts.map(function (p) { return p.revenue; }), yaxis: "y2", line: { color: "#16a34a", width: 2 } }
        ], { yaxis: { title: { text: "orders" }, rangemode: "tozero" },
             yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false },
             margin: { l: 48, r: 56, t: 8, b: 40 }, bargap: 0.1 });
        SP.drill("chart-timeline", d);
        SP.restated("chart-timeline", "restaurant", d);
        return pts.some(function (p) { return p.orders > 0; });
      } },
    { panel: "top-items", url: "/api/restaurant/top-items", params: { limit: 10 }, render: function (d) {
        var rows = (d.items || []).slice().reverse();
        SP.plot("chart-top-items", [{ type: "bar", orientation: "h",
          x: rows.map(function (r) { return r.revenue; }), y: rows.map(function (r) { return SP.esc(r.name); }),
          text: rows.map(function (r) { return r.quantity + "×"; }), textposition: "auto",
          marker: { color: "#ea580c" } }], { margin: { l: 120, r: 12, t: 8, b: 32 }, yaxis: { automargin: true } });
        SP.drill("chart-top-items", d);
        return rows.length > 0;
      } },
    { panel: "by-category", url: "/api/restaurant/by-category", render: function (d) {
        var rows = d.categories || [];
        SP.plot("chart-by-category", [{ type: "pie", hole: 0.45, sort: false,
          labels: rows.map(function (r) { return SP.esc(r.category); }), values: rows.map(function (r) { return r.revenue; }),
          marker: { colors: COLORS } }], { legend: { orientation: "v" }, margin: { l: 8, r: 8, t: 8, b: 8 } });
        SP.drill("chart-by-category", d);
        return rows.some(function (r) { return r.revenue > 0; });
      } },
    { panel: "peak-hours", url: "/api/restaurant/peak-hours", render: function (d) {
        var rows = d.hours || [];
        SP.plot("chart-peak-hours", [{ type: "bar", x: rows.map(function (r) { return r.hour; }),
          y: rows.map(function (r) { return r.orders; }),
          marker: { color: rows.map(function (r) { return r.hour === d.peak_hour ? "#dc2626" : "#fdba74"; }) } }],
          { xaxis: { dtick: 2, title: { text: "hour of day" } } });
        return d.peak_hour != null;
      } },
    { panel: "channels", url: "/api/restaurant/channels", render: function (d) {
        var rows = d.channels || [];
        SP.plot("chart-channels", [{ type: "pie", hole: 0.45, sort: false,
          labels: rows.map(function (r) { return r.channel; }), values: rows.map(function (r) { return r.orders; }),
          text: rows.map(function (r) { return "avg " + f.money(r.avg_ticket); }), textinfo: "label+percent",
          marker: { colors: ["#2563eb", "#f59e0b", "#16a34a"] } }], { legend: { orientation: "v" }, margin: { l: 8, r: 8, t: 8, b: 8 } });
        SP.drill("chart-channels", d);
        return rows.some(function (r) { return r.orders > 0; });
      } }
  ]);
});
