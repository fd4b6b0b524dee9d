"""build-dataset end to end: the real flow (Prefect test harness), real yt-dlp over HTTP on
127.0.0.1, real ffmpeg, real shards read back with WebDataset. Only the internet is replaced, by a
local server that also misbehaves (404s, 500s, dropped connections).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds
import yaml

from filters import audit
from pipelines.manifest import read_manifest
from tests.helpers.servers import Server, serve_dir

pytestmark = pytest.mark.slow

# What may happen to each kind of sample video (its final, latest decisions).
PROBE_DROPS = {
    "corrupt": {"truncated", "undecodable", "not_video"},
    "not_video": {"not_video"},
    "too_short": {"too_short"},
}
VISUAL_BAD = {
    "menu",
    "static",
    "slideshow",
    "noise",
    "non_game",
    "black",
    "test_pattern",
    "facecam",
}


def _labels(corpus: Path) -> dict[str, dict[str, str]]:
    with open(corpus / "labels.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def _entries(sources: Path) -> list[str]:
    return [e["url"] for e in yaml.safe_load(sources.read_text())["sources"]]


def _stem(url: str) -> str:
    return Path(url.split("?")[0]).stem


@pytest.fixture(scope="module")
def served(
    tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    from pipelines.sample import write_sources

    tmp = tmp_path_factory.mktemp("served")
    with serve_dir(tiny_corpus, flaky_failures=1) as srv:
        sources = write_sources(tiny_corpus, srv.base_url, tmp / "sources.yaml")
        doc = yaml.safe_load(sources.read_text())
        # A URL that is gone, and one that fails once with a 500 before it works.
        first_game = next(
            e["url"]
            for e in doc["sources"]
            if _labels(tiny_corpus)[_stem(e["url"])]["kind"] == "gameplay"
        )
        rel = first_game[len(srv.base_url) :].lstrip("/")
        doc["sources"] += [
            {"url": srv.url("missing-video.mp4", route="404")},
            {"url": srv.url(rel, route="flaky")},
        ]
        sources.write_text(yaml.safe_dump(doc))
        yield srv, sources


def _run_flow(sources: Path, out: Path) -> dict[str, Any]:
    from pipelines.flows.build_dataset import build_dataset

    result: dict[str, Any] = build_dataset(sources=str(sources), out=str(out))
    return result


@pytest.fixture(scope="module")
def first_build(
    prefect_harness: None, served: tuple[Server, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], dict[str, int]]:
    srv, sources = served
    out = tmp_path_factory.mktemp("build") / "data"
    summary = _run_flow(sources, out)
    gets = {rel: srv.count(rel) for _, _, rel in srv.requests}
    return out, summary, gets


def test_every_sample_gets_the_right_fate(
    first_build: tuple[Path, dict[str, Any], dict[str, int]],
    tiny_corpus: Path,
    served: tuple[Server, Path],
) -> None:
    out, summary, _ = first_build
    labels = _labels(tiny_corpus)
    rows = audit.current_rows(out)
    has_model = any(r["model_version"] for r in rows if r["step"] == "score")
    by_url: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_url.setdefault(r["source_url"], []).append(r)
    kinds_seen = set()
    for url in _entries(served[1]):
        stem = _stem(url)
        if stem not in labels or "/_" in url:
            continue
        kind = labels[stem]["kind"]
        kinds_seen.add(kind)
        rs = by_url.get(url)
        assert rs, f"{stem} ({kind}) has no audit row"
        fates = {(r["step"], r["decision"], r["reason"]) for r in rs}
        in_shard = [r for r in rs if r["step"] == "shard"]
        if kind == "gameplay":
            assert in_shard, f"gameplay {stem} has no clip in a shard: {fates}"
        elif kind in PROBE_DROPS:
            assert any(
                s == "probe" and d == "drop" and why in PROBE_DROPS[kind] for s, d, why in fates
            ), (stem, fates)
        elif kind == "audio_only":
            assert ("probe", "drop", "audio_only") in fates or (
                "download",
                "error",
                "no_video_format",
            ) in fates, fates
        elif kind == "duplicate":
            assert any(s == "dedup" and d == "drop" for s, d, _ in fates), (stem, fates)
            assert not in_shard
        elif kind in VISUAL_BAD and has_model:
            assert not in_shard, f"{kind} {stem} reached a shard: {fates}"
    assert {"gameplay", "duplicate", "too_short", "not_video"} <= kinds_seen
    # the misbehaving URLs: a 404 is an error with its class and the real message; a 500 was retried
    missing = [r for r in rows if r["source_url"] and "missing-video" in r["source_url"]]
    assert missing and missing[0]["decision"] == "error" and missing[0]["reason"] == "not_found"
    assert "404" in missing[0]["message"]


def test_shards_read_back_and_match_the_manifest(
    first_build: tuple[Path, dict[str, Any], dict[str, int]],
) -> None:
    out, summary, _ = first_build
    m = read_manifest(out)
    assert m is not None and m["version"] == summary["version"]
    urls = [str(out / s["path"]) for s in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == m["n_samples"] == summary["n_kept"] > 0
    meta = json.loads(samples[0]["json"])
    assert (
        meta["clip_id"] == samples[0]["__key__"]
        and meta["fps"] == 10
        and (meta["width"], meta["height"]) == (160, 90)
    )
    assert meta["n_frames"] == 160 and samples[0]["mp4"][4:8] == b"ftyp"
    # nothing enters the dataset without a row: every sample has a shard row naming its shard
    shard_rows = {r["clip_id"]: r["shard"] for r in audit.current_rows(out) if r["step"] == "shard"}
    assert set(shard_rows) == {s["__key__"] for s in samples}


def test_second_run_redoes_nothing_and_keeps_the_version(
    first_build: tuple[Path, dict[str, Any], dict[str, int]], served: tuple[Server, Path]
) -> None:
    out, summary, _ = first_build
    srv, sources = served
    manifest_before = (out / "manifest.json").read_bytes()
    n_rows = audit.read_audit(out).num_rows
    clip_mtimes = {p: p.stat().st_mtime_ns for p in (out / "work" / "clips").rglob("*.mp4")}
    paths = {rel for _, _, rel in srv.requests}
    gets_before = {rel: srv.count(rel) for rel in paths}
    again = _run_flow(sources, out)
    assert again["version"] == summary["version"]
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert {p: p.stat().st_mtime_ns for p in (out / "work" / "clips").rglob("*.mp4")} == clip_mtimes
    # No video is fetched again, not even for its metadata; only the gone URL is asked again.
    gets_after = {rel: srv.count(rel) for rel in paths if "missing-video" not in rel}
    assert gets_after == {rel: n for rel, n in gets_before.items() if "missing-video" not in rel}
    # and no decision is recorded twice
    assert audit.read_audit(out).num_rows == n_rows


def _cli(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the CLI runs its own temporary server, like a user's shell
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, **kw)


def test_killed_run_resumes_to_the_same_manifest(tiny_corpus: Path, tmp_path: Path) -> None:
    # file:// URLs (no server, so the two builds are alike); a subset keeps the test short
    labels = _labels(tiny_corpus)
    doc = yaml.safe_load((tiny_corpus / "sources.yaml").read_text())
    keep = [e for e in doc["sources"] if labels[_stem(e["url"])]["kind"] in ("gameplay", "duplicate", "not_video", "static")]
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": keep}))
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    args = ["dataset", "build", "--sources", str(sources), "--enable-file-urls"]
    assert _cli([*args, "--out", str(ref)]).wait(timeout=900) == 0
    proc = _cli(
        [*args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "work" / "videos").glob("*.json"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, the Prefect server child included
    proc.wait()
    assert not (killed / "manifest.json").exists()
    assert _cli([*args, "--out", str(killed)]).wait(timeout=900) == 0
    assert (killed / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    for s in json.loads((ref / "manifest.json").read_text())["shards"]:
        assert (killed / s["path"]).read_bytes() == (ref / s["path"]).read_bytes()
    assert not list(killed.rglob(".tmp-*"))
    shutil.rmtree(ref)


def test_clips_that_leave_the_dataset_get_a_row(first_build: tuple[Path, dict[str, Any], dict[str, int]], served: tuple[Server, Path], tiny_corpus: Path, tmp_path: Path) -> None:
    src, _, _ = first_build
    out = tmp_path / "data"
    shutil.copytree(src, out)
    before = {k for s in read_manifest(out)["shards"] for k in _keys(out / s["path"])}  # type: ignore[index]
    labels = _labels(tiny_corpus)
    doc = yaml.safe_load(served[1].read_text())
    removed = next(e["url"] for e in doc["sources"] if labels.get(_stem(e["url"]), {}).get("kind") == "gameplay" and "/_" not in e["url"])
    doc["sources"] = [e for e in doc["sources"] if e["url"] != removed]
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump(doc))
    from pipelines.flows.build_dataset import build_dataset

    # a threshold between the kept clips' scores: some of them leave, some stay
    kept = sorted(r["score"] for r in audit.current_rows(out) if r["step"] == "score" and r["decision"] == "keep")
    assert len(kept) >= 2 and kept[0] < kept[-1]
    thr = (kept[len(kept) // 2 - 1] + kept[len(kept) // 2]) / 2
    res = build_dataset(sources=str(sources), out=str(out), threshold=thr)
    m = read_manifest(out)
    assert m is not None and res["n_kept"] == m["n_samples"] < len(before)
    after = {k for s in m["shards"] for k in _keys(out / s["path"])}
    rows = {(r["step"], r["clip_id"]): r for r in audit.current_rows(out) if r["clip_id"]}
    for cid in before - after:
        r = rows[("shard", cid)]
        assert r["decision"] == "drop" and r["reason"] in ("left_dataset", "source_removed"), r
    gone = [r for r in audit.current_rows(out) if r["step"] == "resolve" and r["source_url"] == removed]
    assert gone and gone[0]["decision"] == "drop" and gone[0]["reason"] == "source_removed"
    assert m["counts"]["shard"]["keep"]["in_shard"] == m["n_samples"]


def _keys(tar: Path) -> set[str]:
    return {s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)}
