"""Probe stage on files made at test time: every rejection reason, with ffprobe's own words."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.clip import ClipConfig
from pipelines.probe import ProbeResult, probe

CFG = ClipConfig()


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


def _testsrc(out: Path, size: str, seconds: float, *extra: str) -> Path:
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, str(out))
    return out


def _head(src: Path, out: Path, fraction: float) -> Path:
    """The first part of a file, as a download cut off mid-way leaves it."""
    data = src.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("probesrc")
    f: dict[str, Path] = {}
    f["text"] = d / "notes.mp4"  # the name lies: content decides
    f["text"].write_text("this is a text file, not a video\n" * 20)
    f["audio"] = d / "tone.m4a"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=20", "-c:a", "aac", str(f["audio"]))
    f["ok"] = _testsrc(d / "ok.mp4", "320x180", 40)
    # With audio too, so that has_audio is seen.
    f["ok_audio"] = d / "ok_audio.mkv"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=20",
            "-f", "lavfi", "-i", "sine=duration=20", "-c:v", "libx264", "-preset", "ultrafast",
            "-c:a", "aac", "-shortest", str(f["ok_audio"]))
    f["short"] = _testsrc(d / "short.mp4", "320x180", 8)
    f["small"] = _testsrc(d / "small.mp4", "64x36", 20)
    # Cut-off downloads: moov at the end (ffmpeg's default) -> no index at all; moov at the front
    # (faststart, as streamed mp4s are) -> the index promises 40 s, the data stops at ~20 s.
    f["cut_nomoov"] = _head(f["ok"], d / "cut_nomoov.mp4", 0.5)
    fs = _testsrc(d / "faststart.mp4", "320x180", 40, "-movflags", "+faststart")
    f["cut_faststart"] = _head(fs, d / "cut_faststart.mp4", 0.5)
    # A stream ffmpeg cannot decode: valid container, garbage where the video data should be.
    f["garbage"] = d / "garbage.mp4"
    data = bytearray(fs.read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 8 :] = bytes(len(data) - mdat - 8)  # zero every sample
    f["garbage"].write_bytes(bytes(data))
    return f


def _check(r: ProbeResult, reason: str | None) -> None:
    assert r.reason == reason, r
    assert r.ok is (reason is None)


def test_ok(files: dict[str, Path]) -> None:
    r = probe(files["ok"], CFG)
    _check(r, None)
    assert (r.width, r.height, r.codec) == (320, 180, "h264")
    assert r.fps == pytest.approx(30.0)
    assert r.duration_s == pytest.approx(40.0, abs=0.1)
    assert r.aspect == pytest.approx(16 / 9)
    assert not r.has_audio
    r = probe(files["ok_audio"], CFG)
    _check(r, None)
    assert r.has_audio and r.duration_s == pytest.approx(20.0, abs=0.2)


def test_not_video(files: dict[str, Path], tmp_path: Path) -> None:
    r = probe(files["text"], CFG)
    _check(r, "not_video")
    assert "Invalid data" in r.message  # ffprobe's words, kept
    _check(probe(tmp_path / "missing.mp4", CFG), "not_video")


def test_audio_only(files: dict[str, Path]) -> None:
    r = probe(files["audio"], CFG)
    _check(r, "audio_only")
    assert r.has_audio


def test_too_short_and_too_small(files: dict[str, Path]) -> None:
    r = probe(files["short"], CFG)
    _check(r, "too_short")
    assert r.duration_s == pytest.approx(8.0, abs=0.1)
    r = probe(files["small"], CFG)
    _check(r, "too_small")
    assert (r.width, r.height) == (64, 36) and "64x36" in r.message


def test_truncated(files: dict[str, Path]) -> None:
    r = probe(files["cut_nomoov"], CFG)
    _check(r, "truncated")
    assert "moov atom not found" in r.message
    r = probe(files["cut_faststart"], CFG)
    _check(r, "truncated")
    assert "declared 40" in r.message


def test_undecodable(files: dict[str, Path]) -> None:
    r = probe(files["garbage"], CFG)
    _check(r, "undecodable")
    assert r.message


def test_timeouts_are_enforced(files: dict[str, Path]) -> None:
    # A limit no ffprobe can meet: the probe reports it instead of hanging or raising.
    r = probe(files["ok"], ClipConfig(probe_timeout_s=1e-4))
    assert not r.ok and "timed out" in r.message
