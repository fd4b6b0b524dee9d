"""Resolve a source entry to the videos to download, using metadata only (nothing is downloaded).

Searches, playlists and channels are listed flat first (``extract_flat``), so a title that fails
the rules or a known duration out of bounds costs no further request; the rest are fetched one by
one for their full title, description and duration, checked again, and kept until ``max_videos``.
Every video or URL not kept becomes a :class:`Rejection` with the real reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from yt_dlp import YoutubeDL
from yt_dlp.utils import unsmuggle_url

from pipelines.download import DownloadConfig, YtdlpLog, classify, error_text, ytdlp_options
from pipelines.ids import video_id
from pipelines.ledger import Ledger
from pipelines.sources import KeywordRules, SourceEntry, default_rules

logger = logging.getLogger(__name__)

_MAX_DEPTH = 2  # channel -> tab playlist -> videos; deeper nesting is not followed
_OWN_KEYS = {"_type", "url", "id", "extractor", "extractor_key", "ie_key"}
_FILL_KEYS = ("title", "description", "duration")


@dataclass(frozen=True)
class Candidate:
    """One video found by resolving a source entry."""

    video_id: str
    url: str  # what download hands to yt-dlp
    source_url: str  # the entry's URL
    title: str
    description: str
    duration_s: float | None  # None when unknown (direct links): probe checks it later
    extractor: str  # yt-dlp's extractor_key, e.g. "Youtube", "Generic"
    order: tuple[int, int]  # (entry index, index in entry)


@dataclass(frozen=True)
class Rejection:
    """A video or URL dropped or failed at resolve."""

    video_id: str | None  # None when the failure happened before any video was known
    url: str
    source_url: str
    decision: str  # "drop" (rules, duration) or "error" (yt-dlp failed)
    reason: str  # an error class: filtered_by_rule, too_short, too_long, not_found, ...
    message: str  # yt-dlp's own error text, or the rule/bound that failed


@dataclass
class _Walk:
    """State of one entry's resolution, shared by the nested playlist walk."""

    entry: SourceEntry
    index: int
    cfg: DownloadConfig
    rules: KeywordRules
    cands: list[Candidate] = field(default_factory=list)
    rejs: list[Rejection] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    n: int = 0  # position within the entry, counting every video seen

    def full(self) -> bool:
        return self.entry.max_videos is not None and len(self.cands) >= self.entry.max_videos


def _extract(
    ydl: YoutubeDL, url: str, cfg: DownloadConfig, ie_key: str | None = None
) -> dict[str, Any]:
    """Metadata for ``url`` (no processing, no download), retrying transient errors like
    download does: a 5xx or a timeout on a metadata page says nothing about the video."""
    attempt = 0
    while True:
        attempt += 1
        try:
            info = ydl.extract_info(url, download=False, process=False, ie_key=ie_key)
            return dict(info or {})
        except Exception as e:
            cls, transient = classify(e)
            if not transient or attempt > cfg.retries:
                raise
            delay = min(cfg.retry_max_delay_s, cfg.retry_base_delay_s * 2 ** (attempt - 1))
            logger.info("%s: %s, retrying in %.2fs: %s", url, cls, delay, error_text(e))
            time.sleep(delay)


def _duration_check(entry: SourceEntry, duration: float | None) -> tuple[str, str] | None:
    if duration is None:
        return None
    if entry.min_duration_s is not None and duration < entry.min_duration_s:
        return "too_short", f"duration {duration:.1f} s < min_duration_s {entry.min_duration_s}"
    if entry.max_duration_s is not None and duration > entry.max_duration_s:
        return "too_long", f"duration {duration:.1f} s > max_duration_s {entry.max_duration_s}"
    return None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _judge(
    w: _Walk, info: dict[str, Any], url: str, rules: KeywordRules | None, flat: bool
) -> tuple[str, str] | None:
    """(reason, message) if the video is to be dropped; with ``flat`` metadata only what the
    partial data can already prove (the description may still hold the action word)."""
    title, desc = str(info.get("title") or ""), str(info.get("description") or "")
    if rules is not None and (title or not flat):
        ok, why = rules.check(title, desc)
        if not ok and not (flat and why.startswith("no action word")):
            return "filtered_by_rule", f"{why}: title {title!r}"
    return _duration_check(w.entry, _num(info.get("duration")))


def _add_video(w: _Walk, info: dict[str, Any], url: str, rules: KeywordRules | None) -> None:
    # Hash the URL without yt-dlp's smuggled data (RSS GUIDs ride in its fragment) so the ID
    # depends on the link alone.
    vid = video_id(
        info.get("extractor_key") or info.get("extractor"), info.get("id"), unsmuggle_url(url)[0]
    )
    if vid in w.seen:  # the same video listed twice in one entry
        return
    w.seen.add(vid)
    w.n += 1
    drop = _judge(w, info, url, rules, flat=False)
    if drop is not None:
        w.rejs.append(Rejection(vid, url, w.entry.url, "drop", drop[0], drop[1]))
        return
    w.cands.append(
        Candidate(
            video_id=vid,
            url=str(info.get("webpage_url") or url),
            source_url=w.entry.url,
            title=str(info.get("title") or ""),
            description=str(info.get("description") or ""),
            duration_s=_num(info.get("duration")),
            extractor=str(info.get("extractor_key") or info.get("extractor") or ""),
            order=(w.index, w.n - 1),
        )
    )


_LISTING_IE = re.compile(r"(tab|playlist|channel|user|search|feed)$", re.IGNORECASE)


def _is_listing(item: dict[str, Any]) -> bool:
    return bool(_LISTING_IE.search(str(item.get("ie_key") or ""))) or item.get("_type") in (
        "playlist",
        "multi_video",
    )


def _walk(ydl: YoutubeDL, w: _Walk, entries: Iterable[Any], depth: int) -> None:
    for item in entries:
        if w.full():
            return  # entries may be a lazy generator: stop before fetching more pages
        if not isinstance(item, dict):
            continue
        url = str(item.get("url") or item.get("webpage_url") or "")
        # Without an id (RSS items) this is the URL hash, as the generic extractor's will be.
        flat_id = video_id(item.get("ie_key"), item.get("id"), unsmuggle_url(url)[0])
        if flat_id in w.seen:
            continue
        # A listing's entry may itself be a listing (a channel's tabs): judge only videos.
        drop = None if _is_listing(item) else _judge(w, item, url, w.rules, flat=True)
        if drop is not None:
            w.seen.add(flat_id)
            w.n += 1
            w.rejs.append(Rejection(flat_id, url, w.entry.url, "drop", drop[0], drop[1]))
            continue
        try:
            info = _extract(ydl, url, w.cfg, item.get("ie_key"))
        except Exception as e:  # yt-dlp errors become data; the walk goes on
            cls, _ = classify(e)
            w.rejs.append(Rejection(flat_id, url, w.entry.url, "error", cls, error_text(e)))
            continue
        if info.get("_type") in ("playlist", "multi_video"):
            if depth < _MAX_DEPTH:
                _walk(ydl, w, info.get("entries") or [], depth + 1)
            continue
        if item.get("_type") == "url_transparent":
            # As yt-dlp itself does: the listing's fields (an RSS item's title, description,
            # duration) override what the target page says of itself.
            info |= {k: v for k, v in item.items() if v is not None and k not in _OWN_KEYS}
        else:
            info |= {k: item[k] for k in _FILL_KEYS if info.get(k) is None and item.get(k)}
        _add_video(w, info, url, w.rules)


def resolve_entry(
    entry: SourceEntry, index: int, cfg: DownloadConfig, *, ledger: Ledger | None = None
) -> tuple[list[Candidate], list[Rejection]]:
    """Find the videos of one source entry and decide which to download, in order.

    Args:
        entry: the source entry (a search, playlist, channel, video or direct link).
        index: the entry's position in the sources file (first half of ``Candidate.order``).
        cfg: yt-dlp settings (timeouts, file URLs, cookies).
        ledger: if given, every candidate (``resolved``), drop (``filtered``) and error
            (``failed``) is recorded.
    Returns:
        Candidates in the entry's order (at most ``entry.max_videos``) and rejections.
    """
    w = _Walk(entry, index, cfg, entry.rules or default_rules())
    if entry.url.lower().startswith("file:") and not cfg.enable_file_urls:
        msg = f"file:// URL refused (enable_file_urls is off): {entry.url}"
        w.rejs.append(Rejection(None, entry.url, entry.url, "error", "unsupported", msg))
    else:
        log = YtdlpLog()
        with YoutubeDL(ytdlp_options(cfg, log) | {"extract_flat": "in_playlist"}) as ydl:
            try:
                info = _extract(ydl, entry.url, cfg)
                for _ in range(3):  # a URL that only points to another (redirects, short links)
                    if info.get("_type") not in ("url", "url_transparent"):
                        break
                    info = _extract(ydl, info["url"], cfg, info.get("ie_key"))
            except Exception as e:
                cls, _ = classify(e)
                w.rejs.append(Rejection(None, entry.url, entry.url, "error", cls, error_text(e)))
            else:
                if info.get("_type") in ("playlist", "multi_video"):
                    _walk(ydl, w, info.get("entries") or [], 1)
                else:
                    # A video listed by itself is the user's choice unless the entry sets rules.
                    _add_video(w, info, entry.url, entry.rules)
    logger.info("resolved %s: %d candidates, %d rejected", entry.url, len(w.cands), len(w.rejs))
    if ledger is not None:
        record_resolution(ledger, w.cands, w.rejs)
    return w.cands, w.rejs


def record_resolution(ledger: Ledger, cands: list[Candidate], rejs: list[Rejection]) -> None:
    """Write resolve's outcome to the ledger (a downloaded video stays ``downloaded``)."""
    for c in cands:
        ledger.upsert(c.video_id, c.url, state="resolved", source_url=c.source_url)
    for r in rejs:
        ledger.upsert(
            r.video_id,
            r.url,
            state="filtered" if r.decision == "drop" else "failed",
            source_url=r.source_url,
            error_class=r.reason,
            message=r.message,
        )
