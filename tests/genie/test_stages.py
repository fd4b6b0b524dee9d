"""genie.stages / evaluate / card end to end on the tiny preset: two 1-clip shards, a few steps each."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from genie import checkpoint as ckpt
from genie import stages as S


def make_shards(root: Path, n_shards: int = 2) -> Path:
    """A build-dataset folder: shards/test-{i:06d}.tar with one 16 s 160x90 10 FPS clip each."""
    clips = root / "clips"
    clips.mkdir(parents=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10",
         "-t", str(16 * n_shards), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt",
         "yuv420p", "-g", "160", "-keyint_min", "160", "-sc_threshold", "0", "-f", "segment",
         "-segment_time", "16", "-reset_timestamps", "1", str(clips / "c%03d.mp4")],
        check=True)  # fmt: skip
    (root / "shards").mkdir()
    entries = []
    for i in range(n_shards):
        rel = f"shards/test-{i:06d}.tar"
        clip_id = f"vid{i}_{i * 16000:08d}"
        meta = {"clip_id": clip_id, "video_id": f"vid{i}", "source_url": "test://", "start_s": 0.0,
                "fps": 10, "width": 160, "height": 90, "n_frames": 160, "features": {},
                "score": 1.0}  # fmt: skip
        with wds.TarWriter(str(root / rel)) as sink:
            sink.write(
                {
                    "__key__": clip_id,
                    "mp4": (clips / f"c{i:03d}.mp4").read_bytes(),
                    "json": json.dumps(meta).encode(),
                }
            )
        sha = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        entries.append({"path": rel, "n_samples": 1, "sha256": sha})
    (root / "manifest.json").write_text(json.dumps({"version": "v-stages", "shards": entries}))
    return root


KW = dict(batch_size=2, num_workers=0, overrides={"log_every": 1})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tokenizer + LAM + tokenize + dynamics (2 steps, then 3, 'killed' before its marker, then 4)."""
    data = make_shards(tmp_path_factory.mktemp("data"))
    run_dir = tmp_path_factory.mktemp("run")
    res = {"data": data, "run": run_dir}
    res["tokenizer"] = S.train_tokenizer(data, run_dir, "tiny", 3, **KW)
    res["lam"] = S.train_lam(data, run_dir, "tiny", 3, **KW)
    res["tokenize"] = S.tokenize(data, run_dir, "tiny")
    res["dyn2"] = S.train_dynamics(run_dir, "tiny", 2, **KW)
    res["dyn3"] = S.train_dynamics(run_dir, "tiny", 3, **KW)  # done at 2: more steps continue
    (run_dir / "dynamics" / "DONE.json").unlink()  # killed after its checkpoint, before DONE
    res["dynamics"] = S.train_dynamics(run_dir, "tiny", 4, **KW)
    return res


def test_stages_write_checkpoints_markers_and_tokens(run: dict) -> None:
    for stage in ("tokenizer", "lam", "tokenize", "dynamics"):
        r = run[stage]
        done = S.read_marker(run["run"], stage)
        assert done is not None and done["fingerprint"] == r.fingerprint and not r.skipped
        assert done["inputs"]["code_version"] == S.code_version()
        json.dumps(r.to_dict())  # JSON-able
    assert (
        run["tokenizer"].steps == 3 and Path(run["tokenizer"].checkpoint).name == "step_0000003.pt"
    )
    assert math.isfinite(run["tokenizer"].metrics["loss"]) and "psnr" in run["tokenizer"].metrics
    assert run["lam"].inputs["dataset_version"] == "v-stages"
    # the tokenize fingerprint depends on both trained models
    assert set(run["tokenize"].inputs["upstream"]) == {"tokenizer", "lam"}
    manifest = json.loads((run["run"] / "tokens" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 2 and run["tokenize"].metrics["clips"] == 2
    import genie.data as D

    batch = next(iter(D.eval_token_batches(run["run"] / "tokens", D.VideoDataConfig(frames=16))))
    assert batch["tokens"].shape[1:] == (16, 8, 8)  # tiny 32x32, patch 4
    assert batch["actions"].shape[1] == 16 and int(batch["actions"].max()) < 4


def test_second_call_is_skipped(run: dict) -> None:
    before = ckpt.list_checkpoints(run["run"] / "tokenizer")
    again = S.train_tokenizer(run["data"], run["run"], "tiny", 3, **KW)
    assert again.skipped and again.fingerprint == run["tokenizer"].fingerprint
    assert ckpt.list_checkpoints(run["run"] / "tokenizer") == before
    assert S.train_dynamics(run["run"], "tiny", 4, **KW).skipped
    assert S.tokenize(run["data"], run["run"], "tiny").skipped


def test_killed_dynamics_resumes_from_newest_checkpoint(run: dict) -> None:
    assert (run["dyn2"].steps, run["dyn3"].steps, run["dynamics"].steps) == (2, 3, 4)
    assert run["dyn3"].fingerprint != run["dyn2"].fingerprint
    rows = [
        json.loads(x) for x in (run["run"] / "dynamics" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # continued from 2 and 3, never restarted
    assert Path(run["dynamics"].checkpoint).name == "step_0000004.pt"
    # genie.play rebuilds the models from the dynamics checkpoint's sidecar
    side = json.loads(ckpt.sidecar_path(run["dynamics"].checkpoint).read_text())
    assert side["genie_config"]["dynamics"]["grid_h"] == 8 and side["preset"] == "tiny"


def test_changed_inputs_refuse_or_rerun(run: dict, tmp_path: Path) -> None:
    with pytest.raises(S.StageChanged, match="seed"):
        S.train_tokenizer(run["data"], run["run"], "tiny", 3, **{**KW, "seed": 1})
    with pytest.raises(S.StageChanged, match="steps: 2 < 3 done"):
        S.train_tokenizer(run["data"], run["run"], "tiny", 2, **KW)
    r1 = S.train_lam(run["data"], tmp_path, "tiny", 1, **KW)
    r2 = S.train_lam(run["data"], tmp_path, "tiny", 1, **{**KW, "seed": 1}, on_change="rerun")
    assert r1.fingerprint != r2.fingerprint and not r2.skipped
    assert len(list(tmp_path.glob("lam.superseded-*"))) == 1
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        S.tokenize(run["data"], tmp_path, "tiny")


def test_evaluate_and_card(run: dict) -> None:
    from genie.card import write_model_card
    from genie.evaluate import evaluate

    m = evaluate(run["run"], run["data"], n_clips=2, steps=2, horizon=5)
    saved = json.loads((run["run"] / "eval" / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(m["psnr"])
    assert math.isfinite(m["psnr"]) and 0.0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1
    assert isinstance(m["delta_psnr"], float) and m["delta_psnr_t"] == 4
    assert len(m["rollout_psnr_inferred"]) == 5 and 0 < m["lam_usage"] <= 1
    assert m["fvd"] is None and "I3D" in m["fvd_reason"]
    html = (run["run"] / "eval" / "report.html").read_text()
    gif = html.split('src="data:image/gif;base64,')[1].split('"')[0]
    assert base64.b64decode(gif)[:6] in (b"GIF87a", b"GIF89a")
    assert "data:image/png;base64," in html

    lineage = {"dataset_version": "v-stages", "sources_hash": "abc", "classifier_version": "clf-1"}
    path = write_model_card(run["run"], lineage)
    card = json.loads((run["run"] / "model_card.json").read_text())
    assert path.name == "MODEL_CARD.md" and "clf-1" in path.read_text()
    assert card["lineage"]["sources_hash"] == "abc" and card["lineage"]["code_version"]
    assert card["lineage"]["presets"] == {"tokenizer": "tiny", "lam": "tiny", "dynamics": "tiny"}
    assert card["stages"]["dynamics"]["steps"] == 4 and card["parameters"]["total"] > 0
    assert card["eval"]["psnr"] == pytest.approx(m["psnr"])


def test_entry_point_under_torchrun(run: dict, tmp_path: Path) -> None:
    """python -m genie.stages under torchrun, 2 CPU ranks (one shard each): one marker, one result."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "genie.stages", "lam", "--data", str(run["data"]), "--run-dir", str(tmp_path),
           "--preset", "tiny", "--steps", "1", "--batch-size", "1", "--num-workers", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)  # rank 0 alone prints its result
    assert res["stage"] == "lam" and not res["skipped"]
    assert S.read_marker(tmp_path, "lam")["fingerprint"] == res["fingerprint"]
    side = json.loads(ckpt.sidecar_path(res["checkpoint"]).read_text())
    assert side["world_size"] == 2


def test_cli_commands(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    assert main(["tokenize", "--data", str(run["data"]), "--run", str(run["run"])]) == 0
    assert "skipped" in capsys.readouterr().out
    # the fixture trained with log_every=1: other inputs, so the CLI refuses (exit 2) and says why
    args = ["train", "dynamics", "--preset", "tiny", "--out", str(run["run"]), "--steps", "4"]
    assert main([*args, "--batch-size", "2", "--num-workers", "0"]) == 2
    assert "overrides" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path), "--data", str(run["data"])]) == 2
    assert main(["train", "lam", "--data", str(tmp_path), "--preset", "tiny", "--out", "x"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_a_model_that_ignores_actions_has_delta_psnr_near_zero(run: dict, tmp_path: Path) -> None:
    """The paper's controllability metric on a dynamics model blind to actions: its rollouts with
    inferred and with random actions are the same, so delta-t PSNR is ~0."""
    import shutil

    import torch

    from genie.evaluate import evaluate

    blind = tmp_path / "blind"
    shutil.copytree(run["run"], blind)
    pt = ckpt.latest_checkpoint(blind / "dynamics")
    assert pt is not None
    state = torch.load(pt, weights_only=True)
    state["model"]["action_emb.weight"].zero_()  # every action adds the same (zero) embedding
    torch.save(state, pt)
    m = evaluate(blind, run["data"], n_clips=2, steps=2, horizon=5)
    assert abs(m["delta_psnr"]) < 1e-6
    # and the trained model (actions do reach it) is not that model
    assert torch.load(ckpt.latest_checkpoint(run["run"] / "dynamics"), weights_only=True)["model"]["action_emb.weight"].abs().sum() > 0
