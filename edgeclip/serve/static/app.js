// edgeclip serve: the page. Plain JavaScript, no build step, no external resources.
// All URLs are relative, so the page works where the app is mounted (e.g. /clip/). With a token, the
// page is opened as ?token=...: the server then sets a cookie that every request below carries.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { labels: [], version: null, dirty: false, live: false, events: null };

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function message(id, text, ok) {
  const el = $(id);
  el.textContent = text;
  el.className = "msg " + (ok === undefined ? "" : ok ? "ok" : "bad");
}

function bars(container, items) {
  container.replaceChildren(...items.map(({ label, score }) => {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = label;
    name.title = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = score.toFixed(3);
    row.append(name, track, value);
    return row;
  }));
}

// -- live source -----------------------------------------------------------------------------------------
function showDecision(d) {
  if (!d) return;
  $("current-label").textContent = d.label;
  $("current-score").textContent = `${d.score.toFixed(2)} · frame #${d.frame}`;
  $("current-label").dataset.frame = d.frame;
  bars($("bars"), d.top || []);
}

function connectEvents() {
  if (state.events) state.events.close();
  const events = new EventSource("v1/stream");
  state.events = events;
  events.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "pill ok"; });
  events.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = "pill bad"; });
  events.addEventListener("state", (e) => showDecision(JSON.parse(e.data).decision));
  events.addEventListener("decision", (e) => showDecision(JSON.parse(e.data)));
  events.addEventListener("relabel", () => { if (!state.dirty) loadLabels(); });
  for (const name of ["source_lost", "reconnect", "source_gone", "end", "error"]) {
    events.addEventListener(name, (e) => {
      const data = JSON.parse(e.data);
      $("stream-stats").textContent = `${name.replace("_", " ")}${data.reason ? ": " + data.reason : ""}`;
    });
  }
}

function startPreview() {
  const img = $("preview");
  img.onerror = () => setTimeout(() => { img.src = `v1/preview.mjpg?retry=${Date.now()}`; }, 2000);
  img.src = "v1/preview.mjpg";
}

async function pollStatus() {
  try {
    const s = await api("v1/status");
    $("model").textContent = `${s.model} · ${s.precision} · ${s.backend}`;
    if (!state.live) {
      $("conn").textContent = "ready";
      $("conn").className = "pill ok";
    }
    const st = s.stream;
    if (st) {
      const lat = st.latency_ms || {};
      const fps = st.inference_fps == null ? "–" : st.inference_fps.toFixed(1);
      $("stream-stats").textContent = `${st.state} · ${fps} fps classified · ${st.inferred} frames, ` +
        `${st.dropped} dropped · latency p50 ${lat.p50 ?? "–"} ms, p95 ${lat.p95 ?? "–"} ms`;
    }
    if (s.labels && state.version !== null && s.labels.version !== state.version && !state.dirty) loadLabels();
    return s;
  } catch (err) {
    $("conn").textContent = err.message.startsWith("no token") || err.message.startsWith("a wrong token")
      ? "token needed: open this page as ?token=…" : "offline";
    $("conn").className = "pill bad";
    return null;
  }
}

// -- labels ------------------------------------------------------------------------------------------------
async function loadLabels() {
  try {
    const doc = await api("v1/labels");
    state.labels = doc.labels.map((l) => ({ ...l, original: l.name }));
    state.version = doc.version;
    state.dirty = false;
    renderLabels();
    $("labels-version").textContent = `${doc.count} · version ${doc.version} · templates: ${doc.template_set}`;
  } catch (err) {
    message("labels-msg", err.message, false);
  }
}

function renderLabels() {
  const list = $("labels");
  list.replaceChildren(...state.labels.map((label, i) => {
    const li = document.createElement("li");
    if (label.name !== label.original) li.className = "changed";
    const input = document.createElement("input");
    input.value = label.name;
    input.maxLength = 300;
    input.setAttribute("aria-label", `label ${i + 1}`);
    input.dataset.index = i;
    input.addEventListener("input", () => {
      label.name = input.value;
      state.dirty = true;
      li.className = label.name !== label.original ? "changed" : "";
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.title = `remove ${label.name}`;
    remove.addEventListener("click", () => { state.labels.splice(i, 1); state.dirty = true; renderLabels(); });
    li.append(input, remove);
    const extra = (label.synonyms || []).length + (label.descriptions || []).length;
    if (extra && label.name === label.original) {
      const hint = document.createElement("span");
      hint.className = "hint";
      hint.textContent = `+${extra}`;
      hint.title = [...(label.synonyms || []), ...(label.descriptions || [])].join("\n");
      li.append(hint);
    }
    return li;
  }));
}

function labelDocument() {
  // A renamed label drops its synonyms and descriptions: they described the old name.
  return {
    labels: state.labels.map((l) => {
      const name = l.name.trim();
      if (name !== l.original) return name;
      const out = { name };
      if ((l.synonyms || []).length) out.synonyms = l.synonyms;
      if ((l.descriptions || []).length) out.descriptions = l.descriptions;
      return out;
    }),
  };
}

async function applyLabels() {
  const button = $("apply");
  button.disabled = true;
  message("labels-msg", "embedding the labels on the device…");
  try {
    const persist = $("persist").checked ? "1" : "0";
    const doc = await api(`v1/labels?persist=${persist}`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(labelDocument()),
    });
    state.labels = doc.labels.map((l) => ({ ...l, original: l.name }));
    state.version = doc.version;
    state.dirty = false;
    renderLabels();
    $("labels-version").textContent = `${doc.count} · version ${doc.version} · templates: ${doc.template_set}`;
    message("labels-msg", `Applied ${doc.count} labels in ${doc.seconds.toFixed(2)} s` +
      (doc.persisted ? ", saved into the bundle" : ""), true);
  } catch (err) {
    message("labels-msg", err.message, false);
  } finally {
    button.disabled = false;
  }
}

// -- classify a photo --------------------------------------------------------------------------------------
async function classifyFile(file) {
  if (!file) return;
  const thumb = $("thumb");
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  thumb.hidden = false;
  message("classify-msg", `classifying ${file.name}…`);
  try {
    const r = await api("v1/classify?top_k=5", {
      method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file,
    });
    bars($("result"), r.predictions);
    message("classify-msg", `${file.name}: ${r.predictions[0].label} (${r.latency_ms.toFixed(1)} ms, ` +
      `labels version ${r.labels_version})`, true);
  } catch (err) {
    $("result").replaceChildren();
    thumb.hidden = true;
    message("classify-msg", `${file.name}: ${err.message}`, false);
  }
}

function setupDrop() {
  const drop = $("drop");
  const input = $("file");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => { classifyFile(input.files[0]); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classifyFile(e.dataTransfer.files[0]);
  });
}

// -- start ---------------------------------------------------------------------------------------------------
async function main() {
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);  // the cookie holds the token now; keep it off the URL bar
  }
  $("add-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("new-label").value.trim();
    if (!name) return;
    state.labels.push({ name, original: null });
    state.dirty = true;
    $("new-label").value = "";
    renderLabels();
  });
  $("apply").addEventListener("click", applyLabels);
  $("revert").addEventListener("click", loadLabels);
  setupDrop();
  const status = await pollStatus();
  await loadLabels();
  if (status && status.stream) {
    state.live = true;
    $("live").hidden = false;
    $("source").textContent = status.stream.source;
    showDecision(status.stream.decision);
    startPreview();
    connectEvents();
  }
  setInterval(pollStatus, 2000);
}

main();
