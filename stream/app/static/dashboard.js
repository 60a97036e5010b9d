// The clusterstream dashboard: polls /dashboard/data and draws inline SVG charts.
// No library: a few small drawing helpers below; data elements carry class "data".
"use strict";

const REFRESH_MS = 2000;
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
const EVENT_COLORS = { bootstrap: "#2ca02c", merge: "#ff7f0e", recompute: "#9467bd", drift: "#d62728" };

function el(parent, name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 10 || Number.isInteger(v)) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

function clock(t) {
  return new Date(t * 1000).toTimeString().slice(0, 8);
}

// the axis top for integer counts: ticks at quarters stay whole numbers
function wholeMax(v) {
  return Math.max(4, Math.ceil(v / 4) * 4);
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function prepare(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = svg.clientWidth || 600;
  const h = svg.clientHeight || 200;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  return [w, h];
}

function empty(svg, w, h, message) {
  el(svg, "text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" }, message);
}

// series: [{name, unit, color, axis: "left"|"right", step, points: [[t, v|null], ...]}]
// markers: [{t, label, color}]
function lineChart(svg, series, t0, t1, markers) {
  const [w, h] = prepare(svg);
  const hasRight = series.some((s) => s.axis === "right");
  const m = { l: 50, r: hasRight ? 50 : 12, t: 22, b: 20 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  const withData = series.filter((s) => s.points.some((p) => p[1] !== null));
  if (!withData.length || !(t1 > t0)) {
    empty(svg, w, h, "no samples yet");
    return;
  }
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * pw;
  const tops = {};
  for (const side of ["left", "right"]) {
    const values = series.filter((s) => (s.axis || "left") === side)
      .flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
    const whole = series.filter((s) => (s.axis || "left") === side).every((s) => s.whole);
    tops[side] = (whole ? wholeMax : niceMax)(Math.max(0, ...values));
  }
  const y = (v, side) => m.t + ph - (v / tops[side]) * ph;
  for (let i = 0; i <= 4; i++) {
    const gy = m.t + ph - (i / 4) * ph;
    el(svg, "line", { x1: m.l, x2: m.l + pw, y1: gy, y2: gy, class: "grid" });
    el(svg, "text", { x: m.l - 4, y: gy + 4, "text-anchor": "end" }, fmt((tops.left * i) / 4));
    if (hasRight) {
      el(svg, "text", { x: m.l + pw + 4, y: gy + 4 }, fmt((tops.right * i) / 4));
    }
  }
  el(svg, "line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    el(svg, "text", { x: x(t), y: h - 5, "text-anchor": anchor }, clock(t));
  }
  let row = 0;
  for (const mk of markers || []) {
    if (mk.t < t0 || mk.t > t1) continue;
    row += 1; // labels of close marks would overlap: alternate two lines
    el(svg, "line", {
      x1: x(mk.t), x2: x(mk.t), y1: m.t, y2: m.t + ph,
      stroke: mk.color, "stroke-dasharray": "4 3", class: "data marker",
    });
    el(svg, "text", { x: x(mk.t) + 3, y: m.t + 10 + (row % 2 ? 0 : 13), fill: mk.color }, mk.label);
  }
  let lx = m.l;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const side = s.axis || "left";
    let d = "";
    let pen = false;
    let prev = null;
    for (const [t, v] of s.points) {
      if (v === null) { pen = false; continue; }
      if (!pen) d += `M${x(t).toFixed(1)},${y(v, side).toFixed(1)}`;
      else if (s.step) d += `H${x(t).toFixed(1)}V${y(v, side).toFixed(1)}`;
      else d += `L${x(t).toFixed(1)},${y(v, side).toFixed(1)}`;
      pen = true;
      prev = v;
    }
    if (s.step && pen) d += `H${x(t1).toFixed(1)}`;
    if (d) el(svg, "path", { d, fill: "none", stroke: color, "stroke-width": 1.8, class: "data" });
    const label = `${s.name}${side === "right" && hasRight ? " (right)" : ""}: ${fmt(prev)} ${s.unit || ""}`;
    const text = el(svg, "text", { x: lx, y: 12, fill: color }, label);
    lx += text.getComputedTextLength() + 18;
  });
}

// bars: [{label, value, note}]; vertical bars with labels below
function columnChart(svg, bars, unit, message) {
  const [w, h] = prepare(svg);
  if (!bars.length) { empty(svg, w, h, message); return; }
  const m = { l: 40, r: 10, t: 12, b: 30 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  const top = wholeMax(Math.max(...bars.map((b) => b.value)));
  for (let i = 0; i <= 4; i++) {
    const gy = m.t + ph - (i / 4) * ph;
    el(svg, "line", { x1: m.l, x2: m.l + pw, y1: gy, y2: gy, class: "grid" });
    el(svg, "text", { x: m.l - 4, y: gy + 4, "text-anchor": "end" }, fmt((top * i) / 4));
  }
  const bw = pw / bars.length;
  // label every n-th bar so that labels of about 6.5 px a character do not overlap
  const widest = Math.max(...bars.map((b) => b.label.length));
  const every = Math.max(1, Math.ceil((widest * 6.5 + 6) / bw));
  bars.forEach((b, i) => {
    const bh = (b.value / top) * ph;
    const rect = el(svg, "rect", {
      x: m.l + i * bw + 2, y: m.t + ph - bh, width: Math.max(bw - 4, 1), height: bh,
      fill: COLORS[0], class: "data",
    });
    el(rect, "title", {}, `${b.label}: ${b.value} ${unit}`);
    if (i % every === 0) {
      el(svg, "text", { x: m.l + (i + 0.5) * bw, y: h - 16, "text-anchor": "middle" }, b.label);
    }
  });
  el(svg, "text", { x: m.l + pw / 2, y: h - 3, "text-anchor": "middle" }, unit);
}

// rows: [{label, value, color}] drawn as horizontal bars
function barList(svg, rows, message) {
  const [w, h] = prepare(svg);
  if (!rows.length) { empty(svg, w, h, message); return; }
  const labelW = Math.min(260, w * 0.4);
  const rowH = Math.min(20, (h - 4) / rows.length);
  const top = Math.max(...rows.map((r) => r.value), 1e-12);
  rows.forEach((r, i) => {
    const ry = 2 + i * rowH;
    el(svg, "text", { x: labelW - 6, y: ry + rowH * 0.75, "text-anchor": "end" }, r.label);
    const bw = Math.max(((w - labelW - 60) * r.value) / top, 1);
    el(svg, "rect", {
      x: labelW, y: ry + 2, width: bw, height: rowH - 4, fill: r.color || COLORS[0], class: "data",
    });
    el(svg, "text", { x: labelW + bw + 4, y: ry + rowH * 0.75 }, fmt(r.value));
  });
}

// clusters: [{cluster_id, members, items: [{item_id, score}], error}] side by side
function topChart(svg, clusters) {
  const [w, h] = prepare(svg);
  if (!clusters.some((c) => c.items.length)) {
    empty(svg, w, h, clusters.length ? "no CF items yet" : "no cluster has members yet");
    return;
  }
  const colW = w / clusters.length;
  const rowH = 20;
  const labelW = Math.min(90, colW * 0.4);
  clusters.forEach((c, i) => {
    const x0 = i * colW + 4;
    el(svg, "text", { x: x0, y: 14, "font-weight": "bold" }, `cluster ${c.cluster_id}`);
    el(svg, "text", { x: x0, y: 28 }, `${c.members} members${c.error ? ", " + c.error : ""}`);
    const top = Math.max(...c.items.map((it) => it.score), 1e-12);
    c.items.forEach((it, j) => {
      const y0 = 38 + j * rowH;
      el(svg, "text", { x: x0 + labelW - 4, y: y0 + 13, "text-anchor": "end" }, it.item_id);
      const bw = Math.max(((colW - labelW - 44) * it.score) / top, 1);
      el(svg, "rect", {
        x: x0 + labelW, y: y0 + 3, width: bw, height: rowH - 6, fill: COLORS[i % COLORS.length],
        class: "data",
      });
      el(svg, "text", { x: x0 + labelW + bw + 3, y: y0 + 13 }, fmt(it.score));
    });
  });
}

function pts(series, name) {
  return series.map((s) => [s.t, s[name] === undefined ? null : s[name]]);
}

function render(data) {
  const s = data.series;
  const t1 = data.now;
  const t0 = s.length ? Math.min(s[0].t, t1 - 30) : t1 - 30;
  const rate = s.map((p) => [p.t, p.applied_per_s === undefined ? null : p.applied_per_s]);
  lineChart(document.querySelector('[data-chart="throughput"]'), [
    { name: "clicks applied", unit: "/s", points: rate },
    { name: "rejected", unit: "/s", points: pts(s, "rejected_per_s"), color: "#ff7f0e" },
    { name: "consumer lag", unit: "records", axis: "right", points: pts(s, "lag"), color: COLORS[1] },
  ], t0, t1);
  lineChart(document.querySelector('[data-chart="latency"]'), [
    { name: "batch time", unit: "ms", points: pts(s, "batch_ms") },
    { name: "click-to-CF", unit: "s", axis: "right", points: pts(s, "freshness_s"), color: COLORS[2] },
  ], t0, t1);
  lineChart(document.querySelector('[data-chart="churn"]'), [
    { name: "membership changes", unit: "/s", points: pts(s, "churn_per_s"), color: COLORS[3] },
    { name: "mean distance", unit: "", axis: "right", points: pts(s, "distance"), color: COLORS[4] },
  ], t0, t1);
  const markers = data.events.map((e) => ({
    t: e.t,
    color: EVENT_COLORS[e.kind] || "#555",
    label: e.kind === "drift" ? "drift" : `${e.kind} v${e.version}`,
  }));
  lineChart(document.querySelector('[data-chart="versions"]'), [
    { name: "centres version", unit: "", step: true, whole: true, points: pts(s, "version"), color: COLORS[5] },
  ], t0, t1, markers);

  columnChart(document.querySelector('[data-chart="sizes"]'),
    data.sizes.map((b) => ({ label: b.lo === b.hi ? `${b.lo}` : `${b.lo}–${b.hi}`, value: b.clusters })),
    "members per cluster (bars: number of clusters)", "no cluster has members yet");
  document.getElementById("sizes-note").textContent = data.centres
    ? `${data.clusters_with_members} of ${data.centres.k} live clusters have members, ${data.centres.retired} retired`
    : "no centre set yet";

  const dlq = Object.entries(data.dlq).map(([reason, n]) => ({ label: reason, value: n, color: COLORS[1] }));
  barList(document.querySelector('[data-chart="dlq"]'), dlq, "no dead letters");
  const total = dlq.reduce((a, r) => a + r.value, 0);
  document.getElementById("dlq-note").textContent = `${total} in all since the workers started`;

  topChart(document.querySelector('[data-chart="top"]'), data.top);

  const body = document.querySelector("#workers tbody");
  body.textContent = "";
  for (const w of data.workers) {
    const tr = document.createElement("tr");
    const health = !w.answered ? `did not answer (${w.error})` : w.ready ? "ready" : "starting";
    const cells = [
      w.worker_id, w.url, w.leader ? "leader" : "member", health,
      w.partitions.join(", ") || "–", w.cf_partitions.join(", ") || "–",
      w.answered ? fmt(w.lag) : "–", w.answered ? fmt(w.users) : "–",
      w.answered ? `${w.loop_lag_max_ms} ms` : "–", w.answered ? `${fmt(w.uptime_s)} s` : "–",
      `${w.beat_age_s} s ago`,
    ];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 3) td.className = w.answered && w.ready ? "ok" : "bad";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  document.getElementById("app").textContent = `app ${data.app_id}`;
  document.getElementById("centres").textContent = data.centres
    ? `centres v${data.centres.version} (${data.centres.reason}, k=${data.centres.k})`
    : "no centres yet";
  const missing = data.workers.filter((w) => !w.answered).length;
  const status = document.getElementById("status");
  status.textContent = `${data.workers.length} worker(s)` +
    (missing ? `, ${missing} not answering` : "") + ` · updated ${clock(data.now)}`;
  status.className = missing ? "status bad" : "status";
}

async function refresh() {
  try {
    const resp = await fetch("/dashboard/data", { cache: "no-store" });
    if (!resp.ok) throw new Error(`/dashboard/data answered ${resp.status}`);
    render(await resp.json());
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
  } catch (err) {
    const status = document.getElementById("status");
    status.textContent = `no answer from the worker: ${err.message}`;
    status.className = "status bad";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
