"""Dynamics model: a MaskGIT ST-transformer over tokenizer tokens, conditioned on latent actions.

Alignment (frames numbered 0..T-1): tokens_BTHW holds frames 0..T-1 and actions (B, T-1) holds
a_0..a_{T-2}, a_t being the LAM's transition x_t -> x_{t+1} (genie/lam.py). The embedding of a_t is
ADDED to every token of frame t+1 (frame 0 gets no action), and the logits at frame t+1 predict frame
t+1's tokens (MaskGIT: the frame's own unmasked tokens are visible, its masked ones are not).
With causal temporal attention, frame t+1's logits depend on frames 0..t+1 and a_0..a_t only, so a_t
changes nothing at frames <= t (tested). This is Jafar's "add to the target frame" convention; the LAM
adds a_t to the decoder input at frame t whose output predicts x_{t+1}: in both, a_t is available
exactly where frame t+1 is predicted (cf. jafar#14, jasmine#122).

Actions enter as long indices into a learned embedding, so no gradient can reach the LAM (the paper's
stop-gradient holds by construction).

Training (paper §2.2): per sample a mask rate r ~ U[0.5, 1]; every token of frames 1..T-1 is masked
with probability r (frame 0 never); masked tokens are replaced by a learned mask embedding; cross-entropy
on the masked positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genie.presets import DynamicsConfig
from genie.st_transformer import STTransformer, init_weights


class DynamicsModel(nn.Module):
    """Constructor: DynamicsModel(config=DynamicsConfig(...))."""

    def __init__(self, *, config: DynamicsConfig) -> None:
        super().__init__()
        self.config = c = config
        self.token_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.mask_emb = nn.Parameter(0.02 * torch.randn(c.d_model))
        self.action_emb = nn.Embedding(c.n_actions, c.d_model)
        self.transformer = STTransformer(
            n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads, max_frames=c.max_frames,
            n_spatial=c.grid_h * c.grid_w, head_dim=c.head_dim, ffn_mult=c.ffn_mult,
            qk_norm=c.qk_norm, pos_emb=c.pos_emb,
        )  # fmt: skip
        self.head = nn.Linear(c.d_model, c.vocab_size)
        self.apply(init_weights)

    def logits(
        self,
        tokens_BTHW: torch.Tensor,
        actions_BA: torch.Tensor,
        mask_BTHW: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits over the vocabulary for every token position.

        Args:
            tokens_BTHW: long (B, T, H, W); values at masked positions are ignored.
            actions_BA: long (B, T-1); a_t added to frame t+1.
            mask_BTHW: bool (B, T, H, W), True = replaced by the mask embedding; None = no mask.
        Returns:
            logits_BTHWK float (B, T, H, W, vocab_size).
        """
        B, T, H, W = tokens_BTHW.shape
        if actions_BA.shape != (B, T - 1):
            raise ValueError(
                f"actions must be (B, T-1) = {(B, T - 1)}, got {tuple(actions_BA.shape)}"
            )
        x_BTSC = self.token_emb(tokens_BTHW.reshape(B, T, H * W))
        if mask_BTHW is not None:
            m_BTS1 = mask_BTHW.reshape(B, T, H * W, 1)
            x_BTSC = torch.where(m_BTS1, self.mask_emb.to(x_BTSC.dtype), x_BTSC)
        act_BAC = self.action_emb(actions_BA)  # (B, T-1, C)
        x_BTSC = torch.cat([x_BTSC[:, :1], x_BTSC[:, 1:] + act_BAC[:, :, None]], dim=1)
        logits_BTSK = self.head(self.transformer(x_BTSC))
        return logits_BTSK.view(B, T, H, W, -1)

    def sample_mask(
        self, tokens_BTHW: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training mask: rate ~ U[min, max] per sample, Bernoulli per token, frame 0 never masked."""
        c = self.config
        B = tokens_BTHW.shape[0]
        dev = tokens_BTHW.device
        rate_B = c.mask_rate_min + (c.mask_rate_max - c.mask_rate_min) * torch.rand(
            B, generator=generator, device=dev
        )
        u_BTHW = torch.rand(tokens_BTHW.shape, generator=generator, device=dev)
        mask_BTHW = u_BTHW < rate_B[:, None, None, None]
        mask_BTHW[:, 0] = False
        return mask_BTHW

    def loss(
        self,
        batch: torch.Tensor | dict,
        actions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked-token cross-entropy.

        Args:
            batch: tokens_BTHW (long), or a token-loader dict {"tokens": (B,T,H,W), "actions": ...}.
            actions: (B, T-1) transitions a_0..a_{T-2}, or frame-aligned (B, T) as written by
                LatentActionModel.frame_actions (column 0 ignored). Taken from the dict if None.
            generator: for the mask draw (tests).
        Returns:
            (loss, metrics): detached 0-d tensors: loss, accuracy (on masked tokens), mask_rate.
        """
        tokens_BTHW = batch["tokens"] if isinstance(batch, dict) else batch
        if actions is None:
            if not isinstance(batch, dict):
                raise ValueError("pass actions, or a dict batch with an 'actions' entry")
            actions = batch["actions"]
        actions_BA = transitions(actions, tokens_BTHW.shape[1])
        mask_BTHW = self.sample_mask(tokens_BTHW, generator)
        logits_BTHWK = self.logits(tokens_BTHW, actions_BA, mask_BTHW)
        logits_NK, target_N = logits_BTHWK[mask_BTHW], tokens_BTHW[mask_BTHW]
        if target_N.numel() == 0:  # possible only with mask_rate_max ~ 0 or a single frame
            loss = logits_BTHWK.sum() * 0.0
            acc = loss.detach()
        else:
            loss = F.cross_entropy(logits_NK.float(), target_N)
            acc = (logits_NK.detach().argmax(-1) == target_N).float().mean()
        rate = mask_BTHW[:, 1:].float().mean() if tokens_BTHW.shape[1] > 1 else acc * 0
        return loss, {"loss": loss.detach(), "accuracy": acc, "mask_rate": rate}


def transitions(actions: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Actions as (B, T-1) transitions: (B, T-1) is returned as is, frame-aligned (B, T) loses
    column 0 (the action into frame 0, NO_ACTION in genie.lam.frame_actions)."""
    if actions.shape[1] == n_frames:
        return actions[:, 1:]
    if actions.shape[1] == n_frames - 1:
        return actions
    raise ValueError(
        f"actions for {n_frames} frames must be (B, T-1) or (B, T), got {tuple(actions.shape)}"
    )
