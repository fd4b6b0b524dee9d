"""``genie audit report``: one self-contained HTML page that shows why clips were kept or dropped.

The page has the counts per step, decision and reason; a histogram of clip scores with the threshold;
and contact sheets (four frames across the clip) of kept and dropped clips, those nearest the
threshold first, since those are the decisions worth a person's look. Images are embedded as data
URIs, so the page can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from filters import audit

log = logging.getLogger(__name__)


def clip_path(data_dir: Path, video_id: str, clip_id: str) -> Path:
    """Where build-dataset keeps every cut clip (docs/ARCHITECTURE.md, data root layout)."""
    return Path(data_dir) / "work" / "clips" / video_id / f"{clip_id}.mp4"


def contact_sheet(path: Path, n: int = 4) -> np.ndarray | None:
    """``n`` frames spread over the clip side by side, uint8 (H, n*W, 3); None if it cannot be read."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (OSError, av.FFmpegError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    if not frames:
        return None
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return np.concatenate([frames[i] for i in idx], axis=1)


def _png_uri(img: np.ndarray, scale: int = 1) -> str:
    from PIL import Image

    im = Image.fromarray(img)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histogram_uri(scores: Sequence[float], threshold: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.hist(scores, bins=[i / 40 for i in range(41)], color="#4a7bd0")
    if threshold is not None:
        ax.axvline(threshold, color="#d04a4a", linestyle="--", label=f"threshold {threshold:.3f}")
        ax.legend(loc="upper center")
    ax.set_xlabel("P(good gameplay)")
    ax.set_ylabel("clips")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _sheet(data_dir: str | Path, video_id: str, clip_id: str) -> np.ndarray | None:
    """The clip's contact sheet; a clip in object storage is fetched to a temporary file first."""
    if not audit.is_remote(data_dir):
        return contact_sheet(
            clip_path(Path(str(data_dir).removeprefix("file://")), video_id, clip_id)
        )
    import tempfile

    import fsspec

    url = f"{str(data_dir).rstrip('/')}/work/clips/{video_id}/{clip_id}.mp4"
    with tempfile.TemporaryDirectory(prefix="genie-report-") as tmp:
        local = Path(tmp) / "clip.mp4"
        try:
            with fsspec.open(url, "rb") as src:
                local.write_bytes(src.read())
        except FileNotFoundError:
            return None
        return contact_sheet(local)


def _clip_cards(data_dir: str | Path, rows: Sequence[Mapping[str, Any]], limit: int) -> str:
    cards = []
    for r in rows[:limit]:
        sheet = _sheet(data_dir, r["video_id"], r["clip_id"])
        img = (
            f'<img src="{_png_uri(sheet)}" alt="{html.escape(r["clip_id"])}">'
            if sheet is not None
            else "<i>clip file missing</i>"
        )
        score = "" if r.get("score") is None else f"score {r['score']:.3f} · "
        cards.append(
            f'<div class="card">{img}<div><code>{html.escape(r["clip_id"])}</code><br>'
            f"{score}{html.escape(r['step'])}: {html.escape(r['reason'])}</div></div>"
        )
    return "\n".join(cards) or "<p><i>none</i></p>"


def write_report(data_dir: str | Path, out: Path, per_section: int = 24) -> Path:
    """Write the HTML report for the build under ``data_dir`` (a folder or an fsspec URL) to
    ``out``; returns ``out``."""
    rows = audit.current_rows(data_dir)
    counts = audit.summary(data_dir)
    final = [r for r in rows if r["clip_id"] and r["step"] in ("score", "dedup")]
    thresholds = [r["threshold"] for r in final if r.get("threshold") is not None]
    threshold = thresholds[-1] if thresholds else None

    def dist(r: Mapping[str, Any]) -> float:
        return (
            abs(r["score"] - threshold)
            if r.get("score") is not None and threshold is not None
            else 1.0
        )

    kept = sorted((r for r in final if r["decision"] == "keep"), key=dist)
    dropped = sorted((r for r in final if r["decision"] != "keep"), key=dist)
    scores = [r["score"] for r in final if r.get("score") is not None]
    hist = (
        f'<img src="{_histogram_uri(scores, threshold)}" alt="score histogram">'
        if scores
        else "<p><i>no scores: the build ran without a classifier</i></p>"
    )
    table = "\n".join(
        f"<tr><td>{s}</td><td>{d}</td><td>{html.escape(r)}</td><td>{n}</td></tr>"
        for s, d, r, n in counts
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>build-dataset audit</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}} .card{{display:inline-block;margin:6px;font-size:12px;vertical-align:top}}
.card img{{display:block;image-rendering:pixelated}}</style></head><body>
<h1>build-dataset audit: {html.escape(str(data_dir))}</h1>
<h2>Decisions</h2><table><tr><th>step</th><th>decision</th><th>reason</th><th>count</th></tr>{table}</table>
<h2>Scores</h2>{hist}
<h2>Kept clips ({len(kept)}), nearest the threshold first</h2>{_clip_cards(data_dir, kept, per_section)}
<h2>Dropped clips ({len(dropped)}), nearest the threshold first</h2>{_clip_cards(data_dir, dropped, per_section)}
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
