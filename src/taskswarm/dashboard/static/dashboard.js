// The taskswarm dashboard: follows /api/events (one `status` event a second) and redraws one
// screen in place. Hand-written, no libraries: the master serves every byte of it.
"use strict";

const POINTS = 300; // chart history: 300 events, five minutes at one a second
const ETA_WINDOW = 30; // seconds of a system's history its rate is taken over
const MAX_ERRORS = 20;
const TOKEN = new URLSearchParams(location.search).get("token") || "";

const state = {
  rates: [], // [uptime, tasks done per second]
  queue: [], // [uptime, tasks queued]
  lastDone: null, // [uptime, total done]
  systems: new Map(), // id -> [[uptime, done], ...]
  systemStates: new Map(), // id -> state last seen
  rejected: null, // total rejected messages last seen
  errors: [],
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

function duration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "–";
  seconds = Math.round(seconds);
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function number(value, digits = 0) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

// -- header and summary ----------------------------------------------------------------------

function renderHeader(master) {
  setText($("master-address"), master.address || "–");
  setText($("master-scheduler"), `${master.scheduler}${master.stealing ? " + stealing" : ""}`);
  setText($("master-strategy"), master.strategy || "–");
  setText($("master-uptime"), duration(master.uptime));
  document.title = `taskswarm · ${master.host || master.address}`;
}

function renderSummary(status, rate) {
  const live = status.slaves.filter((s) => s.state !== "lost" && s.state !== "departed");
  const sum = (key) => live.reduce((total, s) => total + (s[key] || 0), 0);
  setText($("sum-slaves"), live.filter((s) => s.state === "active").length);
  setText($("sum-workers"), sum("workers"));
  setText($("sum-inflight"), sum("in_flight"));
  setText($("sum-queued"), number(status.tasks.queued));
  setText($("sum-done"), number(status.slaves.reduce((t, s) => t + (s.done || 0), 0)));
  setText($("sum-rate"), number(rate, 1));
  setText($("sum-apps"), status.applications.filter((a) => a.state === "connected").length);
}

// -- nodes -----------------------------------------------------------------------------------

function resizeCell(slave) {
  const td = el("td", "resize-col");
  const form = el("form", "resize");
  const input = el("input", "workers-input");
  input.type = "number";
  input.min = "0";
  input.max = "1024";
  input.value = slave.workers;
  input.setAttribute("aria-label", `workers of ${slave.id}`);
  const button = el("button", "resize-button", "set");
  button.type = "submit";
  form.append(input, button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    resize(slave.id, Number(input.value), input);
  });
  td.append(form);
  return td;
}

function newSlaveRow(slave) {
  const row = el("tr", "slave");
  row.dataset.id = slave.id;
  const load = el("div", "load");
  const bar = el("div", "bar");
  bar.append(el("span"));
  load.append(bar, el("span", "text"));
  const loadCell = el("td", "load-cell");
  loadCell.append(load);
  row.append(
    el("td", "id"),
    el("td", "host"),
    el("td", "state-cell"),
    el("td", "num workers"),
    loadCell,
    el("td", "num done"),
    el("td", "num failed"),
    el("td", "num pace"),
    el("td", "num stolen"),
  );
  row.querySelector(".state-cell").append(el("span", "state"));
  if (TOKEN) row.append(resizeCell(slave));
  return row;
}

function updateSlaveRow(row, slave) {
  row.dataset.state = slave.state;
  row.dataset.workers = slave.workers;
  setText(row.querySelector(".id"), slave.id);
  setText(row.querySelector(".host"), `${slave.host}:${slave.pid}`);
  const badge = row.querySelector(".state");
  badge.className = `state ${slave.state}`;
  setText(badge, slave.state);
  setText(row.querySelector(".workers"), slave.workers);
  const load = slave.workers > 0 ? slave.in_flight / slave.workers : slave.in_flight ? 1 : 0;
  const bar = row.querySelector(".bar");
  bar.classList.toggle("full", load >= 1);
  bar.firstChild.style.width = `${Math.min(100, Math.round(load * 100))}%`;
  setText(row.querySelector(".load .text"), `${slave.in_flight}/${slave.workers}`);
  setText(row.querySelector(".done"), number(slave.done));
  setText(row.querySelector(".failed"), number(slave.failed));
  setText(row.querySelector(".pace"), number(slave.pace_ms, 1));
  setText(row.querySelector(".stolen"), number(slave.stolen));
  const input = row.querySelector(".workers-input");
  if (input && document.activeElement !== input && !input.dataset.dirty) {
    input.value = slave.workers;
  }
}

function renderSlaves(slaves) {
  const body = $("slave-rows");
  const rows = new Map([...body.querySelectorAll("tr.slave")].map((r) => [r.dataset.id, r]));
  const order = [...slaves].sort(
    (a, b) => (a.state === "lost") - (b.state === "lost") || String(a.id).localeCompare(b.id),
  );
  for (const slave of order) {
    let row = rows.get(slave.id);
    if (!row) row = newSlaveRow(slave);
    rows.delete(slave.id);
    updateSlaveRow(row, slave);
    body.append(row); // appending an attached row moves it: keeps the order
  }
  for (const row of rows.values()) row.remove();
  $("no-slaves").hidden = slaves.length > 0;
}

async function resize(slaveId, workers, input) {
  const message = $("action-message");
  message.hidden = false;
  message.className = "message";
  message.textContent = `resizing ${slaveId} to ${workers} workers…`;
  input.dataset.dirty = "1";
  try {
    const response = await fetch(`/api/slaves/${encodeURIComponent(slaveId)}/resize`, {
      method: "POST",
      headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
      body: JSON.stringify({ workers }),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${response.status}: ${text}`);
    message.textContent = `asked ${slaveId} for ${workers} workers`;
  } catch (error) {
    message.className = "message bad";
    message.textContent = `resize of ${slaveId} failed: ${error.message}`;
  } finally {
    delete input.dataset.dirty;
  }
}

// -- chart -----------------------------------------------------------------------------------

function record(status) {
  const now = status.master.uptime;
  const done = status.slaves.reduce((total, s) => total + (s.done || 0), 0);
  let rate = null;
  if (state.lastDone && now > state.lastDone[0] && done >= state.lastDone[1]) {
    rate = (done - state.lastDone[1]) / (now - state.lastDone[0]);
  } else if (state.lastDone && now <= state.lastDone[0]) {
    state.rates.length = 0; // the master restarted: its clock and counts start again
    state.queue.length = 0;
  }
  state.lastDone = [now, done];
  if (rate !== null) push(state.rates, [now, rate]);
  push(state.queue, [now, status.tasks.queued]);
  return rate;
}

function push(series, point) {
  series.push(point);
  if (series.length > POINTS) series.splice(0, series.length - POINTS);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const pad = { left: 48, right: 48, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const all = state.queue.concat(state.rates);
  canvas.dataset.points = String(state.queue.length);
  if (!all.length || w <= 0 || h <= 0) return;
  const t1 = Math.max(...all.map((p) => p[0]));
  const t0 = Math.min(Math.min(...all.map((p) => p[0])), t1 - 60);
  const rateMax = niceMax(Math.max(0, ...state.rates.map((p) => p[1])));
  const queueMax = niceMax(Math.max(4, ...state.queue.map((p) => p[1]))); // whole ticks
  const x = (t) => pad.left + ((t - t0) / (t1 - t0 || 1)) * w;

  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#e3e6eb";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.top + h - (i / 4) * h;
    g.beginPath();
    g.moveTo(pad.left, Math.round(y) + 0.5);
    g.lineTo(pad.left + w, Math.round(y) + 0.5);
    g.stroke();
    g.textAlign = "right";
    g.fillStyle = "#2563eb";
    g.fillText(number((rateMax * i) / 4, rateMax < 4 ? 1 : 0), pad.left - 6, y + 4);
    g.textAlign = "left";
    g.fillStyle = "#d97706";
    g.fillText(number((queueMax * i) / 4), pad.left + w + 6, y + 4);
  }
  g.fillStyle = "#6b7280";
  g.textAlign = "left";
  g.fillText(`-${duration(t1 - t0)}`, pad.left, height - 6);
  g.textAlign = "right";
  g.fillText("now", pad.left + w, height - 6);

  line(g, state.queue, x, (v) => pad.top + h - (v / queueMax) * h, "#d97706", true);
  line(g, state.rates, x, (v) => pad.top + h - (v / rateMax) * h, "#2563eb", false);
}

function line(g, series, x, y, colour, fill) {
  if (!series.length) return;
  g.beginPath();
  series.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
  g.strokeStyle = colour;
  g.lineWidth = 1.75;
  g.stroke();
  if (fill && series.length > 1) {
    g.lineTo(x(series[series.length - 1][0]), y(0));
    g.lineTo(x(series[0][0]), y(0));
    g.closePath();
    g.globalAlpha = 0.12;
    g.fillStyle = colour;
    g.fill();
    g.globalAlpha = 1;
  }
}

// -- task systems ----------------------------------------------------------------------------

function systemEta(system, now) {
  let history = state.systems.get(system.id);
  if (!history) state.systems.set(system.id, (history = []));
  history.push([now, system.done]);
  while (history.length > 2 && now - history[0][0] > ETA_WINDOW) history.shift();
  if (system.state !== "running") return system.state;
  const [t0, d0] = history[0];
  const rate = now > t0 ? (system.done - d0) / (now - t0) : 0;
  if (rate <= 0) return "ETA –";
  return `ETA ${duration(Math.max(0, system.total - system.done) / rate)}`;
}

function newSystem(system) {
  const box = el("div", "system");
  box.dataset.id = system.id;
  const top = el("div", "row");
  top.append(el("span", "name", system.id), el("span", "meta percent"));
  const progress = el("progress");
  progress.max = 1;
  progress.value = 0;
  const bottom = el("div", "row");
  bottom.append(el("span", "meta counts"), el("span", "meta eta"));
  box.append(top, progress, bottom);
  return box;
}

function renderSystems(systems, now) {
  const list = $("system-list");
  const boxes = new Map([...list.querySelectorAll(".system")].map((b) => [b.dataset.id, b]));
  for (const system of systems) {
    let box = boxes.get(system.id);
    if (!box) list.append((box = newSystem(system)));
    boxes.delete(system.id);
    const total = Math.max(system.total, system.done);
    // A complete system is 100% even when it finished before its last tasks were counted.
    const fraction =
      system.state === "complete" ? 1 : total > 0 ? Math.min(1, system.done / total) : 0;
    const percent = Math.floor(fraction * 100);
    box.dataset.state = system.state;
    box.dataset.done = system.done;
    box.dataset.total = system.total;
    const progress = box.querySelector("progress");
    progress.max = 1000;
    progress.value = Math.round(fraction * 1000);
    setText(box.querySelector(".percent"), `${percent}%`);
    setText(box.querySelector(".counts"), `${number(system.done)} / ${number(system.total)} tasks`);
    setText(box.querySelector(".eta"), systemEta(system, now));
  }
  for (const [id, box] of boxes) {
    box.remove();
    state.systems.delete(id);
  }
  $("no-systems").hidden = systems.length > 0;
}

// -- applications --------------------------------------------------------------------------

function renderApplications(applications) {
  const body = $("application-rows");
  body.replaceChildren(
    ...applications.map((app) => {
      const row = el("tr", "application");
      row.dataset.id = app.id;
      const badge = el("span", `state ${app.state}`, app.state);
      const stateCell = el("td", "state-cell");
      stateCell.append(badge);
      row.append(
        el("td", "id", app.id),
        el("td", "host", `${app.host || "–"}:${app.pid ?? "–"}`),
        stateCell,
        el("td", "num", number(app.in_flight)),
        el("td", "num", number(app.done)),
        el("td", "num", number(app.failed)),
        el("td", "num", `${number(app.last_heartbeat, 1)}s ago`),
      );
      return row;
    }),
  );
  $("no-applications").hidden = applications.length > 0;
}

// -- errors ----------------------------------------------------------------------------------

// Task failures come from the master with their remote tracebacks (newest first); the rest are
// cluster events this page notices between two updates.
function renderErrors(errors) {
  const list = $("error-list");
  const key = errors.map((e) => `${e.task_id}@${e.time}`).join(",");
  if (list.dataset.key === key) return; // unchanged: keep any traceback the reader opened
  list.dataset.key = key;
  list.replaceChildren(
    ...errors.map((error) => {
      const item = el("li", "error");
      const details = el("details");
      const summary = el("summary");
      const where = error.slave_id ? ` on ${error.slave_id}` : "";
      summary.append(
        el("time", "", new Date(error.time * 1000).toLocaleTimeString()),
        el("span", "task", `${error.name || error.task_id}${where}: `),
        el("span", "message", error.error),
      );
      details.append(summary, el("pre", "traceback", error.traceback || "(no traceback)"));
      item.append(details);
      return item;
    }),
  );
  $("no-errors").hidden = errors.length > 0;
}

function noteEvents(status) {
  for (const system of status.systems) {
    const before = state.systemStates.get(system.id);
    if (system.state === "failed" && before !== "failed") {
      addEvent(`task system ${system.id} failed after ${system.done} tasks`);
    }
    state.systemStates.set(system.id, system.state);
  }
  const rejected = Object.values(status.master.rejected || {}).reduce((a, b) => a + b, 0);
  if (state.rejected !== null && rejected > state.rejected) {
    const reasons = Object.entries(status.master.rejected)
      .map(([reason, n]) => `${reason}: ${n}`)
      .join(", ");
    addEvent(`master rejected ${rejected - state.rejected} message(s) (${reasons})`);
  }
  state.rejected = rejected;
}

function addEvent(text) {
  state.errors.unshift({ at: new Date(), text });
  state.errors.length = Math.min(state.errors.length, MAX_ERRORS);
  const list = $("event-list");
  list.replaceChildren(
    ...state.errors.map((event) => {
      const item = el("li", "event");
      const time = el("time", "", event.at.toLocaleTimeString());
      item.append(time, document.createTextNode(event.text));
      return item;
    }),
  );
  list.hidden = false;
}

// -- wiring ----------------------------------------------------------------------------------

function render(status) {
  const rate = record(status);
  renderHeader(status.master);
  renderSummary(status, rate);
  renderSlaves(status.slaves);
  renderApplications(status.applications);
  renderSystems(status.systems, status.master.uptime);
  renderErrors(status.errors || []);
  noteEvents(status);
  setText($("legend-rate"), number(rate, 1));
  setText($("legend-queue"), number(status.tasks.queued));
  drawChart();
}

function connect() {
  const connection = $("connection");
  const source = new EventSource("/api/events");
  source.addEventListener("status", (event) => {
    connection.dataset.state = "live";
    setText(connection, "live");
    render(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; say so meanwhile.
    connection.dataset.state = "lost";
    setText(connection, "reconnecting");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const node of document.querySelectorAll(".resize-col")) node.hidden = !TOKEN;
  window.addEventListener("resize", drawChart);
  connect();
});
