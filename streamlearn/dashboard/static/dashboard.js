// streamlearn dashboard: reads the server's JSON endpoints (the same JSON as the CLI's --json) and
// draws everything itself (tables, SVG chart, heatmap); nothing is loaded from elsewhere.
// Every text from the server goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const MAX_JOBS = 100;
const state = { tasks: [], jobs: [], storage: null, matrix: null, ended: new Set(), seenJobs: false };

// ---- small helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fixed(value, digits = 4) { return value === null || value === undefined ? "-" : Number(value).toFixed(digits); }
function count(value) { return value === null || value === undefined ? "-" : Number(value).toLocaleString("en-US"); }

// Decimal units, as `streamlearn storage` prints them (storage.human_bytes).
function humanBytes(n) {
  for (const [unit, size] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
    if (Math.abs(n) >= size) {
      const v = n / size;
      return (v < 100 ? v.toPrecision(3).replace(/\.?0+$/, "") : v.toFixed(0)) + " " + unit;
    }
  }
  return n.toFixed(0) + " B";
}


class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...(options || {}) });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new HttpError(response.status, message);
  }
  return body;
}

function showProblem(message) {
  const node = document.getElementById("problem");
  node.hidden = !message;
  node.textContent = message || "";
  if (message && /token/i.test(message)) {
    node.append(" ", el("a", { href: "/dashboard/login" }, "Sign in with the API token."));
  }
}

// ---- the stream ----------------------------------------------------------------------------------

function renderStream() {
  const body = document.querySelector("#stream tbody");
  body.replaceChildren(...state.tasks.map((t, i) => el("tr", { dataset: { task: t.task } },
    el("td", { class: "num" }, i + 1),
    el("td", { dataset: { field: "task" } }, t.task),
    el("td", { class: "status " + (t.status || ""), dataset: { field: "status" } }, t.status || "-"),
    el("td", { dataset: { field: "method" } }, t.method || "-"),
    el("td", { dataset: { field: "hyperparameters" } }, t.settings || "-"),
    el("td", { class: "num", dataset: { field: "val_accuracy", value: t.val_accuracy ?? "" } }, fixed(t.val_accuracy)),
    el("td", { class: "num", dataset: { field: "test_accuracy", value: t.test_accuracy ?? "" } }, fixed(t.test_accuracy)),
    el("td", { class: "num", dataset: { field: "trainable_params", value: t.trainable_params ?? "" } },
      count(t.trainable_params)),
    el("td", { class: "num", dataset: { field: "bytes", value: t.bytes ?? "" }, title: t.bytes === null ? null : humanBytes(t.bytes) },
      count(t.bytes)),
  )));
  document.getElementById("stream-empty").hidden = state.tasks.length > 0;
  renderTryTasks();
}

// ---- jobs and sweeps -----------------------------------------------------------------------------

function progressCell(job) {
  const p = job.progress || {};
  if (job.status === "succeeded") return el("td", {}, bar(1), el("span", { class: "pct" }, "done"));
  if (!p.total_steps) return el("td", { class: "note" }, job.status === "running" ? "loading data" : "-");
  const done = Math.min(1, (p.step || 0) / p.total_steps);
  return el("td", {}, bar(done), el("span", { class: "pct" }, `${p.step}/${p.total_steps}`));
}

function bar(fraction) {
  return el("span", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": Math.round(fraction * 100) }, el("span", { style: `width:${(fraction * 100).toFixed(1)}%` }));
}

function jobRow(job, trialsText) {
  const p = job.progress || {};
  return el("tr", { class: job.kind === "trial" ? "trial" : null,
    dataset: { job: job.job_id, status: job.status, step: p.step ?? "", totalSteps: p.total_steps ?? "" } },
    el("td", { title: job.job_id }, el("code", {}, job.job_id.slice(0, 8))),
    el("td", {}, job.task),
    el("td", {}, job.kind + (trialsText ? ` (${trialsText})` : "")),
    el("td", { class: "status " + job.status, dataset: { field: "status" } }, job.status),
    progressCell(job),
    el("td", { class: "num", dataset: { field: "epoch" } }, p.epoch ?? "-"),
    el("td", { class: "num", dataset: { field: "step" } }, p.step ?? "-"),
    el("td", { class: "num", dataset: { field: "loss" } }, p.loss === null || p.loss === undefined ? "-" : p.loss.toFixed(4)),
    el("td", {}, job.worker || "-"),
    el("td", { class: "err", dataset: { field: "error" } }, job.error || ""),
  );
}

function renderJobs() {
  const trials = new Map();
  for (const job of state.jobs) {
    if (job.parent_id) (trials.get(job.parent_id) || trials.set(job.parent_id, []).get(job.parent_id)).push(job);
  }
  const rows = [];
  const top = [...state.jobs].reverse().filter((job) => !job.parent_id);
  // Newest first, at most MAX_JOBS of them; a sweep's trials follow their sweep.
  for (const job of top.slice(0, MAX_JOBS)) {
    const children = trials.get(job.job_id) || [];
    const ended = children.filter((t) => t.status === "succeeded" || t.status === "failed").length;
    rows.push(jobRow(job, job.kind === "sweep" ? `${ended}/${children.length} trials ended` : ""));
    for (const trial of children) rows.push(jobRow(trial));
  }
  document.querySelector("#jobs tbody").replaceChildren(...rows);
  document.getElementById("jobs-empty").hidden = rows.length > 0;
  document.getElementById("jobs-more").textContent =
    top.length > MAX_JOBS ? `Showing the newest ${MAX_JOBS} of ${top.length} jobs (streamlearn jobs lists all).` : "";
}

// ---- storage curve -------------------------------------------------------------------------------

function renderStorage() {
  const report = state.storage, box = document.getElementById("storage-chart");
  const ratio = document.getElementById("storage-ratio");
  if (!report || !report.tasks.length) {
    box.replaceChildren(el("p", { class: "empty" }, "Nothing stored yet."));
    ratio.textContent = "";
    return;
  }
  const tasks = report.tasks, K = tasks.length;
  const measured = tasks.map((t) => t.cumulative_bytes), law = tasks.map((t) => t.theoretical_bytes);
  const full = tasks.map((t) => t.full_copy_cumulative_bytes);
  ratio.replaceChildren(
    el("strong", { id: "storage-total", dataset: { value: report.total_bytes } }, humanBytes(report.total_bytes)),
    ` stored for K = ${K} task${K === 1 ? "" : "s"} against `,
    el("strong", { id: "storage-full", dataset: { value: report.full_copy_total_bytes } }, humanBytes(report.full_copy_total_bytes)),
    " for K full copies: ",
    el("strong", { id: "storage-percent", dataset: { value: report.ratio } }, (100 * report.ratio).toFixed(2) + "%"),
    ` (${(1 / report.ratio).toFixed(0)}× less); measured ÷ law = ${report.measured_over_theoretical.toFixed(4)}.`,
  );
  // Drawn at the width it is shown at, so its text stays readable on a phone.
  const W = Math.max(300, Math.min(900, Math.round(box.clientWidth || 560))), H = Math.round(Math.max(220, W * 0.5));
  const left = 64, right = 14, top = 12, bottom = 38;
  const lo = Math.log10(Math.min(...measured, ...law) / 3), hi = Math.log10(Math.max(...full) * 3);
  const x = (k) => left + (K === 1 ? (W - left - right) / 2 : ((k - 1) / (K - 1)) * (W - left - right));
  const y = (v) => top + (1 - (Math.log10(v) - lo) / (hi - lo)) * (H - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMidYMid meet" });
  for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) {
    chart.append(svg("line", { x1: left, x2: W - right, y1: y(10 ** e), y2: y(10 ** e), stroke: "#e5e8eb" }));
    chart.append(svg("text", { x: left - 6, y: y(10 ** e) + 4, "text-anchor": "end" }, humanBytes(10 ** e)));
  }
  const ticks = K <= 12 ? tasks.map((_, i) => i + 1) : [1, Math.round(K / 4), Math.round(K / 2), Math.round((3 * K) / 4), K];
  for (const k of ticks) chart.append(svg("text", { x: x(k), y: H - bottom + 16, "text-anchor": "middle" }, k));
  chart.append(svg("text", { x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle" }, "K, tasks learned"));
  chart.append(svg("text", { x: 12, y: top + 4, transform: `rotate(-90 12 ${top + 4})`, "text-anchor": "end" },
    "cumulative bytes (log scale)"));
  const line = (values, attrs, name) => {
    const d = values.map((v, i) => `${i ? "L" : "M"}${x(i + 1).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    chart.append(svg("path", { d, fill: "none", "data-series": name, ...attrs }));
    if (K <= 30) {
      values.forEach((v, i) => chart.append(svg("circle", { cx: x(i + 1), cy: y(v), r: attrs["stroke-width"] > 3 ? 4 : 2.5,
        fill: attrs.stroke, "data-series": name, "data-value": v })));
    }
  };
  // The measured line is wide and pale, the law thin and dashed on top: where they agree, both show.
  line(full, { stroke: "#c0392b", "stroke-width": 2.2 }, "full");
  line(measured, { stroke: "#5dade2", "stroke-width": 6, "stroke-opacity": 0.6, "stroke-linecap": "round" }, "measured");
  line(law, { stroke: "#1b2631", "stroke-width": 1.4, "stroke-dasharray": "5 4" }, "law");
  box.replaceChildren(chart);
  document.getElementById("backbone").textContent =
    `backbone: ${report.backbone} (L=${report.layers}, d=${report.hidden}, |w| = ${count(report.backbone_params)} parameters, ` +
    `${humanBytes(report.backbone_bytes)})`;
}

// ---- accuracy matrix -----------------------------------------------------------------------------

function heat(value, low = 0.5) {
  // White (`low` and below) to deep blue (1.0): accuracies from 0.5 (most tasks live in the upper
  // half), attention weights from 0.
  const t = Math.max(0, Math.min(1, (value - low) / (1 - low)));
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return { bg: `rgb(${mix(235, 31)},${mix(245, 97)},${mix(251, 141)})`, fg: t > 0.55 ? "#fff" : "#1b2631" };
}

function renderMatrix() {
  const m = state.matrix, head = document.querySelector("#heatmap thead"), body = document.querySelector("#heatmap tbody");
  const empty = !m || !m.tasks.length || m.latest.every((r) => r === null);
  document.getElementById("matrix-empty").hidden = !empty;
  if (!m) return;
  const collapsed = new Set(m.collapsed);
  // The cell of each task's latest recorded run: the one a collapsed warning is about.
  const latestRow = m.tasks.map((_, j) => m.matrix.reduce((last, row, t) => (row[j] === null ? last : t), -1));
  head.replaceChildren(el("tr", {}, el("th", {}, "after ↓ / task →"), ...m.tasks.map((t) => el("th", { scope: "col" }, t))));
  body.replaceChildren(...m.matrix.map((row, t) => el("tr", {},
    el("th", { scope: "row" }, m.tasks[t]),
    ...row.map((v, j) => {
      if (v === null) return el("td", { class: "cell none", dataset: { t, j } }, j > t ? "" : "·");
      const c = heat(v);
      return el("td", { class: "cell" + (collapsed.has(m.tasks[j]) && t === latestRow[j] ? " collapsed" : ""),
        style: `background:${c.bg};color:${c.fg}`, dataset: { t, j, value: v },
        title: `R[${m.tasks[t]}, ${m.tasks[j]}] = ${v}` }, v.toFixed(3));
    }),
  )));
  const show = (id, v) => {
    const node = document.getElementById(id);
    node.textContent = v === null || v === undefined ? "-" : Number(v).toPrecision(4).replace(/\.?0+$/, "");
    node.dataset.value = v === null || v === undefined ? "" : v;
  };
  show("bwt", m.bwt); show("forgetting", m.forgetting); show("average", m.average_accuracy);
  document.getElementById("collapsed").replaceChildren(...m.latest.filter((r) => r && r.collapsed).map((r) =>
    el("li", { dataset: { task: r.task } },
      `${r.task} looks collapsed: accuracy ${r.accuracy.toFixed(4)} on ${r.split}, majority class ` +
      `${r.majority_accuracy.toFixed(4)}, ${r.predicted_classes} label${r.predicted_classes === 1 ? "" : "s"} predicted.`)));
}

// ---- fusion attention ----------------------------------------------------------------------------

async function renderFusion() {
  const fused = state.tasks.filter((t) => t.method === "fusion" && t.artifact_job_id);
  document.getElementById("fusion-section").hidden = !fused.length;
  if (!fused.length) return;
  const select = document.getElementById("fusion-task");
  const chosen = fused.some((t) => t.task === select.value) ? select.value : fused[fused.length - 1].task;
  select.replaceChildren(...fused.map((t) => el("option", { value: t.task, selected: t.task === chosen }, t.task)));
  const report = await api(`/v1/tasks/${encodeURIComponent(chosen)}/fusion`);
  const a = report.attention || { sources: [], sites: [], mean: [] };
  const table = document.getElementById("fusion-heatmap");
  table.dataset.task = chosen;
  table.querySelector("thead").replaceChildren(el("tr", {}, el("th", {}, "site ↓ / source →"),
    ...a.sources.map((source) => el("th", { scope: "col" }, source === "self" ? `${chosen} (own)` : source))));
  table.querySelector("tbody").replaceChildren(...a.sites.map((site, i) => el("tr", {},
    el("th", { scope: "row" }, site),
    ...a.mean[i].map((v, j) => {
      if (v === null) return el("td", { class: "cell none" }, "-");
      const c = heat(v, 0);
      return el("td", { class: "cell", style: `background:${c.bg};color:${c.fg}`,
        dataset: { site, source: a.sources[j], value: v } }, v.toFixed(3));
    }))));
  document.getElementById("fusion-pruned").textContent = report.pruned && report.pruned.length
    ? `pruned by --fusion-top: ${report.pruned.join(", ")}` : "";
}

// ---- try it --------------------------------------------------------------------------------------

function renderTryTasks() {
  const box = document.getElementById("try-tasks");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const first = !box.dataset.filled;
  const servable = state.tasks.filter((t) => t.artifact_job_id);
  box.replaceChildren(el("legend", {}, "Tasks"), ...servable.map((t) => el("label", {},
    el("input", { type: "checkbox", name: "task", value: t.task, checked: first || checked.has(t.task) }), t.task)));
  if (servable.length) box.dataset.filled = "1";
}

async function tryIt(event) {
  event.preventDefault();
  const text = document.getElementById("try-text").value.trim();
  const tasks = [...document.querySelectorAll("#try-tasks input:checked")].map((i) => i.value);
  const error = document.getElementById("try-error"), out = document.querySelector("#try-results tbody");
  error.hidden = true;
  out.replaceChildren();
  if (!text || !tasks.length) {
    error.hidden = false;
    error.textContent = !text ? "error: type a text" : "error: pick at least one task";
    return;
  }
  const button = event.submitter || document.querySelector("#try button");
  button.disabled = true;
  try {
    const answer = await api("/v1/classify", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ texts: [text], tasks, probabilities: false }) });
    const result = answer.results[0];
    out.replaceChildren(...answer.tasks.map((task) => el("tr", { dataset: { task } },
      el("td", {}, task), el("td", { dataset: { field: "label" } }, el("strong", {}, result[task].label)),
      el("td", { class: "score", dataset: { field: "score", value: result[task].score } }, result[task].score.toFixed(4)))));
  } catch (exc) {
    error.hidden = false;
    error.textContent = "error: " + exc.message;
  } finally {
    button.disabled = false;
  }
}

// ---- submit --------------------------------------------------------------------------------------

async function submitTask(event) {
  event.preventDefault();
  const form = event.target, data = new FormData();
  const result = document.getElementById("submit-result"), error = document.getElementById("submit-error");
  result.hidden = error.hidden = true;
  for (const part of ["train", "validation", "test"]) {
    const file = form.elements[part].files[0];
    if (file) data.append(part, file, file.name);
  }
  for (const field of ["name", "method", "epochs", "lr"]) {
    const value = form.elements[field].value.trim();
    if (value) data.append(field, value);
  }
  const button = event.submitter || form.querySelector("button");
  button.disabled = true;
  try {
    const job = await api("/v1/tasks", { method: "POST", body: data });
    result.hidden = false;
    result.textContent = job.created === false
      ? `identical job ${job.job_id} already exists for task ${job.task} (${job.status})`
      : `job ${job.job_id} queued: task ${job.task}`;
    result.dataset.job = job.job_id;
    await pollJobs();
  } catch (exc) {
    error.hidden = false;
    error.textContent = "error: " + exc.message;  // the one line the CLI prints
  } finally {
    button.disabled = false;
  }
}

// ---- re-score ------------------------------------------------------------------------------------

async function rescore() {
  const button = document.getElementById("rescore"), note = document.getElementById("rescore-result");
  button.disabled = true;
  note.textContent = "re-scoring...";
  try {
    const answer = await api("/v1/evaluate", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    const worst = Math.max(0, ...answer.results.map((r) => r.drift ?? 0));
    note.textContent = `${answer.results.length} task(s) re-scored; largest drift ${worst}`;
    state.matrix = answer.matrix;
    renderMatrix();
  } catch (exc) {
    note.textContent = "error: " + exc.message;
  } finally {
    button.disabled = false;
  }
}

// ---- refresh loop --------------------------------------------------------------------------------

async function refreshCatalogue() {
  const [tasks, storage, matrix] = await Promise.all([api("/v1/tasks"), api("/v1/storage"), api("/v1/evaluations/matrix")]);
  state.tasks = tasks; state.storage = storage; state.matrix = matrix;
  renderStream(); renderStorage(); renderMatrix();
  await renderFusion().catch((exc) => showProblem("cannot read a fused task's attention: " + exc.message));
}

async function pollJobs() {
  state.jobs = await api("/v1/jobs");
  renderJobs();
  // A job that ended since the last poll changes the stream, storage and matrix: read them again.
  const ended = state.jobs.filter((j) => j.status === "succeeded" || j.status === "failed").map((j) => j.job_id);
  const fresh = ended.some((id) => !state.ended.has(id));
  ended.forEach((id) => state.ended.add(id));
  if (fresh && state.seenJobs) await refreshCatalogue();
  state.seenJobs = true;
}

async function tick() {
  try {
    await pollJobs();
    showProblem("");
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (exc) {
    showProblem("cannot reach the server: " + exc.message);
  }
  setTimeout(tick, POLL_MS);
}

async function start() {
  document.getElementById("try").addEventListener("submit", tryIt);
  document.getElementById("submit").addEventListener("submit", submitTask);
  document.getElementById("rescore").addEventListener("click", rescore);
  document.getElementById("fusion-task").addEventListener("change", () =>
    renderFusion().catch((exc) => showProblem("cannot read a fused task's attention: " + exc.message)));
  let resized = null;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(renderStorage, 150); });
  try {
    await refreshCatalogue();
  } catch (exc) {
    showProblem("cannot read the catalogue: " + exc.message);
  }
  await tick();
  document.body.dataset.ready = "1";
}

start();
