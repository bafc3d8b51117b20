// The one place that builds elements and formats numbers and dates.
// Recorded strings only ever become text nodes: nothing here parses HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

// An element with attributes and children (strings become text nodes).
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}

// An SVG element, the same way.
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  return fill(node, attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

// A link made from recorded data: only plain http(s) URLs, never followed
// with the dashboard as referrer; anything else is no link at all.
export function safeLink(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  return el("a", {
    href: url.href,
    rel: "noopener noreferrer",
    target: "_blank",
    class: "out",
    title: "Open " + url.href,
    text: "↗",
  });
}

const counts = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const short = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

export const fmt = {
  utc: false,

  count(n) {
    if (n === null || n === undefined) return "–";
    return Math.abs(n) >= 100000 ? short.format(n) : counts.format(n);
  },

  ms(value) {
    if (value === null || value === undefined) return "–";
    if (value >= 10000) return (value / 1000).toFixed(1) + " s";
    if (value >= 100) return Math.round(value) + " ms";
    if (value >= 10) return value.toFixed(1) + " ms";
    return value.toFixed(2) + " ms";
  },

  rate(part, total) {
    if (!total) return "–";
    return this.percent(part / total);
  },

  percent(share) {
    if (share === null || share === undefined || Number.isNaN(share)) return "–";
    const value = share * 100;
    return (value > 0 && value < 0.1 ? "<0.1" : value.toFixed(value < 10 ? 1 : 0)) + " %";
  },

  // The change of `now` against `before`, as text and a direction.
  change(now, before) {
    if (now === null || now === undefined || before === null || before === undefined) return null;
    if (before === 0) return now === 0 ? { text: "±0", sign: 0 } : { text: "new", sign: 1 };
    const share = (now - before) / before;
    const sign = Math.abs(share) < 0.005 ? 0 : Math.sign(share);
    const text = sign === 0 ? "±0 %" : (sign > 0 ? "+" : "−") + Math.abs(share * 100).toFixed(0) + " %";
    return { text, sign };
  },

  // A moment (ISO text or Date) in the chosen time zone; `unit` picks the detail.
  date(value, unit) {
    if (!value) return "–";
    const moment = value instanceof Date ? value : new Date(value);
    const options = { timeZone: this.utc ? "UTC" : undefined, hourCycle: "h23" };
    if (unit === "day") Object.assign(options, { month: "short", day: "numeric" });
    else if (unit === "hour") Object.assign(options, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    else if (unit === "minute") Object.assign(options, { hour: "2-digit", minute: "2-digit" });
    else Object.assign(options, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return new Intl.DateTimeFormat(undefined, options).format(moment) + (this.utc && unit !== "day" ? " UTC" : "");
  },

  // For <input type="datetime-local">: "YYYY-MM-DDTHH:MM" in the chosen zone.
  inputValue(moment) {
    const shifted = this.utc ? moment : new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
    return shifted.toISOString().slice(0, 16);
  },

  fromInput(text) {
    if (!text) return null;
    const moment = this.utc ? new Date(text + ":00Z") : new Date(text);
    return Number.isNaN(moment.getTime()) ? null : moment;
  },
};
