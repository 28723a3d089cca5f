// The fleet page: polls /api/fleet and /api/models and draws small SVG charts.
// No libraries: everything the page needs is served by the dcrec cloud itself.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 180, PAD = { l: 44, r: 8, t: 8, b: 22 };
const POLL_MS = 2000;

function token() {
  const m = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(path, options) {
  const headers = { "Accept": "application/json" };
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const resp = await fetch(path, Object.assign({ headers: headers, cache: "no-store" }, options || {}));
  if (resp.status === 401 || resp.status === 403) {
    document.getElementById("auth-note").hidden = false;
    throw new Error("operator token refused (" + resp.status + ")");
  }
  if (!resp.ok) {
    // The server's detail says what is wrong, e.g. which registry file is torn (503).
    const detail = await resp.json().then((b) => b.detail, () => "");
    throw new Error(path + ": HTTP " + resp.status + (typeof detail === "string" && detail ? ": " + detail : ""));
  }
  return resp.json();
}

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function axes(svg, ymax, unit) {
  const x0 = PAD.l, y0 = H - PAD.b;
  svg.appendChild(el("line", { x1: x0, y1: PAD.t, x2: x0, y2: y0, class: "axis" }));
  svg.appendChild(el("line", { x1: x0, y1: y0, x2: W - PAD.r, y2: y0, class: "axis" }));
  for (const f of [0, 0.5, 1]) {
    const y = y0 - f * (y0 - PAD.t);
    svg.appendChild(el("text", { x: x0 - 4, y: y + 3, "text-anchor": "end", class: "tick" },
      (ymax * f).toFixed(ymax * f >= 10 || f === 0 ? 0 : 1) + unit));
  }
}

function lineChart(id, seriesList, unit) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  let ymax = 0;
  for (const s of seriesList) for (const v of s.values) ymax = Math.max(ymax, v);
  ymax = niceMax(ymax);
  axes(svg, ymax, unit);
  const n = seriesList.length ? seriesList[0].values.length : 0;
  const x0 = PAD.l, y0 = H - PAD.b, xw = W - PAD.r - x0, yh = y0 - PAD.t;
  for (const s of seriesList) {
    const pts = s.values.map((v, i) =>
      (x0 + (n > 1 ? i / (n - 1) : 0) * xw).toFixed(1) + "," + (y0 - (v / ymax) * yh).toFixed(1));
    svg.appendChild(el("polyline", { points: pts.join(" "), class: "line " + s.cls, "data-series": s.cls }));
  }
  svg.appendChild(el("text", { x: W - PAD.r, y: H - 6, "text-anchor": "end", class: "tick" }, "now"));
  svg.appendChild(el("text", { x: x0, y: H - 6, class: "tick" }, "-" + n + " s"));
}

function barChart(id, counts) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  const names = Object.keys(counts).sort((a, b) => counts[b] - counts[a]);
  const max = niceMax(Math.max(0, ...names.map((k) => counts[k])));
  const rowH = Math.min(24, (H - 10) / Math.max(1, names.length));
  const x0 = 110, xw = W - x0 - 60;
  names.forEach((name, i) => {
    const y = 5 + i * rowH, w = (counts[name] / max) * xw;
    svg.appendChild(el("text", { x: x0 - 6, y: y + rowH * 0.65, "text-anchor": "end", class: "tick" }, name));
    svg.appendChild(el("rect", { x: x0, y: y + 2, width: w.toFixed(1), height: rowH - 4, class: "bar",
      "data-reason": name, "data-count": counts[name] }));
    svg.appendChild(el("text", { x: x0 + w + 4, y: y + rowH * 0.65, class: "tick" }, String(counts[name])));
  });
  if (!names.length) svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, "no requests yet"));
}

function sum(a) { return a.reduce((x, y) => x + y, 0); }

function setText(id, text) { document.getElementById(id).textContent = text; }

async function rollback(kind) {
  if (!window.confirm("Roll the " + kind + " model back to the previous release?")) return;
  await api("/api/models/" + kind + "/rollback", { method: "POST" });
  refresh();
}

function modelsTable(models) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const kind of ["cloud", "device"]) {
    const m = models[kind];
    const tr = document.createElement("tr");
    tr.dataset.kind = kind;
    const cells = [kind, m.current || "none", m.sequence ? String(m.sequence) : "–",
      m.versions.map((v) => v.version).join(", ") || "–"];
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    const td = document.createElement("td");
    if (m.registry && m.history.length > 1) {
      const b = document.createElement("button");
      b.textContent = "roll back";
      b.addEventListener("click", () => rollback(kind).catch(showError));
      td.appendChild(b);
    }
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function showError(e) {
  const s = document.getElementById("status");
  s.textContent = String(e.message || e);
  s.className = "status bad";
}

async function refresh() {
  try {
    // A broken registry fails /api/models (503), not the fleet's charts: draw what there is.
    const [fleet, models] = await Promise.all([api("/api/fleet"), api("/api/models").catch((e) => e)]);
    const s = fleet.series;
    const total = sum(s.requests), errors = sum(s.errors);
    setText("total-requests", String(total));
    setText("rate-now", (sum(s.requests.slice(-10)) / 10).toFixed(1));
    setText("error-rate", total ? (100 * errors / total).toFixed(1) + " %" : "0 %");
    // Failures the server never saw (timeouts, dropped connections) only show in what devices report.
    const dev = s.device_requests_total || { ok: 0, failed: 0 };
    const reported = dev.ok + dev.failed;
    setText("device-failed", reported ? (100 * dev.failed / reported).toFixed(1) + " %" : "–");
    setText("device-reports", reported ? "of " + reported + " reported" : "no reports yet");
    setText("devices", String(fleet.devices));
    const problems = fleet.problems || {};
    setText("cloud-model", fleet.models.cloud || (problems.cloud ? "registry unavailable" : "none"));
    setText("device-model", fleet.models.device || (problems.device ? "registry unavailable" : "none"));
    lineChart("rate-chart", [{ values: s.requests, cls: "rate" }], "");
    lineChart("latency-chart", [{ values: s.latency_p50_ms, cls: "p50" }, { values: s.latency_p95_ms, cls: "p95" }], "");
    barChart("reason-chart", s.reasons_total);
    const st = document.getElementById("status");
    st.textContent = "updated " + new Date().toLocaleTimeString();
    st.className = "status ok";
    if (models instanceof Error) showError(models); else modelsTable(models);
    document.body.dataset.loaded = "1";
  } catch (e) {
    showError(e);
  }
}

refresh();
setInterval(refresh, POLL_MS);
