"""Clip stage: one decode of a source video into 16 s, 10 FPS, 160x90 clips (ARCHITECTURE.md).

The source is decoded once by ffmpeg to raw RGB frames on a pipe. Python reads them one at a time,
a :class:`CutDetector` flags hard cuts (a lone spike of shift-compensated grey difference that
also changes the colour histogram) and held (static) frames two frames late, and a
:class:`WindowPlanner` (pure, shared with :func:`plan_windows`) tiles each shot into 160-frame
windows. Only the window being filled is held
in memory (<= 160 frames, 6.9 MB), whatever the video's length. Each kept window is scored by a
features function, hashed, and written to one long-lived ffmpeg encoder whose segment muxer emits
one mp4 per window; the segments are renamed to ``{clip_id}.mp4`` when the encoder has finished.
So a video costs two ffmpeg processes (three if the caller did not pass the aspect ratio).

Geometry: the source is scaled to fit inside 160x90 keeping its display aspect ratio (SAR and
rotation included) and padded with black: 4:3 sources are pillarboxed, ultra-wide ones
letterboxed, portrait ones heavily pillarboxed; nothing is ever stretched.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipelines.atomic import TMP_PREFIX, sha256_file
from pipelines.ffmpeg_io import Stream, decoder_cmd, display_aspect, encoder_cmd
from pipelines.ids import check_safe, clip_id

logger = logging.getLogger(__name__)

FeaturesFn = Callable[[np.ndarray], dict[str, float]]
# Cut/static detection works on the grey frame averaged over BLOCK x BLOCK pixel blocks: this
# removes compression noise and the pixel jitter of scrolling sprites, which would otherwise look
# like content change, while a real change of scene still moves every block.
BLOCK = 5
# Shift search of the cut detector, in blocks (x, y): up to 20 px either way, about a quarter of
# the picture's height per frame at 10 FPS (a camera following a jump moves that fast).
MAX_SHIFT = (4, 4)


class ClipError(RuntimeError):
    """The clip stage could not finish a video for a reason other than an ffmpeg failure."""


@dataclass(frozen=True)
class ClipConfig:
    # Clip length in seconds; Genie's 16 s.
    clip_seconds: float = 16.0
    # Output frame rate; clip_seconds * fps must be a whole number of frames.
    fps: int = 10
    # Output frame size; sources are fitted inside and padded with black, never stretched.
    width: int = 160
    height: int = 90
    # Hard cut, three tests; the first two are PySceneDetect's AdaptiveDetector rule on our own
    # frame score, the third (scene_hist_threshold, below) a colour check. The score
    # is the mean absolute difference of consecutive grey frames (BLOCK-averaged, 0-255 scale,
    # picture area only, not the bars), minimised over shifts up to MAX_SHIFT blocks (20 px at
    # 160x90) because platformer cameras scroll. A frame is a cut if its score is above
    # scene_threshold AND at least scene_ratio times the mean score of the scene_window frames
    # on each side: a cut is a lone spike, fast camera motion raises its neighbours too.
    # Measured: moving testsrc2 <= 7; a detailed fractal scrolled 10% of the width per frame <= 8;
    # unrelated views of that fractal >= 21; testsrc2 -> mandelbrot 44 (ratio 18). On the
    # procgen sample corpus (camera centred on a jumping player) the absolute test alone with
    # 15 px shifts found 65 "cuts" in 44 s of coinrun, mostly vertical camera jumps; with both
    # tests, 13, mostly real level changes; 0 on jumper, 2 (both real) on ninja.
    scene_threshold: float = 20.0
    scene_ratio: float = 3.0
    scene_window: int = 2
    # Third test: the colour distribution must change too. Distance = 0.5 * L1 between the
    # normalised 8x8x8 RGB histograms of the frame and the previous one (picture area; 0 = same
    # colours, 1 = disjoint). A camera that jumps 30-40 px in one frame (more than MAX_SHIFT, with
    # parallax) passes the two tests above but shows the same scene: measured on the procgen
    # corpus, such jumps score 0.24-0.41, real level changes and cuts between different videos
    # 0.78-0.99 (coinrun -> ninja 0.99, coinrun level 11 -> level 14 0.86). Still in doubt: a cut
    # between two shots of one scene with one palette (same level, other place) is missed.
    scene_hist_threshold: float = 0.5
    # A frame whose difference to the previous one (same measure, no shift) is below this is
    # "static" (held); 1.0 is above x264 noise on a still image after block averaging, and below
    # any visible motion.
    static_threshold: float = 1.0
    # A held run at the start of a shot counts as a title card only if it lasts at least this long;
    # shorter pauses are gameplay.
    min_intro_s: float = 1.0
    # Skip at most this much of a held card after the start or a cut, then start a window anyway
    # (a game that really is static for that long is filtered later, by its features).
    max_intro_s: float = 10.0
    # Frames per window sampled for the duplicate signature (64-bit average hash each).
    signature_frames: int = 4
    # Near-duplicate: signatures differing in at most this many bits (of 64 * signature_frames).
    # Measured: the same clip re-uploaded smaller at crf 38 differs by 2-5 bits; two clips of one
    # static test pattern 16 s apart by 16; unrelated clips by ~half the bits (113 of 256).
    dedup_max_bits: int = 12
    # x264 settings for the clips; fixed, so that equal input gives byte-equal mp4 files.
    crf: int = 23
    preset: str = "veryfast"
    # Threads per ffmpeg process: 1, because parallelism comes from cutting several videos at once
    # and single-threaded x264 is what makes the output deterministic.
    threads: int = 1
    # Wall-clock limit per ffmpeg process of the clip stage (a 30-min 720p source decodes in ~4 min
    # of one core); a hung process is killed and the video recorded as a clip-stage error.
    timeout_s: float = 1800.0
    # Wall-clock limit per ffprobe/ffmpeg call of the probe stage.
    probe_timeout_s: float = 60.0
    # Probe: a video whose last decodable frame ends more than this many seconds before its
    # declared video duration is "truncated" (a cut-off download).
    truncation_tolerance_s: float = 2.0

    def __post_init__(self) -> None:
        if self.clip_seconds <= 0 or self.fps <= 0:
            raise ValueError("clip_seconds and fps must be positive")
        if abs(self.clip_seconds * self.fps - round(self.clip_seconds * self.fps)) > 1e-9:
            raise ValueError("clip_seconds * fps must be a whole number of frames")
        if self.width < 2 or self.height < 2 or self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even and >= 2 (yuv420p)")
        if not 0 <= self.static_threshold < self.scene_threshold <= 255:
            raise ValueError("need 0 <= static_threshold < scene_threshold <= 255")
        if self.scene_ratio < 1 or self.scene_window < 0:
            raise ValueError("need scene_ratio >= 1 and scene_window >= 0")
        if not 0 <= self.scene_hist_threshold < 1:
            raise ValueError("need 0 <= scene_hist_threshold < 1")
        if not 0 <= self.min_intro_s <= self.max_intro_s < self.clip_seconds:
            raise ValueError("need 0 <= min_intro_s <= max_intro_s < clip_seconds")
        if self.signature_frames < 1 or self.dedup_max_bits < 0:
            raise ValueError("signature_frames must be >= 1 and dedup_max_bits >= 0")
        if not 0 <= self.crf <= 51:
            raise ValueError("crf must be in [0, 51]")
        if self.threads < 1 or self.timeout_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("threads, timeout_s and probe_timeout_s must be positive")
        if self.truncation_tolerance_s < 0:
            raise ValueError("truncation_tolerance_s must be >= 0")

    @property
    def n_frames(self) -> int:
        """Frames per clip (160 for 16 s at 10 FPS)."""
        return round(self.clip_seconds * self.fps)


@dataclass(frozen=True)
class Span:
    start_frame: int  # in output (fps) frames from the start of the decoded video
    n_frames: int


@dataclass(frozen=True)
class DroppedSpan:
    start_frame: int
    n_frames: int
    reason: str  # "cut" (a hard cut came before the window filled), "intro", "remainder"


@dataclass(frozen=True)
class WindowPlan:
    windows: list[Span]
    dropped: list[DroppedSpan]


class WindowPlanner:
    """Online window tiling, fed one frame's flags at a time (pure: no frames, no ffmpeg).

    Each call to :meth:`push` returns the spans decided by that frame, in order: a dropped span is
    always a prefix of the frames not yet decided, a window is exactly those frames. The caller
    that buffers pixels mirrors this by appending the frame first, then applying the decisions.
    """

    def __init__(self, cfg: ClipConfig):
        self.n_window = cfg.n_frames
        self.max_intro = round(cfg.max_intro_s * cfg.fps)
        # A card is held if its first frame is repeated at least once, and for min_intro_s.
        self.min_hold = max(2, round(cfg.min_intro_s * cfg.fps))
        self.n = 0  # frames pushed so far
        self.pending = 0  # first frame not yet decided (kept in a window or dropped)
        self.shot_start = 0
        self.in_intro = True  # still deciding whether the current shot opens on a held card

    def push(self, cut: bool, static: bool) -> list[Span | DroppedSpan]:
        """Flags of frame ``self.n``: ``cut`` = it starts a new shot, ``static`` = it repeats the
        previous frame. Returns the windows and dropped spans this frame decides."""
        i = self.n
        self.n += 1
        out: list[Span | DroppedSpan] = []
        if i == 0 or cut:
            if i > self.pending:
                card = self.in_intro and i - self.shot_start >= self.min_hold
                out.append(DroppedSpan(self.pending, i - self.pending, "intro" if card else "cut"))
            self.pending, self.shot_start, self.in_intro = i, i, True
        elif self.in_intro:
            held = i - self.shot_start  # frames shot_start..i-1 all repeat the shot's first frame
            # Still held after max_intro: give up skipping and start the window here, on the card.
            # A moving frame ends the card: skip it if it was held long enough to be one.
            if not static or held >= self.max_intro:
                if held >= self.min_hold:
                    out.append(DroppedSpan(self.shot_start, held, "intro"))
                    self.pending = i
                self.in_intro = False
        if not self.in_intro and self.n - self.pending == self.n_window:
            out.append(Span(self.pending, self.n_window))
            self.pending = self.n
        return out

    def finish(self) -> list[DroppedSpan]:
        """End of the video: frames not in a window are a remainder (or an unresolved intro)."""
        if self.n == self.pending:
            return []
        card = self.in_intro and self.n - self.shot_start >= self.min_hold
        return [DroppedSpan(self.pending, self.n - self.pending, "intro" if card else "remainder")]


@dataclass(frozen=True)
class FrameScores:
    """How frame ``n`` differs from frame ``n - 1`` (see :func:`frame_scores`)."""

    still: float  # mean |grey difference| without shift (0-255): static detection
    moved: float  # the same, minimised over shifts up to MAX_SHIFT: the cut score
    hist: float  # colour histogram distance (0-1): the cut's confirmation


class CutDetector:
    """Online cut and static flags from per-frame scores, decided ``scene_window`` frames late
    (the adaptive test needs the scores that follow). Pure: tested without frames or ffmpeg."""

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self.w = cfg.scene_window
        self.n = 0  # frames pushed
        self.decided = 0  # frames whose flags were returned
        # Scores of frames base .. n - 1 (at most 2w + 1); None for frame 0.
        self.scores: collections.deque[FrameScores | None] = collections.deque()
        self.base = 0

    def push(self, scores: FrameScores | None) -> list[tuple[bool, bool]]:
        """``scores``: frame ``n`` against frame ``n - 1`` (None for the first frame). Returns the
        (cut, static) flags of the frames now decided, in order."""
        self.scores.append(scores)
        self.n += 1
        out = []
        while self.decided + self.w < self.n:
            out.append(self._decide())
        return out

    def finish(self) -> list[tuple[bool, bool]]:
        """Flags of the last frames, judged on the neighbours that exist."""
        return [self._decide() for _ in range(self.n - self.decided)]

    def _decide(self) -> tuple[bool, bool]:
        d = self.decided
        j = d - self.base  # position of frame d in self.scores
        this = self.scores[j]
        neighbours = [
            s.moved
            for k, s in enumerate(self.scores)
            if k != j and abs(k - j) <= self.w and s is not None
        ]
        self.decided += 1
        while self.base < self.decided - self.w:  # keep w frames of history for the next one
            self.scores.popleft()
            self.base += 1
        if this is None:
            return False, False
        calm = sum(neighbours) / len(neighbours) if neighbours else 0.0
        cut = (this.moved > self.cfg.scene_threshold and this.moved >= self.cfg.scene_ratio * calm
               and this.hist > self.cfg.scene_hist_threshold)  # fmt: skip
        return cut, this.still < self.cfg.static_threshold


def plan_windows(
    cut_frames: Collection[int], static_frames: Collection[int], n_frames: int, cfg: ClipConfig
) -> WindowPlan:
    """Tile a video of ``n_frames`` output frames into non-overlapping clip windows.

    Args:
        cut_frames: indices of frames that start a new shot (differ hard from the previous one).
        static_frames: indices of frames that repeat the previous frame (held).
        n_frames: total decoded frames at ``cfg.fps``.
    Returns:
        windows of exactly ``cfg.n_frames`` frames that never cross a cut nor start on a held card
        right after the start or a cut (at most ``max_intro_s`` of it is skipped), and every frame
        not in a window as a dropped span with its reason (cut, intro, remainder).
    """
    planner = WindowPlanner(cfg)
    cuts, statics = set(cut_frames), set(static_frames)
    windows: list[Span] = []
    dropped: list[DroppedSpan] = []
    for i in range(n_frames):
        for d in planner.push(i in cuts, i in statics):
            (windows.append(d) if isinstance(d, Span) else dropped.append(d))
    dropped.extend(planner.finish())
    return WindowPlan(windows, dropped)


@dataclass(frozen=True)
class ClipResult:
    clip_id: str
    video_id: str
    start_s: float  # window start in the source's timeline
    n_frames: int
    path: str  # out_dir/{clip_id}.mp4
    sha256: str  # of the mp4 file
    features: dict[str, float]
    signature: str  # hex: one 64-bit average hash per sampled frame, for near-duplicate checks
    content_sha256: str = ""  # of the raw RGB frames: exact duplicates, independent of encoding


@dataclass(frozen=True)
class CutReport:
    clips: list[ClipResult]
    n_frames: int  # frames decoded at cfg.fps
    cuts_s: list[float]  # times of detected hard cuts
    dropped: list[tuple[float, str]]  # (start_s, reason) of every span not in a clip
    dropped_spans: list[DroppedSpan] = field(default_factory=list)  # the same, in frames


def average_hash(frame_HWC: np.ndarray) -> int:
    """64-bit average hash: 8x8 block means of the grey frame, one bit per block above the mean."""
    grey = _grey(frame_HWC)
    h, w = grey.shape
    rows = np.array_split(np.arange(h), 8)
    cols = np.array_split(np.arange(w), 8)
    blocks = np.array([[grey[np.ix_(r, c)].mean() for c in cols] for r in rows])  # (8, 8)
    bits = (blocks > blocks.mean()).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def signature(frames_THWC: np.ndarray, n: int) -> str:
    """Average hashes of ``n`` evenly spaced frames, as 16 hex digits each."""
    idx = np.linspace(0, len(frames_THWC) - 1, n).round().astype(int)
    return "".join(f"{average_hash(frames_THWC[i]):016x}" for i in idx)


def is_near_duplicate(sig_a: str, sig_b: str, max_bits: int) -> bool:
    """True if two signatures differ in at most ``max_bits`` bits.

    Raises:
        ValueError: signatures of different lengths (made with different configs).
    """
    if len(sig_a) != len(sig_b):
        raise ValueError(f"signature lengths differ: {len(sig_a)} != {len(sig_b)}")
    return bin(int(sig_a, 16) ^ int(sig_b, 16)).count("1") <= max_bits


def fit_box(aspect: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(w, h, x, y) of a picture of display ``aspect`` fitted inside width x height, centred."""
    if aspect >= width / height:
        w, h = width, max(2, round(width / aspect))
    else:
        w, h = max(2, round(height * aspect)), height
    return w, h, (width - w) // 2, (height - h) // 2


def _grey(frame_HWC: np.ndarray) -> np.ndarray:
    """(H, W) float32 luma (BT.601 weights) of an RGB uint8 frame."""
    return frame_HWC.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _small_grey(frame_HWC: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Grey picture area (bars excluded, so a pillarboxed video's cuts are not diluted),
    averaged over BLOCK x BLOCK blocks."""
    w, h, x, y = box
    hb, wb = max(1, h // BLOCK), max(1, w // BLOCK)
    grey = _grey(frame_HWC[y : y + hb * BLOCK, x : x + wb * BLOCK])
    bh, bw = grey.shape[0] // hb, grey.shape[1] // wb
    return grey[: hb * bh, : wb * bw].reshape(hb, bh, wb, bw).mean(axis=(1, 3))


def frame_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean |a - b|, its minimum over shifts up to MAX_SHIFT) of two (h, w) block-grey frames.

    The shifted difference is taken over the overlap only, so a scroll by a few blocks scores as
    low as a still camera while a change of scene stays high. All 81 shifts at once: ~0.2 ms.
    """
    h, w = a.shape
    mx, my = min(MAX_SHIFT[0], w // 2), min(MAX_SHIFT[1], h // 2)
    # NaN outside b, so that each shift averages over its overlap only.
    padded = np.pad(b.astype(np.float32), ((my, my), (mx, mx)), constant_values=np.nan)
    shifted = sliding_window_view(padded, (h, w))  # (2my+1, 2mx+1, h, w): b moved by (dy, dx)
    sums = np.nansum(np.abs(shifted - a), axis=(2, 3))  # (2my+1, 2mx+1)
    dy = np.abs(np.arange(-my, my + 1))[:, None]
    dx = np.abs(np.arange(-mx, mx + 1))[None, :]
    means = sums / ((h - dy) * (w - dx))
    return float(means[my, mx]), float(means.min())


def colour_histogram(frame_HWC: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(512,) float32 normalised 8x8x8 RGB histogram of the picture area (bars excluded).
    ~0.1 ms for a 160x90 frame."""
    w, h, x, y = box
    q = (frame_HWC[y : y + h, x : x + w] >> 5).astype(np.intp)  # 8 levels per channel
    idx = (q[..., 0] << 6) | (q[..., 1] << 3) | q[..., 2]
    counts = np.bincount(idx.ravel(), minlength=512).astype(np.float32)
    return counts / max(1, idx.size)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """0.5 * L1 distance of two normalised histograms: 0 = same colours, 1 = no colour shared."""
    return 0.5 * float(np.abs(a - b).sum())


@dataclass(frozen=True)
class FrameFeatures:
    """What the cut detector keeps of a frame: its block-grey picture and colour histogram."""

    grey: np.ndarray  # (h, w) float32, see _small_grey
    hist: np.ndarray  # (512,) float32, see colour_histogram


def frame_features(frame_HWC: np.ndarray, box: tuple[int, int, int, int]) -> FrameFeatures:
    return FrameFeatures(_small_grey(frame_HWC, box), colour_histogram(frame_HWC, box))


def frame_scores(prev: FrameFeatures, cur: FrameFeatures) -> FrameScores:
    """The cut detector's scores of ``cur`` against the frame before it."""
    still, moved = frame_difference(prev.grey, cur.grey)
    return FrameScores(still, moved, histogram_distance(prev.hist, cur.hist))


def detect(frames_THWC: np.ndarray, cfg: ClipConfig,
           box: tuple[int, int, int, int] | None = None) -> list[tuple[bool, bool]]:  # fmt: skip
    """(cut, static) flags of every frame of an in-memory video, as :func:`cut_video` finds them.

    Args:
        frames_THWC: uint8 (T, H, W, 3) frames at ``cfg.fps``.
        box: the picture area (w, h, x, y); default the whole frame.
    """
    t, h, w, _ = frames_THWC.shape
    box = box if box is not None else (w, h, 0, 0)
    det = CutDetector(cfg)
    out: list[tuple[bool, bool]] = []
    prev: FrameFeatures | None = None
    for frame in frames_THWC:
        cur = frame_features(frame, box)
        out += det.push(frame_scores(prev, cur) if prev is not None else None)
        prev = cur
    return out + det.finish()


def _default_features() -> FeaturesFn:
    from filters.features import compute_features  # the real scorer lives in filters/

    return compute_features


@dataclass
class _Kept:
    span: Span
    features: dict[str, float]
    signature: str
    content_sha256: str


class _Cutter:
    """Frame-by-frame state of one cut_video call: the window buffer, the planner, the encoder."""

    def __init__(
        self,
        vid: str,
        out_dir: Path,
        cfg: ClipConfig,
        box: tuple[int, int, int, int],
        features_fn: FeaturesFn,
    ):
        self.vid, self.out_dir, self.cfg, self.box = vid, out_dir, cfg, box
        self.features_fn = features_fn
        self.planner = WindowPlanner(cfg)
        self.detector = CutDetector(cfg)
        self.waiting: collections.deque[np.ndarray] = collections.deque()
        # The one window being filled: never more than n_frames frames are held (see WindowPlanner;
        # an intro is at most max_intro_s < clip_seconds long, so it fits too).
        self.buf = np.empty((cfg.n_frames, cfg.height, cfg.width, 3), np.uint8)
        self.count = 0  # frames in buf, which are frames buf_start .. buf_start+count-1
        self.buf_start = 0
        self.prev: FrameFeatures | None = None
        self.cuts: list[int] = []
        self.dropped: list[DroppedSpan] = []
        self.kept: list[_Kept] = []
        self.encoder: Stream | None = None
        self.pattern = out_dir / f"{TMP_PREFIX}{vid}-seg%05d.mp4"

    def push(self, frame_HWC: np.ndarray) -> None:
        cur = frame_features(frame_HWC, self.box)
        scores = frame_scores(self.prev, cur) if self.prev is not None else None
        self.prev = cur
        # Frames wait here (scene_window of them, ~43 KB each) until their cut flag is known.
        self.waiting.append(frame_HWC)
        for cut, static in self.detector.push(scores):
            self._place(self.waiting.popleft(), cut, static)

    def _place(self, frame_HWC: np.ndarray, cut: bool, static: bool) -> None:
        """Buffer one frame whose flags are known and apply what the planner decides."""
        if cut:
            self.cuts.append(self.planner.n)
        self.buf[self.count] = frame_HWC
        self.count += 1
        for decided in self.planner.push(cut, static):
            if isinstance(decided, DroppedSpan):
                self._drop_prefix(decided)
            else:
                self._keep(decided)

    def _drop_prefix(self, d: DroppedSpan) -> None:
        assert d.start_frame == self.buf_start and d.n_frames <= self.count, (d, self.buf_start)
        rest = self.count - d.n_frames
        self.buf[:rest] = self.buf[d.n_frames : self.count]  # numpy copes with the overlap
        self.count, self.buf_start = rest, self.buf_start + d.n_frames
        self.dropped.append(d)

    def _keep(self, span: Span) -> None:
        assert span.start_frame == self.buf_start and span.n_frames == self.count, span
        frames = self.buf[: self.count]
        view = frames.view()
        view.flags.writeable = False  # features_fn reads; the buffer is reused after this call
        self.kept.append(
            _Kept(
                span=span,
                features=dict(self.features_fn(view)),
                signature=signature(view, self.cfg.signature_frames),
                content_sha256=hashlib.sha256(frames.data).hexdigest(),
            )
        )
        if self.encoder is None:
            c = self.cfg
            cmd = encoder_cmd(
                self.pattern,
                (c.width, c.height),
                c.fps,
                c.n_frames,
                crf=c.crf,
                preset=c.preset,
                threads=c.threads,
            )
            self.encoder = Stream(cmd, c.timeout_s, stdin=True, stdout=False)
        try:
            self.encoder.stdin.write(frames.data)
        except BrokenPipeError:  # the encoder died: its exit code and stderr say why
            raise self.encoder.error() from None
        self.count, self.buf_start = 0, self.buf_start + span.n_frames

    def finish(self) -> list[ClipResult]:
        """Flush the detector, the planner and the encoder, then name each segment after its clip."""
        for cut, static in self.detector.finish():
            self._place(self.waiting.popleft(), cut, static)
        self.dropped.extend(self.planner.finish())
        if self.encoder is not None:
            self.encoder.finish()
        n = len(self.kept)
        segments = [Path(str(self.pattern) % k) for k in range(n)]
        missing = [s.name for s in segments if not s.exists()]
        if missing or Path(str(self.pattern) % n).exists():
            raise ClipError(
                f"encoder wrote an unexpected set of segments for {n} windows "
                f"(missing: {missing[:3]}); segment timing is off"
            )
        clips = []
        for seg, k in zip(segments, self.kept, strict=True):
            cid = clip_id(self.vid, k.span.start_frame * 1000 // self.cfg.fps)
            final = self.out_dir / f"{cid}.mp4"
            with open(seg, "rb+") as fh:  # durable before the rename makes it visible
                os.fsync(fh.fileno())
            os.replace(seg, final)
            clips.append(
                ClipResult(
                    clip_id=cid,
                    video_id=self.vid,
                    start_s=k.span.start_frame / self.cfg.fps,
                    n_frames=k.span.n_frames,
                    path=str(final),
                    sha256=sha256_file(final),
                    features=k.features,
                    signature=k.signature,
                    content_sha256=k.content_sha256,
                )
            )
        return clips

    def cleanup(self) -> None:
        """Kill the encoder and remove its temporary segments (after a failure, or a stale run)."""
        if self.encoder is not None:
            self.encoder.kill()
        prefix = f"{TMP_PREFIX}{self.vid}-seg"
        for p in self.out_dir.glob(prefix + "*.mp4"):
            if p.name[len(prefix) : -4].isdigit():
                p.unlink(missing_ok=True)


def cut_video(
    path: Path,
    vid: str,
    out_dir: Path,
    cfg: ClipConfig,
    features_fn: FeaturesFn | None = None,
    *,
    aspect: float | None = None,
) -> CutReport:
    """Cut one video into clips with one decode (see the module docstring).

    Args:
        path: the source video (already probed ok).
        vid: its video ID; clips are named ``{vid}_{start_ms:08d}``.
        out_dir: where the clips go (``work/clips/{vid}``); created if needed.
        features_fn: ``frames_THWC uint8 (n_frames, height, width, 3) -> features``, called once
            per kept window; default ``filters.features.compute_features``. The array is read-only
            and only valid during the call.
        aspect: the source's display aspect ratio (width/height); probed with ffprobe if None.
    Returns:
        the clips in source order, the number of decoded frames, the hard cuts, and every span
        not kept with its reason.
    Raises:
        FFmpegError: the decoder or the encoder failed or timed out (stderr tail included).
        ClipError: the decoded stream or the encoder's segments were not as expected.
        ValueError: no video stream (when ``aspect`` is probed here).
    """
    check_safe(vid)
    fn = features_fn if features_fn is not None else _default_features()
    out_dir.mkdir(parents=True, exist_ok=True)
    if aspect is None:
        aspect = display_aspect(path, cfg.probe_timeout_s)
    box = fit_box(aspect, cfg.width, cfg.height)
    cutter = _Cutter(vid, out_dir, cfg, box, fn)
    cutter.cleanup()  # segments left by a killed run would be taken for ours
    frame_bytes = cfg.width * cfg.height * 3
    try:
        cmd = decoder_cmd(path, cfg.fps, box, (cfg.width, cfg.height), cfg.threads)
        with Stream(cmd, cfg.timeout_s, stdin=False, stdout=True) as dec:
            while raw := dec.stdout.read(frame_bytes):  # a BufferedReader: full frames until EOF
                if len(raw) != frame_bytes:
                    dec.finish()  # a decoder error explains a short frame better than we can
                    raise ClipError(f"decoder output ended inside a frame ({len(raw)} bytes)")
                cutter.push(np.frombuffer(raw, np.uint8).reshape(cfg.height, cfg.width, 3))
            dec.finish()
        clips = cutter.finish()
    except BaseException:
        cutter.cleanup()
        raise
    fps = cfg.fps
    logger.info(
        "%s: %d frames, %d cuts, %d clips, %d spans dropped",
        vid,
        cutter.planner.n,
        len(cutter.cuts),
        len(clips),
        len(cutter.dropped),
    )
    return CutReport(
        clips=clips,
        n_frames=cutter.planner.n,
        cuts_s=[i / fps for i in cutter.cuts],
        dropped=[(d.start_frame / fps, d.reason) for d in cutter.dropped],
        dropped_spans=list(cutter.dropped),
    )
