// The tables: every row is a filter ("is", and "is not" with the ≠ button).

import { el, fmt, safeLink } from "./format.js";

export const LABELS = {
  request_route: "route",
  request_path: "path",
  request_referrer: "referrer",
  request_browser: "browser",
  request_platform: "platform",
  request_method: "method",
  response_status_code: "status",
  response_exception: "exception",
  response_mimetype: "mimetype",
  request_endpoint: "endpoint",
  request_host_url: "host",
  request_remote_address: "address",
  request_user_agent: "user agent",
};

export function label(field) {
  return LABELS[field] || field;
}

// How a recorded value shows: as text, with a word for "none".
export function shown(field, value) {
  if (value === null || value === undefined) return field === "request_referrer" ? "(direct)" : "(none)";
  return String(value);
}

// The cell that filters on `value`: the value as a button, and ≠.
function filterCell(field, value, onFilter, extra) {
  const text = shown(field, value);
  return el(
    "td",
    {},
    el(
      "div",
      { class: "value" },
      el("button", { type: "button", class: "pick", title: `Only requests whose ${label(field)} is ${text}`, onclick: () => onFilter(field, value, false), text }),
      extra,
      el("button", { type: "button", class: "not", title: `Leave out requests whose ${label(field)} is ${text}`, "aria-label": `${label(field)} is not ${text}`, onclick: () => onFilter(field, value, true), text: "≠" }),
    ),
  );
}

function header(table, columns, sort, onSort) {
  const row = el("tr");
  for (const [key, title, numeric] of columns) {
    const th = el("th", { scope: "col", class: numeric ? "num" : null });
    if (onSort) {
      const active = sort.key === key;
      th.setAttribute("aria-sort", active ? (sort.descending ? "descending" : "ascending") : "none");
      th.append(el("button", { type: "button", class: "sort", onclick: () => onSort(key), text: title + (active ? (sort.descending ? " ↓" : " ↑") : "") }));
    } else {
      th.textContent = title;
    }
    row.append(th);
  }
  table.append(el("thead", {}, row));
}

function empty(table, span, text) {
  table.append(el("tbody", {}, el("tr", {}, el("td", { colspan: span, class: "muted", text: text || "Nothing in this range." }))));
}

// A top-list: value, count and its share of `total`.
export function topTable(table, field, rows, total, onFilter) {
  table.replaceChildren();
  if (rows === null) {
    empty(table, 2, `This store does not keep the ${label(field)}.`);
    return;
  }
  header(table, [["value", label(field)], ["count", "Requests", true]]);
  if (!rows.length) return empty(table, 2);
  const body = el("tbody");
  for (const row of rows) {
    const link = field === "request_referrer" && row.value ? safeLink(row.value) : null;
    const share = total ? row.count / total : 0;
    body.append(
      el("tr", {}, filterCell(field, row.value, onFilter, link), el("td", { class: "num" }, el("span", { class: "share", text: fmt.count(row.count), title: fmt.percent(share) }))),
    );
  }
  table.append(body);
}

const ROUTE_COLUMNS = [
  ["route", "Route"],
  ["count", "Requests", true],
  ["errors", "5xx", true],
  ["p50", "p50", true],
  ["p95", "p95", true],
  ["p99", "p99", true],
];

// The routes table, sortable by any column.
export function routesTable(table, routes, errorsByRoute, sort, onSort, onFilter) {
  table.replaceChildren();
  if (routes === null) return empty(table, 6, "This store does not keep the route.");
  const rows = routes.map((r) => ({ ...r, errors: errorsByRoute ? errorsByRoute.get(r.route) || 0 : null }));
  const direction = sort.descending ? -1 : 1;
  rows.sort((a, b) => {
    const x = a[sort.key];
    const y = b[sort.key];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * direction;
  });
  header(table, ROUTE_COLUMNS, sort, onSort);
  if (!rows.length) return empty(table, 6);
  const body = el("tbody");
  for (const r of rows) {
    body.append(
      el(
        "tr",
        {},
        filterCell("request_route", r.route, onFilter),
        el("td", { class: "num", text: fmt.count(r.count) }),
        el("td", { class: r.errors ? "num bad" : "num", text: r.errors === null ? "…" : fmt.count(r.errors) }),
        el("td", { class: "num", text: fmt.ms(r.p50) }),
        el("td", { class: "num", text: fmt.ms(r.p95) }),
        el("td", { class: "num", text: fmt.ms(r.p99) }),
      ),
    );
  }
  table.append(body);
}

// Errors grouped by exception and route; "requests" filters the page to them.
export function errorsTable(table, groups, onOpen) {
  table.replaceChildren();
  header(table, [["exception", "Exception or status"], ["route", "Route"], ["count", "Count", true], ["first", "First seen"], ["last", "Last seen"], ["open", ""]]);
  if (!groups.length) return empty(table, 6, "No errors in this range.");
  const body = el("tbody");
  for (const g of groups) {
    const sample = g.sample || {};
    const what = g.exception === null ? `status ${sample.response_status_code}` : g.exception;
    body.append(
      el(
        "tr",
        {},
        el(
          "td",
          { class: "exception" },
          el("details", {}, el("summary", { text: what }), el("p", { class: "muted", text: "Newest: " + [sample.request_method, sample.request_path, sample.response_status_code, fmt.date(sample.request_date)].filter((x) => x !== undefined && x !== null).join(" ") }), el("p", { class: "muted", text: sample.request_user_agent ? "User agent: " + sample.request_user_agent : "" })),
        ),
        el("td", { text: shown("request_route", g.route) }),
        el("td", { class: "num", text: fmt.count(g.count) }),
        el("td", { text: fmt.date(g.first) }),
        el("td", { text: fmt.date(g.last) }),
        el("td", {}, el("button", { type: "button", class: "open", onclick: () => onOpen(g), text: "Requests" })),
      ),
    );
  }
  table.append(body);
}

const RECORD_COLUMNS = [
  ["request_date", "Time"],
  ["request_method", "Method"],
  ["request_path", "Path"],
  ["response_status_code", "Status", true],
  ["response_time", "Duration", true],
  ["request_browser", "Browser"],
];

// The newest requests; each row opens to all of its fields.
export function recordsTable(table, rows, fields) {
  table.replaceChildren();
  const columns = RECORD_COLUMNS.filter(([key]) => fields.has(key));
  header(table, [["open", ""], ...columns]);
  if (!rows.length) return empty(table, columns.length + 1, "No requests match.");
  const body = el("tbody");
  for (const row of rows) {
    const detail = el("tr", { class: "detail", hidden: true }, el("td", { colspan: columns.length + 1 }, fieldList(row)));
    const toggle = el("button", { type: "button", class: "expand", "aria-expanded": "false", "aria-label": "All fields", text: "▸" });
    toggle.addEventListener("click", () => {
      detail.hidden = !detail.hidden;
      toggle.setAttribute("aria-expanded", String(!detail.hidden));
      toggle.textContent = detail.hidden ? "▸" : "▾";
    });
    const cells = columns.map(([key, , numeric]) => {
      const value = row[key];
      const text = key === "request_date" ? fmt.date(value) : key === "response_time" ? fmt.ms(value) : shown(key, value);
      const status = key === "response_status_code" && value >= 400 ? (value >= 500 ? " bad" : " warn") : "";
      return el("td", { class: (numeric ? "num" : key === "request_path" ? "path" : "") + status, text });
    });
    body.append(el("tr", { class: "record" }, el("td", {}, toggle), ...cells), detail);
  }
  table.append(body);
}

function fieldList(row) {
  const list = el("dl", { class: "fields" });
  for (const [key, value] of Object.entries(row)) {
    list.append(el("dt", { text: key }), el("dd", { text: value === null ? "None" : key === "request_date" ? `${value} (${fmt.date(value)})` : String(value) }));
  }
  return list;
}
