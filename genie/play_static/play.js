// Genie play page: prompts, latent-action keys, key map (localStorage), history, fps, export.
// Talks to the JSON API of genie/play.py; actions are 0-based there and shown 1-based here.
"use strict";

const KEYMAP_STORE = "genie-play-keymap";
const $ = (id) => document.getElementById(id);
const S = { info: null, epoch: -1, nFrames: 0, actions: [], prompt: null, polling: false,
            capture: false, keymap: loadKeymap() };

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = {}; }
  return { status: r.status, body };
}

function loadKeymap() {
  try {
    const m = JSON.parse(localStorage.getItem(KEYMAP_STORE) || "null");
    if (m && typeof m === "object") return m;
  } catch (e) { /* a broken entry: fall back to the default */ }
  return { ArrowLeft: null, ArrowRight: null, ArrowUp: null, ArrowDown: null, " ": null };
}

function saveKeymap() { localStorage.setItem(KEYMAP_STORE, JSON.stringify(S.keymap)); }

function keyName(k) { return k === " " ? "Space" : k; }

function renderKeymap() {
  const body = $("keymap").querySelector("tbody");
  body.innerHTML = "";
  for (const key of Object.keys(S.keymap)) {
    const tr = document.createElement("tr");
    const sel = document.createElement("select");
    sel.dataset.key = key;
    sel.add(new Option("—", ""));
    for (let a = 0; a < S.info.n_actions; a++) sel.add(new Option(`action ${a + 1}`, String(a)));
    sel.value = S.keymap[key] === null ? "" : String(S.keymap[key]);
    sel.onchange = () => { S.keymap[key] = sel.value === "" ? null : Number(sel.value); saveKeymap(); };
    const del = document.createElement("button");
    del.textContent = "remove";
    del.onclick = () => { delete S.keymap[key]; saveKeymap(); renderKeymap(); };
    const td0 = document.createElement("td"); td0.textContent = keyName(key);
    const td1 = document.createElement("td"); td1.append(sel);
    const td2 = document.createElement("td"); td2.append(del);
    tr.append(td0, td1, td2);
    body.append(tr);
  }
}

function renderPrompts(list) {
  const box = $("prompts");
  box.innerHTML = list.length ? "" : '<p class="muted">no dataset prompts (start with --data DIR); upload one</p>';
  for (const p of list) {
    const fig = document.createElement("figure");
    fig.dataset.id = p.id;
    fig.className = "prompt";
    fig.innerHTML = `<img src="/api/prompts/${encodeURIComponent(p.id)}.png" alt=""><figcaption></figcaption>`;
    fig.querySelector("figcaption").textContent = p.label;
    fig.onclick = () => reset(p.id);
    box.append(fig);
  }
}

async function loadPrompts(select) {
  const r = await api("/api/prompts");
  renderPrompts(r.body);
  if (select) await reset(select);
}

function setError(msg) { $("error").textContent = msg || ""; }

async function reset(id) {
  if (id === null || id === undefined) return;
  setError("");
  $("status").textContent = "resetting…";
  const r = await api("/api/reset", { method: "POST", body: JSON.stringify({ prompt: id }) });
  $("status").textContent = "";
  if (r.status !== 200) { setError(r.body.error || `reset failed (${r.status})`); return; }
  S.prompt = id;
  for (const f of document.querySelectorAll(".prompt")) f.classList.toggle("selected", f.dataset.id === id);
  S.epoch = r.body.epoch; S.nFrames = 0; S.actions = [];
  $("history").innerHTML = "";
  $("reset").disabled = false;
  for (const a of [$("export-gif"), $("export-mp4")]) a.classList.remove("disabled");
  applyState(r.body);
}

async function step(action) {
  if (S.prompt === null) { setError("choose a prompt frame first"); return; }
  const r = await api("/api/step", { method: "POST", body: JSON.stringify({ action }) });
  if (r.status === 429) { $("status").textContent = "busy: step dropped"; return; }
  if (r.status !== 202) { setError(r.body.error || `step failed (${r.status})`); return; }
  $("pending").textContent = r.body.pending;
  poll();
}

async function poll() {
  if (S.polling) return;
  S.polling = true;
  try {
    for (;;) {
      const r = await api(`/api/state?since=${S.nFrames}`);
      if (r.status !== 200) break;
      applyState(r.body);
      if (!r.body.pending && !r.body.generating) break;
      await new Promise((ok) => setTimeout(ok, 80));
    }
  } finally { S.polling = false; }
}

function frameUrl(i) { return `/api/frame/${S.epoch}/${i}.png`; }

function applyState(st) {
  if (st.epoch !== S.epoch) return;  // an older session's answer
  $("fps").textContent = st.fps.toFixed(2);
  $("pending").textContent = st.pending;
  $("status").textContent = st.generating ? "generating…" : "";
  if (st.error) setError(st.error);
  for (let i = Math.max(S.nFrames, st.since); i < st.n_frames; i++) {
    const fig = document.createElement("figure");
    const label = i === 0 ? "prompt" : `${i}: action ${st.actions[i - 1] + 1}`;
    fig.innerHTML = `<img src="${frameUrl(i)}" alt=""><figcaption>${label}</figcaption>`;
    fig.dataset.index = i;
    $("history").append(fig);
  }
  if (st.n_frames > S.nFrames) {
    S.nFrames = st.n_frames;
    const img = $("frame");
    img.src = frameUrl(st.n_frames - 1);
    img.dataset.index = String(st.n_frames - 1);
    img.dataset.hash = st.hashes[st.hashes.length - 1] || "";
    $("frame-index").textContent = String(st.n_frames - 1);
    $("history").scrollLeft = $("history").scrollWidth;
  }
  S.actions = st.actions;
}

function onKey(e) {
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
  if (S.capture) {  // binding a new key
    e.preventDefault();
    S.capture = false;
    $("capture-hint").textContent = "";
    if (e.key !== "Escape" && !(e.key in S.keymap)) { S.keymap[e.key] = null; saveKeymap(); renderKeymap(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const n = S.info ? S.info.n_actions : 0;
  if (/^[1-9]$/.test(e.key) && Number(e.key) <= n) {
    e.preventDefault();
    step(Number(e.key) - 1);
  } else if (e.key in S.keymap && S.keymap[e.key] !== null) {
    e.preventDefault();
    step(S.keymap[e.key]);
  }
}

async function upload(file) {
  const r = await api("/api/prompts", { method: "POST", body: file,
                                        headers: { "X-Filename": file.name.slice(0, 100) } });
  if (r.status !== 200) { setError(r.body.error || "upload failed"); return; }
  await loadPrompts(r.body.id);
}

async function init() {
  const r = await api("/api/info");
  S.info = r.body;
  const i = S.info;
  $("info").textContent = `${i.preset || "model"} · ${i.width}x${i.height} · ${i.n_actions} latent actions · ` +
    `MaskGIT ${i.maskgit_steps} steps, temperature ${i.temperature} · context ${i.max_frames} frames · ${i.device}`;
  $("key-range").textContent = `1-${i.n_actions}`;
  $("max-pending").textContent = i.queue.max_pending;
  for (let a = 0; a < i.n_actions; a++) {
    const b = document.createElement("button");
    b.textContent = String(a + 1);
    b.title = `latent action ${a + 1}`;
    b.onclick = () => step(a);
    $("action-buttons").append(b);
  }
  renderKeymap();
  $("reset").onclick = () => reset(S.prompt);
  $("upload").onchange = (e) => { if (e.target.files.length) upload(e.target.files[0]); };
  $("add-binding").onclick = () => { S.capture = true; $("capture-hint").textContent = "press a key (Esc cancels)"; };
  document.addEventListener("keydown", onKey);
  await loadPrompts(null);
  document.body.dataset.ready = "1";
}

init();
