"""Benchmark: training frames per second of genie.data.video_loader over real shards against PyAV
decoding the same mp4s alone in a plain loop, in the same run.

The loader reads the tars, shuffles, draws each clip's window, decodes it (frames 0 .. start+span:
an mp4 is decoded from its key frame), converts to float, resizes, pads and collates. The reference
is the least any loader must pay for the same output: the same clips' mp4 bytes (read from the tars
before timing) decoded with PyAV (`av.open`, `decode`, `to_ndarray("rgb24")`) in a plain loop up
to the same window end, keeping the same window frames (same start rule as
genie.data.make_train_video). frames/s counts delivered window frames (T per clip) for both; the
figure is ratio = loader frames/s / reference frames/s, target >= 0.8.

Each timed pass is `epochs` epochs of a fresh loader (so the windows are epoch 0, 1, ... of the
seed, the same as the reference decodes; the loader's set-up is inside the time); medians over
passes. `workers=0` decodes in this process: that is the per-core ratio the target is about. Its
batches alternate with the reference decoding as many clips, so load drift on this shared machine
hits both, and the CPU time of the process is reported too (`ratio_cpu_time`: not inflated when
other jobs take the core). `workers=2` (the stages' default) decodes in two DataLoader processes;
its passes alternate with whole reference passes (its workers prefetch in the background) and it
is a wall-clock ratio against the one-core reference, for information: on a free 2-core machine
it could reach 2.

Shards: `--data DIR` (a build-dataset folder with manifest.json), or by default a few 16 s 160x90
10 FPS testsrc2 clips written as shards at run time (tests/genie/test_stages.py `make_shards`).

Usage: python benchmarks/bench_loader.py [--data DIR] [--clips 16] [--sizes native small tiny]
       [--workers 0 2] [--epochs 2] [--passes 5] [--out benchmarks/results/loader.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from genie.data import VideoDataConfig, resolve_shards, video_loader
from genie.presets import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* when run as a script
from common import Clock, machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

from tests.genie.test_stages import make_shards  # noqa: E402

# frame size (H, W) the loader resizes to; native keeps the shards' 160x90 (padded to 92)
SIZES = {"native": None, "small": (45, 80), "tiny": (32, 32)}


def _clips(shards: list[str]) -> list[tuple[str, bytes, int]]:
    """(clip key, mp4 bytes, n_frames) of every sample, read with tarfile (outside the timing)."""
    out = []
    for path in shards:
        with tarfile.open(path) as tar:
            files: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m)
                assert data is not None
                files.setdefault(key, {})[ext] = data.read()
        for key, f in files.items():
            out.append((key, f["mp4"], int(json.loads(f["json"])["n_frames"])))
    return out


def _start(seed: int, epoch: int, key: str, n: int, span: int) -> int:
    """The window start genie.data.make_train_video draws for a clip in an epoch."""
    rng = np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])
    return int(rng.integers(0, n - span + 1))


def _decode_window(mp4: bytes, start: int, cfg: VideoDataConfig) -> int:
    """PyAV, plain: decode up to the window's end, keep the window's frames; returns frames kept."""
    frames = []
    with av.open(io.BytesIO(mp4), mode="r") as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start + cfg.span:
                break
            if i >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return len(np.stack(frames)[:: cfg.stride])


def _work(clips: list[tuple[str, bytes, int]], cfg: VideoDataConfig, epochs: int) -> list:
    """(mp4, window start) of every clip in every epoch: what the loader decodes, in some order."""
    return [(mp4, _start(cfg.seed, e, key, n, cfg.span))
            for e in range(epochs) for key, mp4, n in clips]  # fmt: skip


def interleaved_pass(data: Any, cfg: VideoDataConfig, work: list) -> tuple[Clock, Clock, int]:
    """A fresh loader, one batch at a time, each followed by the reference on as many clips.

    Over the pass both see exactly the same (clip, window) set; alternating per batch makes a
    load spike on the shared machine hit both. Returns (loader clock, reference clock, frames).
    """
    loader, lc, rc, frames, B = video_loader(data, cfg), Clock(), Clock(), 0, cfg.batch_size
    for i in range(len(work) // B):
        x = lc(lambda: next(loader))  # (B, T, C, H', W') float
        frames += x.shape[0] * x.shape[1]
        kept = rc(lambda i=i: sum(_decode_window(m, s, cfg) for m, s in work[i * B : (i + 1) * B]))
        if kept != x.shape[0] * x.shape[1]:
            raise RuntimeError(f"reference kept {kept} frames, loader gave {x.shape[:2]}")
    return lc, rc, frames


def block_pass(data: Any, cfg: VideoDataConfig, work: list) -> tuple[Clock, Clock, int]:
    """Reference over all of `work`, then a fresh loader over as many batches (wall time only:
    with worker processes the loader prefetches in the background, so per-batch alternation would
    let its workers run during the reference's time)."""
    rc, lc = Clock(), Clock()
    frames = rc(lambda: sum(_decode_window(m, s, cfg) for m, s in work))

    def take() -> int:
        loader = video_loader(data, cfg)
        return sum(next(loader).shape[0] * cfg.frames for _ in range(len(work) // cfg.batch_size))

    if lc(take) != frames:
        raise RuntimeError("loader and reference frame counts differ")
    return lc, rc, frames


def bench(data: Any, size: str, workers: int, batch: int, epochs: int, passes: int) -> dict:
    shards, _ = resolve_shards(data)
    clips = _clips(shards)
    cfg = VideoDataConfig(batch_size=batch, frames=16, patch=4, size=SIZES[size],
                          num_workers=workers, seed=0)  # fmt: skip
    if len(clips) * epochs % batch:
        raise SystemExit(f"{len(clips)} clips x {epochs} epochs is not a multiple of batch {batch}")
    if workers and len(clips) // workers % batch:  # each worker batches its own shards' clips
        raise SystemExit(f"{len(clips)} clips / {workers} workers not a multiple of batch {batch}")
    work = _work(clips, cfg, epochs)
    one_pass = interleaved_pass if workers == 0 else block_pass
    one_pass(data, cfg, _work(clips, cfg, 1)[:batch])  # warm-up (codec init, first imports)
    runs = [one_pass(data, cfg, work) for _ in range(passes)]
    frames = runs[0][2]
    ref_w, load_w = [r.wall for _, r, _ in runs], [lc.wall for lc, _, _ in runs]
    ratios = [r / ld for r, ld in zip(ref_w, load_w, strict=True)]
    out = {
        "size": size, "resize_to": SIZES[size], "num_workers": workers, "batch_size": batch,
        "clips": len(clips), "epochs_per_pass": epochs, "passes": passes,
        "timing": "alternating per batch" if workers == 0 else "alternating per pass",
        "frames_per_pass": frames,
        "reference_fps": frames / statistics.median(ref_w),
        "loader_fps": frames / statistics.median(load_w),
        "ratio": statistics.median(ratios), "ratio_per_pass": ratios,
        "reference_s_all": ref_w, "loader_s_all": load_w,
    }  # fmt: skip
    if workers == 0:  # same process: CPU time is immune to being descheduled by other jobs
        cpu = [r.cpu / lc.cpu for lc, r, _ in runs]
        out.update(ratio_cpu_time=statistics.median(cpu), ratio_cpu_time_per_pass=cpu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a build-dataset folder (manifest.json)")
    ap.add_argument("--clips", type=int, default=16, help="generated clips (one per shard)")
    ap.add_argument("--sizes", nargs="+", default=["native", "small"], choices=sorted(SIZES))
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed pass")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/loader.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    assert PRESETS["small"]().tokenizer.height == SIZES["small"][0]  # type: ignore[index]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or make_shards(Path(tmp) / "data", n_shards=a.clips)
        for size in a.sizes:
            for w in a.workers:
                r = bench(data, size, w, a.batch, a.epochs, a.passes)
                rows.append(r)
                cpu = f", CPU-time ratio {r['ratio_cpu_time']:.3f}" if w == 0 else ""
                print(f"{size:6s} workers={w}: loader {r['loader_fps']:7.1f} frames/s, "
                      f"PyAV alone {r['reference_fps']:7.1f} frames/s, ratio {r['ratio']:.3f}{cpu}",
                      flush=True)  # fmt: skip
    res = {
        "benchmark": "loader",
        "target": "loader frames/s >= 0.8 x PyAV decode alone (workers=0, one core)",
        "data": str(a.data) if a.data else f"generated: {a.clips} testsrc2 clips, 16 s 160x90 10 fps",
        "results": rows,
        "machine": machine(a.threads, torch=torch.__version__, av=av.__version__),
    }  # fmt: skip
    write_results(a.out, res)


if __name__ == "__main__":
    main()
