"""Typed configs for the three Genie components and the preset functions tiny / small / coinrun / paper.

Frame sizes are in pixels before padding: a frame whose size is not a multiple of the patch is padded
at the bottom/right inside the model (160x90 with patch 4 -> 160x92, 40x23 = 920 tokens) and cropped
back on output.

Presets:
- tiny(): seconds on CPU (tests); 32x32 by default, any size works (e.g. height=90, width=160).
- small(): a CPU demo in minutes on the project's own clips downscaled 2x: 160x90 -> 80x45 (exact
  16:9; the loader averages 2x2 pixels). Padded to 80x48 inside: 20x12 = 240 tokenizer tokens/frame.
- coinrun(): the paper's reproducible case study (App. F, Tab. 15-17), 64x64.
- paper(): the Platformers models (tokenizer ~200M, LAM ~300M, dynamics 10.1B), 160x90.

The paper does not publish the FFW width. Its parameter counts imply ~8-9 d_model^2 per ST block, i.e.
two attention layers (8 d^2) and a narrow FFW, so paper() uses ffn_mult 0.5 (Jafar's FFW is a single
d->d dense, the same 1 d^2). The LAM is the odd one: 2 x 20 layers at d 1024 already hold 336M in their
attention layers alone (+12% over the published 300M), so its FFW is made minimal (ffn_mult 1/16);
the paper's LAM probably differs in a way the paper does not state. The smaller presets use the usual
ffn_mult 4 (Jasmine reports that FFW expansion helps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

_POS = ("learned", "sinusoidal")


def _check_positive(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {getattr(obj, name)}")


def _check_heads(owner: str, d_model: int, n_heads: int, head_dim: int | None) -> None:
    if head_dim is None and d_model % n_heads != 0:
        raise ValueError(f"{owner}: d_model {d_model} is not divisible by n_heads {n_heads}")


@dataclass
class TokenizerConfig:
    height: int = 64  # frame height in pixels (before padding to a multiple of patch)
    width: int = 64  # frame width in pixels
    channels: int = 3  # RGB
    max_frames: int = 16  # longest sequence (temporal position table)
    patch: int = 4  # square patch side in pixels (paper: 4)
    enc_layers: int = 8  # encoder ST blocks
    enc_d_model: int = 512  # encoder width
    enc_heads: int = 8  # encoder attention heads
    dec_layers: int = 8  # decoder ST blocks
    dec_d_model: int = 512  # decoder width
    dec_heads: int = 8  # decoder attention heads
    head_dim: int | None = None  # key/query size per head; None = d_model // heads
    ffn_mult: float = 4.0  # FFW hidden width / d_model
    n_codes: int = 1024  # codebook size (paper: 1024)
    code_dim: int = 32  # latent/code width (paper: 32)
    beta: float = 0.25  # VQ commitment weight
    normalize_codes: bool = False  # cosine (L2-normalised) VQ
    dead_code_steps: int = 100  # restart codes unused this many steps; 0 = never
    qk_norm: bool = False  # RMS-normalise queries and keys
    pos_emb: str = "learned"  # "learned" or "sinusoidal" position tables

    def __post_init__(self) -> None:
        _check_positive(self, "height", "width", "channels", "max_frames", "patch", "enc_layers",
                        "enc_d_model", "enc_heads", "dec_layers", "dec_d_model", "dec_heads",
                        "ffn_mult", "n_codes", "code_dim")  # fmt: skip
        if self.beta < 0 or self.dead_code_steps < 0:
            raise ValueError("beta and dead_code_steps must be >= 0")
        if self.pos_emb not in _POS:
            raise ValueError(f"pos_emb must be one of {_POS}, got {self.pos_emb!r}")
        _check_heads("tokenizer encoder", self.enc_d_model, self.enc_heads, self.head_dim)
        _check_heads("tokenizer decoder", self.dec_d_model, self.dec_heads, self.head_dim)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) per frame after padding."""
        return math.ceil(self.height / self.patch), math.ceil(self.width / self.patch)


@dataclass
class LAMConfig:
    height: int = 64  # frame height in pixels
    width: int = 64  # frame width in pixels
    channels: int = 3  # RGB
    max_frames: int = 16  # longest sequence
    patch: int = 16  # patch side on raw pixels (paper: 16)
    enc_layers: int = 8  # encoder ST blocks
    dec_layers: int = 8  # decoder ST blocks
    d_model: int = 512  # width of encoder and decoder
    n_heads: int = 8  # attention heads
    head_dim: int | None = None  # key/query size per head; None = d_model // n_heads
    ffn_mult: float = 4.0  # FFW hidden width / d_model
    n_codes: int = 6  # number of latent actions |A| (paper: 8; CoinRun: 6)
    code_dim: int = 32  # latent action width (paper: 32)
    beta: float = 0.25  # VQ commitment weight
    normalize_codes: bool = True  # cosine VQ (Jafar), helps against collapse
    dead_code_steps: int = 50  # restart actions unused this many steps (Jafar: 50); 0 = never
    qk_norm: bool = False  # RMS-normalise queries and keys
    pos_emb: str = "learned"  # "learned" or "sinusoidal"

    def __post_init__(self) -> None:
        _check_positive(self, "height", "width", "channels", "max_frames", "patch", "enc_layers",
                        "dec_layers", "d_model", "n_heads", "ffn_mult", "n_codes", "code_dim")  # fmt: skip
        if self.max_frames < 2:
            raise ValueError("LAMConfig.max_frames must be >= 2 (an action needs two frames)")
        if self.beta < 0 or self.dead_code_steps < 0:
            raise ValueError("beta and dead_code_steps must be >= 0")
        if self.pos_emb not in _POS:
            raise ValueError(f"pos_emb must be one of {_POS}, got {self.pos_emb!r}")
        _check_heads("LAM", self.d_model, self.n_heads, self.head_dim)

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.patch), math.ceil(self.width / self.patch)


@dataclass
class DynamicsConfig:
    grid_h: int = 16  # tokenizer token rows per frame
    grid_w: int = 16  # tokenizer token columns per frame
    vocab_size: int = 1024  # tokenizer codebook size
    n_actions: int = 6  # LAM codebook size
    max_frames: int = 16  # context length in frames (paper: 16)
    n_layers: int = 12  # ST blocks
    d_model: int = 512  # width
    n_heads: int = 8  # attention heads
    head_dim: int | None = None  # key/query size per head; None = d_model // n_heads
    ffn_mult: float = 4.0  # FFW hidden width / d_model
    mask_rate_min: float = 0.5  # training mask rate ~ U[min, max] per sample (paper: U[0.5, 1])
    mask_rate_max: float = 1.0
    qk_norm: bool = True  # the paper uses QK-norm for the dynamics model
    pos_emb: str = "learned"  # "learned" or "sinusoidal"

    def __post_init__(self) -> None:
        _check_positive(self, "grid_h", "grid_w", "vocab_size", "n_actions", "max_frames",
                        "n_layers", "d_model", "n_heads", "ffn_mult")  # fmt: skip
        if self.max_frames < 2:
            raise ValueError("DynamicsConfig.max_frames must be >= 2")
        if not 0.0 <= self.mask_rate_min <= self.mask_rate_max <= 1.0:
            raise ValueError("need 0 <= mask_rate_min <= mask_rate_max <= 1")
        if self.pos_emb not in _POS:
            raise ValueError(f"pos_emb must be one of {_POS}, got {self.pos_emb!r}")
        _check_heads("dynamics", self.d_model, self.n_heads, self.head_dim)


@dataclass
class GenieConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # video tokenizer
    lam: LAMConfig = field(default_factory=LAMConfig)  # latent action model
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)  # MaskGIT dynamics

    def __post_init__(self) -> None:
        t, a, d = self.tokenizer, self.lam, self.dynamics
        if (d.grid_h, d.grid_w) != t.grid:
            raise ValueError(f"dynamics grid {(d.grid_h, d.grid_w)} != tokenizer grid {t.grid}")
        if d.vocab_size != t.n_codes:
            raise ValueError(f"dynamics vocab_size {d.vocab_size} != tokenizer n_codes {t.n_codes}")
        if d.n_actions != a.n_codes:
            raise ValueError(f"dynamics n_actions {d.n_actions} != LAM n_codes {a.n_codes}")
        if (t.height, t.width) != (a.height, a.width):
            raise ValueError("tokenizer and LAM must see the same frame size")


def _genie(tok: TokenizerConfig, lam: LAMConfig, **dyn: object) -> GenieConfig:
    gh, gw = tok.grid
    dynamics = DynamicsConfig(
        grid_h=gh, grid_w=gw, vocab_size=tok.n_codes, n_actions=lam.n_codes,
        max_frames=tok.max_frames, **dyn,  # type: ignore[arg-type]
    )  # fmt: skip
    return GenieConfig(tokenizer=tok, lam=lam, dynamics=dynamics)


def tiny(*, height: int = 32, width: int = 32, max_frames: int = 16) -> GenieConfig:
    """A few hundred thousand parameters: forward + backward + step in seconds on CPU."""
    size = dict(height=height, width=width, max_frames=max_frames)
    tok = TokenizerConfig(**size, patch=4, enc_layers=2, enc_d_model=64, enc_heads=4, dec_layers=2,
                          dec_d_model=64, dec_heads=4, ffn_mult=2.0, n_codes=64, code_dim=16,
                          dead_code_steps=20)  # fmt: skip
    lam = LAMConfig(**size, patch=16 if min(height, width) >= 32 else 8, enc_layers=2, dec_layers=2,
                    d_model=64, n_heads=4, ffn_mult=2.0, n_codes=4, code_dim=16, dead_code_steps=20)  # fmt: skip
    return _genie(tok, lam, n_layers=2, d_model=64, n_heads=4, ffn_mult=2.0)


def small(*, height: int = 45, width: int = 80, max_frames: int = 16) -> GenieConfig:
    """CPU demo on 80x45 frames (160x90 clips downscaled 2x): 1-1.5M params per component.

    Measured on this 2-core machine (shared, one thread): a tokenizer step at batch 4 x 8 frames
    takes a few seconds, so a few hundred steps are a demo of minutes, not a useful model.
    """
    size = dict(height=height, width=width, max_frames=max_frames)
    tok = TokenizerConfig(**size, patch=4, enc_layers=3, enc_d_model=128, enc_heads=4, dec_layers=3,
                          dec_d_model=128, dec_heads=4, ffn_mult=2.0, n_codes=512, code_dim=32)  # fmt: skip
    lam = LAMConfig(**size, patch=16, enc_layers=3, dec_layers=3, d_model=128, n_heads=4,
                    ffn_mult=2.0, n_codes=8)  # fmt: skip
    return _genie(tok, lam, n_layers=4, d_model=128, n_heads=4, ffn_mult=2.0)


def coinrun() -> GenieConfig:
    """Paper App. F (Tab. 15-17): 64x64 CoinRun; tokenizer 8+8 d512, LAM 8+8 d512 6 codes, dynamics 12L."""
    tok = TokenizerConfig(height=64, width=64, patch=4, enc_layers=8, enc_d_model=512, enc_heads=8,
                          dec_layers=8, dec_d_model=512, dec_heads=8, n_codes=1024, code_dim=32)  # fmt: skip
    lam = LAMConfig(height=64, width=64, patch=16, enc_layers=8, dec_layers=8, d_model=512,
                    n_heads=8, n_codes=6, code_dim=32)  # fmt: skip
    return _genie(tok, lam, n_layers=12, d_model=512, n_heads=8)


def paper() -> GenieConfig:
    """The Platformers models (Tab. 5-8, 12) at 160x90; see the module docstring for ffn_mult."""
    tok = TokenizerConfig(height=90, width=160, patch=4, enc_layers=12, enc_d_model=512, enc_heads=8,
                          dec_layers=20, dec_d_model=1024, dec_heads=16, head_dim=64, ffn_mult=0.5,
                          n_codes=1024, code_dim=32)  # fmt: skip
    lam = LAMConfig(height=90, width=160, patch=16, enc_layers=20, dec_layers=20, d_model=1024,
                    n_heads=16, head_dim=64, ffn_mult=1 / 16, n_codes=8, code_dim=32)  # fmt: skip
    return _genie(tok, lam, n_layers=48, d_model=5120, n_heads=36, head_dim=128, ffn_mult=0.5,
                  qk_norm=True)  # fmt: skip


PRESETS = {"tiny": tiny, "small": small, "coinrun": coinrun, "paper": paper}

# How a preset trains under torchrun (genie.train.TrainConfig.strategy): a full replica per GPU
# (DDP) suits the small presets; paper()'s 10.1B-parameter dynamics model needs ~160 GB for fp32
# weights, gradients and AdamW state, more than one GPU holds, so it is sharded (FSDP).
STRATEGY = {"tiny": "ddp", "small": "ddp", "coinrun": "ddp", "paper": "fsdp"}


def train_strategy(preset: str, choice: str = "auto") -> str:
    """The strategy to train `preset` with: `choice` unless it is "auto", else STRATEGY[preset]."""
    if choice not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"strategy must be auto, ddp or fsdp, got {choice!r}")
    return STRATEGY.get(preset, "ddp") if choice == "auto" else choice


def count_parameters(config: GenieConfig) -> dict[str, int]:
    """Trainable parameters per component, built on the meta device (no memory is allocated).

    Returns {"tokenizer": n, "lam": n, "dynamics": n, "total": n}.
    """
    # imported here: the model modules import their configs from this module
    from genie.dynamics import DynamicsModel
    from genie.lam import LatentActionModel
    from genie.tokenizer import VideoTokenizer

    counts = {}
    with torch.device("meta"):
        for name, model in (
            ("tokenizer", lambda: VideoTokenizer(config=config.tokenizer)),
            ("lam", lambda: LatentActionModel(config=config.lam)),
            ("dynamics", lambda: DynamicsModel(config=config.dynamics)),
        ):
            counts[name] = sum(p.numel() for p in model().parameters())
    counts["total"] = sum(counts.values())
    return counts
