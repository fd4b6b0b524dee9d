"""Play a trained world model: a WorldModel session and a small local web server around it.

WorldModel (no web): a prompt frame -> tokens; each `step(action)` decodes one new frame with MaskGIT
(genie.maskgit.decode_frame; paper: 25 passes at temperature 2) from at most `max_frames - 1` past
frames (16 frames of memory with the new one, as in training), then the tokenizer decodes the last
`max_frames` token frames (it is causal, so the new frame's pixels depend on past tokens only).
The prompt shown is the tokenizer's reconstruction: what the dynamics model actually sees.

Server (`serve`): standard-library ThreadingHTTPServer, 127.0.0.1 by default, pages from
genie/play_static and a JSON API (actions are 0-based in the API; the page shows them 1-based):
  GET  /api/info                     model, sampling settings, n_actions, queue policy
  GET  /api/prompts                  [{id, label}] first frames of --data clips + uploads
  GET  /api/prompts/{id}.png         a prompt frame
  POST /api/prompts                  body = PNG/JPEG bytes -> {id}
  POST /api/reset    {"prompt": id}  start a session from a prompt (waits for the current frame)
  POST /api/step     {"action": a, "wait": false}   queue one step
  GET  /api/state?since=i            n_frames, actions, fps, pending, hashes of frames >= i
  GET  /api/frame/{epoch}/{i}.png    frame i of session `epoch` (the model's size)
  GET  /api/export?fmt=gif|mp4&scale=4   the session as a video file (attachment)
  GET  /api/controls                 per-action LAM statistics and example GIFs (computed once)
Concurrency: one worker thread owns the models. Steps QUEUE (FIFO) up to MAX_PENDING; a step
beyond that gets 429 {"error": "busy"}. A reset drops queued steps and runs after the frame being
generated. Reads (state, frames, export) never wait for generation.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import queue
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genie import checkpoint as ckpt
from genie import data as D
from genie.dynamics import DynamicsModel
from genie.lam import LatentActionModel
from genie.maskgit import decode_frame
from genie.presets import PRESETS, DynamicsConfig, GenieConfig, LAMConfig, TokenizerConfig
from genie.tokenizer import VideoTokenizer

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("play_static")
MAX_PENDING = 8  # queued steps per session before "busy"
MAX_UPLOAD = 16 << 20  # bytes of an uploaded prompt image
PLAYBACK_FPS = 10.0  # the clips' frame rate (DESIGN.md): export speed


# ------------------------------------------------------------------------------------------------
# Loading a run


def run_config(run_dir: str | Path) -> tuple[GenieConfig, dict[str, Any]]:
    """The GenieConfig of a run (from the newest dynamics checkpoint's sidecar) and that sidecar.

    Sidecars written by genie.stages hold `genie_config` (asdict of GenieConfig); a sidecar with
    only `preset` gets that preset's defaults.
    """
    pt = ckpt.latest_checkpoint(Path(run_dir) / "dynamics")
    if pt is None:
        raise FileNotFoundError(f"no complete checkpoint in {Path(run_dir) / 'dynamics'}")
    meta = json.loads(ckpt.sidecar_path(pt).read_text())
    if "genie_config" in meta:
        g = meta["genie_config"]
        cfg = GenieConfig(tokenizer=TokenizerConfig(**g["tokenizer"]), lam=LAMConfig(**g["lam"]),
                          dynamics=DynamicsConfig(**g["dynamics"]))  # fmt: skip
    elif meta.get("preset") in PRESETS:
        cfg = PRESETS[meta["preset"]]()
    else:
        raise ValueError(f"{pt}: sidecar holds neither genie_config nor a known preset")
    return cfg, meta


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run(
    run_dir: str | Path, device: torch.device | str | None = None, with_lam: bool = True
) -> dict[str, Any]:
    """{"config", "meta", "tokenizer", "dynamics", "lam" (None unless with_lam)}, models in eval mode."""
    dev = torch.device(device) if device is not None else default_device()
    cfg, meta = run_config(run_dir)
    out: dict[str, Any] = {"config": cfg, "meta": meta, "lam": None}
    build = {"tokenizer": lambda: VideoTokenizer(config=cfg.tokenizer),
             "dynamics": lambda: DynamicsModel(config=cfg.dynamics),
             "lam": lambda: LatentActionModel(config=cfg.lam)}  # fmt: skip
    for name in ("tokenizer", "dynamics", "lam") if with_lam else ("tokenizer", "dynamics"):
        model = build[name]()
        side = ckpt.load_model_weights(model, Path(run_dir) / name, map_location=dev)
        out[name] = model.to(dev).eval()
        out[f"{name}_meta"] = side
    return out


# ------------------------------------------------------------------------------------------------
# Frames


def fit_frame(frame_HWC: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, height, width) in [0, 1].

    Another aspect ratio is padded with black around the picture first (as the clip stage does);
    the resize is an area mean, as in the training loader (genie.data).
    """
    if frame_HWC.ndim != 3 or frame_HWC.shape[2] != 3 or frame_HWC.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 (H, W, 3) frame, got {frame_HWC.dtype} {frame_HWC.shape}"
        )
    h, w = frame_HWC.shape[:2]
    # pad to the target aspect (within one pixel)
    ph, pw = max(h, round(w * height / width)), max(w, round(h * width / height))
    if (ph, pw) != (h, w):
        canvas = np.zeros((ph, pw, 3), np.uint8)
        y, x = (ph - h) // 2, (pw - w) // 2
        canvas[y : y + h, x : x + w] = frame_HWC
        frame_HWC = canvas
    x_CHW = torch.from_numpy(np.ascontiguousarray(frame_HWC)).permute(2, 0, 1).float() / 255.0
    if tuple(x_CHW.shape[-2:]) != (height, width):
        x_CHW = F.interpolate(x_CHW[None], size=(height, width), mode="area")[0]
    return x_CHW


def to_uint8(x_CHW: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return x_CHW.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def png_bytes(frame_HWC: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame_HWC).save(buf, format="PNG")
    return buf.getvalue()


def _scaled(frames: Sequence[np.ndarray], scale: int) -> list[np.ndarray]:
    return [f.repeat(scale, 0).repeat(scale, 1) if scale > 1 else f for f in frames]


def encode_video(
    frames: Sequence[np.ndarray], fmt: str = "gif", fps: float = PLAYBACK_FPS, scale: int = 4
) -> bytes:
    """uint8 (H, W, 3) frames -> GIF (Pillow) or MP4 (ffmpeg, H.264 yuv420p) bytes.

    scale: integer nearest-neighbour upscaling (the models' frames are 32-160 px wide). MP4 sizes
    are padded to even numbers (yuv420p needs them).
    """
    if len(frames) == 0:
        raise ValueError("no frames to export")
    if scale < 1:
        raise ValueError("scale must be >= 1")
    big = _scaled(frames, scale)
    if fmt == "gif":
        imgs = [Image.fromarray(f) for f in big]
        buf = io.BytesIO()
        imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=round(1000 / fps), loop=0)  # fmt: skip
        return buf.getvalue()
    if fmt != "mp4":
        raise ValueError(f"fmt must be 'gif' or 'mp4', got {fmt!r}")
    h, w = big[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="genie-export-") as tmp:
        out = Path(tmp) / "out.mp4"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
               "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in big), capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
        return out.read_bytes()


# ------------------------------------------------------------------------------------------------
# The session


class WorldModel:
    """One play session: a prompt frame, then one generated frame per latent action.

    Constructor: WorldModel(tokenizer=..., dynamics=..., steps=25, temperature=2.0, seed=0), or
    WorldModel.from_run(run_dir). Not thread-safe for writes: one thread calls reset/step; other
    threads may call snapshot() and the read-only properties.
    """

    def __init__(
        self, *, tokenizer: VideoTokenizer, dynamics: DynamicsModel, steps: int = 25,
        temperature: float = 2.0, seed: int = 0,
    ) -> None:  # fmt: skip
        if steps < 1 or temperature < 0:
            raise ValueError("need steps >= 1 and temperature >= 0")
        self.tokenizer, self.dynamics = tokenizer.eval(), dynamics.eval()
        self.steps, self.temperature, self.seed = steps, temperature, seed
        self.device = next(dynamics.parameters()).device
        self.height, self.width = tokenizer.config.height, tokenizer.config.width
        self.n_actions = dynamics.config.n_actions
        self.max_frames = dynamics.config.max_frames  # context, new frame included (paper: 16)
        self._decode_frames = tokenizer.config.max_frames
        self._tokens: deque[torch.Tensor] = deque(maxlen=max(self.max_frames, self._decode_frames))
        self._frames: list[np.ndarray] = []
        self._actions: list[int] = []
        self._seconds: list[float] = []  # wall time of each step
        self._lock = threading.Lock()
        self._rng: torch.Generator | None = None

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, device: torch.device | str | None = None, **kw: Any
    ) -> WorldModel:
        m = load_run(run_dir, device, with_lam=False)
        return cls(tokenizer=m["tokenizer"], dynamics=m["dynamics"], **kw)

    # -- reads (any thread) ----------------------------------------------------------------------
    @property
    def frames(self) -> list[np.ndarray]:
        return self.snapshot()[0]

    @property
    def actions(self) -> list[int]:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[list[np.ndarray], list[int]]:
        """Consistent copies: (frames uint8 (H,W,3), actions); len(actions) == len(frames) - 1."""
        with self._lock:
            return list(self._frames), list(self._actions)

    def fps(self, last: int = 8) -> float:
        """Generated frames per second over the last `last` steps (0.0 before the first)."""
        s = self._seconds[-last:]
        return len(s) / sum(s) if s and sum(s) > 0 else 0.0

    # -- session ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, prompt_HWC: np.ndarray) -> np.ndarray:
        """Start from a prompt frame (uint8 (H, W, 3), any size); returns its reconstruction."""
        x = fit_frame(prompt_HWC, self.height, self.width).to(self.device)
        tokens_BTHW = self.tokenizer.encode(x[None, None])
        frame = to_uint8(self.tokenizer.decode(tokens_BTHW)[0, 0])
        self._rng = torch.Generator(device=self.device).manual_seed(self.seed)
        with self._lock:
            self._tokens.clear()
            self._tokens.append(tokens_BTHW[0, 0])
            self._frames, self._actions, self._seconds = [frame], [], []
        return frame

    @torch.no_grad()
    def step(self, action: int) -> np.ndarray:
        """Generate the frame that latent action `action` (0..n_actions-1) leads to."""
        if not self._frames:
            raise RuntimeError("call reset(prompt) first")
        if not 0 <= int(action) < self.n_actions:
            raise ValueError(f"action must be in [0, {self.n_actions}), got {action}")
        t0 = time.perf_counter()
        tokens = list(self._tokens)
        n_ctx = min(len(tokens), self.max_frames - 1)
        ctx_BTHW = torch.stack(tokens[-n_ctx:])[None]
        # actions_BT[:, i] leads from context frame i to the next; the last one to the new frame
        past = self._actions[len(self._actions) - (n_ctx - 1) :] if n_ctx > 1 else []
        actions_BT = torch.tensor([[*past, int(action)]], dtype=torch.long, device=self.device)
        new_BHW = decode_frame(self.dynamics.logits, ctx_BTHW, actions_BT, steps=self.steps,
                               temperature=self.temperature, rng=self._rng)  # fmt: skip
        window = [*tokens, new_BHW[0]][-self._decode_frames :]
        frame = to_uint8(self.tokenizer.decode(torch.stack(window)[None])[0, -1])
        with self._lock:
            self._tokens.append(new_BHW[0])
            self._actions.append(int(action))
            self._frames.append(frame)
            self._seconds.append(time.perf_counter() - t0)
        return frame

    def export(
        self, path: str | Path, fmt: str | None = None, *, scale: int = 4,
        fps: float = PLAYBACK_FPS,
    ) -> Path:  # fmt: skip
        """Write the session's frames as a GIF or MP4 (fmt from the suffix when None)."""
        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".").lower()
        path.write_bytes(encode_video(self.frames, fmt, fps=fps, scale=scale))
        return path


# ------------------------------------------------------------------------------------------------
# Prompts and the controls page


@dataclass
class Prompt:
    id: str  # URL-safe
    label: str  # clip_id or upload name
    frame: np.ndarray  # uint8 (H, W, 3) at its stored size


def _clips(data: str | Path, limit: int, skip: int = 0) -> list[tuple[str, bytes]]:
    """(clip_id, mp4 bytes) of clips skip..skip+limit-1 of a dataset, in shard order."""
    shards, _ = D.resolve_shards(data)
    out = []
    for i, s in enumerate(D.iter_samples(shards)):
        if i >= skip + limit:
            break
        if i >= skip and "mp4" in s:
            out.append((str(s["__key__"]), s["mp4"]))
    return out


def dataset_prompts(data: str | Path, limit: int = 24) -> list[Prompt]:
    """The first frame of each of the first `limit` clips of a build-dataset folder."""
    out = []
    for i, (key, mp4) in enumerate(_clips(data, limit)):
        try:
            out.append(Prompt(f"c{i}", key, D.decode_mp4(mp4, count=1)[0]))
        except Exception as e:  # a bad clip is left out of the picker, not a crash
            log.warning("prompt %s: %s", key, e)
    return out


def scene_shift(x_THW: np.ndarray) -> np.ndarray:
    """Global content shift of each frame relative to the previous one, by phase correlation.

    Args:
        x_THW: grey frames (T, H, W), float.
    Returns:
        (T-1, 2) float: (dy, dx) in whole pixels; dx > 0 = the picture moved right (in a
        side-scroller, the camera panned left). Black letterbox bars pull it towards 0.
    """
    _, H, W = x_THW.shape
    win = np.outer(np.hanning(H), np.hanning(W))  # damp the wrap-around edges
    F_T = np.fft.fft2((x_THW - x_THW.mean(axis=(1, 2), keepdims=True)) * win)
    R_T = F_T[1:] * np.conj(F_T[:-1])
    r_T = np.fft.ifft2(R_T / (np.abs(R_T) + 1e-9)).real.reshape(len(R_T), -1)
    dy, dx = np.divmod(r_T.argmax(axis=1), W)
    return np.stack([np.where(dy > H // 2, dy - H, dy), np.where(dx > W // 2, dx - W, dx)], 1)


def _gif_b64(frames: Sequence[np.ndarray], scale: int = 3, ms: int = 250) -> str:
    return base64.b64encode(encode_video(frames, "gif", fps=1000 / ms, scale=scale)).decode()


@torch.no_grad()
def action_controls(
    lam: LatentActionModel, data: str | Path, *, n_clips: int = 8, skip: int = 0,
    per_action: int = 3, max_len: int = 4,
) -> dict[str, Any]:  # fmt: skip
    """What each latent action tends to do: LAM-labelled transitions over clips of `data`.

    Per action: count and frequency of transitions, mean absolute pixel change, mean scene shift
    (dy, dx) in pixels (see scene_shift), and up to
    `per_action` example GIFs (the longest runs of that action, up to `max_len` transitions, at most
    one per clip). Clips `skip..skip+n_clips-1` in shard order are used.
    """
    c = lam.config
    dev = next(lam.parameters()).device
    counts, change = np.zeros(c.n_codes, np.int64), np.zeros(c.n_codes)
    shift = np.zeros((c.n_codes, 2))
    runs: list[list[tuple[int, str, int, int]]] = [[] for _ in range(c.n_codes)]
    frames_by_clip: dict[str, np.ndarray] = {}
    for key, mp4 in _clips(data, n_clips, skip):
        raw = D.decode_mp4(mp4)
        x_TCHW = torch.stack([fit_frame(f, c.height, c.width) for f in raw])
        if len(x_TCHW) < 2:
            continue
        a_T = lam.infer_actions(x_TCHW[None].to(dev))[0].cpu().numpy()  # (T-1,)
        diff_T = (x_TCHW[1:] - x_TCHW[:-1]).abs().mean(dim=(1, 2, 3)).numpy()
        np.add.at(counts, a_T, 1)
        np.add.at(change, a_T, diff_T)
        np.add.at(shift, a_T, scene_shift(x_TCHW.mean(dim=1).numpy().astype(np.float64)))
        frames_by_clip[key] = np.stack([to_uint8(f) for f in x_TCHW])
        start = 0
        for t in range(1, len(a_T) + 1):  # runs of one action
            if t == len(a_T) or a_T[t] != a_T[start]:
                runs[a_T[start]].append((t - start, key, start, min(t, start + max_len)))
                start = t
    total = int(counts.sum())
    actions = []
    for a in range(c.n_codes):
        examples, used = [], set()
        for _length, key, s, e in sorted(runs[a], key=lambda r: (-r[0], r[1], r[2])):
            if key in used:
                continue
            used.add(key)
            examples.append({"clip_id": key, "start": s, "transitions": e - s,
                             "gif": _gif_b64(frames_by_clip[key][s : e + 1])})  # fmt: skip
            if len(examples) >= per_action:
                break
        actions.append({
            "action": a, "count": int(counts[a]),
            "frequency": float(counts[a] / total) if total else 0.0,
            "mean_change": float(change[a] / counts[a]) if counts[a] else 0.0,
            "mean_shift": (shift[a] / max(counts[a], 1)).tolist(),  # (dy, dx) px per frame
            "examples": examples,
        })  # fmt: skip
    return {"n_clips": len(frames_by_clip), "n_transitions": total, "actions": actions}


# ------------------------------------------------------------------------------------------------
# The server


class PlayApp:
    """The server's state: one WorldModel session, the prompts, a worker thread that owns torch."""

    def __init__(
        self, run_dir: str | Path, data_dir: str | Path | None = None, *, steps: int = 25,
        temperature: float = 2.0, seed: int = 0, device: torch.device | str | None = None,
        n_prompts: int = 24, n_control_clips: int = 8,
    ) -> None:  # fmt: skip
        m = load_run(run_dir, device, with_lam=data_dir is not None)
        self.run_dir, self.data_dir, self.meta = Path(run_dir), data_dir, m["meta"]
        self.lam, self.lam_meta = m["lam"], m.get("lam_meta", {})
        self.wm = WorldModel(tokenizer=m["tokenizer"], dynamics=m["dynamics"], steps=steps,
                             temperature=temperature, seed=seed)  # fmt: skip
        self.prompts: dict[str, Prompt] = {}
        if data_dir is not None:
            self.prompts = {p.id: p for p in dataset_prompts(data_dir, n_prompts)}
        self.n_prompts, self.n_control_clips = n_prompts, n_control_clips
        self.epoch = 0  # bumped by every reset: frame URLs of an old session never collide
        self.prompt_id: str | None = None
        self.error: str | None = None
        self.generating = False
        self.controls: dict[str, Any] = {"status": "not started"}
        self._pending = 0
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="genie-play-worker", daemon=True)
        self._worker.start()

    # -- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, arg, done, epoch = job
            try:
                if kind == "step":
                    with self._lock:
                        if epoch != self.epoch:  # queued before a reset: dropped
                            continue
                        self.generating = True
                    self.wm.step(arg)
                elif kind == "reset":
                    self.wm.reset(arg)
                elif kind == "controls":
                    self.controls = {"status": "ready", **self._held_out(), **action_controls(
                        self.lam, self.data_dir, n_clips=self.n_control_clips)}  # fmt: skip
                self.error = None
            except Exception as e:  # reported to the page; the server keeps running
                log.exception("%s failed", kind)
                self.error = f"{kind}: {e}"
                if kind == "controls":
                    self.controls = {"status": "error", "error": str(e)}
            finally:
                with self._lock:
                    if kind == "step":
                        self._pending -= 1
                        self.generating = False
                if done is not None:
                    done.set()

    def _held_out(self) -> dict[str, Any]:
        trained = self.lam_meta.get("dataset_version")
        try:
            version = D.resolve_shards(self.data_dir)[1]  # type: ignore[arg-type]
        except Exception:
            version = None
        return {"data_version": version, "train_data_version": trained,
                "held_out": None if not (trained and version) else trained != version}  # fmt: skip

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the worker after the job in hand; False when it is still busy after ``timeout``
        (a long generation or the controls computation, which cannot be cut short)."""
        self._jobs.put(None)
        self._worker.join(timeout)
        return not self._worker.is_alive()

    # -- actions (request threads) ---------------------------------------------------------------
    def reset(self, prompt_id: str) -> None:
        if prompt_id not in self.prompts:
            raise KeyError(prompt_id)
        done = threading.Event()
        with self._lock:
            self.epoch += 1
            self.prompt_id = prompt_id
            self._jobs.put(("reset", self.prompts[prompt_id].frame, done, self.epoch))
        done.wait()

    def step(self, action: int, wait: bool = False) -> tuple[bool, int]:
        """Queue a step; (accepted, pending). Not accepted when MAX_PENDING are queued."""
        done = threading.Event() if wait else None
        with self._lock:
            if self._pending >= MAX_PENDING:
                return False, self._pending
            self._pending += 1
            self._jobs.put(("step", action, done, self.epoch))
            pending = self._pending
        if done is not None:
            done.wait()
        return True, pending

    def add_prompt(self, body: bytes, label: str) -> str:
        img = Image.open(io.BytesIO(body))
        img.load()
        with self._lock:
            pid = f"u{sum(k.startswith('u') for k in self.prompts)}"
            self.prompts[pid] = Prompt(pid, label, np.asarray(img.convert("RGB")))
        return pid

    def get_controls(self) -> dict[str, Any]:
        if self.lam is None:
            return {"status": "unavailable", "error": "start the server with --data DIR"}
        with self._lock:
            if self.controls["status"] == "not started":
                self.controls = {"status": "computing"}
                self._jobs.put(("controls", None, None, self.epoch))
        return self.controls

    def info(self) -> dict[str, Any]:
        wm = self.wm
        return {"n_actions": wm.n_actions, "height": wm.height, "width": wm.width,
                "max_frames": wm.max_frames, "maskgit_steps": wm.steps,
                "temperature": wm.temperature, "seed": wm.seed, "device": str(wm.device),
                "run": str(self.run_dir), "preset": self.meta.get("preset"),
                "data": None if self.data_dir is None else str(self.data_dir),
                "playback_fps": PLAYBACK_FPS, "queue": {"policy": "fifo", "max_pending": MAX_PENDING}}  # fmt: skip

    def state(self, since: int = 0) -> dict[str, Any]:
        frames, actions = self.wm.snapshot()
        with self._lock:
            pending, generating, epoch = self._pending, self.generating, self.epoch
        return {"epoch": epoch, "prompt": self.prompt_id, "n_frames": len(frames),
                "actions": actions, "fps": round(self.wm.fps(), 3), "pending": pending,
                "generating": generating, "error": self.error, "since": since,
                "hashes": [hashlib.sha1(f.tobytes()).hexdigest()[:12] for f in frames[since:]]}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    app: PlayApp  # set on a subclass per server
    pages = {"/": "index.html", "/controls": "controls.html"}

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(
        self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_UPLOAD:
            raise ValueError(f"body over {MAX_UPLOAD} bytes")
        return self.rfile.read(n)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        p, app = url.path, self.app
        try:
            if p in self.pages or p.startswith("/static/"):
                name = self.pages.get(p) or p.removeprefix("/static/")
                f = STATIC / name
                if "/" in name or not f.is_file():
                    return self._json({"error": "not found"}, 404)
                ctype = {".html": "text/html; charset=utf-8", ".js": "text/javascript",
                         ".css": "text/css"}.get(f.suffix, "application/octet-stream")  # fmt: skip
                return self._send(200, f.read_bytes(), ctype)
            if p == "/api/info":
                return self._json(app.info())
            if p == "/api/prompts":
                return self._json([{"id": k, "label": v.label} for k, v in app.prompts.items()])
            if p.startswith("/api/prompts/") and p.endswith(".png"):
                pr = app.prompts.get(p[len("/api/prompts/") : -4])
                if pr is None:
                    return self._json({"error": "no such prompt"}, 404)
                return self._send(200, png_bytes(pr.frame), "image/png")
            if p == "/api/state":
                return self._json(app.state(int(q.get("since", 0))))
            if p.startswith("/api/frame/") and p.endswith(".png"):
                epoch, idx = (int(v) for v in p[len("/api/frame/") : -4].split("/"))
                frames = app.wm.frames
                if epoch != app.epoch or not 0 <= idx < len(frames):
                    return self._json({"error": "no such frame"}, 404)
                return self._send(200, png_bytes(frames[idx]), "image/png")
            if p == "/api/export":
                fmt, scale = q.get("fmt", "gif"), int(q.get("scale", 4))
                body = encode_video(app.wm.frames, fmt, scale=min(max(scale, 1), 16))
                name = f"genie-play-{app.epoch}.{fmt}"
                return self._send(
                    200,
                    body,
                    "image/gif" if fmt == "gif" else "video/mp4",
                    {"Content-Disposition": f'attachment; filename="{name}"'},
                )
            if p == "/api/controls":
                return self._json(app.get_controls())
            return self._json({"error": "not found"}, 404)
        except (ValueError, KeyError) as e:
            return self._json({"error": str(e)}, 400)

    def do_POST(self) -> None:  # noqa: N802
        p, app = urlparse(self.path).path, self.app
        try:
            body = self._body()
            if p == "/api/prompts":
                label = self.headers.get("X-Filename", "upload")[:100]
                return self._json({"id": app.add_prompt(body, label)})
            req = json.loads(body or b"{}")
            if p == "/api/reset":
                if str(req.get("prompt")) not in app.prompts:
                    return self._json({"error": f"no prompt {req.get('prompt')!r}"}, 404)
                app.reset(str(req["prompt"]))
                return self._json(app.state(), 500 if app.error else 200)
            if p == "/api/step":
                a = int(req.get("action", -1))
                if not 0 <= a < app.wm.n_actions:
                    return self._json({"error": f"action must be in [0, {app.wm.n_actions})"}, 400)
                if app.prompt_id is None:
                    return self._json({"error": "choose a prompt first (POST /api/reset)"}, 409)
                ok, pending = app.step(a, wait=bool(req.get("wait", False)))
                if not ok:
                    return self._json({"error": "busy", "pending": pending}, 429)
                return self._json({"accepted": True, "pending": pending}, 202)
            return self._json({"error": "not found"}, 404)
        except (ValueError, KeyError, OSError) as e:
            return self._json({"error": str(e)}, 400)


class PlayServer:
    """A running play server (serving in a daemon thread): .url, .app, .wait(), .close()."""

    def __init__(self, app: PlayApp, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"app": app})
        self.app = app
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until close() (or forever); KeyboardInterrupt propagates."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> bool:
        """Stop serving; False when the model's worker was still busy (see PlayApp.close)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        return self.app.close()


def serve(
    run_dir: str | Path, data_dir: str | Path | None = None, host: str = "127.0.0.1",
    port: int = 0, **kw: Any,
) -> PlayServer:  # fmt: skip
    """Load the run and start serving in the background; port 0 picks a free port.

    Keyword arguments go to PlayApp (steps, temperature, seed, device, n_prompts, n_control_clips).
    """
    return PlayServer(PlayApp(run_dir, data_dir, **kw), host, port)
