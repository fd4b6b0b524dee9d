"""Benchmark: probe + cut + features throughput against ffmpeg decoding the same videos alone.

Both are measured in the same run on the same files, one process at a time (per core), so the ratio
does not depend on the machine. The reference is what any cutter must pay at least: one ffmpeg
decode of each source to 10 FPS at 160x90, discarded (``-f null``). The pipeline does that same
decode once, plus scene and title-card detection, features, signatures and the clip encoder.

Also records the peak memory of a process that cuts one video and of one that cuts all of them, to
show that memory stays flat as the number of videos grows (frames are streamed, never listed).

Usage: python benchmarks/bench_build.py --corpus data/sample-corpus [--out benchmarks/results/build.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

from filters.features import compute_features
from pipelines.clip import ClipConfig, cut_video
from pipelines.probe import probe


def _videos(corpus: Path) -> list[Path]:
    with open(corpus / "labels.csv", newline="") as fh:
        stems = [r["id"] for r in csv.DictReader(fh) if r["kind"] == "gameplay"]
    files = [p for p in corpus.rglob("*.mp4") if p.stem in stems]
    return sorted(files)


def _decode_only(path: Path, cfg: ClipConfig) -> None:
    vf = f"fps={cfg.fps},scale={cfg.width}:{cfg.height}:force_original_aspect_ratio=decrease"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-threads",
            "1",
            "-i",
            str(path),
            "-vf",
            vf,
            "-f",
            "null",
            "-",
        ],
        check=True,
    )


def _duration(path: Path, cfg: ClipConfig) -> float:
    pr = probe(path, cfg)
    return float(pr.duration_s or 0.0)


def _peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024.0


def _peak_for(videos: list[Path]) -> float:
    """Peak RSS (MiB) of a fresh process that probes, cuts and featurises ``videos`` in turn."""
    code = (
        "import sys, resource, tempfile\n"
        "from pathlib import Path\n"
        "from filters.features import compute_features\n"
        "from pipelines.clip import ClipConfig, cut_video\n"
        "cfg = ClipConfig()\n"
        "with tempfile.TemporaryDirectory() as tmp:\n"
        "    for i, v in enumerate(sys.argv[1:]):\n"
        "        cut_video(Path(v), f'mem-{i}', Path(tmp), cfg, compute_features)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, videos)], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def run(corpus: Path, repeats: int = 1) -> dict[str, Any]:
    cfg = ClipConfig()
    videos = _videos(corpus)
    if not videos:
        raise SystemExit(f"no gameplay videos under {corpus}")
    seconds = sum(_duration(v, cfg) for v in videos)

    t0 = time.perf_counter()
    for _ in range(repeats):
        for v in videos:
            _decode_only(v, cfg)
    t_decode = (time.perf_counter() - t0) / repeats

    n_clips = 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for r in range(repeats):
            for v in videos:
                probe(v, cfg)
                rep = cut_video(
                    v,
                    f"bench-{v.stem}-{r}".replace(".", "_"),
                    Path(tmp) / str(r),
                    cfg,
                    compute_features,
                )
                n_clips += len(rep.clips)
        t_pipeline = (time.perf_counter() - t0) / repeats
    n_clips //= repeats
    return {
        "machine": machine(1),
        "videos": len(videos),
        "source_seconds": round(seconds, 1),
        "clips": n_clips,
        "decode_only_s": round(t_decode, 3),
        "pipeline_s": round(t_pipeline, 3),
        "decode_only_source_s_per_core_s": round(seconds / t_decode, 2),
        "pipeline_source_s_per_core_s": round(seconds / t_pipeline, 2),
        "pipeline_clips_per_core_s": round(n_clips / t_pipeline, 2),
        # the figure that matters: 1.0 means cutting costs no more than decoding alone
        "ratio_vs_decode_only": round(t_decode / t_pipeline, 3),
        "target_ratio": 0.8,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        # flat memory: a process that cuts one video peaks about as high as one that cuts them all
        "peak_rss_mb_1_video": round(_peak_for(videos[:1]), 1),
        f"peak_rss_mb_{len(videos)}_videos": round(_peak_for(videos), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--corpus", type=Path, required=True, help="a sample corpus folder (labels.csv)"
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/build.json"))
    a = ap.parse_args()
    res = run(a.corpus, a.repeats)
    print(json.dumps(res, indent=2))
    write_results(a.out, res)


if __name__ == "__main__":
    main()
