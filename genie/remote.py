"""Files that may live on object storage: plain paths, or fsspec URLs (``s3://``, ``gs://``, ...).

The model side reads a dataset root that may be a URL (manifest.json and the shards it lists) and
mirrors checkpoints to a URL. A plain path never goes through fsspec, so local training does not
depend on it. Remote objects are opened as streams (read front to back, in blocks, as a tar reader
wants them), never downloaded whole to disk first. A remote write is one upload of a finished local
file: an object store makes a PUT (and a completed multipart upload) atomic, so a reader sees the
old object or the new one. Credentials and endpoints come from the environment as each protocol
defines them (S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``); nothing
here names a host or a key.

genie does not import pipelines (docs/ARCHITECTURE.md), so this is a small twin of the data side's
``pipelines/store.py`` for the few operations training needs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def is_url(path: str | Path) -> bool:
    """True for ``proto://...`` (``file://`` included), False for a plain path."""
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` with POSIX separators for URLs, os.path.join for plain paths."""
    if not is_url(base):
        return str(Path(base, *parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; a clear error when the driver is missing."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:  # s3fs / gcsfs not installed
        raise RuntimeError(
            f"{url} needs an fsspec driver that is not installed: {exc} "
            "(pip install 'open-genie[scale]' for s3://, 'open-genie[gcs]' for gs://)"
        ) from exc
    return fs, path


def open_read(path: str | Path) -> IO[bytes]:
    """A binary stream of a file or object (the caller closes it; use it in a `with`)."""
    if not is_url(path):
        return open(path, "rb")
    fs, p = filesystem(str(path))
    return fs.open(p, "rb")  # reads ranges on demand (block cache), no download to disk


def read_text(path: str | Path) -> str:
    with open_read(path) as fh:
        return fh.read().decode()


def is_file(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).is_file()
    fs, p = filesystem(str(path))
    fs.invalidate_cache(p)  # another process may have written it since this one last looked
    return bool(fs.isfile(p))


def size(path: str | Path) -> int:
    if not is_url(path):
        return Path(path).stat().st_size
    fs, p = filesystem(str(path))
    return int(fs.size(p))


def missing(paths: list[str]) -> list[str]:
    """The paths of `paths` that do not exist; one listing per remote folder, not a HEAD each."""
    out, listed = [], {}
    for path in paths:
        if not is_url(path):
            if not Path(path).is_file():
                out.append(path)
            continue
        parent = path.rsplit("/", 1)[0]
        if parent not in listed:
            fs, p = filesystem(parent)
            fs.invalidate_cache(p)
            try:
                listed[parent] = {str(x).rsplit("/", 1)[-1] for x in fs.ls(p, detail=False)}
            except FileNotFoundError:
                listed[parent] = set()
        if path.rsplit("/", 1)[-1] not in listed[parent]:
            out.append(path)
    return out


def list_names(url: str) -> list[str]:
    """Names (not paths) of the objects directly under a URL folder; [] if it does not exist."""
    if not is_url(url):
        return sorted(x.name for x in Path(url).iterdir()) if Path(url).is_dir() else []
    fs, p = filesystem(url)
    fs.invalidate_cache(p)  # another machine may have written since this process last looked
    try:
        return sorted(str(x).rstrip("/").rsplit("/", 1)[-1] for x in fs.ls(p, detail=False))
    except FileNotFoundError:
        return []


def upload(local: str | Path, url: str) -> None:
    """Copy a finished local file to `url`: one upload to an object store (atomic there), or a
    copy under a temporary name and a rename for a plain path."""
    if is_url(url):
        fs, p = filesystem(url)
        fs.put_file(str(local), p)
        return
    atomic_write(Path(url), lambda tmp: shutil.copyfile(local, tmp))


def atomic_write(dst: Path, write: Callable[[Path], object]) -> None:
    """write(a temporary path in dst's folder), fsync, rename to dst: readers never see half."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-" + dst.name + ".", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def download(url: str, local: str | Path) -> Path:
    """Copy an object to `local` atomically (a temporary name in the same folder, then rename)."""
    fs, p = filesystem(url)
    atomic_write(Path(local), lambda tmp: fs.get_file(p, str(tmp)))
    return Path(local)


def remove(url: str) -> None:
    """Delete an object (or file); one that is already gone is fine."""
    if not is_url(url):
        Path(url).unlink(missing_ok=True)
        return
    fs, p = filesystem(url)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        pass
