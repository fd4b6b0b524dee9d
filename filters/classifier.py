"""The clip classifier: a fitted, calibrated scikit-learn model that scores clips as P(good).

The paper kept 6.8M of 55M clips with a binary classifier trained on human ratings; this is its
stand-in over :mod:`filters.features`. A model is stored as two files side by side:

- ``NAME.skops``: the fitted estimator (``CalibratedClassifierCV`` around a ``Pipeline``), written
  with skops, never pickle. Loading lists the file's non-default types with
  ``skops.io.get_untrusted_types`` and refuses any type outside :data:`ALLOWED_TYPES`.
- ``NAME.json``: the model card: feature names and version, threshold, chosen family, metrics,
  training-data hash, library versions, the attribution baseline, the sha256 of the skops file and
  the classifier ``version`` (a hash of the skops bytes and the rest of the card).

A model whose feature names or feature version differ from the code is refused with a ValueError:
scores computed on other features would be silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import skops.io as sio

from filters.features import FEATURE_NAMES, FEATURE_VERSION

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).parent / "models" / "clip_filter.skops"

# Types a clip-filter model may contain beyond skops' default-trusted scikit-learn/numpy/builtin
# types. Collected by dumping every family train.py fits; anything else in a file is refused.
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)

CARD_FORMAT = 1


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    out: np.ndarray = np.log(p / (1 - p))
    return out


def feature_matrix(
    feats: Sequence[Mapping[str, float]], names: tuple[str, ...] = FEATURE_NAMES
) -> np.ndarray:
    """(N, F) float64 in `names` order.

    Raises:
        ValueError: a missing or non-finite feature, naming the clip index and the feature.
    """
    X = np.empty((len(feats), len(names)), dtype=np.float64)
    for i, f in enumerate(feats):
        try:
            X[i] = [f[n] for n in names]
        except KeyError as e:
            raise ValueError(f"clip {i}: missing feature {e.args[0]!r}") from None
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"clip {i}: feature {names[j]!r} is not finite")
    return X


class ClipClassifier:
    """A calibrated clip-quality model plus its model card.

    Attributes:
        model: fitted estimator with ``predict_proba``; class 1 is "good".
        threshold: keep a clip when ``score >= threshold``.
        feature_names: the feature order the model was fitted on (== FEATURE_NAMES).
        feature_version: FEATURE_VERSION at training time.
        card: the JSON model card (metrics, family, data hash, baseline, ...).
        version: 16 hex chars, hash of the skops bytes and the card.
    """

    def __init__(
        self,
        model: Any,
        *,
        threshold: float,
        feature_names: tuple[str, ...],
        feature_version: str,
        card: dict[str, Any],
        model_bytes: bytes | None = None,
    ) -> None:
        _check_features(tuple(feature_names), feature_version)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model = model
        self.threshold = float(threshold)
        self.feature_names = tuple(feature_names)
        self.feature_version = feature_version
        # skops names arrays by object id, so re-dumping gives other bytes: dump once and keep the
        # bytes, so the version is stable across save/load.
        self._model_bytes = sio.dumps(model) if model_bytes is None else model_bytes
        body = dict(card)
        body.update(
            card_format=CARD_FORMAT,
            threshold=self.threshold,
            feature_names=list(self.feature_names),
            feature_version=feature_version,
            sklearn_version=body.get("sklearn_version", sklearn.__version__),
            model_sha256=hashlib.sha256(self._model_bytes).hexdigest(),
        )
        body.pop("version", None)
        self.version = hashlib.sha256(_canonical(body)).hexdigest()[:16]
        body["version"] = self.version
        self.card = body
        baseline = body.get("baseline")
        self._baseline = (
            np.asarray(baseline, dtype=np.float64) if baseline is not None else None
        )  # (F,) feature values that stand for "this feature says nothing" in explain()

    def _matrix(self, feats: Sequence[Mapping[str, float]]) -> np.ndarray:
        return feature_matrix(feats, self.feature_names)

    def score(self, feats: Sequence[Mapping[str, float]]) -> np.ndarray:
        """P(good) per clip.

        Args:
            feats: N feature dicts (extra keys are ignored).

        Returns:
            (N,) float64 in [0, 1].
        """
        if not feats:
            return np.zeros(0, dtype=np.float64)
        p: np.ndarray = self.model.predict_proba(self._matrix(feats))[:, 1].astype(np.float64)
        return p

    def explain(self, feats: Mapping[str, float], k: int = 5) -> list[tuple[str, float]]:
        """The k features that weighed most on this clip's score, signed (+ pushes towards good).

        Method: baseline substitution (occlusion). For each feature j the clip's value is replaced
        by the training-set median of j (the card's ``baseline``) and the change of the calibrated
        log-odds is recorded: ``logit(p(x)) - logit(p(x with x_j := median_j))``. It works for
        every family (linear, trees, SVM) and measures this clip's own score, not a global
        importance. For a linear model it equals ``coef_j * (x_j - median_j) / scale_j`` times the
        sigmoid calibration slope, i.e. coefficient x standardized value. Interactions are not
        split: the values need not add up to the total.

        Returns:
            up to k (name, attribution) pairs, largest |attribution| first.
        """
        x = self._matrix([feats])  # (1, F)
        base = self._baseline if self._baseline is not None else np.zeros(x.shape[1])
        probe = np.repeat(x, x.shape[1], axis=0)  # (F, F): row j has feature j replaced
        np.fill_diagonal(probe, base)
        proba = self.model.predict_proba(np.vstack([x, probe]))[:, 1]
        contrib = _logit(proba[:1]) - _logit(proba[1:])  # (F,)
        order = np.argsort(-np.abs(contrib), kind="stable")[:k]
        return [(self.feature_names[j], float(contrib[j])) for j in order]

    def save(self, out_dir: str | Path, name: str = "clip_filter") -> Path:
        """Write ``out_dir/NAME.skops`` and ``out_dir/NAME.json``; return the skops path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / f"{name}.skops"
        card_path = model_path.with_suffix(".json")
        # temp name + rename: a reader never sees a half-written model or a card without its model
        for path, data in (
            (model_path, self._model_bytes),
            (card_path, json.dumps(self.card, indent=2, sort_keys=True).encode() + b"\n"),
        ):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        logger.info("saved clip classifier %s to %s", self.version, model_path)
        return model_path

    @classmethod
    def load(cls, path: str | Path) -> ClipClassifier:
        """Load ``NAME.skops`` and its ``NAME.json`` card.

        Raises:
            ValueError: the card is missing or does not match the model file, the file holds a
                type outside ALLOWED_TYPES, or the features differ from the code's.
        """
        model_path = Path(path)
        card_path = model_path.with_suffix(".json")
        if not card_path.exists():
            raise ValueError(f"{model_path}: model card {card_path.name} is missing")
        try:
            card = json.loads(card_path.read_text())
            float(card["threshold"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{card_path}: not a valid model card ({e!r})") from None
        if not isinstance(card, dict):
            raise ValueError(f"{card_path}: not a valid model card")
        _check_features(tuple(card.get("feature_names", ())), str(card.get("feature_version")))
        data = model_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != card.get("model_sha256"):
            raise ValueError(f"{model_path}: file does not match the sha256 in its card")
        untrusted = sio.get_untrusted_types(data=data)
        unexpected = sorted(set(untrusted) - ALLOWED_TYPES)
        if unexpected:
            raise ValueError(f"{model_path}: refusing unexpected types in model: {unexpected}")
        model = sio.loads(data, trusted=untrusted)
        if card.get("sklearn_version") != sklearn.__version__:
            logger.warning(
                "%s was trained with scikit-learn %s, running %s",
                model_path,
                card.get("sklearn_version"),
                sklearn.__version__,
            )
        clf = cls(
            model,
            threshold=float(card["threshold"]),
            feature_names=tuple(card["feature_names"]),
            feature_version=str(card["feature_version"]),
            card=card,
            model_bytes=data,
        )
        if clf.version != card.get("version"):
            raise ValueError(f"{model_path}: card version {card.get('version')} != {clf.version}")
        return clf


def _check_features(names: tuple[str, ...], version: str) -> None:
    if names != FEATURE_NAMES or version != FEATURE_VERSION:
        missing = sorted(set(FEATURE_NAMES) - set(names))
        extra = sorted(set(names) - set(FEATURE_NAMES))
        raise ValueError(
            f"model features do not match the code (model version {version!r}, code "
            f"{FEATURE_VERSION!r}; missing {missing}, unknown {extra}); retrain the clip filter"
        )


def load_default() -> ClipClassifier | None:
    """The packaged model ``filters/models/clip_filter.skops``, or None if none is shipped.

    Raises:
        ValueError: the shipped model does not match the code's features (retrain it).
    """
    if not DEFAULT_MODEL_PATH.exists():
        logger.info("no default clip classifier at %s", DEFAULT_MODEL_PATH)
        return None
    return ClipClassifier.load(DEFAULT_MODEL_PATH)
