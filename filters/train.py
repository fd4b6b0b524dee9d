"""Train the clip classifier from rated clips: group-aware CV, family choice, calibration, threshold.

Labels follow the paper (Bruce et al., 2024, appendix): clips rated 1-5 for quality; the binary
classifier learns 5 (good) against 1 (bad) and the middle ratings 2-4 are dropped, because they are
the ambiguous ones and only blur the decision boundary. Labels may also be "good"/"bad".

Procedure (``train_classifier``):
0. Clips whose kind is in ``NON_CONTENT_KINDS`` (duplicate, corrupt, ...) are left out: their
   badness is not in the pixels, and other pipeline steps catch them.
1. Folds by video (``StratifiedGroupKFold`` on ``groups``): clips of one video are never split
   across folds, since they share look and layout and would leak.
2. Each family (logistic regression, random forest, histogram gradient boosting, RBF SVM) is a
   Pipeline scored by out-of-fold (OOF) average precision of "good" (ties: ROC-AUC).
3. The best family is wrapped in ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` over
   the same folds: one model refitted on all data plus one sigmoid fitted on OOF decision values.
4. The threshold comes from the OOF probabilities (the same sigmoid applied to the same OOF
   decision values): the highest recall of good clips whose OOF precision is >=
   ``target_precision``, placed midway in the gap below the lowest kept OOF score. If no
   threshold reaches it, the one with the highest precision is used and a warning is recorded in
   the result and the report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from filters.classifier import ClipClassifier, feature_matrix
from filters.features import FEATURE_NAMES, FEATURE_VERSION

logger = logging.getLogger(__name__)

FAMILIES = ("logreg", "random_forest", "hist_gb", "svm_rbf")

# Bad for reasons no clip feature can see: the file (corrupt, not a video, audio only, too short)
# or its relation to other videos (duplicate: a re-encode of good gameplay looks exactly like it).
# Other steps (probe, dedup) catch these. Training on them only teaches the classifier that some
# gameplay is bad: on the sample corpus, 5 duplicate clips cut gameplay recall at precision 0.9
# from 0.97 to 0.29.
NON_CONTENT_KINDS = frozenset({"duplicate", "corrupt", "not_video", "audio_only", "too_short"})


def make_family(name: str, seed: int) -> Pipeline:
    """An unfitted Pipeline for one model family (class_weight balances good vs bad)."""
    if name == "logreg":
        steps: list[tuple[str, Any]] = [
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")),
        ]
    elif name == "random_forest":
        steps = [("clf", RandomForestClassifier(
            n_estimators=100, min_samples_leaf=2, class_weight="balanced", n_jobs=1,
            random_state=seed))]  # fmt: skip
    elif name == "hist_gb":
        steps = [("clf", HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.1, class_weight="balanced", early_stopping=False,
            random_state=seed))]  # fmt: skip
    elif name == "svm_rbf":
        steps = [("scale", StandardScaler()), ("clf", SVC(C=1.0, class_weight="balanced"))]
    else:
        raise ValueError(f"unknown model family {name!r}; choose from {FAMILIES}")
    return Pipeline(steps)


def binarize_labels(labels: Sequence[int | str]) -> np.ndarray:
    """Ratings 5 -> 1 (good), 1 -> 0 (bad), 2-4 -> -1 (dropped); "good"/"bad" -> 1/0.

    Raises:
        ValueError: on anything else, naming the position.
    """
    out = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        s = str(lab).strip().lower()
        if s == "good":
            out[i] = 1
        elif s == "bad":
            out[i] = 0
        elif s in {"1", "2", "3", "4", "5"}:
            out[i] = {"5": 1, "1": 0}.get(s, -1)
        else:
            raise ValueError(f"label {i}: {lab!r} is not a 1-5 rating or good/bad")
    return out


@dataclass(frozen=True)
class FamilyScore:
    family: str
    average_precision: float  # OOF, "good" is positive
    roc_auc: float
    fit_seconds: float  # all folds


@dataclass
class TrainResult:
    classifier: ClipClassifier
    family: str
    threshold: float
    target_precision: float
    threshold_met: bool
    metrics: dict[str, float]  # OOF at the threshold: precision, recall, roc_auc, average_precision
    confusion: list[list[int]]  # [[tn, fp], [fn, tp]], good is positive, OOF
    bad_kind_recall: dict[str, float]  # per kind: fraction of its bad clips that are dropped
    good_kind_recall: dict[str, float]  # per kind: fraction of its good clips that are kept
    families: list[FamilyScore]
    counts: dict[str, int]  # good, bad, dropped_middle (2-4), excluded_kind, groups, folds
    pr_curve: dict[str, list[float]]  # OOF precision/recall/thresholds
    warnings: list[str] = field(default_factory=list)
    oof_proba: list[float] = field(default_factory=list)  # per kept clip, in input order


def _oof_raw(est: Pipeline, X: np.ndarray, y: np.ndarray, folds: list[Any]) -> np.ndarray:
    """Out-of-fold decision values (decision_function if the model has one, else P(good)), the
    same response CalibratedClassifierCV calibrates."""
    out = np.zeros(len(y))
    for tr, te in folds:
        m = clone(est).fit(X[tr], y[tr])
        out[te] = m.decision_function(X[te]) if hasattr(m, "decision_function") else (
            m.predict_proba(X[te])[:, 1])  # fmt: skip
    return out


def choose_threshold(y: np.ndarray, p: np.ndarray, target: float) -> tuple[float, bool]:
    """Threshold of max recall of good (y == 1) with precision(p >= t) >= target.

    Of the thresholds giving that same kept set, the one midway between the lowest kept score and
    the next score below it: the OOF metrics are the same anywhere in that gap, and the middle
    leaves a margin both ways for unseen clips instead of sitting on a training score.

    Returns:
        (threshold, met). If no threshold meets the target: the one of highest precision (ties:
        higher recall), and met=False.
    """
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    ends = np.flatnonzero(np.append(ps[1:] != ps[:-1], True))  # last index of each tied value
    ts = ps[ends]  # candidate thresholds, descending: the kept set grows as t falls
    tp = np.cumsum(ys == 1)[ends]
    prec = tp / (ends + 1)
    ok = np.flatnonzero(prec >= target)
    met = bool(ok.size)
    if met:
        # max recall among the qualifying thresholds; of equal recall, the fewest clips kept
        i = int(ok[tp[ok] == tp[ok].max()][0])
    else:
        i = int(np.lexsort((-tp, -prec))[0])
    t = float(ts[i]) if i + 1 == ts.size else float((ts[i] + ts[i + 1]) / 2)
    return t, met


def data_hash(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(_canonical_list([str(g) for g in groups]))
    return h.hexdigest()[:16]


def _canonical_list(items: list[str]) -> bytes:
    return json.dumps(items, separators=(",", ":")).encode()


def train_classifier(
    X: Sequence[Mapping[str, float]],
    labels: Sequence[int | str],
    groups: Sequence[str],
    kinds: Sequence[str] | None = None,
    target_precision: float = 0.9,
    seed: int = 0,
    families: tuple[str, ...] = FAMILIES,
    n_splits: int = 5,
    exclude_kinds: Collection[str] = NON_CONTENT_KINDS,
) -> TrainResult:
    """Fit, compare, calibrate and threshold a clip classifier (see the module docstring).

    Args:
        X: per clip, a feature dict (FEATURE_NAMES keys).
        labels: per clip, a 1-5 rating or "good"/"bad".
        groups: per clip, its video id (folds never split a video).
        kinds: per clip, an optional content kind ("gameplay", "menu", ...) for per-kind recall.
        target_precision: OOF precision of kept clips the threshold must reach.
        seed: seeds the folds and the stochastic models.
        families: model families to compare (subset of FAMILIES).
        n_splits: folds, reduced if a class has fewer videos.
        exclude_kinds: kinds left out of training (see NON_CONTENT_KINDS).

    Raises:
        ValueError: mismatched lengths, fewer than 2 videos of either class, unknown labels.
    """
    n = len(X)
    if not (len(labels) == len(groups) == n and (kinds is None or len(kinds) == n)):
        raise ValueError("X, labels, groups (and kinds) must have the same length")
    y_all = binarize_labels(labels)
    excluded = np.array([kk in exclude_kinds for kk in kinds] if kinds is not None else [False] * n)
    if excluded.any():
        logger.info(
            "left out %d clips of non-content kinds %s", excluded.sum(), sorted(exclude_kinds)
        )
    use = (y_all >= 0) & ~excluded
    Xm = feature_matrix([x for x, u in zip(X, use, strict=True) if u])
    y = y_all[use]
    g = np.asarray(groups, dtype=object)[use]
    k = np.asarray(kinds, dtype=object)[use] if kinds is not None else None
    n_groups = {c: len(set(g[y == c])) for c in (0, 1)}
    splits = min(n_splits, n_groups[0], n_groups[1])
    if splits < 2:
        raise ValueError(
            f"need >= 2 videos of each class, got good={n_groups[1]} bad={n_groups[0]}"
        )
    folds = list(
        StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed).split(Xm, y, g)
    )
    for tr, _ in folds:  # rare with few videos: a fold that trains on one class cannot fit
        if len(set(y[tr])) < 2:
            raise ValueError(
                f"a {splits}-fold split by video left a fold with one class; add videos"
            )

    scores: list[FamilyScore] = []
    raw: dict[str, np.ndarray] = {}
    for fam in families:
        t0 = time.perf_counter()
        raw[fam] = _oof_raw(make_family(fam, seed), Xm, y, folds)
        scores.append(
            FamilyScore(
                fam,
                float(average_precision_score(y, raw[fam])),
                float(roc_auc_score(y, raw[fam])),
                time.perf_counter() - t0,
            )
        )
        logger.info("family %s: %s", fam, scores[-1])
    best = max(scores, key=lambda s: (s.average_precision, s.roc_auc, -families.index(s.family)))

    model = CalibratedClassifierCV(
        make_family(best.family, seed), method="sigmoid", cv=folds, ensemble=False
    ).fit(Xm, y)
    calibrator = model.calibrated_classifiers_[0].calibrators[0]
    p = np.clip(calibrator.predict(raw[best.family]), 0.0, 1.0)  # OOF P(good), as score() gives
    threshold, met = choose_threshold(y, p, target_precision)
    warnings = []
    if not met:
        warnings.append(
            f"target precision {target_precision} not reached on OOF data; "
            f"threshold {threshold:.4f} has the highest precision"
        )
        logger.warning(warnings[-1])
    keep = p >= threshold
    tp, fp = int((keep & (y == 1)).sum()), int((keep & (y == 0)).sum())
    fn, tn = int((~keep & (y == 1)).sum()), int((~keep & (y == 0)).sum())
    metrics = {
        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
        "roc_auc": float(roc_auc_score(y, p)), "average_precision": float(average_precision_score(y, p)),
        "kept_fraction": float(keep.mean()),
    }  # fmt: skip
    bad_kind, good_kind = _per_kind(k, y, keep)
    prec, rec, thr = precision_recall_curve(y, p)
    counts = {
        "good": int((y == 1).sum()),
        "bad": int((y == 0).sum()),
        "dropped_middle": int(((y_all < 0) & ~excluded).sum()),
        "excluded_kind": int(excluded.sum()),
        "groups": len(set(g)),
        "folds": splits,
    }
    card = {
        "family": best.family, "target_precision": target_precision, "threshold_met": met,
        "metrics": metrics, "counts": counts, "data_hash": data_hash(Xm, y, g),
        "families": [asdict(s) for s in scores], "sklearn_version": sklearn.__version__,
        "baseline": np.median(Xm, axis=0).tolist(), "seed": seed,
    }  # fmt: skip
    clf = ClipClassifier(
        model,
        threshold=threshold,
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        card=card,
    )
    return TrainResult(
        classifier=clf, family=best.family, threshold=threshold, target_precision=target_precision,
        threshold_met=met, metrics=metrics, confusion=[[tn, fp], [fn, tp]],
        bad_kind_recall=bad_kind, good_kind_recall=good_kind, families=scores, counts=counts,
        pr_curve={"precision": prec.tolist(), "recall": rec.tolist(), "thresholds": thr.tolist()},
        warnings=warnings, oof_proba=p.tolist(),
    )  # fmt: skip


def _per_kind(
    kinds: np.ndarray | None, y: np.ndarray, keep: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    if kinds is None:
        return {}, {}
    bad = {str(c): float((~keep[(kinds == c) & (y == 0)]).mean())
           for c in sorted(set(kinds[y == 0]))}  # fmt: skip
    good = {str(c): float(keep[(kinds == c) & (y == 1)].mean()) for c in sorted(set(kinds[y == 1]))}
    return bad, good


def write_report(result: TrainResult, out_dir: str | Path) -> None:
    """Write report.json, report.md and pr_curve.png (matplotlib Agg) into out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model_version": result.classifier.version, "family": result.family,
        "threshold": result.threshold, "target_precision": result.target_precision,
        "threshold_met": result.threshold_met, "metrics": result.metrics,
        "confusion": result.confusion, "bad_kind_recall": result.bad_kind_recall,
        "good_kind_recall": result.good_kind_recall, "counts": result.counts,
        "families": [asdict(s) for s in result.families], "warnings": result.warnings,
        "feature_version": FEATURE_VERSION, "feature_names": list(FEATURE_NAMES),
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    m = result.metrics
    (tn, fp), (fn, tp) = result.confusion
    lines = [
        f"# Clip filter report ({result.classifier.version})", "",
        f"Chosen family **{result.family}**, threshold {result.threshold:.4f} for target precision "
        f"{result.target_precision} ({'met' if result.threshold_met else 'NOT met'}), out-of-fold.", "",
        "| metric | value |", "|---|---|",
        *[f"| {key} | {val:.4f} |" for key, val in m.items()], "",
        "Confusion (good is positive):", "",
        "| | kept | dropped |", "|---|---|---|", f"| good | {tp} | {fn} |", f"| bad | {fp} | {tn} |", "",
        "## Families (OOF)", "", "| family | average precision | ROC-AUC | fit s |", "|---|---|---|---|",
        *[f"| {s.family} | {s.average_precision:.4f} | {s.roc_auc:.4f} | {s.fit_seconds:.2f} |"
          for s in result.families], "",
        "## Per kind", "", "| kind | label | fraction handled right |", "|---|---|---|",
        *[f"| {c} | bad (dropped) | {v:.3f} |" for c, v in result.bad_kind_recall.items()],
        *[f"| {c} | good (kept) | {v:.3f} |" for c, v in result.good_kind_recall.items()], "",
        *[f"- WARNING: {w}" for w in result.warnings],
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(result.pr_curve["recall"], result.pr_curve["precision"], label=result.family)
    ax.axhline(result.target_precision, ls="--", c="grey", lw=0.8, label="target precision")
    ax.scatter([m["recall"]], [m["precision"]], c="red", zorder=3, label="threshold")
    ax.set(xlabel="recall (good kept)", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01),
           title="Clip filter, out-of-fold PR")  # fmt: skip
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "pr_curve.png", dpi=100)
    plt.close(fig)


def read_labels(path: str | Path) -> dict[str, tuple[int | str, str | None, str | None]]:
    """Read a labels CSV with header ``id,rating[,kind][,note]``.

    Returns:
        id -> (rating as int 1-5 or "good"/"bad", kind or None, note or None).

    Raises:
        ValueError: missing columns, empty or duplicate id, or a bad rating, with the line number.
    """
    result: dict[str, tuple[int | str, str | None, str | None]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        if "id" not in cols or "rating" not in cols:
            raise ValueError(f"{path}: header must have id,rating[,kind][,note], got {cols}")
        reader.fieldnames = cols
        for row in reader:
            where = f"{path}:{reader.line_num}"
            cid = (row.get("id") or "").strip()
            if not cid:
                raise ValueError(f"{where}: empty id")
            if cid in result:
                raise ValueError(f"{where}: duplicate id {cid!r}")
            raw = (row.get("rating") or "").strip().lower()
            rating: int | str
            if raw in {"good", "bad"}:
                rating = raw
            elif raw in {"1", "2", "3", "4", "5"}:
                rating = int(raw)
            else:
                raise ValueError(f"{where}: rating {raw!r} is not 1-5 or good/bad")
            kind = (row.get("kind") or "").strip() or None
            note = (row.get("note") or "").strip() or None
            result[cid] = (rating, kind, note)
    return result
