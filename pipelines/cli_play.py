"""`genie play`: serve a trained run as a playable web page (genie.play) until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _usage(msg: str) -> Exception:
    from pipelines.cli import UsageError  # here, not at the top: pipelines.cli imports this module

    return UsageError(msg)


def cmd_play(a: argparse.Namespace) -> int:
    from genie import checkpoint as ckpt

    for stage in ("tokenizer", "dynamics") + (("lam",) if a.data else ()):
        if ckpt.latest_checkpoint(Path(a.run) / stage) is None:
            raise _usage(f"no complete checkpoint in {Path(a.run) / stage}: train that stage first")
    if a.data is not None and not (Path(a.data) / "manifest.json").is_file():
        raise _usage(f"no manifest.json in {a.data}: is it a build-dataset output folder?")
    if a.maskgit_steps < 1 or a.temperature < 0:
        raise _usage("--maskgit-steps must be >= 1 and --temperature >= 0")
    from genie.play import serve

    server = serve(a.run, a.data, host=a.host, port=a.port, steps=a.maskgit_steps,
                   temperature=a.temperature, seed=a.seed, n_prompts=a.prompts)  # fmt: skip
    print(f"genie play: {server.url}  (controls: {server.url}controls; Ctrl-C stops)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        print("genie play: stopped", flush=True)
    finally:
        idle = server.close()
    if not idle:
        # The worker thread is inside a long torch/PyAV call that cannot be interrupted; letting
        # the interpreter finalize around it can hang. Ctrl-C must stop the server: leave now.
        print("genie play: abandoned the work in flight", flush=True)
        sys.stderr.flush()
        os._exit(0)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `play` to the genie CLI's subcommands."""
    p = sub.add_parser("play", help="play a trained world model in the browser")
    p.add_argument("--run", required=True, help="run folder (tokenizer/, dynamics/, lam/)")
    p.add_argument("--data", default=None,
                   help="build-dataset folder: prompt frames and the controls page")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--maskgit-steps", type=int, default=25, help="MaskGIT passes (paper: 25)")
    p.add_argument("--temperature", type=float, default=2.0, help="sampling temperature (paper: 2)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of each session")
    p.add_argument("--prompts", type=int, default=24, help="dataset clips offered as prompts")
    p.set_defaults(fn=cmd_play)
