"""Spatiotemporal (ST) transformer shared by the tokenizer, the LAM and the dynamics model.

One block = spatial attention over the S tokens of one frame, then causal temporal attention over the
T frames at one spatial position, then ONE feed-forward (Genie §2 drops the FFW after the spatial
layer). Pre-norm residuals, optional QK-norm (the paper uses it for the large dynamics model).

Causality: spatial attention, the FFW and the norms act within one frame; temporal attention is causal.
So the output for frame t depends on frames 1..t only, which every model built on this relies on.

einops is not installed; reshapes between space and time are written with shape-suffixed names
(x_BTSC = batch, time, spatial tokens, channels) and a shape comment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos position table (Vaswani et al.). Returns (n_positions, dim)."""
    pos_N1 = torch.arange(n_positions, dtype=torch.float32)[:, None]
    half = dim // 2
    freq_H = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    table_ND = torch.zeros(n_positions, dim)
    table_ND[:, 0 : 2 * half : 2] = torch.sin(pos_N1 * freq_H)
    table_ND[:, 1 : 2 * half : 2] = torch.cos(pos_N1 * freq_H)
    return table_ND


class Attention(nn.Module):
    """Multi-head self-attention over the middle axis of x_NLC, via scaled_dot_product_attention.

    head_dim is independent of d_model because the paper's dynamics model has d_model 5120 but 36 heads
    of key size 128 (inner width 4608).
    """

    def __init__(
        self, *, d_model: int, n_heads: int, head_dim: int, qk_norm: bool, causal: bool
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.causal = n_heads, head_dim, causal
        inner = n_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * inner)
        self.proj = nn.Linear(inner, d_model)
        # QK-norm: normalise queries and keys per head before the dot product (bounded logits).
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x_NLC: torch.Tensor) -> torch.Tensor:
        N, L, _ = x_NLC.shape
        qkv_NL3HD = self.qkv(x_NLC).view(N, L, 3, self.n_heads, self.head_dim)
        q_NHLD, k_NHLD, v_NHLD = qkv_NL3HD.permute(2, 0, 3, 1, 4)  # each (N, nh, L, hd)
        q_NHLD, k_NHLD = self.q_norm(q_NHLD), self.k_norm(k_NHLD)
        y_NHLD = F.scaled_dot_product_attention(q_NHLD, k_NHLD, v_NHLD, is_causal=self.causal)
        y_NLC = y_NHLD.transpose(1, 2).reshape(N, L, self.n_heads * self.head_dim)
        return self.proj(y_NLC)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with hidden width round(ffn_mult * d_model) (at least 1)."""

    def __init__(self, *, d_model: int, ffn_mult: float) -> None:
        super().__init__()
        hidden = max(1, round(ffn_mult * d_model))
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class STBlock(nn.Module):
    """Spatial attention -> causal temporal attention -> one FFW, each pre-norm with a residual."""

    def __init__(
        self, *, d_model: int, n_heads: int, head_dim: int, ffn_mult: float, qk_norm: bool
    ) -> None:
        super().__init__()
        self.norm_s = nn.LayerNorm(d_model)
        self.attn_s = Attention(
            d_model=d_model, n_heads=n_heads, head_dim=head_dim, qk_norm=qk_norm, causal=False
        )
        self.norm_t = nn.LayerNorm(d_model)
        self.attn_t = Attention(
            d_model=d_model, n_heads=n_heads, head_dim=head_dim, qk_norm=qk_norm, causal=True
        )
        self.norm_f = nn.LayerNorm(d_model)
        self.ffw = FeedForward(d_model=d_model, ffn_mult=ffn_mult)

    def forward(self, x_BTSC: torch.Tensor) -> torch.Tensor:
        B, T, S, C = x_BTSC.shape
        # spatial: every frame is its own sequence of S tokens
        x_NSC = x_BTSC.reshape(B * T, S, C)
        x_NSC = x_NSC + self.attn_s(self.norm_s(x_NSC))
        # temporal: every (batch, spatial position) is a causal sequence of T frames
        x_MTC = x_NSC.view(B, T, S, C).transpose(1, 2).reshape(B * S, T, C)
        x_MTC = x_MTC + self.attn_t(self.norm_t(x_MTC))
        x_BTSC = x_MTC.view(B, S, T, C).transpose(1, 2)
        return x_BTSC + self.ffw(self.norm_f(x_BTSC))


class STTransformer(nn.Module):
    """Position embeddings + n_layers ST blocks + a final LayerNorm. In and out: x_BTSC.

    Args:
        n_layers, d_model, n_heads: the usual sizes; head_dim defaults to d_model // n_heads.
        max_frames: the most frames T a sequence may have (temporal position table size).
        n_spatial: tokens per frame S (spatial position table size; the LAM adds its action token).
        ffn_mult: FFW hidden width as a multiple of d_model.
        qk_norm: RMS-normalise queries and keys.
        pos_emb: "learned" or "sinusoidal" for both the spatial and the temporal table.
    """

    def __init__(
        self,
        *,
        n_layers: int,
        d_model: int,
        n_heads: int,
        max_frames: int,
        n_spatial: int,
        head_dim: int | None = None,
        ffn_mult: float = 4.0,
        qk_norm: bool = False,
        pos_emb: str = "learned",
    ) -> None:
        super().__init__()
        if pos_emb not in ("learned", "sinusoidal"):
            raise ValueError(f"pos_emb must be 'learned' or 'sinusoidal', got {pos_emb!r}")
        self.max_frames, self.n_spatial = max_frames, n_spatial
        if pos_emb == "learned":
            self.pos_s_SC = nn.Parameter(0.02 * torch.randn(n_spatial, d_model))
            self.pos_t_TC = nn.Parameter(0.02 * torch.randn(max_frames, d_model))
        else:
            self.register_buffer(
                "pos_s_SC", sinusoidal_embedding(n_spatial, d_model), persistent=False
            )
            self.register_buffer(
                "pos_t_TC", sinusoidal_embedding(max_frames, d_model), persistent=False
            )
        hd = head_dim if head_dim is not None else d_model // n_heads
        self.blocks = nn.ModuleList(
            STBlock(
                d_model=d_model, n_heads=n_heads, head_dim=hd, ffn_mult=ffn_mult, qk_norm=qk_norm
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x_BTSC: torch.Tensor) -> torch.Tensor:
        _, T, S, _ = x_BTSC.shape
        if T > self.max_frames or S != self.n_spatial:
            raise ValueError(
                f"got T={T}, S={S}; this transformer takes T <= {self.max_frames}, S = {self.n_spatial}"
            )
        x_BTSC = x_BTSC + self.pos_s_SC[None, None] + self.pos_t_TC[None, :T, None]
        for block in self.blocks:
            x_BTSC = block(x_BTSC)
        return self.norm(x_BTSC)


def init_weights(module: nn.Module) -> None:
    """nanoGPT-style init: N(0, 0.02) for Linear and Embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
