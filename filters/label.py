"""``genie filter label``: a local page for rating clips fast, the ones the model is least sure of first.

The paper's team rated 10k videos in about 10 hours; the page is built for that pace: each clip is an
animated thumbnail with 1-5 buttons (keyboard: focus a card, press 1-5), and every rating is written
to the labels CSV at once (atomically), so closing the page loses nothing. Clips already in the CSV
are not shown again. The server binds to 127.0.0.1.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from filters.classifier import ClipClassifier
from filters.report import clip_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    clip_id: str
    video_id: str
    score: float | None  # P(good) from the current model, None without one
    path: Path


def read_existing(csv_path: Path) -> dict[str, tuple[str, str]]:
    """id -> (rating, note) already in the CSV (empty when the file does not exist)."""
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {r["id"]: (r["rating"], r.get("note") or "") for r in csv.DictReader(fh)}


def candidates(
    data_dir: Path, model: ClipClassifier | None, done: set[str], limit: int
) -> list[Candidate]:
    """Unlabelled clips of a build, those nearest the model's threshold (least sure) first."""
    out: list[tuple[float, Candidate]] = []
    feats: list[dict[str, float]] = []
    for rec_path in sorted((Path(data_dir) / "work" / "videos").glob("*.json")):
        rec = json.loads(rec_path.read_text())
        for cl in rec.get("clips") or []:
            if cl["clip_id"] in done or rec["video_id"] in done:
                continue
            cand = Candidate(
                cl["clip_id"],
                rec["video_id"],
                None,
                clip_path(data_dir, rec["video_id"], cl["clip_id"]),
            )
            out.append((0.0, cand))
            feats.append(cl["features"])
    if model is not None and out:
        scores = model.score(feats)
        out = [
            (abs(float(s) - model.threshold), Candidate(c.clip_id, c.video_id, float(s), c.path))
            for (_, c), s in zip(out, scores, strict=True)
        ]
    out.sort(key=lambda t: (t[0], t[1].clip_id))
    return [c for _, c in out[:limit]]


def gif_uri(path: Path, n: int = 16, scale: int = 2) -> str:
    """An animated GIF (``n`` frames spread over the clip, 4x faster than real time) as a data URI."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    ims = [
        Image.fromarray(frames[i]).resize(
            (frames[i].shape[1] * scale, frames[i].shape[0] * scale), Image.Resampling.NEAREST
        )
        for i in idx
    ]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=250, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()


def write_label(csv_path: Path, ident: str, rating: str, note: str, lock: threading.Lock) -> None:
    """Add or replace one row of the labels CSV (``id,rating,note``), atomically."""
    if rating not in {"1", "2", "3", "4", "5", "good", "bad"}:
        raise ValueError(f"rating must be 1-5, good or bad, got {rating!r}")
    with lock:
        rows = read_existing(csv_path)
        rows[ident] = (rating, note)
        tmp = csv_path.with_name(f".tmp-{csv_path.name}.{os.getpid()}")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "rating", "note"])
            for k in sorted(rows):
                w.writerow([k, *rows[k]])
        tmp.replace(csv_path)


def page(cands: Sequence[Candidate], threshold: float | None) -> str:
    cards = []
    for c in cands:
        score = "" if c.score is None else f" · score {c.score:.3f}"
        buttons = "".join(f'<button data-r="{r}">{r}</button>' for r in "12345")
        cards.append(
            f'<div class="card" tabindex="0" data-id="{html.escape(c.clip_id)}"><img src="{gif_uri(c.path)}" alt="">'
            f"<div><code>{html.escape(c.clip_id)}</code>{score}</div><div>{buttons}</div>"
            f'<input placeholder="note (optional)"><span class="ok"></span></div>'
        )
    thr = "" if threshold is None else f" (model threshold {threshold:.3f}; nearest first)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>label clips</title><style>
body{{font-family:sans-serif;margin:1.5em}} .card{{display:inline-block;margin:6px;padding:4px;border:2px solid #ddd;font-size:12px;vertical-align:top}}
.card:focus{{border-color:#4a7bd0;outline:none}} .card.done{{opacity:.45}} img{{display:block;image-rendering:pixelated}}
</style></head><body><h1>Rate clips: 5 = clean gameplay, 1 = not gameplay{thr}</h1>
<p>{len(cands)} clips. Click a card and press 1-5, or use the buttons. Each rating is saved at once.</p>
{"".join(cards)}
<script>
async function rate(card, r) {{
  const res = await fetch('/label', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},
    body: JSON.stringify({{id: card.dataset.id, rating: r, note: card.querySelector('input').value}})}});
  card.querySelector('.ok').textContent = res.ok ? ' saved ' + r : ' error';
  if (res.ok) {{ card.classList.add('done'); const next = card.nextElementSibling; if (next) next.focus(); }}
}}
document.querySelectorAll('.card').forEach(card => {{
  card.querySelectorAll('button').forEach(b => b.onclick = () => rate(card, b.dataset.r));
  card.addEventListener('keydown', e => {{ if (e.target.tagName !== 'INPUT' && '12345'.includes(e.key)) rate(card, e.key); }});
}});
</script></body></html>"""


def make_server(
    data_dir: Path,
    out_csv: Path,
    model: ClipClassifier | None,
    host: str = "127.0.0.1",
    port: int = 0,
    limit: int = 60,
) -> ThreadingHTTPServer:
    """A server for the labelling page; call ``serve_forever()`` (``server_address`` has the port)."""
    lock = threading.Lock()
    done = set(read_existing(out_csv))
    body = page(
        candidates(data_dir, model, done, limit), None if model is None else model.threshold
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

        def _send(self, code: int, data: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path in ("/", "/index.html"):
                self._send(200, body, "text/html; charset=utf-8")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/label":
                self._send(404, b"not found", "text/plain")
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
                msg = json.loads(self.rfile.read(min(n, 1 << 16)))
                write_label(
                    out_csv, str(msg["id"]), str(msg["rating"]), str(msg.get("note", "")), lock
                )
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, str(exc).encode(), "text/plain")
                return
            self._send(200, b'{"ok": true}', "application/json")

    return ThreadingHTTPServer((host, port), Handler)
