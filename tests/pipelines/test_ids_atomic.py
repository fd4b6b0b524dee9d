from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import atomic, ids


def test_video_id_uses_extractor_and_id() -> None:
    assert ids.video_id("Youtube", "dQw4w9WgXcQ", "https://youtu.be/x") == "youtube-dQw4w9WgXcQ"


def test_direct_links_are_hashed_not_named_after_the_file() -> None:
    a = ids.video_id("generic", "my video.final", "http://a.example/my video.final.mp4")
    b = ids.video_id("generic", "my video.final", "http://b.example/my video.final.mp4")
    assert a.startswith("url-") and b.startswith("url-") and a != b
    assert "." not in a and "/" not in a


@pytest.mark.parametrize("ident", ["../../etc/passwd", "a.b", "x y", "ü", ""])
def test_unsafe_ids_never_become_names(ident: str) -> None:
    vid = ids.video_id("SomeSite", ident, "https://s.example/v")
    ids.check_safe(vid)  # every produced ID is safe
    with pytest.raises(ValueError):
        ids.check_safe(ident)


def test_clip_id_format() -> None:
    assert ids.clip_id("youtube-abc", 16000) == "youtube-abc_00016000"
    with pytest.raises(ValueError):
        ids.clip_id("youtube-abc", -1)
    with pytest.raises(ValueError):
        ids.clip_id("bad.id", 0)


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    atomic.write_text(p, "old")
    with pytest.raises(RuntimeError), atomic.atomic_open(p, "w") as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(atomic.TMP_PREFIX)]


def test_killed_writer_leaves_only_a_temporary_that_is_cleaned(tmp_path: Path) -> None:
    # A real kill -9 in the middle of a write: the final name never appears half-written.
    code = (
        "import os, sys\n"
        "from pipelines import atomic\n"
        "with atomic.atomic_open(sys.argv[1], 'wb') as fh:\n"
        "    fh.write(b'x' * 1000); fh.flush()\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    target = tmp_path / "out.bin"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=os.environ.copy())
    assert proc.returncode == -9
    assert not target.exists()
    assert atomic.clean_temporaries(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_are_readable_by_others(tmp_path: Path) -> None:
    p = tmp_path / "shared.json"
    atomic.write_json(p, {"a": 1})
    assert p.stat().st_mode & 0o777 == 0o644
