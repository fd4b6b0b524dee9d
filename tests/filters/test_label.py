"""The labelling page over a real (small) build: served on 127.0.0.1, ratings written to the CSV."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest

from filters.label import candidates, make_server, read_existing
from filters.train import read_labels
from tests.helpers.servers import make_video


@pytest.fixture()
def build(tmp_path: Path) -> Path:
    """A build-dataset-shaped folder with two real clips (records + clip files)."""
    clips = []
    for i in range(2):
        cid = f"url-aaaa_{i * 16000:08d}"
        p = make_video(
            tmp_path / "work" / "clips" / "url-aaaa" / f"{cid}.mp4", seconds=2, size="160x90"
        )
        clips.append({"clip_id": cid, "path": str(p), "features": {"x": float(i)}})
    rec = {"video_id": "url-aaaa", "url": "http://h/a.mp4", "clips": clips}
    (tmp_path / "work" / "videos").mkdir(parents=True)
    (tmp_path / "work" / "videos" / "url-aaaa.json").write_text(json.dumps(rec))
    return tmp_path


def _post(url: str, body: dict[str, str]) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_page_serves_clips_and_writes_ratings(build: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    srv = make_server(build, out, model=None, port=0)
    assert srv.server_address[0] == "127.0.0.1"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert (
            "url-aaaa_00000000" in page
            and "url-aaaa_00016000" in page
            and "image/gif;base64" in page
        )
        assert (
            _post(base + "/label", {"id": "url-aaaa_00000000", "rating": "5", "note": "clean run"})
            == 200
        )
        assert _post(base + "/label", {"id": "url-aaaa_00016000", "rating": "1"}) == 200
        assert _post(base + "/label", {"id": "url-aaaa_00016000", "rating": "9"}) == 400
        assert (
            _post(base + "/label", {"id": "url-aaaa_00000000", "rating": "4"}) == 200
        )  # a change of mind
    finally:
        srv.shutdown()
        srv.server_close()
    labels = read_labels(out)
    assert labels["url-aaaa_00000000"][0] == 4 and labels["url-aaaa_00016000"][0] == 1
    assert read_existing(out)["url-aaaa_00000000"][1] == ""
    # labelled clips are not offered again
    assert candidates(build, None, set(read_existing(out)), 10) == []
