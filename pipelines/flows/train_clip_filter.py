"""The ``train-clip-filter`` flow: labelled clips of a build -> a versioned clip classifier and report.

A thin shell over :mod:`pipelines.clip_filter`; the model card and report are also Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.clip_filter import Examples, collect_examples, summary_rows, train_and_save
from pipelines.store import is_url


@task(name="collect-examples", cache_policy=NO_CACHE)
def collect_task(data: str, labels: Path) -> Examples:
    return collect_examples(data, labels)


@task(name="train-and-evaluate", cache_policy=NO_CACHE)
def train_task(ex: Examples, out: str, target_precision: float, seed: int) -> dict[str, Any]:
    result, version_dir = train_and_save(ex, out, target_precision, seed)
    where = out.rstrip("/") + "/" + version_dir.name if is_url(out) else str(version_dir)
    create_table_artifact(
        key="clip-filter-metrics",
        table=summary_rows(result),
        description=f"clip filter {result.classifier.version} ({result.family})",
    )
    create_markdown_artifact(
        key="clip-filter-report", markdown=(version_dir / "report.md").read_text()
    )
    return {
        "version": result.classifier.version,
        "family": result.family,
        "threshold": result.threshold,
        "threshold_met": result.threshold_met,
        "metrics": result.metrics,
        "bad_kind_recall": result.bad_kind_recall,
        "model": f"{where}/clip_filter.skops",
        "report": f"{where}/report.md",
    }


@flow(name="train-clip-filter")
def train_clip_filter(
    data: str = "data/dataset",
    labels: str = "data/sample-corpus/labels.csv",
    out: str = "data/models/clip-filter",
    target_precision: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Train, evaluate (group-aware CV) and version the clip-quality classifier.

    Args:
        data: a build-dataset output folder or URL (its clips' features are reused, nothing is
            decoded).
        labels: a CSV ``id,rating[,kind][,note]``; ids are clip IDs, video IDs or URL file stems.
        out: where versioned models go, a folder or URL; ``out/clip_filter.skops`` is the newest.
        target_precision: the precision of kept clips the threshold must reach.
        seed: seeds folds and models.
    """
    ex = collect_task(data, Path(labels))
    get_run_logger().info("%d labelled clips from %d videos", len(ex.labels), len(set(ex.groups)))
    out = out if is_url(out) else str(Path(out).resolve())
    return train_task(ex, out, target_precision, seed)
