/* E-commerce page: cards, timeline, top products, categories, event types, last minute. */
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var f = SP.fmt;
  var COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#ea580c", "#4b5563"];
  SP.start([
    { panel: "cards", url: "/api/metrics/summary", render: function (d) {
        SP.setCard("events", f.int(d.events));
        SP.setCard("revenue", f.money(d.revenue));
        SP.setCard("orders", f.int(d.orders));
        SP.setCard("conversion_rate", f.pct(d.conversion_rate));
        return true;
      } },
    { panel: "timeline", url: "/api/metrics/timeline", render: function (d) {
        var pts = d.points || [];
        var any = pts.some(function (p) { return p.events > 0 || p.revenue > 0; });
        var t = pts.map(function (p) { return p.t; });
        SP.plot("chart-timeline", [
          { type: "bar", name: "events", x: t, y: pts.map(function (p) { return p.events; }), marker: { color: "#93c5fd" } },
          { type: "scatter", mode: "lines", name: "purchases", x: t, y: pts.map(function (p) { return p.purchases; }), line: { color: "#16a34a" } },
          { type: "scatter", mode: "lines", name: "revenue ($)", x: t, y: pts.map(function (p) { return p.revenue; }), yaxis: "y2", line: { color: "#dc2626", width: 2 } }
        ], { yaxis: { title: { text: "events" }, rangemode: "tozero" },
             yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false },
             margin: { l: 48, r: 56, t: 8, b: 40 }, bargap: 0.1 });
        SP.drill("chart-timeline", d);
        SP.restated("chart-timeline", "ecommerce", d);
        return any;
      } },
    { panel: "top-products", url: "/api/metrics/top-products", params: { limit: 10 }, render: function (d) {
        var rows = (d.products || []).slice().reverse();
        SP.plot("chart-top-products", [{ type: "bar", orientation: "h",
          x: rows.map(function (r) { return r.revenue; }),
          y: rows.map(function (r) { return SP.esc(r.product_name); }),
          text: rows.map(function (r) { return f.money(r.revenue); }), textposition: "auto",
          hovertext: rows.map(function (r) { return SP.esc(r.category) + " · " + r.units + " units"; }),
          marker: { color: "#2563eb" } }],
          { margin: { l: 120, r: 12, t: 8, b: 32 }, yaxis: { automargin: true } });
        SP.drill("chart-top-products", d);
        return rows.length > 0;
      } },
    { panel: "by-category", url: "/api/metrics/by-category", render: function (d) {
        var rows = d.categories || [];
        SP.plot("chart-by-category", [{ type: "pie", hole: 0.45, sort: false,
          labels: rows.map(function (r) { return SP.esc(r.category); }),
          values: rows.map(function (r) { return r.revenue; }), marker: { colors: COLORS } }],
          { legend: { orientation: "v" }, margin: { l: 8, r: 8, t: 8, b: 8 } });
        SP.drill("chart-by-category", d);
        return rows.some(function (r) { return r.revenue > 0; });
      } },
    { panel: "event-types", url: "/api/metrics/event-types", render: function (d) {
        var rows = d.event_types || [];
        SP.plot("chart-event-types", [{ type: "bar",
          x: rows.map(function (r) { return r.event_type; }), y: rows.map(function (r) { return r.count; }),
          marker: { color: COLORS } }], {});
        SP.drill("chart-event-types", d);
        return rows.some(function (r) { return r.count > 0; });
      } },
    { panel: "realtime", url: "/api/metrics/realtime", usesRange: false, render: function (d) {
        SP.setCard("active_users", f.int(d.active_users));
        SP.setCard("rt_eps", f.num(d.events_per_second, 1));
        SP.setCard("rt_orders", f.int(d.orders));
        SP.setCard("rt_revenue", f.money(d.revenue));
        SP.setCard("rt_sessions", f.int(d.active_sessions));
        var types = Object.keys(d.event_types || {});
        SP.plot("chart-realtime", [{ type: "bar", x: types, y: types.map(function (k) { return d.event_types[k]; }),
          marker: { color: "#7c3aed" } }], { height: 220 });
        return d.events > 0;
      } }
  ]);
});
