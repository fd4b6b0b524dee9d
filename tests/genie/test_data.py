"""genie.data: shards made at test time from ffmpeg testsrc2 (160x90, 10 FPS, 16 s clips)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from genie import data as D

N_SHARDS, PER_SHARD = 3, 2


def make_dataset(root: Path, n_shards: int = N_SHARDS, per_shard: int = PER_SHARD) -> Path:
    """A data dir like build-dataset's: shards/test-{i:06d}.tar (mp4 + json) and manifest.json.

    One ffmpeg process cuts a moving test pattern into 16 s clips (keyframe every 160 frames, so
    each segment is exactly 160 frames).
    """
    n = n_shards * per_shard
    clips = root / "clips"
    clips.mkdir(parents=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10",
         "-t", str(16 * n), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-g", "160", "-keyint_min", "160", "-sc_threshold", "0", "-f", "segment",
         "-segment_time", "16", "-reset_timestamps", "1", str(clips / "c%03d.mp4")],
        check=True)
    (root / "shards").mkdir()
    entries = []
    for s in range(n_shards):
        rel = f"shards/test-{s:06d}.tar"
        with wds.TarWriter(str(root / rel)) as sink:
            for j in range(per_shard):
                i = s * per_shard + j
                clip_id = f"vid{i}_{i * 16000:08d}"
                meta = {"clip_id": clip_id, "video_id": f"vid{i}", "source_url": "test://",
                        "start_s": 16.0 * i, "fps": 10, "width": 160, "height": 90,
                        "n_frames": 160, "features": {}, "score": 1.0}
                sink.write({"__key__": clip_id, "mp4": (clips / f"c{i:03d}.mp4").read_bytes(),
                            "json": json.dumps(meta).encode()})
        entries.append({"path": rel, "n_samples": per_shard, "sha256": "x"})
    (root / "manifest.json").write_text(json.dumps({"shards": entries, "version": "v-test"}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"))


def key_and_start(sample: dict, epoch: int, *, seed: int = 0) -> list:
    """A cheap make_sample: no decoding, just which clip and which window."""
    start = int(D._window_rng(seed, epoch, sample["__key__"]).integers(0, 145))
    return [{"key": sample["__key__"], "start": start}]


def test_resolve_shards_reads_manifest(dataset: Path) -> None:
    paths, version = D.resolve_shards(dataset)
    assert version == "v-test" and len(paths) == N_SHARDS
    assert D.resolve_shards(paths) == (paths, None)


def test_decode_window_matches_full_decode(dataset: Path) -> None:
    sample = next(D.iter_samples(D.resolve_shards(dataset)[0]))
    full = D.decode_mp4(sample["mp4"])
    assert full.shape == (160, 90, 160, 3) and full.dtype == np.uint8
    part = D.decode_mp4(sample["mp4"], start=37, count=16, threads=0)
    np.testing.assert_array_equal(part, full[37:53])


def test_loader_yields_padded_float_windows(dataset: Path) -> None:
    cfg = D.VideoDataConfig(batch_size=2, num_workers=2, shuffle_buffer=4)
    loader = D.video_loader(dataset, cfg)
    x = next(loader)
    assert x.shape == (2, 16, 3, 92, 160) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x[..., :90, :].std() > 0.1
    assert torch.all(x[..., 90:, :] == 0)  # the padding rows
    assert D.video_tokens_per_sample(cfg) == 16 * 23 * 40
    # consecutive frames of a moving pattern differ; a window is not one frame repeated
    assert (x[:, 1:] - x[:, :-1]).abs().mean() > 1e-3


def test_resize_option(dataset: Path) -> None:
    cfg = D.VideoDataConfig(batch_size=1, num_workers=0, size=(64, 64), patch=16, frames=4,
                            stride=2)
    assert next(D.video_loader(dataset, cfg)).shape == (1, 4, 3, 64, 64)
    # 160x90 -> 80x45 is the mean of each 2x2 RGB block, then padded 45 -> 48 for patch 4
    sample = next(D.iter_samples(D.resolve_shards(dataset)[0]))
    full = D.decode_mp4(sample["mp4"], count=2)
    half = D._frames_to_tensor(full, 4, (45, 80))
    mean = torch.from_numpy(full).float().div(255).reshape(2, 45, 2, 80, 2, 3).mean(dim=(2, 4))
    assert half.shape == (2, 3, 48, 80)
    torch.testing.assert_close(half[:, :, :45].permute(0, 2, 3, 1), mean)


def test_windows_depend_on_seed(dataset: Path) -> None:
    def first(seed: int) -> torch.Tensor:
        cfg = D.VideoDataConfig(batch_size=3, num_workers=0, shuffle_buffer=0, seed=seed)
        return next(D.video_loader(dataset, cfg))

    a, b, c = first(0), first(0), first(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ranks_and_workers_read_disjoint_shards() -> None:
    shards = [f"s{i}" for i in range(12)]
    for epoch in range(3):
        parts = [D.split_shards(shards, epoch=epoch, seed=5, rank=r, world_size=2, worker=w,
                                num_workers=3) for r in range(2) for w in range(3)]
        flat = [s for p in parts for s in p]
        assert sorted(flat) == sorted(shards) and all(len(p) == 2 for p in parts)
    e0 = D.split_shards(shards, epoch=0, seed=5, rank=0, world_size=2, worker=0, num_workers=3)
    e1 = D.split_shards(shards, epoch=1, seed=5, rank=0, world_size=2, worker=0, num_workers=3)
    assert e0 != e1  # shard order is reshuffled each epoch


def test_one_epoch_over_ranks_and_workers_covers_each_clip_once(dataset: Path) -> None:
    shards, _ = D.resolve_shards(dataset)
    keys: list[list[str]] = []
    for rank in range(2):
        # an eval-style single pass per rank, read through 1 worker of a DataLoader-like split
        ds = D.ShardStream(shards, key_and_start, batch_size=1, seed=3, rank=rank, world_size=2,
                           shuffle_buffer=4, infinite=False)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
        keys.append([b["key"][0] for b in dl])
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) == N_SHARDS * PER_SHARD


def drop_vid2(sample: dict, epoch: int) -> list:
    """As key_and_start, but one clip gives no item (like a clip shorter than the window)."""
    return [] if sample["__key__"].startswith("vid2_") else key_and_start(sample, epoch, seed=1)


def count_vid2(sample: dict) -> int:
    return 0 if sample["__key__"].startswith("vid2_") else 1


@pytest.mark.parametrize("make, count", [(partial(key_and_start, seed=1), None),
                                         (drop_vid2, count_vid2)])
def test_stream_resumes_at_batch_count(dataset: Path, make, count) -> None:
    shards, _ = D.resolve_shards(dataset)

    def loader() -> D.ShardLoader:
        return D.ShardLoader(shards, make, batch_size=2, seed=1, num_workers=2,
                             shuffle_buffer=3, rank=0, world_size=1, count_items=count)

    straight = loader()
    ref = [next(straight) for _ in range(9)]  # 12 clips over 2 workers: crosses epochs
    resumed = loader()
    _ = [next(resumed) for _ in range(2)]
    state = {**straight.state_dict(), "batches": 5}
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(4)]

    def plain(batches: list[dict]) -> list:
        return [(b["key"], b["start"].tolist()) for b in batches]

    assert plain(got) == plain(ref[5:9])
    assert resumed.state_dict()["batches"] == 9


def test_eval_batches_are_deterministic(dataset: Path) -> None:
    cfg = D.VideoDataConfig(batch_size=4, seed=123)
    a = list(D.eval_video_batches(dataset, cfg, windows_per_clip=3))
    b = list(D.eval_video_batches(dataset, cfg, windows_per_clip=3))
    assert [len(x["clip_id"]) for x in a] == [4, 4, 4, 4, 2]  # 6 clips x 3 windows
    assert a[0]["start"].tolist()[:3] == [0, 72, 144]
    assert all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, b, strict=True))
    assert [x["clip_id"] for x in a] == [y["clip_id"] for y in b]


def pooled_tokens(x_BTCHW: torch.Tensor) -> torch.Tensor:
    """A stand-in tokenizer: 4x4 patch means of grey levels, ids in [0, 1000]."""
    b, t = x_BTCHW.shape[:2]
    g = x_BTCHW.mean(dim=2).reshape(b * t, 1, *x_BTCHW.shape[-2:])
    ids = (F.avg_pool2d(g, 4) * 1000).round().long()
    return ids.reshape(b, t, *ids.shape[-2:])  # (B, T, 23, 40)


def test_token_shards_round_trip(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    manifest = D.write_token_shards(dataset, out, pooled_tokens, encoder_id="pool4", chunk=16)
    assert len(manifest["shards"]) == N_SHARDS and manifest["source_version"] == "v-test"
    again = D.write_token_shards(dataset, out, pooled_tokens, encoder_id="pool4", chunk=16)
    assert again == manifest  # existing shards kept, same version

    # stored once per clip, as uint16 with the clip's metadata, equal to encoding directly
    shard = out / manifest["shards"][0]["path"]
    with tarfile.open(shard) as tar:
        names = sorted(tar.getnames())
        arr = np.load(io.BytesIO(tar.extractfile(names[1]).read()))
        meta = json.loads(tar.extractfile(names[0]).read())
    assert names[1].endswith(".tokens.npy") and arr.dtype == np.uint16
    assert arr.shape == (160, 23, 40) and meta["arrays"] == {"tokens": [160, 23, 40]}
    src = next(D.iter_samples([str(dataset / "shards/test-000000.tar")]))
    assert meta["clip_id"] == src["__key__"]
    frames = D._frames_to_tensor(D.decode_mp4(src["mp4"]), 4)
    direct = pooled_tokens(frames.reshape(10, 16, 3, 92, 160)).reshape(160, 23, 40)
    np.testing.assert_array_equal(arr, direct.numpy())

    cfg = D.VideoDataConfig(batch_size=2, num_workers=2, shuffle_buffer=2)
    batch = next(D.token_loader(out, cfg))
    assert batch["tokens"].shape == (2, 16, 23, 40) and batch["tokens"].dtype == torch.int64
    ev = next(D.eval_token_batches(out, D.VideoDataConfig(batch_size=1, frames=160)))
    np.testing.assert_array_equal(ev["tokens"][0].numpy(), arr)


def chunk_actions(x_BTCHW: torch.Tensor) -> dict[str, torch.Tensor]:
    """Like LAM.frame_actions on each chunk: -1 into the chunk's first frame, then 'actions' that
    encode the frame pair (mean grey level of frame t-1, quantised) so the stitching is checkable."""
    grey = (x_BTCHW.mean(dim=(2, 3, 4)) * 100).round().long()  # (B, t)
    prev = torch.cat([torch.full_like(grey[:, :1], -1), grey[:, :-1]], dim=1)
    return {"tokens": pooled_tokens(x_BTCHW), "actions": prev}


def test_chunk_overlap_gives_an_action_at_every_boundary(dataset: Path) -> None:
    assert D.chunk_starts(160, 16, 1) == [0, 15, 30, 45, 60, 75, 90, 105, 120, 135, 150]
    assert D.chunk_starts(160, 16, 0) == list(range(0, 160, 16))
    src = next(D.iter_samples([str(dataset / "shards/test-000000.tar")]))
    frames = D._frames_to_tensor(D.decode_mp4(src["mp4"]), 4)
    out = D.encode_clip(frames, chunk_actions, chunk=16, overlap=1)
    assert out["tokens"].shape == (160, 23, 40) and out["actions"].shape == (160,)
    assert out["actions"].dtype == np.int32  # -1 does not fit uint16
    whole = chunk_actions(frames[None])["actions"][0].numpy()
    np.testing.assert_array_equal(out["actions"], whole)  # -1 only at frame 0
    gaps = D.encode_clip(frames, chunk_actions, chunk=16, overlap=0)["actions"]
    assert (gaps == -1).sum() == 10  # without overlap, each chunk start lacks its action
