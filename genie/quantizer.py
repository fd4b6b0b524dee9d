"""Vector quantizer (VQ-VAE, van den Oord et al. 2017) with straight-through gradients and dead-code restart.

Loss = ||sg(z) - e||^2 (codebook) + beta * ||z - sg(e)||^2 (commitment), beta = 0.25.
`normalize=True` L2-normalises inputs and codes (cosine-distance VQ, as Jafar and GenieRedux do), which
the re-implementations use against codebook collapse.

Dead-code restart (Jafar/Jasmine reset codes unused for 50 steps): every training forward counts, per
code, the consecutive steps it went unused; at the start of the next training forward the codes unused
for `dead_code_steps` steps are overwritten with encoder outputs drawn from a reservoir of recent
batches. Counters and reservoir are buffers, so they are saved with the checkpoint. The restart happens
before the codebook is used in the forward pass, so it never modifies a tensor autograd has saved.
Under DDP every rank restarts on its own reservoir; ranks must sync the codebook afterwards (TODO for
the distributed trainer: broadcast from rank 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (..., D) quantized vectors, straight-through: gradients flow to the input
    indices: torch.Tensor  # (...) long code indices
    loss: torch.Tensor  # scalar codebook + beta * commitment loss
    perplexity: torch.Tensor  # scalar exp(entropy) of this batch's code histogram, in [1, K]
    usage: torch.Tensor  # scalar fraction of the K codes used in this batch


class VectorQuantizer(nn.Module):
    """Codebook of n_codes x code_dim.

    Args:
        n_codes: K, the number of codes.
        code_dim: D, the code width (the input's last axis).
        beta: commitment weight.
        normalize: cosine VQ (inputs and codes L2-normalised).
        dead_code_steps: restart codes unused for this many consecutive training steps; 0 disables.
        reservoir_size: how many recent encoder outputs are kept to restart codes from.
    """

    def __init__(
        self,
        *,
        n_codes: int,
        code_dim: int,
        beta: float = 0.25,
        normalize: bool = False,
        dead_code_steps: int = 50,
        reservoir_size: int = 4096,
    ) -> None:
        super().__init__()
        self.n_codes, self.code_dim, self.beta = n_codes, code_dim, beta
        self.normalize, self.dead_code_steps = normalize, dead_code_steps
        self.codebook = nn.Parameter(torch.randn(n_codes, code_dim) / code_dim**0.5)
        # consecutive training steps each code went unused
        self.register_buffer("steps_unused", torch.zeros(n_codes, dtype=torch.long))
        # total assignments per code since construction (for logging)
        self.register_buffer("usage_counts", torch.zeros(n_codes, dtype=torch.long))
        self.register_buffer("n_restarts", torch.zeros((), dtype=torch.long))
        self.register_buffer("reservoir", torch.zeros(reservoir_size, code_dim))
        self.register_buffer("reservoir_filled", torch.zeros((), dtype=torch.long))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def codes(self) -> torch.Tensor:
        """The effective codebook (K, D) (normalised if cosine VQ)."""
        return self._norm(self.codebook)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for long indices (...) -> (..., D)."""
        return F.embedding(indices, self.codes())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize z (..., D) to the nearest code (squared L2, or cosine if normalize)."""
        if self.training and self.dead_code_steps > 0:
            self.restart_dead_codes()
        z_ND = self._norm(z.reshape(-1, self.code_dim).float())
        codes_KD = self.codes().float()
        # squared distances without materialising (N, K, D); fp32 even under bf16 autocast, where
        # near-ties would otherwise flip the argmin
        with torch.autocast(device_type=z.device.type, enabled=False):
            dist_NK = (
                z_ND.pow(2).sum(1, keepdim=True)
                - 2 * z_ND @ codes_KD.t()
                + codes_KD.pow(2).sum(1)[None]
            )
        idx_N = dist_NK.argmin(dim=1)
        e_ND = codes_KD[idx_N]
        loss = F.mse_loss(e_ND, z_ND.detach()) + self.beta * F.mse_loss(z_ND, e_ND.detach())
        zq_ND = z_ND + (e_ND - z_ND).detach()  # straight-through estimator

        counts_K = torch.bincount(idx_N, minlength=self.n_codes)
        p_K = counts_K.float() / max(idx_N.numel(), 1)
        perplexity = torch.exp(-(p_K * torch.log(p_K.clamp_min(1e-10))).sum())
        usage = (counts_K > 0).float().mean()
        if self.training:
            self._track(counts_K, z_ND.detach())
        return QuantizerOutput(
            z_q=zq_ND.view(*z.shape[:-1], self.code_dim),
            indices=idx_N.view(z.shape[:-1]),
            loss=loss,
            perplexity=perplexity,
            usage=usage,
        )

    @torch.no_grad()
    def _track(self, counts_K: torch.Tensor, z_ND: torch.Tensor) -> None:
        self.usage_counts += counts_K
        self.steps_unused.add_(1).masked_fill_(counts_K > 0, 0)
        # reservoir: overwrite random slots with a random subset of this batch's inputs
        R = self.reservoir.shape[0]
        n = min(z_ND.shape[0], R)
        pick = torch.randperm(z_ND.shape[0], device=z_ND.device)[:n]
        filled = int(self.reservoir_filled)
        if filled < R:  # fill sequentially first
            n_new = min(n, R - filled)
            self.reservoir[filled : filled + n_new] = z_ND[pick[:n_new]].float()
            self.reservoir_filled += n_new
        else:
            slots = torch.randperm(R, device=z_ND.device)[:n]
            self.reservoir[slots] = z_ND[pick].float()

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Re-initialise codes unused for >= dead_code_steps steps from reservoir samples.

        Returns the number of codes restarted. A small noise is added so that codes restarted from the
        same sample do not stay identical.
        """
        dead_K = self.steps_unused >= self.dead_code_steps
        n_dead, filled = int(dead_K.sum()), int(self.reservoir_filled)
        if n_dead == 0 or filled == 0:
            return 0
        src = torch.randint(0, filled, (n_dead,), device=self.reservoir.device)
        new_KD = self.reservoir[src] + 0.01 * self.reservoir[:filled].std() * torch.randn(
            n_dead, self.code_dim, device=self.reservoir.device
        )
        self.codebook[dead_K] = new_KD.to(self.codebook.dtype)
        self.steps_unused[dead_K] = 0
        self.n_restarts += n_dead
        log.debug("restarted %d dead codes", n_dead)
        return n_dead
