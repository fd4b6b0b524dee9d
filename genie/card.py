"""Model card of a train-genie run: run_dir/MODEL_CARD.md (for people) + run_dir/model_card.json.

Built from the run's stage markers (genie.stages DONE.json), its eval/metrics.json and the lineage
the caller knows (dataset version, sources hash, clip-classifier version, ...). Fields the caller
leaves out are filled from the markers where they hold them (dataset version, code version, presets).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from genie import stages as S
from genie.presets import count_parameters

log = logging.getLogger(__name__)

INTENDED_USE = (
    "Research and demonstration: an action-controllable world model of 2D platformer videos in "
    "the manner of Genie (Bruce et al., 2024). A prompt frame and a sequence of latent actions "
    "(discovered without labels) generate the following frames."
)
LIMITS = [
    "Latent actions are discovered, not labelled: their meaning (left, jump, ...) must be "
    "found by playing, and may differ between runs.",
    "Trained only on the clips of its dataset version (public platformer videos at 160x90, "
    "10 FPS, filtered by a classifier); it knows nothing else and copies their biases.",
    "Memory is the model's context (16 frames by default): longer rollouts drift.",
    "Small presets (tiny, small) are pipeline demos, not useful models.",
    "Evaluation numbers are only as held out as the eval data (see eval.held_out); FVD is null "
    "unless a video feature network was configured.",
    "Generated frames may reproduce copyrighted game art seen in training; not for redistribution "
    "as game content.",
]


def _stage_summary(run: Path) -> dict[str, Any]:
    out = {}
    for name in S.STAGES:
        done = S.read_marker(run, name)
        if done is None:
            continue
        res = done["result"]
        out[name] = {
            "steps": res["steps"],
            "metrics": res["metrics"],
            "checkpoint": res["checkpoint"],
            "fingerprint": res["fingerprint"],
            "preset": done["inputs"].get("preset"),
            "seconds": res["seconds"],
            "dataset_version": done["inputs"].get("dataset_version"),
        }
    return out


def write_model_card(run_dir: str | Path, lineage: dict[str, Any]) -> Path:
    """Write MODEL_CARD.md and model_card.json into run_dir.

    Args:
        lineage: what made the run; usual keys dataset_version, sources_hash, classifier_version,
            code_version, presets (stage -> preset name); anything else is kept as given.
    Returns:
        the path of MODEL_CARD.md.
    """
    run = Path(run_dir)
    stages = _stage_summary(run)
    if not stages:
        raise FileNotFoundError(f"no finished stage (DONE.json) under {run}")
    markers: dict[str, dict[str, Any]] = {k: S.read_marker(run, k) or {} for k in stages}
    first = next(iter(markers.values()))
    full = dict(lineage)
    full.setdefault("dataset_version", (markers.get("tokenizer") or first)["inputs"]
                    .get("dataset_version"))  # fmt: skip
    full.setdefault("code_version", first["inputs"].get("code_version") or S.code_version())
    full.setdefault("presets", {k: v["preset"] for k, v in stages.items() if k != "tokenize"})
    for key in ("sources_hash", "classifier_version"):
        full.setdefault(key, None)
    cfg = S.config_from_dict(first["genie_config"])
    eval_path = run / "eval" / "metrics.json"
    ev = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    card = {
        "name": f"genie-{run.name}",
        "lineage": full,
        "stages": stages,
        "eval": ev,
        "parameters": count_parameters(cfg),
        "intended_use": INTENDED_USE,
        "limits": LIMITS,
    }
    S.write_json(run / "model_card.json", card)
    md = run / "MODEL_CARD.md"
    md.write_text(_markdown(card))
    log.info("model card %s", md)
    return md


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return f"{v:.4g}" if isinstance(v, float) else "n/a" if v is None else str(v)


def _markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Model card: {card['name']}",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Lineage",
        "| field | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in card["lineage"].items()]
    lines += ["", "## Parameters", "| component | parameters |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in card["parameters"].items()]
    lines += [
        "",
        "## Stages",
        "| stage | preset | steps | key metrics | checkpoint |",
        "|---|---|---:|---|---|",
    ]
    for name, s in card["stages"].items():
        keys = [
            k
            for k in ("loss", "psnr", "mse", "accuracy", "perplexity", "clips")
            if k in s["metrics"]
        ]
        shown = ", ".join(f"{k} {_fmt(s['metrics'][k])}" for k in keys)
        lines.append(f"| {name} | {s['preset']} | {s['steps']} | {shown} | {s['checkpoint']} |")
    lines += ["", "## Evaluation"]
    ev = card["eval"]
    if ev is None:
        lines.append("Not evaluated yet (run genie.evaluate).")
    else:
        lines += ["| metric | value |", "|---|---|"]
        for k in (
            "psnr",
            "ssim",
            "delta_psnr",
            "delta_psnr_t",
            "lam_usage",
            "lam_perplexity",
            "fvd",
            "fvd_reason",
            "n_clips",
            "maskgit_steps",
            "data_version",
            "held_out",
        ):
            lines.append(f"| {k} | {_fmt(ev.get(k))} |")
    lines += ["", "## Limits"] + [f"- {x}" for x in card["limits"]] + [""]
    return "\n".join(lines)
