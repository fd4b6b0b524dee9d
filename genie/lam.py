"""Latent action model (Genie §2.1, App. C.1): discovers |A| discrete actions from raw pixels, no labels.

Alignment (frames numbered 0..T-1 here): action a_t, t = 0..T-2, is the transition x_t -> x_{t+1}.
- Encoder: patches of every frame (patch 16) plus one learned action token per frame (Jafar); causal
  ST-transformer; the action token's output at frame t+1 has seen x_0..x_{t+1} and becomes the
  continuous action for a_t; VQ (|A| codes, dim 32, cosine by default) -> a_t.
- Decoder: patch embeddings of x_0..x_{T-2}; a_t is projected to d_model and ADDED to every patch of
  frame t (Genie: additive, not concatenated); causal ST-transformer; output at frame t -> sigmoid ->
  prediction of x_{t+1}. So x_{t+1} is predicted from x_0..x_t and a_0..a_t, and the only way the
  decoder learns about x_{t+1} is through the |A|-way bottleneck a_t.
- Loss: MSE(prediction, x_1..x_{T-1}) + VQ loss.
Collapse guard: usage and perplexity are returned as metrics, and actions unused for dead_code_steps
training steps are restarted from recent encoder outputs (quantizer.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genie.presets import LAMConfig
from genie.quantizer import QuantizerOutput, VectorQuantizer
from genie.st_transformer import STTransformer, init_weights
from genie.tokenizer import patchify, unpatchify


class LatentActionModel(nn.Module):
    """Constructor: LatentActionModel(config=LAMConfig(...)). Inputs are frames in [0,1], (B,T,C,H,W)."""

    def __init__(self, *, config: LAMConfig) -> None:
        super().__init__()
        self.config = c = config
        gh, gw = c.grid
        n_pix = c.channels * c.patch * c.patch
        common = dict(n_layers=0, d_model=c.d_model, n_heads=c.n_heads, max_frames=c.max_frames,
                      head_dim=c.head_dim, ffn_mult=c.ffn_mult, qk_norm=c.qk_norm, pos_emb=c.pos_emb)  # fmt: skip
        self.enc_patch_in = nn.Linear(n_pix, c.d_model)
        self.action_token = nn.Parameter(0.02 * torch.randn(c.d_model))
        self.encoder = STTransformer(**{**common, "n_layers": c.enc_layers}, n_spatial=gh * gw + 1)
        self.to_action = nn.Linear(c.d_model, c.code_dim)
        self.vq = VectorQuantizer(n_codes=c.n_codes, code_dim=c.code_dim, beta=c.beta,
                                  normalize=c.normalize_codes, dead_code_steps=c.dead_code_steps)  # fmt: skip
        self.dec_patch_in = nn.Linear(n_pix, c.d_model)
        self.action_in = nn.Linear(c.code_dim, c.d_model)
        self.decoder = STTransformer(**{**common, "n_layers": c.dec_layers}, n_spatial=gh * gw)
        self.patch_out = nn.Linear(c.d_model, n_pix)
        self.apply(init_weights)

    def _quantize(self, x_BTCHW: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Encoder + VQ. Returns patches_BTSP of the input and the VQ output for (B, T-1) actions."""
        if x_BTCHW.shape[1] < 2:
            raise ValueError("the LAM needs at least two frames")
        patches_BTSP = patchify(x_BTCHW, self.config.patch)
        B, T, S, _ = patches_BTSP.shape
        tok_BTSC = self.enc_patch_in(patches_BTSP)
        act_BT1C = self.action_token.expand(B, T, 1, -1)
        h_BTSC = self.encoder(torch.cat([act_BT1C, tok_BTSC], dim=2))  # (B, T, 1+S, C)
        a_BAD = self.to_action(
            h_BTSC[:, 1:, 0]
        )  # action tokens of frames 1..T-1: (B, T-1, code_dim)
        return patches_BTSP, self.vq(a_BAD)

    def _predict(self, patches_BTSP: torch.Tensor, a_BAD: torch.Tensor) -> torch.Tensor:
        """Decoder: frames 0..T-2 + actions 0..T-2 -> predicted frames 1..T-1 (B,T-1,C,H,W) in (0,1)."""
        c = self.config
        h_BASC = self.dec_patch_in(patches_BTSP[:, :-1]) + self.action_in(a_BAD)[:, :, None]
        out_BASP = self.patch_out(self.decoder(h_BASC))
        return torch.sigmoid(unpatchify(out_BASP, c.patch, c.channels, c.height, c.width))

    @torch.no_grad()
    def infer_actions(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Frames (B,T,C,H,W) in [0,1] -> actions (B, T-1) long; a_t is the transition x_t -> x_{t+1}."""
        was_training = self.vq.training
        self.vq.eval()  # inference must not touch usage counters or restart codes
        try:
            return self._quantize(x_BTCHW)[1].indices
        finally:
            self.vq.train(was_training)

    def action_embeddings(self) -> torch.Tensor:
        """The action codebook (|A|, code_dim), the only LAM part kept at inference (paper)."""
        return self.vq.codes()

    def predict(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Reconstruct frames 1..T-1 from frames 0..T-2 and the inferred actions: (B,T-1,C,H,W)."""
        patches_BTSP, q = self._quantize(x_BTCHW)
        return self._predict(patches_BTSP, q.z_q)

    def loss(self, x_BTCHW: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE(predicted x_{1..T-1}, x_{1..T-1}) + VQ loss. Returns (loss, metrics)."""
        patches_BTSP, q = self._quantize(x_BTCHW)
        pred = self._predict(patches_BTSP, q.z_q)
        mse = F.mse_loss(pred, x_BTCHW[:, 1:])
        loss = mse + q.loss
        counts = torch.bincount(q.indices.flatten(), minlength=self.config.n_codes)
        metrics = {
            "loss": loss.item(), "mse": mse.item(), "vq_loss": q.loss.item(),
            "perplexity": q.perplexity.item(), "codebook_usage": q.usage.item(),
            "codes_restarted": float(self.vq.n_restarts),
            **{f"action_frac_{i}": float(n) / q.indices.numel() for i, n in enumerate(counts.tolist())},
        }  # fmt: skip
        return loss, metrics
