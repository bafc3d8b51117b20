// The dashboard page: its state lives in the URL (range, filters, compare,
// time zone, page), every figure comes from the JSON API under api/.

import { drawChart, slots } from "./chart.js";
import { el, fmt } from "./format.js";
import { errorsTable, label, recordsTable, routesTable, shown, topTable } from "./tables.js";

const API = document.body.dataset.api;
const FIELDS = new Set(document.body.dataset.fields.split(" "));
const PAGE_SIZE = 50;
const POLL_MS = 5000;
const OWN = new Set(["since", "until", "compare", "tz", "offset"]);
const DURATION = /^(\d+(?:\.\d+)?)([smhdw])$/;
const UNIT_MS = { s: 1000, m: 60000, h: 3600000, d: 86400000, w: 604800000 };
const $ = (id) => document.getElementById(id);

let state = readState();
let data = {};
let loading = 0;
let timer = null;
let lastLoadMs = 0;
const routeSort = { key: "count", descending: true };

// -- state <-> URL ----------------------------------------------------------

function readState() {
  const params = new URLSearchParams(location.search);
  const filters = [];
  for (const [key, value] of params) {
    if (OWN.has(key)) continue;
    const not = key.startsWith("not.");
    filters.push({ field: not ? key.slice(4) : key, value: value === "" ? null : value, not });
  }
  return {
    since: params.get("since") || "24h",
    until: params.get("until") || "",
    compare: params.get("compare") !== "0",
    utc: params.get("tz") === "utc",
    offset: Math.max(0, parseInt(params.get("offset"), 10) || 0),
    filters,
  };
}

function filterParams(params, filters) {
  for (const f of filters) params.append((f.not ? "not." : "") + f.field, f.value === null ? "" : f.value);
  return params;
}

function pageQuery(s) {
  const params = new URLSearchParams({ since: s.since });
  if (s.until) params.set("until", s.until);
  filterParams(params, s.filters);
  if (!s.compare) params.set("compare", "0");
  if (s.utc) params.set("tz", "utc");
  if (s.offset) params.set("offset", String(s.offset));
  return params;
}

function go(change) {
  state = { ...state, offset: 0, ...change };
  history.pushState(null, "", "?" + pageQuery(state));
  load();
}

function apiQuery(window, extra) {
  const params = new URLSearchParams({ since: window.since });
  if (window.until) params.set("until", window.until);
  filterParams(params, state.filters);
  for (const [key, value] of Object.entries(extra || {})) params.set(key, value);
  return params;
}

function moment(text) {
  const m = DURATION.exec(text);
  if (m) return new Date(Date.now() - Number(m[1]) * UNIT_MS[m[2]]);
  const time = Date.parse(text);
  return Number.isNaN(time) ? null : new Date(time);
}

// The period of the same length just before the current one.
function previousWindow() {
  const m = DURATION.exec(state.since);
  if (m && !state.until) return { since: 2 * Number(m[1]) + m[2], until: state.since };
  const since = moment(state.since);
  const until = state.until ? moment(state.until) : new Date();
  if (!since || !until) return null;
  const length = until - since;
  return { since: new Date(since - length).toISOString(), until: since.toISOString() };
}

// -- the API ------------------------------------------------------------------

async function get(name, params) {
  const response = await fetch(API + name + "?" + params, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  const timing = /dur=([\d.]+)/.exec(response.headers.get("Server-Timing") || "");
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const why = body && body.message ? `${body.parameter}: ${body.message}` : `${response.status} ${response.statusText}`;
    throw new Error(why);
  }
  return { body, ms: timing ? Number(timing[1]) : null };
}

async function load() {
  const serial = ++loading;
  clearTimeout(timer);
  render();
  const started = performance.now();
  const current = { since: state.since, until: state.until };
  const previous = state.compare ? previousWindow() : null;
  const calls = {
    summary: get("summary", apiQuery(current)),
    breakdown: get("breakdown", apiQuery(current)),
    records: get("records", apiQuery(current, { limit: PAGE_SIZE + 1, offset: state.offset })),
  };
  if (previous) {
    calls.previousSummary = get("summary", apiQuery(previous));
    calls.previousBreakdown = get("breakdown", apiQuery(previous));
  }
  if (!state.until) calls.live = get("summary", apiQuery({ since: "5m" }));
  const timings = {};
  const problems = [];
  await Promise.all(
    Object.entries(calls).map(([name, call]) =>
      call.then(
        (answer) => {
          if (serial !== loading) return;
          data[name] = answer.body;
          timings[name] = answer.ms;
          render(name);
        },
        (error) => {
          if (serial !== loading) return;
          problems.push(error.message);
        },
      ),
    ),
  );
  if (serial !== loading) return;
  if (!previous) {
    delete data.previousSummary;
    delete data.previousBreakdown;
  }
  lastLoadMs = performance.now() - started;
  showProblems(problems);
  showTimings(timings);
  document.body.dataset.loaded = String(serial);
  if (!state.until) timer = setTimeout(poll, Math.max(POLL_MS, 2 * lastLoadMs));
  else $("live").replaceChildren();
}

function poll() {
  if (document.hidden) timer = setTimeout(poll, POLL_MS);
  else load();
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && !state.until && loading && document.body.dataset.loaded === String(loading)) load();
});

function showProblems(problems) {
  const box = $("problem");
  box.hidden = !problems.length;
  box.textContent = problems.length ? "The store could not answer: " + [...new Set(problems)].join("; ") : "";
}

function showTimings(timings) {
  const parts = Object.entries(timings).filter(([, ms]) => ms !== null).map(([name, ms]) => `${name} ${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`);
  $("timing").textContent = parts.length ? `${document.body.dataset.store} answered in: ${parts.join(" · ")}` : "";
}

// -- rendering ----------------------------------------------------------------

function render(part) {
  fmt.utc = state.utc;
  if (!part) renderControls();
  if (!part || part === "summary" || part === "previousSummary" || part === "breakdown" || part === "previousBreakdown") renderCards();
  if (!part || part === "summary" || part === "breakdown") renderTables();
  if (!part || part === "summary" || part === "breakdown" || part === "previousBreakdown") renderChart();
  if (!part || part === "breakdown" || part === "summary") renderErrors();
  if (!part || part === "records") renderRecords();
  if (part === "live") renderLive();
}

function renderControls() {
  for (const button of document.querySelectorAll("[data-range]")) {
    button.setAttribute("aria-pressed", String(!state.until && button.dataset.range === state.since));
  }
  $("compare").checked = state.compare;
  $("tz").textContent = state.utc ? "UTC" : "Local time";
  $("tz").setAttribute("aria-pressed", String(state.utc));
  const chips = $("filters");
  chips.replaceChildren(
    ...state.filters.map((f, i) =>
      el(
        "span",
        { class: f.not ? "chip not" : "chip" },
        `${label(f.field)} ${f.not ? "is not" : "is"} `,
        el("strong", { text: shown(f.field, f.value) }),
        el("button", { type: "button", "aria-label": `Remove filter ${label(f.field)} ${f.not ? "is not" : "is"} ${shown(f.field, f.value)}`, onclick: () => go({ filters: state.filters.filter((_, j) => j !== i) }), text: "×" }),
      ),
    ),
  );
  const query = apiQuery({ since: state.since, until: state.until });
  $("export-csv").href = API + "export?" + new URLSearchParams([...query, ["format", "csv"]]);
  $("export-jsonl").href = API + "export?" + new URLSearchParams([...query, ["format", "jsonl"]]);
}

function windowText(summary) {
  const since = summary && summary.since;
  const until = summary && summary.until;
  const from = since ? fmt.date(since) : "the first request";
  return `From ${from} to ${until ? fmt.date(until) : "now"}` + (state.until ? "" : " · refreshes every few seconds");
}

const CARDS = [
  ["total", "Requests", (s) => s?.total, fmt.count.bind(fmt), 0],
  ["visitors", "Unique visitors", (s) => s?.unique_visitors, fmt.count.bind(fmt), 0],
  ["rate5xx", "5xx rate", (s) => rate(s, "5xx"), fmt.percent.bind(fmt), -1],
  ["rate4xx", "4xx rate", (s) => rate(s, "4xx"), fmt.percent.bind(fmt), -1],
  ["p50", "p50 response time", (s, b) => b?.overall?.p50, fmt.ms.bind(fmt), -1],
  ["p95", "p95 response time", (s, b) => b?.overall?.p95, fmt.ms.bind(fmt), -1],
];

function rate(summary, name) {
  if (!summary || !summary.status_classes) return null;
  return summary.total ? summary.status_classes[name] / summary.total : 0;
}

function renderCards() {
  $("range-text").textContent = windowText(data.summary);
  const box = $("cards");
  box.replaceChildren(
    ...CARDS.map(([key, title, pick, show, good]) => {
      const value = data.summary ? pick(data.summary, data.breakdown) : undefined;
      const before = data.previousSummary ? pick(data.previousSummary, data.previousBreakdown) : undefined;
      const change = state.compare ? fmt.change(value, before) : null;
      const tone = !change || !change.sign || !good ? "" : change.sign === good ? " good" : " bad";
      return el(
        "div",
        { class: "card" },
        el("h3", { text: title }),
        el("p", { class: "figure", "data-figure": key, "data-value": value === undefined || value === null ? "" : value, text: value === undefined ? "…" : show(value) }),
        change ? el("p", { class: "change" + tone, text: `${change.text} vs previous period` }) : null,
      );
    }),
  );
}

function onFilter(field, value, not) {
  const kept = state.filters.filter((f) => !(f.field === field && (!not ? !f.not : f.value === value)));
  go({ filters: [...kept, { field, value, not }] });
}

function renderTables() {
  const s = data.summary;
  if (!s) return;
  const errorsByRoute = data.breakdown ? new Map(data.breakdown.route_errors.map((r) => [r.route, r.count])) : null;
  routesTable($("routes"), s.routes, errorsByRoute, routeSort, (key) => {
    routeSort.descending = routeSort.key === key ? !routeSort.descending : key !== "route";
    routeSort.key = key;
    renderTables();
  }, onFilter);
  topTable($("top-paths"), "request_path", s.top_paths, s.total, onFilter);
  topTable($("top-referrers"), "request_referrer", s.top_referrers, s.total, onFilter);
  topTable($("top-browsers"), "request_browser", s.top_browsers, s.total, onFilter);
  topTable($("top-platforms"), "request_platform", s.top_platforms, s.total, onFilter);
}

function renderChart() {
  const s = data.summary;
  const b = data.breakdown;
  if (!s || !b) return;
  const start = s.since ? Date.parse(s.since) : b.buckets.length ? Date.parse(b.buckets[0].start) : Date.now();
  const end = s.until ? Date.parse(s.until) : Date.now();
  const now = slots(start, end, b.bucket, b.buckets);
  let previous = null;
  const p = data.previousBreakdown;
  if (state.compare && p && p.bucket === b.bucket) {
    const length = end - start;
    const before = slots(start - length, end - length, p.bucket, p.buckets);
    previous = now.map((_, i) => before[i] || { bucket: null });
  }
  drawChart($("chart"), $("chart-table"), {
    unit: b.bucket,
    slots: now,
    previous,
    onRange: (from, to) => go({ since: from.toISOString(), until: to.toISOString() }),
  });
}

function renderErrors() {
  if (!data.breakdown) return;
  errorsTable($("errors"), data.breakdown.errors, (group) => {
    const kept = state.filters.filter((f) => f.field !== "response_exception" && f.field !== "request_route");
    const added = [{ field: "request_route", value: group.route, not: false }];
    if (group.exception !== null) added.push({ field: "response_exception", value: group.exception, not: false });
    else if (group.sample) added.push({ field: "response_status_code", value: String(group.sample.response_status_code), not: false });
    go({ filters: [...kept.filter((f) => f.field !== "response_status_code" || f.not), ...added] });
    $("requests").scrollIntoView();
  });
}

function renderRecords() {
  const rows = data.records;
  if (!rows) return;
  recordsTable($("records"), rows.slice(0, PAGE_SIZE), FIELDS);
  $("newer").disabled = state.offset === 0;
  $("older").disabled = rows.length <= PAGE_SIZE;
  $("page-text").textContent = rows.length ? `${fmt.count(state.offset + 1)}–${fmt.count(state.offset + Math.min(rows.length, PAGE_SIZE))}` : "";
}

function renderLive() {
  const live = data.live;
  if (!live || state.until) return;
  $("live").replaceChildren(el("span", { class: "dot", "aria-hidden": "true" }), `Live · ${fmt.count(live.total)} requests in the last 5 minutes`);
  $("live").dataset.value = String(live.total);
}

// -- controls -----------------------------------------------------------------

for (const button of document.querySelectorAll("[data-range]")) {
  button.addEventListener("click", () => go({ since: button.dataset.range, until: "" }));
}
$("compare").addEventListener("change", (event) => go({ compare: event.target.checked }));
$("tz").addEventListener("click", () => {
  state = { ...state, utc: !state.utc };
  history.replaceState(null, "", "?" + pageQuery(state));
  render();
  render("live");
});
$("newer").addEventListener("click", () => go({ offset: Math.max(0, state.offset - PAGE_SIZE) }));
$("older").addEventListener("click", () => go({ offset: state.offset + PAGE_SIZE }));
document.querySelector(".custom").addEventListener("toggle", (event) => {
  if (!event.target.open) return;
  const since = moment(state.since) || new Date(Date.now() - 86400000);
  $("range-from").value = fmt.inputValue(since);
  $("range-to").value = state.until ? fmt.inputValue(moment(state.until) || new Date()) : "";
});
$("custom-range").addEventListener("submit", (event) => {
  event.preventDefault();
  const from = fmt.fromInput($("range-from").value);
  const to = fmt.fromInput($("range-to").value);
  if (!from || (to && to <= from)) {
    showProblems(["the custom range needs a start before its end"]);
    return;
  }
  document.querySelector(".custom").open = false;
  go({ since: from.toISOString(), until: to ? to.toISOString() : "" });
});
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(renderChart, 150);
});
window.addEventListener("popstate", () => {
  state = readState();
  data = {};
  load();
});

load();
