from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from pipelines.manifest import build_manifest, dataset_version, read_manifest, write_manifest
from pipelines.shard import (
    ShardSample,
    plan_shards,
    remove_stale_shards,
    sha256_file,
    shard_plan_digests,
    write_shards,
)


def _samples(tmp: Path, n: int, size: int = 40_000) -> list[ShardSample]:
    out = []
    for i in range(n):
        p = tmp / f"c{i}.mp4"
        p.write_bytes(bytes([i % 251]) * (size + i))
        cid = f"url-abc_{i * 16000:08d}"
        out.append(
            ShardSample(
                cid, str(p), {"clip_id": cid, "start_s": i * 16.0, "score": 0.5}, p.stat().st_size
            )
        )
    return out


def test_plan_packs_by_bytes_in_order(tmp_path: Path) -> None:
    s = _samples(tmp_path, 10)
    groups = plan_shards(s, max_bytes=100_000)
    assert [x.clip_id for g in groups for x in g] == [x.clip_id for x in s]
    assert all(len(g) == 2 for g in groups)  # two 40 KB clips fit in 100 KB, three do not
    with pytest.raises(ValueError):
        plan_shards(s, 0)


def test_shards_are_byte_reproducible_and_read_back_with_webdataset(tmp_path: Path) -> None:
    s = _samples(tmp_path, 5)
    a = write_shards(tmp_path / "a", "ds", s, 100_000)
    b = write_shards(tmp_path / "b", "ds", s, 100_000)
    assert [x.sha256 for x in a] == [x.sha256 for x in b]
    assert [x.path for x in a] == [
        "shards/ds-000000.tar",
        "shards/ds-000001.tar",
        "shards/ds-000002.tar",
    ]
    for info in a:
        assert sha256_file(tmp_path / "a" / info.path) == info.sha256
        assert (tmp_path / "a" / info.path).stat().st_size <= 100_000
    urls = [str(tmp_path / "a" / x.path) for x in a]
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert [g["__key__"] for g in got] == [x.clip_id for x in s]
    assert got[3]["mp4"] == Path(s[3].mp4_path).read_bytes()
    assert json.loads(got[3]["json"])["start_s"] == 48.0
    with tarfile.open(urls[0]) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}
    assert not list((tmp_path / "a" / "shards").glob(".tmp-*"))


def test_unchanged_shards_are_not_rewritten_and_stale_ones_removed(tmp_path: Path) -> None:
    s = _samples(tmp_path, 4)
    first = write_shards(tmp_path, "ds", s, 100_000)
    plans = shard_plan_digests(s, 100_000)
    prev = {x.path: {"sha256": x.sha256, "plan": p} for x, p in zip(first, plans, strict=True)}
    p0 = tmp_path / first[0].path
    mtime = p0.stat().st_mtime_ns
    again = write_shards(tmp_path, "ds", s[:2], 100_000, prev)
    assert p0.stat().st_mtime_ns == mtime and again[0].sha256 == first[0].sha256
    assert remove_stale_shards(tmp_path, "ds", {x.path for x in again}) == ["shards/ds-000001.tar"]


def test_dataset_version_depends_only_on_what_made_it(tmp_path: Path) -> None:
    base = dict(
        dataset="ds",
        shard_max_bytes=1 << 20,
        clip_config={"fps": 10},
        feature_version="f1",
        model_version="m1",
        threshold=0.5,
        sources_hash="s",
        clips=[("a_00000000", "h1")],
    )
    v1 = dataset_version(**base)  # type: ignore[arg-type]
    assert v1 == dataset_version(**base)  # type: ignore[arg-type]
    assert v1 != dataset_version(**{**base, "threshold": 0.6})  # type: ignore[arg-type]
    assert v1 != dataset_version(**{**base, "clips": [("a_00000000", "h2")]})  # type: ignore[arg-type]
    assert v1 != dataset_version(**{**base, "shard_max_bytes": 2 << 20})  # type: ignore[arg-type]
    s = _samples(tmp_path, 2)
    shards = write_shards(tmp_path, "ds", s, 1 << 20)
    m = build_manifest(
        dataset="ds",
        version=v1,
        shards=shards,
        plans=shard_plan_digests(s, 1 << 20),
        clip_config={"fps": 10},
        feature_version="f1",
        model_version="m1",
        threshold=0.5,
        sources_hash="s",
        counts={"score": {"keep": {"above_threshold": 2}}},
    )
    write_manifest(tmp_path, m)
    raw = (tmp_path / "manifest.json").read_bytes()
    write_manifest(tmp_path, m)
    assert (tmp_path / "manifest.json").read_bytes() == raw
    got = read_manifest(tmp_path)
    assert (
        got is not None and got["n_samples"] == 2 and got["shards"][0]["sha256"] == shards[0].sha256
    )


def test_a_verified_shard_is_not_read_again_but_a_changed_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.store import Store

    s = _samples(tmp_path, 4)
    verified: dict[str, list[str]] = {}
    first = write_shards(tmp_path, "ds", s, 100_000, verified=verified)
    plans = shard_plan_digests(s, 100_000)
    prev = {x.path: {"sha256": x.sha256, "plan": p} for x, p in zip(first, plans, strict=True)}
    assert set(verified) == {x.path for x in first}
    hashed: list[str] = []
    real = Store.sha256
    monkeypatch.setattr(Store, "sha256", lambda self, key: hashed.append(key) or real(self, key))
    again = write_shards(tmp_path, "ds", s, 100_000, prev, verified=verified)
    assert hashed == [] and [x.sha256 for x in again] == [x.sha256 for x in first]
    # a shard changed behind the build's back (same size, other bytes) is hashed and rewritten
    p0 = tmp_path / first[0].path
    data = bytearray(p0.read_bytes())
    data[600] ^= 0xFF
    p0.write_bytes(bytes(data))
    fixed = write_shards(tmp_path, "ds", s, 100_000, prev, verified=verified)
    assert hashed == [first[0].path] and fixed[0].sha256 == first[0].sha256
    assert p0.read_bytes() != bytes(data)
