"""The sample corpus's media makers: ffmpeg helpers and one maker per bad-example kind.

Split from :mod:`pipelines.sample` (which plans the corpus, renders the gameplay and writes the
labels). Each maker writes one :class:`~pipelines.sample.Item`'s file from numpy/PIL frames or
ffmpeg lavfi sources, deterministically (seeded frames, bit-exact single-threaded encodes).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.atomic import atomic_path, write_text

if TYPE_CHECKING:  # sample.py imports this module: the type only, to avoid an import cycle
    from pipelines.sample import Item

# Source videos as a small YouTube format would give them: 16:9, 15 FPS (one Procgen step a frame).
FPS = 15
W, H = 320, 180
# Wall-clock limit per ffmpeg call: generous for a loaded 2-core machine, but finite.
FFMPEG_TIMEOUT_S = 300.0


# ffmpeg helpers


def _ffmpeg(args: list[str], timeout_s: float = FFMPEG_TIMEOUT_S) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}): {proc.stderr.decode()[-2000:]}")


# Bit-exact H.264 in mp4, single-threaded so that two encoders share the 2 cores politely.
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-threads", "1",
        "-fflags", "+bitexact", "-movflags", "+faststart"]  # fmt: skip


def encode_frames(
    out: Path, frames: Iterable[np.ndarray], *, crf: int = 23, audio: str | None = None
) -> None:
    """Encode (H, W, 3) uint8 frames at FPS to an H.264 mp4 at ``out``, written atomically.

    ``audio``: an optional lavfi audio source (e.g. ``sine=f=1000``), cut to the video's length.
    """
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-"]  # fmt: skip
    if audio:
        cmd += ["-f", "lavfi", "-i", audio, "-shortest", "-c:a", "aac", "-b:a", "64k"]
    with atomic_path(out) as tmp, tempfile.TemporaryFile() as err:
        cmd += [*X264, "-crf", str(crf), "-f", "mp4", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None
        try:
            proc.stdin.write(np.ascontiguousarray(first).tobytes())
            for f in it:
                proc.stdin.write(np.ascontiguousarray(f).tobytes())
            proc.stdin.close()
            rc = proc.wait(timeout=FFMPEG_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg encode of {out.name} failed: {err.read().decode()[-2000:]}")


def encode_lavfi(out: Path, video: str, seconds: float, *, crf: int = 23,
                 audio: str | None = None, vf: str | None = None) -> None:  # fmt: skip
    """Encode a lavfi video source (plus an optional lavfi audio source) to ``out``."""
    args = ["-f", "lavfi", "-i", video]
    if audio:
        args += ["-f", "lavfi", "-i", audio, "-c:a", "aac", "-b:a", "64k"]
    if vf:
        args += ["-vf", vf]
    with atomic_path(out) as tmp:
        _ffmpeg([*args, "-t", f"{seconds:g}", "-r", str(FPS), *X264, "-crf", str(crf),
                 "-f", "mp4", str(tmp)])  # fmt: skip


def iter_frames(
    path: Path, *, vf: str | None = None, w: int = W, h: int = H
) -> Iterator[np.ndarray]:
    """Decode ``path`` to (h, w, 3) uint8 frames, streamed (``vf`` runs before the final scale)."""
    chain = f"{vf + ',' if vf else ''}scale={w}:{h}:flags=area"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
           "-vf", chain, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    n = w * h * 3
    try:
        while len(buf := proc.stdout.read(n)) == n:
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# bad-example makers: each writes ``out`` for one Item; ``src`` is its source gameplay file


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def make_menu(out: Path, it: Item, src: Path | None) -> None:
    """A game title menu: drifting background shapes, a highlight that moves every ~2 s."""
    rng = np.random.default_rng(it.params["seed"])
    palettes = [
        ((20, 24, 60), (90, 40, 120)),
        ((10, 50, 30), (30, 120, 90)),
        ((60, 20, 20), (160, 80, 30)),
    ]
    top, bottom = palettes[it.params["theme"] % 3]
    grad = np.linspace(np.array(top), np.array(bottom), H)[:, None, :].repeat(W, 1).astype(np.uint8)
    items = ["START GAME", "CONTINUE", "OPTIONS", "EXTRAS", "QUIT"]
    title = ["SUPER PIXEL QUEST", "JUMP KINGDOM", "CAVE RUNNER"][it.params["theme"] % 3]
    blobs = rng.uniform([0, 0, 6], [W, H, 18], size=(8, 3))
    soft = tuple(min(255, c + 35) for c in bottom)
    f_title, f_item = _font(20), _font(12)
    n = round(it.seconds * FPS)
    # The cursor wanders like a player browsing: a step up or down every 1.5-3 s.
    moves = np.cumsum(rng.integers(round(1.5 * FPS), 3 * FPS, size=n // FPS + 1))
    choice = [0]
    for _ in moves[1:]:  # a random walk that bounces off the first and last entries
        c = choice[-1] + int(rng.choice([-1, 1]))
        choice.append(c if 0 <= c < len(items) else choice[-1] - (c - choice[-1]))

    def frames() -> Iterator[np.ndarray]:
        for t in range(n):
            img = Image.fromarray(grad)
            d = ImageDraw.Draw(img)
            for bx, by, br in blobs:  # slow parallax drift: the "animated a little" part
                x = (bx + t * br / 30) % (W + 40) - 20
                d.ellipse([x - br, by - br, x + br, by + br], fill=soft)
            d.text((W // 2, 30), title, font=f_title, fill=(255, 220, 90), anchor="mm")
            sel = choice[int(np.searchsorted(moves, t))]
            for i, label in enumerate(items):
                y = 70 + 18 * i
                if i == sel:
                    d.rectangle([W // 2 - 60, y - 8, W // 2 + 60, y + 8], fill=(250, 250, 250))
                    d.text((W // 2 - 70, y), ">", font=f_item, fill=(255, 220, 90), anchor="mm")
                d.text((W // 2, y), label, font=f_item, anchor="mm",
                       fill=(20, 20, 40) if i == sel else (230, 230, 230))  # fmt: skip
            if (t // 8) % 2 == 0:
                d.text(
                    (W // 2, H - 10),
                    "PRESS START",
                    font=_font(9),
                    fill=(200, 200, 200),
                    anchor="mm",
                )
            yield np.asarray(img)

    encode_frames(out, frames())


def make_static(out: Path, it: Item, src: Path | None) -> None:
    """One gameplay frame held for the whole video; variants add a PAUSED banner or grain."""
    assert src is not None
    v = it.params["variant"]
    frame = next(iter_frames(src, vf=f"trim=start={6 + 5 * v}"))
    if v % 3 == 1:
        img = Image.fromarray(frame)
        d = ImageDraw.Draw(img)
        d.rectangle([0, H // 2 - 16, W, H // 2 + 16], fill=(0, 0, 0))
        d.text((W // 2, H // 2), "PAUSED", font=_font(20), fill=(255, 255, 255), anchor="mm")
        frame = np.asarray(img)
    rng = np.random.default_rng(it.params["seed"])
    n = round(it.seconds * FPS)
    # Variant 2: a capture card's faint grain (30 frames, cycled): still nothing moves.
    grains = [frame] if v % 3 != 2 else [
        np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8) for _ in range(30)
    ]  # fmt: skip

    def frames() -> Iterator[np.ndarray]:
        for t in range(n):
            yield grains[t % len(grains)]

    encode_frames(out, frames())


def make_slideshow(out: Path, it: Item, src: Path | None) -> None:
    """Gameplay stills from the source, each held ~4 s; odd variants cross-fade for 0.5 s."""
    assert src is not None
    stills = list(iter_frames(src, vf="fps=1/3.5"))
    hold, fade = 4 * FPS, (FPS // 2 if it.params["variant"] % 2 else 0)
    n = round(it.seconds * FPS)

    def frames() -> Iterator[np.ndarray]:
        for t in range(n):
            k, r = divmod(t, hold)
            a = stills[k % len(stills)]
            if fade and r >= hold - fade:
                w = (r - (hold - fade) + 1) / fade
                b = stills[(k + 1) % len(stills)]
                yield ((1 - w) * a + w * b).astype(np.uint8)
            else:
                yield a

    encode_frames(out, frames())


def make_noise(out: Path, it: Item, src: Path | None) -> None:
    """Dead-channel noise: grey static, colour noise, or static with a rolling bright band."""
    rng = np.random.default_rng(it.params["seed"])
    v = it.params["variant"] % 3
    n = round(it.seconds * FPS)
    h, w = H // 2, W // 2  # 2x2 grains: real static is soft, and full-res noise costs x264 ~3x

    def frames() -> Iterator[np.ndarray]:
        for t in range(n):
            if v == 1:
                g = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                g = np.repeat(rng.integers(0, 256, (h, w, 1), dtype=np.uint8), 3, axis=2)
            if v == 2:  # a bright band rolling down the screen, as on an untuned analogue set
                band = (np.arange(h)[:, None, None] - 2 * t) % h < 10
                g = np.where(band, np.minimum(g.astype(np.int16) + 80, 255), g).astype(np.uint8)
            yield g.repeat(2, axis=0).repeat(2, axis=1)

    encode_frames(out, frames(), crf=32)  # noise is incompressible: a high crf keeps files small


def _scenery_frames(it: Item) -> Iterator[np.ndarray]:
    """A smooth panning landscape (sky, hills, clouds): moving, colourful, and not a game."""
    rng = np.random.default_rng(it.params["seed"])
    x = np.arange(W)[None, :]
    y = np.arange(H)[:, None]
    sky = np.linspace([90, 150, 230], [200, 225, 250], H)[:, None, :].repeat(W, 1)
    ph = rng.uniform(0, 6.28, 3)
    for t in range(round(it.seconds * FPS)):
        img = sky.copy()
        for layer, (col, amp, base, speed) in enumerate(
            [((120, 160, 120), 18, 100, 0.6), ((60, 120, 60), 14, 130, 1.5)]
        ):
            hill = base + amp * np.sin((x + speed * t) / 37.0 + ph[layer])
            img[y > hill] = col
        cloud = np.exp(
            -(((x - (t * 0.8 + 40) % (W + 80) + 40) / 30.0) ** 2 + ((y - 35) / 9.0) ** 2)
        )
        img = img * (1 - cloud[..., None]) + 255 * cloud[..., None]
        yield img.astype(np.uint8)


def make_non_game(out: Path, it: Item, src: Path | None) -> None:
    """Non-game footage: ffmpeg's life, mandelbrot zoom, cellular automaton, or scenery."""
    v = it.params["variant"] % 4
    s = it.params["seed"]
    if v == 3:
        encode_frames(out, _scenery_frames(it))
        return
    video = [
        f"life=s={W}x{H}:r={FPS}:seed={s}:ratio=0.2:mold=8:life_color=#4ce04c:death_color=#802020",
        f"mandelbrot=s={W}x{H}:r={FPS}:maxiter=256:end_scale=0.01",
        f"cellauto=s={W}x{H}:r={FPS}:rule={(30, 110, 90)[s % 3]}:seed={s}:scroll=1",
    ][v]
    encode_lavfi(out, video, it.seconds, crf=28)


def make_black(out: Path, it: Item, src: Path | None) -> None:
    """Fade to black: gameplay for a few seconds, fading out, then black to the end."""
    assert src is not None
    v = it.params["variant"] % 3
    if v == 2:  # pure black with a faint sensor noise floor, e.g. a capture of a dark screen
        encode_lavfi(out, f"color=black:s={W}x{H}:r={FPS}", it.seconds, vf="noise=alls=4:allf=t")
        return
    st = 2 + 2 * v
    # tpad clones the last (black) frame, so the video is black to its full length even if the
    # source is shorter than it.
    with atomic_path(out) as tmp:
        _ffmpeg(["-i", str(src), "-vf", f"fade=t=out:st={st}:d=2,tpad=stop=-1:stop_mode=clone",
                 "-t", f"{it.seconds:g}", "-an", *X264, "-crf", "23", "-f", "mp4", str(tmp)])  # fmt: skip


def make_test_pattern(out: Path, it: Item, src: Path | None) -> None:
    """Colour bars or a test card, with a 1 kHz tone as broadcasters use."""
    v = it.params["variant"] % 3
    video = [f"smptebars=s={W}x{H}:r={FPS}", f"testsrc2=s={W}x{H}:r={FPS}",
             f"pal75bars=s={W}x{H}:r={FPS}"][v]  # fmt: skip
    encode_lavfi(out, video, it.seconds, audio=f"sine=f=1000:d={it.seconds:g}")


def make_facecam(out: Path, it: Item, src: Path | None) -> None:
    """Gameplay with a big webcam-like panel: a head that sways, blinks and talks."""
    assert src is not None
    rng = np.random.default_rng(it.params["seed"])
    v = it.params["variant"] % 3
    pw, ph = (int(W * 0.5), int(H * 0.72)) if v != 2 else (int(W * 0.62), H)  # panel size
    px = W - pw if v != 1 else 0  # right or left corner, at the bottom
    py = H - ph
    wall = np.linspace(rng.uniform(40, 120, 3), rng.uniform(100, 200, 3), ph)
    room = wall[:, None, :].repeat(pw, 1).astype(np.uint8)
    skin = tuple(int(c) for c in rng.uniform([170, 120, 90], [240, 190, 160]))
    hair = tuple(int(c) for c in rng.uniform(10, 90, 3))
    shirt = tuple(int(c) for c in rng.uniform(30, 220, 3))
    # Speech: a syllable envelope (mouth opening) switching at a few Hz, with pauses.
    n = round(it.seconds * FPS)
    talk = (rng.random(n // 3 + 1) < 0.65).repeat(3)[:n] * rng.uniform(0.3, 1.0, n)

    def frames() -> Iterator[np.ndarray]:
        for t, frame in enumerate(iter_frames(src)):
            if t >= n:
                break
            panel = Image.fromarray(room)
            d = ImageDraw.Draw(panel)
            cx = pw / 2 + 6 * np.sin(t / 11.0)  # head sway, px
            cy = ph * 0.45 + 2 * np.sin(t / 7.0)
            r = ph * 0.26
            d.ellipse([cx - 2.2 * r, ph * 0.8, cx + 2.2 * r, ph * 1.6], fill=shirt)  # shoulders
            d.ellipse([cx - r * 1.05, cy - r * 1.2, cx + r * 1.05, cy + r * 0.6], fill=hair)
            d.ellipse([cx - r * 0.85, cy - r, cx + r * 0.85, cy + r], fill=skin)
            eye_h = 1 if t % 50 < 3 else r * 0.12  # a blink every ~3 s
            for ex in (-0.35, 0.35):
                d.ellipse([cx + ex * r - r * 0.12, cy - r * 0.2 - eye_h,
                           cx + ex * r + r * 0.12, cy - r * 0.2 + eye_h], fill=(30, 30, 30))  # fmt: skip
            m = r * 0.05 + r * 0.3 * talk[t]
            d.ellipse([cx - r * 0.3, cy + r * 0.45 - m / 2, cx + r * 0.3, cy + r * 0.45 + m / 2],
                      fill=(120, 30, 40))  # fmt: skip
            out_f = frame.copy()
            out_f[py : py + ph, px : px + pw] = np.asarray(panel)
            out_f[py : py + 2, px : px + pw] = 255  # the panel's border, as streaming overlays do
            yield out_f

    encode_frames(out, frames())


def make_corrupt(out: Path, it: Item, src: Path | None) -> None:
    """A transfer that died: variant 0 loses the index (moov at the end, cut off: undecodable);
    variant 1 keeps the index up front (faststart) but loses the second half of the media."""
    assert src is not None
    v = it.params["variant"] % 2
    with tempfile.TemporaryDirectory() as d:
        full = Path(d) / "full.mp4"
        flags = ["-movflags", "+faststart"] if v else []
        _ffmpeg(
            ["-i", str(src), "-c", "copy", "-fflags", "+bitexact", *flags, "-f", "mp4", str(full)]
        )
        data = full.read_bytes()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data[: int(len(data) * (0.6 if v == 0 else 0.5))])


_NOT_VIDEO = [
    "<!DOCTYPE html>\n<html><head><title>Video unavailable</title></head>\n<body><h1>This video is"
    " no longer available</h1><p>The uploader has removed it.</p></body></html>\n",
    '{"error": {"code": 403, "message": "Request had insufficient authentication scopes."}}\n',
]


def make_not_video(out: Path, it: Item, src: Path | None) -> None:
    """What a server returns instead of a video (an error page, a JSON error) saved as .mp4."""
    write_text(out, _NOT_VIDEO[it.params["variant"] % 2])


def make_audio_only(out: Path, it: Item, src: Path | None) -> None:
    """An audio-only download: a tone in .m4a, or a chord in an .mp4 without a video stream."""
    expr = "sine=f=440" if it.params["variant"] % 2 == 0 else "sine=f=330:beep_factor=4"
    with atomic_path(out) as tmp:
        _ffmpeg(["-f", "lavfi", "-i", expr, "-t", f"{it.seconds:g}", "-c:a", "aac", "-b:a", "64k",
                 "-fflags", "+bitexact", "-f", "mp4", str(tmp)])  # fmt: skip


def make_duplicate(out: Path, it: Item, src: Path | None) -> None:
    """The source gameplay re-encoded at another resolution and bitrate, under another name."""
    assert src is not None
    w, h, crf = [(640, 360, 30), (256, 144, 28)][it.params["variant"] % 2]
    with atomic_path(out) as tmp:
        _ffmpeg(["-i", str(src), "-vf", f"scale={w}:{h}", *X264, "-crf", str(crf), "-f", "mp4",
                 str(tmp)])  # fmt: skip


MAKERS: dict[str, Callable[[Path, Item, Path | None], None]] = {
    "menu": make_menu, "static": make_static, "slideshow": make_slideshow, "noise": make_noise,
    "non_game": make_non_game, "black": make_black, "test_pattern": make_test_pattern,
    "facecam": make_facecam, "corrupt": make_corrupt, "not_video": make_not_video,
    "audio_only": make_audio_only, "duplicate": make_duplicate,
}  # fmt: skip
