"""Video tokenizer: the ST-ViViT VQ-VAE of Genie §2.1 (patch 4, 1024 codes of dim 32 in the paper).

pixels (B,T,C,H,W) in [0,1] -> pad to a multiple of the patch -> patches (B,T,S,C*p*p) -> linear ->
encoder ST-transformer -> linear to code_dim -> VQ -> linear -> decoder ST-transformer -> linear ->
patches -> pixels, cropped back to (H,W). Both transformers are causal in time, so tokens z_t depend on
x_1..x_t only and the reconstruction of frame t on z_1..z_t only. Loss: MSE + VQ loss (no GAN or
perceptual term, as in the paper). The decoder output is linear; `decode` clamps it to [0,1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genie.presets import TokenizerConfig
from genie.quantizer import VectorQuantizer
from genie.st_transformer import STTransformer, init_weights


def patchify(x_BTCHW: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-pad H, W at the bottom/right to a multiple of patch; return patches_BTSP, P = C*p*p."""
    B, T, C, H, W = x_BTCHW.shape
    h, w = -(-H // patch), -(-W // patch)
    x_BTCHW = F.pad(x_BTCHW, (0, w * patch - W, 0, h * patch - H))
    x_BTChpwp = x_BTCHW.reshape(B, T, C, h, patch, w, patch)
    # (B, T, h, w, C, p, p): patch pixels are channel-major within a patch
    return x_BTChpwp.permute(0, 1, 3, 5, 2, 4, 6).reshape(B, T, h * w, C * patch * patch)


def unpatchify(
    patches_BTSP: torch.Tensor, patch: int, channels: int, height: int, width: int
) -> torch.Tensor:
    """Inverse of patchify: (B,T,S,C*p*p) -> (B,T,C,height,width), cropping the padding."""
    B, T, _, _ = patches_BTSP.shape
    h, w = -(-height // patch), -(-width // patch)
    x_BThwCpp = patches_BTSP.reshape(B, T, h, w, channels, patch, patch)
    x_BTCHW = x_BThwCpp.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, T, channels, h * patch, w * patch)
    return x_BTCHW[..., :height, :width]


def as_frames(batch: torch.Tensor | dict) -> torch.Tensor:
    """A batch from the video loader: a tensor (B,T,C,H,W), or a dict with it under "frames"."""
    return batch["frames"] if isinstance(batch, dict) else batch


def check_frames(x_BTCHW: torch.Tensor, patch: int, grid: tuple[int, int], channels: int) -> None:
    """Frames must pad to the configured token grid (the raw size, or the loader's padded one)."""
    if x_BTCHW.dim() != 5 or x_BTCHW.shape[2] != channels:
        raise ValueError(f"expected frames (B,T,{channels},H,W), got {tuple(x_BTCHW.shape)}")
    H, W = x_BTCHW.shape[-2:]
    if (-(-H // patch), -(-W // patch)) != grid:
        raise ValueError(f"frames {H}x{W} with patch {patch} do not give the token grid {grid}")


class VideoTokenizer(nn.Module):
    """ST-ViViT VQ-VAE. Constructor: VideoTokenizer(config=TokenizerConfig(...))."""

    def __init__(self, *, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = c = config
        gh, gw = c.grid
        n_pix = c.channels * c.patch * c.patch
        common = dict(max_frames=c.max_frames, n_spatial=gh * gw, head_dim=c.head_dim,
                      ffn_mult=c.ffn_mult, qk_norm=c.qk_norm, pos_emb=c.pos_emb)  # fmt: skip
        self.patch_in = nn.Linear(n_pix, c.enc_d_model)
        self.encoder = STTransformer(
            n_layers=c.enc_layers, d_model=c.enc_d_model, n_heads=c.enc_heads, **common
        )
        self.to_code = nn.Linear(c.enc_d_model, c.code_dim)
        self.vq = VectorQuantizer(n_codes=c.n_codes, code_dim=c.code_dim, beta=c.beta,
                                  normalize=c.normalize_codes, dead_code_steps=c.dead_code_steps)  # fmt: skip
        self.from_code = nn.Linear(c.code_dim, c.dec_d_model)
        self.decoder = STTransformer(
            n_layers=c.dec_layers, d_model=c.dec_d_model, n_heads=c.dec_heads, **common
        )
        self.patch_out = nn.Linear(c.dec_d_model, n_pix)
        self.apply(init_weights)

    def _encode_latents(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantization latents (B,T,S,code_dim)."""
        check_frames(x_BTCHW, self.config.patch, self.config.grid, self.config.channels)
        patches_BTSP = patchify(x_BTCHW, self.config.patch)
        return self.to_code(self.encoder(self.patch_in(patches_BTSP)))

    def _decode_codes(
        self, z_BTSD: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Quantized vectors (B,T,S,code_dim) -> unclamped pixels (B,T,C,H,W), H,W = size or config."""
        c = self.config
        h, w = size if size is not None else (c.height, c.width)
        patches_BTSP = self.patch_out(self.decoder(self.from_code(z_BTSD)))
        return unpatchify(patches_BTSP, c.patch, c.channels, h, w)

    @torch.no_grad()
    def encode(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Frames in [0,1] (B,T,C,H,W) -> tokens_BTHW (long, (B,T,gh,gw)). Does not update VQ state.

        H, W may be the configured size or the loader's already padded one (90 or 92 for patch 4).
        """
        B, T = x_BTCHW.shape[:2]
        gh, gw = self.config.grid
        was_training = self.vq.training
        self.vq.eval()  # no usage tracking or code restarts from inference calls
        try:
            idx_BTS = self.vq(self._encode_latents(x_BTCHW)).indices
        finally:
            self.vq.train(was_training)
        return idx_BTS.view(B, T, gh, gw)

    def decode(self, tokens_BTHW: torch.Tensor) -> torch.Tensor:
        """tokens_BTHW (long) -> frames (B,T,C,H,W) at the configured size, clamped to [0,1].

        Frame t uses tokens 1..t only.
        """
        B, T, gh, gw = tokens_BTHW.shape
        z_BTSD = self.vq.lookup(tokens_BTHW.reshape(B, T, gh * gw))
        return self._decode_codes(z_BTSD).clamp(0.0, 1.0)

    def reconstruct(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """encode then decode with straight-through gradients; unclamped, same size as the input."""
        q = self.vq(self._encode_latents(x_BTCHW))
        return self._decode_codes(q.z_q, size=x_BTCHW.shape[-2:])

    def loss(self, batch: torch.Tensor | dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss: MSE(recon, x) + VQ loss on frames in [0,1].

        Args:
            batch: frames (B,T,C,H,W), or a dict holding them under "frames".
        Returns:
            (loss, metrics): metrics are detached 0-d tensors (loss, mse, psnr of the batch MSE,
            vq_loss, perplexity, codebook_usage, codes_restarted), so no device sync happens here.
        """
        x_BTCHW = as_frames(batch)
        q = self.vq(self._encode_latents(x_BTCHW))
        # padding added by a loader is not part of the picture: score the configured area only
        c = self.config
        mse = F.mse_loss(self._decode_codes(q.z_q), x_BTCHW[..., : c.height, : c.width])
        loss = mse + q.loss
        metrics = {
            "loss": loss.detach(), "mse": mse.detach(),
            "psnr": -10.0 * torch.log10(mse.detach().clamp_min(1e-10)),
            "vq_loss": q.loss.detach(), "perplexity": q.perplexity.detach(),
            "codebook_usage": q.usage.detach(), "codes_restarted": self.vq.n_restarts.clone(),
        }  # fmt: skip
        return loss, metrics
