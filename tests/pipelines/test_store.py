"""pipelines.store: the data root as a folder or an object store, the same behaviour either way.
The S3 cases talk to a real S3-compatible server on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.store import Store, is_url, normalize_root


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store.at(tmp_path / "root")
    new_bucket: Any = request.getfixturevalue("s3_server")
    return Store.at(new_bucket() + "/some/prefix/")


def test_roots_are_normalized(tmp_path: Path) -> None:
    assert normalize_root(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert normalize_root("s3://b/p/") == "s3://b/p"
    assert not is_url(tmp_path) and is_url("gs://b")
    assert Store.at("relative/dir").root == str(Path("relative/dir").resolve())


def test_write_read_list_and_remove(store: Store, tmp_path: Path) -> None:
    assert not store.exists("work/videos/a.json")
    assert store.read_json_or("work/videos/a.json", None) is None
    store.write_json("work/videos/a.json", {"b": 1, "a": [1, 2]})
    store.write_bytes("work/videos/b.json", b"{}")
    store.write_bytes("work/videos/.tmp-c.json.123", b"half")  # an interrupted write
    store.write_bytes("work/videos/sub/d.json", b"{}")
    assert store.read_json("work/videos/a.json") == {"a": [1, 2], "b": 1}
    # sorted keys, trailing newline: equal objects give equal bytes anywhere
    assert store.read_bytes("work/videos/a.json").endswith(b"}\n")
    assert store.keys("work/videos", "*.json") == ["work/videos/a.json", "work/videos/b.json"]
    assert store.keys("nothing/here") == []
    assert store.walk("work", ".json") == [
        "work/videos/a.json",
        "work/videos/b.json",
        "work/videos/sub/d.json",
    ]
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"\0" * 1000)
    store.put_file(src, "work/clips/v/c.mp4")
    assert store.size("work/clips/v/c.mp4") == 1000
    with store.open("work/clips/v/c.mp4") as fh:
        assert fh.read(10) == b"\0" * 10
    store.remove("work/clips/v/c.mp4")
    store.remove("work/clips/v/c.mp4")  # removing what is gone is fine
    assert not store.exists("work/clips/v/c.mp4")


def test_a_failed_write_leaves_nothing(store: Store) -> None:
    store.write_bytes("manifest.json", b"old")
    with pytest.raises(RuntimeError), store.writer("manifest.json") as tmp:
        tmp.write_bytes(b"new but unfinished")
        raise RuntimeError("killed")
    assert store.read_bytes("manifest.json") == b"old"
    assert store.keys("", "*") == ["manifest.json"]  # no temporary file left behind
    with store.writer("manifest.json") as tmp:
        tmp.write_bytes(b"new")
    assert store.read_bytes("manifest.json") == b"new"


def test_keys_cannot_escape_the_root(store: Store) -> None:
    with pytest.raises(ValueError, match="bad key"):
        store.read_bytes("work/../../etc/passwd")


def test_url_names_the_protocol(store: Store) -> None:
    url = store.url("shards/x.tar")
    if store.is_local:
        assert url.startswith("/") and store.local_path("shards/x.tar") == Path(url)
    else:
        assert url.startswith("s3://") and url.endswith("/some/prefix/shards/x.tar")
        assert store.local_path("shards/x.tar") is None


def test_the_clip_filter_model_loads_from_object_storage(s3_server: Any, tmp_path: Path) -> None:
    from filters.classifier import DEFAULT_MODEL_PATH, load_default
    from pipelines.build import BuildConfig
    from pipelines.finalize import load_model

    models = Store.at(s3_server() + "/models")
    for p in (DEFAULT_MODEL_PATH, DEFAULT_MODEL_PATH.with_suffix(".json")):
        models.put_file(p, p.name)
    sources = tmp_path / "sources.txt"
    sources.write_text("")
    cfg = BuildConfig(
        out=str(tmp_path / "d"), sources=sources, model_path=models.url(DEFAULT_MODEL_PATH.name)
    )
    model, shipped = load_model(cfg), load_default()
    assert model is not None and shipped is not None and model.version == shipped.version
    # a model without its card is refused, as it is from a folder
    models.remove(DEFAULT_MODEL_PATH.with_suffix(".json").name)
    with pytest.raises(ValueError, match="not found"):
        load_model(cfg)


def test_train_clip_filter_reads_and_writes_object_storage(
    prefect_harness: None, s3_server: Any, tmp_path: Path
) -> None:
    """The train-clip-filter flow with its build and its models folder both in a bucket: records
    as build-dataset writes them (features of synthetic clips), labels by video ID."""
    from filters.features import compute_features
    from pipelines.build import BuildConfig, Layout
    from pipelines.finalize import load_model
    from pipelines.flows.train_clip_filter import train_clip_filter
    from tests.filters.synthetic import GOOD_KINDS, KINDS, make_clip

    data = Store.at(s3_server() + "/build")
    labels = ["id,rating,kind"]
    for kind in KINDS:
        for seed in range(6 if kind in GOOD_KINDS else 3):
            vid = f"url-{kind}{seed}"
            clips = [
                {
                    "clip_id": f"{vid}_{c:08d}",
                    "features": compute_features(make_clip(kind, seed, c)),
                }
                for c in range(2)
            ]
            data.write_json(
                Layout.record(vid), {"video_id": vid, "url": f"https://x/{vid}.mp4", "clips": clips}
            )
            labels.append(f"{vid},{5 if kind in GOOD_KINDS else 1},{kind}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(labels) + "\n")
    models = data.root.rsplit("/", 1)[0] + "/models"
    res = train_clip_filter(data=data.root, labels=str(csv), out=models)
    assert res["model"] == f"{models}/{res['version']}/clip_filter.skops"
    store = Store.at(models)
    assert {"clip_filter.skops", "clip_filter.json", "report.md"} <= {
        k.rsplit("/", 1)[1] for k in store.keys(res["version"])
    }
    cfg = BuildConfig(
        out=str(tmp_path / "d"), sources=csv, model_path=f"{models}/clip_filter.skops"
    )
    model = load_model(cfg)  # the newest model, as a build would load it from the bucket
    assert model is not None and model.version == res["version"]
    assert res["metrics"]["roc_auc"] > 0.9
