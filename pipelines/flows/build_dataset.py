"""The ``build-dataset`` flow: a thin Prefect shell over :mod:`pipelines.build` and :mod:`pipelines.finalize`.

Tasks hold no logic. The per-video pass (download, probe, cut, features) runs as the child flow
``build-dataset-videos`` on the task runner the ``runner`` parameter names: threads (default) or
processes on this machine, or a Dask or Ray cluster (docs/SCALING.md). Resolve before it and
finalize after it (dedup, score, shards, manifest) run here, over the per-video records in dataset
order, so the result does not depend on which worker finished first.

Downloads carry the ``genie-download`` tag, so a tag concurrency limit on the server caps how many
run at once across every worker, and each takes a slot of the ``genie-download-rate`` global rate
limit (slots that decay: downloads started per second, across every worker) when the server has one
(infra/local_stack.sh creates both). Transient download failures are retried by Prefect with
backoff. A video whose pass fails for any reason becomes an audit row; it never stops the run.
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
from prefect.concurrency.sync import rate_limit
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm import tqdm

from filters import audit
from pipelines import atomic
from pipelines.build import (
    BuildConfig,
    Layout,
    RateLimitedError,
    Resolved,
    TransientDownloadError,
    cut_video_stage,
    exclusive,
    fetch_video,
    is_done,
    new_run_id,
    read_records,
    resolve_sources,
    signature_hash,
    transient_failure_rows,
)
from pipelines.clip import ClipConfig
from pipelines.download import DownloadConfig
from pipelines.finalize import BuildSummary, finalize
from pipelines.resolve import Candidate
from pipelines.store import is_url

DOWNLOAD_TAG = "genie-download"
DOWNLOAD_RATE_LIMIT = "genie-download-rate"
RUNNERS = ("threads", "processes", "dask", "ray")


def _retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry only what is worth retrying: a timeout, a dropped connection, a 5xx."""
    try:
        state.result()
    except RateLimitedError:
        return False  # the host is paused: asking again now would only prolong it
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
    def take_slot() -> None:
        # One slot of the server's download rate limit (a no-op when it has none): holds across
        # every worker and every machine, unlike a per-process limit. Local files are not limited.
        rate_limit(DOWNLOAD_RATE_LIMIT, occupy=1, strict=False)

    remote = not c.url.startswith("file:")
    return fetch_video(c, cfg, run_id, before_download=take_slot if remote else None)


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
    scratch: str | None = None,
) -> BuildConfig:
    return BuildConfig(
        out=out,
        scratch=None if not scratch else Path(scratch).expanduser().resolve(),
        sources=Path(sources).resolve(),
        dataset=dataset,
        shard_max_bytes=shard_max_mb * 1024 * 1024,
        threshold=threshold,
        model_path=None if not model else model if is_url(model) else Path(model).resolve(),
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


def make_task_runner(runner: str = "threads", workers: int = 4) -> TaskRunner[Any]:
    """The task runner for the per-video pass, by name.

    Args:
        runner: ``threads`` or ``processes`` (this machine); ``dask`` (a local Dask cluster of
            ``workers`` processes) or ``dask://HOST:PORT`` / ``tcp://HOST:PORT`` (an existing Dask
            scheduler); ``ray`` (a local Ray instance) or ``ray://HOST:PORT`` (a Ray cluster).
        workers: worker threads or processes on this machine (ignored for an existing cluster).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    kind, _, address = runner.partition("://")
    if kind == "threads" and not address:
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes" and not address:
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind in ("dask", "tcp"):
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ValueError(
                f"runner {runner!r} needs prefect-dask: pip install 'open-genie[scale]'"
            ) from exc
        if address:
            return cast(TaskRunner[Any], DaskTaskRunner(address=f"tcp://{address}"))
        # the cluster's scheduler, workers and dashboard listen on 127.0.0.1 only (a free port)
        kwargs: dict[str, Any] = {
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        }
        return cast(TaskRunner[Any], DaskTaskRunner(cluster_kwargs=kwargs))
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise ValueError(
                f"runner {runner!r} needs prefect-ray: pip install 'open-genie[ray]'"
            ) from exc
        if address:
            return cast(TaskRunner[Any], RayTaskRunner(address=runner))
        # Ray's own gRPC servers (gcs_server, raylet, workers) listened on every interface in
        # ray 2.60 here even with a 127.0.0.1 node address: use local Ray on a trusted host only
        # (docs/SCALING.md). The dask runner keeps everything on 127.0.0.1.
        init = {"num_cpus": workers, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        return cast(TaskRunner[Any], RayTaskRunner(init_kwargs=init))
    raise ValueError(
        f"unknown runner {runner!r}: threads, processes, dask, dask://HOST:PORT, ray, ray://HOST:PORT"
    )


@flow(name="build-dataset", log_prints=False)
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
    runner: str = "threads",
    workers: int = 4,
    scratch: str | None = None,
) -> dict[str, Any]:
    """Find, download, cut, score and shard platformer videos; see docs/ARCHITECTURE.md.

    Args:
        sources: a YAML or text file of source URLs.
        out: the data root (manifest.json, shards/, audit/, work/): a folder, or an fsspec URL
            such as ``s3://bucket/genie`` (credentials and endpoint from the environment).
        enable_file_urls: accept file:// URLs (the offline sample corpus uses them).
        threshold: override the clip classifier's threshold (no features are recomputed).
        model: a clip-filter model file (.skops, a path or URL, its .json card beside it); the
            shipped default when empty.
        use_model: False keeps every clip that passes probe, clip and dedup.
        shard_max_mb: shard size limit in MiB.
        dataset: the dataset name (shard file prefix).
        retry_failed: also retry videos whose earlier failure was recorded as permanent (blocked,
            unavailable, unknown, a file ffmpeg could not cut).
        runner: where the per-video pass runs: threads, processes, dask, dask://HOST:PORT, ray,
            ray://HOST:PORT (see :func:`make_task_runner`).
        workers: threads or processes for the per-video pass on this machine.
        scratch: a local folder for downloads and clips being cut when ``out`` is a URL
            (default ~/.cache/open-genie/scratch/...); each worker machine uses its own.
    """
    task_runner = make_task_runner(runner, workers)  # a bad name fails before any work
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
        scratch,
    )
    layout = Layout.of(cfg)
    with exclusive(layout):  # one build per data root at a time
        return _build(cfg, layout, task_runner)


def _build(cfg: BuildConfig, layout: Layout, task_runner: TaskRunner[Any]) -> dict[str, Any]:
    logger = get_run_logger()
    run_id = _run_id()
    local_root = layout.store.local_path("")
    removed = 0
    for folder in {local_root, layout.scratch} - {None}:
        if folder is not None and folder.exists():
            removed += atomic.clean_temporaries(folder)
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)

    resolved = resolve_task(cfg)
    recs = read_records(layout, [c.video_id for c in resolved.candidates])
    sig = signature_hash(cfg.clip)
    todo = [
        c
        for c in resolved.candidates
        if c.video_id not in recs
        or not is_done(layout, c.video_id, cfg.retry_failed, sig, recs[c.video_id])
    ]
    logger.info(
        "%d videos found, %d already done, %d to process",
        len(resolved.candidates),
        len(resolved.candidates) - len(todo),
        len(todo),
    )

    rows = video_pass.with_options(task_runner=task_runner)(todo, cfg, run_id) if todo else []

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


@flow(name="build-dataset-videos", log_prints=False)
def video_pass(todo: list[Candidate], cfg: BuildConfig, run_id: str) -> list[dict[str, Any]]:
    """The per-video pass of a build over ``todo``, fanned out on this flow's task runner.

    Each video's last act is its record in the data root, so the pass keeps nothing in memory
    that matters: it returns only audit rows for videos whose tasks failed.
    """
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

    return rows


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
