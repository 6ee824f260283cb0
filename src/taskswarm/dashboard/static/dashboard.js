// The taskswarm dashboard: follows /api/events (one `status` event a second) and redraws one
// screen in place. The charts are uPlot's (static/vendor/, served by the master like the rest):
// the load's history from /api/history (the master keeps the last ten minutes, so a page opened
// late has them too) and the task stream from /api/stream (the tasks numbered after the last
// one this page has).
"use strict";

const HISTORY_EVERY_MS = 2000; // how often the history charts are fetched again
const STREAM_EVERY_MS = 1000; // how often the task stream asks for the newest tasks
const STREAM_SECONDS = 60; // the task stream shows the last minute (zoom in for less)
const STREAM_TASKS = 2000; // ... and at most this many tasks
const FINISHED_SHOWN = 10; // finished task systems listed (the newest)
const ETA_WINDOW = 30; // seconds of a system's history its rate is taken over
const MAX_ERRORS = 20;
const TOKEN = new URLSearchParams(location.search).get("token") || "";

const state = {
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

function bytes(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return `${number(value, i && value < 10 ? 1 : 0)} ${units[i]}`;
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
    el("td", "num cpu"),
    el("td", "num memory"),
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
  setText(row.querySelector(".cpu"), slave.cpu === null || slave.cpu === undefined ? "–" : number(slave.cpu, 0));
  setText(row.querySelector(".memory"), bytes(slave.rss));
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

// -- the rate of tasks done, for the summary card --------------------------------------------

function record(status) {
  const now = status.master.uptime;
  const done = status.slaves.reduce((total, s) => total + (s.done || 0), 0);
  let rate = null;
  if (state.lastDone && now > state.lastDone[0] && done >= state.lastDone[1]) {
    rate = (done - state.lastDone[1]) / (now - state.lastDone[0]);
  }
  state.lastDone = [now, done];
  return rate;
}

// -- charts (uPlot) ----------------------------------------------------------------------------

const COLOURS = ["#2563eb", "#d97706", "#16a34a", "#dc2626", "#7c3aed", "#0891b2", "#db2777",
  "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#9333ea"];
const charts = {}; // id -> uPlot

function chartWidth(id) {
  return Math.max(200, $(id).clientWidth || 600);
}

// A chart made once, then fed new data; made again when its series change (a slave came).
function chart(id, key, options, data) {
  let plot = charts[id];
  if (plot && plot.key !== key) {
    plot.destroy();
    plot = null;
  }
  if (!plot) {
    plot = charts[id] = new uPlot({ width: chartWidth(id), ...options }, data, $(id));
    plot.key = key;
  } else {
    plot.setData(data);
  }
  return plot;
}

function rangeFrom(min) {
  return (u, low, high) => [min, Math.max(high, min + 1)];
}

async function getJSON(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function refreshHistory() {
  let history;
  try {
    history = await getJSON("/api/history");
  } catch (error) {
    return; // the master restarts or stops: the next round tries again
  }
  const times = history.time;
  const span = times.length > 1 ? times[times.length - 1] - times[0] : 0;
  setText($("history-span"), times.length ? `the last ${duration(span)}` : "");
  chart(
    "chart",
    "load",
    {
      height: 220,
      scales: { rate: { range: rangeFrom(0) }, tasks: { range: rangeFrom(0) } },
      series: [
        {},
        { label: "done / s", scale: "rate", stroke: COLOURS[0], width: 1.75 },
        { label: "queued", scale: "tasks", stroke: COLOURS[1], fill: "rgba(217,119,6,0.12)" },
        { label: "running", scale: "tasks", stroke: COLOURS[2] },
      ],
      axes: [
        {},
        { scale: "rate", label: "tasks done / s", stroke: COLOURS[0] },
        { scale: "tasks", side: 1, label: "tasks", grid: { show: false } },
      ],
    },
    [times, history.rate, history.queued, history.running],
  );
  $("chart").dataset.points = String(times.length);

  const names = Object.keys(history.slaves).sort();
  const series = [{}];
  const data = [times];
  names.forEach((name, i) => {
    const colour = COLOURS[i % COLOURS.length];
    series.push({ label: `${name} CPU %`, scale: "cpu", stroke: colour });
    data.push(history.slaves[name].cpu);
    series.push({
      label: `${name} memory`,
      scale: "rss",
      stroke: colour,
      dash: [4, 4],
      value: (u, v) => (v === null || v === undefined ? "–" : `${number(v, 0)} MiB`),
    });
    // In MiB, so the axis has round ticks (50, 100...) rather than odd numbers of bytes.
    data.push(history.slaves[name].rss.map((v) => (v === null ? null : v / 1048576)));
  });
  chart(
    "usage-chart",
    names.join(","),
    {
      height: 200,
      scales: { cpu: { range: rangeFrom(0) }, rss: { range: rangeFrom(0) } },
      series,
      axes: [
        {},
        { scale: "cpu", label: "CPU % (of one core)" },
        {
          scale: "rss",
          side: 1,
          label: "memory (MiB)",
          size: 60,
          grid: { show: false },
        },
      ],
    },
    data,
  );
  $("usage-chart").dataset.points = String(times.length);
}

// -- task stream ---------------------------------------------------------------------------------

const stream = {
  last: 0, // the number of the newest task this page has
  tasks: [], // [began, ended, worker, name, system, status], oldest first
  follow: true, // the view follows the newest tasks (until the reader zooms)
  rows: [], // the workers, one row each ("slave/pid"), sorted
  colours: new Map(), // label -> colour
  systemNames: new Map(), // system id -> its name
};

function taskLabel(task) {
  const system = task[4];
  return system ? stream.systemNames.get(system) || system : task[3] || "?";
}

function colourOf(label) {
  let colour = stream.colours.get(label);
  if (!colour) {
    colour = COLOURS[stream.colours.size % COLOURS.length];
    stream.colours.set(label, colour);
  }
  return colour;
}

function drawBars(u) {
  const { ctx } = u;
  const rows = stream.rows;
  const row = new Map(rows.map((name, i) => [name, i]));
  const height = Math.max(2, Math.min(18, (u.bbox.height / Math.max(rows.length, 1)) * 0.7));
  const [x0, x1] = [u.scales.x.min, u.scales.x.max];
  ctx.save();
  ctx.beginPath();
  ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
  ctx.clip();
  let drawn = 0;
  for (const task of stream.tasks) {
    if (task[1] < x0 || task[0] > x1) continue;
    const left = u.valToPos(task[0], "x", true);
    const right = u.valToPos(task[1], "x", true);
    const y = u.valToPos(row.get(task[2]), "y", true);
    ctx.fillStyle = task[5] === "ok" ? colourOf(taskLabel(task)) : "#991b1b";
    const width = right - left;
    // A pixel of gap after each bar: tasks back to back on one worker stay apart.
    ctx.fillRect(left, y - height / 2, Math.max(1, width > 3 ? width - 1 : width), height);
    drawn++;
  }
  ctx.restore();
  u.root.parentNode.dataset.bars = String(drawn);
}

function renderStream() {
  const tasks = stream.tasks;
  const rows = (stream.rows = [...new Set(tasks.map((t) => t[2]))].sort());
  const box = $("stream-chart");
  box.dataset.rows = String(rows.length);
  if (!tasks.length) return;
  const newest = Math.max(...tasks.map((t) => t[1]));
  const oldest = Math.min(...tasks.map((t) => t[0]));
  const longest = Math.max(...rows.map((r) => r.length));
  const plot = chart(
    "stream-chart",
    rows.join(","),
    {
      height: Math.max(100, 50 + rows.length * 26),
      legend: { show: false },
      cursor: { y: false, drag: { x: true, y: false } },
      scales: {
        x: { time: true },
        y: { auto: false, range: [-0.5, rows.length - 0.5] },
      },
      series: [{}, { show: false }],
      axes: [
        {},
        {
          size: Math.min(320, 16 + 7 * longest),
          font: "11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
          splits: () => stream.rows.map((_, i) => i),
          values: (u, splits) => splits.map((i) => stream.rows[i] || ""),
          grid: { show: false },
        },
      ],
      hooks: {
        draw: [drawBars],
        setSelect: [(u) => (stream.follow = u.select.width === 0)],
      },
    },
    [[oldest, newest], [null, null]],
  );
  if (!plot.followWired) {
    plot.over.addEventListener("dblclick", () => (stream.follow = true));
    plot.followWired = true;
  }
  if (stream.follow) {
    plot.setScale("x", { min: Math.max(oldest, newest - STREAM_SECONDS), max: newest });
  } else {
    plot.redraw(false);
  }
  renderStreamLegend();
}

function renderStreamLegend() {
  const labels = [...new Set(stream.tasks.map(taskLabel))].slice(0, 12);
  const key = labels.join("\u0000");
  const legend = $("stream-legend");
  if (legend.dataset.key === key) return;
  legend.dataset.key = key;
  legend.replaceChildren(
    ...labels.map((label) => {
      const item = el("span", "stream-key");
      const swatch = el("span", "key");
      swatch.style.background = colourOf(label);
      item.append(swatch, document.createTextNode(label));
      return item;
    }),
  );
}

async function refreshStream() {
  let answer;
  try {
    answer = await getJSON(`/api/stream?after=${stream.last}`);
  } catch (error) {
    return;
  }
  if (answer.last < stream.last) stream.tasks = []; // the master restarted: numbers begin again
  stream.last = answer.last;
  if (!answer.tasks.length && stream.tasks.length) return;
  const tasks = stream.tasks.concat(answer.tasks);
  stream.tasks = tasks.length > STREAM_TASKS ? tasks.slice(-STREAM_TASKS) : tasks;
  renderStream();
}

function every(ms, job) {
  const run = async () => {
    await job();
    setTimeout(run, ms);
  };
  run();
}

window.addEventListener("resize", () => {
  for (const [id, plot] of Object.entries(charts)) {
    plot.setSize({ width: chartWidth(id), height: plot.height });
  }
});

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
  const name = el("span", "name", system.name || system.id);
  name.title = system.id;
  top.append(name, el("span", "meta percent"));
  const progress = el("progress");
  progress.max = 1;
  progress.value = 0;
  const bottom = el("div", "row");
  bottom.append(el("span", "meta counts"), el("span", "meta eta"));
  box.append(top, progress, bottom);
  return box;
}

// Running systems first, in the master's order; finished ones (the newest FINISHED_SHOWN)
// folded away under a <details>, so the page stays short however many have run.
function renderSystems(systems, now) {
  const running = $("system-list");
  const finished = $("finished-list");
  const boxes = new Map(
    [...document.querySelectorAll("#systems .system")].map((b) => [b.dataset.id, b]),
  );
  const live = systems.filter((s) => s.state === "running");
  const ended = systems.filter((s) => s.state !== "running");
  const shown = ended.slice(-FINISHED_SHOWN).reverse(); // the newest first
  for (const system of systems) stream.systemNames.set(system.id, system.name || system.id);
  for (const [list, group] of [[running, live], [finished, shown]]) {
    for (const system of group) {
      let box = boxes.get(system.id);
      if (!box) box = newSystem(system);
      boxes.delete(system.id);
      updateSystem(box, system, now);
      list.append(box); // appending an attached box moves it: keeps the order
    }
  }
  for (const [id, box] of boxes) {
    box.remove();
    state.systems.delete(id);
  }
  $("finished-systems").hidden = ended.length === 0;
  setText($("finished-count"), ended.length);
  $("no-systems").hidden = systems.length > 0;
}

function updateSystem(box, system, now) {
  const total = Math.max(system.total, system.done);
  // A complete system is 100% even when it finished before its last tasks were counted.
  const fraction =
    system.state === "complete" ? 1 : total > 0 ? Math.min(1, system.done / total) : 0;
  const percent = Math.floor(fraction * 100);
  box.dataset.state = system.state;
  box.dataset.done = system.done;
  box.dataset.total = system.total;
  setText(box.querySelector(".name"), system.name || system.id);
  const progress = box.querySelector("progress");
  progress.max = 1000;
  progress.value = Math.round(fraction * 1000);
  setText(box.querySelector(".percent"), `${percent}%`);
  setText(box.querySelector(".counts"), `${number(system.done)} / ${number(system.total)} tasks`);
  setText(box.querySelector(".eta"), systemEta(system, now));
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
  connect();
  every(HISTORY_EVERY_MS, refreshHistory);
  every(STREAM_EVERY_MS, refreshStream);
});
