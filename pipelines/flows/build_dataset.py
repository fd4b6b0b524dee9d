"""The ``build-dataset`` flow: a thin Prefect shell over :mod:`pipelines.build` and :mod:`pipelines.finalize`.

Tasks hold no logic. Downloads carry the ``genie-download`` tag, so a tag concurrency limit on the
server (infra/local_stack.sh creates one) caps them across every worker; transient download failures
are retried by Prefect with backoff. A video whose pass fails for any reason becomes an audit row;
it never stops the run.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from filters import audit
from pipelines import atomic
from pipelines.build import (
    BuildConfig,
    Layout,
    Resolved,
    TransientDownloadError,
    cut_video_stage,
    exclusive,
    fetch_video,
    is_done,
    new_run_id,
    resolve_sources,
    signature_hash,
    transient_failure_rows,
)
from pipelines.clip import ClipConfig
from pipelines.download import DownloadConfig
from pipelines.finalize import BuildSummary, finalize
from pipelines.resolve import Candidate

DOWNLOAD_TAG = "genie-download"


def _retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry only what is worth retrying: a timeout, a dropped connection, a 5xx."""
    try:
        state.result()
    except TransientDownloadError:
        return True
    except Exception:
        return False
    return False


@task(name="resolve-sources", cache_policy=NO_CACHE)
def resolve_task(cfg: BuildConfig) -> Resolved:
    return resolve_sources(cfg)


@task(
    name="download",
    tags=[DOWNLOAD_TAG],
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
)
def download_task(c: Candidate, cfg: BuildConfig, run_id: str) -> dict[str, Any]:
    return fetch_video(c, cfg, run_id)


@task(name="probe-and-cut", cache_policy=NO_CACHE)
def cut_task(
    c: Candidate, fetched: dict[str, Any], cfg: BuildConfig, run_id: str
) -> dict[str, Any]:
    return cut_video_stage(c, fetched, cfg, run_id)


@task(name="finalize", cache_policy=NO_CACHE)
def finalize_task(
    cfg: BuildConfig, resolved: Resolved, run_id: str, rows: list[dict[str, Any]]
) -> BuildSummary:
    return finalize(cfg, resolved, run_id, rows)


def make_config(
    sources: str,
    out: str,
    enable_file_urls: bool = False,
    threshold: float | None = None,
    model: str | None = None,
    use_model: bool = True,
    shard_max_mb: int = 256,
    dataset: str = "genie",
    retry_failed: bool = False,
) -> BuildConfig:
    return BuildConfig(
        out=Path(out).resolve(),
        sources=Path(sources).resolve(),
        dataset=dataset,
        shard_max_bytes=shard_max_mb * 1024 * 1024,
        threshold=threshold,
        model_path=None if model is None else Path(model).resolve(),
        use_model=use_model,
        retry_failed=retry_failed,
        clip=ClipConfig(),
        download=DownloadConfig(enable_file_urls=enable_file_urls),
    )


def _run_id() -> str:
    try:
        ctx = get_run_context()
        return str(ctx.flow_run.id).replace("-", "")[:12]  # type: ignore[union-attr]
    except Exception:
        return new_run_id()


@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=False)  # type: ignore[arg-type]
def build_dataset(
    sources: str = "pipelines/data/sources.yaml",
    out: str = "data/dataset",
    enable_file_urls: bool = False,
    threshold: float | None = None,
    model: str | None = None,
    use_model: bool = True,
    shard_max_mb: int = 256,
    dataset: str = "genie",
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Find, download, cut, score and shard platformer videos; see docs/ARCHITECTURE.md.

    Args:
        sources: a YAML or text file of source URLs.
        out: the data root (manifest.json, shards/, audit/, work/).
        enable_file_urls: accept file:// URLs (the offline sample corpus uses them).
        threshold: override the clip classifier's threshold (no features are recomputed).
        model: a clip-filter model file (.skops); the shipped default when empty.
        use_model: False keeps every clip that passes probe, clip and dedup.
        shard_max_mb: shard size limit in MiB.
        dataset: the dataset name (shard file prefix).
        retry_failed: also retry videos whose earlier failure was recorded as permanent (blocked,
            unavailable, unknown, a file ffmpeg could not cut).
    """
    cfg = make_config(
        sources,
        out,
        enable_file_urls,
        threshold,
        model,
        use_model,
        shard_max_mb,
        dataset,
        retry_failed,
    )
    with exclusive(cfg.out):  # one build per data root at a time
        return _build(cfg)


def _build(cfg: BuildConfig) -> dict[str, Any]:
    logger = get_run_logger()
    run_id = _run_id()
    layout = Layout(cfg.out)
    removed = atomic.clean_temporaries(cfg.out) if cfg.out.exists() else 0
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)

    resolved = resolve_task(cfg)
    todo = [
        c
        for c in resolved.candidates
        if not is_done(layout, c.video_id, cfg.retry_failed, signature_hash(cfg.clip))
    ]
    logger.info(
        "%d videos found, %d already done, %d to process",
        len(resolved.candidates),
        len(resolved.candidates) - len(todo),
        len(todo),
    )

    progress = cast(
        UUID,
        create_progress_artifact(
            progress=0.0, key="build-dataset-progress", description="videos processed"
        ),
    )
    pending: list[tuple[Candidate, PrefectFuture[Any], PrefectFuture[Any]]] = []
    for c in todo:
        fetched = download_task.submit(c, cfg, run_id)
        pending.append((c, fetched, cut_task.submit(c, fetched, cfg, run_id)))  # type: ignore[call-overload]

    rows: list[dict[str, Any]] = []
    # A progress bar for people at a terminal (tqdm stays silent when stderr is not a TTY).
    bar = tqdm(total=len(pending), desc="videos", unit="video", disable=None)
    for i, (c, fetched, cut) in enumerate(pending, 1):
        cut.wait()
        bar.update(1)
        if not cut.state.is_completed():
            rows.extend(_failure_rows(c, fetched, cut, run_id))
        update_progress_artifact(artifact_id=progress, progress=100.0 * i / len(pending))
    bar.close()
    if not pending:
        update_progress_artifact(artifact_id=progress, progress=100.0)

    summary = finalize_task(cfg, resolved, run_id, rows)
    table = [
        {"step": s, "decision": d, "reason": r, "count": n}
        for s, by_d in summary.counts.items()
        for d, by_r in by_d.items()
        for r, n in by_r.items()
    ]
    create_table_artifact(
        key="build-dataset-summary",
        table=table,
        description=f"dataset {summary.version}: {summary.n_kept} clips in {summary.n_shards} shards",
    )
    logger.info(
        "dataset %s: kept %d of %d clips from %d videos",
        summary.version,
        summary.n_kept,
        summary.n_clips,
        summary.n_videos,
    )
    return asdict(summary)


def _failure_rows(
    c: Candidate, fetched: PrefectFuture[Any], cut: PrefectFuture[Any], run_id: str
) -> list[dict[str, Any]]:
    """Audit rows for a video whose download or cut task failed: recorded, never fatal."""
    for fut in (fetched, cut):
        if fut.state.is_failed() or fut.state.is_crashed():
            try:
                fut.state.result()
            except TransientDownloadError as exc:
                return transient_failure_rows(c, exc, run_id)
            except Exception as exc:
                step = "download" if fut is fetched else "clip"
                return [
                    audit.row(
                        run_id=run_id,
                        step=step,
                        video_id=c.video_id,
                        source_url=c.source_url,
                        decision="error",
                        reason="task_failed",
                        message=f"{type(exc).__name__}: {exc}",
                    )
                ]
    return [
        audit.row(
            run_id=run_id,
            step="clip",
            video_id=c.video_id,
            source_url=c.source_url,
            decision="error",
            reason="task_not_completed",
            message=str(cut.state),
        )
    ]
