"""Download one resolved video with yt-dlp's Python API: video only, the smallest usable format.

``download(c, dest_dir, cfg, archive)`` writes ``dest_dir/{video_id}.{ext}`` or returns why not.
Failures are data (a :class:`DownloadResult` with an error class and yt-dlp's real message), never
exceptions. Only transient classes (``timeout``, ``network``, 5xx ``http_error``) are retried, with
exponential backoff. yt-dlp's download archive is kept beside the project's ledger; a video that is
both on disk and in the archive is skipped without any network request.

This module also holds what resolve shares with it: :class:`DownloadConfig`, :func:`classify` and
the yt-dlp option builder with its logging adapter.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yt_dlp import YoutubeDL
from yt_dlp.networking.exceptions import HTTPError, IncompleteRead
from yt_dlp.utils import ContentTooShortError, GeoRestrictedError, UnsupportedError

from pipelines.atomic import TMP_PREFIX
from pipelines.ids import check_safe, video_id

if TYPE_CHECKING:
    from pipelines.ledger import Ledger
    from pipelines.resolve import Candidate

logger = logging.getLogger(__name__)

ERROR_CLASSES = (
    "unavailable",
    "private",
    "blocked",
    "rate_limited",
    "http_error",
    "not_found",
    "timeout",
    "too_large",
    "unsupported",
    "no_video_format",
    "filtered_by_rule",
    "too_short",
    "too_long",
    "network",
    "unknown",
)


@dataclass(frozen=True)
class DownloadConfig:
    """How resolve and download talk to yt-dlp. Sizes in pixels, bytes and seconds."""

    min_width: int = 160  # narrowest usable frame: the clip width
    min_height: int = 90  # lowest usable frame: the clip height
    max_height: int = 360  # decoding cost grows with resolution: never fetch more if avoidable
    format: str | None = None  # a yt-dlp format selector that replaces the one built from the above
    format_sort: tuple[str, ...] = ("+res", "+size", "+br", "+fps")  # smallest first
    max_filesize: int | None = 512 * 1024**2  # bytes; larger downloads fail as too_large
    socket_timeout_s: float = 30.0  # per connection read/connect timeout: a stall fails as timeout
    retries: int = 3  # extra attempts for transient errors (timeout, network, 5xx)
    retry_base_delay_s: float = 2.0  # backoff: base * 2**(attempt - 1) ...
    retry_max_delay_s: float = 120.0  # ... capped at this
    ratelimit: int | None = None  # bytes/s per download; None: unlimited
    # After an HTTP 429 the host is paused for its Retry-After, or this long without one.
    rate_limited_pause_s: float = 3600.0
    max_concurrent: int = 2  # downloads at once in this process (all threads share the limit)
    enable_file_urls: bool = False  # allow file:// URLs (yt-dlp disables them for safety)
    sleep_requests_s: float = 0.0  # pause between yt-dlp's HTTP requests (YouTube rate limits)
    cookiefile: str | None = None  # Netscape cookie file for sites that demand a session

    def __post_init__(self) -> None:
        if self.min_width < 1 or self.min_height < 1:
            raise ValueError("min_width and min_height must be >= 1")
        if self.max_height < self.min_height:
            raise ValueError(f"max_height {self.max_height} < min_height {self.min_height}")
        if self.max_filesize is not None and self.max_filesize < 1:
            raise ValueError("max_filesize must be >= 1 byte or None")
        if self.socket_timeout_s <= 0:
            raise ValueError("socket_timeout_s must be > 0")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.retry_base_delay_s < 0 or self.retry_max_delay_s < self.retry_base_delay_s:
            raise ValueError("need 0 <= retry_base_delay_s <= retry_max_delay_s")
        if self.ratelimit is not None and self.ratelimit < 1:
            raise ValueError("ratelimit must be >= 1 byte/s or None")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if self.sleep_requests_s < 0:
            raise ValueError("sleep_requests_s must be >= 0")
        if self.format is not None and not self.format.strip():
            raise ValueError("format must be a non-empty selector or None")

    def format_selector(self) -> str:
        """Video only, within bounds; then the smallest above the bounds; then anything.

        ``>=?``/``<=?`` let formats without size metadata (direct links) pass, and with the
        ascending ``format_sort`` each alternative picks its smallest format.
        """
        if self.format:
            return self.format
        lo = f"[height>=?{self.min_height}][width>=?{self.min_width}]"
        hi = f"[height<=?{self.max_height}]"
        return f"bv{lo}{hi}/bv*{lo}{hi}/bv*{lo}/bv*/b"


class YtdlpLog:
    """yt-dlp's ``logger`` parameter: keeps it quiet, routes it to logging, remembers the lines.

    The lines matter: yt-dlp reports a file over ``max_filesize`` only as a message, not an error.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, msg: str) -> None:
        self.lines.append(msg)
        logger.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        self.debug(msg)

    def warning(self, msg: str) -> None:
        self.lines.append(msg)
        logger.info("yt-dlp warning: %s", msg)

    def error(self, msg: str) -> None:
        # Errors also arrive as the raised exception, which the caller records as data.
        self.lines.append(msg)
        logger.debug("yt-dlp error: %s", msg)


def ytdlp_options(cfg: DownloadConfig, log: YtdlpLog) -> dict[str, Any]:
    """Options shared by resolve and download."""
    opts: dict[str, Any] = {
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "logger": log,
        "socket_timeout": cfg.socket_timeout_s,
        "enable_file_urls": cfg.enable_file_urls,
        # Our own loop retries transient errors with backoff and counts attempts honestly.
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "noplaylist": False,
        "color": {"stdout": "no_color", "stderr": "no_color"},
    }
    if cfg.sleep_requests_s:
        opts["sleep_interval_requests"] = cfg.sleep_requests_s
    if cfg.cookiefile:
        opts["cookiefile"] = cfg.cookiefile
    return opts


_MESSAGE_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cls, re.compile(pat, re.IGNORECASE))
    for cls, pat in (
        ("too_large", r"max-filesize|larger than max|too large"),
        ("not_found", r"http error (404|410)\b|not found"),
        ("rate_limited", r"http error 429\b|too many requests"),
        (
            "blocked",
            r"http error (401|403)\b|sign in to confirm|not a bot|geo.?restrict"
            r"|not available in your country|forbidden",
        ),
        ("http_error", r"http error \d{3}\b"),
        ("timeout", r"timed? ?out|timeout"),
        (
            "network",
            r"connection (reset|refused|aborted)|remote end closed|broken pipe"
            r"|incomplete ?read|bytes read|content too short|did not get any data"
            r"|errno 10[34]\b|network is unreachable|name or service not known"
            r"|temporary failure in name resolution",
        ),
        ("private", r"private video|\bis private\b"),
        ("no_video_format", r"requested format is not available|no video formats"),
        ("unsupported", r"unsupported url|file:// urls are disabled|unsupported"),
        (
            "unavailable",
            r"unavailable|not available|been removed|terminated|does not exist"
            r"|members.only|copyright",
        ),
    )
)


def error_text(exc: BaseException) -> str:
    """yt-dlp's message as raised, minus the carriage returns of its progress line."""
    return str(exc).replace("\r", "").strip() or type(exc).__name__


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (yt-dlp nests the real cause a few levels down)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        exc_info = getattr(e, "exc_info", None)
        nested = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
        cause = getattr(e, "cause", None)
        todo += [nested, cause if isinstance(cause, BaseException) else None]
        todo += [e.__cause__, e.__context__]
    return seen


def classify(error: BaseException | str) -> tuple[str, bool]:
    """Map a yt-dlp exception (or message) to ``(error_class, transient)``.

    Exception types decide first (HTTP status, timeouts, dropped connections); the message text
    decides for what yt-dlp only reports in words (private, unavailable, max-filesize...).
    """
    if isinstance(error, BaseException):
        for e in _causes(error):
            if isinstance(e, HTTPError):
                if e.status in (404, 410):
                    return "not_found", False
                if e.status == 429:  # not retried at once: the host is paused (build.fetch_video)
                    return "rate_limited", False
                if e.status in (401, 403):
                    return "blocked", False
                return "http_error", 500 <= e.status < 600
            if isinstance(e, TimeoutError):
                return "timeout", True
            if isinstance(
                e,
                IncompleteRead
                | ContentTooShortError
                | ConnectionError
                | http.client.IncompleteRead,
            ):
                return "network", True
            if isinstance(e, GeoRestrictedError):
                return "blocked", False
            if isinstance(e, UnsupportedError):
                return "unsupported", False
        text = " ".join(str(e) for e in _causes(error))
    else:
        text = error
    for cls, pat in _MESSAGE_CLASSES:
        if pat.search(text):
            if cls == "http_error":
                m = re.search(r"http error (\d{3})", text, re.IGNORECASE)
                return cls, bool(m and m.group(1).startswith("5"))
            return cls, cls in ("timeout", "network")
    return "unknown", False


def retry_after_s(error: BaseException) -> float | None:
    """Seconds an HTTP 429 answer asked to wait (its Retry-After: seconds or an HTTP date)."""
    for e in _causes(error):
        if isinstance(e, HTTPError) and e.status == 429:
            value = (e.response.headers.get("Retry-After") or "").strip()
            if value.isdigit():
                return float(value)
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            return max(0.0, when.timestamp() - time.time())
    return None


@dataclass(frozen=True)
class DownloadResult:
    video_id: str
    ok: bool
    path: str | None  # dest_dir/{video_id}.{ext} when ok
    error_class: str | None  # one of ERROR_CLASSES when not ok
    message: str  # yt-dlp's own error text when not ok; what happened when ok
    attempts: int  # yt-dlp attempts made by this call (0: skipped, already downloaded)
    bytes: int
    format_id: str | None
    width: int | None
    height: int | None
    transient: bool = False  # a failure worth retrying later (timeout, network, 5xx)
    retry_after_s: float | None = None  # what an HTTP 429 answer asked for


_limiter_lock = threading.Lock()
_limiter: tuple[int, threading.BoundedSemaphore] | None = None


def _slots(n: int) -> threading.BoundedSemaphore:
    """The process-wide download semaphore (sized by the first config; resized between runs)."""
    global _limiter
    with _limiter_lock:
        if _limiter is None or _limiter[0] != n:
            if _limiter is not None:
                logger.warning("download concurrency limit changed from %d to %d", _limiter[0], n)
            _limiter = (n, threading.BoundedSemaphore(n))
        return _limiter[1]


def _existing(dest_dir: Path, vid: str) -> Path | None:
    for p in sorted(dest_dir.glob(f"{vid}.*")):
        if p.is_file() and p.stat().st_size > 0 and not p.name.endswith(".part"):
            return p
    return None


def _archive_has(archive: Path, c: Candidate) -> bool:
    """Whether yt-dlp's archive lists ``c`` (lines are ``"{extractor} {id}"``)."""
    if not archive.exists():
        return False
    extractor = c.extractor.lower()
    for line in archive.read_text(encoding="utf-8", errors="replace").splitlines():
        ex, _, ident = line.strip().partition(" ")
        # Direct links are archived under our URL-hash ID (see _attempt); others under the
        # extractor's own id, from which our video_id is made.
        if ident == c.video_id:
            return True
        if ex == extractor and ex != "generic" and video_id(ex, ident, c.url) == c.video_id:
            return True
    return False


def _fail(
    c: Candidate,
    cls: str,
    message: str,
    attempts: int,
    transient: bool = False,
    retry_after: float | None = None,
) -> DownloadResult:
    return DownloadResult(
        c.video_id, False, None, cls, message, attempts, 0, None, None, None, transient, retry_after
    )


def _attempt(
    c: Candidate, dest_dir: Path, cfg: DownloadConfig, archive: Path | None, attempt: int
) -> tuple[DownloadResult, bool]:
    """One yt-dlp run; returns the result and whether its failure is transient."""
    log = YtdlpLog()
    stem = f"{TMP_PREFIX}{c.video_id}.{uuid.uuid4().hex[:8]}"
    opts = ytdlp_options(cfg, log) | {
        "format": cfg.format_selector(),
        "format_sort": list(cfg.format_sort),
        "outtmpl": {"default": str(dest_dir / f"{stem}.%(ext)s")},
        "max_filesize": cfg.max_filesize,
        "ratelimit": cfg.ratelimit,
        "overwrites": True,
        "writeinfojson": False,
    }
    if archive is not None:
        opts["download_archive"] = str(archive)

    def cleanup() -> None:
        for p in dest_dir.glob(f"{stem}*"):
            p.unlink(missing_ok=True)

    try:
        with YoutubeDL(opts) as ydl:
            ie = ydl.extract_info(c.url, download=False, process=False)
            if ie.get("_type") in ("playlist", "multi_video"):
                # Downloading it would fetch every entry under one ID: resolve lists them.
                msg = f"URL is a playlist, not a video (resolve it first): {c.url}"
                return _fail(c, "unsupported", msg, attempt), False
            if str(ie.get("extractor_key", "")).lower() == "generic":
                # The generic extractor names a direct link after its basename, which collides
                # in the archive across hosts and folders: archive it under our URL-hash ID.
                ie["id"] = c.video_id
            info = ydl.process_ie_result(ie, download=True)
    except Exception as e:  # yt-dlp raises DownloadError and friends; all become data
        cleanup()
        cls, transient = classify(e)
        return _fail(c, cls, error_text(e), attempt, transient, retry_after_s(e)), transient

    done = [p for p in dest_dir.glob(f"{stem}.*") if not p.name.endswith((".part", ".ytdl"))]
    if not done:
        cleanup()
        lines = [line.replace("\r", "").strip() for line in log.lines]
        # yt-dlp reports some refusals (max-filesize) only as a line of output: keep that line.
        for line in reversed(lines):
            cls, transient = classify(line)
            if cls != "unknown":
                return _fail(c, cls, line, attempt, transient), transient
        return _fail(
            c, "unknown", "yt-dlp wrote no file: " + " | ".join(lines[-5:]), attempt
        ), False
    tmp = done[0]
    size = tmp.stat().st_size
    if cfg.max_filesize is not None and size > cfg.max_filesize:
        # yt-dlp checks Content-Length only; a server that sends none can still overrun.
        cleanup()
        msg = f"downloaded {size} bytes > max_filesize {cfg.max_filesize}"
        return _fail(c, "too_large", msg, attempt), False
    final = dest_dir / f"{c.video_id}{tmp.suffix}"
    os.replace(tmp, final)
    cleanup()
    info = info or {}
    return DownloadResult(
        c.video_id,
        True,
        str(final),
        None,
        f"downloaded {size} bytes",
        attempt,
        size,
        info.get("format_id"),
        info.get("width"),
        info.get("height"),
    ), False


def download(
    c: Candidate,
    dest_dir: Path,
    cfg: DownloadConfig,
    archive: Path,
    *,
    ledger: Ledger | None = None,
) -> DownloadResult:
    """Download ``c`` to ``dest_dir/{video_id}.{ext}``, retrying transient failures.

    Args:
        c: a video chosen by resolve.
        dest_dir: the downloads folder (``work/downloads``).
        cfg: formats, limits, retries.
        archive: yt-dlp's download archive (``work/ytdlp-archive.txt``).
        ledger: if given, the outcome is recorded (state downloaded/failed, attempts, message).
    Returns:
        The result; a failure carries the error class and yt-dlp's own message.
    """
    check_safe(c.video_id)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    existing = _existing(dest_dir, c.video_id)
    archived = _archive_has(archive, c)
    row = ledger.get(c.video_id) if ledger is not None and existing is not None else None
    # On disk and recorded as done by yt-dlp's archive or by our ledger: no request at all.
    recorded = archived or (
        row is not None and row.state == "downloaded" and row.path == str(existing)
    )
    if existing is not None and recorded:
        logger.info("%s already downloaded: %s", c.video_id, existing)
        size = existing.stat().st_size
        result = DownloadResult(
            c.video_id, True, str(existing), None, "already downloaded", 0, size, None, None, None
        )
    elif c.url.lower().startswith("file:") and not cfg.enable_file_urls:
        result = _fail(
            c, "unsupported", f"file:// URL refused (enable_file_urls is off): {c.url}", 0
        )
    else:
        if archived:
            logger.warning("%s is in the archive but not on disk: downloading again", c.video_id)
        result = _with_retries(c, dest_dir, cfg, None if archived else archive)
    if ledger is not None:
        ledger.upsert(
            c.video_id,
            c.url,
            state="downloaded" if result.ok else "failed",
            source_url=c.source_url,
            error_class=result.error_class,
            message=result.message,
            add_attempts=result.attempts,
            path=result.path,
        )
    return result


def _with_retries(
    c: Candidate, dest_dir: Path, cfg: DownloadConfig, archive: Path | None
) -> DownloadResult:
    attempt = 0
    while True:
        attempt += 1
        with _slots(cfg.max_concurrent):
            result, transient = _attempt(c, dest_dir, cfg, archive, attempt)
        if result.ok:
            logger.info("%s downloaded (%d bytes, attempt %d)", c.video_id, result.bytes, attempt)
            return result
        if not transient or attempt > cfg.retries:
            logger.warning(
                "%s failed (%s) after %d attempt(s): %s",
                c.video_id,
                result.error_class,
                attempt,
                result.message,
            )
            return result
        delay = min(cfg.retry_max_delay_s, cfg.retry_base_delay_s * 2 ** (attempt - 1))
        logger.info(
            "%s: %s, retrying in %.2fs: %s", c.video_id, result.error_class, delay, result.message
        )
        time.sleep(delay)
