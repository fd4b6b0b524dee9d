"""Evaluation metrics: PSNR, SSIM, codebook usage, the paper's ΔtPSNR, and FVD with a pluggable network.

Frames are float tensors in [0, data_range] shaped (..., C, H, W); per-image results keep the leading
axes. Videos are (B, T, C, H, W).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# PSNR is infinite for identical frames; it is capped here (MSE floored at data_range^2 * 1e-10), so a
# perfect frame counts as 100 dB and batch means stay finite.
PSNR_CAP_DB = 100.0


def psnr(
    x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, cap_db: float = PSNR_CAP_DB
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(range^2 / MSE), capped at cap_db.

    Args: x, y (..., C, H, W). Returns (...) float.
    """
    mse = (x.float() - y.float()).pow(2).mean(dim=(-3, -2, -1))
    floor = data_range**2 * 10 ** (-cap_db / 10)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(floor))


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(
        -((torch.arange(size, dtype=torch.float32) - (size - 1) / 2) ** 2) / (2 * sigma**2)
    )
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, gaussian window 11 / sigma 1.5, 'valid' borders.

    The window shrinks (to an odd size) for images smaller than it. K1 = 0.01, K2 = 0.03; channels are
    averaged. Args: x, y (..., C, H, W). Returns (...) float; ssim(x, x) == 1.
    """
    lead, (C, H, W) = x.shape[:-3], x.shape[-3:]
    size = min(window, H, W)
    size -= 1 - size % 2  # odd
    # float64: var = E[x^2] - E[x]^2 cancels badly in float32 against c2 ~ 1e-3 on flat regions
    g = _gaussian_1d(size, sigma).to(x.device, torch.float64)
    kernel_C1KK = (g[:, None] * g[None, :]).expand(C, 1, size, size)
    x_NCHW, y_NCHW = x.double().reshape(-1, C, H, W), y.double().reshape(-1, C, H, W)

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, kernel_C1KK, groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x_NCHW), blur(y_NCHW)
    var_x = blur(x_NCHW * x_NCHW) - mu_x**2
    var_y = blur(y_NCHW * y_NCHW) - mu_y**2
    cov = blur(x_NCHW * y_NCHW) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.mean(dim=(-3, -2, -1)).reshape(lead).float()


def codebook_stats(indices: torch.Tensor, n_codes: int) -> dict[str, float]:
    """Usage (fraction of codes used at least once) and perplexity (exp entropy, 1..n_codes)."""
    counts = torch.bincount(indices.flatten().long(), minlength=n_codes).float()
    p = counts / counts.sum().clamp_min(1)
    perplexity = math.exp(-(p * torch.log(p.clamp_min(1e-10))).sum().item())
    return {"usage": (counts > 0).float().mean().item(), "perplexity": perplexity}


def delta_psnr(
    gt: torch.Tensor,
    gen_inferred: torch.Tensor,
    gen_random: torch.Tensor,
    t: int = 4,
    *,
    data_range: float = 1.0,
) -> float:
    """The paper's controllability metric ΔtPSNR = PSNR(x_t, x̂_t) − PSNR(x_t, x̂'_t) (§3, t = 4).

    Args:
        gt: ground-truth video (B, T, C, H, W).
        gen_inferred: the video generated from the same prompt with the LAM-inferred actions.
        gen_random: the video generated with actions sampled uniformly at random.
        t: 1-based frame number as in the paper's x_t (x_1 = the first, prompt, frame); index t-1.
    Returns:
        the batch mean in dB (larger = the actions control more).
    """
    if not 1 <= t <= gt.shape[1]:
        raise ValueError(f"t = {t} outside the video's {gt.shape[1]} frames")
    x_t = gt[:, t - 1]
    d = psnr(x_t, gen_inferred[:, t - 1], data_range=data_range) - psnr(
        x_t, gen_random[:, t - 1], data_range=data_range
    )
    return d.mean().item()


FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # videos (N,T,C,H,W) in [0,1] -> features (N,F)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, F), float64."""
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    # tr sqrt(S_a S_b) = tr sqrt(S_a^1/2 S_b S_a^1/2), a symmetric PSD matrix: use eigh, no sqrtm
    lam, vec = torch.linalg.eigh(cov_a)
    sqrt_a = vec @ torch.diag(lam.clamp_min(0).sqrt()) @ vec.T
    tr_sqrt = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return (
        (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt
    ).item()


I3D_ENV = "GENIE_I3D_PATH"


def load_i3d(path: str | Path | None = None) -> FeatureFn:
    """The I3D feature network for FVD, from a TorchScript file (`path`, else $GENIE_I3D_PATH).

    Expects the `i3d_torchscript.pt` export used by StyleGAN-V's FVD code, called as
    model(videos_NCTHW in [-1, 1], rescale=False, resize=True, return_features=True). That calling
    convention is not verified here: no weights can be downloaded on this machine.

    Raises:
        FileNotFoundError: no weights at the given or configured path.
    """
    where = path if path is not None else os.environ.get(I3D_ENV)
    if where is None or not Path(where).is_file():
        raise FileNotFoundError(
            f"FVD needs I3D weights (a TorchScript file such as i3d_torchscript.pt): none found at "
            f"{where!r}. Download them on a machine with internet access and pass i3d_path= or set "
            f"${I3D_ENV}; or pass feature_fn= to use another video feature network."
        )
    model = torch.jit.load(str(where), map_location="cpu").eval()

    def features(videos_NTCHW: torch.Tensor) -> torch.Tensor:
        x = videos_NTCHW.permute(0, 2, 1, 3, 4) * 2 - 1  # (N, C, T, H, W) in [-1, 1]
        with torch.no_grad():
            return model(x, rescale=False, resize=True, return_features=True)

    return features


def fvd(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    feature_fn: FeatureFn | None = None,
    i3d_path: str | Path | None = None,
) -> float:
    """Fréchet Video Distance between two sets of videos (N, T, C, H, W) in [0, 1].

    feature_fn maps videos to (N, F) features; by default the I3D network from `load_i3d(i3d_path)`,
    which raises FileNotFoundError when no weights are present. Needs N > 1 per set (the paper does
    not state its sample count; FVD is biased at small N, so compare only equal N).
    """
    fn = feature_fn if feature_fn is not None else load_i3d(i3d_path)
    return frechet_distance(fn(real), fn(fake))
