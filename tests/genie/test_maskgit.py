"""MaskGIT schedule and decode, driven by fake logits functions and by the tiny dynamics model."""

from __future__ import annotations

import math

import pytest
import torch

from genie.dynamics import DynamicsModel
from genie.maskgit import cosine_schedule, decode_frame, mask_schedule, rollout
from genie.presets import tiny

K = 10  # fake vocabulary


def peaked(target_BHW: torch.Tensor, calls: list | None = None, height: float = 50.0):
    """A fake logits_fn: logits peaked at target for the last frame; records the masks it is given."""

    def fn(tokens_BTHW, actions_BT, mask_BTHW):
        assert actions_BT.shape == tokens_BTHW.shape[:1] + (tokens_BTHW.shape[1] - 1,)
        if calls is not None:
            calls.append(mask_BTHW.clone())
        logits = torch.zeros(*tokens_BTHW.shape, K)
        logits[:, -1] = height * torch.nn.functional.one_hot(target_BHW, K).float()
        return logits

    return fn


def test_cosine_schedule_values() -> None:
    assert cosine_schedule(0.0) == 1.0 and abs(cosine_schedule(1.0)) < 1e-12
    assert abs(cosine_schedule(0.5) - math.sqrt(0.5)) < 1e-12
    s = mask_schedule(64, 25)
    assert len(s) == 25 and s[-1] == 0
    assert all(a > b for a, b in zip([64] + s, s, strict=False))  # >= 1 token committed per step
    assert s[0] == math.floor(64 * math.cos(math.pi / 50)) and s[12] == math.floor(
        64 * math.cos(math.pi * 13 / 50)
    )
    assert mask_schedule(3, 25)[:3] == [2, 1, 0]  # more steps than tokens: one per step, then done
    with pytest.raises(ValueError):
        mask_schedule(4, 0)


def test_decode_returns_peaked_tokens_and_follows_schedule() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, K, (2, 4, 5), generator=g)
    context = torch.randint(0, K, (2, 3, 4, 5), generator=g)
    actions = torch.zeros(2, 3, dtype=torch.long)
    calls: list[torch.Tensor] = []
    out = decode_frame(peaked(target, calls), context, actions, steps=8, temperature=2.0, rng=g)
    assert out.dtype == torch.long and torch.equal(out, target)
    # one call per step; the new frame's masked count before step s is N, then the schedule
    assert len(calls) == 8
    expected = [20] + mask_schedule(20, 8)[:-1]
    for mask, n in zip(calls, expected, strict=True):
        assert mask.shape == (2, 4, 4, 5)
        assert not mask[:, :3].any()  # context frames are never masked
        assert mask[:, -1].flatten(1).sum(1).tolist() == [n, n]


def test_committed_tokens_are_the_most_confident_and_stay() -> None:
    """Positions with a sharper peak are committed first and never change afterwards."""
    H, W = 1, 6
    target = torch.arange(W).view(1, H, W) % K
    sharpness = torch.tensor([6.0, 1.0, 5.0, 2.0, 4.0, 3.0])

    def fn(tokens, actions, mask):
        logits = torch.zeros(*tokens.shape, K)
        logits[0, -1, 0, torch.arange(W), target[0, 0]] = sharpness  # distinct confidences
        return logits

    calls: list[torch.Tensor] = []

    def recording(tokens, actions, mask):
        calls.append(mask[0, -1, 0].clone())
        return fn(tokens, actions, mask)

    out = decode_frame(recording, torch.zeros(1, 1, H, W, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                       steps=6, temperature=0.0)  # fmt: skip
    assert torch.equal(out, target)
    # schedule for 6 tokens in 6 steps: 5, 4, 3, ... stay masked, so one token is committed per
    # step, the most confident first: position 0 (peak 6), then 2 (peak 5), then 4 (peak 4)
    assert mask_schedule(6, 6) == [5, 4, 3, 2, 1, 0]
    assert (~calls[1]).nonzero().flatten().tolist() == [0]
    assert (~calls[2]).nonzero().flatten().tolist() == [0, 2]
    assert (~calls[3]).nonzero().flatten().tolist() == [0, 2, 4]


def test_temperature_sampling_is_reproducible_with_seed() -> None:
    torch.manual_seed(123)
    logits_table = torch.randn(1, 3, 4, K)

    def fn(tokens, actions, mask):
        logits = torch.zeros(*tokens.shape, K)
        logits[:, -1] = logits_table
        return logits

    ctx, act = torch.zeros(1, 1, 3, 4, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    a = decode_frame(fn, ctx, act, steps=5, temperature=2.0, rng=torch.Generator().manual_seed(7))
    b = decode_frame(fn, ctx, act, steps=5, temperature=2.0, rng=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    outs = {tuple(decode_frame(fn, ctx, act, steps=5, temperature=2.0, rng=torch.Generator().manual_seed(s)).flatten().tolist())
            for s in range(8)}  # fmt: skip
    assert len(outs) > 1  # flat logits at temperature 2 really sample


def test_rollout_windows_context_and_actions() -> None:
    H, W = 2, 2
    seen: list[tuple[int, list[int]]] = []

    def fn(tokens, actions, mask):
        seen.append((tokens.shape[1], actions[0].tolist()))
        # next frame = last action value everywhere
        logits = torch.zeros(*tokens.shape, K)
        logits[:, -1, :, :, actions[0, -1]] = 100.0
        return logits

    prompt = torch.zeros(1, 2, H, W, dtype=torch.long)
    actions = torch.tensor([[9, 1, 2, 3, 4]])  # a_0 belongs to the prompt; 4 new frames
    out = rollout(fn, prompt, actions, steps=2, temperature=1.0, max_context=3)
    assert out.shape == (1, 6, H, W)
    assert out[0, 2:, 0, 0].tolist() == [1, 2, 3, 4]
    # windows of at most max_context frames (new one included), with the matching actions
    assert seen[0] == (3, [9, 1]) and seen[-1] == (3, [3, 4])


def test_decode_with_tiny_dynamics() -> None:
    cfg = tiny().dynamics
    dyn = DynamicsModel(config=cfg).eval()
    ctx = torch.randint(0, cfg.vocab_size, (2, 3, cfg.grid_h, cfg.grid_w))
    acts = torch.randint(0, cfg.n_actions, (2, 3))
    out = decode_frame(
        dyn.logits, ctx, acts, steps=4, temperature=1.0, rng=torch.Generator().manual_seed(0)
    )
    assert out.shape == (2, cfg.grid_h, cfg.grid_w) and out.max() < cfg.vocab_size


def test_tiny_pipeline_end_to_end() -> None:
    """frames -> tokens + latent actions -> rollout -> frames -> ΔtPSNR (untrained, shapes and wiring)."""
    from genie.lam import LatentActionModel
    from genie.metrics import delta_psnr
    from genie.tokenizer import VideoTokenizer

    torch.manual_seed(0)
    cfg = tiny()
    tok = VideoTokenizer(config=cfg.tokenizer).eval()
    lam = LatentActionModel(config=cfg.lam).eval()
    dyn = DynamicsModel(config=cfg.dynamics).eval()
    video = torch.rand(2, 5, 3, 32, 32)
    tokens, actions = tok.encode(video), lam.infer_actions(video)
    rng = torch.Generator().manual_seed(0)
    gen = rollout(dyn.logits, tokens[:, :1], actions, steps=3, temperature=1.0, rng=rng)
    random_actions = torch.randint(0, cfg.lam.n_codes, actions.shape, generator=rng)
    gen_rand = rollout(dyn.logits, tokens[:, :1], random_actions, steps=3, temperature=1.0, rng=rng)
    assert gen.shape == tokens.shape and torch.equal(gen[:, 0], tokens[:, 0])
    frames, frames_rand = tok.decode(gen), tok.decode(gen_rand)
    assert frames.shape == video.shape and 0 <= frames.min() and frames.max() <= 1
    assert isinstance(delta_psnr(video, frames, frames_rand, t=4), float)
