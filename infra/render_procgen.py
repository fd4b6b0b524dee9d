"""Render Procgen platformer gameplay to 16:9 mp4 files, as a stand-in for internet gameplay videos.

Runs ONLY inside an isolated venv with ``procgen2`` installed (it pins numpy<2 and gym, which the
main environment must never import); :mod:`pipelines.sample` creates that venv and runs this file
with its interpreter. Standalone on purpose: it imports nothing from the project.

Usage::

    python infra/render_procgen.py --out DIR --fps 15 --size 320x180 \\
        --job coinrun:3:45 --job ninja:7:40:ninja-long

A job is ``game:seed:seconds[:name]``; the file is ``DIR/{name}.mp4`` (default
``gameplay-{game}-{seed:04d}``). One JSON line per finished job goes to stdout. Output depends only
on (game, seed, seconds, fps, size): the level, the game's own randomness and the policy are all
seeded.

The player: sticky random actions chosen by a look-ahead planner that runs a second, non-rendering
copy of the game (about 100x faster than rendering) and rejects action chunks that die within the
look-ahead. It plays like a person in a play-through video, not like a speed-runner: each level gets
a target duration drawn from MIN_LEVEL_S..MAX_LEVEL_S, and until then the player explores (walks
back and forth under a heading that flips every few seconds, jumps around) and avoids finishing the
level; after it, the player heads for the goal. A level change (a hard cut: new layout, new
background) is never allowed in the last MIN_TAIL_S of a video, and levels last MIN_LEVEL_S or more,
so a 34-50 s video has at most one level change and still holds two 16 s clips. A death the planner
cannot avoid still happens, as in real videos (none in the sample corpus's current videos).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from procgen import ProcgenGym3Env

logger = logging.getLogger(__name__)

# Procgen renders 512x512; its camera is centred on the agent, so a centred 512x288 band is the
# 16:9 view a YouTube gameplay video would have.
RENDER_SIZE = 512
BAND_H = RENDER_SIZE * 9 // 16

# Procgen's 15 combined actions (env.get_combos()): index -> keys.
LEFT_DOWN, LEFT, LEFT_UP, DOWN, NOOP, UP, RIGHT_DOWN, RIGHT, RIGHT_UP = range(9)
# Prior over the sticky action when heading right; right and right+jump dominate so the player makes
# progress, the rest keeps the motion varied (a little backtracking, standing, jumping in place).
ACTIONS = np.array([RIGHT, RIGHT_UP, UP, LEFT, LEFT_UP, NOOP, DOWN, RIGHT_DOWN])
ACTION_P = np.array([0.34, 0.30, 0.10, 0.08, 0.07, 0.05, 0.03, 0.03])
# Heading left: the same prior, mirrored.
MIRROR = {RIGHT: LEFT, RIGHT_UP: LEFT_UP, LEFT: RIGHT, LEFT_UP: RIGHT_UP, RIGHT_DOWN: LEFT_DOWN,
          LEFT_DOWN: RIGHT_DOWN, UP: UP, NOOP: NOOP, DOWN: DOWN}  # fmt: skip
ACTIONS_LEFT = np.array([MIRROR[int(a)] for a in ACTIONS])

# Planner: commit CHUNK steps at a time when CHUNK + LOOKAHEAD steps from here survive.
CHUNK = 8
LOOKAHEAD = 24
CANDIDATES = 6
# Undo budget per video: bounds planning time when a level has no way through (or no way to
# dawdle without finishing it).
MAX_BACKTRACKS = 200
# Pacing, in seconds of video. Real play-through levels last a minute or more; ours last a target
# drawn per level from MIN_LEVEL_S..MAX_LEVEL_S (Procgen's own limit is 1000 steps, 66 s at 15 FPS).
MIN_LEVEL_S, MAX_LEVEL_S = 20.0, 45.0
# No level change in the last MIN_TAIL_S of a video: one 16 s clip of the pipeline fits after it.
MIN_TAIL_S = 16.0
# While exploring, the heading (right or left) flips after HEADING_S[0]..HEADING_S[1] seconds.
HEADING_S = (2.0, 5.0)

PLATFORMERS = ("coinrun", "ninja", "climber", "jumper", "caveflyer")


@dataclass(frozen=True)
class Job:
    game: str  # a Procgen game name
    seed: int  # level seed, game RNG seed and policy seed
    seconds: float  # video length
    name: str  # output file stem

    @staticmethod
    def parse(spec: str) -> Job:
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"job {spec!r}: expected game:seed:seconds[:name]")
        game, seed, seconds = parts[0], int(parts[1]), float(parts[2])
        if game not in PLATFORMERS:
            raise ValueError(f"job {spec!r}: game must be one of {PLATFORMERS}")
        if seconds <= 0:
            raise ValueError(f"job {spec!r}: seconds must be > 0")
        name = parts[3] if len(parts) == 4 else f"gameplay-{game}-{seed:04d}"
        return Job(game, seed, seconds, name)


def make_env(game: str, seed: int, render: bool) -> ProcgenGym3Env:
    # use_sequential_levels: finishing a level moves on to a new one inside the same episode (a cut
    # in the video, as between levels in a real play-through) instead of restarting the same level.
    kwargs = {"render_mode": "rgb_array"} if render else {}
    return ProcgenGym3Env(
        num=1,
        env_name=game,
        start_level=seed,
        num_levels=1,
        distribution_mode="hard",
        rand_seed=seed,
        use_sequential_levels=True,
        **kwargs,
    )


def sticky_actions(rng: np.random.Generator, n: int, first: int, right: bool = True) -> list[int]:
    """``n`` actions where each choice is held for a geometric number of steps (mean ~6), drawn
    from the prior heading right (``right``) or its mirror image."""
    actions = ACTIONS if right else ACTIONS_LEFT
    out: list[int] = []
    a = first
    while len(out) < n:
        hold = int(rng.geometric(1 / 6))
        out.extend([a] * hold)
        a = int(rng.choice(actions, p=ACTION_P))
    return out[:n]


@dataclass(frozen=True)
class Outcome:
    alive: int  # steps played before a death (or the time limit), else len(actions)
    finished: int | None  # index of the step that completed a level, if one did
    motion: float  # mean |change| of the 64x64 observation, first to last step


def rollout(env: ProcgenGym3Env, actions: list[int]) -> Outcome:
    """Play ``actions`` from the env's current state and say what happened.

    ``motion``: the camera follows the agent, so a player stuck against a wall scores near 0.
    """
    first_obs: np.ndarray | None = None
    obs_rgb: np.ndarray | None = None
    finished: int | None = None
    for i, a in enumerate(actions):
        env.act(np.array([a]))
        _, obs, first = env.observe()
        obs_rgb = obs["rgb"][0].astype(np.int16)  # (64, 64, 3)
        if first_obs is None:
            first_obs = obs_rgb
        # ``first`` marks a new episode: a death or the time limit (a finished level does not end
        # the episode with sequential levels; the env says so in its info instead).
        if first[0]:
            return Outcome(i, finished, 0.0)
        if finished is None and env.get_info()[0]["prev_level_complete"]:
            finished = i
    motion = float(np.abs(obs_rgb - first_obs).mean()) if obs_rgb is not None else 0.0
    return Outcome(len(actions), finished, motion)


def pacing(game: str, seed: int, n_steps: int, fps: float) -> tuple[np.ndarray, list[int]]:
    """(heading right? per step, target length in steps of level 0, 1, ...): the exploring
    player's plan, fixed up front from its own seed so that backtracking cannot change it."""
    rng = np.random.default_rng([seed, zlib.crc32(game.encode()), 1])
    heading = np.empty(n_steps + 1, bool)
    pos, right = 0, True
    while pos <= n_steps:
        hold = round(rng.uniform(*HEADING_S) * fps)
        heading[pos : pos + hold] = right
        pos, right = pos + hold, not right
    # At most n_steps / (MIN_LEVEL_S * fps) + 1 levels fit in the video; drawn from their own
    # generator so that a level's target does not depend on the video's length.
    level_rng = np.random.default_rng([seed, zlib.crc32(game.encode()), 2])
    targets = [round(level_rng.uniform(MIN_LEVEL_S, MAX_LEVEL_S) * fps)
               for _ in range(int(n_steps / (MIN_LEVEL_S * fps)) + 2)]  # fmt: skip
    return heading, targets


@dataclass(frozen=True)
class _Node:
    state: object  # the planner env's state before the next chunk
    level: int  # levels finished so far
    level_start: int  # step at which the current level began


def plan(game: str, seed: int, n_steps: int, fps: float = 15.0) -> list[int]:
    """Choose ``n_steps`` actions with a non-rendering copy of the game and a look-ahead search.

    Each chunk tries CANDIDATES sticky action sequences from the same saved state and commits the
    first CHUNK steps of the best: surviving the look-ahead first, then finishing the level only
    when it is due (its target length reached, and MIN_TAIL_S of video left after it), else not
    finishing it, then moving the camera most (going somewhere rather than standing still).
    """
    env = make_env(game, seed, render=False)
    rng = np.random.default_rng([seed, zlib.crc32(game.encode())])
    heading, targets = pacing(game, seed, n_steps, fps)
    tail = round(MIN_TAIL_S * fps)
    nodes = [_Node(env.get_state(), 0, 0)]  # nodes[i]: where chunks[i] starts
    chunks: list[list[int]] = []
    backtracks = 0
    while len(chunks) * CHUNK < n_steps:
        node, step = nodes[-1], len(chunks) * CHUNK
        due = (step - node.level_start >= targets[node.level]
               and n_steps - (step + CHUNK + LOOKAHEAD) >= tail)  # fmt: skip
        last = chunks[-1][-1] if chunks else RIGHT
        best: list[int] = []
        best_key: tuple[int, bool, float] = (-1, False, 0.0)
        for _ in range(CANDIDATES):
            # Exploring: follow the heading. Due: go right, where Procgen's goals mostly are.
            cand = sticky_actions(rng, CHUNK + LOOKAHEAD, last, due or bool(heading[step]))
            env.set_state(node.state)
            out = rollout(env, cand)
            key = (out.alive, (out.finished is not None) == due, out.motion)
            if key > best_key:
                best, best_key = cand, key
        bad = best_key[0] < CHUNK + LOOKAHEAD or not best_key[1] and not due
        if bad and chunks and backtracks < MAX_BACKTRACKS:
            # Every candidate dies (or finishes the level too early): the mistake is probably
            # earlier (already falling into a pit, or next to the goal), so undo the previous
            # chunk and search again from there.
            chunks.pop()
            nodes.pop()
            backtracks += 1
            continue
        # Replay the committed chunk from the saved state so the planner's copy is exactly where
        # the rendering copy will be.
        env.set_state(node.state)
        commit = best[:CHUNK]
        out = rollout(env, commit)
        level, level_start = node.level, node.level_start
        if out.alive < CHUNK:  # an unavoidable death: the level starts again
            level_start = step + out.alive + 1
        elif out.finished is not None:
            level, level_start = min(level + 1, len(targets) - 1), step + out.finished + 1
        chunks.append(commit)
        nodes.append(_Node(env.get_state(), level, level_start))
    logger.info("%s seed %d: planned %d steps with %d backtracks", game, seed, n_steps, backtracks)
    return [a for c in chunks for a in c][:n_steps]


def encoder(path: Path, fps: int, width: int, height: int) -> subprocess.Popen[bytes]:
    """An ffmpeg process reading 512x288 RGB frames on stdin and writing an H.264 mp4."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{RENDER_SIZE}x{BAND_H}", "-r", str(fps),
        "-i", "-",
        "-vf", f"scale={width}:{height}:flags=area",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
        # +faststart: the moov atom first, as web video is served; -bitexact keeps the file
        # identical across runs (no encoder version string).
        "-movflags", "+faststart", "-fflags", "+bitexact", "-threads", "1",
        "-f", "mp4", str(path),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)


def render(job: Job, out_dir: Path, fps: int, width: int, height: int) -> dict[str, object]:
    """Render one job to ``out_dir/{name}.mp4`` (written under a temporary name, then renamed)."""
    t0 = time.monotonic()
    n = round(job.seconds * fps)
    actions = plan(job.game, job.seed, n, fps)
    t_plan = time.monotonic() - t0
    env = make_env(job.game, job.seed, render=True)
    final = out_dir / f"{job.name}.mp4"
    tmp = out_dir / f".tmp-{job.name}.mp4"
    proc = encoder(tmp, fps, width, height)
    assert proc.stdin is not None
    top = (RENDER_SIZE - BAND_H) // 2
    resets = 0
    levels: list[float] = []  # times (s) at which a new level began: the true hard cuts
    try:
        for i, a in enumerate(actions):
            env.act(np.array([a]))
            _, _, first = env.observe()
            resets += int(first[0])
            info = env.get_info()[0]
            if info["prev_level_complete"]:
                levels.append(round(i / fps, 2))
            frame = info["rgb"]  # (512, 512, 3) uint8
            proc.stdin.write(np.ascontiguousarray(frame[top : top + BAND_H]).tobytes())
        proc.stdin.close()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed for {final.name}: {err.decode(errors='replace')}")
        os.replace(tmp, final)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tmp.unlink(missing_ok=True)
    return {
        "name": job.name, "game": job.game, "seed": job.seed, "frames": n, "fps": fps,
        "width": width, "height": height, "deaths": resets, "level_changes_s": levels,
        "path": str(final),
        "plan_s": round(t_plan, 2), "total_s": round(time.monotonic() - t0, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--fps", type=int, default=15, help="frames per second (one game step each)")
    ap.add_argument("--size", default="320x180", help="WIDTHxHEIGHT, 16:9")
    ap.add_argument("--job", action="append", required=True, help="game:seed:seconds[:name]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    width, height = (int(v) for v in args.size.lower().split("x"))
    jobs = [Job.parse(s) for s in args.job]
    args.out.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        result = render(job, args.out, args.fps, width, height)
        logger.info("rendered %s", result)
        # The caller reads these lines: the CLI's results.
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
