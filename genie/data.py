"""WebDataset shards -> batches of video windows (or of precomputed tokens) for training.

Shards are the build-dataset contract (see DESIGN.md): `shards/{dataset}-{i:06d}.tar`, per sample
`{clip_id}.mp4` (H.264, 160x90, 10 FPS, 160 frames) and `{clip_id}.json` (metadata). The reading
side is webdataset's tar iterators; the splitting, shuffling and batching are ours so that the
stream is a pure function of (seed, rank, world size, worker, number of workers) and can resume
exactly from a batch count:

- each epoch permutes the shard list with `seed + epoch`; rank r takes `perm[r::world]`, worker w
  of W takes `[w::W]` of that, so within an epoch ranks and workers read disjoint shards;
- samples pass a seeded shuffle buffer, then are decoded and windowed (the window start is drawn
  from a generator keyed by `(seed, epoch, crc32(clip_id))`, so it does not depend on order);
- each worker batches its own samples; torch's DataLoader takes batches from workers round-robin,
  so batch i came from worker i % W and resuming at batch n means worker w skips
  `len(range(w, n, W))` batches. Skipped samples are read from the tar but never decoded.

Token shards (`write_token_shards`) store each clip's encoder output once, so dynamics training
does not run the tokenizer every step; `token_loader` streams windows of them the same way.

The dataset root may be an fsspec URL (`s3://bucket/prefix`): manifest.json is read and each shard
is opened as an fsspec stream (genie.remote), so shards are streamed, not downloaded first.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from genie import remote

log = logging.getLogger(__name__)

Sample = dict[str, Any]  # one tar sample: {"__key__", "__url__", "mp4", "json", ...} as bytes
MakeSample = Callable[[Sample, int], list[Any]]  # (sample, epoch) -> items (0, 1 or more)
CountItems = Callable[[Sample], int]  # how many items make_sample will give, without decoding


# ------------------------------------------------------------------------------------------------
# Shard lists


def resolve_shards(data: str | Path | Sequence[str | Path]) -> tuple[list[str], str | None]:
    """Shard paths and dataset version from a data root (its manifest.json) or a list of tars.

    The root (or any shard) may be an fsspec URL (`s3://bucket/prefix`): the manifest is read and
    the shards are later streamed through fsspec (genie.remote); a plain path never touches fsspec.

    Returns:
        (paths or URLs in manifest order, the manifest's `version` or None for a plain list)
    """
    if isinstance(data, (str, Path)) and _is_root(data):
        manifest = json.loads(remote.read_text(remote.join(data, "manifest.json")))
        paths = [remote.join(data, s["path"]) for s in manifest["shards"]]
        version = manifest.get("version")
    else:
        items = [data] if isinstance(data, (str, Path)) else list(data)
        paths, version = [str(p) for p in items], None
    if not paths:
        raise ValueError(f"no shards in {data!r}")
    gone = remote.missing(paths)
    if gone:
        raise FileNotFoundError(f"missing shards: {gone[:3]}")
    return paths, version


def _is_root(data: str | Path) -> bool:
    """A dataset root: a local folder, or a URL with a manifest.json under it."""
    if remote.is_url(data):
        return remote.is_file(remote.join(data, "manifest.json"))
    return Path(data).is_dir()


def split_shards(
    shards: Sequence[str], *, epoch: int, seed: int, rank: int, world_size: int,
    worker: int, num_workers: int, shuffle: bool = True,
) -> list[str]:
    """This rank's and worker's shards for one epoch (disjoint across ranks and workers)."""
    order = list(shards)
    if shuffle:
        perm = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in perm]
    return order[rank::world_size][worker::num_workers]


def iter_samples(paths: Sequence[str]) -> Iterator[Sample]:
    """Samples of tar files in order, grouped by key (webdataset's tar iterators).

    A URL is streamed through fsspec (read front to back in blocks), not downloaded first.
    """
    for path in paths:
        with remote.open_read(path) as fh:
            files = ({**f, "__url__": path} for f in tar_file_iterator(fh))
            yield from group_by_keys(files)


def shuffle_buffer(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Approximate shuffle: fill a buffer of `size`, then emit a random slot per new item."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    order = rng.permutation(len(buf))
    for i in order:
        yield buf[i]


# ------------------------------------------------------------------------------------------------
# Decoding and windows


def decode_mp4(
    data: bytes, *, start: int = 0, count: int | None = None,
    size: tuple[int, int] | None = None, threads: int = 1, interpolation: str = "AREA",
) -> np.ndarray:
    """Decode frames [start, start+count) of an in-memory mp4 with PyAV.

    Args:
        data: the mp4 file's bytes.
        start, count: frame range; decoding stops after the last needed frame.
        size: (H, W) to resize to while converting (swscale), None keeps the stored size.
        interpolation: swscale filter for resizing; AREA averages pixels (a 2x downscale is the
            mean of 2x2 blocks).
        threads: decoder threads; 1 per DataLoader worker is best on a busy machine, 0 = auto.
    Returns:
        uint8 array (N, H, W, 3), RGB.
    """
    kw = {} if size is None else {"height": size[0], "width": size[1],
                                  "interpolation": interpolation}
    frames = []
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
            stream.thread_count = threads
        for i, frame in enumerate(container.decode(stream)):
            if i < start:
                continue
            if count is not None and i >= start + count:
                break
            frames.append(frame.to_ndarray(format="rgb24", **kw))
    if not frames:
        raise ValueError(f"no frames decoded in [{start}, {start}+{count})")
    return np.stack(frames)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two dims (H, W) at the bottom/right up to a multiple (90 -> 92 for 4).

    Padding at the bottom/right keeps the picture at [..., :H, :W], so a decoder's output is cropped
    back with one slice.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def _window_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def window_starts(n_frames: int, span: int, k: int) -> list[int]:
    """k evenly spaced window starts over a clip (the eval windows), first at 0, last at the end."""
    if n_frames < span:
        return []
    last = n_frames - span
    return sorted({round(last * i / max(k - 1, 1)) for i in range(k)}) if k > 1 else [0]


# ------------------------------------------------------------------------------------------------
# Video samples


@dataclass
class VideoDataConfig:
    batch_size: int = 8  # clips per batch per rank
    frames: int = 16  # T, frames per window (the paper trains every component on 16)
    stride: int = 1  # source frames between window frames (1 = the clips' 10 FPS)
    patch: int = 4  # H and W zero-padded up to a multiple of this (90 -> 92 for 4)
    size: tuple[int, int] | None = None  # (H, W) area-resize (RGB block means) before padding
    num_workers: int = 2  # DataLoader worker processes per rank (clamped to shards per rank)
    shuffle_buffer: int = 64  # samples held for shuffling per worker (a sample is ~70 KB of mp4)
    seed: int = 0  # drives shard order, shuffle and window starts
    decode_threads: int = 1  # PyAV threads per decoder

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.frames < 1 or self.stride < 1 or self.patch < 1:
            raise ValueError("batch_size, frames, stride and patch must be >= 1")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ValueError("num_workers and shuffle_buffer must be >= 0")

    @property
    def span(self) -> int:
        """Source frames covered by one window."""
        return (self.frames - 1) * self.stride + 1


def _frames_to_tensor(
    frames_THWC: np.ndarray, patch: int, size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H', W') in [0, 1], area-resized to size, then padded.

    Resizing happens here on RGB, not in swscale on 4:2:0 YUV, so that 160x90 -> 80x45 is exactly
    the mean of each 2x2 block (swscale would also blur colour through the halved chroma planes).
    """
    x = torch.from_numpy(frames_THWC).permute(0, 3, 1, 2).float().div_(255.0)  # (T, C, H, W)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="area")
    return pad_to_multiple(x, patch)


def _clip_frames(sample: Sample, cfg: VideoDataConfig, start: int) -> torch.Tensor:
    raw = decode_mp4(sample["mp4"], start=start, count=cfg.span, threads=cfg.decode_threads)
    if len(raw) < cfg.span:
        raise ValueError(f"{sample['__key__']}: {len(raw)} frames from {start}, need {cfg.span}")
    return _frames_to_tensor(raw[:: cfg.stride], cfg.patch, cfg.size)


def _n_frames(sample: Sample) -> int:
    return int(json.loads(sample["json"])["n_frames"])


def count_windows(sample: Sample, *, span: int) -> int:
    """1 if the clip (its json n_frames) holds a window of `span` frames, else 0."""
    return int(_n_frames(sample) >= span)


def make_train_video(sample: Sample, epoch: int, *, cfg: VideoDataConfig) -> list[torch.Tensor]:
    """One random window (T, C, H, W) float in [0, 1]; [] (logged) for a clip that cannot be used."""
    try:
        n = _n_frames(sample)
        if n < cfg.span:
            log.warning("skip %s: %d frames < window %d", sample["__key__"], n, cfg.span)
            return []
        start = int(_window_rng(cfg.seed, epoch, sample["__key__"]).integers(0, n - cfg.span + 1))
        return [_clip_frames(sample, cfg, start)]
    except Exception as e:  # a bad clip is data, not a crash: the same clip is skipped every epoch
        log.warning("skip %s (%s): %s", sample.get("__key__"), sample.get("__url__"), e)
        return []


def make_eval_video(sample: Sample, epoch: int, *, cfg: VideoDataConfig, k: int) -> list[dict]:
    """k fixed windows per clip, each {"frames": (T,C,H,W), "clip_id": str, "start": int}."""
    n = _n_frames(sample)
    raw = decode_mp4(sample["mp4"], threads=cfg.decode_threads)
    out = []
    for s in window_starts(min(n, len(raw)), cfg.span, k):
        x = _frames_to_tensor(raw[s : s + cfg.span : cfg.stride], cfg.patch, cfg.size)
        out.append({"frames": x, "clip_id": sample["__key__"], "start": s})
    return out


# ------------------------------------------------------------------------------------------------
# The stream


def collate(items: list[Any]) -> Any:
    """Stack tensors; dicts collated per key; other values (ids, ints) kept as lists."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: collate([it[k] for it in items]) for k in first}
    if isinstance(first, (int, float)):
        return torch.tensor(items)
    return list(items)


class ShardStream(IterableDataset):
    """Batches from shards for one rank; each DataLoader worker reads its own shards.

    Args:
        shards: tar paths.
        make_sample: (sample, epoch) -> list of items; must be picklable (a functools.partial).
        batch_size: items per batch.
        seed, rank, world_size: see the module docstring.
        shuffle_buffer: 0 disables shuffling (and shard permutation).
        start_batch: batches of this rank's stream already consumed (resume).
        num_workers: the DataLoader's worker count (needed to compute what each worker skips).
        infinite: loop over epochs forever (training) or stop after one (eval; last batch may
            be short).
        count_items: cheap count of a sample's items (from its json) used when skipping on
            resume; None decodes skipped samples to count them (always exact, slower). A clip
            that fails to decode counts 1 but gives 0: resume past it is off by one (logged).
    """

    def __init__(
        self, shards: Sequence[str], make_sample: MakeSample, *, batch_size: int, seed: int,
        rank: int, world_size: int, shuffle_buffer: int, start_batch: int = 0,
        num_workers: int = 0, infinite: bool = True, count_items: CountItems | None = None,
    ) -> None:
        super().__init__()
        if world_size > len(shards):
            raise ValueError(f"{len(shards)} shards cannot feed {world_size} ranks disjointly")
        self.shards, self.make_sample = list(shards), make_sample
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch
        self.num_workers, self.infinite, self.count_items = num_workers, infinite, count_items

    def worker_shards(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        return split_shards(self.shards, epoch=epoch, seed=self.seed, rank=self.rank,
                            world_size=self.world_size, worker=worker, num_workers=num_workers,
                            shuffle=self.shuffle_buffer > 0)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        # A new DataLoader asks worker 0 first, but the next batch (number start_batch) belongs to
        # worker start_batch % nw of the original stream: rotate roles so the order continues.
        w = (w + self.start_batch) % nw
        skip = len(range(w, self.start_batch, nw)) * self.batch_size  # items to pass over
        batch: list[Any] = []
        epoch = 0
        while True:
            mine = self.worker_shards(epoch, w, nw)
            rng = np.random.default_rng([self.seed, epoch, self.rank, w])
            for sample in shuffle_buffer(iter_samples(mine), self.shuffle_buffer, rng):
                if skip > 0:  # resume: pass over consumed items, without decoding if possible
                    n = self.count_items(sample) if self.count_items else None
                    if n is not None and n <= skip:
                        skip -= n
                        continue
                    items = self.make_sample(sample, epoch)
                    drop, skip = min(skip, len(items)), skip - min(skip, len(items))
                    items = items[drop:]
                else:
                    items = self.make_sample(sample, epoch)
                for item in items:
                    batch.append(item)
                    if len(batch) == self.batch_size:
                        yield collate(batch)
                        batch = []
            epoch += 1
            if not self.infinite:
                break
        if batch:
            yield collate(batch)


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardLoader:
    """An infinite, resumable iterator of training batches for one rank (Stateful).

    `state_dict()` records how many batches were taken; `load_state_dict()` rebuilds the stream so
    the next batch is the one that would have come next. Exact only with the same seed, world size
    and number of workers (recorded and checked; otherwise the stream restarts with a warning).
    """

    def __init__(
        self, shards: Sequence[str], make_sample: MakeSample, *, batch_size: int, seed: int,
        num_workers: int, shuffle_buffer: int, rank: int | None = None,
        world_size: int | None = None, pin_memory: bool = False,
        count_items: CountItems | None = None,
    ) -> None:
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        if self.world_size > len(shards):
            raise ValueError(f"{len(shards)} shards cannot feed {self.world_size} ranks disjointly")
        per_rank = len(shards) // self.world_size
        if num_workers > per_rank:
            log.info("num_workers %d -> %d (shards per rank)", num_workers, per_rank)
        self.shards, self.make_sample = list(shards), make_sample
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.num_workers, self.pin_memory = min(num_workers, per_rank), pin_memory
        self.count_items = count_items
        self.batches = 0  # batches handed out so far
        self._it: Iterator[Any] | None = None

    def _make_iter(self) -> Iterator[Any]:
        ds = ShardStream(self.shards, self.make_sample, batch_size=self.batch_size,
                         seed=self.seed, rank=self.rank, world_size=self.world_size,
                         shuffle_buffer=self.shuffle_buffer, start_batch=self.batches,
                         num_workers=self.num_workers, count_items=self.count_items)
        # Own generator: creating worker iterators must not draw from the global torch RNG,
        # or a resumed run's RNG would diverge from a straight one.
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                        pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(0),
                        prefetch_factor=2 if self.num_workers else None)
        return iter(dl)

    def __iter__(self) -> ShardLoader:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._make_iter()
        batch = next(self._it)
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "seed": self.seed, "world_size": self.world_size,
                "num_workers": self.num_workers, "batch_size": self.batch_size}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        same = all(sd.get(k) == getattr(self, k)
                   for k in ("seed", "world_size", "num_workers", "batch_size"))
        if not same:
            log.warning("data stream changed shape (%s); restarting it, resume is not exact", sd)
            self.seed += int(sd["batches"])  # do not replay the same samples from the start
        else:
            self.batches = int(sd["batches"])
        self._it = None


def video_loader(
    data: str | Path | Sequence[str | Path], cfg: VideoDataConfig, *,
    rank: int | None = None, world_size: int | None = None, pin_memory: bool = False,
) -> ShardLoader:
    """Training batches (B, T, C, H', W') float in [0, 1], H'/W' padded to a multiple of patch."""
    shards, _ = resolve_shards(data)
    return ShardLoader(shards, partial(make_train_video, cfg=cfg), batch_size=cfg.batch_size,
                       seed=cfg.seed, num_workers=cfg.num_workers,
                       shuffle_buffer=cfg.shuffle_buffer, rank=rank, world_size=world_size,
                       pin_memory=pin_memory, count_items=partial(count_windows, span=cfg.span))


def eval_video_batches(
    data: str | Path | Sequence[str | Path], cfg: VideoDataConfig, *, windows_per_clip: int = 1,
    rank: int = 0, world_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """Deterministic eval batches: clips in shard order, `windows_per_clip` evenly spaced windows.

    Yields {"frames": (B, T, C, H', W'), "clip_id": list[str], "start": LongTensor (B,)}; the last
    batch may be short. Same data, same batches, every call.
    """
    shards, _ = resolve_shards(data)
    ds = ShardStream(shards, partial(make_eval_video, cfg=cfg, k=windows_per_clip),
                     batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                     shuffle_buffer=0, infinite=False)
    yield from ds


# ------------------------------------------------------------------------------------------------
# Token shards

ENCODE_ARRAY = "tokens"  # name used when encode_fn returns a single tensor


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _store_dtype(a: np.ndarray) -> np.ndarray:
    """Smallest safe integer dtype for ids (uint16 below 65536, else int32); floats as float32."""
    if np.issubdtype(a.dtype, np.integer):
        if a.size == 0 or (a.min() >= 0 and a.max() < 2**16):
            return a.astype(np.uint16)
        return a.astype(np.int32)
    return a.astype(np.float32)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def chunk_starts(n: int, chunk: int, overlap: int) -> list[int]:
    """Start frames of encode chunks: each chunk shares `overlap` frames with the previous one."""
    starts = [0]
    while starts[-1] + chunk < n:
        starts.append(starts[-1] + chunk - overlap)
    return starts


def encode_clip(
    frames_TCHW: torch.Tensor, encode_fn: Callable[[torch.Tensor], Any], chunk: int | None,
    overlap: int = 1,
) -> dict[str, np.ndarray]:
    """Run encode_fn over a clip in chunks of `chunk` frames, concatenated back in time.

    encode_fn takes (B, t, C, H, W) float and returns a tensor (B, t, ...) or a dict of them, each
    with the frame axis second; the result has the clip's frame axis first (length T), so windows
    of frames and of every array line up. Chunk k > 0 starts `overlap` frames early and its first
    `overlap` outputs are dropped: with overlap 1, a frame-aligned action (the action into frame t,
    needing frames t-1 and t) is defined at every chunk boundary, not only inside chunks.

    Returns:
        {name: array (T, ...)}: ids as uint16 when in [0, 65536), else int32; floats as float32.
    """
    n = frames_TCHW.shape[0]
    chunk = n if chunk is None else chunk
    if not 0 <= overlap < chunk:
        raise ValueError(f"need 0 <= overlap < chunk, got {overlap}, {chunk}")
    starts = chunk_starts(n, chunk, overlap)
    by_len: dict[int, list[int]] = {}  # chunks of equal length share one encode_fn call
    for s in starts:
        by_len.setdefault(min(chunk, n - s), []).append(s)
    outs: dict[int, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        for length, group in by_len.items():
            x = torch.stack([frames_TCHW[s : s + length] for s in group])  # (B, t, C, H, W)
            res = encode_fn(x)
            res = res if isinstance(res, dict) else {ENCODE_ARRAY: res}
            for i, s in enumerate(group):
                outs[s] = {k: v[i].detach().cpu().numpy() for k, v in res.items()}
    parts = [{k: v[0 if s == 0 else overlap:] for k, v in outs[s].items()} for s in starts]
    return {k: _store_dtype(np.concatenate([p[k] for p in parts])) for k in parts[0]}


def write_token_shards(
    data: str | Path, out_dir: str | Path, encode_fn: Callable[[torch.Tensor], Any], *,
    encoder_id: str, chunk: int | None = 16, overlap: int = 1,
    size: tuple[int, int] | None = None, patch: int = 4,
) -> dict[str, Any]:
    """Encode every clip once and write token shards mirroring the source shards.

    Output: `out_dir/shards/{name}.tar` (one per source shard, same name), per sample
    `{clip_id}.{array}.npy` (uint16 ids when they fit, else int32) and `{clip_id}.json` (the clip's
    metadata plus `arrays`: name -> shape), then `out_dir/manifest.json` (written last). Shards
    already present are kept, so an interrupted run continues where it stopped.

    Args:
        data: the dataset dir (with manifest.json) or a list of tar paths.
        encode_fn: (B, t, C, H, W) float [0, 1] -> tensor (B, t, ...) or dict of such tensors.
        encoder_id: identifies the encoder (e.g. the tokenizer checkpoint path and step); part of
            the token dataset's version.
        chunk: frames per encode_fn call (the models' training context); None = whole clip.
        overlap: frames shared by consecutive chunks (see encode_clip); 1 suits LAM actions.
        size, patch: as VideoDataConfig (must match what the encoder was trained on).
    Returns:
        the manifest dict.
    """
    shards, version = resolve_shards(data)
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    entries = []
    for src in shards:
        dst = out / "shards" / Path(src).name
        if not dst.exists():
            _write_token_shard(src, dst, encode_fn, chunk=chunk, overlap=overlap, size=size,
                               patch=patch)
        entries.append(_shard_entry(dst, out))
        log.info("token shard %s: %d samples", dst.name, entries[-1]["n_samples"])
    ident = json.dumps({"source": version, "encoder": encoder_id, "chunk": chunk,
                        "overlap": overlap,
                        "shards": [e["sha256"] for e in entries]}, sort_keys=True)
    manifest = {"version": hashlib.sha256(ident.encode()).hexdigest()[:16],
                "source_version": version, "encoder": encoder_id, "chunk": chunk,
                "overlap": overlap, "shards": entries}
    _atomic_write(out / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True)
                                          + "\n").encode())
    return manifest


def _write_token_shard(src: str, dst: Path, encode_fn: Callable, **kw: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + dst.name + ".", dir=dst.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in iter_samples([src]):
                meta = json.loads(sample["json"])
                raw = decode_mp4(sample["mp4"])
                frames = _frames_to_tensor(raw, kw["patch"], kw["size"])
                arrays = encode_clip(frames, encode_fn, kw["chunk"],
                                     kw["overlap"])
                meta["arrays"] = {k: list(v.shape) for k, v in arrays.items()}
                meta["n_frames"] = len(raw)
                key = sample["__key__"]
                for name in sorted(arrays):
                    _add_member(tar, f"{key}.{name}.npy", _npy_bytes(arrays[name]))
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _shard_entry(path: Path, root: Path) -> dict[str, Any]:
    data = path.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        n = sum(1 for m in tar.getmembers() if m.name.endswith(".json"))
    return {"path": str(path.relative_to(root)), "n_samples": n,
            "sha256": hashlib.sha256(data).hexdigest()}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _token_arrays(sample: Sample) -> dict[str, np.ndarray]:
    return {k[: -len(".npy")]: np.load(io.BytesIO(v), allow_pickle=False)
            for k, v in sample.items() if k.endswith(".npy")}


def _token_window(arrays: dict[str, np.ndarray], start: int, frames: int, stride: int) -> dict:
    span = (frames - 1) * stride + 1
    return {k: torch.from_numpy(v[start : start + span : stride].astype(np.int64)
                                if np.issubdtype(v.dtype, np.integer) else
                                v[start : start + span : stride].copy())
            for k, v in arrays.items()}


def make_train_tokens(sample: Sample, epoch: int, *, frames: int, stride: int, seed: int) -> list:
    """One random window: {"tokens": LongTensor (T, h, w), other arrays likewise}."""
    arrays = _token_arrays(sample)
    n = min(len(v) for v in arrays.values())
    span = (frames - 1) * stride + 1
    if n < span:
        log.warning("skip %s: %d frames < window %d", sample["__key__"], n, span)
        return []
    start = int(_window_rng(seed, epoch, sample["__key__"]).integers(0, n - span + 1))
    return [_token_window(arrays, start, frames, stride)]


def make_eval_tokens(sample: Sample, epoch: int, *, frames: int, stride: int, k: int) -> list:
    arrays = _token_arrays(sample)
    n = min(len(v) for v in arrays.values())
    span = (frames - 1) * stride + 1
    return [{**_token_window(arrays, s, frames, stride), "clip_id": sample["__key__"], "start": s}
            for s in window_starts(n, span, k)]


def token_loader(
    data: str | Path | Sequence[str | Path], cfg: VideoDataConfig, *,
    rank: int | None = None, world_size: int | None = None, pin_memory: bool = False,
) -> ShardLoader:
    """Training batches of token windows: {"tokens": LongTensor (B, T, h, w), ...}.

    Uses cfg's batch_size, frames, stride, seed, num_workers and shuffle_buffer (patch/size were
    fixed when the shards were written).
    """
    shards, _ = resolve_shards(data)
    fn = partial(make_train_tokens, frames=cfg.frames, stride=cfg.stride, seed=cfg.seed)
    return ShardLoader(shards, fn, batch_size=cfg.batch_size, seed=cfg.seed,
                       num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer,
                       rank=rank, world_size=world_size, pin_memory=pin_memory,
                       count_items=partial(count_windows, span=cfg.span))


def eval_token_batches(
    data: str | Path | Sequence[str | Path], cfg: VideoDataConfig, *, windows_per_clip: int = 1,
    rank: int = 0, world_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """Deterministic token windows, as eval_video_batches (keys: arrays, clip_id, start)."""
    shards, _ = resolve_shards(data)
    fn = partial(make_eval_tokens, frames=cfg.frames, stride=cfg.stride, k=windows_per_clip)
    yield from ShardStream(shards, fn, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank,
                           world_size=world_size, shuffle_buffer=0, infinite=False)


def video_tokens_per_sample(cfg: VideoDataConfig, height: int = 90, width: int = 160) -> int:
    """Patches per training sample (T * H'/p * W'/p): the token count for tokens/s and MFU."""
    h, w = cfg.size or (height, width)
    return cfg.frames * math.ceil(h / cfg.patch) * math.ceil(w / cfg.patch)
