// The time chart: requests per bucket stacked by status class, p95 as a
// line, the previous period as a dashed line; hover or arrow keys show a
// bucket's numbers, dragging across buckets narrows the range.

import { el, fmt, svg } from "./format.js";

export const CLASSES = ["2xx", "3xx", "4xx", "5xx", "1xx"];
const STEP = { minute: 60000, hour: 3600000, day: 86400000 };
const H = 220;
const PAD = { left: 44, right: 58, top: 10, bottom: 24 };

function floorTo(time, unit) {
  return Math.floor(time / STEP[unit]) * STEP[unit];
}

// Every bucket of the window, empty ones too, oldest first.
export function slots(start, end, unit, buckets) {
  const byStart = new Map(buckets.map((b) => [Date.parse(b.start), b]));
  const step = STEP[unit];
  const first = floorTo(start, unit);
  const result = [];
  for (let time = first; time < end && result.length < 2000; time += step) {
    result.push({ time, bucket: byStart.get(time) || null });
  }
  return result;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= value) return m * power;
  return value;
}

// Draw into `box`; `previous` is the previous period's slots (same count).
export function drawChart(box, table, { unit, slots: now, previous, onRange }) {
  box.replaceChildren();
  table.replaceChildren();
  const count = now.length;
  // Drawn at the box's own width, so its text keeps its size on a phone.
  const W = Math.max(320, Math.round(box.clientWidth || 720));
  if (!count) {
    box.append(el("p", { class: "muted", text: "No requests in this range." }));
    return;
  }
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const slotW = plotW / count;
  const maxCount = niceMax(Math.max(1, ...now.map((s) => s.bucket?.count || 0), ...(previous || []).map((s) => s.bucket?.count || 0)));
  const maxMs = niceMax(Math.max(0, ...now.map((s) => s.bucket?.p95 || 0)));
  const y = (value) => PAD.top + plotH - (value / maxCount) * plotH;
  const yMs = (value) => PAD.top + plotH - (value / maxMs) * plotH;
  const total = now.reduce((sum, s) => sum + (s.bucket?.count || 0), 0);
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    tabindex: "0",
    "aria-label": `Requests per ${unit}: ${fmt.count(total)} in ${count} ${unit}s. The table below gives each ${unit}.`,
    class: "chart-svg",
  });
  for (const share of [0, 0.5, 1]) {
    const value = maxCount * share;
    chart.append(
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(value), y2: y(value), class: "grid-line" }),
      svg("text", { x: PAD.left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end", text: fmt.count(value) }),
    );
    if (maxMs > 0 && share > 0) {
      chart.append(svg("text", { x: W - PAD.right + 6, y: yMs(maxMs * share) + 4, class: "axis p95-axis", text: fmt.ms(maxMs * share) }));
    }
  }
  const bars = svg("g", { class: "bars" });
  now.forEach((s, i) => {
    if (!s.bucket) return;
    let base = 0;
    for (const name of CLASSES) {
      const n = s.bucket.status_classes?.[name] || 0;
      if (!n) continue;
      const x = PAD.left + i * slotW + slotW * 0.1;
      bars.append(svg("rect", { x, y: y(base + n), width: Math.max(1, slotW * 0.8), height: y(base) - y(base + n), class: "c" + name }));
      base += n;
    }
  });
  chart.append(bars);
  const line = (points, cls) => {
    const d = points.map(([x, yy], i) => (i ? "L" : "M") + x.toFixed(1) + " " + yy.toFixed(1)).join(" ");
    if (d) chart.append(svg("path", { d, class: cls }));
  };
  if (previous) {
    line(previous.map((s, i) => [PAD.left + (i + 0.5) * slotW, y(s.bucket?.count || 0)]), "previous-line");
  }
  const p95 = now.flatMap((s, i) => (s.bucket && s.bucket.p95 !== null ? [[PAD.left + (i + 0.5) * slotW, yMs(s.bucket.p95)]] : []));
  line(p95, "p95-line");
  for (const [cx, cy] of p95) chart.append(svg("circle", { cx, cy, r: 2.5, class: "p95-dot" }));
  const labels = Math.min(count, Math.max(2, Math.floor(W / 120)));
  for (let k = 0; k < labels; k++) {
    const i = Math.round((k * (count - 1)) / Math.max(1, labels - 1));
    chart.append(svg("text", { x: PAD.left + (i + 0.5) * slotW, y: H - 6, class: "axis", "text-anchor": "middle", text: fmt.date(new Date(now[i].time), unit) }));
  }
  const selection = svg("rect", { y: PAD.top, height: plotH, class: "selection", visibility: "hidden" });
  const marker = svg("rect", { y: PAD.top, height: plotH, width: slotW, class: "marker", visibility: "hidden" });
  chart.append(marker, selection);
  const tip = el("div", { class: "tip", hidden: true, role: "status" });
  box.append(chart, tip, legend(Boolean(previous)));

  const show = (i) => {
    const s = now[i];
    const b = s.bucket;
    marker.setAttribute("x", PAD.left + i * slotW);
    marker.setAttribute("visibility", "visible");
    tip.replaceChildren(
      el("strong", { text: fmt.date(new Date(s.time), unit === "day" ? "day" : "hour") }),
      el("div", { text: `${fmt.count(b?.count || 0)} requests` }),
      ...CLASSES.filter((c) => b?.status_classes?.[c]).map((c) => el("div", { class: "k" + c, text: `${c}: ${fmt.count(b.status_classes[c])}` })),
      el("div", { text: `p95: ${fmt.ms(b?.p95 ?? null)}` }),
      previous ? el("div", { text: `previous period: ${fmt.count(previous[i]?.bucket?.count || 0)}` }) : null,
    );
    tip.hidden = false;
    const left = ((PAD.left + (i + 0.5) * slotW) / W) * 100;
    tip.style.left = Math.min(Math.max(left, 12), 78) + "%";
  };
  const hide = () => {
    tip.hidden = true;
    marker.setAttribute("visibility", "hidden");
  };
  const slotAt = (event) => {
    const rect = chart.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * W - PAD.left;
    return Math.min(count - 1, Math.max(0, Math.floor(x / slotW)));
  };
  let dragFrom = null;
  let focused = -1;
  chart.addEventListener("pointerdown", (event) => {
    dragFrom = slotAt(event);
    chart.setPointerCapture(event.pointerId);
  });
  chart.addEventListener("pointermove", (event) => {
    const i = slotAt(event);
    show(i);
    if (dragFrom !== null && i !== dragFrom) {
      const a = Math.min(i, dragFrom);
      const b = Math.max(i, dragFrom);
      selection.setAttribute("x", PAD.left + a * slotW);
      selection.setAttribute("width", (b - a + 1) * slotW);
      selection.setAttribute("visibility", "visible");
    }
  });
  chart.addEventListener("pointerup", (event) => {
    const i = slotAt(event);
    const from = dragFrom;
    dragFrom = null;
    selection.setAttribute("visibility", "hidden");
    if (from !== null && i !== from) {
      const a = Math.min(i, from);
      const b = Math.max(i, from);
      onRange(new Date(now[a].time), new Date(now[b].time + STEP[unit]));
    }
  });
  chart.addEventListener("pointerleave", () => dragFrom === null && hide());
  chart.addEventListener("blur", hide);
  chart.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    event.preventDefault();
    focused = Math.min(count - 1, Math.max(0, focused + (event.key === "ArrowRight" ? 1 : -1)));
    show(focused);
  });
  fillTable(table, unit, now, previous);
}

function legend(withPrevious) {
  return el(
    "p",
    { class: "legend" },
    ...CLASSES.slice(0, 4).map((c) => el("span", { class: "k" + c, text: c })),
    el("span", { class: "kp95", text: "p95 (right axis)" }),
    withPrevious ? el("span", { class: "kprev", text: "previous period" }) : null,
  );
}

function fillTable(table, unit, now, previous) {
  const head = ["Start", "Requests", ...CLASSES, "p95"];
  if (previous) head.push("Previous period");
  table.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))));
  const body = el("tbody");
  now.forEach((s, i) => {
    const b = s.bucket;
    const cells = [fmt.count(b?.count || 0), ...CLASSES.map((c) => fmt.count(b?.status_classes?.[c] || 0)), fmt.ms(b?.p95 ?? null)];
    if (previous) cells.push(fmt.count(previous[i]?.bucket?.count || 0));
    body.append(el("tr", {}, el("th", { scope: "row", text: fmt.date(new Date(s.time), unit === "day" ? "day" : "hour") }), ...cells.map((c) => el("td", { class: "num", text: c }))));
  });
  table.append(body);
}
