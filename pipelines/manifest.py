"""``manifest.json``: what a dataset is and what made it.

The dataset version is a hash of what made the dataset (clip config, feature version, classifier
version and threshold, source list hash, and every kept clip with its content hash, in order), so a
rebuild with nothing new gives the same version. The manifest holds no timestamps or run IDs: equal
inputs give a byte-identical file (run history lives in the audit log).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.shard import ShardInfo
from pipelines.store import Store, as_store

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def dataset_version(
    *,
    dataset: str,
    shard_max_bytes: int,
    clip_config: Mapping[str, Any],
    feature_version: str,
    model_version: str | None,
    threshold: float | None,
    sources_hash: str,
    clips: Sequence[tuple[str, str]],
) -> str:
    """A 16-hex-digit hash of what made the dataset.

    Args:
        clips: ``(clip_id, sha256 of the clip mp4)`` for every kept clip, in dataset order.
    """
    payload = {
        "format": FORMAT_VERSION,
        "dataset": dataset,  # the shard names
        "shard_max_bytes": shard_max_bytes,  # the shard layout: another layout is another dataset
        "clip_config": dict(clip_config),
        "feature_version": feature_version,
        "model_version": model_version,
        "threshold": threshold,
        "sources_hash": sources_hash,
        "clips": [list(c) for c in clips],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_manifest(
    *,
    dataset: str,
    version: str,
    shards: Sequence[ShardInfo],
    plans: Sequence[str],
    clip_config: Mapping[str, Any],
    feature_version: str,
    model_version: str | None,
    threshold: float | None,
    sources_hash: str,
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    tools: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest as a plain dict; ``counts`` is step -> decision -> reason -> count.

    ``tools`` records the versions that shaped the bytes (ffmpeg/x264, yt-dlp): clip files, and so
    their hashes, are reproducible only with the same builds.
    """
    return {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "version": version,
        "n_samples": sum(s.n_samples for s in shards),
        "shards": [dict(asdict(s), plan=p) for s, p in zip(shards, plans, strict=True)],
        "clip_config": dict(clip_config),
        "feature_version": feature_version,
        "classifier": {"version": model_version, "threshold": threshold},
        "sources_hash": sources_hash,
        "counts": {
            s: {d: dict(sorted(r.items())) for d, r in v.items()} for s, v in counts.items()
        },
        "tools": dict(tools or {}),
    }


def write_manifest(root: str | Path | Store, manifest: Mapping[str, Any]) -> str:
    """Write ``manifest.json`` atomically (after the shards it names); returns its path or URL."""
    store = as_store(root)
    store.write_json(MANIFEST_NAME, manifest)
    return store.url(MANIFEST_NAME)


def read_manifest(root: str | Path | Store) -> dict[str, Any] | None:
    """The manifest under ``root`` (a path, an fsspec URL or a Store), or None when there is none."""
    data: dict[str, Any] | None = as_store(root).read_json_or(MANIFEST_NAME, None)
    return data
