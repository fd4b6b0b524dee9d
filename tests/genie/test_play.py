"""genie.play: the WorldModel session, exports, LAM controls, the JSON API, and the page in headless
Chromium driven by Playwright (skipped only when /usr/bin/chromium or playwright is missing).

The run folder is made here: tiny-preset models with a fixed seed saved as step-1 checkpoints (no
training), so frames are noise-like but every shape, count and file is real.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image

from genie import checkpoint as ckpt
from genie import play as P
from genie.dynamics import DynamicsModel
from genie.lam import LatentActionModel
from genie.presets import tiny
from genie.tokenizer import VideoTokenizer
from tests.genie.test_data import make_dataset

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def make_run(root: Path, seed: int = 0) -> Path:
    """A run folder like genie.stages writes: {tokenizer,lam,dynamics}/step_0000001.pt + .json."""
    cfg = tiny()
    torch.manual_seed(seed)
    models = {"tokenizer": VideoTokenizer(config=cfg.tokenizer),
              "lam": LatentActionModel(config=cfg.lam),
              "dynamics": DynamicsModel(config=cfg.dynamics)}  # fmt: skip
    for name, model in models.items():
        meta = {"preset": "tiny", "genie_config": asdict(cfg), "stage": name,
                "dataset_version": "v-train"}  # fmt: skip
        ckpt.save_checkpoint(root / name, 1, {"model": model.state_dict()}, meta)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"), n_shards=1, per_shard=2)


def prompt_frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (90, 160, 3), dtype=np.uint8)


def decode_video(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), mode="r") as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


# ------------------------------------------------------------------------------------------------
# WorldModel


def test_step_gives_frames_and_grows_history(run_dir: Path) -> None:
    wm = P.WorldModel.from_run(run_dir, steps=3, device="cpu")
    with pytest.raises(RuntimeError):
        wm.step(0)
    f0 = wm.reset(prompt_frame())
    assert f0.shape == (32, 32, 3) and f0.dtype == np.uint8
    out = [wm.step(a) for a in (0, 1, 3)]
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in out)
    frames, actions = wm.snapshot()
    assert len(frames) == 4 and actions == [0, 1, 3]
    assert any(not np.array_equal(f, f0) for f in out)
    with pytest.raises(ValueError):
        wm.step(wm.n_actions)
    assert wm.fps() > 0
    wm.reset(prompt_frame(1))
    assert len(wm.frames) == 1 and wm.actions == []


def test_same_seed_same_session(run_dir: Path) -> None:
    a = P.WorldModel.from_run(run_dir, steps=2, device="cpu")
    b = P.WorldModel.from_run(run_dir, steps=2, device="cpu")
    for wm in (a, b):
        wm.reset(prompt_frame())
        for act in (2, 0, 1):
            wm.step(act)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))


def test_context_is_capped_at_max_frames(run_dir: Path) -> None:
    wm = P.WorldModel.from_run(run_dir, steps=1, device="cpu")
    seen: list[tuple[int, list[int]]] = []
    logits = wm.dynamics.logits

    def spy(tokens_BTHW: torch.Tensor, actions_BA: torch.Tensor, mask: torch.Tensor) -> Any:
        seen.append((tokens_BTHW.shape[1], actions_BA[0].tolist()))
        return logits(tokens_BTHW, actions_BA, mask)

    wm.dynamics.logits = spy  # type: ignore[method-assign,assignment]
    wm.reset(prompt_frame())
    acts = [i % wm.n_actions for i in range(20)]
    for a in acts:
        wm.step(a)
    lengths = [t for t, _ in seen]
    assert wm.max_frames == 16 and max(lengths) == 16  # 15 past frames + the new one
    assert lengths[:3] == [2, 3, 4] and lengths[-1] == 16
    assert len(wm.frames) == 21  # the history is not capped, only the context
    # the actions given are the history's: a_t leads from frame t to t+1, the last one is new
    assert seen[-1][1] == acts[-15:]


def test_fit_frame_keeps_aspect_with_black_bars() -> None:
    wide = np.full((90, 160, 3), 255, np.uint8)
    x = P.fit_frame(wide, 32, 32)  # padded to 160x160 first: bars top and bottom
    assert x.shape == (3, 32, 32)
    assert x[:, 0].max() < 0.01 and x[:, 16].min() > 0.99


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_export_decodes_as_video(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    wm = P.WorldModel.from_run(run_dir, steps=2, device="cpu")
    wm.reset(prompt_frame())
    for a in (0, 1, 2, 3, 1):
        wm.step(a)
    path = wm.export(tmp_path / f"play.{fmt}", scale=3)
    got = decode_video(path.read_bytes())
    assert len(got) == 6 and got[0].shape == (96, 96, 3)
    if fmt == "gif":  # lossless up to the palette: the first frame is the prompt's, upscaled
        err = np.abs(got[0][::3, ::3].astype(int) - wm.frames[0].astype(int)).mean()
        assert err < 8


def test_scene_shift_follows_a_pan() -> None:
    """Crops of a bigger random picture whose content moves by known offsets."""
    big = np.random.default_rng(0).random((60, 100))
    moves = [(0, 0), (0, 3), (2, 3), (2, 1)]  # content offset (dy, dx) of each frame
    frames = np.stack([big[10 - dy : 40 - dy, 20 - dx : 70 - dx] for dy, dx in moves])
    assert P.scene_shift(frames).tolist() == [[0, 3], [2, 0], [0, -2]]


def test_controls_count_every_transition(run_dir: Path, dataset: Path) -> None:
    lam = P.load_run(run_dir, "cpu")["lam"]
    c = P.action_controls(lam, dataset, n_clips=1, per_action=2)
    assert c["n_clips"] == 1 and c["n_transitions"] == 159  # one 160-frame clip
    counts = [a["count"] for a in c["actions"]]
    assert len(counts) == lam.config.n_codes and sum(counts) == 159
    assert abs(sum(a["frequency"] for a in c["actions"]) - 1) < 1e-6
    for a in c["actions"]:
        assert (a["count"] > 0) == bool(a["examples"]) and len(a["mean_shift"]) == 2
        for e in a["examples"]:
            frames = decode_video(base64.b64decode(e["gif"]))
            assert len(frames) == e["transitions"] + 1 and 1 <= e["transitions"] <= 4


# ------------------------------------------------------------------------------------------------
# JSON API


def call(url: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url.rstrip("/") + path, data=data, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture(scope="module")
def server(run_dir: Path, dataset: Path):  # type: ignore[no-untyped-def]
    s = P.serve(run_dir, dataset, steps=2, device="cpu")
    yield s
    s.close()


def test_api_reset_step_state(server: P.PlayServer) -> None:
    url = server.url
    assert server.host == "127.0.0.1"
    info = call(url, "/api/info")[1]
    assert info["n_actions"] == 4 and info["queue"] == {"policy": "fifo", "max_pending": 8}
    prompts = call(url, "/api/prompts")[1]
    assert [p["label"] for p in prompts] == ["vid0_00000000", "vid1_00016000"]
    assert call(url, "/api/step", {"action": 9})[0] == 400
    assert call(url, "/api/reset", {"prompt": "nope"})[0] == 404
    code, st = call(url, "/api/reset", {"prompt": prompts[1]["id"]})
    assert code == 200 and st["n_frames"] == 1
    code, r = call(url, "/api/step", {"action": 2, "wait": True})
    assert code == 202 and r["accepted"]
    st = call(url, "/api/state?since=1")[1]
    assert st["n_frames"] == 2 and st["actions"] == [2] and len(st["hashes"]) == 1
    with urllib.request.urlopen(f"{url}api/frame/{st['epoch']}/1.png") as r:
        assert r.headers["Content-Type"] == "image/png" and r.read()[:4] == b"\x89PNG"
    with urllib.request.urlopen(f"{url}api/export?fmt=mp4&scale=2") as r:
        assert len(decode_video(r.read())) == 2


def test_api_upload_prompt(server: P.PlayServer) -> None:
    buf = io.BytesIO()
    Image.fromarray(prompt_frame(3)).save(buf, format="JPEG")
    req = urllib.request.Request(server.url + "api/prompts", data=buf.getvalue(), method="POST")
    with urllib.request.urlopen(req) as r:
        pid = json.load(r)["id"]
    assert call(server.url, "/api/reset", {"prompt": pid})[0] == 200


def test_steps_queue_then_busy(server: P.PlayServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a frame is generating, steps queue up to MAX_PENDING; one more gets 429 busy."""
    url, app = server.url, server.app
    call(url, "/api/reset", {"prompt": "c0"})
    gate, real = threading.Event(), app.wm.step
    monkeypatch.setattr(app.wm, "step", lambda a: (gate.wait(30), real(a))[1])
    codes = [call(url, "/api/step", {"action": i % 4})[0] for i in range(P.MAX_PENDING + 1)]
    assert codes == [202] * P.MAX_PENDING + [429]
    assert call(url, "/api/state")[1]["pending"] == P.MAX_PENDING  # reads never wait
    gate.set()
    deadline = time.monotonic() + 60
    while (st := call(url, "/api/state")[1])["pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert st["n_frames"] == P.MAX_PENDING + 1 and st["actions"] == [i % 4 for i in range(8)]


def test_api_controls(server: P.PlayServer) -> None:
    deadline = time.monotonic() + 120
    while (c := call(server.url, "/api/controls")[1])["status"] == "computing":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert c["status"] == "ready" and c["held_out"] is True  # v-test data, v-train LAM
    assert len(c["actions"]) == 4 and c["n_clips"] == 2


# ------------------------------------------------------------------------------------------------
# The page in headless Chromium


def _playwright() -> Any:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright missing: pip install playwright (no browser download needed)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    sync_playwright = _playwright()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


FRAME_PIXELS = """() => { const i = document.getElementById('frame'); const c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);
  return c.toDataURL(); }"""


def _wait_frame(page: Any, index: int) -> None:
    page.wait_for_function(
        f"() => {{ const i = document.getElementById('frame'); return i.dataset.index === '{index}'"
        " && i.complete && i.naturalWidth > 0; }", timeout=60_000)  # fmt: skip


def test_page_plays_and_exports(browser: Any, server: P.PlayServer, tmp_path: Path) -> None:
    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator(".prompt").count() >= 2  # the dataset's clips (+ earlier uploads)
    page.locator(".prompt").first.click()
    _wait_frame(page, 0)
    first = page.evaluate(FRAME_PIXELS)
    page.keyboard.press("1")
    _wait_frame(page, 1)
    second = page.evaluate(FRAME_PIXELS)
    page.keyboard.press("2")
    _wait_frame(page, 2)
    third = page.evaluate(FRAME_PIXELS)
    assert len({first, second, third}) == 3
    history = page.locator("#history figcaption").all_inner_texts()
    assert history == ["prompt", "1: action 1", "2: action 2"]
    assert call(server.url, "/api/state")[1]["actions"] == [0, 1]
    for fmt in ("gif", "mp4"):
        with page.expect_download() as dl:
            page.click(f"#export-{fmt}")
        path = tmp_path / f"page.{fmt}"
        dl.value.save_as(path)
        assert len(decode_video(path.read_bytes())) == 3
    assert not errors


def test_page_key_map_is_saved(browser: Any, server: P.PlayServer) -> None:
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    page.locator(".prompt").nth(1).click()
    _wait_frame(page, 0)
    page.select_option("select[data-key='ArrowRight']", "3")  # action 4
    page.keyboard.press("ArrowRight")
    _wait_frame(page, 1)
    assert page.locator("#history figcaption").all_inner_texts()[-1] == "1: action 4"
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.input_value("select[data-key='ArrowRight']") == "3"
    saved = json.loads(page.evaluate("localStorage.getItem('genie-play-keymap')"))
    assert saved["ArrowRight"] == 3


def test_page_upload_prompt(browser: Any, server: P.PlayServer, tmp_path: Path) -> None:
    png = tmp_path / "mine.png"
    Image.fromarray(prompt_frame(5)).save(png)
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    n = page.locator(".prompt").count()
    page.set_input_files("#upload", str(png))
    page.wait_for_selector(".prompt.selected figcaption:text('mine.png')")
    assert page.locator(".prompt").count() == n + 1
    _wait_frame(page, 0)


def test_controls_page(browser: Any, server: P.PlayServer) -> None:
    page = browser.new_page()
    page.goto(server.url + "controls")
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    assert page.locator("tr.action").count() == 4
    assert page.locator(".examples img").count() >= 1
    assert "held out" in page.inner_text("#summary")


def test_cli_parses(tmp_path: Path) -> None:
    import argparse

    from pipelines.cli_play import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="group"))
    a = p.parse_args(["play", "--run", str(tmp_path), "--maskgit-steps", "5"])
    assert a.host == "127.0.0.1" and a.port == 0 and a.maskgit_steps == 5 and a.temperature == 2.0


CLI_SCRIPT = """
import argparse, sys
from pipelines.cli_play import register
p = argparse.ArgumentParser()
register(p.add_subparsers(dest="group"))
a = p.parse_args(sys.argv[1:])
sys.exit(a.fn(a))
"""


def test_cli_serves_until_ctrl_c(run_dir: Path, dataset: Path) -> None:
    """`genie play` prints the URL, serves, and exits 0 on SIGINT (Ctrl-C)."""
    cmd = [sys.executable, "-c", CLI_SCRIPT, "play", "--run", str(run_dir), "--data", str(dataset),
           "--maskgit-steps", "2"]  # fmt: skip
    # PYTHONFAULTHANDLER: should it hang, SIGABRT below makes it print every thread's stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C as in a shell
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        assert call(m.group(1), "/api/info")[1]["maskgit_steps"] == 2
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)  # reads the pipes: a full one cannot block it
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"genie play did not stop on SIGINT:\n{out}\n{err[-6000:]}") from None
        assert proc.returncode == 0, err[-3000:]
        assert "genie play: stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
