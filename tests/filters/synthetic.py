"""Synthetic 160x90 clips of every kind a crawl returns, for the feature and classifier tests.

`make_clip(kind, video_seed, clip_index)` returns uint8 frames (T, 90, 160, 3). Parameters that
belong to a "video" (palette, level layout, speed, facecam placement) come from `video_seed`; the
window within it from `clip_index`, so clips of one seed are related like clips of one video and the
tests can hold whole seeds out.
"""

from __future__ import annotations

import numpy as np

H, W, T = 90, 160, 160

GOOD_KINDS = ("gameplay",)
BAD_KINDS = ("static", "menu", "slideshow", "noise", "black", "bars", "facecam", "camera")
KINDS = GOOD_KINDS + BAD_KINDS


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3), dtype=np.uint8)


def _level(rng: np.random.Generator, width: int) -> np.ndarray:
    """A tiled side-scrolling level (H, width, 3): sky, hills, brick ground, outlined platforms."""
    pal = _palette(rng, 6)
    img = np.empty((H, width, 3), np.uint8)
    img[:] = pal[0]  # sky
    ground = H - 16 + int(rng.integers(-4, 4))
    xx = np.arange(width)
    hills = (H // 2 + 12 * np.sin(xx / rng.uniform(9, 20))).astype(int)  # far background layer
    img[np.arange(H)[:, None] > hills[None, :]] = pal[5]
    img[ground:] = pal[1]
    img[ground::4, :] = pal[2]  # brick courses in the ground
    img[ground:, ::8] = pal[2]
    tile = 8
    for x0 in range(0, width - tile, tile * int(rng.integers(1, 3))):
        if rng.random() < 0.7:
            y0 = int(rng.integers(20, ground - tile))
            n = int(rng.integers(1, 5))
            x1 = min(width, x0 + n * tile)
            img[y0 : y0 + tile, x0:x1] = pal[3]
            img[y0 : y0 + tile, x0:x1:tile] = pal[4]  # tile outlines
            img[y0, x0:x1] = pal[4]
    for x0 in range(0, width, int(rng.integers(30, 60))):
        y0 = int(rng.integers(5, 25))
        img[y0 : y0 + 6, x0 : x0 + 14] = 255 - pal[0]  # clouds
    return img


def _draw_sprite(frames: np.ndarray, ys: np.ndarray, xs: np.ndarray, colour: np.ndarray) -> None:
    for t in range(frames.shape[0]):
        y, x = int(ys[t]), int(xs[t])
        frames[t, y : y + 12, x : x + 8] = colour
        frames[t, y + 2 : y + 4, x + 2 : x + 6] = 255 - colour  # eyes: a second colour


def _hud(frames: np.ndarray, rng: np.random.Generator) -> None:
    """A small static score bar at the top, as most platformers have."""
    glyphs = rng.integers(0, 2, size=(5, 40), dtype=np.uint8) * 255
    frames[:, 2:7, 4:44] = glyphs[None, :, :, None]


def _gameplay(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    # a quarter of the videos are single-screen games (no scrolling, only sprites move): motion
    # features alone must not be what marks gameplay
    single_screen = vr.random() < 0.25
    speed = 0.0 if single_screen else vr.uniform(2.0, 7.0)  # px per frame at 10 FPS
    level = _level(vr, W + int(speed * T) + 8)
    start = int(cr.integers(0, 8))
    # mostly forward scrolling, with a short stop now and then (the player halts)
    steps = np.where(cr.random(T) < 0.15, 0.0, speed)
    offs = (start + np.cumsum(steps) - steps[0]).astype(int)
    frames = np.stack([level[:, o : o + W] for o in offs])  # (T, H, W, 3)
    xs = 50 + 20 * np.sin(np.arange(T) / 9.0 + cr.random() * 6)
    ys = 55 - np.abs(25 * np.sin(np.arange(T) / 5.0))  # jumping
    _draw_sprite(frames, ys, xs, _palette(vr, 1)[0])
    if single_screen:  # enemies patrolling
        for e in range(3):
            ex = 10 + (np.arange(T) * (1 + e) + 40 * e) % 140
            _draw_sprite(frames, np.full(T, 20 + 20 * e), ex, _palette(vr, 1)[0])
    _hud(frames, vr)
    return frames


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth natural-like colour image (h, w, 3) float32 0..255: a few random sinusoids."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(60, 190, size=3).astype(np.float32)
    for _ in range(5):
        fy, fx = rng.uniform(-0.08, 0.08, size=2).astype(np.float32)
        ph = np.float32(rng.uniform(0, 6.3))
        amp = rng.uniform(10, 35, size=3).astype(np.float32)
        img += np.sin(fy * yy + fx * xx + ph)[..., None] * amp
    return img


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-3, 4, size=shape, dtype=np.int8)


def _camera(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    """Handheld-like footage: a smooth scene panned with shake, plus sensor noise."""
    pad = 120
    scene = np.clip(_smooth_image(vr, H + pad, W + pad), 3, 252).astype(np.uint8)
    pan = cr.uniform(0.3, 1.2, size=2) * cr.choice([-1, 1], size=2)  # px per frame
    shake = cr.normal(0, 1.0, size=(T, 2)).cumsum(axis=0) * 0.3
    oy = np.clip(pad // 2 + pan[0] * np.arange(T) + shake[:, 0], 0, pad - 1).astype(int)
    ox = np.clip(pad // 2 + pan[1] * np.arange(T) + shake[:, 1], 0, pad - 1).astype(int)
    frames = np.stack([scene[y : y + H, x : x + W] for y, x in zip(oy, ox, strict=True)])
    # clipped to 3..252 above, so +-3 noise cannot wrap around in uint8
    return (frames + _sensor_noise(cr, frames.shape)).astype(np.uint8)


def _static(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    frame = _level(vr, W)
    return np.ascontiguousarray(np.broadcast_to(frame, (T, H, W, 3)))


def _menu(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    """Title/options menu: flat background, rows of glyphs, a highlight bar that moves."""
    pal = _palette(vr, 3)
    frame = np.empty((H, W, 3), np.uint8)
    frame[:] = pal[0]
    animated = vr.random() < 0.5  # half the menus have a scrolling striped backdrop
    n_items = int(vr.integers(3, 6))
    item_y = [15 + 14 * i for i in range(n_items)]
    for y in item_y:
        glyphs = vr.integers(0, 2, size=(7, 70)).astype(bool)
        frame[y : y + 7, 45:115][glyphs] = pal[1]
    frames = np.ascontiguousarray(np.broadcast_to(frame, (T, H, W, 3)))
    if animated:
        stripe = ((np.arange(H)[:, None] + np.arange(W)[None, :]) // 12) % 2 == 1  # diagonal
        back = (pal[0].astype(np.int16) * 3 // 4).astype(np.uint8)
        text = np.broadcast_to(frame != pal[0], frame.shape).any(axis=2)
        for t in range(T):
            mask = np.roll(stripe, t, axis=1) & ~text  # stripes slide 1 px per frame behind text
            frames[t][mask] = back
    sel = np.cumsum(cr.random(T) < 0.08) % n_items  # the user moves the cursor now and then
    for t in range(T):
        y = item_y[sel[t]]
        frames[t, y - 2 : y + 9, 38:42] = pal[2]  # cursor
        if (t // 5) % 2:  # blinking arrow
            frames[t, y - 2 : y + 9, 120:124] = pal[2]
    return frames


def _slideshow(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    frames = np.empty((T, H, W, 3), np.uint8)
    t = 0
    while t < T:
        hold = int(cr.integers(15, 40))
        img = _smooth_image(cr, H, W)
        if cr.random() < 0.5:  # a text card: flat background with a line of glyphs
            img[:] = vr.uniform(0, 255, size=3)
            glyphs = cr.integers(0, 2, size=(8, 100)).astype(bool)
            img[40:48, 30:130][glyphs] = 255 - img[0, 0]
        frames[t : t + hold] = np.clip(img, 0, 255).astype(np.uint8)
        t += hold
    return frames


def _noise(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    return cr.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def _black(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    """Either a fade to black from a game frame, or a near-black screen with faint codec noise."""
    if vr.random() < 0.5:
        frame = _level(vr, W).astype(np.float32)
        gain = np.clip(1.0 - np.arange(T) / cr.uniform(10, 40), 0, 1).astype(np.float32)
        return (frame[None] * gain[:, None, None, None]).astype(np.uint8)
    return cr.integers(0, 3, size=(T, H, W, 3), dtype=np.uint8)


def _bars(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    """SMPTE-like colour bars with a bottom strip; static."""
    top = np.array(
        [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0],
         [192, 0, 192], [192, 0, 0], [0, 0, 192]], np.uint8,
    )  # fmt: skip
    frame = np.empty((H, W, 3), np.uint8)
    idx = np.arange(W) * 7 // W
    frame[:60] = top[idx][None]
    frame[60:68] = top[::-1][idx][None]
    frame[68:] = np.array([16, 16, 16], np.uint8)
    frame[68:, : W // 4] = [0, 33, 76]
    frame[68:, W // 4 : W // 2] = 235
    return np.ascontiguousarray(np.broadcast_to(frame, (T, H, W, 3)))


def _facecam(vr: np.random.Generator, cr: np.random.Generator) -> np.ndarray:
    """Gameplay with a big facecam (~40% of the frame): a moving face-like blob over a room."""
    frames = _gameplay(vr, cr)
    fh, fw = 60, 96
    y0 = H - fh if vr.random() < 0.5 else 0
    x0 = W - fw if vr.random() < 0.5 else 0
    room = _smooth_image(vr, fh, fw)
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    skin = np.array([210, 160, 130], np.float32)
    cy = (fh / 2 + 4 * np.sin(np.arange(T) / 7.0)).astype(np.float32)  # head bobs
    cx = (fw / 2 + 6 * np.sin(np.arange(T) / 11.0 + 1)).astype(np.float32)
    r2 = ((yy[None] - cy[:, None, None]) / 22) ** 2 + ((xx[None] - cx[:, None, None]) / 16) ** 2
    face = np.clip(3.6 - 3 * r2, 0, 1)[..., None]  # 1 inside the head, soft edge
    tone = (0.7 + 0.3 * np.clip(1 - r2, 0, 1))[..., None]  # smooth shading towards the rim
    cam = room[None] * (1 - face) + skin * face * tone
    cam = np.clip(cam + _sensor_noise(cr, cam.shape), 0, 255).astype(np.uint8)  # noise: int8
    frames[:, y0 : y0 + fh, x0 : x0 + fw] = cam
    return frames


_MAKERS = {
    "gameplay": _gameplay, "static": _static, "menu": _menu, "slideshow": _slideshow,
    "noise": _noise, "black": _black, "bars": _bars, "facecam": _facecam, "camera": _camera,
}  # fmt: skip


def make_clip(kind: str, video_seed: int, clip_index: int = 0) -> np.ndarray:
    """One synthetic clip: uint8 (160, 90, 160, 3). Deterministic in (kind, video_seed, clip_index)."""
    k = KINDS.index(kind)  # ValueError on an unknown kind
    vr = np.random.default_rng([k, video_seed])
    cr = np.random.default_rng([k, video_seed, clip_index + 1])
    frames = _MAKERS[kind](vr, cr)
    assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
    return frames
