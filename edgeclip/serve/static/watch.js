// edgeclip serve --watch: every camera's newest frame with its regions drawn over it and their states.
// Plain JavaScript, no build step; polls v1/watch once a second when v1/status says a watch configuration
// runs (the section stays hidden, and v1/watch is never asked for, without --watch).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const watchView = { cameras: new Map() };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function cameraCard(cam) {
  const card = el("div", "cam");
  card.dataset.camera = cam.name;
  const head = el("h3", "", cam.name + " ");
  const src = el("span", "muted small", "");
  head.append(src);
  const figure = el("div", "frame");
  const img = el("img");
  img.alt = `camera ${cam.name}`;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("preserveAspectRatio", "none");
  figure.append(img, svg);
  const table = el("div", "regions");
  const stats = el("div", "muted small", "");
  card.append(head, figure, table, stats);
  const view = { card, src, img, svg, table, stats, frame: null, loading: false };
  img.addEventListener("load", () => { view.loading = false; });
  img.addEventListener("error", () => { view.loading = false; });
  return view;
}

function drawRegions(view, cam) {
  const [w, h] = cam.size || [1, 1];
  view.svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  view.svg.replaceChildren(...cam.regions.filter((r) => r.points).flatMap((r, i) => {
    const poly = document.createElementNS(SVG, "polygon");
    poly.setAttribute("points", r.points.map((p) => p.join(",")).join(" "));
    poly.setAttribute("class", `region r${i % 6}` + (r.state === null ? " pending" : ""));
    poly.dataset.region = r.name;
    const label = document.createElementNS(SVG, "text");
    const [x, y] = r.box;
    label.setAttribute("x", x + 4);
    label.setAttribute("y", y + Math.max(14, h / 28));
    label.setAttribute("font-size", Math.max(12, h / 30));
    label.setAttribute("class", "region-label");
    label.textContent = `${r.name}: ${r.state ?? "…"}`;
    return [poly, label];
  }));
}

function regionRows(view, cam) {
  view.table.replaceChildren(...cam.regions.map((r) => {
    const row = el("div", "region-row");
    row.dataset.region = r.name;
    const name = el("span", "name", r.name);
    const st = el("span", "state", r.state ?? "…");
    st.dataset.state = r.state ?? "";
    const score = el("span", "value", r.score === null ? "" : r.score.toFixed(2));
    const info = el("span", "muted small",
      `${r.on} · ${r.classified} classified · ${r.motion_skipped} skipped` +
      (r.fps ? ` · ${r.fps.toFixed(1)}/s` : "") + (r.error ? ` · ${r.error}` : ""));
    row.append(name, st, score, info);
    return row;
  }));
}

function renderCamera(cam) {
  let view = watchView.cameras.get(cam.name);
  if (!view) {
    view = cameraCard(cam);
    watchView.cameras.set(cam.name, view);
    document.getElementById("camera-list").append(view.card);
  }
  view.card.classList.toggle("down", !cam.up);
  view.src.textContent = `${cam.source}${cam.up ? "" : " · lost, reconnecting"}`;
  if (cam.frame !== null && cam.frame !== view.frame && !view.loading) {
    view.frame = cam.frame;
    view.loading = true;
    view.img.src = `v1/watch/${encodeURIComponent(cam.name)}/frame.jpg?f=${cam.frame}`;
  }
  drawRegions(view, cam);
  regionRows(view, cam);
  view.stats.textContent = `${cam.fps ? cam.fps.toFixed(1) : "0"} fps · ${cam.frames_dropped} frames dropped · ` +
    `${cam.reconnects} reconnects`;
}

async function pollWatch() {
  let status;
  try {
    const response = await fetch("v1/watch", { credentials: "same-origin" });
    if (response.status === 404) return false;  // no --watch: the section stays hidden
    if (!response.ok) return true;
    status = await response.json();
  } catch (e) {
    return true;
  }
  document.getElementById("cameras").hidden = false;
  document.getElementById("watch-summary").textContent =
    `${status.cameras_up}/${status.cameras.length} up · ${status.regions} regions · ${status.encoder_calls} encoder calls · ` +
    `${status.motion_skipped} skipped without motion`;
  for (const cam of status.cameras) renderCamera(cam);
  const names = new Set(status.cameras.map((c) => c.name));
  for (const [name, view] of watchView.cameras) {
    if (!names.has(name)) { view.card.remove(); watchView.cameras.delete(name); }
  }
  return true;
}

(async function startWatch() {
  try {
    const response = await fetch("v1/status", { credentials: "same-origin" });
    if (!response.ok || !(await response.json()).watch) return;
  } catch (e) {
    return;
  }
  if (await pollWatch()) setInterval(pollWatch, 1000);
})();
