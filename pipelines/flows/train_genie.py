"""The ``train-genie`` flow: the paper's staged training as downstream tasks.

DAG: tokenizer || LAM -> tokenize shards -> dynamics -> evaluate -> model card. Each stage is a task
tagged ``gpu`` (a tag concurrency limit of one per GPU keeps stages from sharing a device); the
deployment runs on the ``gpu`` work pool. A stage already complete for the same inputs is skipped
(the stage's DONE marker, see :mod:`genie.stages`); a stage that crashed resumes from its newest
checkpoint when the task is retried or the flow is run again. Each stage runs in a subprocess:
under ``torchrun --standalone`` with ``nproc > 1`` (one node), or joining a rendezvous with
``nnodes > 1`` (many nodes: the same flow, same parameters, runs on every node; see
docs/SCALING.md), DDP or FSDP per ``strategy``.
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

from genie import remote
from genie.distributed import parse_nnodes, torchrun_args
from genie.stages import code_version

GPU_TAG = "gpu"


def run_stage_process(
    stage: str,
    data: str,
    run: str,
    preset: str,
    steps: int | None,
    on_change: str,
    launcher: list[str] | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Run one stage in its own process and return its result (as this node printed it).

    A process per stage keeps the trainer's global RNG seeding and memory to itself, and a crash
    (an OOM, a killed worker) fails only this task, which then resumes from its newest checkpoint.

    Args:
        launcher: arguments between ``python`` and ``-m genie.stages`` (genie.distributed's
            torchrun_args); none runs the stage as one plain process.
        extra: more ``genie.stages`` options (--strategy, --checkpoint-url).
    """
    cmd = [
        sys.executable,
        *(launcher or []),
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
    cmd += extra or []
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
    data: str,
    run: str,
    preset: str,
    steps: int,
    on_change: str,
    launcher: list[str],
    extra: list[str],
) -> dict[str, Any]:
    return run_stage_process("tokenizer", data, run, preset, steps, on_change, launcher, extra)


@task(name="train-lam", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def lam_task(
    data: str,
    run: str,
    preset: str,
    steps: int,
    on_change: str,
    launcher: list[str],
    extra: list[str],
) -> dict[str, Any]:
    return run_stage_process("lam", data, run, preset, steps, on_change, launcher, extra)


@task(
    name="tokenize-shards", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE
)
def tokenize_task(
    data: str, run: str, preset: str, on_change: str, launcher: list[str]
) -> dict[str, Any]:
    return run_stage_process("tokenize", data, run, preset, None, on_change, launcher)


@task(
    name="train-dynamics", tags=[GPU_TAG], retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE
)
def dynamics_task(
    run: str, preset: str, steps: int, on_change: str, launcher: list[str], extra: list[str]
) -> dict[str, Any]:
    return run_stage_process("dynamics", "", run, preset, steps, on_change, launcher, extra)


@task(name="evaluate", tags=[GPU_TAG], cache_policy=NO_CACHE)
def evaluate_task(run: str, data: str, clips: int, maskgit_steps: int) -> dict[str, Any]:
    from genie.evaluate import evaluate

    # data stays a string: it may be a URL
    metrics: dict[str, Any] = evaluate(Path(run), data, n_clips=clips, steps=maskgit_steps)
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
    m = json.loads(remote.read_text(remote.join(data, "manifest.json")))
    return {
        "dataset_version": m["version"],
        "dataset": data if remote.is_url(data) else str(Path(data).resolve()),
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
    nnodes: int | str = 1,
    node_rank: int = 0,
    rdzv_endpoint: str = "",
    rdzv_id: str = "",
    rdzv_backend: str = "c10d",
    strategy: str = "auto",
    checkpoint_url: str = "",
) -> dict[str, Any]:
    """Train the tokenizer and LAM, tokenize the shards, train dynamics, evaluate, write a card.

    Args:
        data: a build-dataset output folder or URL (its manifest.json names the shards and version).
        run: the run folder: one subfolder per stage, eval/, MODEL_CARD.md.
        preset: model sizes: tiny (tests), small (CPU demo), coinrun (paper App. F), paper.
        tokenizer_steps: optimizer steps for the video tokenizer.
        lam_steps: optimizer steps for the latent action model.
        dynamics_steps: optimizer steps for the dynamics model.
        nproc: processes (GPUs) per stage on this node; above 1 a stage runs under torchrun.
        eval_clips: held-out clips for evaluation.
        maskgit_steps: MaskGIT steps per generated frame in evaluation (the paper uses 25).
        rerun_changed: a stage whose inputs changed (new dataset version, preset, code) is retrained
            in a fresh folder (the old one is kept aside); when False such a run stops with an error.
        nnodes: nodes per stage, N or "MIN:MAX" (elastic). Above 1, run this flow with the same
            parameters on every node; each stage's torchrun agents meet at rdzv_endpoint.
        node_rank: this node, 0..N-1: torchrun's --node_rank with the static backend; with any
            backend, only node 0 evaluates and writes the model card.
        rdzv_endpoint: HOST:PORT of the rendezvous, reachable from every node; "" = one node.
        rdzv_id: the job's rendezvous id, the same on every node; "" = genie-{run folder name}.
            Each stage adds its name to it.
        rdzv_backend: c10d (hosted by the torchrun agent on HOST), static, etcd, etcd-v2.
        strategy: ddp, fsdp, or auto (the preset's: fsdp for paper, ddp for the others).
        checkpoint_url: an fsspec URL (s3://bucket/prefix) to copy checkpoints to, as
            URL/{run folder name}/{stage}/; a run folder without checkpoints resumes from there.
    """
    log = get_run_logger()
    if not remote.is_file(remote.join(data, "manifest.json")):
        raise FileNotFoundError(f"no dataset at {data}: run build-dataset first (no manifest.json)")
    run = str(Path(run).resolve())
    data = data if remote.is_url(data) else str(Path(data).resolve())
    rid = rdzv_id or f"genie-{Path(run).name}"
    multi = parse_nnodes(nnodes)[1] > 1 or bool(rdzv_endpoint)

    def launcher(stage: str, n: int) -> list[str]:
        return torchrun_args(
            nproc=n,
            nnodes=nnodes,
            node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint,
            rdzv_id=f"{rid}-{stage}",
            rdzv_backend=rdzv_backend,
        )

    launcher("tokenizer", nproc)  # a bad combination fails here, before anything starts
    extra = ["--strategy", strategy] + (
        ["--checkpoint-url", checkpoint_url] if checkpoint_url else []
    )
    oc = "rerun" if rerun_changed else "error"
    tok = tokenizer_task.submit(
        data, run, preset, tokenizer_steps, oc, launcher("tokenizer", nproc), extra
    )
    # The tokenizer and the LAM share no inputs: in parallel on one node. Across nodes one job at a
    # time: the agent hosting a c10d rendezvous exits with its job, taking the rendezvous with it.
    lam = lam_task.submit(
        data,
        run,
        preset,
        lam_steps,
        oc,
        launcher("lam", nproc),
        extra,
        wait_for=[tok] if multi else [],
    )  # type: ignore[call-overload]
    # tokenize: one process on one node; across nodes every node joins and ranks split the shards
    tokens = tokenize_task.submit(
        data, run, preset, oc, launcher("tokenize", nproc if multi else 1), wait_for=[tok, lam]
    )  # type: ignore[call-overload]
    dyn = dynamics_task.submit(
        run, preset, dynamics_steps, oc, launcher("dynamics", nproc), extra, wait_for=[tokens]
    )  # type: ignore[call-overload]
    results = {
        "tokenizer": tok.result(),
        "lam": lam.result(),
        "tokenize": tokens.result(),
        "dynamics": dyn.result(),
    }
    skipped = [s for s, r in results.items() if r.get("skipped")]
    if node_rank != 0:  # another node's flow run evaluates and writes the card
        log.info("train-genie node %d done (skipped: %s)", node_rank, ", ".join(skipped) or "none")
        return {"run": run, "node_rank": node_rank, "skipped": skipped, "pid": os.getpid()}
    metrics = evaluate_task(run, data, eval_clips, maskgit_steps)
    steps = {"tokenizer": tokenizer_steps, "lam": lam_steps, "dynamics": dynamics_steps}
    lineage = lineage_of(data, preset, steps)
    card = card_task(
        run, lineage
    )  # the card reads each stage's marker and eval/metrics.json itself
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
