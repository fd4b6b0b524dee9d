"""Metrics on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from genie.metrics import (
    PSNR_CAP_DB,
    codebook_stats,
    delta_psnr,
    frechet_distance,
    fvd,
    load_i3d,
    psnr,
    ssim,
)


def test_psnr_identical_is_capped_and_known_mse() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(psnr(x, x), torch.full((2,), PSNR_CAP_DB))
    y = torch.zeros(3, 8, 8)
    z = torch.full((3, 8, 8), 0.1)  # MSE = 0.01 -> 20 dB
    assert abs(psnr(y, z).item() - 20.0) < 1e-4
    assert abs(psnr(y * 255, z * 255, data_range=255.0).item() - 20.0) < 1e-4
    assert psnr(torch.rand(4, 5, 3, 8, 8), torch.rand(4, 5, 3, 8, 8)).shape == (4, 5)


def test_ssim_properties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    noisy = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    very = (x + 0.5 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    s1, s2 = ssim(x, noisy), ssim(x, very)
    assert (s1 < 0.99).all() and (s2 < s1).all()
    # a constant shift of a flat image only changes luminance: (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)
    a, b = torch.full((1, 16, 16), 0.5), torch.full((1, 16, 16), 0.6)
    c1 = 0.01**2
    assert abs(ssim(a, b).item() - (2 * 0.3 + c1) / (0.25 + 0.36 + c1)) < 1e-5
    assert ssim(torch.rand(2, 4, 3, 6, 6), torch.rand(2, 4, 3, 6, 6)).shape == (
        2,
        4,
    )  # small window


def test_codebook_stats() -> None:
    s = codebook_stats(torch.tensor([0, 1, 2, 3]), 8)
    assert s["usage"] == 0.5 and abs(s["perplexity"] - 4.0) < 1e-6
    assert codebook_stats(torch.zeros(10, dtype=torch.long), 8)["perplexity"] == pytest.approx(1.0)


def test_delta_psnr_hand_computed() -> None:
    gt = torch.zeros(2, 6, 3, 4, 4)
    inferred = gt.clone()
    rand = gt.clone()
    inferred[:, 3] = 0.01  # frame x_4 (index 3): MSE 1e-4 -> 40 dB
    rand[:, 3] = 0.1  # MSE 1e-2 -> 20 dB
    inferred[:, 4] = 0.5  # other frames must not matter
    assert delta_psnr(gt, inferred, rand, t=4) == pytest.approx(20.0, abs=1e-3)
    assert delta_psnr(gt, inferred, rand, t=1) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        delta_psnr(gt, inferred, rand, t=7)


def test_frechet_distance_known_values() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 3, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    # same covariance, mean shifted by (1, 2, 2): distance = |shift|^2 = 9
    assert frechet_distance(a, a + torch.tensor([1.0, 2.0, 2.0])) == pytest.approx(9.0, abs=1e-6)
    # N(0, I) vs N(0, 4 I) in 3-d: tr(I + 4I - 2*2I) = 3 (sampling error allowed)
    b = 2 * torch.randn(4000, 3, generator=g)
    assert frechet_distance(torch.randn(4000, 3, generator=g), b) == pytest.approx(3.0, abs=0.5)


def test_fvd_with_pluggable_features_and_clear_error_without_i3d(tmp_path, monkeypatch) -> None:
    real = torch.rand(8, 4, 3, 8, 8)
    feature_fn = lambda v: v.mean(dim=(1, 3, 4))  # noqa: E731  (N, C) features
    assert fvd(real, real, feature_fn=feature_fn) == pytest.approx(0.0, abs=1e-9)
    assert fvd(real, 1 - real, feature_fn=feature_fn) > 0
    monkeypatch.delenv("GENIE_I3D_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match="I3D weights"):
        fvd(real, real)
    with pytest.raises(FileNotFoundError, match="feature_fn"):
        load_i3d(tmp_path / "missing.pt")
    assert math.isfinite(fvd(real, real * 0.5, feature_fn=feature_fn))
