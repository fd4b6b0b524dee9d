"""The audit log: one Parquet row per decision at any step, so any clip's fate can be explained.

Rows live in Parquet files under ``DIR/audit/``. Files are only ever added (each written under a
temporary name and renamed), never edited. A decision that is made again later (a rebuild with a new
threshold) is a new row; readers take each key's latest row as the current state, where the key is
``(step, video_id, clip_id, source_url)``.

Columns (DESIGN.md): run_id, step, video_id, clip_id, source_url, decision (keep/drop/error), reason,
message (the real error text), score, threshold, model_version, shard, ts (UTC), features (map of
feature name to value), extra (JSON text for step-specific details such as probe results).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

STEPS = ("resolve", "download", "probe", "clip", "dedup", "score", "shard")
DECISIONS = ("keep", "drop", "error")

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.string()),
        ("video_id", pa.string()),
        ("clip_id", pa.string()),
        ("source_url", pa.string()),
        ("decision", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("model_version", pa.string()),
        ("shard", pa.string()),
        (
            "ts",
            pa.string(),
        ),  # ISO 8601 UTC; a string keeps files byte-stable across pyarrow versions
        ("features", pa.map_(pa.string(), pa.float64())),
        ("extra", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
KEY = ("step", "video_id", "clip_id", "source_url")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row(
    *,
    run_id: str,
    step: str,
    decision: str,
    reason: str,
    video_id: str | None = None,
    clip_id: str | None = None,
    source_url: str | None = None,
    message: str = "",
    score: float | None = None,
    threshold: float | None = None,
    model_version: str | None = None,
    shard: str | None = None,
    features: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    ts: str | None = None,
) -> dict[str, Any]:
    """Build one audit row; raises ValueError for an unknown step or decision."""
    if step not in STEPS:
        raise ValueError(f"unknown audit step {step!r}; expected one of {STEPS}")
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; expected one of {DECISIONS}")
    return {
        "run_id": run_id,
        "step": step,
        "video_id": video_id,
        "clip_id": clip_id,
        "source_url": source_url,
        "decision": decision,
        "reason": reason,
        "message": message,
        "score": None if score is None else float(score),
        "threshold": None if threshold is None else float(threshold),
        "model_version": model_version,
        "shard": shard,
        "ts": ts or now(),
        "features": None if features is None else {k: float(v) for k, v in features.items()},
        "extra": None if extra is None else json.dumps(extra, sort_keys=True, default=str),
    }


def _to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for r in rows:
        for c in COLUMNS:
            v = r.get(c)
            if c == "features" and v is not None:
                v = sorted(v.items())
            cols[c].append(v)
    return pa.table(cols, schema=SCHEMA)


def is_remote(where: str | Path) -> bool:
    return "://" in str(where) and not str(where).startswith("file://")


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> str | Path | None:
    """Write rows to one Parquet file atomically; an existing file of that name is left as is.

    ``path`` is a local path or an fsspec URL (s3://...: one PUT, which is atomic by itself).
    Callers name files so that the same rows get the same name (a per-video file named after the
    video and its record), which makes re-writing after a crash idempotent.
    """
    if not rows:
        return None
    if is_remote(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(str(path))
        if not fs.exists(p):
            buf = pa.BufferOutputStream()
            pq.write_table(_to_table(rows), buf, compression="zstd")
            fs.pipe_file(p, buf.getvalue().to_pybytes())
        return str(path)
    path = Path(str(path).removeprefix("file://"))
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # filters/ does not import pipelines/, so the temporary-name-then-rename is done here.
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        pq.write_table(_to_table(rows), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_audit(data_dir: str | Path) -> pa.Table:
    """All audit rows under ``data_dir/audit`` (a path or an fsspec URL); an empty table with the
    schema when there are none."""
    if is_remote(data_dir):
        import fsspec

        fs, base = fsspec.core.url_to_fs(str(data_dir).rstrip("/") + "/audit")
        try:
            names = sorted(str(n) for n in fs.find(base) if str(n).endswith(".parquet"))
        except FileNotFoundError:
            names = []
        names = [n for n in names if not n.rsplit("/", 1)[-1].startswith(".tmp-")]
        tables = [pq.read_table(pa.BufferReader(fs.cat_file(n)), schema=SCHEMA) for n in names]
    else:
        root = Path(str(data_dir).removeprefix("file://"))
        files = sorted((root / "audit").rglob("*.parquet"))
        files = [f for f in files if not f.name.startswith(".tmp-")]
        tables = [pq.read_table(f, schema=SCHEMA) for f in files]
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each key's latest row (by ts, then file order), in first-seen key order."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        k = tuple(r[c] for c in KEY)
        if k not in best or r["ts"] >= best[k]["ts"]:
            best[k] = r
    return list(best.values())


def current_rows(data_dir: str | Path) -> list[dict[str, Any]]:
    """The audit log's current state: latest row per key, features as dicts."""
    rows = read_audit(data_dir).to_pylist()
    for r in rows:
        if r["features"] is not None:
            r["features"] = dict(r["features"])
    return latest(rows)


def summary(data_dir: str | Path) -> list[tuple[str, str, str, int]]:
    """Counts of current rows per (step, decision, reason), in pipeline step order."""
    counts: dict[tuple[str, str, str], int] = {}
    for r in current_rows(data_dir):
        k = (r["step"], r["decision"], r["reason"])
        counts[k] = counts.get(k, 0) + 1
    order = {s: i for i, s in enumerate(STEPS)}
    return sorted(
        ((s, d, reason, n) for (s, d, reason), n in counts.items()),
        key=lambda t: (order.get(t[0], 99), t[1], -t[3], t[2]),
    )


def explain(data_dir: str | Path, ident: str) -> list[dict[str, Any]]:
    """Every row (history included) for a video ID or clip ID, oldest first.

    For a video ID, the rows of its clips are included too.
    """
    rows = read_audit(data_dir).to_pylist()
    hits = [
        r
        for r in rows
        if r["clip_id"] == ident
        or r["video_id"] == ident
        or (r["clip_id"] is None and r["source_url"] == ident)
    ]
    for r in hits:
        if r["features"] is not None:
            r["features"] = dict(r["features"])
    order = {s: i for i, s in enumerate(STEPS)}
    return sorted(hits, key=lambda r: (r["ts"], order.get(r["step"], 99)))
