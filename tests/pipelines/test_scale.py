"""build-dataset beyond one machine: the per-video pass on a real local Dask cluster (several worker
processes) and a Ray instance, the data root on a real S3-compatible server on 127.0.0.1 (moto's
server mode), and the download rate limit held across worker processes by the Prefect server.

Only the internet is replaced: the videos come from an HTTP server on 127.0.0.1 through real yt-dlp,
and S3 from moto (the same HTTP API s3fs speaks to AWS).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import webdataset as wds
import yaml

from filters import audit
from pipelines.manifest import read_manifest
from pipelines.store import Store
from tests.helpers.servers import Server, serve_dir

pytestmark = pytest.mark.slow

# A few of each fate keep the module short: gameplay (kept), its copy (dedup), bad files (probe),
# and visual junk (the classifier).
WANT = {"gameplay": 2, "duplicate": 1, "corrupt": 1, "static": 1, "menu": 1}


@pytest.fixture(scope="module")
def served(
    tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    from pipelines.sample import write_sources

    tmp = tmp_path_factory.mktemp("scale")
    with open(tiny_corpus / "labels.csv", newline="") as fh:
        kind = {r["id"]: r["kind"] for r in csv.DictReader(fh)}
    with serve_dir(tiny_corpus) as srv:
        sources = write_sources(tiny_corpus, srv.base_url, tmp / "all.yaml")
        left = dict(WANT)
        chosen = []
        for e in yaml.safe_load(sources.read_text())["sources"]:
            k = kind.get(Path(e["url"]).stem)
            if left.get(k or "", 0) > 0:
                left[k] -= 1  # type: ignore[index]
                chosen.append(e)
        assert not any(left.values()), f"the tiny corpus lacks {left}"
        subset = tmp / "sources.yaml"
        subset.write_text(yaml.safe_dump({"sources": chosen}, sort_keys=False))
        yield srv, subset


def _build(sources: Path, out: str, **kw: Any) -> dict[str, Any]:
    from pipelines.flows.build_dataset import build_dataset

    result: dict[str, Any] = build_dataset(sources=str(sources), out=out, **kw)
    return result


@pytest.fixture(scope="module")
def local_build(
    prefect_harness: None, served: tuple[Server, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("local") / "data"
    return out, _build(served[1], str(out))


def _video_gets(srv: Server, since: int, nth: int = 0) -> dict[str, float]:
    """The ``nth`` GET (0: the first) of each video file after request number ``since``:
    path -> monotonic time."""
    seen: dict[str, list[float]] = {}
    for (method, _, rel), t in list(zip(srv.requests, srv.times, strict=True))[since:]:
        if method == "GET" and rel.startswith("videos/"):
            seen.setdefault(rel, []).append(t)
    return {rel: ts[nth] for rel, ts in seen.items() if len(ts) > nth}


def _slot_times(client: Any, limit: str, since: float) -> list[float]:
    """When each slot of global concurrency limit ``limit`` was taken after ``since`` (unix s):
    the server's ``prefect.concurrency-limit.acquired`` events, stamped by the taker as it got
    its slot (so the download's own start-up cannot blur them)."""
    from datetime import UTC, datetime

    body = {
        "filter": {
            "event": {"prefix": ["prefect.concurrency-limit.acquired"]},
            "occurred": {"since": datetime.fromtimestamp(since, UTC).isoformat()},
        },
        "limit": 50,  # the API's most
    }
    events = client._client.post("/events/filter", json=body).json()["events"]
    times = [
        datetime.fromisoformat(e["occurred"].replace("Z", "+00:00")).timestamp()
        for e in events
        if e["resource"].get("prefect.resource.name") == limit
    ]
    return sorted(t for t in times if t >= since)


@pytest.fixture(scope="module")
def dask_s3_build(
    prefect_harness: None,
    served: tuple[Server, Path],
    s3_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, Any], list[float]]:
    """A build on a local Dask cluster of 2 worker processes into a fresh S3 bucket, with a
    download rate limit of one per second on the Prefect server."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from pipelines.flows.build_dataset import DOWNLOAD_RATE_LIMIT

    _, sources = served
    url = s3_server() + "/datasets/genie"
    start = time.time()
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(
                name=DOWNLOAD_RATE_LIMIT, limit=1, slot_decay_per_second=1.0
            )
        )
        try:
            summary = _build(
                sources,
                url,
                runner="dask",
                workers=2,
                scratch=str(tmp_path_factory.mktemp("scratch-dask")),
            )
        finally:
            client.delete_global_concurrency_limit_by_name(DOWNLOAD_RATE_LIMIT)
        deadline = time.monotonic() + 30  # events reach the server in the background
        while True:
            slots = _slot_times(client, DOWNLOAD_RATE_LIMIT, start)
            if len(slots) >= sum(WANT.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
    return url, summary, slots


def test_dask_on_s3_gives_the_same_dataset_as_one_machine(
    local_build: tuple[Path, dict[str, Any]],
    dask_s3_build: tuple[str, dict[str, Any], list[float]],
) -> None:
    local, ls = local_build
    url, ds, _ = dask_s3_build
    assert ds["n_kept"] == ls["n_kept"] > 0 and ds["n_clips"] > ds["n_kept"]  # some were dropped
    assert ds["version"] == ls["version"]
    lm, rm = read_manifest(local), read_manifest(url)
    assert lm is not None and rm is not None
    assert rm == lm  # the same shards, bytes and counts: nothing in it says where it was made
    assert url.startswith("s3://") and ds["manifest"] == url + "/manifest.json"
    # the same decisions, read from the audit log on S3
    assert audit.summary(url) == audit.summary(local)
    # nothing of the build is left on this machine's disk but scratch
    assert not Path("datasets").exists()


def test_shards_stream_back_from_s3(
    dask_s3_build: tuple[str, dict[str, Any], list[float]],
) -> None:
    url, summary, _ = dask_s3_build
    m = read_manifest(url)
    assert m is not None
    store = Store.at(url)
    shard_urls = [store.url(s["path"]) for s in m["shards"]]
    assert all(u.startswith("s3://") for u in shard_urls)

    def open_stream(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in src:
            yield {**sample, "stream": fsspec.open(sample["url"], "rb").open()}

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(shard_urls),
        open_stream,  # fsspec streams the objects: nothing is downloaded to disk first
        wds.tariterators.tar_file_expander,
        wds.tariterators.group_by_keys,
    )
    samples = list(pipeline)
    assert len(samples) == m["n_samples"] == summary["n_kept"]
    meta = json.loads(samples[0]["json"])
    assert meta["clip_id"] == samples[0]["__key__"] and samples[0]["mp4"][4:8] == b"ftyp"
    for s in m["shards"]:
        assert store.sha256(s["path"]) == s["sha256"]


def test_download_rate_limit_holds_across_dask_workers(
    dask_s3_build: tuple[str, dict[str, Any], list[float]],
) -> None:
    # Limit 1 slot decaying at 1 per second: every download took a slot, and slots were taken
    # at least ~1 s apart, whichever of the two worker processes took them. (Without the limit,
    # the two workers start downloads 0.2-0.4 s apart here.)
    _, _, slots = dask_s3_build
    assert len(slots) == sum(WANT.values())
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= 0.85, gaps


def test_a_fresh_machine_rebuilds_from_s3_without_redoing_anything(
    dask_s3_build: tuple[str, dict[str, Any], list[float]],
    served: tuple[Server, Path],
    tmp_path: Path,
) -> None:
    url, summary, _ = dask_s3_build
    srv, sources = served
    store = Store.at(url)
    manifest = store.read_bytes("manifest.json")
    n_rows = audit.read_audit(url).num_rows
    since = len(srv.requests)
    # an empty scratch folder: this machine never saw the build; all it knows is in the bucket
    again = _build(sources, url, scratch=str(tmp_path / "new-machine"))
    assert again["version"] == summary["version"]
    assert store.read_bytes("manifest.json") == manifest
    assert _video_gets(srv, since) == {}  # no video downloaded again
    assert audit.read_audit(url).num_rows == n_rows  # no decision recorded twice


def test_ray_gives_the_same_dataset_version(
    local_build: tuple[Path, dict[str, Any]],
    served: tuple[Server, Path],
    tmp_path: Path,
) -> None:
    pytest.importorskip("prefect_ray", reason="prefect-ray is not installed (open-genie[ray])")
    _, ls = local_build
    summary = _build(served[1], str(tmp_path / "data"), runner="ray", workers=2)
    assert summary["version"] == ls["version"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster() -> Iterator[str]:
    """An existing Dask cluster as on many machines: a scheduler and two workers started with the
    `dask` CLI as separate processes (their own environments, no shared Python state), on 127.0.0.1."""
    import subprocess
    import sys
    import time

    from distributed import Client

    port = _free_port()
    address = f"127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [
        subprocess.Popen(
            [*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://{address}"]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [*worker, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        with Client(f"tcp://{address}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + 30
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))


def test_an_existing_dask_cluster_gives_the_same_dataset_version(
    local_build: tuple[Path, dict[str, Any]],
    served: tuple[Server, Path],
    dask_cluster: str,
    s3_server: Any,
    tmp_path: Path,
) -> None:
    _, ls = local_build
    url = s3_server() + "/genie"
    summary = _build(served[1], url, runner=f"dask://{dask_cluster}", scratch=str(tmp_path / "s"))
    assert summary["version"] == ls["version"]
    assert len(Store.at(url).keys("work/videos", "*.json")) == sum(WANT.values())


def test_the_audit_cli_reads_a_data_root_on_s3(
    dask_s3_build: tuple[str, dict[str, Any], list[float]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipelines.cli import main

    url, summary, _ = dask_s3_build
    assert main(["audit", "summary", "--data", url, "--json"]) == 0
    counts = {
        (r["step"], r["decision"], r["reason"]): r["count"]
        for r in json.loads(capsys.readouterr().out)
    }
    assert counts[("shard", "keep", "in_shard")] == summary["n_kept"]
    kept = next(r for r in audit.current_rows(url) if r["step"] == "shard")
    assert main(["audit", "explain", "--data", url, kept["clip_id"]]) == 0
    said = capsys.readouterr().out
    assert "score=" in said and f"clip file: {url}/work/clips/" in said and "(missing)" not in said
    report = tmp_path / "report.html"
    assert main(["audit", "report", "--data", url, "--out", str(report)]) == 0
    page = report.read_text()
    # a contact sheet per clip, fetched from the bucket (none "missing")
    assert (
        page.count('<img src="data:image/png') >= summary["n_kept"]
        and "clip file missing" not in page
    )
    assert main(["audit", "summary", "--data", url + "-nothing-here"]) == 2
