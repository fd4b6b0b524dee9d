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
from genie.tokenizer import as_frames, check_frames, patchify, unpatchify

NO_ACTION = -1  # frame_actions' value for frame 0, which no action led into


class LatentActionModel(nn.Module):
    """Constructor: LatentActionModel(config=LAMConfig(...)). Inputs are frames in [0,1], (B,T,C,H,W)."""

    def __init__(self, *, config: LAMConfig) -> None:
        super().__init__()
        self.config = c = config
        gh, gw = c.grid
        n_pix = c.channels * c.patch * c.patch
        common = dict(d_model=c.d_model, n_heads=c.n_heads, max_frames=c.max_frames,
                      head_dim=c.head_dim, ffn_mult=c.ffn_mult, qk_norm=c.qk_norm, pos_emb=c.pos_emb)  # fmt: skip
        self.enc_patch_in = nn.Linear(n_pix, c.d_model)
        # one learned action token per frame, prepended to its patches (Jafar)
        self.action_token = nn.Parameter(0.02 * torch.randn(c.d_model))
        self.encoder = STTransformer(n_layers=c.enc_layers, n_spatial=gh * gw + 1, **common)
        self.to_action = nn.Linear(c.d_model, c.code_dim)
        self.vq = VectorQuantizer(n_codes=c.n_codes, code_dim=c.code_dim, beta=c.beta,
                                  normalize=c.normalize_codes, dead_code_steps=c.dead_code_steps)  # fmt: skip
        self.dec_patch_in = nn.Linear(n_pix, c.d_model)
        self.action_in = nn.Linear(c.code_dim, c.d_model)  # action embedding, added to patches
        self.decoder = STTransformer(n_layers=c.dec_layers, n_spatial=gh * gw, **common)
        self.patch_out = nn.Linear(c.d_model, n_pix)
        self.apply(init_weights)

    def _quantize(self, x_BTCHW: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Encoder + VQ. Returns patches_BTSP of the input and the VQ output for (B, T-1) actions."""
        c = self.config
        check_frames(x_BTCHW, c.patch, c.grid, c.channels)
        if x_BTCHW.shape[1] < 2:
            raise ValueError("the LAM needs at least two frames")
        patches_BTSP = patchify(x_BTCHW, c.patch)
        B, T, S, _ = patches_BTSP.shape
        tok_BTSC = self.enc_patch_in(patches_BTSP)
        act_BT1C = self.action_token.expand(B, T, 1, -1)
        h_BTSC = self.encoder(torch.cat([act_BT1C, tok_BTSC], dim=2))  # (B, T, 1+S, C)
        # the action token of frames 1..T-1: (B, T-1, code_dim)
        a_BAD = self.to_action(h_BTSC[:, 1:, 0])
        return patches_BTSP, self.vq(a_BAD)

    def _predict(self, patches_BTSP: torch.Tensor, a_BAD: torch.Tensor) -> torch.Tensor:
        """Decoder: frames 0..T-2 + actions 0..T-2 -> predicted frames 1..T-1 (B,T-1,C,H,W) in (0,1)."""
        c = self.config
        h_BASC = self.dec_patch_in(patches_BTSP[:, :-1]) + self.action_in(a_BAD)[:, :, None]
        out_BASP = self.patch_out(self.decoder(h_BASC))
        return torch.sigmoid(unpatchify(out_BASP, c.patch, c.channels, c.height, c.width))

    @torch.no_grad()
    def infer_actions(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Frames (B,T,C,H,W) in [0,1] -> actions (B, T-1) long; a_t is the transition x_t -> x_{t+1}.

        Any T >= 2: clips longer than max_frames are covered by windows of max_frames frames that
        overlap by one frame, so every transition is inferred once (with the context of its window).
        Never updates the VQ's usage counters or restarts codes.
        """
        was_training = self.vq.training
        self.vq.eval()
        try:
            T, W = x_BTCHW.shape[1], self.config.max_frames
            pieces = [
                self._quantize(x_BTCHW[:, s : s + W])[1].indices for s in range(0, T - 1, W - 1)
            ]
        finally:
            self.vq.train(was_training)
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def frame_actions(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Frame-aligned actions (B, T) long: column t is the action that led INTO frame t (a_{t-1});
        column 0 is NO_ACTION (-1). Stored next to tokens, a window of frames slices its actions
        with the same index; DynamicsModel accepts this layout and ignores column 0."""
        a_BA = self.infer_actions(x_BTCHW)
        return torch.cat([a_BA.new_full((a_BA.shape[0], 1), NO_ACTION), a_BA], dim=1)

    def action_embeddings(self) -> torch.Tensor:
        """The action codebook (|A|, code_dim), the only LAM part kept at inference (paper)."""
        return self.vq.codes()

    def predict(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Predict frames 1..T-1 from frames 0..T-2 and the inferred actions: (B,T-1,C,H,W)."""
        patches_BTSP, q = self._quantize(x_BTCHW)
        return self._predict(patches_BTSP, q.z_q)

    def loss(self, batch: torch.Tensor | dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MSE(predicted x_{1..T-1}, x_{1..T-1}) + VQ loss.

        Args:
            batch: frames (B,T,C,H,W) in [0,1] (configured or loader-padded size), or a dict with
                them under "frames".
        Returns:
            (loss, metrics): detached 0-d tensors: loss, mse, vq_loss, perplexity, codebook_usage,
            codes_restarted, and action_frac_{i} (share of transitions given action i) to spot
            collapse.
        """
        c = self.config
        x_BTCHW = as_frames(batch)
        patches_BTSP, q = self._quantize(x_BTCHW)
        pred = self._predict(patches_BTSP, q.z_q)
        mse = F.mse_loss(pred, x_BTCHW[:, 1:, :, : c.height, : c.width])
        loss = mse + q.loss
        frac_K = (
            torch.bincount(q.indices.flatten(), minlength=c.n_codes).float() / q.indices.numel()
        )
        metrics = {
            "loss": loss.detach(), "mse": mse.detach(), "vq_loss": q.loss.detach(),
            "perplexity": q.perplexity.detach(), "codebook_usage": q.usage.detach(),
            "codes_restarted": self.vq.n_restarts.clone(),
            **{f"action_frac_{i}": frac_K[i] for i in range(c.n_codes)},
        }  # fmt: skip
        return loss, metrics
