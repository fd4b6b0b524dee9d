"""Clip classifier: training on synthetic videos, held-out per-kind recall, threshold, skops
save/load, refusal of mismatched features and of unexpected types, labels CSV, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV

from filters import classifier as clfmod
from filters.classifier import ALLOWED_TYPES, ClipClassifier, load_default
from filters.features import FEATURE_NAMES, compute_features
from filters.train import (
    FAMILIES,
    TrainResult,
    binarize_labels,
    choose_threshold,
    make_family,
    read_labels,
    train_classifier,
    write_report,
)
from tests.filters.synthetic import BAD_KINDS, GOOD_KINDS, KINDS, make_clip

TARGET = 0.9
# Held-out videos (seeds never seen in training, one clip each): every bad kind must be dropped
# at least this often, and gameplay kept at least this often. With 3 held-out clips per bad kind
# this means all 3; gameplay (9 clips) may lose 2. Measured: 1.0 for every kind on 15 held-out
# videos per kind (135 clips) with 5 training videos per bad kind.
MIN_KIND_RECALL = 0.75


def _dataset(
    seeds: range, clips: int
) -> tuple[list[dict[str, float]], list[int], list[str], list[str]]:
    X, labels, groups, kinds = [], [], [], []
    for kind in KINDS:
        # gameplay is one kind against eight bad ones: give it more videos so classes balance a bit
        kind_seeds = (
            range(seeds.start, seeds.start + 3 * len(seeds)) if kind in GOOD_KINDS else seeds
        )
        for seed in kind_seeds:
            for c in range(clips):
                X.append(compute_features(make_clip(kind, seed, c)))
                labels.append(5 if kind in GOOD_KINDS else 1)
                groups.append(f"{kind}-{seed}")
                kinds.append(kind)
    return X, labels, groups, kinds


@pytest.fixture(scope="module")
def trained() -> tuple[TrainResult, tuple[list[dict[str, float]], list[int], list[str], list[str]]]:
    data = _dataset(range(0, 4), clips=2)
    X, labels, groups, kinds = data
    # three middle ratings from one extra video: must be dropped as in the paper; and a re-encode
    # of gameplay labelled bad as a duplicate: not a content label, left out
    mid = [compute_features(make_clip("gameplay", 900, c)) for c in range(3)]
    dup = [compute_features(make_clip("gameplay", 0, c)) for c in range(2)]
    result = train_classifier(
        X + mid + dup, labels + [3, 2, 4, 1, 1], groups + ["mid"] * 3 + ["dup"] * 2,
        kinds + ["gameplay"] * 3 + ["duplicate"] * 2,
        target_precision=TARGET, seed=0, families=("logreg", "random_forest", "svm_rbf"),
        n_splits=3,
    )  # fmt: skip
    return result, data


def test_training_report_and_threshold(trained: tuple[TrainResult, tuple]) -> None:
    result, (X, labels, groups, kinds) = trained
    assert result.counts["dropped_middle"] == 3
    assert result.counts["excluded_kind"] == 2
    assert result.counts["good"] == 24 and result.counts["bad"] == 64
    assert {s.family for s in result.families} == {"logreg", "random_forest", "svm_rbf"}
    assert result.family == max(result.families, key=lambda s: s.average_precision).family
    # the threshold meets the target precision on the out-of-fold probabilities
    assert result.threshold_met and not result.warnings
    y = np.array([1 if lab == 5 else 0 for lab in labels])
    p = np.array(result.oof_proba)
    keep = p >= result.threshold
    assert (y[keep] == 1).mean() >= TARGET
    assert result.metrics["precision"] == pytest.approx((y[keep] == 1).mean())
    (tn, fp), (fn, tp) = result.confusion
    assert tp + fn == 24 and tn + fp == 64 and tp == keep[y == 1].sum()
    assert set(result.bad_kind_recall) == set(BAD_KINDS)
    assert result.metrics["roc_auc"] > 0.95


def test_held_out_videos_per_kind_recall(trained: tuple[TrainResult, tuple]) -> None:
    result, _ = trained
    X, _, _, kinds = _dataset(range(100, 103), clips=1)
    keep = result.classifier.score(X) >= result.classifier.threshold
    kinds_a = np.array(kinds)
    for kind in BAD_KINDS:
        dropped = float((~keep[kinds_a == kind]).mean())
        assert dropped >= MIN_KIND_RECALL, f"{kind}: only {dropped:.2f} of held-out clips dropped"
    kept = float(keep[kinds_a == "gameplay"].mean())
    assert kept >= MIN_KIND_RECALL, f"gameplay: only {kept:.2f} of held-out clips kept"


def test_save_load_round_trip(trained: tuple[TrainResult, tuple], tmp_path: Path) -> None:
    result, (X, *_) = trained
    clf = result.classifier
    path = clf.save(tmp_path)
    assert path.name == "clip_filter.skops" and path.with_suffix(".json").exists()
    card = json.loads(path.with_suffix(".json").read_text())
    for key in ("data_hash", "feature_names", "feature_version", "metrics", "threshold",
                "family", "sklearn_version", "version", "model_sha256"):  # fmt: skip
        assert key in card, key
    loaded = ClipClassifier.load(path)
    assert loaded.version == clf.version and loaded.threshold == clf.threshold
    assert loaded.feature_names == FEATURE_NAMES
    assert np.array_equal(loaded.score(X), clf.score(X))
    assert loaded.explain(X[0]) == clf.explain(X[0])
    # saving the loaded model again gives byte-identical files (the version is a content hash)
    again = loaded.save(tmp_path / "again")
    assert again.read_bytes() == path.read_bytes()


def test_explain_names_the_features_for_this_clip(trained: tuple[TrainResult, tuple]) -> None:
    result, (X, labels, _, kinds) = trained
    clf = result.classifier
    top = clf.explain(X[kinds.index("noise")], k=5)
    assert len(top) == 5 and all(name in FEATURE_NAMES for name, _ in top)
    mags = [abs(v) for _, v in top]
    assert mags == sorted(mags, reverse=True) and mags[0] > 0
    # the documented method, recomputed by hand: log-odds change when the feature is set to the
    # training median
    x = dict(X[kinds.index("noise")])
    name, value = top[0]
    median = clf.card["baseline"][FEATURE_NAMES.index(name)]
    p, q = clf.score([x])[0], clf.score([{**x, name: median}])[0]
    p, q = np.clip([p, q], 1e-6, 1 - 1e-6)
    assert value == pytest.approx(np.log(p / (1 - p)) - np.log(q / (1 - q)), rel=1e-9)


def test_explain_linear_is_coef_times_standardized_value(
    trained: tuple[TrainResult, tuple],
) -> None:
    X, labels, groups, kinds = trained[1]
    clf = train_classifier(X, labels, groups, kinds, families=("logreg",)).classifier
    cal = clf.model.calibrated_classifiers_[0]
    pipe, slope = cal.estimator, cal.calibrators[0].a_  # P = sigmoid(-(a * f + b))
    scale, lr = pipe.named_steps["scale"], pipe.named_steps["clf"]
    x = np.array([X[0][n] for n in FEATURE_NAMES])
    base = np.array(clf.card["baseline"])
    expected = -slope * lr.coef_[0] * (x - base) / scale.scale_
    got = dict(clf.explain(X[0], k=len(FEATURE_NAMES)))
    p = clf.score([X[0]])[0]
    if 1e-5 < p < 1 - 1e-5:  # away from the logit clipping
        for j, name in enumerate(FEATURE_NAMES):
            assert got[name] == pytest.approx(expected[j], rel=1e-4, abs=1e-6), name


def _edit_card(path: Path, **changes: object) -> None:
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def test_load_refuses_mismatched_features(
    trained: tuple[TrainResult, tuple], tmp_path: Path
) -> None:
    clf = trained[0].classifier
    path = clf.save(tmp_path / "a")
    _edit_card(path, feature_names=list(FEATURE_NAMES[:-1]))
    with pytest.raises(ValueError, match="features do not match"):
        ClipClassifier.load(path)
    path = clf.save(tmp_path / "b")
    _edit_card(path, feature_version="0-old")
    with pytest.raises(ValueError, match="features do not match"):
        ClipClassifier.load(path)
    path = clf.save(tmp_path / "c")
    path.write_bytes(path.read_bytes() + b"\0")  # tampered model file
    with pytest.raises(ValueError, match="sha256"):
        ClipClassifier.load(path)


class Smuggled(ClassifierMixin, BaseEstimator):
    """A type no clip-filter model contains: loading must refuse it, not construct it."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Smuggled:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.full((len(X), 2), 0.5)


def test_load_refuses_unexpected_types(trained: tuple[TrainResult, tuple], tmp_path: Path) -> None:
    import hashlib

    path = trained[0].classifier.save(tmp_path)
    evil = sio.dumps(Smuggled().fit(np.zeros((2, 1)), np.array([0, 1])))
    path.write_bytes(evil)
    # a consistent card, so that the type check (not the hash check) is what refuses it
    _edit_card(path, model_sha256=hashlib.sha256(evil).hexdigest())
    with pytest.raises(ValueError, match="unexpected types.*Smuggled"):
        ClipClassifier.load(path)


def test_every_family_only_needs_allowed_types() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.random((24, len(FEATURE_NAMES))), np.arange(24) % 2
    small = {"random_forest": {"clf__n_estimators": 3}, "hist_gb": {"clf__max_iter": 3}}  # speed
    for fam in FAMILIES:
        est = make_family(fam, 0).set_params(**small.get(fam, {}))  # types do not depend on size
        model = CalibratedClassifierCV(est, cv=2, ensemble=False).fit(X, y)
        untrusted = set(sio.get_untrusted_types(data=sio.dumps(model)))
        assert untrusted <= ALLOWED_TYPES, (fam, untrusted - ALLOWED_TYPES)


def test_load_default(
    trained: tuple[TrainResult, tuple], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clfmod, "DEFAULT_MODEL_PATH", tmp_path / "models" / "clip_filter.skops")
    assert load_default() is None
    trained[0].classifier.save(tmp_path / "models")
    loaded = load_default()
    assert loaded is not None and loaded.version == trained[0].classifier.version


def test_score_rejects_bad_features(trained: tuple[TrainResult, tuple]) -> None:
    clf = trained[0].classifier
    feats = dict(trained[1][0][0])
    assert clf.score([]).shape == (0,)
    with pytest.raises(ValueError, match="missing feature"):
        clf.score([{k: v for k, v in feats.items() if k != "diff_mean"}])
    with pytest.raises(ValueError, match="not finite"):
        clf.score([{**feats, "diff_mean": float("nan")}])


def test_write_report(trained: tuple[TrainResult, tuple], tmp_path: Path) -> None:
    write_report(trained[0], tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["model_version"] == trained[0].classifier.version
    assert rep["threshold"] == trained[0].threshold and len(rep["families"]) == 3
    md = (tmp_path / "report.md").read_text()
    assert "| family |" in md and "menu" in md
    assert (tmp_path / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_choose_threshold() -> None:
    y = np.array([1, 1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    # recall 2/3 at precision 1: keep {0.9, 0.8}, threshold midway to the next score (0.7)
    assert choose_threshold(y, p, 0.9) == (pytest.approx(0.75), True)
    assert choose_threshold(y, p, 0.7) == (pytest.approx(0.35), True)  # recall 1, precision 3/4
    # equal recall: the smallest kept set wins (fewer bad clips kept)
    t, met = choose_threshold(np.array([1, 0, 0]), np.array([0.9, 0.5, 0.1]), 0.3)
    assert (t, met) == (pytest.approx(0.7), True)
    # unreachable target: the most precise threshold, flagged
    assert choose_threshold(np.array([0, 1]), np.array([0.9, 0.1]), 0.9) == (0.1, False)


def test_labels() -> None:
    assert binarize_labels([5, 1, 3, "good", "BAD", "5", 2, 4]).tolist() == [
        1,
        0,
        -1,
        1,
        0,
        1,
        -1,
        -1,
    ]
    with pytest.raises(ValueError, match="label 0"):
        binarize_labels([6])


def test_read_labels(tmp_path: Path) -> None:
    ok = tmp_path / "ok.csv"
    ok.write_text("id,rating,kind,note\nv1_00000000,5,gameplay,\nv2_00016000,1,menu,title screen\n"
                  "v3_00000000,good,,\n")  # fmt: skip
    assert read_labels(ok) == {
        "v1_00000000": (5, "gameplay", None),
        "v2_00016000": (1, "menu", "title screen"),
        "v3_00000000": ("good", None, None),
    }
    minimal = tmp_path / "min.csv"
    minimal.write_text("id,rating\na,3\n")
    assert read_labels(minimal) == {"a": (3, None, None)}
    for name, text, match in [
        ("nocol.csv", "id,score\na,5\n", "header"),
        ("badrating.csv", "id,rating\na,5\nb,7\n", r"bad.*:3: rating '7'"),
        ("dup.csv", "id,rating\na,5\na,1\n", "duplicate id 'a'"),
        ("empty.csv", "id,rating\n,5\n", "empty id"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_labels(path)
