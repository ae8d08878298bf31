/* Drill-down: click a bar, slice or point of a chart to see the figure's report
   rows, the Dagster run that computed them and the raw events/orders behind it
   (paged, with topic/partition/offset), with a CSV download (/api/drilldown).
   Page scripts call SP.drill(chartId, data) after each render; FIGURES maps a
   clicked point of that chart to the figure's API parameters. */
(function () {
  "use strict";
  var MINUTE = 60000;
  var PAGE = 50;

  function ceilMinute(iso) { return Math.ceil(Date.parse(iso) / MINUTE) * MINUTE; }
  function isoMinute(ms) { return new Date(ms).toISOString().slice(0, 16) + "Z"; }

  // the report windows a range-level chart summed: window_start in [from, to)
  function span(d, fig) {
    if (!d.from || !d.to) { return { error: "Drill-down needs a time range (not all-time): pick 15m … 7d." }; }
    var start = ceilMinute(d.from), end = ceilMinute(d.to);
    return Object.assign({ window_start: isoMinute(start), minutes: Math.max(1, (end - start) / MINUTE) }, fig);
  }
  // one bucket of a timeline
  function bucket(d, t, fig) {
    var ms = Date.parse(t);
    return Object.assign({ window_start: isoMinute(ms), minutes: Math.max(1, Math.round((d.bucket_seconds || 60) / 60)) }, fig);
  }
  function reversed(rows) { return (rows || []).slice().reverse(); }
  // a slice of either domain's category pie
  function byCategory(d, pt) {
    var r = (d.categories || [])[pt.pointNumber];
    return r && span(d, { report: "category", value: r.category, label: "revenue of " + r.category });
  }

  var FIGURES = {
    ecommerce: {
      "chart-timeline": function (d, pt) {
        var p = (d.points || [])[pt.pointIndex];
        var labels = ["events", "purchases", "revenue"];
        return p && bucket(d, p.t, { report: "overview", event_type: pt.curveNumber > 0 ? "purchase" : null,
          label: labels[pt.curveNumber] || "events" });
      },
      "chart-top-products": function (d, pt) {
        var r = reversed(d.products)[pt.pointIndex];
        return r && span(d, { report: "product", value: r.product_id, label: "revenue of " + r.product_name });
      },
      "chart-by-category": byCategory,
      "chart-event-types": function (d, pt) {
        var r = (d.event_types || [])[pt.pointIndex];
        return r && span(d, { report: "overview", event_type: r.event_type, label: r.event_type + " events" });
      }
    },
    restaurant: {
      "chart-timeline": function (d, pt) {
        var p = (d.points || [])[pt.pointIndex];
        return p && bucket(d, p.t, { report: "overview", label: pt.curveNumber > 0 ? "revenue" : "orders" });
      },
      "chart-top-items": function (d, pt) {
        var r = reversed(d.items)[pt.pointIndex];
        return r && span(d, { report: "item", value: r.item_id, label: r.name });
      },
      "chart-by-category": byCategory,
      "chart-channels": function (d, pt) {
        var r = (d.channels || [])[pt.pointNumber];
        return r && span(d, { report: "channel", value: r.channel, label: r.channel + " orders" });
      }
    }
  };

  // --- the panel (a modal <dialog>) ---
  var dialog, current;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text != null) { e.textContent = text; }
    return e;
  }

  function build() {
    dialog = el("dialog", { id: "drilldown", class: "drilldown", "aria-labelledby": "drilldown-title" });
    var head = el("div", { class: "drilldown-head" });
    head.appendChild(el("h2", { id: "drilldown-title" }, "Drill-down"));
    var close = el("button", { type: "button", class: "drilldown-close", "aria-label": "Close" }, "×");
    close.addEventListener("click", function () { dialog.close(); });
    head.appendChild(close);
    dialog.appendChild(head);
    dialog.appendChild(el("p", { id: "drilldown-state", class: "drilldown-state", "aria-live": "polite" }));
    var body = el("div", { id: "drilldown-body" });
    body.appendChild(el("h3", {}, "Report"));
    body.appendChild(el("p", { id: "drilldown-totals", class: "drilldown-meta" }));
    var rw = el("div", { class: "table-wrap" }); rw.appendChild(el("table", { id: "drilldown-report" })); body.appendChild(rw);
    body.appendChild(el("h3", {}, "Computed by"));
    body.appendChild(el("ul", { id: "drilldown-runs", class: "drilldown-runs" }));
    var rawHead = el("div", { class: "drilldown-rawhead" });
    rawHead.appendChild(el("h3", { id: "drilldown-raw-title" }, "Raw rows"));
    rawHead.appendChild(el("a", { id: "drilldown-csv", class: "drilldown-csv", download: "" }, "Download CSV"));
    body.appendChild(rawHead);
    var xw = el("div", { class: "table-wrap" }); xw.appendChild(el("table", { id: "drilldown-raw" })); body.appendChild(xw);
    var pager = el("div", { class: "drilldown-pager" });
    var prev = el("button", { type: "button", id: "drilldown-prev" }, "‹ Previous");
    var next = el("button", { type: "button", id: "drilldown-next" }, "Next ›");
    prev.addEventListener("click", function () { load(current.fig, Math.max(0, current.offset - PAGE)); });
    next.addEventListener("click", function () { if (current.next != null) { load(current.fig, current.next); } });
    pager.appendChild(prev); pager.appendChild(el("span", { id: "drilldown-page" })); pager.appendChild(next);
    body.appendChild(pager);
    dialog.appendChild(body);
    document.body.appendChild(dialog);
  }

  function show(message, isError) {
    var s = document.getElementById("drilldown-state");
    s.textContent = message || ""; s.hidden = !message; s.dataset.error = isError ? "true" : "false";
  }

  function open(fig) {
    if (!dialog) { build(); }
    var title = document.getElementById("drilldown-title");
    if (fig.error) {
      title.textContent = "Drill-down"; document.getElementById("drilldown-body").hidden = true; show(fig.error, true);
    } else {
      var end = new Date(Date.parse(fig.window_start) + fig.minutes * MINUTE);
      title.textContent = (fig.label || fig.report) + " · " + new Date(fig.window_start).toLocaleString() + " → " +
        end.toLocaleTimeString() + " (" + fig.minutes + " min)";
      load(fig, 0);
    }
    if (!dialog.open) { dialog.showModal(); }
  }

  function params(fig, offset) {
    var p = { domain: fig.domain, report: fig.report, window_start: fig.window_start, minutes: fig.minutes,
              limit: PAGE, offset: offset };
    if (fig.value != null) { p.value = fig.value; }
    if (fig.event_type) { p.event_type = fig.event_type; }
    return p;
  }

  function load(fig, offset) {
    current = { fig: fig, offset: offset, next: null };
    dialog.dataset.state = "loading"; show("Loading…");
    return SP.api("/api/drilldown", params(fig, offset)).then(function (d) {
      if (current.fig !== fig || current.offset !== offset) { return; }
      render(d);
      current.next = d.raw.next_offset;
      dialog.dataset.state = "ready"; show(d.raw.rows.length ? "" : "No raw rows in these windows.");
    }, function (err) {
      dialog.dataset.state = "error"; show("Error: " + (err.message || err), true);
    });
  }

  var HIDDEN = { run_id: 1, refreshed_at: 1 };
  var ORIGIN = ["topic", "partition", "offset"];
  // the row's id, then its Kafka origin (visible without scrolling), then the rest
  function columnsOf(rows, skip) {
    var keys = rows.length ? Object.keys(rows[0]).filter(function (k) { return !(skip && skip[k]); }) : [];
    var origin = keys.filter(function (k) { return ORIGIN.indexOf(k) >= 0; });
    keys = keys.slice(0, 1).concat(origin, keys.slice(1).filter(function (k) { return ORIGIN.indexOf(k) < 0; }));
    return keys.map(function (k) { return { label: k, value: function (r) { return r[k]; } }; });
  }

  function render(d) {
    document.getElementById("drilldown-body").hidden = false;
    var totals = d.report.totals || {};
    document.getElementById("drilldown-totals").textContent = Object.keys(totals).map(function (k) {
      return k + " " + (typeof totals[k] === "number" ? SP.fmt.num(totals[k], Number.isInteger(totals[k]) ? 0 : 2) : totals[k]);
    }).join(" · ") + (d.report.rows_truncated ? " (newest windows listed)" : "");
    SP.table("drilldown-report", columnsOf(d.report.rows, HIDDEN).concat([
      { label: "run", value: function (r) { return r.run_id ? r.run_id.slice(0, 8) : "–"; } }]), d.report.rows);
    var runs = document.getElementById("drilldown-runs");
    runs.replaceChildren();
    (d.runs || []).forEach(function (r) {
      var li = el("li");
      if (r.url) {
        var a = el("a", { href: r.url, target: "_blank", rel: "noopener noreferrer", class: "drilldown-run" },
          "Dagster run " + r.run_id.slice(0, 8) + " ↗");
        li.appendChild(a);
      } else {
        li.appendChild(el("span", {}, r.run_id ? "run " + r.run_id : "computed outside Dagster"));
      }
      var info = [r.job_name, r.status, r.partition, r.refreshed_at ? "refreshed " + SP.fmt.time(r.refreshed_at) : null,
                  r.windows + " window" + (r.windows === 1 ? "" : "s")].filter(Boolean).join(" · ");
      li.appendChild(el("span", { class: "drilldown-meta" }, " " + info));
      runs.appendChild(li);
    });
    if (!runs.children.length) { runs.appendChild(el("li", {}, "no report row for these windows")); }
    var raw = d.raw;
    document.getElementById("drilldown-raw-title").textContent = (raw.table === "events" ? "Events" : "Orders") +
      " behind it (topic " + raw.topic + ")";
    document.getElementById("drilldown-csv").href = d.csv;
    SP.table("drilldown-raw", columnsOf(raw.rows), raw.rows);
    document.getElementById("drilldown-page").textContent = raw.rows.length ?
      "rows " + (raw.offset + 1) + "–" + (raw.offset + raw.rows.length) + (raw.has_more ? " of more" : "") : "";
    document.getElementById("drilldown-prev").disabled = raw.offset === 0;
    document.getElementById("drilldown-next").disabled = !raw.has_more;
  }

  // --- binding charts ---
  var latest = {};
  SP.drill = function (chartId, data) {
    var page = document.body.dataset.page;
    var figureOf = (FIGURES[page] || {})[chartId];
    var chart = document.getElementById(chartId);
    if (!figureOf || !chart || !chart.on) { return; }
    latest[chartId] = data;
    chart.classList.add("drillable");
    if (chart.dataset.drill) { return; }
    chart.dataset.drill = "bound";
    chart.on("plotly_click", function (ev) {
      var pt = ev && ev.points && ev.points[0];
      var fig = pt && figureOf(latest[chartId], pt);
      if (fig) { open(Object.assign({ domain: page }, fig)); }
    });
  };
})();
