"""Choosing build-dataset's task runner by name (the runs themselves are in test_scale.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.flows.build_dataset import make_task_runner


def test_runner_names_map_to_task_runners() -> None:
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    threads = make_task_runner("threads", 3)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    assert isinstance(make_task_runner("processes", 2), ProcessPoolTaskRunner)
    local = make_task_runner("dask", 2)
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    remote = make_task_runner("dask://10.0.0.5:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"


@pytest.mark.parametrize("bad", ["spark", "threads://x", "dusk"])
def test_an_unknown_runner_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown runner"):
        make_task_runner(bad)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        make_task_runner("threads", 0)


def test_the_cli_refuses_an_unknown_runner_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = tmp_path / "sources.txt"
    sources.write_text("https://example.invalid/v.mp4\n")
    out = tmp_path / "data"
    code = main(
        ["dataset", "build", "--sources", str(sources), "--out", str(out), "--runner", "spark"]
    )
    assert code == 2 and "unknown --runner 'spark'" in capsys.readouterr().err
    assert not out.exists()
