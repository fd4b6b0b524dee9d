"""The sample corpus generator, run for real: Procgen in its own venv, ffmpeg for every file.

The tiny corpus is generated once per module (or reused from ``$GENIE_SAMPLE_CACHE``). The first
run on a machine also creates the procgen venv, which needs PyPI.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml

from pipelines.clip import ClipConfig, cut_video
from pipelines.sample import KINDS, make_sample_corpus, plan_corpus, write_sources
from pipelines.sources import load_sources

VISUAL_BAD = ("menu", "static", "slideshow", "noise", "non_game", "black", "test_pattern", "facecam")  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("GENIE_SAMPLE_CACHE")
    root = Path(cache) / "tiny" if cache else tmp_path_factory.mktemp("sample") / "tiny"
    return make_sample_corpus(root, "tiny")


def labels(corpus: Path) -> list[dict[str, str]]:
    with open(corpus / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def meta(corpus: Path) -> dict[str, dict]:
    return {it["id"]: it for it in json.loads((corpus / "corpus.json").read_text())["items"]}


def ffprobe(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
         str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def grey_frames(path: Path, fps: int = 10) -> np.ndarray:
    """Decode to (T, 90, 160) grey uint8 at ``fps``, as the clip stage sees a video."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"fps={fps},scale=160:90:flags=area",
         "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(out, np.uint8).reshape(-1, 90, 160)


def mean_motion(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())


def test_labels_cover_every_kind(corpus: Path) -> None:
    rows = labels(corpus)
    assert list(rows[0]) == ["id", "rating", "kind", "note"]
    assert {r["kind"] for r in rows} == set(KINDS)
    for r in rows:
        assert r["rating"] == ("good" if r["kind"] == "gameplay" else "bad")
        assert r["note"]
    files = {p.stem for p in (corpus / "videos").iterdir()}
    assert [r["id"] for r in rows if r["id"] not in files] == []
    assert len(files) == len(rows)  # no stray or temporary files
    games = {meta(corpus)[r["id"]]["params"]["game"] for r in rows if r["kind"] == "gameplay"}
    assert len(games) >= 2


def test_gameplay_is_real_h264_of_the_planned_length(corpus: Path) -> None:
    items = meta(corpus)
    for r in labels(corpus):
        if r["kind"] not in ("gameplay", "too_short"):
            continue
        info = json.loads(ffprobe(corpus / items[r["id"]]["file"]).stdout)
        (v,) = [s for s in info["streams"] if s["codec_type"] == "video"]
        assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == (
            "h264", 320, 180, "yuv420p",
        )  # fmt: skip
        assert v["avg_frame_rate"] == "15/1"
        duration = float(info["format"]["duration"])
        assert duration == pytest.approx(items[r["id"]]["seconds"], abs=0.15)
        if r["kind"] == "gameplay":
            assert 34 <= duration <= 50
            # The player moves: frames differ, unlike a held screen.
            assert mean_motion(grey_frames(corpus / items[r["id"]]["file"], fps=2)) > 2.0
        else:
            assert duration < 16


def test_gameplay_levels_are_long_and_the_clip_stage_finds_only_their_changes(
    corpus: Path, tmp_path: Path
) -> None:
    items = [i for i in meta(corpus).values() if i["kind"] == "gameplay"]
    changes = {i["id"]: i["level_changes_s"] for i in items}
    assert any(changes.values())  # some video moves on to a new level: a true hard cut
    long_levels = 0
    for it in items:
        parts = np.diff([0.0, *changes[it["id"]], it["seconds"]])
        assert parts.min() >= 16, (it["id"], changes[it["id"]])  # a clip fits around a change
        long_levels += parts.max() >= 32
        # The clip stage cuts at the level changes and nowhere else (camera jumps are no cuts).
        rep = cut_video(corpus / it["file"], it["id"], tmp_path / it["id"], ClipConfig(),
                        lambda frames: {})  # fmt: skip
        assert len(rep.cuts_s) == len(changes[it["id"]]), (it["id"], rep.cuts_s)
        assert all(abs(a - b) <= 0.2 for a, b in zip(rep.cuts_s, changes[it["id"]], strict=True))
        assert len(rep.clips) >= 2, (it["id"], rep.cuts_s)
    assert long_levels >= len(items) / 2  # most videos have 32 s or more of one level


def test_not_video_and_corrupt_are_undecodable(corpus: Path) -> None:
    items = meta(corpus)
    for kind in ("not_video", "corrupt"):
        (it,) = [i for i in items.values() if i["kind"] == kind]
        path = corpus / it["file"]
        assert path.suffix == ".mp4" and path.stat().st_size > 0
        assert ffprobe(path).returncode != 0
        dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
                             capture_output=True, timeout=30)  # fmt: skip
        assert dec.returncode != 0
    (nv,) = [i for i in items.values() if i["kind"] == "not_video"]
    assert (corpus / nv["file"]).read_text().lstrip().startswith("<!DOCTYPE html>")


def test_audio_only_has_no_video_stream(corpus: Path) -> None:
    (it,) = [i for i in meta(corpus).values() if i["kind"] == "audio_only"]
    info = json.loads(ffprobe(corpus / it["file"]).stdout)
    assert [s["codec_type"] for s in info["streams"]] == ["audio"]
    assert float(info["format"]["duration"]) == pytest.approx(40, abs=0.2)


def test_duplicate_matches_its_original(corpus: Path) -> None:
    items = meta(corpus)
    (dup,) = [i for i in items.values() if i["kind"] == "duplicate"]
    orig = items[dup["source"]]
    v_dup = json.loads(ffprobe(corpus / dup["file"]).stdout)["streams"][0]
    assert (v_dup["width"], v_dup["height"]) != (320, 180)  # another resolution, not a copy
    a, b = grey_frames(corpus / orig["file"]), grey_frames(corpus / dup["file"])
    assert a.shape == b.shape
    same = float(np.abs(a.astype(np.int16) - b).mean())
    other = next(i for i in items.values() if i["kind"] == "gameplay" and i["id"] != orig["id"])
    c = grey_frames(corpus / other["file"])[: len(a)]
    assert same < 3.0
    assert float(np.abs(a[: len(c)].astype(np.int16) - c).mean()) > 5 * same


def test_bad_examples_look_like_their_kind(corpus: Path) -> None:
    items = meta(corpus)
    by_kind = {i["kind"]: corpus / i["file"] for i in items.values()}
    for kind in VISUAL_BAD:
        info = json.loads(ffprobe(by_kind[kind]).stdout)
        assert 34 <= float(info["format"]["duration"]) <= 50, kind
    assert mean_motion(grey_frames(by_kind["static"])) < 0.5  # nothing moves
    assert mean_motion(grey_frames(by_kind["noise"])) > 40  # everything changes every frame
    assert grey_frames(by_kind["black"])[80:].mean() < 8  # black after the fade
    slides = grey_frames(by_kind["slideshow"])
    d = np.abs(np.diff(slides.astype(np.int16), axis=0)).mean(axis=(1, 2))
    assert 6 <= int((d > 2).sum()) <= 12  # a change every ~4 s, held in between
    # The facecam covers a large part of the frame with a panel not in the source gameplay.
    face = grey_frames(by_kind["facecam"])
    src = grey_frames(corpus / items[next(i["source"] for i in items.values()
                                          if i["kind"] == "facecam")]["file"])  # fmt: skip
    changed = (np.abs(face.astype(np.int16) - src[: len(face)]).mean(axis=0) > 10).mean()
    assert changed > 0.3


def test_sources_yaml_lists_every_file(corpus: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load((corpus / "sources.yaml").read_text())
    urls = [e["url"] for e in doc["sources"]]
    assert len(urls) == len(labels(corpus))
    for u in urls:
        p = urlparse(u)
        assert p.scheme == "file" and Path(p.path).is_absolute() and Path(p.path).is_file()
    assert [Path(urlparse(u).path).stem for u in urls] == [r["id"] for r in labels(corpus)]
    # The pipeline reads it as user-chosen URLs: no keyword rules for files without titles.
    entries = load_sources(corpus / "sources.yaml")
    assert [e.url for e in entries] == urls and all(e.rules is None for e in entries)
    out = write_sources(corpus, "http://127.0.0.1:8765/", tmp_path / "http.yaml")
    http = [e["url"] for e in yaml.safe_load(out.read_text())["sources"]]
    assert http[0].startswith("http://127.0.0.1:8765/videos/")
    assert [u.rsplit("/", 1)[1] for u in http] == [u.rsplit("/", 1)[1] for u in urls]


def test_cache_key_skips_regeneration(corpus: Path) -> None:
    files = [corpus / "corpus.json", *sorted((corpus / "videos").iterdir())]
    before = {p: p.stat().st_mtime_ns for p in files}
    t = time.monotonic()
    assert make_sample_corpus(corpus, "tiny") == corpus
    assert time.monotonic() - t < 5
    assert {p: p.stat().st_mtime_ns for p in files} == before
    key = json.loads((corpus / "corpus.json").read_text())["key"]
    assert key["size"] == "tiny" and key["generator_version"]


def test_plans_are_pure_and_small_is_richer() -> None:
    tiny, small = plan_corpus("tiny"), plan_corpus("small")
    assert plan_corpus("small") == small  # deterministic
    for plan in (tiny, small):
        assert len({i.id for i in plan}) == len(plan)
        assert {i.kind for i in plan} == set(KINDS)
    kinds = Counter(i.kind for i in small)
    assert 12 <= kinds["gameplay"] <= 16
    assert len({i.params["game"] for i in small if i.kind == "gameplay"}) == 4
    assert all(kinds[k] >= 2 for k in KINDS)
    assert all(kinds[k] >= 3 for k in VISUAL_BAD)
    with pytest.raises(ValueError):
        plan_corpus("huge")
