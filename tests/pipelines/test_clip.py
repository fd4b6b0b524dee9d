"""Clip stage: the pure window planner, then cut_video on fixture videos made with ffmpeg lavfi."""

from __future__ import annotations

import json
import random
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipelines.clip import (
    ClipConfig,
    CutDetector,
    CutReport,
    DroppedSpan,
    FrameScores,
    Span,
    average_hash,
    colour_histogram,
    cut_video,
    detect,
    fit_box,
    is_near_duplicate,
    plan_windows,
)
from pipelines.ffmpeg_io import FFmpegError, ffmpeg_version, stream_aspect

CFG = ClipConfig()
N = CFG.n_frames


# ---------------------------------------------------------------- config and pure helpers


def test_config_defaults_and_validation() -> None:
    assert N == 160
    with pytest.raises(ValueError):
        ClipConfig(clip_seconds=16.05)  # not a whole number of frames
    with pytest.raises(ValueError):
        ClipConfig(width=161)
    with pytest.raises(ValueError):
        ClipConfig(static_threshold=30.0, scene_threshold=20.0)
    with pytest.raises(ValueError):
        ClipConfig(max_intro_s=16.0)  # an intro must fit in the window buffer
    with pytest.raises(ValueError):
        ClipConfig(crf=60)
    with pytest.raises(ValueError):
        ClipConfig(scene_hist_threshold=1.0)


def test_fit_box_keeps_aspect() -> None:
    assert fit_box(16 / 9, 160, 90) == (160, 90, 0, 0)
    assert fit_box(4 / 3, 160, 90) == (120, 90, 20, 0)  # pillarboxed
    assert fit_box(9 / 16, 160, 90) == (51, 90, 54, 0)  # portrait: narrow pillar
    assert fit_box(21 / 9, 160, 90) == (160, 69, 0, 10)  # letterboxed


def test_near_duplicate_signatures() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    noisy = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    ha, hn, ho = (f"{average_hash(x):016x}" for x in (a, noisy, other))
    assert is_near_duplicate(ha, hn, max_bits=4)
    assert not is_near_duplicate(ha, ho, max_bits=4)
    with pytest.raises(ValueError):
        is_near_duplicate(ha, ha + ha, 4)


# ---------------------------------------------------------------- cut detection (no ffmpeg)


def _flags(moved: list[float], cfg: ClipConfig = CFG, still: float = 5.0,
           hist: float = 0.9) -> list[tuple[bool, bool]]:  # fmt: skip
    det = CutDetector(cfg)
    out = []
    for i, m in enumerate(moved):
        out += det.push(None if i == 0 else FrameScores(still, m, hist))
    out += det.finish()
    assert len(out) == len(moved)  # every frame gets flags, in order
    return out


def test_cut_is_a_lone_spike() -> None:
    calm = [4.0] * 10
    flags = _flags([0.0, *calm, 50.0, *calm])
    assert [i for i, (cut, _) in enumerate(flags) if cut] == [11]
    # At the very end too, where fewer neighbours exist.
    assert _flags([0.0, *calm, 50.0])[-1] == (True, False)


def test_fast_camera_motion_is_not_a_cut() -> None:
    # Everything moves a lot (a camera following a jump): high scores but no lone spike.
    assert not any(cut for cut, _ in _flags([0.0, 24, 28, 31, 27, 25, 33, 26, 24]))
    # A spike that stands out but stays under the absolute threshold is no cut either.
    assert not any(cut for cut, _ in _flags([0.0, 1, 1, 1, 15, 1, 1, 1]))
    # Without the adaptive test (window 0) the absolute threshold alone decides.
    assert [c for c, _ in _flags([0.0, 24, 28, 5], ClipConfig(scene_window=0))] == [
        False, True, True, False]


def test_cut_needs_a_colour_change() -> None:
    calm = [4.0] * 10
    # The same lone spike as above, but the colours stay (a camera jump): no cut.
    assert not any(cut for cut, _ in _flags([0.0, *calm, 50.0, *calm], hist=0.3))
    assert any(cut for cut, _ in _flags([0.0, *calm, 50.0, *calm], hist=0.8))
    loose = ClipConfig(scene_hist_threshold=0.0)  # the colour test switched off
    assert any(cut for cut, _ in _flags([0.0, *calm, 50.0, *calm], loose, hist=0.3))


def _tiles(seed: int, palette: list[tuple[int, int, int]], h: int = 270, w: int = 480,
           tile: int = 8) -> np.ndarray:  # fmt: skip
    """A detailed platformer-like scene: random tiles of a small palette, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(palette), (h // tile, w // tile))
    return np.asarray(palette, np.uint8)[idx].repeat(tile, 0).repeat(tile, 1)


SKY = [(90, 150, 230), (70, 130, 210), (200, 200, 210), (120, 90, 60), (60, 160, 60)]
CAVE = [(30, 20, 40), (90, 40, 40), (160, 110, 40), (20, 60, 70), (200, 60, 120)]


def _pan(scene: np.ndarray, xs: list[int], ys: list[int]) -> np.ndarray:
    """(T, 90, 160, 3) views of ``scene`` with the camera's top-left corner at (xs[t], ys[t])."""
    return np.stack([scene[y : y + 90, x : x + 160] for x, y in zip(xs, ys, strict=True)])


def _cut_frames(frames: np.ndarray) -> list[int]:
    return [i for i, (cut, _) in enumerate(detect(frames, CFG)) if cut]


def test_camera_jump_is_not_a_cut_but_a_scene_change_is() -> None:
    scene = _tiles(1, SKY)
    # The camera pans 4 px a frame, then jumps 36 px down and 30 px right in one frame (a player
    # landing far below, at 10 FPS: beyond the shift search), then pans on.
    xs = [4 * t for t in range(20)] + [30 + 4 * t for t in range(20, 40)]
    ys = [40] * 20 + [76] * 20
    jump = _pan(scene, xs, ys)
    # The grey tests alone take it for a cut (so the colour test is what saves it)...
    grey_only = [i for i, (c, _) in enumerate(detect(jump, ClipConfig(scene_hist_threshold=0.0)))
                 if c]  # fmt: skip
    assert grey_only == [20]
    assert _cut_frames(jump) == []
    # A cut to another scene with other colours (a new level, another video) is still a cut.
    other = _pan(_tiles(2, CAVE), [4 * t for t in range(20)], [50] * 20)
    assert _cut_frames(np.concatenate([jump[:20], other])) == [20]
    # Measured here: histograms of two views of one scene are near, of two scenes far apart.
    h = [colour_histogram(f, (160, 90, 0, 0)) for f in (jump[19], jump[20], other[0])]
    assert 0.5 * np.abs(h[0] - h[1]).sum() < 0.2 < 0.9 < 0.5 * np.abs(h[0] - h[2]).sum()


def test_fade_is_not_a_cut() -> None:
    a = _pan(_tiles(1, SKY), [4 * t for t in range(40)], [40] * 40).astype(np.float32)
    b = _pan(_tiles(2, CAVE), [4 * t for t in range(40)], [50] * 40).astype(np.float32)
    w = np.clip((np.arange(40) - 15) / 10, 0, 1)[:, None, None, None]  # a 1 s cross-fade
    assert _cut_frames(((1 - w) * a + w * b).astype(np.uint8)) == []
    black = np.clip(1 - (np.arange(40) - 10) / 10, 0, 1)[:, None, None, None]  # fade to black
    assert _cut_frames((black * a).astype(np.uint8)) == []


def test_static_flags() -> None:
    flags = _flags([0.0, 0.0, 0.0], still=0.2)
    assert flags == [(False, False), (False, True), (False, True)]


# ---------------------------------------------------------------- plan_windows (no ffmpeg)


def test_plan_tiles_and_drops_remainder() -> None:
    plan = plan_windows([], [], 420, CFG)
    assert plan.windows == [Span(0, N), Span(N, N)]
    assert plan.dropped == [DroppedSpan(320, 100, "remainder")]


def test_plan_never_crosses_a_cut() -> None:
    plan = plan_windows([200], [], 400, CFG)
    assert plan.windows == [Span(0, N), Span(200, N)]
    assert plan.dropped == [DroppedSpan(160, 40, "cut"), DroppedSpan(360, 40, "remainder")]


def test_plan_skips_held_intro_at_start_and_after_cut() -> None:
    # Frames 0..49 are one held card (frames 1..49 repeat frame 0); motion from frame 50.
    plan = plan_windows([], range(1, 50), 400, CFG)
    assert plan.windows[0] == Span(50, N)
    assert plan.dropped[0] == DroppedSpan(0, 50, "intro")
    # The same after a cut at frame 170: card 170..199.
    plan = plan_windows([170], range(171, 200), 400, CFG)
    assert plan.windows == [Span(0, N), Span(200, N)]
    assert DroppedSpan(160, 10, "cut") in plan.dropped
    assert DroppedSpan(170, 30, "intro") in plan.dropped


def test_plan_intro_is_capped_and_short_pauses_are_kept() -> None:
    # Held for 30 s: skip max_intro_s (10 s = 100 frames), then start anyway.
    plan = plan_windows([], range(1, 300), 400, CFG)
    assert plan.dropped[0] == DroppedSpan(0, 100, "intro")
    assert plan.windows[0] == Span(100, N)
    # A 0.5 s pause (< min_intro_s) at the start is gameplay: no skip.
    plan = plan_windows([], range(1, 5), 400, CFG)
    assert plan.windows[0] == Span(0, N)
    # A held card not at a shot start (frames 10..60) does not stop a window.
    plan = plan_windows([], range(10, 60), 200, CFG)
    assert plan.windows == [Span(0, N)]


def test_plan_partitions_every_frame_at_random() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randrange(0, 1200)
        cuts = sorted(rng.sample(range(1, max(n, 2)), k=min(rng.randrange(0, 8), max(n - 1, 0))))
        statics: set[int] = set()
        for _ in range(rng.randrange(0, 5)):
            a = rng.randrange(0, max(n, 1))
            statics.update(range(a, a + rng.randrange(1, 200)))
        statics -= set(cuts)
        plan = plan_windows(cuts, statics, n, CFG)
        spans = [(w.start_frame, w.n_frames) for w in plan.windows]
        spans += [(d.start_frame, d.n_frames) for d in plan.dropped]
        covered = sorted(spans)
        pos = 0
        for start, length in covered:  # windows and dropped spans tile [0, n) exactly
            assert start == pos and length > 0
            pos += length
        assert pos == n
        for w in plan.windows:
            assert w.n_frames == N
            assert not any(w.start_frame < c < w.start_frame + N for c in cuts)
        assert {d.reason for d in plan.dropped} <= {"cut", "intro", "remainder"}
        assert all(d.n_frames < N or d.reason == "intro" for d in plan.dropped if d.reason != "cut")


# ---------------------------------------------------------------- fixture videos


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


def _x264(out: Path) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clipsrc")
    v = {k: d / f"{k}.mp4" for k in ("plain", "cut", "p43", "portrait", "card", "long", "short")}
    # 42 s of motion: two clips and a 10 s remainder.
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=42", *_x264(v["plain"]))
    # A hard cut at 20 s: testsrc2, then an unrelated moving fractal.
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=20",
            "-f", "lavfi", "-i", "mandelbrot=size=320x180:rate=30",
            "-filter_complex", "[1]trim=duration=20,setpts=PTS-STARTPTS[b];[0][b]concat=n=2:v=1",
            *_x264(v["cut"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=240x180:rate=25:duration=17", *_x264(v["p43"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=180x320:rate=30:duration=17",
            *_x264(v["portrait"]))
    # A 5 s held title card (colour bars), then gameplay-like motion.
    _ffmpeg("-f", "lavfi", "-i", "smptehdbars=size=320x180:rate=30:duration=5",
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=20",
            "-filter_complex", "[0][1]concat=n=2:v=1", *_x264(v["card"]))
    # 100 s, small so that decoding is cheap: raw at 160x90 it would be 43 MB.
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10:duration=100", *_x264(v["long"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=10", *_x264(v["short"]))
    return v


def _feats(frames: np.ndarray) -> dict[str, float]:
    assert frames.shape == (N, 90, 160, 3) and frames.dtype == np.uint8
    assert not frames.flags.writeable
    return {"mean": float(frames.mean()), "std": float(frames.std())}


def _stream_info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=width,height,avg_frame_rate,nb_read_frames,pix_fmt,codec_name", "-of", "json",
         str(path)], capture_output=True, check=True, timeout=30).stdout
    info: dict[str, object] = json.loads(out)["streams"][0]
    return info


def _decode(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True,
                         timeout=30).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 90, 160, 3)


# ---------------------------------------------------------------- cut_video


@pytest.fixture(scope="module")
def plain_cut(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> CutReport:
    return cut_video(videos["plain"], "test-plain", tmp_path_factory.mktemp("plain"), CFG, _feats)


def test_cut_plain_video(videos: dict[str, Path], plain_cut: CutReport) -> None:
    rep = plain_cut
    out_dir = Path(rep.clips[0].path).parent
    assert rep.n_frames == 420
    assert rep.cuts_s == []
    assert [c.clip_id for c in rep.clips] == ["test-plain_00000000", "test-plain_00016000"]
    assert [c.start_s for c in rep.clips] == [0.0, 16.0]
    assert rep.dropped == [(32.0, "remainder")]
    assert rep.dropped_spans == [DroppedSpan(320, 100, "remainder")]
    for c in rep.clips:
        assert Path(c.path) == out_dir / f"{c.clip_id}.mp4"
        info = _stream_info(Path(c.path))
        assert info["width"] == 160 and info["height"] == 90
        assert info["avg_frame_rate"] == "10/1" and info["nb_read_frames"] == "160"
        assert info["codec_name"] == "h264" and info["pix_fmt"] == "yuv420p"
        assert set(c.features) == {"mean", "std"} and c.features["std"] > 10
        assert len(c.signature) == 16 * CFG.signature_frames and len(c.sha256) == 64
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{c.clip_id}.mp4" for c in rep.clips]
    # The clip is the source's frames: its first frame matches the source at t=16 s.
    src = subprocess.run(["ffmpeg", "-v", "error", "-ss", "16", "-i", str(videos["plain"]),
                          "-frames:v", "1", "-vf", "scale=160:90:flags=area", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    first = _decode(Path(rep.clips[1].path))[0].astype(int)
    ref = np.frombuffer(src, np.uint8).reshape(90, 160, 3).astype(int)
    assert np.abs(first - ref).mean() < 8


def test_cut_is_deterministic(
    videos: dict[str, Path], plain_cut: CutReport, tmp_path: Path
) -> None:
    a = plain_cut  # the second run is another process pair, into another folder
    b = cut_video(videos["plain"], "test-plain", tmp_path, CFG, _feats)
    assert [c.clip_id for c in a.clips] == [c.clip_id for c in b.clips]
    assert [c.sha256 for c in a.clips] == [c.sha256 for c in b.clips]
    assert [c.content_sha256 for c in a.clips] == [c.content_sha256 for c in b.clips]
    assert [c.signature for c in a.clips] == [c.signature for c in b.clips]


def test_no_clip_crosses_a_hard_cut(videos: dict[str, Path], tmp_path: Path) -> None:
    rep = cut_video(videos["cut"], "test-cut", tmp_path, CFG, _feats)
    assert len(rep.cuts_s) == 1 and abs(rep.cuts_s[0] - 20.0) <= 0.2
    cut = rep.cuts_s[0]
    assert [c.start_s for c in rep.clips] == [0.0, cut]
    for c in rep.clips:
        assert c.start_s >= cut or c.start_s + c.n_frames / CFG.fps <= cut
    assert (16.0, "cut") in rep.dropped
    # Unrelated content on each side of the cut: not near-duplicates.
    a, b = rep.clips
    assert not is_near_duplicate(a.signature, b.signature, CFG.dedup_max_bits)


@pytest.mark.parametrize(("name", "x0", "x1"), [("p43", 20, 140), ("portrait", 54, 105)])
def test_other_aspects_are_padded_not_stretched(
    videos: dict[str, Path], tmp_path: Path, name: str, x0: int, x1: int
) -> None:
    rep = cut_video(videos[name], f"test-{name}", tmp_path, CFG, _feats)
    assert len(rep.clips) == 1
    frames = _decode(Path(rep.clips[0].path)).astype(float)
    cols = frames.mean(axis=(0, 1, 3))  # mean brightness per column
    assert cols[: x0 - 2].max() < 6 and cols[x1 + 2 :].max() < 6  # black bars
    assert cols[x0 + 2 : x1 - 2].min() > 20  # the picture
    lit = np.flatnonzero(cols > 10)
    assert abs((lit[-1] - lit[0] + 1) - (x1 - x0)) <= 2  # picture width: the aspect is kept


def test_held_title_card_is_skipped(videos: dict[str, Path], tmp_path: Path) -> None:
    rep = cut_video(videos["card"], "test-card", tmp_path, CFG, _feats)
    assert len(rep.clips) == 1
    assert 5.0 <= rep.clips[0].start_s <= 5.2
    assert rep.dropped[0] == (0.0, "intro")
    assert rep.dropped_spans[0].n_frames >= 49


def test_memory_is_bounded_for_long_videos(videos: dict[str, Path], tmp_path: Path) -> None:
    def light(frames: np.ndarray) -> dict[str, float]:  # _feats' std() alone would copy 55 MB
        return {"mean": float(frames[::40].mean())}

    tracemalloc.start()
    try:
        rep = cut_video(videos["long"], "test-long", tmp_path, CFG, light)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.n_frames == 1000 and len(rep.clips) == 6
    whole = rep.n_frames * 160 * 90 * 3  # 43 MB if the video were held
    window = N * 160 * 90 * 3  # 6.9 MB
    assert peak < 1.5 * window < whole / 4, f"peak {peak / 1e6:.1f} MB"


def test_failure_raises_with_ffmpeg_message_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video at all\n")
    out = tmp_path / "out"
    with pytest.raises(FFmpegError) as e:
        cut_video(bad, "test-bad", out, CFG, _feats, aspect=16 / 9)
    assert "Invalid data" in e.value.stderr_tail
    assert list(out.iterdir()) == []


def test_short_video_gives_no_clip_and_no_file(videos: dict[str, Path], tmp_path: Path) -> None:
    rep = cut_video(videos["short"], "test-short", tmp_path, CFG, _feats)
    assert rep.clips == [] and rep.n_frames == 100
    assert rep.dropped == [(0.0, "remainder")]
    assert list(tmp_path.iterdir()) == []  # no encoder was started, no temporary left


def test_reencoded_copy_is_a_near_duplicate(videos: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.mp4"  # another upload of the same video: other size, worse quality
    _ffmpeg("-i", str(videos["card"]), "-vf", "scale=256:144", "-c:v", "libx264",
            "-crf", "38", "-preset", "ultrafast", str(copy))
    a = cut_video(videos["card"], "test-a", tmp_path / "a", CFG, _feats)
    b = cut_video(copy, "test-b", tmp_path / "b", CFG, _feats)
    assert len(a.clips) == 1 and [c.start_s for c in a.clips] == [c.start_s for c in b.clips]
    for ca, cb in zip(a.clips, b.clips, strict=True):
        assert ca.content_sha256 != cb.content_sha256  # not byte-equal frames...
        assert is_near_duplicate(ca.signature, cb.signature, CFG.dedup_max_bits)  # ...but alike


def test_hung_ffmpeg_is_killed_at_the_timeout(videos: dict[str, Path], tmp_path: Path) -> None:
    cfg = ClipConfig(timeout_s=0.05)  # far less than decoding 3 minutes takes
    with pytest.raises(FFmpegError) as e:
        cut_video(videos["long"], "test-slow", tmp_path, cfg, _feats, aspect=16 / 9)
    assert e.value.timed_out and "timed out" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_display_aspect_applies_sar_and_rotation() -> None:
    assert stream_aspect({"width": 720, "height": 480, "sample_aspect_ratio": "32:27"}) == (
        pytest.approx(16 / 9))
    rotated = {"width": 1920, "height": 1080, "side_data_list": [{"rotation": -90}]}
    assert stream_aspect(rotated) == pytest.approx(9 / 16)
    assert stream_aspect({"width": 640, "height": 360, "sample_aspect_ratio": "0:1"}) == (
        pytest.approx(16 / 9))  # "unknown" SAR means square pixels


def test_ffmpeg_version_is_recorded() -> None:
    assert ffmpeg_version().startswith("ffmpeg version ")
