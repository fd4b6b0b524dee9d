"""Evaluate a trained run: reconstruction, controllability (ΔtPSNR), LAM usage, FVD if configured.

On the first `n_clips` eval windows of `data` (genie.data.eval_video_batches: clips in shard order,
one window at frame 0 per clip; pass a held-out dataset folder for an honest number, the result
records whether its version is the training data's):
- tokenizer reconstruction PSNR and SSIM over every frame of a window of the tokenizer's context;
- rollouts from the first frame (the prompt), `horizon` frames long, with the LAM's actions inferred
  from the ground truth and with actions drawn uniformly at random; both rollouts use the same
  MaskGIT sampling seed, so only the actions differ. ΔtPSNR (paper §3, t = 4) = PSNR(x_t, x̂_t) with
  inferred actions minus with random ones (genie.metrics.delta_psnr); PSNR per frame for both curves;
- LAM codebook usage and perplexity of the inferred actions;
- FVD (real windows vs rollouts with inferred actions) only when a feature network is configured
  (fvd_features=, i3d_path= or $GENIE_I3D_PATH); otherwise null with the reason.
Writes run_dir/eval/metrics.json and run_dir/eval/report.html (PNG plots and GIFs as data URIs:
ground truth | inferred actions | random actions).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from genie import data as D
from genie import distributed as gdist
from genie import metrics as M
from genie import stages as S
from genie.dynamics import DynamicsModel
from genie.lam import LatentActionModel
from genie.maskgit import rollout
from genie.presets import GenieConfig
from genie.tokenizer import VideoTokenizer

log = logging.getLogger(__name__)


@torch.no_grad()
def _score_batch(
    x: torch.Tensor,
    models: dict[str, torch.nn.Module],
    cfg: GenieConfig,
    *,
    horizon: int,
    steps: int,
    temperature: float,
    seed: int,
    rng_actions: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Reconstruction scores, LAM actions and both rollouts of one batch of windows (B,T,C,H',W')."""
    tok = cast(VideoTokenizer, models["tokenizer"])
    lam = cast(LatentActionModel, models["lam"])
    dyn = cast(DynamicsModel, models["dynamics"])
    gt = x[..., : cfg.tokenizer.height, : cfg.tokenizer.width]
    recon = tok.decode(tok.encode(x))
    out = {"psnr": M.psnr(gt, recon).flatten(), "ssim": M.ssim(gt, recon).flatten(),
           "actions": lam.infer_actions(x).flatten(), "gt": gt[:, :horizon]}  # fmt: skip
    prompt = tok.encode(x[:, :1])  # (B, 1, h, w); the tokenizer is causal: same as in context
    inferred = lam.infer_actions(x[:, :horizon])  # (B, horizon-1)
    random = torch.randint(cfg.lam.n_codes, inferred.shape, generator=rng_actions)
    for name, acts in (("inferred", inferred), ("random", random.to(x.device))):
        # the same sampling noise for both rollouts: only the actions differ
        rng = torch.Generator(device=x.device).manual_seed(seed + 1)
        toks = rollout(dyn.logits, prompt, acts, steps=steps, temperature=temperature, rng=rng,
                       max_context=cfg.dynamics.max_frames)  # fmt: skip
        out[name] = tok.decode(toks)  # (B, horizon, C, h, w)
    return out


def _windows(data: str | Path, cfg: D.VideoDataConfig, n_clips: int) -> torch.Tensor:
    """The first n_clips eval windows (N, T, C, H', W') of data."""
    got: list[torch.Tensor] = []
    for batch in D.eval_video_batches(data, cfg, windows_per_clip=1):
        got.extend(batch["frames"].unbind(0))
        if len(got) >= n_clips:
            break
    if not got:
        raise ValueError(f"no eval windows of {cfg.frames} frames in {data}")
    return torch.stack(got[:n_clips])


@torch.no_grad()
def evaluate(
    run_dir: str | Path,
    data: str | Path,
    *,
    n_clips: int = 8,
    steps: int = 25,
    temperature: float = 2.0,
    seed: int = 0,
    horizon: int = 8,
    t: int = 4,
    batch_size: int = 4,
    fvd_features: M.FeatureFn | None = None,
    i3d_path: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate the run's newest tokenizer, LAM and dynamics checkpoints (see the module docstring).

    Args:
        run_dir: a run whose dynamics stage is DONE (genie.stages).
        data: a build-dataset folder (ideally held out from training).
        n_clips: eval windows (one per clip).
        steps: MaskGIT passes per generated frame (paper: 25; fewer for quick checks).
        temperature: MaskGIT sampling temperature (paper: 2; CoinRun: 1).
        horizon: frames per rollout, prompt included (t <= horizon <= the model's context).
        t: 1-based frame of ΔtPSNR (paper: 4).
        batch_size: windows per forward pass.
        fvd_features, i3d_path: the FVD feature network (see genie.metrics.fvd); None and no
            $GENIE_I3D_PATH: FVD is recorded as null with the reason.
        device: default CUDA if available, else CPU.
    Returns:
        the metrics dict written to run_dir/eval/metrics.json.
    """
    t0 = time.perf_counter()
    run = Path(run_dir)
    done = S.read_marker(run, "dynamics")
    if done is None:
        raise FileNotFoundError(f"no {run}/dynamics/DONE.json: train the dynamics stage first")
    cfg = S.config_from_dict(done["genie_config"])
    if not 1 <= t <= horizon <= cfg.dynamics.max_frames:
        raise ValueError(f"need 1 <= t ({t}) <= horizon ({horizon}) <= {cfg.dynamics.max_frames}")
    dev = torch.device(device) if device is not None else gdist.pick_device()
    models = S.load_models(run, cfg, dev)
    x_all = _windows(data, S.video_config(cfg, batch_size, 0, seed), n_clips)  # (N,T,C,H',W')
    rng_actions = torch.Generator().manual_seed(seed)
    parts = [_score_batch(x.to(dev), models, cfg, horizon=horizon, steps=steps,
                          temperature=temperature, seed=seed, rng_actions=rng_actions)
             for x in x_all.split(batch_size)]  # fmt: skip
    res = {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}
    gt_v, inf_v, rand_v, actions = res["gt"], res["inferred"], res["random"], res["actions"]
    codes = M.codebook_stats(actions, cfg.lam.n_codes)
    trained_on = (S.read_marker(run, "tokenizer") or {}).get("inputs", {}).get("dataset_version")
    data_version = S.dataset_version(data)
    out: dict[str, Any] = {
        "psnr": res["psnr"].mean().item(), "ssim": res["ssim"].mean().item(),
        "delta_psnr": M.delta_psnr(gt_v, inf_v, rand_v, t=t), "delta_psnr_t": t,
        "rollout_psnr_inferred": M.psnr(gt_v, inf_v).mean(0).tolist(),
        "rollout_psnr_random": M.psnr(gt_v, rand_v).mean(0).tolist(),
        "lam_usage": codes["usage"], "lam_perplexity": codes["perplexity"],
        "lam_action_counts": torch.bincount(actions, minlength=cfg.lam.n_codes).tolist(),
        **_fvd(gt_v, inf_v, fvd_features, i3d_path),
        "n_clips": int(x_all.shape[0]), "maskgit_steps": steps, "temperature": temperature,
        "horizon": horizon, "seed": seed, "data_version": data_version,
        "train_data_version": trained_on, "held_out": trained_on != data_version,
        "checkpoints": {k: (S.read_marker(run, k) or {}).get("result", {}).get("checkpoint")
                        for k in ("tokenizer", "lam", "dynamics")},
    }  # fmt: skip
    out["seconds"] = time.perf_counter() - t0
    eval_dir = run / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    S.write_json(eval_dir / "metrics.json", out)
    (eval_dir / "report.html").write_text(_report(out, gt_v, inf_v, rand_v))
    log.info(
        "eval: psnr %.2f ssim %.3f delta_psnr %.3f (%.1f s)",
        out["psnr"],
        out["ssim"],
        out["delta_psnr"],
        out["seconds"],
    )
    return out


def _fvd(
    real: torch.Tensor,
    fake: torch.Tensor,
    features: M.FeatureFn | None,
    i3d: str | Path | None,
) -> dict[str, Any]:
    if features is None and i3d is None and not os.environ.get(M.I3D_ENV):
        return {
            "fvd": None,
            "fvd_reason": "no feature network configured: no I3D weights "
            f"(i3d_path= or ${M.I3D_ENV}) and no fvd_features=",
        }
    if real.shape[0] < 2:
        return {"fvd": None, "fvd_reason": "FVD needs at least 2 clips"}
    try:
        return {"fvd": M.fvd(real, fake, feature_fn=features, i3d_path=i3d), "fvd_reason": None}
    except FileNotFoundError as e:  # configured path without weights: say so, keep the rest
        return {"fvd": None, "fvd_reason": str(e)}


# ------------------------------------------------------------------------------------------------
# Report


def _png_plot(out: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    ts = np.arange(1, len(out["rollout_psnr_inferred"]) + 1)
    a.plot(ts, out["rollout_psnr_inferred"], "o-", label="inferred actions")
    a.plot(ts, out["rollout_psnr_random"], "s--", label="random actions")
    a.axvline(out["delta_psnr_t"], color="grey", lw=0.8)
    a.set(xlabel="frame t (1 = prompt)", ylabel="PSNR vs ground truth (dB)", title="rollouts")
    a.legend()
    counts = out["lam_action_counts"]
    b.bar(range(len(counts)), counts)
    b.set(xlabel="latent action", ylabel="count", title="LAM actions on eval clips")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def rollout_gif(
    gt_TCHW: torch.Tensor,
    inf_TCHW: torch.Tensor,
    rand_TCHW: torch.Tensor,
    *,
    scale: int = 1,
    ms: int = 300,
) -> bytes:
    """One GIF: ground truth | inferred actions | random actions, side by side, 2 px gaps."""
    panels = []
    for frames in zip(gt_TCHW, inf_TCHW, rand_TCHW, strict=True):
        row = [f.permute(1, 2, 0).mul(255).round().clamp(0, 255).byte().numpy() for f in frames]
        gap = np.full((row[0].shape[0], 2, 3), 255, np.uint8)
        img = Image.fromarray(np.concatenate([row[0], gap, row[1], gap, row[2]], axis=1))
        panels.append(img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST))
    buf = io.BytesIO()
    panels[0].save(buf, format="GIF", save_all=True, append_images=panels[1:], duration=ms, loop=0)
    return buf.getvalue()


def _report(out: dict[str, Any], gt: torch.Tensor, inf: torch.Tensor, rand: torch.Tensor) -> str:
    scale = max(1, 192 // gt.shape[-1])
    fmt = {k: v for k, v in out.items() if isinstance(v, (int, float, str, type(None)))}
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(f'{v:.4g}' if isinstance(v, float) and math.isfinite(v) else str(v))}</td></tr>"
        for k, v in fmt.items()
    )  # fmt: skip
    gifs = "".join(
        f'<figure><img src="data:image/gif;base64,'
        f'{base64.b64encode(rollout_gif(gt[i], inf[i], rand[i], scale=scale)).decode()}">'
        f"<figcaption>clip {i}</figcaption></figure>"
        for i in range(min(4, gt.shape[0]))
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Genie evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:2px 10px}}figure{{display:inline-block}}
</style></head><body><h1>Genie evaluation</h1>
<p>ΔtPSNR (t = {out["delta_psnr_t"]}) = {out["delta_psnr"]:.3f} dB: PSNR of frame t generated with
LAM-inferred actions minus with random actions (larger = the actions control more).</p>
<table>{rows}</table>
<h2>Plots</h2><img src="data:image/png;base64,{_png_plot(out)}">
<h2>Rollouts: ground truth | inferred actions | random actions</h2>{gifs}
</body></html>
"""
