"""train-clip-filter as a Prefect-free stage: labelled clips of a build -> a versioned classifier.

The examples are the clips a build-dataset run cut (their features are in the per-video records,
so nothing is decoded again). A labels CSV names videos or clips: a row's ``id`` may be a clip ID, a
video ID, or, for direct links, the file name stem of the video's URL (what the sample corpus's
``labels.csv`` uses). A clip takes its own label if it has one, else its video's.

Output folder layout (versioned: a model never overwrites another)::

    OUT/{version}/clip_filter.skops, clip_filter.json (model card), report.{json,md}, pr_curve.png
    OUT/clip_filter.skops, OUT/clip_filter.json   the newest model (what build-dataset loads)

The build folder and OUT may be fsspec URLs (s3://...), as build-dataset's data root may be.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from filters.train import TrainResult, read_labels, train_classifier, write_report
from pipelines.store import Store, is_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Examples:
    features: list[dict[str, float]]
    labels: list[int | str]
    groups: list[str]  # video IDs: cross-validation never splits a video
    kinds: list[str]
    clip_ids: list[str]
    unmatched: list[str]  # label IDs that matched no clip


def _url_stem(url: str) -> str:
    return Path(unquote(urlsplit(url).path)).stem


def collect_examples(data_dir: str | Path, labels_csv: Path) -> Examples:
    """Pair every labelled clip of a build (a folder or an fsspec URL) with its features.

    Raises:
        ValueError: when no labelled clip is found (wrong data folder or ID scheme).
    """
    labels = read_labels(labels_csv)
    feats: list[dict[str, float]] = []
    ys: list[int | str] = []
    groups: list[str] = []
    kinds: list[str] = []
    cids: list[str] = []
    used: set[str] = set()
    store = Store.at(data_dir)
    recs = store.read_json_many(store.keys("work/videos", "*.json"))
    for rec_key in sorted(recs):
        rec = recs[rec_key]
        vkeys = [rec["video_id"], _url_stem(rec["url"])]
        for cl in rec.get("clips") or []:
            key = next((k for k in (cl["clip_id"], *vkeys) if k in labels), None)
            if key is None:
                continue
            rating, kind, _ = labels[key]
            used.add(key)
            feats.append(cl["features"])
            ys.append(rating)
            groups.append(rec["video_id"])
            kinds.append(kind or ("gameplay" if str(rating) in ("good", "5") else "unknown"))
            cids.append(cl["clip_id"])
    if not feats:
        raise ValueError(f"no clip under {data_dir} matches an id in {labels_csv}")
    unmatched = sorted(set(labels) - used)
    if unmatched:
        log.info(
            "%d labels matched no clip (videos with no clips, or not in this build)", len(unmatched)
        )
    return Examples(feats, ys, groups, kinds, cids, unmatched)


def train_and_save(
    ex: Examples, out: str | Path, target_precision: float = 0.9, seed: int = 0
) -> tuple[TrainResult, Path]:
    """Train, write the versioned model and report, and make it the newest model under ``out``.

    ``out`` may be an fsspec URL: the models folder is made in a local temporary folder and
    uploaded, the version's files first and the newest model's card last. Returns the version's
    local folder (the temporary one for a URL: read it before it goes).
    """
    result = train_classifier(
        ex.features, ex.labels, ex.groups, ex.kinds, target_precision=target_precision, seed=seed
    )
    if is_url(out) and not str(out).startswith("file://"):
        local = Path(tempfile.mkdtemp(prefix="genie-clip-filter-"))
        version_dir = _save(result, local)
        store = Store.at(out)
        for f in sorted(version_dir.iterdir()):
            store.put_file(f, f"{version_dir.name}/{f.name}")
        for name in ("clip_filter.skops", "clip_filter.json"):
            store.put_file(local / name, name)
        return result, version_dir
    return result, _save(result, Path(str(out).removeprefix("file://")))


def _save(result: TrainResult, out: Path) -> Path:
    version_dir = Path(out) / result.classifier.version
    model_path = result.classifier.save(version_dir)
    write_report(result, version_dir)
    for name in (model_path.name, model_path.with_suffix(".json").name):
        tmp = Path(out) / f".tmp-{name}"
        shutil.copyfile(version_dir / name, tmp)
        tmp.replace(Path(out) / name)
    log.info(
        "clip filter %s (%s): threshold %.3f",
        result.classifier.version,
        result.family,
        result.threshold,
    )
    return version_dir


def summary_rows(result: TrainResult) -> list[dict[str, Any]]:
    """A small table for people: the metrics and per-kind recall."""
    rows: list[dict[str, Any]] = [
        {"metric": k, "value": round(v, 4)} for k, v in result.metrics.items()
    ]
    rows += [
        {"metric": f"bad recall: {k}", "value": round(v, 4)}
        for k, v in result.bad_kind_recall.items()
    ]
    rows += [
        {"metric": f"good recall: {k}", "value": round(v, 4)}
        for k, v in result.good_kind_recall.items()
    ]
    rows.append({"metric": "threshold", "value": round(result.threshold, 4)})
    return rows
