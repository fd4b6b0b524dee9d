"""Resolve and download for real: yt-dlp talks HTTP to a server on 127.0.0.1 (generic extractor).

Only the internet is missing: the server serves ffmpeg-made videos, an RSS playlist with titles,
descriptions and durations, and misbehaving routes (404, 500-then-ok, dropped, stalled).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yt_dlp import YoutubeDL

import pipelines.download as dl_mod
from pipelines.download import (
    DownloadConfig,
    DownloadResult,
    YtdlpLog,
    classify,
    download,
    ytdlp_options,
)
from pipelines.ids import check_safe, url_hash, video_id
from pipelines.ledger import Ledger
from pipelines.resolve import Candidate, resolve_entry
from pipelines.sources import SourceEntry, no_rules
from tests.helpers.servers import Server, make_video, serve_dir

FAST = DownloadConfig(retries=3, retry_base_delay_s=0.01, retry_max_delay_s=0.05)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("src") / "master.mp4", seconds=20, size="320x180")


@pytest.fixture
def site(tmp_path: Path, video: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    # One file per test case so the server's per-path counters never mix cases.
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4", "f.mp4", "My Title?.mp4"):
        os.link(video, root / name)
    return root


@pytest.fixture
def srv(site: Path) -> Iterator[Server]:
    with serve_dir(site, stall_s=10, flaky_failures=2) as s:
        yield s


def direct(url: str) -> Candidate:
    """A candidate as resolve makes it for a direct link, without resolve's own requests."""
    return Candidate(url_hash_id(url), url, url, "t", "", None, "Generic", (0, 0))


def url_hash_id(url: str) -> str:
    return video_id("generic", "ignored", url)


def entry(url: str, **kw: object) -> SourceEntry:
    fields: dict[str, object] = dict(
        max_videos=None, min_duration_s=None, max_duration_s=None, rules=None
    )
    fields.update(kw)
    return SourceEntry(url, **fields)  # type: ignore[arg-type]


def test_direct_link_resolve_download_then_skip(tmp_path: Path, srv: Server, site: Path) -> None:
    led = Ledger(tmp_path / "work" / "ledger.sqlite")
    url = srv.url("My Title?.mp4".replace("?", "%3F"))
    cands, rejs = resolve_entry(entry(url), 3, FAST, ledger=led)
    assert rejs == []
    [c] = cands
    # The ID is the URL hash: safe as a file name, never the title or the file name.
    assert c.video_id == f"url-{url_hash(url)}" == check_safe(c.video_id)
    assert "Title" not in c.video_id and c.title == "My Title?"
    assert c.order == (3, 0) and c.source_url == url
    assert led.get(c.video_id).state == "resolved"  # type: ignore[union-attr]

    dest, archive = tmp_path / "work" / "downloads", tmp_path / "work" / "ytdlp-archive.txt"
    r = download(c, dest, FAST, archive, ledger=led)
    assert r.ok and r.error_class is None and r.attempts == 1
    assert r.path == str(dest / f"{c.video_id}.mp4")
    assert Path(r.path).read_bytes() == (site / "My Title?.mp4").read_bytes()
    assert r.bytes == (site / "My Title?.mp4").stat().st_size
    assert sorted(p.name for p in dest.iterdir()) == [f"{c.video_id}.mp4"]  # no temporaries
    assert archive.read_text().split() == ["generic", c.video_id]
    row = led.get(c.video_id)
    assert row is not None and (row.state, row.attempts, row.path) == ("downloaded", 1, r.path)

    gets = srv.count("My Title?.mp4")
    again = download(c, dest, FAST, archive, ledger=led)
    assert again.ok and again.attempts == 0 and again.path == r.path
    assert srv.count("My Title?.mp4") == gets  # no request at all the second time
    # Resolving again does not make the video look undone.
    resolve_entry(entry(url), 0, FAST, ledger=led)
    assert led.get(c.video_id).state == "downloaded"  # type: ignore[union-attr]


def test_404_is_not_found_and_not_retried(tmp_path: Path, srv: Server) -> None:
    led = Ledger(tmp_path / "ledger.sqlite")
    url = srv.url("a.mp4", route="404")
    cands, [rej] = resolve_entry(entry(url), 0, FAST, ledger=led)
    assert cands == [] and (rej.decision, rej.reason) == ("error", "not_found")
    assert "HTTP Error 404" in rej.message  # yt-dlp's own words
    assert srv.count("a.mp4", route="404") == 1
    row = led.get_url(url)
    assert row is not None and (row.state, row.error_class) == ("failed", "not_found")
    assert row.message == rej.message

    r = download(direct(url), tmp_path / "dl", FAST, tmp_path / "archive.txt", ledger=led)
    assert (r.ok, r.error_class, r.attempts, r.transient) == (False, "not_found", 1, False)
    assert "HTTP Error 404" in r.message
    assert srv.count("a.mp4", route="404") == 2


def test_429_pauses_the_host_for_every_worker_and_writes_no_record(
    tmp_path: Path, srv: Server
) -> None:
    from pipelines.build import BuildConfig, Layout, RateLimitedError, fetch_video, paused_until

    sources = tmp_path / "sources.txt"
    sources.write_text("")
    cfg = BuildConfig(out=str(tmp_path / "data"), sources=sources, download=FAST)
    layout = Layout.of(cfg)
    c = direct(srv.url("c.mp4", route="429"))
    r = download(c, tmp_path / "dl", FAST, tmp_path / "archive.txt")
    # asked once, not hammered with retries; the server's Retry-After is kept
    assert (r.ok, r.error_class, r.attempts, r.retry_after_s) == (False, "rate_limited", 1, 120.0)
    assert srv.count("c.mp4", route="429") == 1
    with pytest.raises(RateLimitedError, match="rate_limited"):
        fetch_video(c, cfg, "run1")
    until = paused_until(layout, "127.0.0.1")
    assert until is not None and 100 < until - time.time() <= 120
    # Another video on the paused host: refused without a request, by any worker that shares the
    # data root; and nothing is recorded, so a later run tries both again.
    other = direct(srv.url("d.mp4"))
    gets = len(srv.requests)
    with pytest.raises(RateLimitedError, match="paused until"):
        fetch_video(other, cfg, "run1")
    assert len(srv.requests) == gets
    assert not layout.store.keys("work/videos")
    # once the pause is over, the host is asked again
    layout.store.write_json(
        "work/paused/" + layout.store.keys("work/paused")[0].rsplit("/", 1)[1],
        {"host": "127.0.0.1", "until": time.time() - 1},
    )
    assert paused_until(layout, "127.0.0.1") is None
    assert fetch_video(other, cfg, "run2")["done"] is False


def test_5xx_is_retried_until_it_succeeds(tmp_path: Path, srv: Server) -> None:
    led = Ledger(tmp_path / "ledger.sqlite")
    c = direct(srv.url("b.mp4", route="flaky"))
    r = download(c, tmp_path / "dl", FAST, tmp_path / "archive.txt", ledger=led)
    assert r.ok and r.attempts == 3  # two 500s, then the file
    assert led.get(c.video_id).attempts == 3  # type: ignore[union-attr]
    assert srv.count("b.mp4", route="flaky") == 4  # 2 failures + metadata + body

    # With no retries allowed, the transient error is reported with its real message.
    with serve_dir(srv.root, flaky_failures=5) as s2:
        no_retry = DownloadConfig(retries=0)
        r2 = download(
            direct(s2.url("c.mp4", "flaky")), tmp_path / "dl", no_retry, tmp_path / "archive.txt"
        )
    assert (r2.ok, r2.error_class, r2.attempts, r2.transient) == (False, "http_error", 1, True)
    assert "HTTP Error 500" in r2.message


def test_dropped_connection_is_network_and_message_kept(tmp_path: Path, srv: Server) -> None:
    led = Ledger(tmp_path / "ledger.sqlite")
    cfg = DownloadConfig(retries=1, retry_base_delay_s=0.01)
    c = direct(srv.url("d.mp4", route="drop"))
    r = download(c, tmp_path / "dl", cfg, tmp_path / "archive.txt", ledger=led)
    assert (r.ok, r.error_class, r.attempts, r.transient) == (False, "network", 2, True)
    assert "bytes read" in r.message and "more expected" in r.message
    assert list((tmp_path / "dl").iterdir()) == []  # the partial file is gone
    row = led.get(c.video_id)
    assert row is not None and (row.state, row.message) == ("failed", r.message)
    assert (
        not (tmp_path / "archive.txt").exists()
        or c.video_id not in (tmp_path / "archive.txt").read_text()
    )


def test_stall_is_timeout(tmp_path: Path, srv: Server) -> None:
    cfg = DownloadConfig(retries=0, socket_timeout_s=0.5)
    r = download(direct(srv.url("e.mp4", "stall")), tmp_path / "dl", cfg, tmp_path / "ar.txt")
    assert (r.ok, r.error_class, r.attempts) == (False, "timeout", 1)
    assert "timed out" in r.message.lower()
    assert list((tmp_path / "dl").iterdir()) == []


@pytest.mark.parametrize(("route", "needle"), [("plain", "max-filesize"), ("nolength", "1000")])
def test_max_filesize_is_too_large(tmp_path: Path, srv: Server, route: str, needle: str) -> None:
    cfg = DownloadConfig(max_filesize=1000, retries=2, retry_base_delay_s=0.01)
    r = download(direct(srv.url("f.mp4", route)), tmp_path / "dl", cfg, tmp_path / "ar.txt")
    assert (r.ok, r.error_class, r.attempts) == (False, "too_large", 1)  # not transient
    assert needle in r.message
    assert list((tmp_path / "dl").iterdir()) == []


def test_file_urls_only_when_enabled(tmp_path: Path, site: Path) -> None:
    url = (site / "a.mp4").as_uri()
    cands, [rej] = resolve_entry(entry(url), 0, DownloadConfig())
    assert cands == [] and rej.reason == "unsupported" and "enable_file_urls" in rej.message
    refused = download(direct(url), tmp_path / "dl", DownloadConfig(), tmp_path / "ar.txt")
    assert (refused.ok, refused.error_class, refused.attempts) == (False, "unsupported", 0)

    cfg = DownloadConfig(enable_file_urls=True)
    [c], [] = resolve_entry(entry(url), 0, cfg)
    r = download(c, tmp_path / "dl", cfg, tmp_path / "ar.txt")
    assert r.ok and Path(r.path or "").read_bytes() == (site / "a.mp4").read_bytes()


def _rss(srv: Server, items: list[tuple[str, str, str, int]]) -> str:
    body = "".join(
        f"<item><title>{t}</title><description>{d}</description>"
        f"<enclosure url='{srv.url(f)}' type='video/mp4'/>"
        f"<itunes:duration>{s}</itunes:duration></item>"
        for t, d, f, s in items
    )
    return (
        "<?xml version='1.0'?><rss version='2.0' "
        "xmlns:itunes='http://www.itunes.com/dtds/podcast-1.0.dtd'>"
        f"<channel><title>feed</title>{body}</channel></rss>"
    )


def test_playlist_rules_and_duration_bounds_before_download(
    tmp_path: Path, srv: Server, site: Path
) -> None:
    (site / "feed.xml").write_text(
        _rss(
            srv,
            [
                ("Super Mario speedrun any%", "", "a.mp4", 120),  # kept
                ("Mario movie trailer", "gameplay", "b.mp4", 120),  # negative word
                ("Cooking pasta gameplay", "", "c.mp4", 120),  # no platformer word
                ("Celeste chapter 1", "full playthrough", "d.mp4", 120),  # kept (description)
                ("Sonic gameplay", "", "e.mp4", 10),  # too short
                ("Mega Man gameplay", "", "f.mp4", 7200),  # too long
            ],
        )
    )
    led = Ledger(tmp_path / "ledger.sqlite")
    e = entry(srv.url("feed.xml"), min_duration_s=60.0, max_duration_s=3600.0)
    cands, rejs = resolve_entry(e, 1, FAST, ledger=led)
    assert [c.title for c in cands] == ["Super Mario speedrun any%", "Celeste chapter 1"]
    assert [c.order for c in cands] == [(1, 0), (1, 3)]
    assert cands[0].duration_s == 120.0 and cands[0].description == ""
    assert {(r.reason, r.decision) for r in rejs} == {
        ("filtered_by_rule", "drop"),
        ("too_short", "drop"),
        ("too_long", "drop"),
    }
    by_reason = {r.url.rsplit("/", 1)[1]: (r.reason, r.message) for r in rejs}
    assert by_reason["b.mp4"] == (
        "filtered_by_rule",
        "negative word 'movie': title 'Mario movie trailer'",
    )
    assert by_reason["c.mp4"][0] == "filtered_by_rule"
    assert by_reason["e.mp4"] == ("too_short", "duration 10.0 s < min_duration_s 60.0")
    assert by_reason["f.mp4"][0] == "too_long"
    # Rejected videos were judged on the feed's metadata: never requested, let alone downloaded.
    for name in ("b.mp4", "c.mp4", "e.mp4", "f.mp4"):
        assert srv.count(name) == 0, name
    rows = {r.url.rsplit("/", 1)[1]: r for r in led.rows() if r.url.endswith(".mp4")}
    assert rows["a.mp4"].state == "resolved" and rows["d.mp4"].state == "resolved"
    assert {n: rows[n].error_class for n in ("b.mp4", "e.mp4", "f.mp4")} == {
        "b.mp4": "filtered_by_rule",
        "e.mp4": "too_short",
        "f.mp4": "too_long",
    }
    assert all(rows[n].state == "filtered" for n in ("b.mp4", "c.mp4", "e.mp4", "f.mp4"))

    # max_videos stops the walk: the second good video is never fetched.
    gets_d = srv.count("d.mp4")
    capped, _ = resolve_entry(entry(srv.url("feed.xml"), max_videos=1), 0, FAST)
    assert [c.title for c in capped] == ["Super Mario speedrun any%"]
    assert srv.count("d.mp4") == gets_d
    # rules: none takes every video of the playlist.
    everything, none_dropped = resolve_entry(entry(srv.url("feed.xml"), rules=no_rules()), 0, FAST)
    assert len(everything) == 6 and none_dropped == []
    assert len({c.video_id for c in everything}) == 6
    # download refuses a listing: it would fetch every entry under one ID.
    feed = download(direct(srv.url("feed.xml")), tmp_path / "dl", FAST, tmp_path / "ar.txt")
    assert (feed.ok, feed.error_class) == (False, "unsupported") and "playlist" in feed.message


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_shared_by_threads(
    tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    # A spy around the real attempt counts the yt-dlp runs in flight; nothing is faked.
    lock, now, peak = threading.Lock(), [0], [0]
    real = dl_mod._attempt

    def spy(*args: Any, **kw: Any) -> Any:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            return real(*args, **kw)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(dl_mod, "_attempt", spy)
    cfg = DownloadConfig(max_concurrent=limit, retries=0)
    results: list[DownloadResult] = []
    with serve_dir(site, slow_s=0.5) as s:  # each body takes 0.5 s: attempts overlap if allowed

        def run(name: str) -> None:
            c = direct(s.url(name, "slow"))
            results.append(download(c, tmp_path / "dl", cfg, tmp_path / "ar.txt"))

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a.mp4", "b.mp4", "c.mp4")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert len(results) == 3 and all(r.ok for r in results)
    assert peak[0] == limit


def test_ratelimit_paces_the_download(tmp_path: Path, srv: Server) -> None:
    cfg = DownloadConfig(ratelimit=200_000, retries=0)
    t0 = time.monotonic()
    r = download(direct(srv.url("a.mp4")), tmp_path / "dl", cfg, tmp_path / "ar.txt")
    elapsed = time.monotonic() - t0
    assert r.ok and r.bytes > 150_000
    assert elapsed >= 0.8 * r.bytes / 200_000, elapsed  # loopback alone takes milliseconds


def test_ledger_is_safe_for_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "work" / "ledger.sqlite"
    led = Ledger(path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pipelines.ledger import Ledger; led = Ledger(sys.argv[1])\n"
            "for i in range(100): led.upsert(f'p-{i}', f'http://x/p{i}', state='failed',"
            " error_class='timeout', message='m', add_attempts=1)\n"
            "for i in range(100): led.upsert('shared', 'http://x/s', state='failed', add_attempts=1)",
            str(path),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )

    def work(k: int) -> None:
        for i in range(50):
            led.upsert(f"t{k}-{i}", f"http://x/t{k}/{i}", state="resolved", source_url="s")
            led.upsert("shared", "http://x/s", state="failed", add_attempts=1)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert child.wait(timeout=60) == 0
    assert led.counts() == {"resolved": 200, "failed": 101}
    shared = led.get("shared")
    assert shared is not None and shared.attempts == 300  # no lost update
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="state must be one of"):
        led.upsert("x", "http://x", state="done")


def test_format_selection_prefers_smallest_usable(tmp_path: Path) -> None:
    def pick(heights: list[int]) -> str:
        formats = [
            {
                "format_id": f"{h}p",
                "url": f"http://127.0.0.1:9/{h}.mp4",
                "ext": "mp4",
                "width": h * 16 // 9,
                "height": h,
                "vcodec": "avc1",
                "acodec": "none",
                "filesize": h * 1000,
            }
            for h in heights
        ]
        info = {
            "id": "x",
            "title": "x",
            "extractor": "test",
            "extractor_key": "Test",
            "webpage_url": "http://127.0.0.1:9/x",
            "formats": formats,
        }
        cfg = DownloadConfig()
        opts = ytdlp_options(cfg, YtdlpLog()) | {
            "format": cfg.format_selector(),
            "format_sort": list(cfg.format_sort),
        }
        with YoutubeDL(opts) as ydl:
            return str(ydl.process_ie_result(info, download=False)["format_id"])

    assert pick([72, 144, 240, 360, 720]) == "144p"  # 72p is below 160x90
    assert pick([240, 360, 1080]) == "240p"
    assert pick([720, 1080]) == "720p"  # nothing <= 360p: the smallest above
    assert pick([72]) == "72p"  # nothing usable: still something, probe decides


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("ERROR: [youtube] x: Private video. Sign in if you've been granted access", "private"),
        ("ERROR: [youtube] x: Video unavailable. This video has been removed", "unavailable"),
        ("ERROR: [youtube] x: Sign in to confirm you're not a bot", "blocked"),
        ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "blocked"),
        ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "rate_limited"),
        ("ERROR: unable to download video data: HTTP Error 503: Service Unavailable", "http_error"),
        ("ERROR: Unsupported URL: https://example.org/page", "unsupported"),
        ("ERROR: [youtube] x: Requested format is not available", "no_video_format"),
        ("ERROR: [download] Got error: Read timed out.", "timeout"),
        ("ERROR: [download] Got error: Connection reset by peer", "network"),
        ("something nobody has seen before", "unknown"),
    ],
)
def test_classify_messages(message: str, expected: str) -> None:
    cls, transient = classify(message)
    assert cls == expected
    assert transient == (expected in ("timeout", "network") or "HTTP Error 5" in message)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_height"):
        DownloadConfig(max_height=60)
    with pytest.raises(ValueError, match="max_concurrent"):
        DownloadConfig(max_concurrent=0)
    with pytest.raises(ValueError, match="retries"):
        DownloadConfig(retries=-1)
    assert DownloadConfig(format="bv*").format_selector() == "bv*"
