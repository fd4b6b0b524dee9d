"""build-dataset as Prefect-free stages: resolve, per-video pass, finalize.

- :func:`resolve_sources` reads the sources file and finds candidate videos (metadata only).
- :func:`fetch_video` and :func:`cut_video_stage` are the per-video pass (download, then probe + clip
  + features). Its last act is the per-video record ``work/videos/{video_id}.json``: a video with a
  record is done and is never downloaded or cut again. A transient download failure writes no record,
  so the next run tries again; a permanent one writes an error record.
- :func:`finalize` makes the run-level decisions over all videos in dataset order (dedup, score,
  keep/drop), writes shards, the manifest and the audit rows.

Every stage is safe to kill at any point: files are written under temporary names, the per-video
record is written after its clips, and the manifest after its shards.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from filters import audit
from filters.features import FEATURE_VERSION, compute_features
from pipelines import ids
from pipelines.clip import ClipConfig, ClipError, cut_video
from pipelines.download import DownloadConfig, DownloadResult, download
from pipelines.ffmpeg_io import FFmpegError
from pipelines.ledger import Ledger
from pipelines.probe import probe
from pipelines.resolve import Candidate, Rejection, resolve_entry
from pipelines.sources import SourceEntry, load_sources, sources_hash
from pipelines.store import Store, is_url, normalize_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; flows and the CLI build one from simple parameters."""

    out: str  # the data root, a path or an fsspec URL (s3://...): manifest.json, shards/, audit/, work/
    sources: Path  # YAML or text file of source URLs
    dataset: str = "genie"  # dataset name: the shard file prefix
    shard_max_bytes: int = 256 * 1024 * 1024  # shard size limit (WebDataset practice: 256 MB-1 GB)
    threshold: float | None = None  # override the classifier's threshold (no features recomputed)
    model_path: Path | str | None = (
        None  # a clip-filter model (.skops, a path or URL); None: the shipped default
    )
    use_model: bool = True  # False: score nothing, keep every clip that passes the other steps
    retry_failed: bool = False  # also retry videos whose earlier failure was permanent
    keep_downloads: bool = True  # keep source files under work/downloads after cutting
    clip: ClipConfig = field(default_factory=ClipConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    # Local scratch for a remote data root: downloads, the download ledger, clips being cut.
    # None: ``work/`` under a local data root; ~/.cache/open-genie/scratch/{hash} for a URL.
    scratch: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", normalize_root(self.out))
        ids.check_safe(self.dataset)
        if self.shard_max_bytes < 1024 * 1024:
            raise ValueError(f"shard_max_bytes must be >= 1 MiB, got {self.shard_max_bytes}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


class TransientDownloadError(RuntimeError):
    """A download failed in a way worth retrying (timeout, network, 5xx); no record is written."""

    def __init__(self, result: DownloadResult) -> None:
        super().__init__(f"{result.error_class}: {result.message}")
        self.result = result


class RateLimitedError(TransientDownloadError):
    """The host answered HTTP 429, or is paused after one: not retried in this run (hammering
    would not help), no record written, so a later run tries again once the pause is over."""


@dataclass(frozen=True)
class Layout:
    """Where things are (docs/ARCHITECTURE.md): keys in the data root's store, and local scratch.

    The store (a folder or an object store URL) holds what lasts: records, clips, decisions, the
    audit log, shards and the manifest. Scratch (a local folder) holds what a worker needs while it
    works: downloads, yt-dlp's archive, the download ledger and clips being cut. For a local data
    root, scratch is its ``work/`` folder, so clips are cut in place.
    """

    root: str
    scratch: Path

    @classmethod
    def of(cls, cfg: BuildConfig) -> Layout:
        return cls(cfg.out, scratch_dir(cfg))

    @cached_property
    def store(self) -> Store:
        return Store(self.root)

    # -- local scratch
    @property
    def downloads(self) -> Path:
        return self.scratch / "downloads"

    @property
    def archive(self) -> Path:
        return self.scratch / "ytdlp-archive.txt"

    @property
    def ledger(self) -> Path:
        return self.scratch / "ledger.sqlite"

    def clips(self, vid: str) -> Path:
        return self.scratch / "clips" / ids.check_safe(vid)

    # -- keys in the store
    @staticmethod
    def record(vid: str) -> str:
        return f"work/videos/{ids.check_safe(vid)}.json"

    @staticmethod
    def clip(vid: str, clip_id: str) -> str:
        return f"work/clips/{ids.check_safe(vid)}/{ids.check_safe(clip_id)}.mp4"


def scratch_dir(cfg: BuildConfig) -> Path:
    if cfg.scratch is not None:
        return cfg.scratch
    if not is_url(cfg.out):
        return Path(cfg.out) / "work"
    digest = hashlib.sha256(cfg.out.encode()).hexdigest()[:12]
    return (
        Path(os.environ.get("GENIE_SCRATCH", "~/.cache/open-genie/scratch")).expanduser() / digest
    )


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


# ClipConfig fields that only bound how long a step may take: they never change a clip.
_NOT_OUTPUT = {"timeout_s", "probe_timeout_s"}


def clip_signature(cfg: ClipConfig) -> dict[str, Any]:
    """What shapes a video's clips and features: recorded in each record and in the manifest."""
    d = {k: v for k, v in asdict(cfg).items() if k not in _NOT_OUTPUT}
    d["feature_version"] = FEATURE_VERSION
    return d


def signature_hash(cfg: ClipConfig) -> str:
    return hashlib.sha256(json.dumps(clip_signature(cfg), sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    """Hold a lock file for a whole build: two builds on one data root would delete each other's
    temporary files and race on the run-level state. A second build fails at once.

    The lock is ``.build.lock`` in a local data root, or in the local scratch folder for a URL. A
    lock file cannot guard an object store from many machines: there the deployment's concurrency
    limit of 1 (prefect.yaml) keeps builds one at a time.
    """
    root = Path(layout.root) if layout.store.is_local else layout.scratch
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another build is running on {root} (it holds {root / '.build.lock'})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# resolve


@dataclass
class Resolved:
    candidates: list[Candidate]
    rejections: list[Rejection]
    entries: list[SourceEntry]
    sources_hash: str


def resolve_sources(cfg: BuildConfig) -> Resolved:
    """Read the sources file and resolve every entry (metadata only, no downloads).

    A video found by two entries is kept once, at its first position. An entry that resolved to one
    video (a single video or direct link, not a listing) is not asked again on later runs: its
    answer is cached under ``work/resolved/``. Listings (playlists, channels, searches) are asked
    every run, since that is how new videos are found.
    """
    entries = load_sources(cfg.sources)
    cands: list[Candidate] = []
    rejections: list[Rejection] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        found, rejected = _resolve_cached(entry, i, cfg)
        rejections.extend(rejected)
        for c in found:
            if c.video_id not in seen:
                seen.add(c.video_id)
                cands.append(c)
    return Resolved(cands, rejections, entries, sources_hash(entries))


def _resolve_cached(
    entry: SourceEntry, i: int, cfg: BuildConfig
) -> tuple[list[Candidate], list[Rejection]]:
    key = hashlib.sha256(repr(entry).encode()).hexdigest()[:24]
    layout = Layout.of(cfg)
    cached = layout.store.read_json_or(f"work/resolved/{key}.json", None)
    if cached is not None:
        return [Candidate(**{**cached, "order": (i, 0)})], []
    found, rejected = resolve_entry(entry, i, cfg.download, ledger=Ledger(layout.ledger))
    if len(found) == 1 and not rejected and found[0].url == entry.url:
        layout.store.write_json(f"work/resolved/{key}.json", asdict(found[0]))
    return found, rejected


# ---------------------------------------------------------------------------------------------
# per-video pass


def read_record(layout: Layout, vid: str) -> dict[str, Any] | None:
    rec: dict[str, Any] | None = layout.store.read_json_or(layout.record(vid), None)
    return rec


def read_records(layout: Layout, vids: list[str]) -> dict[str, dict[str, Any]]:
    """The records of ``vids`` that exist, by video ID, fetched concurrently from the store."""
    got = layout.store.read_json_many([layout.record(v) for v in vids])
    return {rec["video_id"]: rec for rec in got.values()}


def is_done(
    layout: Layout,
    vid: str,
    retry_failed: bool = False,
    signature: str | None = None,
    rec: dict[str, Any] | None = None,
) -> bool:
    """A video is done when its record exists, was made with the same clip config and feature
    version (``signature``; a change redoes the cut), and is not a failure the caller retries.
    ``rec``: the record when the caller has already read it (see :func:`read_records`)."""
    rec = rec if rec is not None else read_record(layout, vid)
    if rec is None:
        return False
    if (
        signature is not None
        and rec.get("signature") not in (None, signature)
        and rec["status"] != "error"
    ):
        return False
    return not (retry_failed and rec["status"] == "error")


def _base(c: Candidate, run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "video_id": c.video_id, "source_url": c.source_url}


def _write_record(
    layout: Layout,
    c: Candidate,
    status: str,
    rows: list[dict[str, Any]],
    signature: str,
    **extra: Any,
) -> dict[str, Any]:
    rec = {
        "video_id": c.video_id,
        "url": c.url,
        "source_url": c.source_url,
        "title": c.title,  # data only: titles never become file names
        "order": list(c.order),
        "status": status,  # ok | dropped | error
        "signature": signature,  # clip config + feature version the clips were made with
        "rows": rows,
        **extra,
    }
    layout.store.write_json(layout.record(c.video_id), rec)
    return rec


def fetch_video(
    c: Candidate,
    cfg: BuildConfig,
    run_id: str,
    before_download: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Download one video (skipped when its record exists).

    ``before_download`` runs just before the request, once the video is known to need one (the
    flow takes a slot of the server's download rate limit there).

    Returns:
        ``{"done": True}`` when the video already has a record, else the download result as a dict.
    Raises:
        TransientDownloadError: on a transient failure; no record is written, so it is retried.
    """
    layout = Layout.of(cfg)
    if is_done(layout, c.video_id, cfg.retry_failed, signature_hash(cfg.clip)):
        return {"done": True}
    host = urlsplit(c.url).hostname or ""
    until = paused_until(layout, host)
    if until is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
        msg = f"{host} is paused until {when}: it answered HTTP 429 (Too Many Requests)"
        raise RateLimitedError(
            DownloadResult(c.video_id, False, None, "rate_limited", msg, 0, 0, None, None, None)
        )
    if before_download is not None:
        before_download()
    result = download(
        c, layout.downloads, cfg.download, layout.archive, ledger=Ledger(layout.ledger)
    )
    if result.ok:
        return {"done": False, **asdict(result)}
    if result.error_class == "rate_limited" and host:
        pause_host(layout, host, result.retry_after_s or cfg.download.rate_limited_pause_s)
        raise RateLimitedError(result)
    if result.transient:
        raise TransientDownloadError(result)
    row = audit.row(
        **_base(c, run_id),
        step="download",
        decision="error",
        reason=result.error_class or "unknown",
        message=result.message,
        extra={"attempts": result.attempts, "url": c.url},
    )
    _write_record(layout, c, "error", [row], signature_hash(cfg.clip), download=asdict(result))
    return {"done": True}


def cut_video_stage(
    c: Candidate,
    fetched: dict[str, Any],
    cfg: BuildConfig,
    run_id: str,
    features_fn: Callable[[np.ndarray], dict[str, float]] = compute_features,
) -> dict[str, Any]:
    """Probe and clip a downloaded video, then write its record (the video is then done)."""
    layout = Layout.of(cfg)
    if fetched.get("done"):
        rec = read_record(layout, c.video_id)
        assert rec is not None, f"record for {c.video_id} vanished"
        return rec
    path = Path(fetched["path"])
    rows = [
        audit.row(
            **_base(c, run_id),
            step="download",
            decision="keep",
            reason="ok",
            extra={
                k: fetched.get(k) for k in ("format_id", "width", "height", "bytes", "attempts")
            },
        )
    ]
    pr = probe(path, cfg.clip)
    pinfo = asdict(pr)
    if not pr.ok:
        rows.append(
            audit.row(
                **_base(c, run_id),
                step="probe",
                decision="drop",
                reason=pr.reason or "unknown",
                message=pr.message,
                extra=pinfo,
            )
        )
        return _finish(layout, c, cfg, "dropped", rows, path, probe=pinfo)
    rows.append(
        audit.row(**_base(c, run_id), step="probe", decision="keep", reason="ok", extra=pinfo)
    )
    try:
        report = cut_video(
            path, c.video_id, layout.clips(c.video_id), cfg.clip, features_fn, aspect=pr.aspect
        )
    except (ClipError, FFmpegError, ValueError) as exc:
        if isinstance(exc, FFmpegError) and exc.timed_out:
            raise  # a busy machine, not a bad file: no record, so the next run tries again
        # A file ffmpeg cannot cut is a property of the file: recorded, and the batch goes on.
        # (OSError such as a full disk propagates: the flow records it and the next run retries.)
        log.warning("clip failed for %s: %s", c.video_id, exc)
        reason = "ffmpeg_failed" if isinstance(exc, FFmpegError) else "clip_failed"
        rows.append(
            audit.row(
                **_base(c, run_id), step="clip", decision="error", reason=reason, message=str(exc)
            )
        )
        return _finish(layout, c, cfg, "error", rows, path, probe=pinfo)
    clips = _publish_clips(layout, c.video_id, [asdict(cl) for cl in report.clips])
    dropped = [{"start_s": s, "reason": r} for s, r in report.dropped]
    rows.append(
        audit.row(
            **_base(c, run_id),
            step="clip",
            decision="keep" if clips else "drop",
            reason="ok" if clips else "no_usable_span",
            extra={
                "n_clips": len(clips),
                "cuts_s": report.cuts_s,
                "dropped_spans": dropped,
                "n_frames": report.n_frames,
            },
        )
    )
    for cl in report.clips:
        rows.append(
            audit.row(
                **_base(c, run_id),
                clip_id=cl.clip_id,
                step="clip",
                decision="keep",
                reason="cut",
                features=cl.features,
                extra={"start_s": cl.start_s, "sha256": cl.sha256},
            )
        )
    status = "ok" if clips else "dropped"
    return _finish(
        layout, c, cfg, status, rows, path, probe=pinfo, clips=clips, dropped_spans=dropped
    )


def _publish_clips(layout: Layout, vid: str, clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put a video's cut clips in the store (a no-op when scratch is the local data root) and
    record each clip's key, relative to the data root, as its path. Runs before the record is
    written, so a record never names a clip the store does not hold."""
    out = []
    for cl in clips:
        key = layout.clip(vid, cl["clip_id"])
        layout.store.put_file(cl["path"], key)
        out.append({**cl, "path": key})
    if not layout.store.is_local:
        for cl in clips:
            Path(cl["path"]).unlink(missing_ok=True)
    return out


def _finish(
    layout: Layout,
    c: Candidate,
    cfg: BuildConfig,
    status: str,
    rows: list[dict[str, Any]],
    path: Path,
    **extra: Any,
) -> dict[str, Any]:
    rec = _write_record(layout, c, status, rows, signature_hash(cfg.clip), **extra)
    if not cfg.keep_downloads and path.exists():
        path.unlink()
    return rec


def _pause_key(host: str) -> str:
    # a hash, not the host name, becomes the file name
    return f"work/paused/{hashlib.sha256(host.encode()).hexdigest()[:16]}.json"


def pause_host(layout: Layout, host: str, seconds: float) -> None:
    """Pause downloads from ``host`` for ``seconds``, for every worker and run that shares the
    data root (the pause is a small file in it)."""
    until = time.time() + max(0.0, seconds)
    layout.store.write_json(_pause_key(host), {"host": host, "until": until})
    log.warning("%s answered HTTP 429: downloads from it paused for %.0f s", host, seconds)


def paused_until(layout: Layout, host: str) -> float | None:
    """When ``host``'s pause ends (unix seconds), or None when it is not paused."""
    if not host:
        return None
    rec = layout.store.read_json_or(_pause_key(host), None)
    if rec is None or rec.get("host") != host or float(rec["until"]) <= time.time():
        return None
    return float(rec["until"])


def transient_failure_rows(c: Candidate, error: BaseException, run_id: str) -> list[dict[str, Any]]:
    """Audit rows for a video whose download failed transiently on every try (retried next run)."""
    result = getattr(error, "result", None)
    reason = getattr(result, "error_class", None) or "unknown"
    return [
        audit.row(
            **_base(c, run_id),
            step="download",
            decision="error",
            reason=reason,
            message=str(error),
            extra={"transient": True},
        )
    ]
