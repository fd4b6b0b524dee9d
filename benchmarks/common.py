"""What the benchmark scripts share: a clock for interleaved passes, the machine facts, the writer."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


class Clock:
    """Wall and CPU (this process) seconds, summed over timed calls."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __call__(self, fn: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out


def machine(threads: int, **versions: str) -> dict[str, Any]:
    """The facts a result needs to be read: Python, CPU, threads, library versions."""
    return {
        "python": platform.python_version(),
        **versions,
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "note": "shared 2-core machine, other jobs running",
    }


def write_results(out: Path, res: dict[str, Any], suffix: str = "") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}{suffix}")
