"""Source lists: which URLs to search, crawl or take, and the keyword rules that choose videos.

A sources file is either YAML::

    max_videos: 50            # optional defaults for every entry
    min_duration_s: 60
    sources:
      - url: "ytsearch20:super mario bros speedrun"
        max_videos: 10
        rules: default         # default | none | {platformer_words: [...], ...}
      - url: https://example.org/clip.mp4

or text with one URL per line (``#`` starts a comment). A URL is anything yt-dlp accepts.

Rules follow the paper's keyword filter: the title names a platformer word, the title or the
description names an action word (speedrun, playthrough...), and neither names a negative word
(movie, reaction...). An entry without ``rules`` has ``rules=None``: resolve applies the default
rules to what searches, playlists and channels find, and takes a single video the user listed as
chosen. ``rules: none`` accepts everything an entry finds; ``rules: default`` (or a mapping) applies
the rules even to a single video.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

_PLATFORMER_WORDS = (
    "platformer",
    "platform game",
    "2d",
    "side-scroller",
    "sidescroller",
    "side scroller",
    "mario",
    "sonic",
    "mega man",
    "megaman",
    "celeste",
    "hollow knight",
    "rayman",
    "donkey kong",
    "kirby",
    "castlevania",
    "metroid",
    "shovel knight",
    "cuphead",
    "super meat boy",
    "ori and",
    "spelunky",
    "terraria",
    "braid",
    "contra",
    "metal slug",
    "coinrun",
    "commander keen",
    "prince of persia",
    "jump 'n' run",
    "jump and run",
    "run and gun",
)
_ACTION_WORDS = (
    "speedrun",
    "speed run",
    "playthrough",
    "play through",
    "gameplay",
    "game play",
    "walkthrough",
    "walk through",
    "let's play",
    "lets play",
    "longplay",
    "long play",
    "full game",
    "100%",
    "any%",
    "no commentary",
    "tas",
    "all levels",
    "world record",
)
_NEGATIVE_WORDS = (
    "movie",
    "film",
    "unboxing",
    "reaction",
    "reacts",
    "trailer",
    "teaser",
    "review",
    "podcast",
    "interview",
    "news",
    "tier list",
    "top 10",
    "top ten",
    "lego",
    "toy",
    "toys",
    "cosplay",
    "music video",
    "soundtrack",
    "ost",
    "lyrics",
    "animation",
    "cartoon",
    "shorts",
)
_RULE_KEYS = ("platformer_words", "action_words", "negative_words")
_ENTRY_KEYS = {"url", "max_videos", "min_duration_s", "max_duration_s", "rules"}


def _word_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    # Whole-word match so "inside" does not match "insider" and "tas" not "fantastic"; the
    # lookarounds instead of \b let words that start or end with a symbol ("100%") match too.
    if not words:
        return None
    alts = "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{alts})(?![a-z0-9])")


@dataclass(frozen=True)
class KeywordRules:
    """The paper's three keyword tests; an empty word list disables its test."""

    platformer_words: tuple[str, ...]  # the title must name one of these
    action_words: tuple[str, ...]  # the title or description must name one of these
    negative_words: tuple[str, ...]  # neither title nor description may name any of these

    def check(self, title: str, description: str) -> tuple[bool, str]:
        """Return ``(ok, reason)``; the reason names the test that failed and the word found."""
        t, d = (title or "").lower(), (description or "").lower()
        neg = _word_pattern(self.negative_words)
        if neg is not None:
            m = neg.search(t) or neg.search(d)
            if m:
                return False, f"negative word {m.group(0)!r}"
        plat = _word_pattern(self.platformer_words)
        if plat is not None and not plat.search(t):
            return False, "no platformer word in title"
        act = _word_pattern(self.action_words)
        if act is not None and not (act.search(t) or act.search(d)):
            return False, "no action word in title or description"
        return True, "ok"


def default_rules() -> KeywordRules:
    return KeywordRules(_PLATFORMER_WORDS, _ACTION_WORDS, _NEGATIVE_WORDS)


def no_rules() -> KeywordRules:
    """Rules that accept everything (``rules: none``)."""
    return KeywordRules((), (), ())


@dataclass(frozen=True)
class SourceEntry:
    url: str  # anything yt-dlp takes: video, playlist, channel, ytsearchN:query, direct link
    max_videos: int | None  # cap on chosen videos from this entry; None: no cap
    min_duration_s: float | None  # videos shorter than this are dropped at resolve
    max_duration_s: float | None  # videos longer than this are dropped at resolve
    rules: KeywordRules | None  # None: a URL chosen by the user (taken as is)


def _parse_rules(value: Any, where: str) -> KeywordRules | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == "default":
            return default_rules()
        if value.strip().lower() == "none":
            return no_rules()
        raise ValueError(f"{where}: rules must be 'default', 'none' or a mapping, got {value!r}")
    if isinstance(value, dict):
        unknown = set(value) - set(_RULE_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown rules keys {sorted(unknown)}; allowed {_RULE_KEYS}")
        base = default_rules()
        lists: dict[str, tuple[str, ...]] = {}
        for key in _RULE_KEYS:
            words = value.get(key, getattr(base, key))
            if words is None:
                words = ()
            if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
                raise ValueError(f"{where}: rules.{key} must be a list of strings")
            lists[key] = tuple(w.strip().lower() for w in words if w.strip())
        return KeywordRules(**lists)
    raise ValueError(f"{where}: rules must be 'default', 'none' or a mapping, got {value!r}")


def _opt_number(value: Any, name: str, where: str, integer: bool) -> Any:
    if value is None:
        return None
    # bool is an int subclass: "max_videos: yes" must not become 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
    if value < (1 if integer else 0):
        raise ValueError(f"{where}: {name} must be {'>= 1' if integer else '>= 0'}, got {value!r}")
    return int(value) if integer else float(value)


_SEARCH = re.compile(r"^[a-z0-9]+search(date)?(\d+|all)?:", re.IGNORECASE)  # ytsearch5:, scsearch:


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{where}: url must be a non-empty string, got {url!r}")
    url = url.strip()
    is_search = bool(_SEARCH.match(url))
    if any(c.isspace() for c in url) and not is_search:
        raise ValueError(f"{where}: url contains spaces: {url!r}")
    if "://" not in url and not is_search:
        raise ValueError(f"{where}: not a URL or a search (e.g. ytsearch10:query): {url!r}")
    return url


def _entry_from_mapping(raw: Any, defaults: dict[str, Any], where: str) -> SourceEntry:
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: an entry must be a mapping with 'url' or a URL string")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(_ENTRY_KEYS)}")
    if "url" not in raw:
        raise ValueError(f"{where}: missing 'url'")
    merged = {**defaults, **raw}
    entry = SourceEntry(
        url=_check_url(merged["url"], where),
        max_videos=_opt_number(merged.get("max_videos"), "max_videos", where, integer=True),
        min_duration_s=_opt_number(merged.get("min_duration_s"), "min_duration_s", where, False),
        max_duration_s=_opt_number(merged.get("max_duration_s"), "max_duration_s", where, False),
        rules=_parse_rules(merged.get("rules"), where),
    )
    lo, hi = entry.min_duration_s, entry.max_duration_s
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{where}: min_duration_s {lo} > max_duration_s {hi}")
    return entry


def _load_yaml(text: str, path: Path) -> list[SourceEntry]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(doc, dict) or "sources" not in doc:
        raise ValueError(f"{path}: YAML sources file needs a top-level 'sources:' list")
    raw_entries = doc["sources"]
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ValueError(f"{path}: 'sources' must be a non-empty list")
    defaults = {k: v for k, v in doc.items() if k != "sources"}
    unknown = set(defaults) - (_ENTRY_KEYS - {"url"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    return [
        _entry_from_mapping(raw, defaults, f"{path}: sources[{i}]")
        for i, raw in enumerate(raw_entries)
    ]


def _load_text(text: str, path: Path) -> list[SourceEntry]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        url = _check_url(line, f"{path}:{lineno}")
        entries.append(SourceEntry(url, None, None, None, None))
    if not entries:
        raise ValueError(f"{path}: no URLs found")
    return entries


def load_sources(path: str | Path) -> list[SourceEntry]:
    """Read a YAML (``.yaml``/``.yml`` or a file starting with ``sources:``) or text sources file.

    Raises:
        ValueError: naming the file and the entry index or line number of a bad entry.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    is_yaml = p.suffix.lower() in (".yaml", ".yml") or re.search(r"^sources\s*:", text, re.M)
    entries = _load_yaml(text, p) if is_yaml else _load_text(text, p)
    logger.debug("loaded %d source entries from %s", len(entries), p)
    return entries


def sources_hash(entries: list[SourceEntry]) -> str:
    """sha256 of the entries' canonical JSON: equal source lists give equal hashes."""
    blob = json.dumps([asdict(e) for e in entries], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
