"""The operator dashboard's page: one self-contained HTML document (inline CSS and JS, charts as inline SVG).

It holds no secret: the admin token is typed in by the operator, kept in sessionStorage, and sent only as a
bearer header to this gateway's own JSON endpoints. Every value from the API is written with textContent or
as an SVG attribute, never parsed as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>arbstr dashboard</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: center; }
  header h1 { font-size: 18px; margin: 0; flex: 1; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; padding: 16px; }
  section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  td, th { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
  .ok { color: #17803d; font-weight: 600; } .bad { color: #b42318; font-weight: 600; }
  .muted { color: #667; } .tile { font-size: 22px; font-weight: 600; }
  button { cursor: pointer; border: 0; border-radius: 4px; padding: 4px 10px; margin-right: 4px; }
  button.approve { background: #17803d; color: #fff; } button.deny { background: #b42318; color: #fff; }
  #login { max-width: 420px; margin: 80px auto; }
  #login input { width: 100%; box-sizing: border-box; padding: 6px; margin: 8px 0; }
  #events { max-height: 260px; overflow-y: auto; font-family: ui-monospace, monospace; font-size: 12px; }
  .legend span { display: inline-block; margin-right: 10px; } .legend i { display: inline-block; width: 10px;
  height: 10px; margin-right: 4px; }
  #error { color: #b42318; }
</style>
</head>
<body>
<header><h1>arbstr</h1><span id="status" class="muted"></span><button id="logout" hidden>Forget token</button></header>
<section id="login">
  <h2>Admin token</h2>
  <form id="login-form"><input id="token" type="password" autocomplete="off" placeholder="admin bearer token">
  <button id="login-button" type="submit">Open dashboard</button></form>
  <div id="error"></div>
</section>
<main id="dash" hidden>
  <section id="books"><h2>Books</h2><div id="books-state" class="tile"></div><table id="books-table"></table></section>
  <section id="savings"><h2>Savings</h2><div id="savings-total" class="tile"></div><div id="savings-detail" class="muted"></div></section>
  <section><h2>Spend per day, per agent (sats)</h2><div id="chart-agents"></div></section>
  <section><h2>Spend per day, per provider (sats)</h2><div id="chart-providers"></div></section>
  <section><h2>Spend and savings by provider (sats)</h2><div id="chart-provider-totals"></div></section>
  <section id="breakers"><h2>Providers and breakers</h2><table id="breaker-table"></table></section>
  <section id="approvals"><h2>Pending approvals</h2><table id="approval-table"></table></section>
  <section><h2>Live spend events</h2><div id="events"></div></section>
</main>
<script>
"use strict";
const KEY = "arbstr.admin_token";
const DAYS = 14;
const COLORS = ["#2f6fde", "#e07b00", "#17803d", "#b42318", "#7a3fc6", "#0b8c8c", "#9a6b00", "#c2185b"];
const $ = (id) => document.getElementById(id);
let streamAbort = null;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
// msat are integers; sats are shown with three decimals so no millisat is hidden.
const sats = (msat) => (msat / 1000).toLocaleString(undefined, {minimumFractionDigits: 3, maximumFractionDigits: 3});

async function api(method, path) {
  const r = await fetch(path, {method, headers: {"Authorization": "Bearer " + sessionStorage.getItem(KEY)}});
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) { logout("the token was refused"); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
  return body;
}

function row(table, cells, header) {
  const tr = el("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = el(header ? "th" : "td"); td.appendChild(c); tr.appendChild(td); }
    else tr.appendChild(el(header ? "th" : "td", {}, c));
  }
  table.appendChild(tr);
  return tr;
}

function renderBooks(b) {
  const ok = b.balanced && b.projection_agrees !== false;
  const state = $("books-state");
  state.textContent = ok ? "balanced" : "NOT balanced";
  state.className = "tile " + (ok ? "ok" : "bad");
  state.dataset.balanced = String(ok);
  const t = $("books-table"); t.replaceChildren();
  for (const k of ["deposits_msat", "withdrawals_msat", "balances_msat", "pending_msat", "spent_msat",
                   "uncollectible_msat"]) {
    const tr = row(t, [k.replace("_msat", ""), sats(b[k]) + " sats"]);
    tr.dataset.field = k; tr.dataset.msat = String(b[k]);
  }
  row(t, ["agents", b.agents]);
  row(t, ["projection agrees", b.projection_agrees === null ? "n/a" : String(b.projection_agrees)]);
  row(t, ["ledger seq", b.ledger_seq]);
}

function renderSavings(total) {
  const t = total || {cost_msat: 0, baseline_msat: 0, savings_msat: 0, requests: 0};
  $("savings-total").textContent = sats(t.savings_msat) + " sats saved";
  const pct = t.baseline_msat ? (100 * t.savings_msat / t.baseline_msat).toFixed(1) : "0.0";
  const baseline = t.savings_baseline === "costliest_candidate" ? "each request's costliest candidate"
    : t.baseline_provider ? "the cheapest single provider able to serve them all (" + t.baseline_provider + " " +
      t.baseline_model + ")" : "the cheapest single provider able to serve them all";
  $("savings-detail").textContent = t.requests + " requests in " + DAYS + " days: spent " + sats(t.cost_msat) +
    " sats where " + baseline + " would have cost " + sats(t.baseline_msat) + " sats (" + pct + "% saved)";
}

// series: [{name, points: Map(label -> msat)}]; labels: x categories. Grouped bars, one color per series.
function barChart(target, labels, series) {
  const box = $(target); box.replaceChildren();
  if (!labels.length || !series.length) { box.appendChild(el("p", {class: "muted"}, "no spend yet")); return; }
  const W = 440, H = 200, L = 56, B = 40, T = 10;
  const max = Math.max(1, ...series.flatMap((s) => labels.map((l) => s.points.get(l) || 0)));
  const s = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"});
  const slot = (W - L - 10) / labels.length, bw = Math.max(2, (slot * 0.8) / series.length);
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * (1 - i / 4);
    s.appendChild(svg("line", {x1: L, x2: W - 10, y1: y, y2: y, stroke: "#ddd"}));
    s.appendChild(svg("text", {x: L - 4, y: y + 4, "text-anchor": "end", "font-size": 10}, sats(max * i / 4)));
  }
  labels.forEach((label, i) => {
    series.forEach((ser, j) => {
      const v = ser.points.get(label) || 0, h = (H - T - B) * v / max;
      const r = svg("rect", {x: L + i * slot + slot * 0.1 + j * bw, y: H - B - h, width: bw, height: h,
                             fill: COLORS[j % COLORS.length], "data-series": ser.name, "data-x": label});
      r.appendChild(svg("title", {}, ser.name + " " + label + ": " + sats(v) + " sats"));
      s.appendChild(r);
    });
    s.appendChild(svg("text", {x: L + i * slot + slot / 2, y: H - B + 14, "text-anchor": "middle",
                               "font-size": 10}, label.length > 10 ? label.slice(5) : label));
  });
  box.appendChild(s);
  const legend = el("div", {class: "legend"});
  series.forEach((ser, j) => {
    const item = el("span"); const sw = el("i"); sw.style.background = COLORS[j % COLORS.length];
    item.appendChild(sw); item.appendChild(document.createTextNode(ser.name)); legend.appendChild(item);
  });
  box.appendChild(legend);
}

async function loadCharts(since) {
  const agents = (await api("GET", "/v1/admin/agents")).data || [];
  const perAgent = await Promise.all(agents.map((a) =>
    api("GET", `/v1/stats?group_by=day&since=${since}&agent=${encodeURIComponent(a.agent_id)}`)));
  const days = new Set();
  const agentSeries = agents.map((a, i) => {
    const points = new Map(perAgent[i].data.filter((r) => r.cost_msat > 0).map((r) => [r.key, r.cost_msat]));
    points.forEach((_, k) => days.add(k));
    return {name: a.name || a.agent_id, points};
  }).filter((s) => s.points.size);
  barChart("chart-agents", [...days].sort(), agentSeries);

  // The day x provider split: one /v1/stats?group_by=day per provider (filtered server-side), never raw rows.
  const prov = (await api("GET", `/v1/stats?group_by=provider&since=${since}`)).data.filter((r) => r.key);
  const perProvider = await Promise.all(prov.map((p) =>
    api("GET", `/v1/stats?group_by=day&since=${since}&provider=${encodeURIComponent(p.key)}`)));
  const pdays = new Set();
  const providerSeries = prov.map((p, i) => {
    const points = new Map(perProvider[i].data.filter((r) => r.cost_msat > 0).map((r) => [r.key, r.cost_msat]));
    points.forEach((_, k) => pdays.add(k));
    return {name: p.key, points};
  }).filter((s) => s.points.size);
  barChart("chart-providers", [...pdays].sort(), providerSeries);


  const labels = prov.map((r) => r.key);
  barChart("chart-provider-totals", labels, [
    {name: "spent", points: new Map(prov.map((r) => [r.key, r.cost_msat]))},
    {name: "saved", points: new Map(prov.map((r) => [r.key, Math.max(0, r.savings_msat)]))},
  ]);
  const total = (await api("GET", `/v1/stats?since=${since}`)).data[0];
  renderSavings(total);
}

function renderProviders(doc) {
  const t = $("breaker-table"); t.replaceChildren();
  row(t, ["provider", "tier", "rates in/out", "breaker", "routable"], true);
  for (const p of doc.data) {
    const b = p.breaker;
    const state = !b ? "unknown" : b.state + (b.retry_in_s ? " (" + b.retry_in_s + " s)" : "");
    const routable = el("span", {class: p.routable ? "ok" : "bad", title: p.reasons.join("; ")},
                        p.routable ? "yes" : "no: " + p.reasons.join("; "));
    const tr = row(t, [p.name, p.tier || "", (p.input_rate ?? "?") + " / " + (p.output_rate ?? "?"), state, routable]);
    tr.dataset.provider = p.name; tr.dataset.breaker = b ? b.state : "unknown";
  }
}

function renderApprovals(items) {
  const t = $("approval-table"); t.replaceChildren();
  if (!items.length) { row(t, ["nothing waiting"]); return; }
  row(t, ["agent", "model / provider", "amount", "deadline", ""], true);
  for (const a of items) {
    const actions = el("span");
    for (const action of ["approve", "deny"]) {
      const btn = el("button", {class: action, "data-request-id": a.request_id, "data-agent-id": a.agent_id},
                     action === "approve" ? "Approve" : "Deny");
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        // By agent and request id: two agents' requests may share an id; the one in this row is decided.
        const path = `/v1/admin/approvals/${encodeURIComponent(a.agent_id)}/${encodeURIComponent(a.request_id)}`;
        try { await api("POST", `${path}/${action}`); }
        catch (e) { $("status").textContent = action + " failed: " + e.message; }
        await refresh();
      });
      actions.appendChild(btn);
    }
    const left = Math.max(0, Math.round((a.deadline_ms - Date.now()) / 1000));
    const tr = row(t, [a.agent_name || a.agent_id, a.model + " / " + a.provider, sats(a.amount_msat) + " sats",
                       left + " s", actions]);
    tr.dataset.requestId = a.request_id;
  }
}

function addEvent(e) {
  const box = $("events");
  const line = el("div", {class: "event", "data-request-id": e.request_id, "data-kind": e.kind},
    new Date(e.at_ms).toISOString().slice(11, 19) + "  " + e.kind.padEnd(8) + " " + e.agent_id + "  " +
    (e.model || "-") + "@" + (e.provider || "-") + "  " + sats(e.charged_msat) + " sats  balance " +
    sats(e.balance_msat));
  box.prepend(line);
  while (box.childElementCount > 200) box.lastChild.remove();
}

// EventSource cannot send an Authorization header: read the SSE stream with fetch and a stream reader.
async function followEvents() {
  if (streamAbort) streamAbort.abort();
  const ctrl = new AbortController(); streamAbort = ctrl;
  let lastId = null;
  while (!ctrl.signal.aborted) {
    try {
      const headers = {"Authorization": "Bearer " + sessionStorage.getItem(KEY)};
      if (lastId) headers["Last-Event-ID"] = lastId;
      const r = await fetch("/v1/spend/events", {headers, signal: ctrl.signal});
      if (r.status === 401) { logout("the token was refused"); return; }
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      $("events").dataset.connected = "true";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\\n\\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let data = "";
          for (const line of block.split("\\n")) {
            if (line.startsWith("id: ")) lastId = line.slice(4);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) { addEvent(JSON.parse(data)); scheduleRefresh(); }
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    $("events").dataset.connected = "false";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

// Refreshes never overlap: an event arriving while one runs marks the page dirty and one more runs after it,
// so a slow, older answer can never paint over a newer one (the Books panel once showed "pending" after the
// live event had said "settled"). The Books panel is read first and again on every event, as it happens.
let refreshTimer = null, refreshing = null, dirty = false, booksAsked = 0, booksShown = 0;
function scheduleRefresh() {
  refreshBooks();
  if (!refreshTimer) refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 500);
}

async function refreshBooks() {
  const asked = ++booksAsked;
  try {
    const books = await api("GET", "/v1/admin/books");
    if (asked > booksShown) { booksShown = asked; renderBooks(books); }
  } catch (e) {
    $("status").textContent = "refresh failed: " + e.message;
  }
}

async function refresh() {
  if (refreshing) { dirty = true; return refreshing; }
  refreshing = (async () => {
    do {
      dirty = false;
      await refreshOnce();
    } while (dirty);
  })();
  try { await refreshing; } finally { refreshing = null; }
}

async function refreshOnce() {
  const since = Date.now() - DAYS * 86400000;
  try {
    const [, providers, approvals] = await Promise.all([
      refreshBooks(), api("GET", "/providers"), api("GET", "/v1/admin/approvals")]);
    renderProviders(providers); renderApprovals(approvals.data);
    await loadCharts(since);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("status").textContent = "refresh failed: " + e.message;
  }
}

function logout(why) {
  sessionStorage.removeItem(KEY);
  if (streamAbort) streamAbort.abort();
  $("dash").hidden = true; $("login").hidden = false; $("logout").hidden = true;
  $("error").textContent = why || "";
}

function showDashboard() {
  $("login").hidden = true; $("dash").hidden = false; $("logout").hidden = false; $("error").textContent = "";
  refresh(); followEvents();
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(KEY, token); $("token").value = "";
  showDashboard();
});
$("logout").addEventListener("click", () => logout(""));
setInterval(() => { if (sessionStorage.getItem(KEY)) refresh(); }, 5000);
if (sessionStorage.getItem(KEY)) showDashboard();
</script>
</body>
</html>
"""
