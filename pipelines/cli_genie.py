"""The model commands of the ``genie`` CLI: train (tokenizer | lam | dynamics), tokenize, evaluate.

Each runs one genie.stages stage in this process (single process, so no torchrun or strategy
options here; for several processes or nodes use the train-genie flow's nproc/nnodes/rdzv_*
parameters, or ``torchrun ... -m genie.stages STAGE ...`` as docs/SCALING.md shows). A stage already
done with the same inputs is skipped; an interrupted one resumes from its newest checkpoint, here or
under ``--checkpoint-url``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STAGE_HELP = {
    "tokenizer": "train the video tokenizer (VQ-VAE) on a dataset",
    "lam": "train the latent action model on a dataset",
    "dynamics": "train the dynamics model on RUN_DIR/tokens (run `genie tokenize` first)",
}


def _usage(msg: str) -> Exception:
    from pipelines.cli import UsageError  # here, not at the top: pipelines.cli imports this module

    return UsageError(msg)


def _need_dataset(path: str | None) -> str:
    from genie import remote

    if path is None:
        raise _usage("--data is required")
    if not remote.is_file(remote.join(path, "manifest.json")):
        raise _usage(f"no manifest.json in {path}: is it a build-dataset output folder?")
    return path


def _need_done(run: str, stage: str, hint: str) -> dict[str, Any]:
    from genie import stages as S

    done = S.read_marker(run, stage)
    if done is None:
        raise _usage(f"{run}/{S.STAGES[stage].folder}/DONE.json not found: {hint}")
    return done


def _print_result(res: Any) -> None:
    state = "skipped (already done)" if res.skipped else f"done in {res.seconds:.1f} s"
    print(f"{res.stage}: {state}, {res.steps} steps, fingerprint {res.fingerprint}")
    shown = {k: round(v, 4) for k, v in res.metrics.items()
             if k in ("loss", "psnr", "accuracy", "perplexity", "clips", "shards")}  # fmt: skip
    if shown:
        print("  " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    print(f"  output: {res.checkpoint}")


def _run(stage: str, **kw: Any) -> int:
    from genie import stages as S

    try:
        res = S.run_stage(stage, **kw)
    except S.StageChanged as e:
        raise _usage(f"{e} (CLI: --rerun)") from e
    _print_result(res)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    if a.stage == "dynamics":
        _need_done(a.out, "tokenize", "run `genie tokenize` first")
        data = None
    else:
        data = _need_dataset(a.data)
    return _run(
        a.stage,
        data=data,
        run_dir=a.out,
        preset=a.preset,
        steps=a.steps,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        seed=a.seed,
        on_change="rerun" if a.rerun else "error",
        checkpoint_url=a.checkpoint_url,
    )


def cmd_tokenize(a: argparse.Namespace) -> int:
    data = _need_dataset(a.data)
    hint = "train the tokenizer and the LAM first (`genie train tokenizer|lam`)"
    tok = _need_done(a.run, "tokenizer", hint)
    _need_done(a.run, "lam", hint)
    preset = a.preset or tok["inputs"]["preset"]
    return _run("tokenize", data=data, run_dir=a.run, preset=preset,
                on_change="rerun" if a.rerun else "error")  # fmt: skip


def cmd_evaluate(a: argparse.Namespace) -> int:
    data = _need_dataset(a.data)
    _need_done(a.run, "dynamics", "train the dynamics model first (`genie train dynamics`)")
    from genie.evaluate import evaluate

    m = evaluate(a.run, data, n_clips=a.clips, steps=a.maskgit_steps, temperature=a.temperature,
                 seed=a.seed, horizon=a.horizon)  # fmt: skip
    if a.json:
        print(json.dumps(m, indent=2))
        return 0
    dt = m["delta_psnr"]
    print(
        f"eval on {m['n_clips']} clips ({'held out' if m['held_out'] else 'training data'}): "
        f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, "
        f"delta_{m['delta_psnr_t']}PSNR {dt:+.3f} dB, LAM usage {m['lam_usage']:.0%}"
    )
    print(f"  FVD: {m['fvd'] if m['fvd'] is not None else 'n/a (' + m['fvd_reason'] + ')'}")
    print(f"  report: {Path(a.run) / 'eval' / 'report.html'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train`, `tokenize` and `evaluate` to the genie CLI's subcommands."""
    from genie.presets import PRESETS

    presets = sorted(PRESETS)
    tr = sub.add_parser("train", help="train a Genie component (a train-genie stage)")
    stages = tr.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, text in STAGE_HELP.items():
        p = stages.add_parser(stage, help=text)
        p.add_argument(
            "--data",
            required=stage != "dynamics",
            help="build-dataset folder or URL" + (" (unused)" if stage == "dynamics" else ""),
        )
        p.add_argument("--preset", required=True, choices=presets, help="model size preset")
        p.add_argument("--out", required=True, help="run folder (RUN_DIR)")
        p.add_argument(
            "--steps",
            type=int,
            default=None,
            help="optimizer steps (default: 200 tiny, 2000 small, the paper's otherwise)",
        )
        p.add_argument("--batch-size", type=int, default=None, help="clips per batch")
        p.add_argument("--num-workers", type=int, default=2, help="data loader workers")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--checkpoint-url",
            default="",
            help="also keep checkpoints under URL/RUN/STAGE/ (e.g. s3://bucket/runs) "
            "and resume from there when RUN_DIR has none",
        )
        p.add_argument("--rerun", action="store_true",
                       help="if RUN_DIR holds this stage made with other inputs, move it aside "
                            "and start afresh (default: refuse)")  # fmt: skip
        p.set_defaults(fn=cmd_train)

    t = sub.add_parser("tokenize", help="encode a dataset with a run's tokenizer and LAM")
    t.add_argument("--data", required=True, help="build-dataset folder")
    t.add_argument("--run", required=True, help="run folder with trained tokenizer and lam")
    t.add_argument(
        "--preset", choices=presets, default=None, help="default: the tokenizer's preset"
    )
    t.add_argument("--rerun", action="store_true", help="replace tokens made with other inputs")
    t.set_defaults(fn=cmd_tokenize)

    e = sub.add_parser("evaluate", help="PSNR/SSIM, delta-t PSNR, LAM usage; HTML report")
    e.add_argument("--run", required=True, help="run folder with a trained dynamics model")
    e.add_argument("--data", required=True, help="build-dataset folder (ideally held out)")
    e.add_argument("--clips", type=int, default=8, help="eval clips (default 8)")
    e.add_argument("--maskgit-steps", type=int, default=25, help="MaskGIT passes (paper: 25)")
    e.add_argument("--temperature", type=float, default=2.0, help="sampling temperature")
    e.add_argument("--horizon", type=int, default=8, help="rollout frames, prompt included")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(fn=cmd_evaluate)
