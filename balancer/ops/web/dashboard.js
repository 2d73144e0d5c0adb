// UM-Bridge balancer dashboard: one EventSource, a snapshot first, then one message a second.
// Plain JS, no build step; charts by uPlot (vendored). Nothing here polls the balancer.
"use strict";

const WINDOW_S = 300; // calls and latency charts: at most the last five minutes
const SPANS = [60, 120, 300, 600]; // a chart spans the shortest of these that holds its data
const CAPACITY_PAST_S = 6 * 3600; // capacity chart: six hours back ...
const CAPACITY_AHEAD_S = 2 * 3600; // ... and two hours of forecast ahead
const MAX_LOG = 100;

const S = {
  now: Date.now() / 1000, // the balancer's clock, as of its last message
  series: [], // [t, answered, failed, p50 s, p90 s, service p50 s, waiting]
  servers: [],
  queues: {},
  totals: { calls: 0, inflight: 0, failed_calls: 0, server_failures: 0, cost: null },
  specs: {},
  window: { p50: null, p90: null },
  timeline: new Map(), // server -> {spec, segs: [[t, state, failed]]}
  decisions: [],
  failures: [],
  capacity: [],
  forecast: null,
};

const $ = (id) => document.getElementById(id);

// -- formatting ------------------------------------------------------------------------------
function hms(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}
function ms(sec) {
  if (sec === null || sec === undefined) return "-";
  const v = sec * 1000;
  if (v >= 10000) return (v / 1000).toFixed(1) + " s";
  if (v >= 100) return v.toFixed(0) + " ms";
  if (v >= 10) return v.toFixed(1) + " ms";
  return v.toFixed(2) + " ms";
}
function duration(s) {
  if (s === null || s === undefined) return "-";
  if (s < 0) return "past";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(sec).padStart(2, "0")} s`;
  return `${sec} s`;
}
function hm(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
}
function span(age, max) {
  for (const s of SPANS) if (s >= age && s <= max) return s;
  return max;
}
function spanText(s) {
  return s < 120 ? `last ${s} s` : `last ${s / 60} min`;
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- charts ----------------------------------------------------------------------------------
function chartSize(box) {
  return { width: Math.max(100, box.clientWidth), height: Math.max(60, box.clientHeight - 26) };
}
// x ranges are set by the page (a fixed span ending now), not fitted to the data.
const ranges = {};
function makeChart(boxId, series, axes, scales) {
  const box = $(boxId);
  ranges[boxId] = [S.now - 60, S.now];
  const opts = {
    ...chartSize(box),
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: () => ranges[boxId] }, ...scales },
    series: [{}, ...series],
    axes,
    legend: { live: false },
  };
  const u = new uPlot(opts, [[], ...series.map(() => [])], box);
  new ResizeObserver(() => u.setSize(chartSize(box))).observe(box);
  return u;
}
const axisFont = "11px system-ui, sans-serif";
const xAxis = { font: axisFont, size: 22, gap: 2, space: 70, values: (u, splits) => splits.map((t) => hms(t)) };
const xAxisHM = { ...xAxis, values: (u, splits) => splits.map((t) => hm(t)) };
// The axis is wide enough for its tick labels and the title sits outside them (labelGap), so the
// title never overlaps a number.
function yAxis(label, scale, side, extra) {
  return { scale, label, labelSize: 14, labelGap: 2, labelFont: axisFont, font: axisFont, size: 46, gap: 3,
    side: side || 3, grid: { show: side !== 1 }, ...extra };
}
// Latency on a log axis (a cold start's seconds next to steady milliseconds): labels at 1-2-5
// steps in ms or s, one per decade when the range is wide.
function msLabel(v) {
  if (v === null || v === undefined) return "";  // a tick uPlot leaves unlabelled (too close)
  if (v >= 1000) return `${+(v / 1000).toPrecision(3)} s`;
  if (v >= 1) return `${+v.toPrecision(3)} ms`;
  return `${+(v * 1000).toPrecision(3)} µs`;
}
// The ticks' labels are drawn on the canvas; the box keeps them (data-ticks) for a reader or a test.
function latLabels(u, vs) {
  const out = vs.map(msLabel);
  $("c-lat").dataset.ticks = out.join("|");
  return out;
}
// An axis as wide as its widest label (tick + gap + text + title), so the title never overlaps.
let measure;
function fitAxis(u, values) {
  measure = measure || document.createElement("canvas").getContext("2d");
  measure.font = axisFont;
  const w = Math.max(0, ...(values || []).map((v) => measure.measureText(v).width));
  return Math.ceil(w) + 10 + 4 + 2;
}
function logSplits(u, axisIdx, lo, hi) {
  const out = [];
  const decades = Math.log10(hi / lo);
  const steps = decades > 3 ? [1] : decades > 1.5 ? [1, 3] : [1, 2, 5];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of steps) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  }
  return out;
}

function logRange(lo, hi) {
  // whole 1-2-5 steps around the data; a decade at least, so one spike does not fill the chart
  if (!(lo > 0) || !(hi > 0)) return [0.1, 100];
  const step = (v, up) => {
    const e = Math.floor(Math.log10(v)), m = v / 10 ** e;
    const ms = up ? [1, 2, 5, 10].find((x) => x >= m * 0.999) : [5, 2, 1].find((x) => x <= m * 1.001);
    return ms * 10 ** e;
  };
  let a = step(lo, false), b = step(hi * 1.05, true);
  if (b / a < 10) { const mid = Math.sqrt(a * b); a = step(mid / 3.17, false); b = step(mid * 3.17, true); }
  return [a, b];
}

let rateChart, latChart, capChart;
function initCharts() {
  rateChart = makeChart(
    "c-rate",
    [
      { label: "answered/s", stroke: "#2f855a", width: 1.5, fill: "rgba(47,133,90,0.12)", scale: "rate" },
      { label: "failed/s", stroke: "#d64545", width: 1.5, scale: "rate" },
      { label: "waiting", stroke: "#dd8a1e", width: 1.5, dash: [4, 3], scale: "wait" },
    ],
    [xAxis, yAxis("calls/s", "rate"), yAxis("waiting calls", "wait", 1)],
    { rate: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] },
      wait: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
  );
  latChart = makeChart(
    "c-lat",
    [
      { label: "p50", stroke: "#2b6cb0", width: 1.5, scale: "ms", spanGaps: false },
      { label: "p90", stroke: "#c05621", width: 1.5, scale: "ms", spanGaps: false },
      { label: "service p50", stroke: "#718096", width: 1, dash: [3, 3], scale: "ms", spanGaps: false },
    ],
    [xAxis, yAxis("latency", "ms", 3, { size: fitAxis, splits: logSplits, values: latLabels })],
    { ms: { distr: 3, log: 10, range: (u, lo, hi) => logRange(lo, hi) } },
  );
  capChart = makeChart(
    "c-cap",
    [
      { label: "observed", stroke: "#2f855a", width: 1.5, points: { show: true, size: 4 }, scale: "cpu", spanGaps: true },
      { label: "predicted then", stroke: "#805ad5", width: 1, dash: [4, 3], scale: "cpu", spanGaps: true },
      { label: "forecast ahead", stroke: "#805ad5", width: 1.5, scale: "cpu", spanGaps: true },
    ],
    [xAxisHM, yAxis("CPUs", "cpu")],
    { cpu: { range: (u, lo, hi) => [0, Math.max(1, (hi || 1) * 1.15)] } },
  );
}

function drawRateAndLatency(now) {
  const first = S.series.length ? S.series[0][0] : now;
  const w = span(now - first, WINDOW_S);
  const lo = now - w;
  ranges["c-rate"] = ranges["c-lat"] = [lo, now];
  $("rate-span").textContent = spanText(w);
  $("lat-span").textContent = spanText(w);
  const pts = S.series.filter((p) => p[0] > lo);
  const x = pts.map((p) => p[0]);
  rateChart.setData([x, pts.map((p) => p[1]), pts.map((p) => p[2]), pts.map((p) => p[6])]);
  const toMs = (v) => (v === null || v === undefined || v <= 0 ? null : v * 1000);
  latChart.setData([x, pts.map((p) => toMs(p[3])), pts.map((p) => toMs(p[4])), pts.map((p) => toMs(p[5]))]);
}

function drawCapacity(now) {
  // Past and future in proportion: ten minutes of samples show ten minutes of forecast, not two hours.
  const seen = S.capacity.length ? now - S.capacity[0].t : 0;
  const past = Math.min(CAPACITY_PAST_S, Math.max(600, seen * 1.05));
  const ahead = Math.min(CAPACITY_AHEAD_S, past);
  const lo = now - past;
  const rows = new Map(); // t -> [observed, predicted then, ahead]
  const row = (t) => {
    if (!rows.has(t)) rows.set(t, [null, null, null]);
    return rows.get(t);
  };
  for (const c of S.capacity) {
    if (c.t < lo) continue;
    const r = row(Math.round(c.t));
    // Capacity for us = idle + what our own servers hold: the quantity the forecast predicts, so
    // our own load never reads as the cluster filling up (older samples: idle alone).
    r[0] = c.capacity_cpus !== undefined ? c.capacity_cpus : c.idle_cpus;
    if (c.predicted_capacity_cpus !== undefined) r[1] = c.predicted_capacity_cpus;
    else if (c.predicted_idle_cpus !== undefined) r[1] = c.predicted_idle_cpus;
  }
  const p = S.forecast && S.forecast.prediction;
  if (p && S.forecast.in_use) {
    const first = Math.max(0, Math.floor((now - p.start) / p.step_s));
    for (let i = first; i < p.mean.length; i++) {
      const t = p.start + i * p.step_s;
      if (t > now + ahead + p.step_s) break;
      row(Math.round(Math.max(t, now)))[2] = p.mean[i];
    }
  }
  const ts = [...rows.keys()].sort((a, b) => a - b);
  ranges["c-cap"] = [lo, now + ahead];  capChart.setData([ts, ts.map((t) => rows.get(t)[0]), ts.map((t) => rows.get(t)[1]), ts.map((t) => rows.get(t)[2])]);
  const f = S.forecast;
  let text = "forecast: not available";
  if (f) {
    text = `forecast: ${f.state}` + (f.model ? `, model ${f.model}` : "") +
      (f.observed_capacity_cpus !== null && f.observed_capacity_cpus !== undefined
        ? `; capacity now ${f.observed_capacity_cpus.toFixed(2)} CPUs (${(f.held_cpus || 0).toFixed(2)} ours)`
        : "") +
      (f.collector && f.collector.source ? `; collector ${f.collector.source}, ${f.collector.samples} samples` : "");
  }
  $("fc-status").textContent = text;
  $("fc-status").title = text;
  // The panel only where it says something: a trained forecast. Cold, disabled or absent (a local
  // run), it collapses to this one line in the header and the charts take its place.
  const says = !!(f && (f.in_use || f.prediction));
  const main = document.querySelector("main");
  if (main.classList.contains("no-cap") === says) main.classList.toggle("no-cap", !says);
  $("fc-line").textContent = says || !f ? "" : `forecast ${String(f.state).split(":")[0]}`;
  $("fc-line").title = says ? "" : text;
}

// -- servers, queues, timeline ---------------------------------------------------------------
function gpuText(gpus) {
  // "0 (87 %, 10.2/80 GiB)" per device: util and memory from the server's last usage sample
  if (!gpus || !gpus.length) return "-";
  return gpus.map((g) => {
    const use = [];
    if (g.util_pct !== undefined) use.push(`${Math.round(g.util_pct)} %`);
    if (g.mem_used_bytes !== undefined && g.mem_total_bytes) use.push(`${(g.mem_used_bytes / 2 ** 30).toFixed(1)}/${(g.mem_total_bytes / 2 ** 30).toFixed(0)} GiB`);
    return use.length ? `${g.device} (${use.join(", ")})` : String(g.device);
  }).join(" ");
}

function drawServers() {
  const body = $("servers").tBodies[0];
  body.replaceChildren();
  const order = { ready: 0, draining: 1, registered: 2, starting: 3, requested: 4, preempted: 5, stopping: 6 };
  const rows = [...S.servers].sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || a.id.localeCompare(b.id, undefined, { numeric: true }));
  const anyGpu = rows.some((s) => s.gpus && s.gpus.length);  // the GPUs column only where some have one
  $("servers-gpus-h").hidden = !anyGpu;
  for (const s of rows) {
    const tr = el("tr");
    tr.dataset.server = s.id;
    tr.dataset.state = s.state;
    tr.append(el("td", "", s.id), el("td", "", s.spec));
    const st = el("td");
    const badge = el("span", `state st-${s.state}`, s.state);
    if (s.preemptible) {  // a harvest job: the scheduler may take it back (state "preempted")
      badge.textContent += " *";
      badge.title = "preemptible job";
    }
    st.append(badge);
    tr.append(st, el("td", "", s.job ?? "-"), el("td", "", s.host ?? "-"));
    tr.append(el("td", "num", s.left_s === null ? "no limit" : duration(s.left_s)));
    tr.append(el("td", "num calls", String(s.calls)));
    tr.append(el("td", "num", `${s.busy} / ${s.slots}`));
    const ut = el("td", "num");
    if (s.util === null || s.util === undefined) {
      ut.textContent = "-";
    } else {
      const bar = el("span", "bar");
      const fill = el("span");
      fill.style.width = `${Math.round(s.util * 100)}%`;
      bar.append(fill);
      ut.append(bar, document.createTextNode(` ${(s.util * 100).toFixed(0)} %`));
    }
    tr.append(ut);
    if (anyGpu) tr.append(el("td", "gpus", gpuText(s.gpus)));
    body.append(tr);
  }
  $("servers-empty").hidden = rows.length > 0;
  const counts = {};
  for (const s of S.servers) counts[s.state] = (counts[s.state] || 0) + 1;
  const parts = Object.entries(counts).map(([k, v]) => `${v} ${k}`);
  if (S.totals.preempted) parts.push(`${S.totals.preempted} preempted so far`);
  $("servers-sum").textContent = parts.length ? "(" + parts.join(", ") + ")" : "";
}

function fixed(v) {
  // hours: two significant digits below one (a short run's 0.0014 is not 0), then 0.1 steps
  if (!v) return "0";
  return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : String(+v.toPrecision(2));
}
function workloadText(w) {
  if (!w) return "-";
  const f = w.figures || {};
  const parts = [w.cls ? `class ${w.cls}` : "not classified yet"];
  if (f.cpu_per_slot !== undefined) parts.push(`${f.cpu_per_slot.toFixed(2)} CPU/slot`);
  if (f.rss_peak_mb) parts.push(`peak ${f.rss_peak_mb.toFixed(0)} MiB`);
  if (f.io_mb_s) parts.push(`${f.io_mb_s.toFixed(1)} MB/s I/O`);
  return parts.join(", ");
}
function drawSpecs() {
  const body = $("specs").tBodies[0];
  body.replaceChildren();
  const cost = (S.totals.cost && S.totals.cost.specs) || {};
  const live = {};
  for (const s of S.servers) live[s.spec] = (live[s.spec] || 0) + 1;
  for (const name of Object.keys(S.specs).sort()) {
    const sp = S.specs[name];
    const tr = el("tr");
    tr.dataset.spec = name;
    const st = el("td");
    const badges = [];
    if (sp.removed) badges.push(["removed", "b-removed", "removed by a reload: its servers drain"]);
    if (sp.held) badges.push(["held", "b-held", sp.held_reason || "held after failed starts"]);
    if (sp.paused) badges.push(["paused", "b-paused", "paused by an operator: no new server"]);
    if (!badges.length) badges.push(["active", "b-ok", "the scaler may start servers"]);
    for (const [text, cls, why] of badges) {
      const b = el("span", `badge ${cls}`, text);
      b.title = why;
      st.append(b);
    }
    st.title = badges.map((b) => `${b[0]}: ${b[2]}`).join("\n");
    const c = cost[name] || {};
    tr.append(el("td", "", name), st, el("td", "num", `${live[name] || 0} / ${sp.max}`));
    tr.append(el("td", "num", fixed(c.server_h)), el("td", "num", fixed(c.core_h)));
    body.append(tr);
    // under the spec, each on its own line: why it is held (the model's own words), its workload
    const sub = (cls, text) => {
      const row = el("tr", `sub ${cls}`);
      const td = el("td", "", text);
      td.colSpan = 5;
      td.title = text;
      row.append(td);
      body.append(row);
    };
    if (sp.held && sp.held_reason) sub("why", sp.held_reason);
    if (sp.workload) sub("wl", `workload: ${workloadText(sp.workload)}`);
  }
}

function drawQueues() {
  const body = $("queues").tBodies[0];
  body.replaceChildren();
  const models = Object.keys(S.queues).sort();
  if (!models.length) {
    const tr = el("tr");
    tr.append(el("td", "empty", "no model known yet"));
    body.append(tr);
  }
  for (const m of models) {
    const n = S.queues[m];
    const tr = el("tr");
    tr.append(el("td", "", m), el("td", "num " + (n ? "q-wait" : "q-zero"), `${n} waiting`));
    body.append(tr);
  }
}

function addTransition(r) {
  let s = S.timeline.get(r.server);
  if (!s) {
    s = { spec: r.spec, segs: [] };
    S.timeline.set(r.server, s);
  }
  if (r.spec) s.spec = r.spec;
  const last = s.segs[s.segs.length - 1];
  if (last && last[1] === r.state && !r.failed) return;
  s.segs.push([r.t, r.state, !!r.failed]);
}

const STATE_COLOURS = {};
function stateColour(state) {
  if (!STATE_COLOURS[state]) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(`--${state}`).trim();
    STATE_COLOURS[state] = v || "#999";
  }
  return STATE_COLOURS[state];
}

function drawTimeline(now) {
  const c = $("timeline");
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 92, right = 8, axisH = 16, rowH = 13;
  let first = now;
  for (const s of S.timeline.values()) if (s.segs.length) first = Math.min(first, s.segs[0][0]);
  const width = span(now - first, 600);
  $("timeline-span").textContent = spanText(width);
  const lo = now - width;
  const xOf = (t) => left + ((Math.max(t, lo) - lo) / width) * (w - left - right);
  // Servers seen in the window, live ones and the newest first.
  const shown = [...S.timeline.entries()]
    .filter(([, s]) => {
      const last = s.segs[s.segs.length - 1];
      return last && (last[1] !== "gone" || last[0] > lo);
    })
    .sort((a, b) => b[1].segs[0][0] - a[1].segs[0][0]);
  const maxRows = Math.max(1, Math.floor((h - axisH) / rowH));
  g.font = "11px system-ui, sans-serif";
  g.textBaseline = "middle";
  shown.slice(0, maxRows).forEach(([id, s], i) => {
    const y = i * rowH;
    g.fillStyle = "#1d2733";
    g.fillText(`${id} ${s.spec || ""}`.slice(0, 14), 2, y + rowH / 2);
    s.segs.forEach(([t, state, failed], k) => {
      const end = k + 1 < s.segs.length ? s.segs[k + 1][0] : now;
      if (state === "gone") {
        if (t > lo) {
          g.fillStyle = failed ? stateColour("failed") : stateColour("gone");
          g.fillRect(xOf(t) - 1, y + 1, 3, rowH - 2);
        }
        return;
      }
      if (end < lo) return;
      g.fillStyle = stateColour(state);
      g.fillRect(xOf(t), y + 2, Math.max(1, xOf(end) - xOf(t)), rowH - 4);
    });
  });
  if (!shown.length) {
    g.fillStyle = "#677487";
    g.fillText(`no server in the ${spanText(width)}`, left + 4, 10);
  }
  if (shown.length > maxRows) {
    g.fillStyle = "#677487";
    g.fillText(`+${shown.length - maxRows} more`, 2, h - axisH - 4);
  }
  // Time axis: minutes before now.
  g.strokeStyle = "#dde3ea";
  g.fillStyle = "#677487";
  g.textAlign = "center";
  const step = width / 5;
  for (let k = 5; k >= 0; k--) {
    const ago = k * step;
    const x = xOf(now - ago);
    g.beginPath();
    g.moveTo(x, 0);
    g.lineTo(x, h - axisH);
    g.stroke();
    const label = !ago ? "now" : ago < 120 ? `-${ago} s` : `-${ago / 60} min`;
    g.fillText(label, Math.min(Math.max(x, left + 14), w - 16), h - axisH / 2);
  }
  g.textAlign = "start";
}

// -- logs ------------------------------------------------------------------------------------
function decisionText(d) {
  const n = d.count && d.count > 1 ? `${d.count} x ` : "";
  let t = `${n}${d.spec}${d.server ? " " + d.server : ""}: ${d.reason}`;
  const why = [];
  if (d.target !== undefined) why.push(`to ${d.target} server${d.target === 1 ? "" : "s"}`);
  if (d.waiting) why.push(`${d.waiting} waiting`);
  if (d.idle_cpus !== undefined && d.idle_cpus !== null) why.push(`idle ${d.idle_cpus} CPUs`);
  if (d.time_limit_s !== undefined) why.push(`limit ${duration(d.time_limit_s)}`);
  if (why.length) t += ` (${why.join(", ")})`;
  return t;
}
function drawLogs() {
  const dl = $("decisions");
  dl.replaceChildren();
  for (const d of [...S.decisions].reverse()) {
    const li = el("li");
    li.append(el("time", "", hms(d.t)), el("span", d.action, d.action + " "), document.createTextNode(decisionText(d)));
    li.title = li.textContent;
    dl.append(li);
  }
  if (!S.decisions.length) dl.append(el("li", "empty", "none yet"));
  const fl = $("failures");
  fl.replaceChildren();
  for (const f of [...S.failures].reverse()) {
    const li = el("li");
    li.append(el("time", "", hms(f.t)), document.createTextNode(`${f.what}: ${f.reason ?? ""}`));
    li.title = li.textContent;
    fl.append(li);
  }
  if (!S.failures.length) fl.append(el("li", "empty", "none"));
}

function drawTiles() {
  $("t-calls").textContent = S.totals.calls.toLocaleString("en-US");
  const last = S.series.slice(-10);
  const rate = last.length ? last.reduce((a, p) => a + p[1], 0) / last.length : 0;
  $("t-rate").textContent = rate >= 100 ? rate.toFixed(0) : rate.toFixed(1);
  $("t-inflight").textContent = String(S.totals.inflight);
  $("t-waiting").textContent = String(Object.values(S.queues).reduce((a, b) => a + b, 0));
  $("t-p50").textContent = ms(S.window.p50);
  $("t-p90").textContent = ms(S.window.p90);
  const ready = S.servers.filter((s) => s.state === "ready").length;
  $("t-servers").textContent = `${ready} / ${S.servers.length}`;
  const failed = S.totals.failed_calls || 0;
  $("t-failures").textContent = failed.toLocaleString("en-US");
  $("t-failures").parentElement.classList.toggle("bad", failed > 0);
  $("t-failures").parentElement.title = `${failed} failed calls; ${S.totals.server_failures || 0} failed servers`;
  const c = S.totals.cost;
  $("t-cost").textContent = c ? `${fixed(c.server_h)} / ${fixed(c.core_h)}` : "0 / 0";
}

// -- messages --------------------------------------------------------------------------------
function trim(list) {
  if (list.length > MAX_LOG) list.splice(0, list.length - MAX_LOG);
}
function onSnapshot(m) {
  S.series = m.series;
  S.servers = m.servers;
  S.queues = m.queues;
  S.totals = m.totals;
  S.window = { p50: null, p90: null };
  S.timeline = new Map();
  for (const r of m.timeline) addTransition(r);
  S.decisions = m.decisions;
  S.failures = m.failures;
  S.specs = m.specs || {};
  S.capacity = m.capacity;
  S.forecast = m.forecast;
  render(m.t, true);
}
function onTick(m) {
  S.series.push(m.point);
  if (S.series.length > WINDOW_S) S.series.splice(0, S.series.length - WINDOW_S);
  S.servers = m.servers;
  S.queues = m.queues;
  S.totals = m.totals;
  S.window = m.window;
  if (m.specs) S.specs = m.specs;
  let logs = false, cap = false;
  for (const e of m.events) {
    if (e.kind === "server") addTransition(e);
    else if (e.kind === "decision") { S.decisions.push(e); logs = true; }
    else if (e.kind === "failure") { S.failures.push(e); logs = true; }
    else if (e.kind === "capacity") { S.capacity.push(e); cap = true; }
    else if (e.kind === "balancer.stopping") {
      S.failures.push({ t: e.t, what: "balancer stopping", reason: e.reason });
      logs = true;
    }
  }
  trim(S.decisions);
  trim(S.failures);
  if (m.forecast !== undefined) { S.forecast = m.forecast; cap = true; }
  render(m.t, logs, cap);
}
function render(now, logs, cap) {
  S.now = now;
  $("clock").textContent = `updated ${hms(now)}`;
  drawTiles();
  drawRateAndLatency(now);
  drawServers();
  drawSpecs();
  drawQueues();
  drawTimeline(now);
  if (logs !== false) drawLogs();
  if (cap !== false || logs === true) drawCapacity(now);
}

// After this many failed reconnects (2 s apart: the stream's retry) the balancer is taken as stopped.
const STOPPED_AFTER = 2;
let failedTries = 0, seen = false;
function connect() {
  const es = new EventSource("/dashboard/events");
  const conn = $("conn");
  es.onopen = () => {
    failedTries = 0;
    conn.textContent = "live";
    conn.className = "conn conn-live";
    document.body.classList.remove("stopped");
  };
  es.onerror = () => {
    // EventSource reconnects by itself (the stream's retry: 2 s); a snapshot follows. When the
    // balancer does not answer a few times running, say so plainly, with the last update's time.
    failedTries += 1;
    if (failedTries > STOPPED_AFTER || es.readyState === EventSource.CLOSED) {
      conn.textContent = "balancer stopped";
      $("clock").textContent = seen ? `last update ${hms(S.now)}; no answer since` : "no answer";
      conn.className = "conn conn-dead";
      conn.title = `no answer from ${location.host} after ${failedTries} tries; the page reconnects when it is back`;
      document.body.classList.add("stopped");
      if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connect, 5000); }
    } else {
      conn.textContent = "reconnecting";
      conn.className = "conn conn-wait";
    }
  };
  es.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    seen = true;
    if (m.type === "snapshot") onSnapshot(m);
    else if (m.type === "tick") onTick(m);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  initCharts();
  drawLogs();
  connect();
  // the timeline is a plain canvas: redraw it at the new size at once, not on the next message
  new ResizeObserver(() => drawTimeline(S.now)).observe($("timeline"));
});
