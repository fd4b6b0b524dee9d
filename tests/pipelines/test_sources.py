"""Source files (YAML and text) and the keyword rules; no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.sources import (
    KeywordRules,
    SourceEntry,
    default_rules,
    load_sources,
    no_rules,
    sources_hash,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("title", "description", "ok", "why"),
    [
        ("Super Mario Bros. Speedrun Any% World Record", "", True, "ok"),
        ("Celeste chapter 3", "A full playthrough, no commentary.", True, "ok"),  # action in desc
        ("Sonic the Hedgehog movie trailer", "gameplay", False, "negative word 'movie'"),
        ("Mario gameplay", "my REACTION to the new level", False, "negative word 'reaction'"),
        ("Speedrun of my morning routine", "", False, "no platformer word in title"),
        ("Mega Man X", "music from the game", False, "no action word in title or description"),
        # whole words only: "tas" is not in "fantastic", "ost" is not in "most"
        ("Fantastic Mario", "the most fun", False, "no action word in title or description"),
        ("2D platformer gameplay", "most levels", True, "ok"),
        # the platformer word must be in the title, not only in the description
        ("Epic walkthrough", "a mario game", False, "no platformer word in title"),
    ],
)
def test_default_rules(title: str, description: str, ok: bool, why: str) -> None:
    assert default_rules().check(title, description) == (ok, why)


def test_empty_word_lists_disable_tests() -> None:
    assert no_rules().check("anything at all", "") == (True, "ok")
    only_negative = KeywordRules((), (), ("trailer",))
    assert only_negative.check("Cooking show", "")[0]
    assert only_negative.check("Game trailer", "") == (False, "negative word 'trailer'")


def test_yaml_defaults_overrides_and_rules(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(
        """
max_videos: 5
min_duration_s: 60
sources:
  - url: "ytsearch10:mario speedrun"
  - url: https://example.org/playlist?list=abc
    max_videos: 2
    max_duration_s: 600
    rules: none
  - url: https://example.org/v.mp4
    rules: default
  - url: https://example.org/watch?v=1
    rules:
      platformer_words: [Platformer]
      negative_words: []
"""
    )
    a, b, c, d = load_sources(p)
    assert a == SourceEntry("ytsearch10:mario speedrun", 5, 60.0, None, None)
    assert (b.max_videos, b.min_duration_s, b.max_duration_s) == (2, 60.0, 600.0)
    assert b.rules == no_rules()
    assert c.rules == default_rules()
    assert d.rules is not None
    assert d.rules.platformer_words == ("platformer",)
    assert d.rules.negative_words == ()
    assert d.rules.action_words == default_rules().action_words  # not overridden: kept


def test_text_file_with_comments(tmp_path: Path) -> None:
    p = tmp_path / "urls.txt"
    p.write_text(
        "# my picks\n\nhttps://example.org/a.mp4\n  https://example.org/b#t=3  # inline note\n"
        "ytsearch5:celeste speedrun\nytsearchdate3:mega man x longplay\n"
    )
    entries = load_sources(p)
    assert [e.url for e in entries] == [
        "https://example.org/a.mp4",
        "https://example.org/b#t=3",
        "ytsearch5:celeste speedrun",
        "ytsearchdate3:mega man x longplay",
    ]
    assert all(e.rules is None and e.max_videos is None for e in entries)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sources:\n  - url: https://a.org/x\n  - max_videos: 3\n", "sources[1]: missing 'url'"),
        ("sources:\n  - url: https://a.org/x\n    rules: strict\n", "sources[0]: rules must be"),
        ("sources:\n  - url: https://a.org/x\n    max_video: 3\n", "sources[0]: unknown keys"),
        ("sources:\n  - url: https://a.org/x\n    max_videos: 0\n", "max_videos must be >= 1"),
        ("sources:\n  - url: https://a.org/x\n    max_videos: 2.5\n", "must be an integer"),
        ("sources:\n  - url: https://a.org/x\n    max_videos: yes\n", "must be a number"),
        (
            "sources:\n  - url: https://a.org/x\n    min_duration_s: 90\n    max_duration_s: 30\n",
            "min_duration_s 90.0 > max_duration_s 30.0",
        ),
        (
            "sources:\n  - url: https://a.org/x\n    rules: {action_words: speedrun}\n",
            "rules.action_words must be a list",
        ),
        ("sources:\n  - url: not a url\n", "sources[0]: url contains spaces"),
        ("sources: []\n", "non-empty list"),
        ("videos:\n  - https://a.org/x\n", "top-level 'sources:'"),
        ("sources: [\n", "invalid YAML"),
    ],
)
def test_yaml_errors_name_the_entry(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError) as info:
        load_sources(p)
    assert needle in str(info.value)
    assert str(p) in str(info.value)


def test_text_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "urls.txt"
    p.write_text("https://example.org/a.mp4\n# fine\nexample.org/no-scheme.mp4\n")
    with pytest.raises(ValueError, match=r"urls\.txt:3: not a URL"):
        load_sources(p)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no URLs found"):
        load_sources(tmp_path / "empty.txt")


def test_sources_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("sources:\n  - url: https://a.org/x\n    max_videos: 3\n")
    h1 = sources_hash(load_sources(p))
    assert h1 == sources_hash(load_sources(p))
    assert len(h1) == 64
    p.write_text("sources:\n  - url: https://a.org/x\n    max_videos: 4\n")
    assert sources_hash(load_sources(p)) != h1


def test_default_sources_file_is_valid() -> None:
    entries = load_sources(REPO / "pipelines" / "data" / "sources.yaml")
    assert len(entries) >= 3
    for e in entries:
        assert e.url.startswith("ytsearch")
        assert e.max_videos is not None
        assert e.min_duration_s is not None and e.max_duration_s is not None
        # a search finds arbitrary videos: resolve must apply rules (None means the defaults)
        assert e.rules is None or e.rules.platformer_words
