"""Clip-quality features: one fixed-length float vector per 16 s clip, for the clip classifier.

The clip stage calls :func:`compute_features` on each window of decoded frames (uint8, (T, H, W, 3),
T=160 at 10 FPS, 160x90, black-padded to 16:9). Every feature is a float64, finite, and a pure
function of the pixels (no randomness), so a clip always gets the same vector. Values are in units
of the 0-1 intensity scale unless the table says otherwise. Black padding bars are detected first
and every other feature is measured inside the content box, so a 4:3 source padded to 16:9 does not
look like a flat or static clip.

Feature table (why each one separates platformer gameplay from what a crawl returns besides it):

=========================  ==========================================================================
name                       what it measures / why it separates
=========================  ==========================================================================
luma_mean                  mean brightness. Black, faded and "video unavailable" frames are near 0.
luma_time_std              std over time of per-frame mean brightness. Fades and flashes are high;
                           gameplay keeps a steady exposure.
dark_frame_frac            fraction of frames with mean brightness < 0.06 (black, fade-out).
low_contrast_frac          fraction of frames with spatial std < 0.03: blank, faded, uniform screens.
sat_mean                   mean HSV saturation. Games are colourful; text cards, greyscale talking
                           heads and many menus are not.
border_frac                area fraction of black bars (letterbox / pillarbox) around the content.
palette_bits               entropy (bits) of the colour histogram (4 bits per channel) per frame,
                           i.e. log2 of the effective number of colours. Games draw large areas
                           from small palettes (decoded: ~4-5); camera footage ~6; noise ~10-12.
palette_top8_frac          area fraction covered by the 8 most common colours: games have large flat
                           fills (sky, tiles); camera footage and noise spread over many colours.
edge_density               fraction of pixels with a luma step > 0.1 to a neighbour: tile and sprite
                           outlines; low for smooth footage and blank screens, extreme for noise.
flat_frac                  fraction of pixels whose neighbours differ by <= 1.5/255: flat pixel-art
                           fills; sensor noise is never flat (but a low-bitrate codec flattens
                           camera footage too, hence soft_step_frac).
soft_step_frac             of the pixels with a visible step (> 3/255), the fraction whose step is
                           gentle (<= 20/255): ~1 for camera footage (shading, blur) even after
                           H.264; low for pixel art, whose steps are outlines.
spatial_entropy            entropy (bits) of the 32-bin luma histogram per frame: low for blank and
                           two-tone text cards, high for noise.
natural_cell_frac          fraction of 10x10 cells that are textured (> 15% visible steps)
                           with gentle steps (> 80% of them soft): camera-like content. A facecam
                           over gameplay gives about its area share, camera footage the most.
diff_mean                  mean absolute luma difference between consecutive frames (motion level).
diff_p90                   90th percentile over time of the per-transition difference.
diff_cv                    coefficient of variation over time of the difference: slideshows and
                           cuts are spiky, gameplay is steady. 0 for a still clip.
changed_cell_frac          mean fraction of grid cells (9x16) that change per transition: the
                           spatial spread of motion. Scrolling moves the whole screen; a menu
                           highlight moves a few cells.
motion_top_share           share of the motion energy (changed cells only) in the top 10% of cells:
                           high for localised motion (menu cursor, facecam), low for full-screen
                           scrolling. 0 if nothing changes.
static_cell_frac           fraction of content cells that never change over the clip: ~1 for a
                           frozen screen, small for a HUD, large for a big static overlay or panel.
frozen_frac                fraction of transitions where no cell changes (frozen frames).
frozen_longest_run         longest run of frozen transitions, as a fraction of the clip.
scene_cuts                 hard cuts (large full-screen changes) per 160 frames: slideshows, montage.
temporal_hf                mean absolute second temporal difference: frame-to-frame flicker; very
                           high for noise, low for smooth motion.
diff_spatial_corr          correlation of the frame difference with its right neighbour, over moving
                           transitions: ~0 for noise and grain (every pixel changes on its own),
                           high for moving objects and scrolling (changes come in coherent
                           blobs and edges). On the same pooled pairs as the scroll features.
                           0 for a still clip.
scroll_frac                fraction of sampled moving transitions that a single global integer shift
                           (phase correlation) explains: side-scrolling camera.
scroll_consistency         length of the mean unit shift vector over scroll transitions: 1 when the
                           level scrolls one way; low for jitter. 0 when there is no scroll.
scroll_speed               median shift length (pixels at 80x45) over scroll transitions.
phase_peak_mean            mean phase-correlation peak over sampled moving transitions: a rigid
                           translation (scrolling pixel art) or a small local change peaks high;
                           noise, full-frame non-rigid change and dissolves peak low.
align_gain                 median relative drop of the frame difference after applying the best
                           shift: large when the motion is a clean scroll.
=========================  ==========================================================================

Motion features alone do not separate the classes (some games barely move at 160x90, some menus
animate); the classifier combines motion with palette, flatness and layout features. Known blind
spots: painted/high-colour games look camera-like to the palette and flatness features, and a
menu over live gameplay looks like gameplay; the classifier learns how much to trust each feature
from rated clips.

Cost: ~25-30 ms CPU per 160-frame 160x90 clip on one core (numpy only). Whole-clip statistics use
the luma of a 2x2-strided subsample; colour and texture use 12 evenly spaced full-res frames; the
shift analysis uses up to 24 evenly spaced moving transitions on 2x2 mean-pooled luma.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

# Bump whenever a feature's definition changes: saved classifiers record it and refuse a mismatch.
FEATURE_VERSION = "3"

FEATURE_NAMES: tuple[str, ...] = (
    "luma_mean",
    "luma_time_std",
    "dark_frame_frac",
    "low_contrast_frac",
    "sat_mean",
    "border_frac",
    "palette_bits",
    "palette_top8_frac",
    "edge_density",
    "flat_frac",
    "soft_step_frac",
    "spatial_entropy",
    "natural_cell_frac",
    "diff_mean",
    "diff_p90",
    "diff_cv",
    "changed_cell_frac",
    "motion_top_share",
    "static_cell_frac",
    "frozen_frac",
    "frozen_longest_run",
    "scene_cuts",
    "temporal_hf",
    "diff_spatial_corr",
    "scroll_frac",
    "scroll_consistency",
    "scroll_speed",
    "phase_peak_mean",
    "align_gain",
)

# Thresholds on the 0-1 scale. Chosen so that H.264 re-encoding noise of a still screen (~1/255 per
# pixel) stays below "changed" while an 8x12 sprite moving through a 10x10-pixel cell is well above.
_BAR_LEVEL = 16 / 255  # a padding row/column never gets brighter than this
_CELL_CHANGED = 3 / 255  # mean |diff| in a cell above which the cell "changed"
_CUT_ABS = 0.12  # per-transition mean |diff| of a hard cut (about a third of a different frame)
_CUT_REL = 4.0  # ... and this many times the clip's median difference
_FLAT_STEP = 1.5 / 255  # neighbour step counted as flat
_EDGE_STEP = 0.1
_SOFT_LO, _SOFT_HI = 3 / 255, 20 / 255  # a gentle step: above codec noise, below an outline
_GRID = (9, 16)  # motion cells over the 80x45 subsample (5x5 samples per cell at 160x90)
_N_COLOUR_FRAMES = 12  # frames sampled (evenly over the clip) for the per-frame spatial features
_N_PHASE_PAIRS = 24  # moving transitions phase-correlated per clip (evenly spaced), for speed
_LUMA_W = (77, 150, 29)  # BT.601 luma in 1/256 units, integer maths for speed


def compute_features(frames_THWC: np.ndarray) -> dict[str, float]:
    """Compute the clip-quality feature vector of one clip.

    Args:
        frames_THWC: uint8 array (T, H, W, 3), RGB, T >= 3 (160 at 10 FPS), H, W >= 20.

    Returns:
        dict with exactly the keys of FEATURE_NAMES, in that order, each a finite Python float.

    Raises:
        ValueError: on a wrong dtype or shape.
    """
    x = np.asarray(frames_THWC)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {x.dtype} {x.shape}")
    if x.shape[0] < 3 or x.shape[1] < 20 or x.shape[2] < 20:
        raise ValueError(f"clip too small for features: {x.shape}")

    # Luma of every frame on a 2x2-strided subsample (80x45): a quarter of the pixel work, and a
    # 5x5 motion cell still averages 25 samples, enough to keep codec noise under "changed".
    small = _luma(x[:, ::2, ::2]).astype(np.float32) * np.float32(1 / 255)  # (T, h, w) 0..1
    y0, y1, x0, x1 = _content_box(small)
    h, w = small.shape[1:]
    border = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    small = np.ascontiguousarray(small[:, y0:y1, x0:x1])
    x = x[:, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1]

    feats: dict[str, float] = {"border_frac": border}
    feats.update(_brightness_features(small))
    sample = np.linspace(0, x.shape[0] - 1, min(_N_COLOUR_FRAMES, x.shape[0])).round().astype(int)
    feats.update(_colour_features(x[sample]))
    feats.update(_texture_features(_luma(x[sample]).astype(np.float32) / 255.0))
    motion, moving = _motion_features(small)
    feats.update(motion)
    feats.update(_scroll_features(x, moving))

    out = {name: float(feats[name]) for name in FEATURE_NAMES}
    for name, v in out.items():
        if not np.isfinite(v):  # a bug, not a property of the clip: fail loudly
            raise RuntimeError(f"feature {name} is not finite: {v}")
    return out


def _luma(x: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint16 luma 0..255 (integer BT.601, faster than float maths)."""
    r, g, b = (x[..., i].astype(np.uint16) for i in range(3))
    out: np.ndarray = (r * _LUMA_W[0] + g * _LUMA_W[1] + b * _LUMA_W[2]) >> 8
    return out


def _content_box(small: np.ndarray) -> tuple[int, int, int, int]:
    """Rows/columns of (T, h, w) luma inside the black padding bars; all if the clip is dark."""
    peak = small.max(axis=0)  # (h, w) brightest value ever seen at each pixel
    rows = np.flatnonzero(peak.max(axis=1) > _BAR_LEVEL)
    cols = np.flatnonzero(peak.max(axis=0) > _BAR_LEVEL)
    H, W = small.shape[1:]
    if rows.size == 0 or cols.size == 0:
        return 0, H, 0, W
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # A content box this small is a dark clip with a bright speck, not a padded frame.
    if (y1 - y0) < H // 4 or (x1 - x0) < W // 4:
        return 0, H, 0, W
    return y0, y1, x0, x1


def _brightness_features(small: np.ndarray) -> dict[str, float]:
    mean_t = small.mean(axis=(1, 2))  # (T,)
    std_t = small.std(axis=(1, 2))
    return {
        "luma_mean": float(mean_t.mean()),
        "luma_time_std": float(mean_t.std()),
        "dark_frame_frac": float((mean_t < 0.06).mean()),
        "low_contrast_frac": float((std_t < 0.03).mean()),
    }


def _colour_features(rgb: np.ndarray) -> dict[str, float]:
    """Palette and saturation over a few sampled frames. rgb: (S, H, W, 3) uint8."""
    S = rgb.shape[0]
    q = rgb >> 4  # 4 bits per channel: 4096 colours, coarse enough to merge codec noise
    code = (q[..., 0].astype(np.int32) << 8) | (q[..., 1].astype(np.int32) << 4) | q[..., 2]
    code = code.reshape(S, -1) + (np.arange(S, dtype=np.int32) * 4096)[:, None]
    counts = np.bincount(code.ravel(), minlength=S * 4096).reshape(S, 4096)
    n_pix = code.shape[1]
    # Entropy, not a count of distinct colours: H.264's 4:2:0 chroma bleeds every sharp pixel-art
    # edge into many rare in-between colours, which would make a decoded game look richer than
    # camera footage; rare colours barely move the entropy.
    p = counts / n_pix
    palette_bits = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    top8 = np.partition(counts, 4096 - 8, axis=1)[:, -8:].sum(axis=1) / n_pix
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # reductions over a length-3 axis are slow
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32)
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    return {
        "sat_mean": float(sat.mean()),
        "palette_bits": float(palette_bits.mean()),
        "palette_top8_frac": float(top8.mean()),
    }


def _texture_features(g: np.ndarray) -> dict[str, float]:
    """Edges, flatness, entropy and natural-texture cells. g: (S, H, W) float32 luma 0..1."""
    gx = np.abs(np.diff(g, axis=2))[:, :-1, :]  # (S, H-1, W-1): crop to a common grid
    gy = np.abs(np.diff(g, axis=1))[:, :, :-1]
    step = np.maximum(gx, gy)
    flat = step <= _FLAT_STEP
    textured = step > _SOFT_LO  # a visible step, above codec noise
    soft = textured & (step <= _SOFT_HI)  # ... but a gentle one (shading, not an outline)
    S = g.shape[0]
    hist = np.stack(
        [np.bincount(np.minimum(f * 32, 31).astype(np.int64).ravel(), minlength=32) for f in g]
    )
    p = hist / hist.sum(axis=1, keepdims=True)
    ent = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    # 10x10 cells (at 160x90: 9x16 cells); cropped so the grid tiles the frame
    ch, cw = 10, 10
    nh, nw = flat.shape[1] // ch, flat.shape[2] // cw
    if nh == 0 or nw == 0:
        natural = 0.0
    else:
        tc = textured[:, : nh * ch, : nw * cw].reshape(S, nh, ch, nw, cw).mean(axis=(2, 4))
        sc = soft[:, : nh * ch, : nw * cw].reshape(S, nh, ch, nw, cw).mean(axis=(2, 4))
        # natural: mostly textured, and the texture is gentle gradients rather than hard edges
        natural = float(((tc > 0.15) & (sc > 0.8 * tc)).mean())
    n_textured = int(textured.sum())
    return {
        "edge_density": float((step > _EDGE_STEP).mean()),
        "flat_frac": float(flat.mean()),
        "soft_step_frac": float(soft.sum() / n_textured) if n_textured else 0.0,
        "spatial_entropy": float(ent.mean()),
        "natural_cell_frac": natural,
    }


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    if not mask.any():
        return 0
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[0::2]).max())


def _motion_features(small: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Temporal statistics on the subsampled luma (T, h, w).

    Returns:
        (features, moving): moving is (T-1,) bool, transitions that are neither frozen nor cuts.
    """
    T, h, w = small.shape
    d = np.abs(np.diff(small, axis=0))  # (T-1, h, w)
    d_t = d.mean(axis=(1, 2))
    gh, gw = min(_GRID[0], h), min(_GRID[1], w)
    ch, cw = h // gh, w // gw
    cells = d[:, : gh * ch, : gw * cw].reshape(T - 1, gh, ch, gw, cw).mean(axis=(2, 4))
    cells = cells.reshape(T - 1, -1)  # (T-1, n_cells)
    changed = cells > _CELL_CHANGED
    frozen = ~changed.any(axis=1)
    energy = (cells * changed).sum(axis=0)  # only real changes: codec flicker is not motion
    total = float(energy.sum())
    n_top = max(1, energy.size // 10)
    top_share = float(np.sort(energy)[-n_top:].sum() / total) if total > 1e-6 else 0.0
    med = float(np.median(d_t))
    cuts = (d_t > _CUT_ABS) & (d_t > _CUT_REL * med) & (changed.mean(axis=1) > 0.5)
    mean_d = float(d_t.mean())
    hf = float(np.abs(small[2:] - 2 * small[1:-1] + small[:-2]).mean())
    feats = {
        "diff_mean": mean_d,
        "diff_p90": float(np.percentile(d_t, 90)),
        "diff_cv": float(d_t.std() / mean_d) if mean_d > 1e-4 else 0.0,
        "changed_cell_frac": float(changed.mean()),
        "motion_top_share": top_share,
        "static_cell_frac": float((~changed.any(axis=0)).mean()),
        "frozen_frac": float(frozen.mean()),
        "frozen_longest_run": _longest_run(frozen) / (T - 1),
        "scene_cuts": float(cuts.sum()) * 159.0 / (T - 1),
        "temporal_hf": hf,
    }
    return feats, ~frozen & ~cuts


def _diff_spatial_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Uncentred lag-1 horizontal autocorrelation of the signed difference b - a (its mean is ~0).
    a, b: (n, h, w) pooled luma of consecutive frames."""
    d = b - a
    energy = float(np.einsum("nhw,nhw->", d, d))
    if energy < 1e-9:
        return 0.0
    return float(np.einsum("nhw,nhw->", d[:, :, 1:], d[:, :, :-1])) / energy


def _scroll_features(rgb: np.ndarray, moving: np.ndarray) -> dict[str, float]:
    """Global integer shift between consecutive frames by phase correlation, on up to
    _N_PHASE_PAIRS moving transitions spread over the clip. rgb: (T, H, W, 3) uint8; moving: (T-1,) bool.

    Measured on 2x2 mean-pooled luma, not the strided subsample: pooling keeps an odd-pixel
    scroll a near-exact shift at half resolution, where striding would alias pixel art."""
    cand = np.flatnonzero(moving)
    idx = cand[np.unique(np.linspace(0, cand.size - 1, min(_N_PHASE_PAIRS, cand.size)).astype(int))]
    zero = {
        "scroll_frac": 0.0,
        "scroll_consistency": 0.0,
        "scroll_speed": 0.0,
        "phase_peak_mean": 0.0,
        "align_gain": 0.0,
        "diff_spatial_corr": 0.0,
    }
    if idx.size == 0:
        return zero
    lum = _luma(rgb[np.concatenate([idx, idx + 1])])  # (2n, H, W) uint16
    hh, ww = lum.shape[1] // 2 * 2, lum.shape[2] // 2 * 2
    lum = (
        lum[:, 0:hh:2, 0:ww:2]
        + lum[:, 1:hh:2, 0:ww:2]
        + lum[:, 0:hh:2, 1:ww:2]
        + lum[:, 1:hh:2, 1:ww:2]
    )
    pooled = lum.astype(np.float32) * np.float32(1 / (4 * 255))
    a, b = pooled[: idx.size], pooled[idx.size :]
    h, w = a.shape[1:]
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)  # damps the wrap-around edges
    fa = np.fft.rfft2((a - a.mean(axis=(1, 2), keepdims=True)) * win)
    fb = np.fft.rfft2((b - b.mean(axis=(1, 2), keepdims=True)) * win)
    cross = fb * np.conj(fa)
    corr = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=(h, w))  # (n, h, w)
    flat_idx = corr.reshape(idx.size, -1).argmax(axis=1)
    peak = corr.reshape(idx.size, -1).max(axis=1)
    dy, dx = np.unravel_index(flat_idx, (h, w))
    dy = np.where(dy > h // 2, dy - h, dy)  # unwrap to signed shifts: b(y, x) ~ a(y - dy, x - dx)
    dx = np.where(dx > w // 2, dx - w, dx)
    gains = np.zeros(idx.size)
    for i in range(idx.size):  # each pair is small (h*w ~ 3600); a loop of <= 24 is cheap
        gains[i] = _align_gain(a[i], b[i], int(dy[i]), int(dx[i]))
    shifted = (dx != 0) | (dy != 0)
    scroll = shifted & (gains > 0.3)
    out = dict(zero)
    out["phase_peak_mean"] = float(peak.mean())
    out["align_gain"] = float(np.median(gains))
    out["diff_spatial_corr"] = _diff_spatial_corr(a, b)
    if scroll.any():
        vec = np.stack([dy[scroll], dx[scroll]], axis=1).astype(np.float64)
        norm = np.linalg.norm(vec, axis=1)
        out["scroll_frac"] = float(scroll.mean())
        out["scroll_consistency"] = float(np.linalg.norm((vec / norm[:, None]).mean(axis=0)))
        out["scroll_speed"] = float(np.median(norm))
    return out


def _align_gain(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """1 - (|b - shift(a)| / |b - a|) on the overlap: how much of the change the shift explains."""
    h, w = a.shape
    if abs(dy) >= h // 2 or abs(dx) >= w // 2:
        return 0.0
    # overlap where b[y, x] pairs with a[y - dy, x - dx]
    bs = b[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    as_ = a[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    base = float(np.abs(b - a).mean())
    if base < 1e-6:
        return 0.0
    return max(0.0, 1.0 - float(np.abs(bs - as_).mean()) / base)
