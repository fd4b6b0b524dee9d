"""WebDataset shards: kept clips packed by bytes into byte-reproducible tar files.

Each sample is two tar members, ``{clip_id}.mp4`` and ``{clip_id}.json`` (WebDataset groups members
by the name before the first dot; clip IDs have none). Members carry a fixed mtime, owner and mode,
and the JSON has sorted keys, so the same clips always give the same bytes and the same sha256.
A shard is written under a temporary name and renamed when complete; a shard already on disk with
the expected sha256 is not written again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.atomic import sha256_file
from pipelines.store import Store, as_store

log = logging.getLogger(__name__)

FIXED_MTIME = 1_700_000_000  # 2023-11-14: any constant works; it only has to never change
# A tar member costs a 512-byte header plus padding to 512 bytes; used to pack shards by size.
_TAR_BLOCK = 512


@dataclass(frozen=True)
class ShardSample:
    """One kept clip as it goes into a shard."""

    clip_id: str  # the WebDataset key
    mp4_path: str  # the clip: a key in the data root's store (work/clips/...) or an absolute path
    meta: dict[str, Any]  # the sample's JSON (DESIGN.md: clip_id, video_id, source_url, ...)
    size: int  # mp4 size in bytes, for packing


@dataclass(frozen=True)
class ShardInfo:
    """A written shard as the manifest records it."""

    path: str  # relative to the data root: shards/{dataset}-{i:06d}.tar
    n_samples: int
    bytes: int
    sha256: str
    first: str  # first and last clip ID: lets a reader find a clip's shard without opening tars
    last: str


def _member_bytes(size: int) -> int:
    return _TAR_BLOCK + (size + _TAR_BLOCK - 1) // _TAR_BLOCK * _TAR_BLOCK


def meta_bytes(meta: dict[str, Any]) -> bytes:
    """Canonical JSON of a sample's metadata: sorted keys, no spaces, UTF-8."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")


def plan_shards(samples: Sequence[ShardSample], max_bytes: int) -> list[list[ShardSample]]:
    """Pack samples in order into groups of at most ``max_bytes`` (a single larger sample gets its own).

    Pure: the plan depends only on the ordered samples and the limit.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
    groups: list[list[ShardSample]] = []
    cur: list[ShardSample] = []
    cur_bytes = 2 * _TAR_BLOCK * 10  # tar end-of-archive blocks (10240-byte record)
    for s in samples:
        need = _member_bytes(s.size) + _member_bytes(len(meta_bytes(s.meta)))
        if cur and cur_bytes + need > max_bytes:
            groups.append(cur)
            cur, cur_bytes = [], 2 * _TAR_BLOCK * 10
        cur.append(s)
        cur_bytes += need
    if cur:
        groups.append(cur)
    return groups


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "genie"
    tar.addfile(info, io.BytesIO(data))


def _clip_bytes(store: Store, path: str) -> bytes:
    return Path(path).read_bytes() if os.path.isabs(path) else store.read_bytes(path)


def write_shard(store: Store, key: str, samples: Sequence[ShardSample]) -> str:
    """Write one shard atomically (a local temporary file, then a rename or one PUT); its sha256."""
    with store.writer(key) as tmp:
        # USTAR format: no pax headers with times or user names that vary between machines.
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples:
                _add_member(tar, f"{s.clip_id}.mp4", _clip_bytes(store, s.mp4_path))
                _add_member(tar, f"{s.clip_id}.json", meta_bytes(s.meta))
        digest = sha256_file(tmp)
    return digest


def _plan_digest(samples: Sequence[ShardSample]) -> str:
    """What a shard would hold: its keys, their mp4 sizes and metadata. Used to skip rewrites."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.clip_id.encode())
        h.update(str(s.size).encode())
        h.update(meta_bytes(s.meta))
    return h.hexdigest()


def write_shards(
    root: str | Path | Store,
    dataset: str,
    samples: Sequence[ShardSample],
    max_bytes: int,
    previous: dict[str, dict[str, Any]] | None = None,
    verified: dict[str, list[str]] | None = None,
) -> list[ShardInfo]:
    """Write all shards for ``samples`` under ``root/shards``; reuse shards that are unchanged.

    Args:
        root: the data root (a path, an fsspec URL or a Store).
        dataset: the dataset name, the shard file prefix.
        samples: kept clips in dataset order.
        max_bytes: the shard size limit in bytes.
        previous: the previous manifest's shards by path (with ``sha256`` and ``plan``), so a shard
            whose content plan and file hash are unchanged is not rewritten.
        verified: path -> ``[sha256, store checksum]`` of shards as last written or hashed; updated
            in place. A shard whose store checksum (an object's ETag; a file's size, mtime and
            inode) is unchanged since is not read again to hash it: a rebuild then reads no
            unchanged shard, which matters for terabytes on object storage.
    Returns:
        The shards in order.
    """
    store = as_store(root)
    previous = previous or {}
    verified = {} if verified is None else verified
    out: list[ShardInfo] = []
    for i, group in enumerate(plan_shards(samples, max_bytes)):
        rel = f"shards/{dataset}-{i:06d}.tar"
        plan = _plan_digest(group)
        prev = previous.get(rel)
        if prev and prev.get("plan") == plan and _intact(store, rel, prev["sha256"], verified):
            digest = prev["sha256"]
            log.debug("shard %s unchanged", rel)
        else:
            digest = write_shard(store, rel, group)
            verified[rel] = [digest, store.checksum(rel)]
            log.info("wrote shard %s (%d samples)", rel, len(group))
        out.append(
            ShardInfo(
                path=rel,
                n_samples=len(group),
                bytes=store.size(rel),
                sha256=digest,
                first=group[0].clip_id,
                last=group[-1].clip_id,
            )
        )
    return out


def _intact(store: Store, rel: str, sha256: str, verified: dict[str, list[str]]) -> bool:
    """Does ``rel`` hold the bytes with ``sha256``? Hashes it only if it changed since verified."""
    if not store.exists(rel):
        return False
    ck = store.checksum(rel)
    if verified.get(rel) == [sha256, ck]:
        return True
    if store.sha256(rel) != sha256:
        return False
    verified[rel] = [sha256, ck]
    return True


def shard_plan_digests(samples: Sequence[ShardSample], max_bytes: int) -> list[str]:
    """The content plan digest of each shard, in order (stored in the manifest beside each shard)."""
    return [_plan_digest(g) for g in plan_shards(samples, max_bytes)]


def remove_stale_shards(root: str | Path | Store, dataset: str, keep: set[str]) -> list[str]:
    """Delete ``shards/{dataset}-*.tar`` files not in ``keep`` (relative paths); returns them."""
    store = as_store(root)
    removed = []
    for rel in store.keys("shards", f"{dataset}-*.tar"):
        if rel not in keep:
            store.remove(rel)
            removed.append(rel)
    return removed
