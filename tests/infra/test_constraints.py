"""infra/constraints.txt pins every package pyproject.toml asks for (setup installs with it), so a
dependency added to one and not the other fails here rather than on a fresh machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("scale", "ray", "dev"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    wanted -= {"torch", "open-genie"}  # torch is installed first by infra/setup.sh
    pins = {}
    for line in (ROOT / "infra" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[_name(name)] = version
    assert "torch" not in pins
    missing = sorted(wanted - set(pins))
    assert not missing, f"add to infra/constraints.txt: {missing}"
