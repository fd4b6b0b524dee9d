"""Benchmark: build-dataset throughput on 1 and 2 local Dask workers, and the scaling ratio.

Also 2 Dask workers against 2 threads in one process and, optionally, against an S3 data root.

Every build is the real ``build-dataset`` flow (pipelines/flows/build_dataset.py) on a real Prefect
API server (``prefect_test_harness``: a temporary PREFECT_HOME and SQLite, the server in a
subprocess), over the sample corpus's own ``sources.yaml`` (file:// URLs, ``enable_file_urls``),
each into a fresh, empty output folder, so every build does all the work: resolve, the per-video
pass (copy, probe, cut, features: the child flow ``build-dataset-videos``, on the runner being
measured) and finalize (dedup, classifier, shards, manifest) in the flow process. Configurations:

    dask-1     runner="dask", workers=1 (a LocalCluster of 1 worker process, 1 thread)
    dask-2     runner="dask", workers=2
    threads-2  runner="threads", workers=2 (the one-process reference)
    s3-dask-2  runner="dask", workers=2, out=s3://... on a moto server on 127.0.0.1 (a thread of
               this process; only with --s3)

They run in rounds, in a rotated order each round, so that load drift on this shared machine hits
them all; medians over rounds. Each build is timed three ways: the wall time of the flow call
(``flow``), the child flow run's start and end read back from the Prefect API (``pass``: includes
starting and closing the Dask cluster), and the span from the first of its task runs starting to
the last ending (``tasks``: the per-video work alone). Throughput is videos (candidates given to the
pass) and clips (cut) per second of each. Every build must give the same dataset version (asserted).

CPU seconds are recorded too: of this process and its reaped children (Dask workers, ffmpeg), of
the Prefect server process, and of the whole machine (which shows how much other jobs took).

The sources: the "small" sample corpus if it is cached, else "tiny", each file listed ``--copies``
times under different names (symlinks: direct links are identified by URL), so that the per-video
pass has enough to do; ``--quick`` is the tiny corpus once, one round, no S3. The default run
(6 builds) takes ~10 minutes on the shared 2-core machine, ~14 with ``--s3``; ``--quick`` ~2.5.

Usage: python benchmarks/bench_scale.py [--corpus DIR] [--copies 2] [--rounds 2] [--s3]
       [--quick] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from common import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

CONFIGS = {  # name -> (runner, workers, object storage)
    "dask-1": ("dask", 1, False),
    "dask-2": ("dask", 2, False),
    "threads-2": ("threads", 2, False),
    "s3-dask-2": ("dask", 2, True),
}


def _prefect_env() -> None:
    """A throw-away PREFECT_HOME before Prefect is imported (as tests/conftest.py does)."""
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="genie-bench-prefect-")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Quiet consoles (Prefect's and Dask's, inherited by the workers); the API still gets INFO logs,
    # as in a real run.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


def _corpus(arg: Path | None, quick: bool) -> Path:
    """``arg``, else the cached "small" sample corpus, else "tiny" (made if missing)."""
    from pipelines.sample import make_sample_corpus

    if arg is not None:
        return arg
    cache = Path(
        os.environ.get("GENIE_SAMPLE_CACHE", Path.home() / ".cache/open-genie/sample-cache")
    )
    size = "small" if not quick and (cache / "small" / "corpus.json").exists() else "tiny"
    return make_sample_corpus(cache / size, size=size)


def _sources(corpus: Path, copies: int, tmp: Path) -> Path:
    """The corpus's sources.yaml, or with ``copies`` > 1 a sources file naming every media file
    ``copies`` times under different names (symlinks), so the per-video pass has more to do.

    Direct links are identified by a hash of their URL, so each copy is a video of its own; their
    clips are the same, and finalize's dedup keeps one of each.
    """
    if copies == 1:
        return corpus / "sources.yaml"
    import yaml

    folder = tmp / "copies"
    folder.mkdir()
    entries = []
    for k in range(copies):
        for e in yaml.safe_load((corpus / "sources.yaml").read_text())["sources"]:
            src = Path(e["url"].removeprefix("file://"))
            link = folder / f"{src.stem}-copy{k}{src.suffix}"
            link.symlink_to(src)
            entries.append({**e, "url": link.as_uri()})
    out = tmp / "sources.yaml"
    out.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
    return out


def _s3_server(stack: ExitStack) -> str:
    """A moto S3 server on 127.0.0.1 (a thread of this process); returns a fresh bucket's URL.

    The fake credentials and endpoint go into the environment, so Dask workers inherit them.
    """
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="genie-bench",
        AWS_SECRET_ACCESS_KEY="genie-bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("genie-bench")
    return "s3://genie-bench"


def _cpu(server: list[psutil.Process]) -> dict[str, float]:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    sys_t = psutil.cpu_times()
    return {
        "build": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        "server": sum(sum(p.cpu_times()[:4]) for p in server),
        "machine": sys_t.user + sys_t.system + sys_t.nice + getattr(sys_t, "softirq", 0.0),
    }


def _timings(flow_run_id: Any) -> dict[str, float]:
    """Seconds of the child flow run and of its task runs' span, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        parent = FlowRunFilterParentFlowRunId(any_=[flow_run_id])
        (child,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=parent))
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[child.id]))
        )
    assert child.start_time and child.end_time and tasks
    spans = [(t.start_time, t.end_time) for t in tasks if t.start_time and t.end_time]
    assert len(spans) == len(tasks), "a task run without start or end time"
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    return {
        "pass": (child.end_time - child.start_time).total_seconds(),
        "tasks": (last - first).total_seconds(),
        # the pass before its first task starts (Dask: starting the cluster) and after its last
        # ends (closing it); and the sum of task durations (busy worker-seconds)
        "before_tasks": (first - child.start_time).total_seconds(),
        "after_tasks": (child.end_time - last).total_seconds(),
        "task_busy": sum((b - a).total_seconds() for a, b in spans),
        "task_runs": len(tasks),
    }


def _build(
    sources: Path,
    out: str,
    scratch: str | None,
    runner: str,
    workers: int,
    server: list[psutil.Process],
) -> dict[str, Any]:
    from pipelines.flows.build_dataset import build_dataset

    c0, t0 = _cpu(server), time.perf_counter()
    state = build_dataset(
        sources=str(sources),
        out=out,
        enable_file_urls=True,
        runner=runner,
        workers=workers,
        scratch=scratch,
        return_state=True,
    )
    wall = time.perf_counter() - t0
    c1 = _cpu(server)
    summary = state.result()
    cpu = {k: c1[k] - c0[k] for k in c0}
    # CPU seconds of every other process on the machine (other jobs), and how busy the cores were
    cpu["others"] = cpu["machine"] - cpu["build"] - cpu["server"]
    return {
        "flow": wall,
        **_timings(state.state_details.flow_run_id),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "machine_busy": cpu["machine"] / ((os.cpu_count() or 1) * wall),
        "load_1min": round(os.getloadavg()[0], 2),
        "version": summary["version"],
        "videos": summary["n_videos"],
        "clips": summary["n_clips"],
        "kept": summary["n_kept"],
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run(corpus: Path, copies: int, rounds: int, names: list[str]) -> dict[str, Any]:
    from prefect.testing.utilities import prefect_test_harness

    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="genie-bench-") as tmp:
        sources = _sources(corpus, copies, Path(tmp))
        stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        server = psutil.Process().children(recursive=True)  # the Prefect API server
        bucket = _s3_server(stack) if any(CONFIGS[n][2] for n in names) else None
        for r in range(rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                runner, workers, s3 = CONFIGS[n]
                out = f"{bucket}/{n}-{r}" if s3 else f"{tmp}/{n}-{r}"
                scratch = f"{tmp}/scratch-{n}-{r}" if s3 else None  # local: under out
                res = _build(sources, out, scratch, runner, workers, server)
                keys = ("flow", "pass", "tasks", "task_busy", "machine_busy")
                print(f"round {r} {n}: " + json.dumps({k: round(res[k], 2) for k in keys}))
                runs[n].append(res)
    versions = {res["version"] for rs in runs.values() for res in rs}
    # the same sources and code must give the same data, whatever ran the pass and wherever it went
    assert len(versions) == 1, f"builds disagree: {versions}"
    return {"copies": copies, **summarise(corpus, runs)}


def _per_config(n: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of one configuration, its throughputs, and every run."""
    videos, clips, workers = rs[0]["videos"], rs[0]["clips"], CONFIGS[n][1]
    med = {k: _median(rs, k) for k in ("flow", "pass", "tasks", "before_tasks", "task_busy")}
    out: dict[str, Any] = {f"{k}_s": round(v, 2) for k, v in med.items()}
    for k in ("flow", "pass", "tasks"):
        out[f"{k}_videos_per_s"] = round(videos / med[k], 3)
        out[f"{k}_clips_per_s"] = round(clips / med[k], 3)
    # share of the task span the workers spent inside task runs (1.0: never idle)
    out["worker_busy"] = round(med["task_busy"] / (workers * med["tasks"]), 2)
    for k in ("build", "server", "others"):
        out[f"cpu_{k}_s"] = round(statistics.median(r["cpu_s"][k] for r in rs), 1)
    out["machine_busy"] = round(_median(rs, "machine_busy"), 2)
    out["runs"] = [
        {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rs
    ]
    return out


def summarise(corpus: Path, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    first = next(iter(runs.values()))[0]
    per = {n: _per_config(n, rs) for n, rs in runs.items()}

    def ratio(a: str, b: str) -> dict[str, float] | None:
        if a not in per or b not in per:
            return None
        # throughput(a) / throughput(b) = time(b) / time(a)
        return {k: round(per[b][f"{k}_s"] / per[a][f"{k}_s"], 3) for k in ("flow", "pass", "tasks")}

    return {
        "machine": machine(
            1,
            cores=str(os.cpu_count()),
            prefect=_version("prefect"),
            distributed=_version("distributed"),
        ),
        "corpus": str(corpus),
        "sources": first["videos"],
        "clips": first["clips"],
        "kept": first["kept"],
        "version": first["version"],
        "rounds": len(next(iter(runs.values()))),
        "configs": per,
        # the figures: 2.0 would be perfect scaling from 1 to 2 Dask workers on 2 free cores
        "scaling_dask2_over_dask1": ratio("dask-2", "dask-1"),
        "dask2_over_threads2": ratio("dask-2", "threads-2"),
        "s3_dask2_over_dask2": ratio("s3-dask-2", "dask-2"),
    }


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="a sample corpus folder (sources.yaml)")
    ap.add_argument("--quick", action="store_true", help="tiny corpus, 1 copy, 1 round, no S3")
    ap.add_argument("--copies", type=int, default=2, help="times each corpus file is listed")
    ap.add_argument("--rounds", type=int, default=2, help="builds of each configuration")
    ap.add_argument("--s3", action="store_true", help="also dask-2 into a moto S3 bucket")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    a = ap.parse_args()
    _prefect_env()
    names = ["dask-1", "dask-2", "threads-2"] + (["s3-dask-2"] if a.s3 and not a.quick else [])
    t0 = time.perf_counter()
    corpus = _corpus(a.corpus, a.quick)
    res = run(corpus, 1 if a.quick else a.copies, 1 if a.quick else a.rounds, names)
    res["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({k: v for k, v in res.items() if k != "configs"}, indent=2))
    write_results(a.out, res)


if __name__ == "__main__":
    main()
