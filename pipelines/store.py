"""The data root as a key-value store over fsspec: a local folder, or ``s3://``, ``gs://``, ``file://``.

Everything the build keeps between runs lives under the data root: shards, ``manifest.json``, the
audit log, and the per-video records and clips under ``work/`` that make rebuilds incremental. With
a URL as the data root, all of that goes to object storage, so a build can run on any machine (or
on many Dask workers) and pick up where the last one stopped. Scratch work (downloads, the
download ledger, clips being cut) stays on the local disk of whoever does it.

Writes are atomic either way: a local file is written under a temporary name and renamed; an object
store PUT is atomic by itself (a reader sees the old object or the new one, never half of one), so a
remote file is written in one PUT from a local temporary file. Credentials and endpoints come from
the environment as each protocol defines them (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from pipelines import atomic

_LOCAL = ("file", "local")


def is_url(root: str | Path) -> bool:
    """True for ``proto://...`` (file:// included); False for a plain path."""
    return "://" in str(root)


def normalize_root(root: str | Path) -> str:
    """A plain path becomes absolute; ``file://`` becomes a plain path; other URLs lose a trailing /."""
    s = str(root)
    if s.startswith("file://"):
        s = s[len("file://") :]
    if not is_url(s):
        return str(Path(s).expanduser().resolve())
    return s.rstrip("/")


def as_store(root: str | Path | Store) -> Store:
    return root if isinstance(root, Store) else Store.at(root)


@dataclass(frozen=True)
class Store:
    """Files under one root, addressed by relative POSIX keys such as ``work/videos/abc.json``."""

    root: str  # normalized: an absolute local path or a URL

    @classmethod
    def at(cls, root: str | Path) -> Store:
        return cls(normalize_root(root))

    @cached_property
    def _fs_and_base(self) -> tuple[Any, str]:
        import fsspec

        if not is_url(self.root):
            return fsspec.filesystem("file"), self.root
        try:
            fs, base = fsspec.core.url_to_fs(self.root)
        except ImportError as exc:  # s3fs / gcsfs missing
            raise RuntimeError(
                f"the data root {self.root} needs an fsspec driver that is not installed: {exc} "
                "(pip install 'open-genie[scale]' for s3://, 'open-genie[gcs]' for gs://)"
            ) from exc
        return fs, base.rstrip("/")

    @property
    def fs(self) -> Any:
        return self._fs_and_base[0]

    @property
    def is_local(self) -> bool:
        proto = self.fs.protocol
        return any(p in _LOCAL for p in (proto if isinstance(proto, tuple) else (proto,)))

    def _p(self, key: str) -> str:
        key = key.strip("/")
        if ".." in key.split("/"):
            raise ValueError(f"bad key {key!r}")
        base = self._fs_and_base[1]
        return f"{base}/{key}" if key else base

    def url(self, key: str = "") -> str:
        """The key's full address: a local path, or a URL with the root's protocol."""
        if self.is_local:
            return self._p(key)
        return f"{self.root}/{key.strip('/')}" if key else self.root

    def local_path(self, key: str) -> Path | None:
        """The key's file on this machine's disk when the store is local; None otherwise."""
        return Path(self._p(key)) if self.is_local else None

    # -- reading -----------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._p(key)))

    def refresh(self) -> None:
        """Forget cached listings: object store clients cache them, and workers in other
        processes write records and clips that this process must see."""
        self.fs.invalidate_cache()

    def read_bytes(self, key: str) -> bytes:
        data: bytes = self.fs.cat_file(self._p(key))
        return data

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_json_or(self, key: str, default: Any) -> Any:
        try:
            return self.read_json(key)
        except FileNotFoundError:
            return default

    def checksum(self, key: str) -> str:
        """A token that changes when the file is rewritten (ETag for S3, size + mtime + inode
        locally); cheap: no content is read."""
        return str(self.fs.checksum(self._p(key)))

    def read_json_many(self, keys: list[str]) -> dict[str, Any]:
        """``{key: parsed JSON}`` for the keys that exist, fetched concurrently where the protocol
        can (one request each, in parallel, on an object store): for thousands of small records."""
        if not keys:
            return {}
        paths = {self._p(k): k for k in keys}
        got = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: json.loads(data) for p, data in got.items() if p in paths}

    def size(self, key: str) -> int:
        return int(self.fs.size(self._p(key)))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """A readable stream (object stores stream with read-ahead; nothing is downloaded first)."""
        if "r" not in mode:
            raise ValueError("Store.open is for reading; write with write_bytes or writer()")
        fh: IO[bytes] = self.fs.open(self._p(key), mode)
        return fh

    def sha256(self, key: str) -> str:
        h = hashlib.sha256()
        with self.open(key) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def keys(self, prefix: str, pattern: str = "*") -> list[str]:
        """Keys of the files directly under ``prefix`` whose name matches ``pattern``, sorted.

        Temporary files of interrupted writes (``.tmp-*``) are never listed.
        """
        base = self._p(prefix)
        self.fs.invalidate_cache(base)  # other processes (workers) write here: list afresh
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            if e.get("type") != "file":
                continue
            name = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(atomic.TMP_PREFIX) or not fnmatch.fnmatchcase(name, pattern):
                continue
            out.append(f"{prefix.strip('/')}/{name}".lstrip("/"))
        return sorted(out)

    def walk(self, prefix: str, suffix: str = "") -> list[str]:
        """Keys of all files under ``prefix`` (recursively) ending in ``suffix``, sorted."""
        base = self._p(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self._fs_and_base[1]
        out = []
        for name in found:
            name = str(name)
            leaf = name.rsplit("/", 1)[-1]
            if leaf.startswith(atomic.TMP_PREFIX) or not name.endswith(suffix):
                continue
            out.append(name[len(root) :].lstrip("/"))
        return sorted(out)

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        """Yield a local temporary path; when the block ends cleanly it becomes ``key`` atomically."""
        local = self.local_path(key)
        if local is not None:
            with atomic.atomic_path(local) as tmp:
                yield tmp
            return
        fd, name = tempfile.mkstemp(prefix=atomic.TMP_PREFIX)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            self.fs.put_file(str(tmp), self._p(key))  # one PUT: atomic for readers
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> None:
        local = self.local_path(key)
        if local is not None:
            atomic.write_bytes(local, data)
        else:
            self.fs.pipe_file(self._p(key), data)

    def write_json(self, key: str, obj: Any) -> None:
        """JSON with sorted keys and a trailing newline, as :func:`pipelines.atomic.write_json`."""
        text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
        self.write_bytes(key, text.encode("utf-8"))

    def put_file(self, src: str | Path, key: str) -> None:
        """Copy a local file to ``key`` (atomically); a no-op when it already is that file."""
        local = self.local_path(key)
        if local is not None:
            if local.resolve() == Path(src).resolve():
                return
            with atomic.atomic_path(local) as tmp:
                shutil.copyfile(src, tmp)
        else:
            self.fs.put_file(str(src), self._p(key))

    def remove(self, key: str) -> None:
        try:
            self.fs.rm_file(self._p(key))
        except FileNotFoundError:
            pass
