"""Benchmark: clip filtering throughput per core (filters.features.compute_features + classifier
scoring) against decoding the same clips alone, in the same run.

Clips: by default one clip of each kind in tests/filters/synthetic.py (gameplay and the eight bad
kinds) per video seed, encoded to H.264 mp4 with the clip stage's own encoder command
(pipelines.ffmpeg_io.encoder_cmd: 160x90, 10 FPS, 160 frames, crf 23); or with `--data DIR` the
mp4s of a build-dataset folder's shards. The reference is PyAV decoding each mp4 to uint8 frames
(T, 90, 160, 3) in a plain loop: what any filter must pay to see the pixels. Then, on the decoded
frames, `compute_features` per clip, and the classifier's `score` on all clips' feature dicts at
once (as pipelines/finalize.py scores) and one clip at a time.

The classifier is `filters.classifier.load_default()` when filters/models/ ships one (and its
features match the code), else one trained here on synthetic features (tests/filters/synthetic.py,
logistic regression; scoring cost barely depends on which).

Each pass alternates per clip: decode, features, score that clip alone; then one batched score of
all clips (medians over passes). One process, one thread (BLAS pools limited to 1), so the CPU
seconds of the process are per-core seconds; they are the primary figures (`cpu`), because on this
shared machine wall time also counts the time other jobs hold the core (`wall`, also reported).
Reported: clips/s of each, `features_x_decode` (feature time / decode
time) and `ratio` = decode time / (decode + features + scoring) time, i.e. the share of the
decode-only clip rate that is left when every decoded clip is also filtered. No target is set for
this one; it says what the features cost in the cut stage (see bench_build.py for the whole stage).

Usage: python benchmarks/bench_filter.py [--data DIR] [--seeds 2] [--passes 3]
       [--out benchmarks/results/filter.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import av
import numpy as np
from threadpoolctl import threadpool_limits

from filters.classifier import ClipClassifier, load_default
from filters.features import compute_features
from pipelines.ffmpeg_io import encoder_cmd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* when run as a script
from common import Clock, machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

from tests.filters.synthetic import GOOD_KINDS, KINDS, make_clip  # noqa: E402


def synthetic_mp4s(seeds: int, tmp: Path) -> list[tuple[str, bytes]]:
    """(name, mp4 bytes) of one clip per kind and seed, encoded as the clip stage encodes."""
    out = []
    for kind in KINDS:
        for seed in range(seeds):
            frames = make_clip(kind, seed)  # (160, 90, 160, 3) uint8
            T, H, W, _ = frames.shape
            pattern = tmp / f"{kind}-{seed}-%03d.mp4"
            cmd = encoder_cmd(pattern, (W, H), 10, T, crf=23, preset="veryfast", threads=1)
            subprocess.run(cmd, input=frames.tobytes(), check=True)
            out.append((f"{kind}-{seed}", (tmp / f"{kind}-{seed}-000.mp4").read_bytes()))
    return out


def shard_mp4s(data: Path) -> list[tuple[str, bytes]]:
    manifest = json.loads((data / "manifest.json").read_text())
    out = []
    for s in manifest["shards"]:
        with tarfile.open(data / s["path"]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".mp4"):
                    fh = tar.extractfile(m)
                    assert fh is not None
                    out.append((m.name, fh.read()))
    return out


def decode(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def classifier(seed: int = 0) -> tuple[ClipClassifier, str]:
    try:
        clf = load_default()
    except ValueError as e:  # shipped model does not match the features: say so, train one
        print(f"default classifier unusable ({e}); training one on synthetic features")
        clf = None
    if clf is not None:
        return clf, f"filters/models default ({clf.card.get('family', '?')}, {clf.version})"
    from filters.train import train_classifier

    X, labels, groups = [], [], []
    for kind in KINDS:
        for s in range(3):
            X.append(compute_features(make_clip(kind, 100 + s)))
            labels.append(5 if kind in GOOD_KINDS else 1)
            groups.append(f"{kind}-{s}")
    res = train_classifier(X, labels, groups, seed=seed, families=("logreg",), n_splits=3)
    return res.classifier, "trained on synthetic features (logreg)"


def one_pass(clips: list[tuple[str, bytes]], clf: ClipClassifier) -> dict[str, Clock]:
    """Per clip: decode, then features on its frames, then score it alone (alternating per clip,
    so load drift hits all three); then score all clips' features in one call."""
    clocks = {k: Clock() for k in ("decode", "features", "score_one", "score_batch")}
    feats = []
    for _, mp4 in clips:
        frames = clocks["decode"](lambda mp4=mp4: decode(mp4))
        feats.append(clocks["features"](lambda frames=frames: compute_features(frames)))
        clocks["score_one"](lambda: clf.score(feats[-1:]))
    clocks["score_batch"](lambda: clf.score(feats))
    return clocks


def run(clips: list[tuple[str, bytes]], passes: int) -> dict[str, Any]:
    clf, clf_name = classifier()
    n_frames = [len(decode(m)) for _, m in clips[:2]]  # warm-up
    clf.score([compute_features(decode(clips[0][1]))])
    runs = [one_pass(clips, clf) for _ in range(passes)]
    n = len(clips)
    out: dict[str, Any] = {"clips": n, "frames_per_clip": int(np.mean(n_frames)),
                           "classifier": clf_name, "passes": passes}  # fmt: skip
    for unit in ("cpu", "wall"):  # single process, one thread: CPU seconds are per-core seconds
        med = {k: statistics.median(getattr(r[k], unit) for r in runs) for k in runs[0]}
        d, f, s, s1 = med["decode"], med["features"], med["score_batch"], med["score_one"]
        out[unit] = {
            "decode_clips_per_s": n / d, "features_clips_per_s": n / f,
            "score_batch_clips_per_s": n / s, "score_one_by_one_clips_per_s": n / s1,
            "decode_plus_filter_clips_per_s": n / (d + f + s),
            "features_x_decode": f / d, "ratio": d / (d + f + s),
            "ratio_one_by_one_scoring": d / (d + f + s1),
            "seconds_all": {k: [getattr(r[k], unit) for r in runs] for k in runs[0]},
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a build-dataset folder (manifest.json)")
    ap.add_argument("--seeds", type=int, default=2, help="synthetic videos per kind")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/filter.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clips = shard_mp4s(a.data) if a.data else synthetic_mp4s(a.seeds, Path(tmp))
    with threadpool_limits(1):  # per core: BLAS/OpenMP pools (numpy, scikit-learn) to 1 thread
        res = run(clips, a.passes)
    for unit in ("cpu", "wall"):
        r = res[unit]
        print(f"{res['clips']} clips ({unit} time): decode {r['decode_clips_per_s']:.1f} clips/s, "
              f"features {r['features_clips_per_s']:.1f} clips/s ({r['features_x_decode']:.2f}x "
              f"decode), scoring {r['score_batch_clips_per_s']:.0f} clips/s batched, "
              f"{r['score_one_by_one_clips_per_s']:.0f} one by one; decode+filter "
              f"{r['decode_plus_filter_clips_per_s']:.1f} clips/s = {r['ratio']:.3f} of decode")  # fmt: skip
    out = {
        "benchmark": "filter",
        "target": None,
        "data": str(a.data) if a.data else f"synthetic: {len(KINDS)} kinds x {a.seeds} seeds",
        **res,
        "machine": machine(1, av=av.__version__),
    }  # fmt: skip
    write_results(a.out, out)


if __name__ == "__main__":
    main()
