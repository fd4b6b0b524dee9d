"""MaskGIT sampling (Chang et al. 2022) as pure functions; the network is passed in as `logits_fn`.

logits_fn(tokens_BTHW, actions_BA, mask_BTHW) -> logits_BTHWK is any callable with the signature of
DynamicsModel.logits (tokens long (B,T,H,W); actions long (B,T-1), a_t leading to frame t+1; mask bool,
True = hidden), so tests drive the decode with a fake.

One new frame is decoded in `steps` passes (paper: 25). Every pass samples a token for each position
(random sampling at `temperature`; 0 = argmax), keeps the already committed tokens, and re-masks the
least confident of the newly sampled ones so that after pass s exactly `mask_schedule(N, steps)[s]`
tokens stay masked (cosine schedule). Confidence = the probability of the sampled token under the
tempered distribution. Greedy argmax decoding tends to copy the previous frame (1X's changelog), hence
the paper's random sampling at temperature 2 (CoinRun: 1). The last pass commits every remaining
sample; there is no forced argmax (Jasmine removed one as a bug).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_schedule(progress: float) -> float:
    """Fraction of tokens still masked at progress in [0, 1]: cos(pi/2 * progress), 1 -> 0."""
    return math.cos(math.pi / 2 * progress)


def mask_schedule(n_tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each of the `steps` passes: floor(N * cos(pi/2 * s/steps)), s = 1..steps.

    At least one token is committed per pass while any are masked, and the last entry is 0.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    out, prev = [], n_tokens
    for s in range(1, steps + 1):
        m = math.floor(n_tokens * cosine_schedule(s / steps))
        m = max(0, min(m, prev - 1))
        out.append(m)
        prev = m
    out[-1] = 0
    return out


@torch.no_grad()
def decode_frame(
    logits_fn: LogitsFn,
    context_tokens_BTHW: torch.Tensor,
    actions_BT: torch.Tensor,
    *,
    steps: int = 25,
    temperature: float = 2.0,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode the frame that follows the context.

    Args:
        logits_fn: see the module docstring.
        context_tokens_BTHW: long (B, T, H, W), T >= 1 known frames.
        actions_BT: long (B, T); actions_BT[:, -1] is the action leading to the new frame.
        steps: MaskGIT passes.
        temperature: softmax temperature for random sampling; 0 = argmax.
        rng: torch.Generator for reproducible sampling.
    Returns:
        tokens_BHW long (B, H, W), the new frame.
    """
    B, T, H, W = context_tokens_BTHW.shape
    N = H * W
    if actions_BT.shape != (B, T):
        raise ValueError(f"actions must be (B, T) = {(B, T)}, got {tuple(actions_BT.shape)}")
    dev = context_tokens_BTHW.device
    tokens_BTHW = torch.cat([context_tokens_BTHW, context_tokens_BTHW.new_zeros(B, 1, H, W)], dim=1)
    mask_BTHW = torch.zeros(B, T + 1, H, W, dtype=torch.bool, device=dev)
    mask_BTHW[:, -1] = True
    current_BN = tokens_BTHW.new_zeros(B, N)
    unknown_BN = torch.ones(B, N, dtype=torch.bool, device=dev)
    for n_masked in mask_schedule(N, steps):
        logits_BNK = logits_fn(tokens_BTHW, actions_BT, mask_BTHW)[:, -1].reshape(B, N, -1).float()
        if temperature > 0:
            probs_BNK = torch.softmax(logits_BNK / temperature, dim=-1)
            sampled_BN = torch.multinomial(probs_BNK.view(B * N, -1), 1, generator=rng).view(B, N)
        else:
            probs_BNK = torch.softmax(logits_BNK, dim=-1)
            sampled_BN = logits_BNK.argmax(-1)
        conf_BN = probs_BNK.gather(-1, sampled_BN[..., None])[..., 0]
        current_BN = torch.where(unknown_BN, sampled_BN, current_BN)
        # committed tokens are never re-masked
        conf_BN = torch.where(unknown_BN, conf_BN, torch.full_like(conf_BN, math.inf))
        unknown_BN = torch.zeros_like(unknown_BN)
        if n_masked > 0:
            remask_Bm = conf_BN.argsort(dim=1)[:, :n_masked]  # least confident
            unknown_BN.scatter_(1, remask_Bm, True)
        tokens_BTHW[:, -1] = current_BN.view(B, H, W)
        mask_BTHW[:, -1] = unknown_BN.view(B, H, W)
    return current_BN.view(B, H, W)


@torch.no_grad()
def rollout(
    logits_fn: LogitsFn,
    prompt_tokens_BTHW: torch.Tensor,
    actions_BA: torch.Tensor,
    *,
    steps: int = 25,
    temperature: float = 2.0,
    rng: torch.Generator | None = None,
    max_context: int = 16,
) -> torch.Tensor:
    """Generate one frame per action beyond the prompt, autoregressively.

    Args:
        prompt_tokens_BTHW: long (B, P, H, W), P >= 1 given frames.
        actions_BA: long (B, A), A >= P; actions_BA[:, t] leads from frame t to frame t+1, so the
            first P-1 actions belong to the prompt and A - (P-1) new frames are generated.
        max_context: frames the model sees at once, new frame included (paper: 16 frames of memory);
            older frames are dropped from the window.
    Returns:
        tokens (B, A + 1, H, W): the prompt followed by the generated frames.
    """
    B, P, _, _ = prompt_tokens_BTHW.shape
    A = actions_BA.shape[1]
    if A < P - 1:
        raise ValueError(f"need at least P-1 = {P - 1} actions, got {A}")
    frames = list(prompt_tokens_BTHW.unbind(1))
    for f in range(P, A + 1):  # index of the frame being generated
        start = max(0, f - (max_context - 1))
        ctx_BTHW = torch.stack(frames[start:f], dim=1)
        frames.append(
            decode_frame(
                logits_fn,
                ctx_BTHW,
                actions_BA[:, start:f],
                steps=steps,
                temperature=temperature,
                rng=rng,
            )  # fmt: skip
        )
    return torch.stack(frames, dim=1)
