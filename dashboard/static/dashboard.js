/* SalesPulse dashboard core: sign-in banner, polling, panel states, Plotly helpers.
   Plain JS, no build step. Each page script calls SP.start([...panels]). */
(function () {
  "use strict";
  var POLL_MS = 5000;
  var RANGE_KEY = "salespulse.range." + document.body.dataset.page;

  // The token never travels in a URL: the login page (/login) sets an HttpOnly
  // cookie that these same-origin requests carry; API clients send a header.

  function ApiError(status, message, error) { this.status = status; this.message = message; this.error = error; }

  function api(path, params) {
    var url = path + (params && Object.keys(params).length ? "?" + new URLSearchParams(params) : "");
    var headers = { "Accept": "application/json" };
    return fetch(url, { headers: headers, cache: "no-store", credentials: "same-origin" }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (body) {
        if (!resp.ok) { throw new ApiError(resp.status, body.message || resp.statusText, body.error); }
        return body;
      });
    });
  }

  // --- formatting / escaping ---
  var nf0 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  var nf2 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  var fmt = {
    int: function (v) { return v == null ? "–" : nf0.format(v); },
    money: function (v) { return v == null ? "–" : "$" + nf2.format(v); },
    pct: function (v) { return v == null ? "–" : (v * 100).toFixed(1) + "%"; },
    num: function (v, d) { return v == null ? "–" : Number(v).toFixed(d == null ? 1 : d); },
    age: function (iso) {
      if (!iso) { return "never"; }
      var s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
      if (s < 90) { return Math.round(s) + " s ago"; }
      if (s < 5400) { return Math.round(s / 60) + " min ago"; }
      return Math.round(s / 3600) + " h ago";
    },
    time: function (iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
  };
  // Plotly renders a small HTML subset in labels: escape data-borne text.
  function esc(s) { return String(s == null ? "" : s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }

  // --- panel states: loading | empty | error | ready ---
  function setState(el, state, message) {
    el.dataset.state = state;
    var box = el.querySelector(":scope > .state");
    if (box) {
      box.textContent = state === "loading" ? "Loading…" : state === "empty" ? (message || "No data in this time range yet.") :
        state === "error" ? "Error: " + (message || "request failed") : "";
    }
  }

  function setCard(key, text) {
    document.querySelectorAll('[data-card="' + key + '"]').forEach(function (el) { el.textContent = text; });
  }

  var baseLayout = {
    margin: { l: 48, r: 16, t: 8, b: 40 }, autosize: true, height: 300,
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1f2937" },
    legend: { orientation: "h", y: -0.2 }, hovermode: "closest"
  };
  var config = { responsive: true, displayModeBar: false };

  function plot(id, traces, layout) {
    var el = document.getElementById(id);
    // fresh objects on every call: Plotly writes computed values (axis type, range) into the layout it is given
    layout = layout || {};
    var merged = Object.assign({}, baseLayout, layout, {
      margin: Object.assign({}, baseLayout.margin, layout.margin),
      legend: Object.assign({}, baseLayout.legend, layout.legend),
      xaxis: Object.assign({ automargin: true }, layout.xaxis),
      yaxis: Object.assign({ automargin: true }, layout.yaxis)
    });
    if (el.clientWidth && el.clientWidth < 500) { merged.margin = Object.assign({}, merged.margin, { l: 40, r: merged.yaxis2 ? 44 : 8 }); }
    return window.Plotly.react(el, traces, merged, config);
  }

  // --- table helper (textContent only: dead letters carry untrusted text) ---
  function table(id, columns, rows) {
    var t = document.getElementById(id);
    t.replaceChildren();
    var head = t.createTHead().insertRow();
    columns.forEach(function (c) { var th = document.createElement("th"); th.textContent = c.label; head.appendChild(th); });
    var body = t.createTBody();
    rows.forEach(function (r) {
      var tr = body.insertRow();
      columns.forEach(function (c) {
        var td = tr.insertCell();
        var v = c.value(r);
        if (v instanceof Node) { td.appendChild(v); } else { td.textContent = v == null ? "" : String(v); }
      });
    });
  }

  // --- range selector ---
  var selector = document.getElementById("range-selector");
  var buttons = selector ? Array.prototype.slice.call(selector.querySelectorAll("button")) : [];
  var allowed = buttons.map(function (b) { return b.dataset.range; });
  var range = localStorage.getItem(RANGE_KEY);
  if (allowed.indexOf(range) < 0) { range = "1h"; }
  function markRange() { buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.range === range)); }); }

  var panels = [];
  var inFlight = false;
  var timer = null;
  var live = document.getElementById("live");
  var banner = document.getElementById("banner");

  var again = false;
  function refresh() {
    if (inFlight) { again = true; return Promise.resolve(); }
    inFlight = true;
    var jobs = panels.map(function (p) {
      var els = p.panels.map(function (name) { return document.querySelector('[data-panel="' + name + '"]'); });
      if (!p.loaded) { els.forEach(function (el) { setState(el, "loading"); }); }
      var params = Object.assign({}, p.usesRange === false ? {} : { range: range }, p.params || {});
      return api(p.url, params).then(function (data) {
        var result = p.render(data);
        p.loaded = true;
        els.forEach(function (el, i) {
          var empty = result === false || (result !== null && typeof result === "object" && result[p.panels[i]] === false);
          setState(el, empty ? "empty" : "ready");
        });
        return null;
      }, function (err) {
        els.forEach(function (el) { setState(el, "error", err.message || String(err)); });
        return err;
      });
    });
    return Promise.all(jobs).then(function (errors) {
      inFlight = false;
      var bad = errors.filter(Boolean);
      var auth = bad.filter(function (e) { return e.status === 401; });
      if (auth.some(function (e) { return e.error === "session_expired"; })) {
        // the token was changed (or the session ran out): back to the login form, which says so
        location.assign("/login?reason=expired&next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
      if (auth.length) {
        banner.hidden = false;
        banner.textContent = "This dashboard needs an access token: ";
        var signIn = document.createElement("a");
        signIn.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
        signIn.textContent = "sign in";
        banner.appendChild(signIn);
      } else if (bad.length) {
        banner.hidden = false;
        banner.textContent = "Some data could not be loaded (" + bad[0].message + "); retrying every 5 s.";
      } else { banner.hidden = true; }
      live.dataset.state = bad.length ? "error" : "live";
      live.textContent = bad.length ? "error" : "live · " + new Date().toLocaleTimeString();
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
      if (again) { again = false; return refresh(); }
    });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(function () { refresh().then(schedule); }, POLL_MS);
  }

  window.SP = {
    api: api, fmt: fmt, esc: esc, plot: plot, table: table, setCard: setCard,
    range: function () { return range; },
    start: function (list) {
      panels = list.map(function (p) { return Object.assign({ loaded: false }, p, { panels: p.panels || [p.panel] }); });
      markRange();
      buttons.forEach(function (b) {
        b.addEventListener("click", function () {
          range = b.dataset.range; localStorage.setItem(RANGE_KEY, range); markRange();
          panels.forEach(function (p) { p.loaded = false; });
          refresh().then(schedule);
        });
      });
      refresh().then(schedule);
    }
  };
})();
