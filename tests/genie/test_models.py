"""Models: causality, action alignment, VQ gradients and restarts, tiny presets train, paper sizes."""

from __future__ import annotations

import pytest
import torch

from genie.dynamics import DynamicsModel
from genie.lam import LatentActionModel
from genie.presets import (
    DynamicsConfig,
    GenieConfig,
    LAMConfig,
    TokenizerConfig,
    coinrun,
    count_parameters,
    paper,
    small,
    tiny,
)
from genie.quantizer import VectorQuantizer
from genie.st_transformer import STTransformer
from genie.tokenizer import VideoTokenizer, patchify, unpatchify

ATOL = 1e-6


def moving_squares(
    b: int, t: int, h: int = 32, w: int = 32, side: int = 8, seed: int = 0
) -> torch.Tensor:
    """Videos (b, t, 3, h, w) in [0,1]: one coloured square per video moving at a constant velocity."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, t, 3, h, w)
    for i in range(b):
        y0, x0 = (int(v) for v in torch.randint(0, min(h, w) - side, (2,), generator=g))
        vy, vx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        colour = torch.rand(3, generator=g) * 0.7 + 0.3
        for f in range(t):
            yy, xx = (y0 + vy * f) % (h - side), (x0 + vx * f) % (w - side)
            x[i, f, :, yy : yy + side, xx : xx + side] = colour[:, None, None]
    return x


@pytest.fixture(scope="module")
def cfg() -> GenieConfig:
    return tiny()


def perturbed(x: torch.Tensor, frame: int) -> torch.Tensor:
    y = x.clone()
    y[:, frame] = torch.rand_like(y[:, frame])
    return y


# ---------------------------------------------------------------- causality


def test_st_transformer_is_causal_in_time() -> None:
    torch.manual_seed(0)
    st = STTransformer(
        n_layers=2, d_model=32, n_heads=4, max_frames=8, n_spatial=5, qk_norm=True
    ).eval()
    x = torch.randn(2, 8, 5, 32)
    k = 4
    y, y2 = st(x), st(perturbed(x, k))
    assert torch.allclose(y[:, :k], y2[:, :k], atol=ATOL)
    assert not torch.allclose(y[:, k:], y2[:, k:], atol=1e-3)


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal"])
def test_st_transformer_shapes_and_position_tables(pos_emb: str) -> None:
    st = STTransformer(
        n_layers=1, d_model=16, n_heads=2, max_frames=4, n_spatial=6, pos_emb=pos_emb
    )
    assert st(torch.randn(3, 4, 6, 16)).shape == (3, 4, 6, 16)
    with pytest.raises(ValueError):
        st(torch.randn(1, 5, 6, 16))  # longer than max_frames


def test_tokenizer_is_causal(cfg: GenieConfig) -> None:
    torch.manual_seed(0)
    tok = VideoTokenizer(config=cfg.tokenizer).eval()
    x = moving_squares(2, 8)
    k = 5
    x2 = perturbed(x, k)
    z, z2 = tok._encode_latents(x), tok._encode_latents(x2)
    assert torch.allclose(z[:, :k], z2[:, :k], atol=ATOL)
    assert not torch.allclose(z[:, k], z2[:, k], atol=1e-3)
    t, t2 = tok.encode(x), tok.encode(x2)
    assert torch.equal(t[:, :k], t2[:, :k])
    # decoding: frame j uses tokens 1..j only
    t3 = t.clone()
    t3[:, k] = (t3[:, k] + 1) % cfg.tokenizer.n_codes
    d, d3 = tok.decode(t), tok.decode(t3)
    assert torch.allclose(d[:, :k], d3[:, :k], atol=ATOL)
    assert not torch.allclose(d[:, k], d3[:, k], atol=1e-4)


def test_lam_encoder_causality_and_alignment(cfg: GenieConfig) -> None:
    """a_t (transition t -> t+1) depends on frames 0..t+1 only; prediction of x_{t+1} on x_0..x_t, a_0..a_t."""
    torch.manual_seed(0)
    lam = LatentActionModel(config=cfg.lam).eval()
    captured: list[torch.Tensor] = []
    lam.to_action.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    x = moving_squares(2, 8)
    k = 5
    x2 = perturbed(x, k)
    a_idx, a_idx2 = lam.infer_actions(x), lam.infer_actions(x2)
    a, a2 = captured  # continuous actions (B, T-1, code_dim)
    assert (
        a.shape == (2, 7, cfg.lam.code_dim) and a_idx.shape == (2, 7) and a_idx.dtype == torch.long
    )
    assert torch.allclose(a[:, : k - 1], a2[:, : k - 1], atol=ATOL)  # a_0..a_{k-2}: frames <= k-1
    assert not torch.allclose(a[:, k - 1], a2[:, k - 1], atol=1e-4)  # a_{k-1} sees frame k
    assert torch.equal(a_idx[:, : k - 1], a_idx2[:, : k - 1])
    p, p2 = lam.predict(x), lam.predict(x2)  # predictions of frames 1..T-1
    assert torch.allclose(p[:, : k - 1], p2[:, : k - 1], atol=ATOL)  # frames 1..k-1 unchanged
    # decoder: changing a_t changes the prediction of x_{t+1} and later, nothing before
    patches = patchify(x, cfg.lam.patch)
    codes = lam.action_embeddings()
    acts = codes[torch.zeros(2, 7, dtype=torch.long)]
    acts2 = acts.clone()
    t = 3
    acts2[:, t] = codes[1]
    q, q2 = lam._predict(patches, acts), lam._predict(patches, acts2)
    assert torch.allclose(q[:, :t], q2[:, :t], atol=ATOL)
    assert not torch.allclose(q[:, t], q2[:, t], atol=1e-5)  # q[:, t] is x_{t+1}


def test_dynamics_causality_and_action_alignment(cfg: GenieConfig) -> None:
    torch.manual_seed(0)
    dyn = DynamicsModel(config=cfg.dynamics).eval()
    c = cfg.dynamics
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, c.vocab_size, (2, 6, c.grid_h, c.grid_w), generator=g)
    actions = torch.randint(0, c.n_actions, (2, 5), generator=g)
    base = dyn.logits(tokens, actions)
    assert base.shape == (2, 6, c.grid_h, c.grid_w, c.vocab_size)
    k = 3
    tokens2 = tokens.clone()
    tokens2[:, k] = (tokens2[:, k] + 1) % c.vocab_size
    out = dyn.logits(tokens2, actions)
    assert torch.allclose(base[:, :k], out[:, :k], atol=ATOL)
    assert not torch.allclose(base[:, k], out[:, k], atol=1e-4)
    # a_t changes frames t+1.. only
    t = 2
    actions2 = actions.clone()
    actions2[:, t] = (actions2[:, t] + 1) % c.n_actions
    out = dyn.logits(tokens, actions2)
    assert torch.allclose(base[:, : t + 1], out[:, : t + 1], atol=ATOL)
    assert not torch.allclose(base[:, t + 1], out[:, t + 1], atol=1e-4)
    # a masked position's token value is ignored
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, -1] = True
    tokens3 = tokens.clone()
    tokens3[:, -1] = 0
    assert torch.allclose(
        dyn.logits(tokens, actions, mask), dyn.logits(tokens3, actions, mask), atol=ATOL
    )
    with pytest.raises(ValueError):
        dyn.logits(tokens, actions[:, :-1])


def test_dynamics_training_mask() -> None:
    dyn = DynamicsModel(config=DynamicsConfig(grid_h=8, grid_w=8, vocab_size=16, n_actions=4,
                                              n_layers=1, d_model=16, n_heads=2))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    mask = dyn.sample_mask(torch.zeros(64, 8, 8, 8, dtype=torch.long), generator=g)
    assert not mask[:, 0].any()  # frame 1 never masked
    rates = mask[:, 1:].float().mean(dim=(1, 2, 3))
    assert rates.min() > 0.4 and rates.max() <= 1.0 and 0.65 < rates.mean() < 0.85  # U[0.5, 1]


# ---------------------------------------------------------------- quantizer


def test_vq_straight_through_reaches_encoder(cfg: GenieConfig) -> None:
    vq = VectorQuantizer(n_codes=16, code_dim=8)
    z = torch.randn(10, 8, requires_grad=True)
    q = vq(z)
    assert torch.allclose(q.z_q, vq.codebook[q.indices], atol=1e-6)  # forward = the codes
    (q.z_q.sum() + q.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0  # codebook loss
    tok = VideoTokenizer(config=cfg.tokenizer)
    loss, _ = tok.loss(moving_squares(1, 4))
    loss.backward()
    assert tok.patch_in.weight.grad.abs().sum() > 0  # reconstruction gradient crosses the VQ
    assert tok.encoder.blocks[0].attn_s.qkv.weight.grad.abs().sum() > 0


def test_cosine_vq_outputs_unit_vectors() -> None:
    vq = VectorQuantizer(n_codes=4, code_dim=8, normalize=True)
    q = vq(torch.randn(5, 8) * 7)
    assert torch.allclose(q.z_q.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_dead_code_restart_replaces_unused_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=8, code_dim=4, dead_code_steps=3, reservoir_size=64)
    with torch.no_grad():
        vq.codebook.copy_(torch.arange(8.0)[:, None].repeat(1, 4))  # codes at 0, 1, ..., 7
    data = torch.full((32, 4), 100.0) + 0.1 * torch.randn(32, 4)  # all nearest to code 7
    for _ in range(3):
        q = vq(data)
    assert q.indices.unique().tolist() == [7]
    assert int(vq.n_restarts) == 0 and vq.steps_unused[:7].tolist() == [3] * 7
    before = vq.codebook.detach().clone()
    q = vq(data)  # start of this forward restarts codes 0..6 from the reservoir
    assert int(vq.n_restarts) == 7
    assert not torch.allclose(vq.codebook[:7], before[:7])
    assert (vq.codebook[:7] - 100.0).abs().max() < 1.0  # now near the encoder outputs
    assert torch.equal(vq.codebook[7], before[7])
    assert len(q.indices.unique()) > 1
    # the state checkpoints with the module
    sd = vq.state_dict()
    assert {"steps_unused", "usage_counts", "reservoir", "reservoir_filled", "n_restarts"} <= set(
        sd
    )
    vq2 = VectorQuantizer(n_codes=8, code_dim=4, dead_code_steps=3, reservoir_size=64)
    vq2.load_state_dict(sd)
    assert torch.equal(vq2.steps_unused, vq.steps_unused)
    # eval mode never restarts
    vq.eval()
    snapshot = vq.codebook.detach().clone()
    for _ in range(5):
        vq(torch.zeros(4, 4))
    assert torch.equal(vq.codebook, snapshot)


# ---------------------------------------------------------------- padding


def test_patchify_roundtrip_and_padding() -> None:
    x = torch.rand(1, 2, 3, 90, 160)
    p = patchify(x, 4)
    assert p.shape == (1, 2, 23 * 40, 48)  # 90 padded to 92
    assert torch.equal(unpatchify(p, 4, 3, 90, 160), x)


def test_tokenizer_pads_90x160() -> None:
    cfg = tiny(height=90, width=160)
    tok = VideoTokenizer(config=cfg.tokenizer).eval()
    x = torch.rand(1, 2, 3, 90, 160)
    tokens = tok.encode(x)
    assert tokens.shape == (1, 2, 23, 40) and tokens.dtype == torch.long
    assert tok.decode(tokens).shape == (1, 2, 3, 90, 160)
    assert LatentActionModel(config=cfg.lam).infer_actions(x).shape == (1, 1)


# ---------------------------------------------------------------- training


def _train(model: torch.nn.Module, loss_fn, steps: int = 30, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, metrics = loss_fn()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(metrics["loss"]))
    print(f"{type(model).__name__}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def test_tiny_tokenizer_trains(cfg: GenieConfig) -> None:
    torch.manual_seed(0)
    tok = VideoTokenizer(config=cfg.tokenizer)
    x = moving_squares(2, 6)
    losses = _train(tok, lambda: tok.loss(x))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_tiny_lam_trains(cfg: GenieConfig) -> None:
    torch.manual_seed(0)
    lam = LatentActionModel(config=cfg.lam)
    x = moving_squares(4, 8)
    losses = _train(lam, lambda: lam.loss(x))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    _, m = lam.loss(x)
    assert {"perplexity", "codebook_usage", "action_frac_0"} <= set(m)


def test_tiny_dynamics_trains(cfg: GenieConfig) -> None:
    torch.manual_seed(0)
    c = cfg.dynamics
    dyn = DynamicsModel(config=c)
    g = torch.Generator().manual_seed(0)
    # a learnable token video: frame t+1 = frame t shifted by one column, actions fixed
    first = torch.randint(0, c.vocab_size, (4, 1, c.grid_h, c.grid_w), generator=g)
    tokens = torch.cat([first.roll(f, dims=-1) for f in range(6)], dim=1)
    actions = torch.randint(0, c.n_actions, (4, 5), generator=g)
    losses = _train(dyn, lambda: dyn.loss(tokens, actions, generator=g), lr=3e-3)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


# ---------------------------------------------------------------- presets


def test_paper_parameter_counts_on_meta_device() -> None:
    counts = count_parameters(paper())
    for name, published in (("tokenizer", 200e6), ("lam", 300e6), ("dynamics", 10.1e9)):
        assert abs(counts[name] / published - 1) < 0.15, (name, counts[name])
    assert counts["total"] == counts["tokenizer"] + counts["lam"] + counts["dynamics"]


def test_presets_build_and_agree() -> None:
    for preset in (tiny, small, coinrun, paper):
        cfg = preset()
        assert (cfg.dynamics.grid_h, cfg.dynamics.grid_w) == cfg.tokenizer.grid
    assert coinrun().lam.n_codes == 6 and paper().lam.n_codes == 8
    assert paper().tokenizer.grid == (23, 40)
    assert small().tokenizer.grid == (12, 20)


def test_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError):
        TokenizerConfig(patch=0)
    with pytest.raises(ValueError):
        LAMConfig(d_model=100, n_heads=8)
    with pytest.raises(ValueError):
        DynamicsConfig(mask_rate_min=0.9, mask_rate_max=0.5)
    with pytest.raises(ValueError):
        TokenizerConfig(pos_emb="rotary")
    t = tiny()
    with pytest.raises(ValueError):
        GenieConfig(tokenizer=t.tokenizer, lam=t.lam, dynamics=DynamicsConfig(grid_h=3, grid_w=3))


# ---------------------------------------------------------------- loader conventions


def test_models_accept_loader_padded_frames_and_dict_batches() -> None:
    cfg = tiny(height=30, width=32)  # patch 4 pads 30 -> 32 (as the loader does for 90 -> 92)
    torch.manual_seed(0)
    tok = VideoTokenizer(config=cfg.tokenizer)
    x = moving_squares(1, 3, h=30, w=32)
    x_pad = torch.nn.functional.pad(x, (0, 0, 0, 2))
    assert torch.equal(tok.encode(x), tok.encode(x_pad))
    assert tok.decode(tok.encode(x)).shape == (1, 3, 3, 30, 32)
    tok.eval()  # no VQ state changes between the two calls
    (l1, _), (l2, _) = tok.loss(x), tok.loss({"frames": x_pad})
    assert torch.allclose(l1, l2, atol=ATOL)  # padding rows are not scored
    with pytest.raises(ValueError):
        tok.encode(torch.rand(1, 2, 3, 40, 32))  # a different grid
    lam = LatentActionModel(config=cfg.lam).eval()
    assert torch.equal(lam.infer_actions(x), lam.infer_actions(x_pad))
    (l1, _), (l2, _) = lam.loss(x), lam.loss({"frames": x_pad})
    assert torch.allclose(l1, l2, atol=ATOL)


def test_lam_infers_long_clips_in_overlapping_windows() -> None:
    cfg = tiny(max_frames=4)
    torch.manual_seed(0)
    lam = LatentActionModel(config=cfg.lam).eval()
    x = moving_squares(2, 10)
    a = lam.infer_actions(x)
    assert a.shape == (2, 9)
    assert torch.equal(a[:, :3], lam.infer_actions(x[:, :4]))
    assert torch.equal(a[:, 3:6], lam.infer_actions(x[:, 3:7]))
    assert torch.equal(a[:, 6:], lam.infer_actions(x[:, 6:]))
    fa = lam.frame_actions(x)
    assert fa.shape == (2, 10) and (fa[:, 0] == -1).all() and torch.equal(fa[:, 1:], a)


def test_dynamics_loss_takes_token_loader_dicts_and_frame_aligned_actions(cfg: GenieConfig) -> None:
    c = cfg.dynamics
    dyn = DynamicsModel(config=c)
    tokens = torch.randint(0, c.vocab_size, (2, 5, c.grid_h, c.grid_w))
    actions = torch.randint(0, c.n_actions, (2, 4))
    framewise = torch.cat([torch.full((2, 1), -1), actions], dim=1)
    l1, m = dyn.loss(tokens, actions, generator=torch.Generator().manual_seed(3))
    l2, _ = dyn.loss(
        {"tokens": tokens, "actions": framewise}, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(l1, l2) and set(m) == {"loss", "accuracy", "mask_rate"}
    with pytest.raises(ValueError):
        dyn.loss(tokens, actions[:, :2])


def test_vq_assignment_is_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=256, code_dim=32).eval()
    z = torch.randn(512, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q_amp = vq(z)
    assert torch.equal(q_amp.indices, vq(z).indices)
