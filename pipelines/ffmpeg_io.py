"""Run ffmpeg and ffprobe with wall-clock timeouts, keeping the tail of stderr for error records.

Also the ffmpeg command lines of the clip stage (one decoder, one segmenting encoder per video)
and the display-aspect reading shared by probe and clip.

Two shapes: :func:`run` for short one-shot commands (ffprobe, a probe decode) and
:class:`Stream` for long-lived processes that the caller feeds or drains through pipes (the clip
stage's decoder and encoder). Both kill the process at the deadline: ffmpeg can hang on a broken
input or a stalled pipe, and one stuck video must never stall a batch.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger(__name__)

# Lines of stderr kept for an error message: ffmpeg prints the cause last, after the banner.
TAIL_LINES = 20


class FFmpegError(RuntimeError):
    """An ffmpeg/ffprobe process failed or timed out; ``stderr_tail`` holds its own words."""

    def __init__(self, cmd: list[str], returncode: int | None, stderr_tail: str, timed_out: bool):
        self.cmd = cmd
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out
        what = "timed out" if timed_out else f"exited with code {returncode}"
        super().__init__(f"{Path(cmd[0]).name} {what}: {stderr_tail.strip() or '(no stderr)'}")


def tail(text: str | bytes, n_lines: int = TAIL_LINES) -> str:
    """The last ``n_lines`` non-empty lines of a process's output, decoded leniently."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n_lines:])


def run(cmd: list[str], timeout_s: float, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion with stdout and stderr captured.

    Raises:
        FFmpegError: on timeout (the process is killed), or on a non-zero exit when ``check``.
    """
    logger.debug("run: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise FFmpegError(cmd, None, tail(e.stderr or b""), timed_out=True) from e
    if check and proc.returncode != 0:
        raise FFmpegError(cmd, proc.returncode, tail(proc.stderr), timed_out=False)
    return proc


def ffprobe_json(path: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    """``ffprobe -v error -of json ARGS path`` parsed; raises FFmpegError if ffprobe fails."""
    cmd = ["ffprobe", "-v", "error", "-of", "json", *args, str(path)]
    proc = run(cmd, timeout_s)
    out: dict[str, Any] = json.loads(proc.stdout.decode("utf-8", errors="replace") or "{}")
    return out


@functools.lru_cache(maxsize=1)
def ffmpeg_version(timeout_s: float = 30.0) -> str:
    """First line of ``ffmpeg -version`` (e.g. ``ffmpeg version 5.1.9-0+deb12u1 ...``): clip bytes
    depend on it, so the manifest records it next to the clip config."""
    out = run(["ffmpeg", "-hide_banner", "-version"], timeout_s).stdout
    return out.decode("utf-8", errors="replace").splitlines()[0].strip()


class Stream:
    """A long-lived process with piped stdin and/or stdout, stderr drained in the background.

    stderr is read by a thread into a bounded deque: an undrained stderr pipe fills up and blocks
    ffmpeg, and an unbounded buffer would grow with a chatty decoder. A timer kills the process at
    the deadline, which also unblocks a caller stuck reading or writing its pipes.

    Use as a context manager; leaving the block kills a process that is still running.
    """

    def __init__(self, cmd: list[str], timeout_s: float, stdin: bool, stdout: bool):
        self.cmd = cmd
        self._stderr: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.timed_out = False
        logger.debug("start: %s", " ".join(cmd))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self._timer = threading.Timer(timeout_s, self._on_timeout)
        self._timer.daemon = True
        self._timer.start()
        self.started = time.monotonic()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._stderr.append(line)

    def _on_timeout(self) -> None:
        if self.proc.poll() is None:
            self.timed_out = True
            self.proc.kill()

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None, "process started without stdin"
        return self.proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None, "process started without stdout"
        return self.proc.stdout

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def error(self) -> FFmpegError:
        """Wait for the process to end and describe it as an FFmpegError (for a broken pipe)."""
        self.proc.wait()
        self._reader.join(timeout=5)  # the last stderr lines carry the reason
        return FFmpegError(self.cmd, self.proc.returncode, self.stderr_tail(), self.timed_out)

    def finish(self) -> None:
        """Close stdin, wait for the exit (bounded by the timer), and raise FFmpegError on failure."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:  # it already died; its exit code and stderr tell why
                pass
        self.proc.wait()
        self._reader.join(timeout=5)
        self._timer.cancel()
        if self.timed_out or self.proc.returncode != 0:
            raise self.error()

    def kill(self) -> None:
        self._timer.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        self._reader.join(timeout=5)

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def stream_aspect(stream: dict[str, Any]) -> float:
    """Display aspect of an ffprobe stream dict: width/height times SAR, swapped if rotated 90.

    ffmpeg auto-rotates on decode, so a phone video stored 1920x1080 with a 90 degree display
    matrix reaches the filters as 1080x1920: the fitted box must be computed the same way.
    """
    w, h = float(stream["width"]), float(stream["height"])
    num, _, den = str(stream.get("sample_aspect_ratio") or "1:1").partition(":")
    if num.isdigit() and den.isdigit() and int(num) > 0 and int(den) > 0:
        w *= int(num) / int(den)
    for sd in stream.get("side_data_list") or []:
        if isinstance(sd, dict) and abs(int(float(sd.get("rotation", 0)))) % 180 == 90:
            w, h = h, w
    return w / h


def display_aspect(path: Path, timeout_s: float) -> float:
    """Display aspect ratio of the first video stream; ValueError if there is none."""
    info = ffprobe_json(
        path,
        [
            "-select_streams",
            "V:0",
            "-show_entries",
            "stream=width,height,sample_aspect_ratio:stream_side_data=rotation",
        ],
        timeout_s,
    )
    streams = info.get("streams") or []
    if not streams:
        raise ValueError(f"{path}: no video stream")
    return stream_aspect(streams[0])


def decoder_cmd(
    path: Path, fps: int, box: tuple[int, int, int, int], size: tuple[int, int], threads: int
) -> list[str]:
    """ffmpeg decoding ``path`` to raw rgb24 frames of ``size`` on stdout, at ``fps``, the picture
    scaled to ``box`` = (w, h, x, y) and padded with black around it (never stretched)."""
    w, h, x, y = box
    # fps first so the scaler only sees kept frames; area scaling avoids aliasing on big downscales.
    vf = (
        f"fps={fps},scale={w}:{h}:flags=area,setsar=1,"
        f"pad={size[0]}:{size[1]}:{x}:{y}:black,format=rgb24"
    )
    return [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-threads",
        str(threads),
        # V, not v: the first real video stream, never an attached cover picture.
        "-i",
        str(path),
        "-map",
        "0:V:0",
        "-an",
        "-sn",
        "-dn",
        "-vf",
        vf,
        "-filter_threads",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ]


def encoder_cmd(
    pattern: Path,
    size: tuple[int, int],
    fps: int,
    n_frames: int,
    *,
    crf: int,
    preset: str,
    threads: int,
) -> list[str]:
    """ffmpeg reading raw rgb24 frames of ``size`` on stdin and writing one H.264 mp4 per
    ``n_frames`` frames to ``pattern`` (a printf pattern such as ``seg%05d.mp4``)."""
    n = n_frames
    # Keyframes exactly every n frames (forced, and x264's own placement switched off) so the
    # segment muxer splits at each window; bitexact flags and one thread make output reproducible.
    return [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{size[0]}x{size[1]}",
        "-framerate",
        str(fps),
        "-i",
        "pipe:0",
        "-an",
        "-c:v",
        "libx264",
        "-preset",
        preset,
        "-crf",
        str(crf),
        "-pix_fmt",
        "yuv420p",
        "-threads",
        str(threads),
        "-x264-params",
        f"keyint={n}:min-keyint={n}:scenecut=0:threads={threads}",
        "-force_key_frames",
        f"expr:gte(n,n_forced*{n})",
        "-forced-idr",
        "1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-map_metadata",
        "-1",
        "-f",
        "segment",
        "-segment_time",
        f"{n / fps:g}",
        "-reset_timestamps",
        "1",
        "-segment_format",
        "mp4",
        str(pattern),
    ]
