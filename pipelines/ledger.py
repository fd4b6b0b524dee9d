"""The project's own ledger: every URL and video with its state, error class and attempts.

SQLite in WAL mode at ``work/ledger.sqlite``. Each call opens its own short connection with a busy
timeout, so threads and processes (Prefect workers) can write at once; SQLite serialises writers.
yt-dlp's download archive is kept too, but its key (extractor + id) collides for direct links and
holds no failures; the ledger is keyed on our ``video_id`` (or the URL when there is none).

States: ``resolved`` (chosen, not downloaded yet), ``filtered`` (dropped by a rule or a duration
bound), ``downloaded``, ``failed``. A later ``resolved`` never downgrades ``downloaded``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STATES = ("resolved", "filtered", "downloaded", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    key          TEXT PRIMARY KEY,   -- video_id, or 'url:' + URL for a URL with no video
    video_id     TEXT,
    url          TEXT NOT NULL,
    source_url   TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL,
    error_class  TEXT,
    message      TEXT NOT NULL DEFAULT '',
    attempts     INTEGER NOT NULL DEFAULT 0,  -- download attempts over all runs
    path         TEXT,
    created_at   REAL NOT NULL,              -- unix seconds
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_state ON ledger(state);
"""

_UPSERT = """
INSERT INTO ledger (key, video_id, url, source_url, state, error_class, message, attempts, path,
                    created_at, updated_at)
VALUES (:key, :video_id, :url, :source_url, :state, :error_class, :message, :attempts, :path,
        :now, :now)
ON CONFLICT(key) DO UPDATE SET
    video_id = COALESCE(excluded.video_id, ledger.video_id),
    url = excluded.url,
    source_url = CASE WHEN excluded.source_url != '' THEN excluded.source_url
                      ELSE ledger.source_url END,
    -- re-resolving a video that is already on disk must not make it look undone
    state = CASE WHEN ledger.state = 'downloaded' AND excluded.state = 'resolved'
                 THEN ledger.state ELSE excluded.state END,
    error_class = CASE WHEN ledger.state = 'downloaded' AND excluded.state = 'resolved'
                       THEN ledger.error_class ELSE excluded.error_class END,
    message = CASE WHEN ledger.state = 'downloaded' AND excluded.state = 'resolved'
                   THEN ledger.message ELSE excluded.message END,
    attempts = ledger.attempts + excluded.attempts,
    path = COALESCE(excluded.path, ledger.path),
    updated_at = excluded.updated_at
"""


@dataclass(frozen=True)
class LedgerRow:
    key: str
    video_id: str | None
    url: str
    source_url: str
    state: str
    error_class: str | None
    message: str  # the real error text (yt-dlp's), or why a video was filtered
    attempts: int
    path: str | None
    created_at: float
    updated_at: float


class Ledger:
    """SQLite ledger; cheap to construct, safe to share between threads and processes."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            # WAL lets readers run beside one writer; the mode is stored in the file.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            con.execute("PRAGMA synchronous=NORMAL")
            yield con
        finally:
            con.close()

    @staticmethod
    def key_for(video_id: str | None, url: str) -> str:
        return video_id if video_id else f"url:{url}"

    def upsert(
        self,
        video_id: str | None,
        url: str,
        *,
        state: str,
        source_url: str = "",
        error_class: str | None = None,
        message: str = "",
        add_attempts: int = 0,
        path: str | None = None,
    ) -> None:
        """Insert or update the row for ``video_id`` (or ``url`` when there is no video ID).

        Args:
            add_attempts: download attempts made now; added to the stored count.
        """
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        params = {
            "key": self.key_for(video_id, url),
            "video_id": video_id,
            "url": url,
            "source_url": source_url,
            "state": state,
            "error_class": error_class,
            "message": message,
            "attempts": add_attempts,
            "path": path,
            "now": time.time(),
        }
        with self._connect() as con:
            con.execute(_UPSERT, params)

    def get(self, video_id: str) -> LedgerRow | None:
        return self._one("SELECT * FROM ledger WHERE key = ?", (video_id,))

    def get_url(self, url: str) -> LedgerRow | None:
        """The newest row for ``url``, with or without a video ID."""
        return self._one("SELECT * FROM ledger WHERE url = ? ORDER BY updated_at DESC", (url,))

    def rows(self, state: str | None = None) -> list[LedgerRow]:
        """All rows (or those in ``state``), ordered by key."""
        sql = "SELECT * FROM ledger" + (" WHERE state = ?" if state else "") + " ORDER BY key"
        with self._connect() as con:
            return [LedgerRow(*r) for r in con.execute(sql, (state,) if state else ())]

    def counts(self) -> dict[str, int]:
        with self._connect() as con:
            return dict(con.execute("SELECT state, COUNT(*) FROM ledger GROUP BY state"))

    def _one(self, sql: str, args: tuple[str, ...]) -> LedgerRow | None:
        with self._connect() as con:
            r = con.execute(sql, args).fetchone()
        return LedgerRow(*r) if r else None
