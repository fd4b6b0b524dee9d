"""Identifiers that become file names and WebDataset keys.

Contract (DESIGN.md): ``video_id`` is the yt-dlp extractor plus its id, or for direct links a hash of
the URL; ``clip_id`` is ``{video_id}_{start_ms:08d}``. Titles never become names. IDs contain only
``[A-Za-z0-9_-]``: no dots (WebDataset splits keys at the first dot) and no path separators.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SAFE_FULL = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# yt-dlp's generic extractor names a direct link after its file name, which collides across hosts
# and is not ours to trust: such links are named after a hash of the URL instead.
_URL_HASHED_EXTRACTORS = {"generic", "http", "https", "file", ""}


def url_hash(url: str, n: int = 16) -> str:
    """Hex prefix of sha256(url): stable across runs and machines."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:n]


def video_id(extractor: str | None, ident: str | None, url: str) -> str:
    """The video ID: ``{extractor}-{id}`` for real extractors, ``url-{sha256(url)[:16]}`` otherwise.

    Args:
        extractor: yt-dlp's ``extractor_key`` or ``extractor`` (e.g. ``Youtube``), or None.
        ident: yt-dlp's ``id`` for the video, or None.
        url: the video's URL, used for direct links and when the extractor gives no id.
    """
    ex = (extractor or "").strip().lower()
    if ex in _URL_HASHED_EXTRACTORS or not ident:
        return f"url-{url_hash(url)}"
    name = f"{_UNSAFE.sub('', ex)}-{_UNSAFE.sub('_', ident)}"
    if len(name) > 100:  # keep names short and still unique
        name = f"{name[:80]}-{url_hash(name, 12)}"
    return name


def clip_id(vid: str, start_ms: int) -> str:
    """``{video_id}_{start_ms:08d}``; raises ValueError for a negative start or an unsafe video ID."""
    if start_ms < 0:
        raise ValueError(f"start_ms must be >= 0, got {start_ms}")
    check_safe(vid)
    return f"{vid}_{start_ms:08d}"


def check_safe(ident: str) -> str:
    """Return ``ident`` if it is safe as a file name and WebDataset key, else raise ValueError."""
    if not _SAFE_FULL.match(ident):
        raise ValueError(f"unsafe identifier {ident!r}: only [A-Za-z0-9_-], 1-128 characters")
    return ident
