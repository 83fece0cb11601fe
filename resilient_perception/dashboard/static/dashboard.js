// The dashboard page: draws what the server pushes over server-sent events.
// No libraries and no build step: plain DOM and canvas. The test drives it through the
// attributes set here (tile data-state / data-surrogate, the canvases' data-* counters).
"use strict";

const EVENT_COLOURS = { dead: "#c8312b", deadline: "#e0702a", alive: "#2e9d4a",
                        restart: "#2b6cc8", plan: "#7b4fd6", kill: "#000",
                        split: "#b8860b" };
const tiles = document.getElementById("tiles");
let windowS = 60;

function text(id, value) { document.getElementById(id).textContent = value; }
function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + " %"; }
function num(x, digits, unit) {
  return x === null || x === undefined ? "-" : x.toFixed(digits) + (unit || "");
}

function tile(device) {
  let el = document.getElementById("tile-" + device);
  if (el) return el;
  el = document.createElement("div");
  el.className = "tile";
  el.id = "tile-" + device;
  el.dataset.device = device;
  el.innerHTML = '<div class="head"><b>camera ' + device + '</b><span class="surrogate">' +
    'surrogate</span></div><img alt=""><div class="head">' +
    '<span class="state"></span><span class="prediction"></span></div>' +
    '<div class="facts"></div>';
  tiles.appendChild(el);
  return el;
}

function drawTiles(list) {
  for (const t of list) {
    const el = tile(t.device);
    el.dataset.state = t.state;
    el.dataset.surrogate = String(t.surrogate);
    el.querySelector(".state").textContent = t.state + (t.reason ? " (" + t.reason + ")" : "");
    el.querySelector(".prediction").textContent =
      t.label === null ? "" : "class " + t.label + " " + num(t.confidence, 2);
    el.querySelector(".facts").textContent =
      "input " + num(t.input_rate_hz, 1, " Hz") + " · inference " + num(t.inference_ms, 2, " ms") +
      (t.restarts ? " · restarts " + t.restarts : "");
  }
}

function drawFused(f, fusionSilent) {
  const status = document.getElementById("fusion-status");
  status.textContent = fusionSilent ? "fusion node silent" : "fusion node reporting";
  status.classList.toggle("warn", fusionSilent);
  if (!f) return;
  text("fused-label", "class " + f.label);
  text("fused-confidence", num(f.confidence, 3));
  text("fused-live", f.live.length ? f.live.join(" ") : "none");
  text("fused-surrogates", f.surrogates.length ? f.surrogates.join(" ") + " (Modifier)" : "none");
  text("fused-count", f.count);
  text("fused-latency", num(f.latency_ms, 1, " ms"));
}

function drawAccuracy(a) {
  text("acc-modifier", pct(a.modifier));
  text("acc-without", pct(a.without_modifier));
  text("acc-frames", a.frames ? "last " + a.frames + " labelled frames (" + a.compared_frames +
       " with every live device's prediction heard; with Modifier on those: " +
       pct(a.modifier_compared) + ")" : "no labels yet");
}

function xOf(canvas, t) { return canvas.width * (1 + t / windowS); }

function drawLatency(bins) {
  const c = document.getElementById("latency");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const top = Math.max(10, ...bins.map(b => b[2])) * 1.1;
  const yOf = ms => c.height - 16 - (c.height - 24) * ms / top;
  g.strokeStyle = "#ddd"; g.fillStyle = "#666"; g.font = "11px sans-serif";
  for (let s = 0; s <= windowS; s += 10) {
    const x = xOf(c, -s);
    g.beginPath(); g.moveTo(x, 0); g.lineTo(x, c.height - 14); g.stroke();
    g.fillText(s ? "-" + s + " s" : "now", Math.min(x + 2, c.width - 26), c.height - 2);
  }
  const step = Math.pow(10, Math.floor(Math.log10(top)));
  for (let ms = step; ms < top; ms += step) {
    g.beginPath(); g.moveTo(0, yOf(ms)); g.lineTo(c.width, yOf(ms)); g.stroke();
    g.fillText(ms + " ms", 2, yOf(ms) - 2);
  }
  for (const [column, colour] of [[2, "#e0a0a0"], [1, "#2b6cc8"]]) {
    g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
    bins.forEach((b, i) => (i ? g.lineTo : g.moveTo).call(g, xOf(c, b[0]), yOf(b[column])));
    g.stroke();
  }
  g.lineWidth = 1; g.fillStyle = "#2b6cc8"; g.fillText("p50", c.width - 60, 12);
  g.fillStyle = "#c86060"; g.fillText("max", c.width - 30, 12);
  c.dataset.bins = bins.length;
  c.dataset.last = bins.length ? bins[bins.length - 1][1] : "";
  c.dataset.updates = Number(c.dataset.updates) + 1;
}

function drawEvents(events) {
  const c = document.getElementById("event-strip");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#eee"; g.fillRect(0, 0, c.width, c.height);
  for (const e of events) {
    g.fillStyle = EVENT_COLOURS[e.kind] || "#333";
    g.fillRect(xOf(c, e.t) - 2, 2, 4, c.height - 4);
  }
  c.dataset.events = events.length;
  const list = document.getElementById("event-list");
  list.innerHTML = "";
  for (const e of events.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = (-e.t).toFixed(1) + " s ago: " + e.text;
    li.style.color = EVENT_COLOURS[e.kind] || "#333";
    list.appendChild(li);
  }
}

function drawDistributed(s) {
  const section = document.getElementById("distributed");
  section.hidden = !s.plan && !s.links.length && !s.requests.count;
  if (s.plan) {
    const p = s.plan;
    text("plan-summary", "plan v" + p.version + " (" + p.reason + ", " + p.solver + "): " +
         "expected accuracy " + pct(p.expected_accuracy) + ", latency " +
         num(1e3 * p.latency_s, 1, " ms"));
    const rows = ["<tr><th>source</th>" + p.units.map(u => "<th>" + u + "</th>").join("") +
                  "</tr>"];
    for (const r of p.rows) {
      rows.push("<tr><th>" + r.source + "</th>" + r.robots.map(
        x => x === null ? '<td class="skipped">skip</td>' : "<td>" + x + "</td>").join("") +
        "</tr>");
    }
    document.getElementById("plan").innerHTML = rows.join("");
  }
  document.getElementById("links").innerHTML = "<tr><th>link</th><th>Mbit/s</th><th>RTT</th>" +
    "</tr>" + s.links.map(l => "<tr><td>" + l.from + " → " + l.to + "</td><td>" +
    num(l.mbps, 1) + "</td><td>" + num(l.rtt_ms, 1, " ms") + "</td></tr>").join("");
  text("requests", s.requests.count ? s.requests.count + " in the window, p50 " +
       num(s.requests.p50_ms, 1, " ms") : "-");
}

function connect() {
  const badge = document.getElementById("connection");
  const source = new EventSource("events");
  source.onopen = () => { badge.dataset.state = "open"; badge.textContent = "live"; };
  source.onerror = () => { badge.dataset.state = "closed"; badge.textContent = "reconnecting"; };
  source.addEventListener("state", e => {
    const s = JSON.parse(e.data);
    windowS = s.window_s;
    text("window", windowS);
    drawTiles(s.tiles);
    drawFused(s.fused, s.fusion_silent);
    drawAccuracy(s.accuracy);
    drawLatency(s.latency);
    drawEvents(s.events);
    drawDistributed(s);
  });
  source.addEventListener("images", e => {
    for (const [device, url] of Object.entries(JSON.parse(e.data))) {
      tile(Number(device)).querySelector("img").src = url;
    }
  });
}

connect();
