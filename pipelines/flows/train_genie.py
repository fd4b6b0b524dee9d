"""The ``train-genie`` flow: the paper's staged training as downstream tasks.

DAG: tokenizer || LAM -> tokenize shards -> dynamics -> evaluate -> model card. Each stage is a task
tagged ``gpu`` (a tag concurrency limit of one per GPU keeps stages from sharing a device); the
deployment runs on the ``gpu`` work pool. A stage already complete for the same inputs is skipped
(the stage's DONE marker, see :mod:`genie.stages`); a stage that crashed resumes from its newest
checkpoint when the task is retried or the flow is run again. With ``nproc > 1`` a stage runs under
``torchrun`` (DDP) in a subprocess; otherwise in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from genie.stages import code_version

GPU_TAG = "gpu"


def run_stage_process(
    stage: str, data: str, run: str, preset: str, steps: int | None, nproc: int, on_change: str
) -> dict[str, Any]:
    """Run one stage in its own process (under torchrun when ``nproc > 1``) and return its result.

    A process per stage keeps the trainer's global RNG seeding and memory to itself, and a crash
    (an OOM, a killed worker) fails only this task, which then resumes from its newest checkpoint.
    """
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [
        *launcher,
        "-m",
        "genie.stages",
        stage,
        "--run-dir",
        run,
        "--preset",
        preset,
        "--on-change",
        on_change,
    ]
    if data:
        cmd += ["--data", data]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    # rank 0 prints the result as (indented) JSON last: parse from its opening line
    lines = out.stdout.splitlines()
    start = max((i for i, line in enumerate(lines) if line == "{"), default=None)
    if start is None:
        raise RuntimeError(f"stage {stage} printed no result:\n{out.stdout[-2000:]}")
    result: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return result


@task(
    name="train-tokenizer", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE
)
def tokenizer_task(
    data: str, run: str, preset: str, steps: int, nproc: int, on_change: str
) -> dict[str, Any]:
    return run_stage_process("tokenizer", data, run, preset, steps, nproc, on_change)


@task(name="train-lam", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def lam_task(
    data: str, run: str, preset: str, steps: int, nproc: int, on_change: str
) -> dict[str, Any]:
    return run_stage_process("lam", data, run, preset, steps, nproc, on_change)


@task(
    name="tokenize-shards", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE
)
def tokenize_task(data: str, run: str, preset: str, on_change: str) -> dict[str, Any]:
    return run_stage_process("tokenize", data, run, preset, None, 1, on_change)


@task(
    name="train-dynamics", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE
)
def dynamics_task(run: str, preset: str, steps: int, nproc: int, on_change: str) -> dict[str, Any]:
    return run_stage_process("dynamics", "", run, preset, steps, nproc, on_change)


@task(name="evaluate", tags=[GPU_TAG], cache_policy=NO_CACHE)
def evaluate_task(run: str, data: str, clips: int, maskgit_steps: int) -> dict[str, Any]:
    from genie.evaluate import evaluate

    metrics: dict[str, Any] = evaluate(Path(run), Path(data), n_clips=clips, steps=maskgit_steps)
    return metrics


@task(name="model-card", cache_policy=NO_CACHE)
def card_task(run: str, lineage: dict[str, Any]) -> str:
    from genie.card import write_model_card

    return str(write_model_card(Path(run), lineage))


def curves_markdown(run: Path) -> str:
    """Loss and codebook-usage curves of every trained stage (PNG as data URIs) and the eval report."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ("tokenizer", "lam", "dynamics") if (run / s / "metrics.jsonl").exists()]
    if not stages:
        return "no training metrics yet"
    fig, axes = plt.subplots(2, len(stages), figsize=(4 * len(stages), 5), squeeze=False)
    for i, stage in enumerate(stages):
        rows = [
            json.loads(x)
            for x in (run / stage / "metrics.jsonl").read_text().splitlines()
            if x.strip()
        ]
        last = {
            r["step"]: r for r in rows if "loss" in r
        }  # a resumed run may repeat steps: keep the last
        steps = sorted(last)
        axes[0][i].plot(steps, [last[k]["loss"] for k in steps])
        axes[0][i].set_title(f"{stage} loss")
        key = "codebook_usage" if any("codebook_usage" in last[k] for k in steps) else "accuracy"
        axes[1][i].plot(steps, [last[k].get(key, float("nan")) for k in steps], color="#d0804a")
        axes[1][i].set_title(f"{stage} {key.replace('_', ' ')}")
        axes[1][i].set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    report = run / "eval" / "report.html"
    md = f"![training curves](data:image/png;base64,{img})\n\n"
    if report.exists():  # the first rollout GIF of the evaluation: ground truth | inferred | random
        html = report.read_text()
        if 'src="data:image/gif;base64,' in html:
            gif = html.split('src="data:image/gif;base64,', 1)[1].split('"', 1)[0]
            md += f"![rollout: ground truth, inferred actions, random actions](data:image/gif;base64,{gif})\n\n"
    return md + f"All reconstructions and rollouts: `{report}`\n"


def lineage_of(data: str, preset: str, steps: dict[str, int]) -> dict[str, Any]:
    """What made this model: the dataset's manifest facts, the code version, the presets."""
    m = json.loads((Path(data) / "manifest.json").read_text())
    return {
        "dataset_version": m["version"],
        "dataset": str(Path(data).resolve()),
        "sources_hash": m.get("sources_hash"),
        "classifier_version": (m.get("classifier") or {}).get("version"),
        "classifier_threshold": (m.get("classifier") or {}).get("threshold"),
        "code_version": code_version(),  # the model code's version, as the stage fingerprints use it
        "preset": preset,
        "steps": steps,
    }


@flow(name="train-genie")
def train_genie(
    data: str = "data/dataset",
    run: str = "runs/genie",
    preset: str = "tiny",
    tokenizer_steps: int = 200,
    lam_steps: int = 200,
    dynamics_steps: int = 200,
    nproc: int = 1,
    eval_clips: int = 4,
    maskgit_steps: int = 8,
    rerun_changed: bool = False,
) -> dict[str, Any]:
    """Train the tokenizer and LAM, tokenize the shards, train dynamics, evaluate, write a card.

    Args:
        data: a build-dataset output folder (its manifest.json names the shards and version).
        run: the run folder: one subfolder per stage, eval/, MODEL_CARD.md.
        preset: model sizes: tiny (tests), small (CPU demo), coinrun (paper App. F), paper.
        tokenizer_steps: optimizer steps for the video tokenizer.
        lam_steps: optimizer steps for the latent action model.
        dynamics_steps: optimizer steps for the dynamics model.
        nproc: processes (GPUs) per stage; above 1 a stage runs under torchrun.
        eval_clips: held-out clips for evaluation.
        maskgit_steps: MaskGIT steps per generated frame in evaluation (the paper uses 25).
        rerun_changed: a stage whose inputs changed (new dataset version, preset, code) is retrained
            in a fresh folder (the old one is kept aside); when False such a run stops with an error.
    """
    log = get_run_logger()
    if not (Path(data) / "manifest.json").exists():
        raise FileNotFoundError(f"no dataset at {data}: run build-dataset first (no manifest.json)")
    run = str(Path(run).resolve())
    data = str(Path(data).resolve())
    # Parallel where the paper's staging allows it: the tokenizer and the LAM share no inputs.
    oc = "rerun" if rerun_changed else "error"
    tok = tokenizer_task.submit(data, run, preset, tokenizer_steps, nproc, oc)
    lam = lam_task.submit(data, run, preset, lam_steps, nproc, oc)
    tokens = tokenize_task.submit(data, run, preset, oc, wait_for=[tok, lam])  # type: ignore[call-overload]
    dyn = dynamics_task.submit(run, preset, dynamics_steps, nproc, oc, wait_for=[tokens])  # type: ignore[call-overload]
    ev = evaluate_task.submit(run, data, eval_clips, maskgit_steps, wait_for=[dyn])  # type: ignore[call-overload]
    results = {
        "tokenizer": tok.result(),
        "lam": lam.result(),
        "tokenize": tokens.result(),
        "dynamics": dyn.result(),
    }
    metrics = ev.result()
    steps = {"tokenizer": tokenizer_steps, "lam": lam_steps, "dynamics": dynamics_steps}
    lineage = lineage_of(data, preset, steps)
    card = card_task(
        run, lineage
    )  # the card reads each stage's marker and eval/metrics.json itself
    skipped = [s for s, r in results.items() if r.get("skipped")]
    log.info("train-genie done: %s (skipped: %s)", card, ", ".join(skipped) or "none")
    table = [
        {
            "stage": s,
            "skipped": r.get("skipped"),
            "steps": r.get("steps"),
            "seconds": r.get("seconds"),
        }
        for s, r in results.items()
    ]
    create_table_artifact(key="train-genie-stages", table=table, description=f"run {run}")
    create_table_artifact(
        key="train-genie-eval",
        table=[
            {"metric": k, "value": v}
            for k, v in metrics.items()
            if isinstance(v, (int, float)) or v is None
        ],
        description="held-out evaluation",
    )
    create_markdown_artifact(key="train-genie-model-card", markdown=Path(card).read_text())
    create_markdown_artifact(key="train-genie-curves", markdown=curves_markdown(Path(run)))
    return {
        "run": run,
        "card": card,
        "skipped": skipped,
        "eval": metrics,
        "lineage": lineage,
        "pid": os.getpid(),
    }
