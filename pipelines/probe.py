"""Probe stage: is a downloaded file a decodable video long and large enough to cut?

Two ffprobe calls, whatever the file's length: one reads the container header (streams, declared
duration), one decodes the first 2 s and the last 10 s of the video stream. Decoding the tail is
what catches a cut-off download: an mp4 whose header promises 10 minutes while the data stops
after 3 decodes fine at the start and yields nothing at the end. A rejected file keeps ffprobe's
own message, so the audit log says what ffmpeg saw, not a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.clip import ClipConfig
from pipelines.ffmpeg_io import FFmpegError, ffprobe_json, run, stream_aspect, tail

logger = logging.getLogger(__name__)

REASONS = ("not_video", "undecodable", "audio_only", "truncated", "too_short", "too_small")
# Seconds decoded at each end of the stream by the decode check.
HEAD_S, TAIL_S = 2.0, 10.0
# Demuxers that open still images or text as a "video" of one frame; never a gameplay video.
_STILL_FORMATS = ("image2", "_pipe", "tty", "gif")
# ffprobe's words for an mp4/mov whose index (moov) never made it to disk: a cut-off download.
_TRUNCATION_WORDS = ("moov atom not found", "partial file")
_BMFF_BOXES = {b"ftyp", b"styp", b"mdat", b"moov", b"free", b"skip", b"wide", b"pdin"}


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str | None  # one of REASONS, None when ok
    message: str  # ffprobe/ffmpeg's message for a rejection, a one-line summary when ok
    duration_s: float | None  # decodable video duration (the declared one when all decodes)
    width: int | None  # coded size of the video stream
    height: int | None
    fps: float | None  # average frame rate
    codec: str | None
    has_audio: bool
    aspect: float | None = None  # display aspect (SAR and rotation applied), for cut_video


def probe(path: Path, cfg: ClipConfig) -> ProbeResult:
    """Check that one downloaded file is a decodable video worth cutting.

    Args:
        path: the downloaded file.
        cfg: the clip config: minimum size (width x height), one clip of duration, timeouts.
    Returns:
        ``ok`` with the stream's facts, or a ``reason`` (see REASONS) and ffprobe's message. A
        bad file never raises; a timeout is reported as ``undecodable``.
    """
    if not path.is_file():
        return _reject("not_video", f"no such file: {path}")
    try:
        info = ffprobe_json(path, ["-show_format", "-show_streams"], cfg.probe_timeout_s)
    except FFmpegError as e:
        if e.timed_out:
            return _reject("undecodable", str(e))
        words = e.stderr_tail.lower()
        # The mov demuxer is picked by extension too, so a text file named .mp4 also lacks a moov:
        # only a file that starts like an ISO-BMFF file is a cut-off download.
        truncated = any(w in words for w in _TRUNCATION_WORDS) and _looks_isobmff(path)
        return _reject("truncated" if truncated else "not_video", e.stderr_tail or str(e))
    fmt: dict[str, Any] = info.get("format") or {}
    streams: list[dict[str, Any]] = info.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]  # cover art is no video
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    fmt_name = str(fmt.get("format_name", ""))
    if not videos:
        if has_audio:
            return _reject("audio_only", f"{fmt_name}: audio streams only", has_audio=True)
        return _reject("not_video", f"{fmt_name}: no video stream")
    if any(w in fmt_name for w in _STILL_FORMATS):
        return _reject("not_video", f"{fmt_name}: a still image or text, not a video")
    v = videos[0]
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    base: dict[str, Any] = {
        "width": width,
        "height": height,
        "fps": _rate(v.get("avg_frame_rate")),
        "codec": v.get("codec_name"),
        "has_audio": has_audio,
        "aspect": stream_aspect(v) if width and height else None,
    }
    # The video stream's own duration: the container's is the longest stream, often the audio.
    declared = _float(v.get("duration")) or _float(fmt.get("duration"))
    if width < cfg.width or height < cfg.height:
        return _reject(
            "too_small",
            f"{width}x{height} is below {cfg.width}x{cfg.height}",
            duration_s=declared,
            **base,
        )
    start = _float(v.get("start_time")) or _float(fmt.get("start_time")) or 0.0
    try:
        times, stderr = _decode_times(path, start, declared, cfg.probe_timeout_s)
    except FFmpegError as e:
        return _reject("undecodable", str(e), duration_s=declared, **base)
    if not times or min(times) > start + HEAD_S + 1.0:
        return _reject(
            "undecodable",
            stderr or "no frame of the video stream decodes",
            duration_s=declared,
            **base,
        )
    end = max(times) - start  # end of the last decodable frame, from the stream's start
    if declared is not None and end < declared - cfg.truncation_tolerance_s:
        if declared > HEAD_S + TAIL_S and end <= HEAD_S + 1.0:  # only the head decoded
            msg = (
                f"declared {declared:.2f} s but no frame decodes in the last {TAIL_S:g} s "
                f"(data missing after {end:.2f} s or later)"
            )
        else:
            msg = f"declared {declared:.2f} s but decoding stops at {end:.2f} s"
        return _reject("truncated", f"{msg}: {stderr}" if stderr else msg, duration_s=end, **base)
    duration = min(declared, end) if declared is not None else end
    if duration < cfg.clip_seconds:
        return _reject(
            "too_short",
            f"{duration:.2f} s of video, less than one {cfg.clip_seconds:g} s clip",
            duration_s=duration,
            **base,
        )
    summary = f"{base['codec']} {width}x{height} {duration:.1f} s"
    return ProbeResult(ok=True, reason=None, message=summary, duration_s=duration, **base)


def _decode_times(
    path: Path, start: float, declared: float | None, timeout_s: float
) -> tuple[list[float], str]:
    """End times (pts + duration, seconds) of the frames decoded at the head and the tail of the
    first video stream, and ffprobe's error output. Short or unknown-length files decode whole."""
    args = [
        "ffprobe",
        "-v",
        "error",
        "-select_streams",
        "V:0",
        "-show_entries",
        "frame=best_effort_timestamp_time,pkt_duration_time",
        "-of",
        "csv=p=0",
    ]
    if declared is not None and declared > HEAD_S + TAIL_S:
        # Absolute timestamps: ffprobe seeks to the tail interval's start as given.
        args += ["-read_intervals", f"%+{HEAD_S:g},{start + declared - TAIL_S:.3f}%"]
    proc = run([*args, str(path)], timeout_s, check=False)
    if proc.returncode != 0:
        raise FFmpegError(args, proc.returncode, tail(proc.stderr), timed_out=False)
    times = []
    for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
        fields = line.strip().strip(",").split(",")
        t = _float(fields[0]) if fields else None
        if t is None:
            continue
        dur = _float(fields[1]) if len(fields) > 1 else None
        times.append(t + (dur or 0.0))
    return times, tail(proc.stderr, 5)


def _looks_isobmff(path: Path) -> bool:
    """True if the file opens with an ISO-BMFF (mp4/mov) top-level box."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    return len(head) == 8 and head[4:8] in _BMFF_BOXES


def _reject(reason: str, message: str, **fields: Any) -> ProbeResult:
    logger.info("probe rejected (%s): %s", reason, message.splitlines()[-1] if message else "")
    full: dict[str, Any] = {
        "duration_s": None,
        "width": None,
        "height": None,
        "fps": None,
        "codec": None,
        "has_audio": False,
    }
    full.update(fields)
    return ProbeResult(ok=False, reason=reason, message=message, **full)


def _float(x: object) -> float | None:
    try:
        v = float(str(x))
    except (TypeError, ValueError):
        return None
    return v if v == v else None  # NaN is no value


def _rate(x: object) -> float | None:
    num, _, den = str(x or "").partition("/")
    try:
        n, d = float(num), float(den or 1)
    except ValueError:
        return None
    return n / d if n > 0 and d > 0 else None
