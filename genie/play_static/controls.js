// Controls page: polls /api/controls until the LAM statistics are ready, then renders them.
"use strict";

function shiftText(s) {  // (dy, dx) px per frame: how the picture moves
  const [dy, dx] = s;
  const part = (v, pos, neg) => (Math.abs(v) < 0.05 ? "" : `${v > 0 ? pos : neg} ${Math.abs(v).toFixed(1)} `);
  return (part(dx, "→", "←") + part(dy, "↓", "↑")).trim() || "still";
}

async function load() {
  const r = await fetch("/api/controls");
  const c = await r.json();
  const summary = document.getElementById("summary");
  if (c.status === "computing" || c.status === "not started") {
    summary.textContent = "computing the LAM's actions over the dataset's clips…";
    setTimeout(load, 300);
    return;
  }
  if (c.status !== "ready") { summary.textContent = `not available: ${c.error || c.status}`; return; }
  const held = c.held_out === null ? "unknown whether held out" :
    (c.held_out ? "held out from the LAM's training data" : "the LAM's own training data");
  summary.textContent = `${c.n_transitions} transitions in ${c.n_clips} clips (${held}).`;
  const body = document.querySelector("#controls tbody");
  body.innerHTML = "";
  for (const a of c.actions) {
    const tr = document.createElement("tr");
    tr.className = "action";
    tr.dataset.action = a.action;
    const pct = (100 * a.frequency).toFixed(1);
    tr.innerHTML = `<td><b>${a.action + 1}</b></td>` +
      `<td><span class="bar" style="width:${Math.round(2 * pct)}px"></span> ${pct}% (${a.count})</td>` +
      `<td>${(255 * a.mean_change).toFixed(1)}/255</td><td>${shiftText(a.mean_shift)}</td>` +
      `<td class="examples"></td>`;
    const ex = tr.querySelector(".examples");
    if (!a.examples.length) ex.textContent = "never chosen";
    for (const e of a.examples) {
      const img = document.createElement("img");
      img.src = `data:image/gif;base64,${e.gif}`;
      img.title = `${e.clip_id} from frame ${e.start}, ${e.transitions} transition(s)`;
      ex.append(img);
    }
    body.append(tr);
  }
  document.body.dataset.ready = "1";
}

load();
