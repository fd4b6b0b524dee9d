"""Run-level decisions of build-dataset: dedup, score, keep/drop, shards, manifest, audit rows.

Runs after the per-video pass over the records of every video the sources name, in dataset order
(source entry, then position in the entry, then clip start). It is deterministic given the records,
the model and the threshold, so a rerun (or a run resumed after a kill) gives the same shards and
the same manifest. Audit rows are written for decisions that changed since the last run (the state
is kept in ``work/decisions.json``), so rows are not repeated by runs that decide nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from filters import audit
from filters.classifier import ClipClassifier, load_default
from filters.features import FEATURE_VERSION
from pipelines.build import BuildConfig, Layout, Resolved, clip_signature, new_run_id, read_records
from pipelines.clip import is_near_duplicate
from pipelines.manifest import build_manifest, dataset_version, read_manifest, write_manifest
from pipelines.shard import ShardSample, remove_stale_shards, shard_plan_digests, write_shards
from pipelines.store import Store, is_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSummary:
    run_id: str
    version: str
    n_videos: int
    n_clips: int
    n_kept: int
    n_shards: int
    manifest: str
    counts: dict[str, dict[str, dict[str, int]]]


def load_model(cfg: BuildConfig) -> ClipClassifier | None:
    if not cfg.use_model:
        return None
    if cfg.model_path is not None:
        src = str(cfg.model_path)
        if is_url(src) and not src.startswith("file://"):
            return _load_remote_model(src)
        return ClipClassifier.load(src.removeprefix("file://"))
    return load_default()


def _load_remote_model(url: str) -> ClipClassifier:
    """A model (NAME.skops and its NAME.json card) from object storage, checked as a local one."""
    parent, name = url.rsplit("/", 1)
    store = Store.at(parent)
    with tempfile.TemporaryDirectory(prefix="genie-model-") as tmp:
        for n in (name, Path(name).with_suffix(".json").name):
            try:
                (Path(tmp) / n).write_bytes(store.read_bytes(n))
            except FileNotFoundError:
                raise ValueError(f"{parent}/{n} not found") from None
        return ClipClassifier.load(Path(tmp) / name)


def _key(r: Mapping[str, Any]) -> str:
    return "|".join(str(r.get(c)) for c in audit.KEY)


def _sig(r: Mapping[str, Any]) -> str:
    parts = [
        r["decision"],
        r["reason"],
        r.get("score"),
        r.get("threshold"),
        r.get("model_version"),
        r.get("shard"),
    ]
    return json.dumps(parts, default=str)


def _dataset_records(layout: Layout, resolved: Resolved) -> list[dict[str, Any]]:
    """Records of the videos in the dataset, in order.

    A source entry that failed to resolve this time (a network error on a playlist) keeps the videos
    it had before, so one bad listing does not empty the dataset.
    """
    recs: list[dict[str, Any]] = []
    seen: set[str] = set()
    found = read_records(layout, [c.video_id for c in resolved.candidates])
    for c in resolved.candidates:
        rec = found.get(c.video_id)
        if rec is not None:
            rec["order"] = list(c.order)
            recs.append(rec)
            seen.add(c.video_id)
    failed = {
        r.source_url for r in resolved.rejections if r.video_id is None and r.decision == "error"
    }
    if failed:
        for key in layout.store.keys("work/videos", "*.json"):
            rec = layout.store.read_json(key)
            if rec["source_url"] in failed and rec["video_id"] not in seen:
                recs.append(rec)
                seen.add(rec["video_id"])
    recs.sort(key=lambda r: tuple(r["order"]))
    return recs


def _write_video_audit(layout: Layout, rec: Mapping[str, Any]) -> None:
    """The record's rows as a Parquet file named after the record's content (idempotent)."""
    rows = rec.get("rows") or []
    if not rows:
        return
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:12]
    audit.write_rows(
        layout.store.url(f"audit/videos/{rec['video_id']}-{digest}.parquet"), list(rows)
    )


class NearIndex:
    """Signatures within ``max_bits`` bits of a query, without comparing against every one.

    Pigeonhole: cut the signature's bits into ``max_bits + 1`` bands; two signatures that differ
    in at most ``max_bits`` bits agree on at least one whole band. So only signatures sharing a band
    value with the query are compared exactly, and the answer is the same as comparing all of
    them (``is_near_duplicate``), at about O(1) per query instead of O(n).
    """

    def __init__(self, max_bits: int) -> None:
        self.max_bits = max_bits
        self._bands: list[dict[int, list[int]]] = []
        self._items: list[tuple[str, str]] = []  # (id, signature) in insertion order
        self._nbits = 0

    def _cut(self, sig: str) -> list[int]:
        nbits = len(sig) * 4
        if not self._items:
            self._nbits = nbits
            self._bands = [{} for _ in range(min(self.max_bits + 1, nbits))]
        elif nbits != self._nbits:
            raise ValueError(f"signature lengths differ: {nbits} != {self._nbits} bits")
        v, n, k = int(sig, 16), len(self._bands), self._nbits
        edges = [k * i // n for i in range(n + 1)]
        return [
            (v >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)
        ]

    def first_near(self, sig: str) -> str | None:
        """The earliest added id whose signature is within ``max_bits`` of ``sig``, or None."""
        if not self._items:
            return None
        if self.max_bits >= self._nbits:  # every signature is near every other
            cands: set[int] | range = range(len(self._items))
        else:
            cands = {
                i
                for b, part in zip(self._bands, self._cut(sig), strict=True)
                for i in b.get(part, ())
            }
        for i in sorted(cands):
            cid, other = self._items[i]
            if is_near_duplicate(other, sig, self.max_bits):
                return cid
        return None

    def add(self, cid: str, sig: str) -> None:
        parts = self._cut(sig)
        i = len(self._items)
        self._items.append((cid, sig))
        for b, part in zip(self._bands, parts, strict=True):
            b.setdefault(part, []).append(i)


def _dedup(clips: Sequence[Mapping[str, Any]], max_bits: int) -> dict[str, str]:
    """clip_id -> the earlier clip it duplicates (exact content hash, then near-duplicate signature)."""
    dup_of: dict[str, str] = {}
    by_sha: dict[str, str] = {}
    kept = NearIndex(max_bits)  # signatures of clips that are not duplicates
    for cl in clips:
        cid = cl["clip_id"]
        # the decoded frames' hash finds exact copies however they were encoded; the mp4 hash
        # finds byte-identical files
        keys = [k for k in (cl.get("content_sha256"), cl["sha256"]) if k]
        hit = next((by_sha[k] for k in keys if k in by_sha), None)
        if hit is not None:
            dup_of[cid] = hit
            continue
        near = kept.first_near(cl["signature"])
        if near is not None:
            dup_of[cid] = near
            continue
        for k in keys:
            by_sha[k] = cid
        kept.add(cid, cl["signature"])
    return dup_of


def _scores(
    layout: Layout, model: ClipClassifier, clips: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """Scores per clip, cached per model version: a clip is scored once per model."""
    key = f"work/scores/{model.version}.json"
    cache: dict[str, float] = layout.store.read_json_or(key, {})
    todo = [cl for cl in clips if cl["clip_id"] not in cache]
    if todo:
        probs = model.score([cl["features"] for cl in todo])
        cache.update(
            {cl["clip_id"]: float(p) for cl, p in zip(todo, np.asarray(probs), strict=True)}
        )
        layout.store.write_json(key, cache)
    return {cl["clip_id"]: cache[cl["clip_id"]] for cl in clips}


def _sample_meta(
    rec: Mapping[str, Any], cl: Mapping[str, Any], cfg: BuildConfig, score: float | None
) -> dict[str, Any]:
    return {
        "clip_id": cl["clip_id"],
        "video_id": rec["video_id"],
        "source_url": rec["source_url"],
        "url": rec["url"],
        "start_s": cl["start_s"],
        "fps": cfg.clip.fps,
        "width": cfg.clip.width,
        "height": cfg.clip.height,
        "n_frames": cl["n_frames"],
        "features": cl["features"],
        "score": score,
    }


def _clip_row(
    run_id: str, rec: Mapping[str, Any], cl: Mapping[str, Any], **kw: Any
) -> dict[str, Any]:
    """An audit row about one clip of a record (the IDs and source filled in)."""
    return audit.row(
        run_id=run_id,
        video_id=rec["video_id"],
        clip_id=cl["clip_id"],
        source_url=rec["source_url"],
        **kw,
    )


def finalize(
    cfg: BuildConfig,
    resolved: Resolved,
    run_id: str | None = None,
    extra_rows: Sequence[Mapping[str, Any]] = (),
) -> BuildSummary:
    """Decide, shard and write the manifest and audit rows for the current records.

    Args:
        cfg: the build config.
        resolved: this run's resolve result (the dataset order and resolve decisions).
        run_id: this run's ID (a new one when None).
        extra_rows: audit rows made elsewhere in the run (transient download failures).
    """
    run_id = run_id or new_run_id()
    layout = Layout.of(cfg)
    store = layout.store
    store.refresh()  # the per-video pass wrote from other processes (or machines)
    rows: list[dict[str, Any]] = [dict(r) for r in extra_rows]
    for rj in resolved.rejections:
        rows.append(
            audit.row(
                run_id=run_id,
                step="resolve",
                video_id=rj.video_id,
                source_url=rj.source_url,
                decision=rj.decision,
                reason=rj.reason,
                message=rj.message,
                extra={"url": rj.url},
            )
        )
    for c in resolved.candidates:
        rows.append(
            audit.row(
                run_id=run_id,
                step="resolve",
                video_id=c.video_id,
                source_url=c.source_url,
                decision="keep",
                reason="ok",
                extra={"url": c.url, "title": c.title, "duration_s": c.duration_s},
            )
        )

    recs = _dataset_records(layout, resolved)
    for rec in recs:
        _write_video_audit(layout, rec)
    clips = [(rec, cl) for rec in recs if rec["status"] == "ok" for cl in rec.get("clips", [])]

    dup_of = _dedup([cl for _, cl in clips], cfg.clip.dedup_max_bits)
    for rec, cl in clips:
        if cl["clip_id"] in dup_of:
            rows.append(
                _clip_row(
                    run_id,
                    rec,
                    cl,
                    step="dedup",
                    decision="drop",
                    reason="duplicate",
                    message=f"duplicate of {dup_of[cl['clip_id']]}",
                    features=cl["features"],
                )
            )
    unique = [(rec, cl) for rec, cl in clips if cl["clip_id"] not in dup_of]

    model = load_model(cfg)
    threshold = (
        None if model is None else (cfg.threshold if cfg.threshold is not None else model.threshold)
    )
    scores = (
        _scores(layout, model, [cl for _, cl in unique]) if model is not None and unique else {}
    )
    samples: list[ShardSample] = []
    for rec, cl in unique:
        s = scores.get(cl["clip_id"])
        keep = model is None or (threshold is not None and s is not None and s >= threshold)
        reason = "no_model" if model is None else ("above_threshold" if keep else "below_threshold")
        rows.append(
            _clip_row(
                run_id,
                rec,
                cl,
                step="score",
                decision="keep" if keep else "drop",
                reason=reason,
                score=s,
                threshold=threshold,
                model_version=None if model is None else model.version,
                features=cl["features"],
            )
        )
        if keep:
            key = layout.clip(rec["video_id"], cl["clip_id"])
            samples.append(
                ShardSample(cl["clip_id"], key, _sample_meta(rec, cl, cfg, s), store.size(key))
            )

    prev = read_manifest(store)
    prev_shards = {s["path"]: s for s in prev["shards"]} if prev else {}
    verified = store.read_json_or(_VERIFIED, {})
    shards = write_shards(
        store, cfg.dataset, samples, cfg.shard_max_bytes, prev_shards, verified=verified
    )
    store.write_json(_VERIFIED, {s.path: verified[s.path] for s in shards if s.path in verified})
    plans = shard_plan_digests(samples, cfg.shard_max_bytes)
    shard_of = _shard_index(shards, samples)
    for rec, cl in unique:
        if cl["clip_id"] in shard_of:
            rows.append(
                _clip_row(
                    run_id,
                    rec,
                    cl,
                    step="shard",
                    decision="keep",
                    reason="in_shard",
                    shard=shard_of[cl["clip_id"]],
                    score=scores.get(cl["clip_id"]),
                    threshold=threshold,
                )
            )

    entries = {e.url for e in resolved.entries}
    videos = {c.video_id for c in resolved.candidates} | {r["video_id"] for r in recs}
    videos |= {rj.video_id for rj in resolved.rejections if rj.video_id}
    _write_changed_rows(layout, run_id, rows, videos, entries)
    counts = _counts(layout, videos, entries)
    mv = None if model is None else model.version
    sha_of = {cl["clip_id"]: cl["sha256"] for _, cl in clips}
    clip_cfg = clip_signature(cfg.clip)
    version = dataset_version(
        dataset=cfg.dataset,
        shard_max_bytes=cfg.shard_max_bytes,
        clip_config=clip_cfg,
        feature_version=FEATURE_VERSION,
        model_version=mv,
        threshold=threshold,
        sources_hash=resolved.sources_hash,
        clips=[(s.clip_id, sha_of[s.clip_id]) for s in samples],
    )
    manifest = build_manifest(
        dataset=cfg.dataset,
        version=version,
        shards=shards,
        plans=plans,
        clip_config=clip_cfg,
        feature_version=FEATURE_VERSION,
        model_version=mv,
        threshold=threshold,
        sources_hash=resolved.sources_hash,
        counts=counts,
        tools=_tools(),
    )
    path = write_manifest(store, manifest)
    remove_stale_shards(store, cfg.dataset, {s.path for s in shards})
    log.info(
        "dataset %s: %d clips kept of %d in %d shards",
        version,
        len(samples),
        len(clips),
        len(shards),
    )
    return BuildSummary(
        run_id, version, len(recs), len(clips), len(samples), len(shards), str(path), counts
    )


def _tools() -> dict[str, str]:
    import yt_dlp.version

    from pipelines.ffmpeg_io import ffmpeg_version

    return {"ffmpeg": ffmpeg_version(), "yt_dlp": yt_dlp.version.__version__}


def _shard_index(shards: Sequence[Any], samples: Sequence[ShardSample]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    for sh in shards:
        for smp in samples[i : i + sh.n_samples]:
            out[smp.clip_id] = sh.path
        i += sh.n_samples
    return out


_VERIFIED = "work/shards-verified.json"  # shard -> [sha256, store checksum] (shard.write_shards)
_DECISIONS = "work/decisions.json"  # each audit key's last decision (see _write_changed_rows)

# Run-level steps: decided afresh by every run over the whole dataset.
_RUN_STEPS = ("resolve", "dedup", "score", "shard")


def _leave_rows(
    state: Mapping[str, str], now: set[str], run_id: str, videos: set[str], entries: set[str]
) -> list[dict[str, Any]]:
    """Rows for run-level decisions made before but not by this run: something left the dataset.

    A clip whose last row says it is in a shard and that is not in one now (a higher threshold, a
    new duplicate, its source removed) gets a row saying so; nothing leaves without a row.
    """
    out: list[dict[str, Any]] = []
    for key in state:
        if key in now:
            continue
        step, vid_s, cid_s, src_s = key.split("|", 3)
        if step not in _RUN_STEPS:
            continue
        vid, cid, src = (None if x == "None" else x for x in (vid_s, cid_s, src_s))
        gone = (vid not in videos) if vid is not None else (src not in entries)
        if step == "resolve":
            decision, reason = ("drop", "source_removed") if gone else ("keep", "ok")
        elif step == "dedup":
            decision, reason = ("drop", "source_removed") if gone else ("keep", "unique")
        elif step == "score":
            decision, reason = ("drop", "source_removed" if gone else "not_scored")
        else:
            decision, reason = ("drop", "source_removed" if gone else "left_dataset")
        out.append(
            audit.row(
                run_id=run_id,
                step=step,
                video_id=vid,
                clip_id=cid,
                source_url=src,
                decision=decision,
                reason=reason,
            )
        )
    return out


def _write_changed_rows(
    layout: Layout,
    run_id: str,
    rows: Sequence[Mapping[str, Any]],
    videos: set[str],
    entries: set[str],
) -> None:
    """Append this run's rows whose decision differs from the last recorded one, then the state.

    The file is named after its rows, so writing it again after a kill is a no-op.
    """
    state: dict[str, str] = layout.store.read_json_or(_DECISIONS, {})
    all_rows = [dict(r) for r in rows]
    all_rows += _leave_rows(state, {_key(r) for r in all_rows}, run_id, videos, entries)
    changed = [r for r in all_rows if state.get(_key(r)) != _sig(r)]
    if changed:
        digest = hashlib.sha256(
            json.dumps([_key(r) + _sig(r) for r in changed]).encode()
        ).hexdigest()[:12]
        audit.write_rows(layout.store.url(f"audit/runs/{run_id}-{digest}.parquet"), changed)
    state.update({_key(r): _sig(r) for r in all_rows})
    layout.store.write_json(_DECISIONS, state)


def _counts(
    layout: Layout, videos: set[str], entries: set[str]
) -> dict[str, dict[str, dict[str, int]]]:
    """Counts of the current decisions about the videos and entries the sources name now."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in audit.current_rows(layout.store.url()):
        if (r["video_id"] in videos) if r["video_id"] is not None else (r["source_url"] in entries):
            by_reason = out.setdefault(r["step"], {}).setdefault(r["decision"], {})
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    order = {s: i for i, s in enumerate(audit.STEPS)}
    return {k: out[k] for k in sorted(out, key=lambda k: order.get(k, 99))}
