"""Step-numbered checkpoints with a JSON sidecar (nanochat's checkpoint manager, in spirit).

Layout: `runs/{run}/{stage}/step_{n:07d}.pt` + `step_{n:07d}.json`. Both are written under a
temporary name and renamed; the sidecar is written last, so a `.pt` without its `.json` is an
incomplete checkpoint and is ignored. The `.pt` holds only tensors and plain containers (dict,
list, tuple, str, int, float, bool, None) so it loads with `torch.load(weights_only=True)`; RNG
states are therefore stored as tensors (see `rng_state`).

A `Mirror` keeps copies under a URL (`{checkpoint_url}/{run}/{stage}/`, same names): each finished
checkpoint is uploaded `.pt` first, sidecar last, so the completeness rule holds there too, and a
machine whose run folder is empty (a fresh pod) resumes from the newest complete copy.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie import remote

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step_(\d{7,})\.pt$")


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:07d}.pt"


def sidecar_path(pt: str | Path) -> Path:
    return Path(pt).with_suffix(".json")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    remote.atomic_write(path, write)


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (a .pt with its sidecar), oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m and sidecar_path(p).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint's .pt, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write step_{step}.pt (state) then step_{step}.json (meta + step), then prune old ones.

    Args:
        state: tensors and plain containers only (checked by loading it back is too slow; the
            weights_only load at resume is the check).
        meta: JSON-serialisable (config, dataset version, metrics).
        keep_last: keep this many newest complete checkpoints; None keeps all.
    Returns:
        the .pt path.
    """
    pt = checkpoint_path(ckpt_dir, step)
    _atomic(pt, lambda tmp: torch.save(state, tmp))
    side = {**meta, "step": step, "file": pt.name}
    text = json.dumps(side, indent=2, sort_keys=True, default=str) + "\n"
    _atomic(sidecar_path(pt), lambda tmp: tmp.write_text(text))
    if keep_last is not None:
        for _, old in list_checkpoints(ckpt_dir)[:-keep_last]:
            sidecar_path(old).unlink(missing_ok=True)  # sidecar first: never a complete orphan
            old.unlink(missing_ok=True)
    log.info("checkpoint %s", pt)
    return pt


def load_checkpoint(
    pt: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    mmap: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, sidecar) of one checkpoint; the state is loaded with weights_only=True.

    mmap=True maps the file instead of reading it into memory (a large full state dict on rank 0).
    """
    state = torch.load(pt, map_location=map_location, weights_only=True, mmap=mmap)
    meta = json.loads(sidecar_path(pt).read_text())
    return state, meta


# ------------------------------------------------------------------------------------------------
# RNG states as tensors (weights_only-safe)


def rng_state() -> dict[str, Any]:
    """torch, numpy, python (and CUDA) RNG states of this process, as tensors and ints."""
    np_state = np.random.get_state()  # ('MT19937', keys uint32[624], pos, has_gauss, gauss)
    py_version, py_keys, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {
            "version": py_version,
            "keys": torch.tensor(py_keys, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    """Inverse of rng_state."""
    torch.set_rng_state(s["torch"].cpu())
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(int(k) for k in p["keys"].tolist()), p["gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])


def load_model_weights(
    model: torch.nn.Module,
    path: str | Path,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a Trainer checkpoint's model weights into `model` (e.g. the tokenizer to tokenize).

    Args:
        path: a step_*.pt file, or a stage dir (runs/{run}/{stage}) to take its newest complete one.
    Returns:
        the checkpoint's sidecar (config, metrics, step, and the meta the Trainer was given).
    """
    pt = Path(path)
    if pt.is_dir():
        found = latest_checkpoint(pt)
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint in {pt}")
        pt = found
    state, meta = load_checkpoint(pt, map_location)
    model.load_state_dict(state["model"])
    return {**meta, "path": str(pt)}


# ------------------------------------------------------------------------------------------------
# A copy of the checkpoints on object storage


def mirror_url(base: str, run_dir: str | Path, stage: str) -> str:
    """`{base}/{run}/{stage}`: run is the run folder's name (runs/genie -> genie)."""
    return remote.join(base, Path(run_dir).resolve().name, stage)


class Mirror:
    """Copies of one stage's checkpoints under a URL (any fsspec URL, or a plain folder).

    Objects are written in one upload each (atomic on object stores), the sidecar after its `.pt`,
    and pruned sidecar first: a `.pt` with its `.json` is complete here as on disk.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def list(self) -> list[tuple[int, str]]:
        """Complete remote checkpoints as (step, .pt name), oldest first."""
        names = set(remote.list_names(self.url))
        found = []
        for name in names:
            m = _STEP_RE.match(name)
            if m and sidecar_path(name).name in names:
                found.append((int(m.group(1)), name))
        return sorted(found)

    def latest_step(self) -> int | None:
        found = self.list()
        return found[-1][0] if found else None

    def upload(self, pt: str | Path, keep_last: int | None = None) -> None:
        """Upload a finished local checkpoint (.pt, then its sidecar), then prune old copies."""
        pt = Path(pt)
        remote.upload(pt, remote.join(self.url, pt.name))
        remote.upload(sidecar_path(pt), remote.join(self.url, sidecar_path(pt).name))
        if keep_last is not None:
            for _, old in self.list()[:-keep_last]:
                remote.remove(remote.join(self.url, sidecar_path(old).name))
                remote.remove(remote.join(self.url, old))
        log.info("checkpoint %s mirrored to %s", pt.name, self.url)

    def fetch(self, step: int, ckpt_dir: str | Path) -> Path:
        """Download checkpoint `step` into ckpt_dir (atomically, sidecar last); the local .pt."""
        pt = checkpoint_path(ckpt_dir, step)
        remote.download(remote.join(self.url, pt.name), pt)
        remote.download(remote.join(self.url, sidecar_path(pt).name), sidecar_path(pt))
        log.info("checkpoint step %d fetched from %s", step, self.url)
        return pt
