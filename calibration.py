"""Calibrated probabilities: per label, a monotone map from the zero-shot score to a probability.

The zero-shot probability sigmoid(s+ - s-) on raw cosines barely leaves 0.5, whatever a finding's
prevalence: it ranks images (AUROC) but is not a probability of disease. A calibration map is
fitted per label on validation images with labels, then applied frozen to any other images.

**Score.** The map's input is x = logit(p) = log(p) - log(1 - p) of the probability the model gives.
For one checkpoint that is exactly s+ - s- (p = sigmoid(s+ - s-)); for an ensemble it is the logit of
the ensemble's mean probability. That choice is strictly increasing in the ensemble's probability,
so an increasing map keeps the ranking (and the AUROC) the paper reports for the ensemble, and it
needs nothing but the predictions (a mean of the per-model s+ - s- would rank images differently).

**Methods** (``METHODS``):

- ``platt`` (default): p' = sigmoid(a x + b), a and b from an unregularised logistic regression of
  the validation labels on x (scikit-learn, C = inf, on the standardised score for conditioning).
  For one checkpoint a plays the role of CLIP's logit scale and b shifts towards the prevalence.
  With a > 0 the map is strictly increasing: AUROC is unchanged (exactly, unless an extreme a
  saturates float64 at 0 or 1). a <= 0 means validation ranks the label backwards: the label is
  left uncalibrated, with a warning, rather than inverted.
- ``isotonic``: the non-decreasing fit of the validation labels on x that minimises squared
  error (``sklearn.isotonic.IsotonicRegression``, out_of_bounds="clip"), stored as its
  thresholds and applied by linear interpolation between them (clipped beyond the ends). More
  flexible than Platt, but it has flat steps: images with different scores can get the same
  probability, so AUROC can change (usually slightly), and it wants more validation positives.
  A flat map (every image the same probability) ranks nothing: that label is left uncalibrated.

A label with one class in validation or constant scores is left uncalibrated too. An uncalibrated
label keeps its raw probability; its entry says ``"calibrated": false`` and why.

**calibration.json** (:func:`write_calibration`): ``format``/``version``, ``method``, ``score`` (the
definition above), ``n_images`` (validation images), optional run information (``pair_template``,
``prompt_style``, ``models``) and ``labels``: per label ``n_positives``, ``calibrated`` (and
``reason`` when false), Platt's ``a`` and ``b`` or isotonic's ``x`` and ``y`` thresholds, and the
``prompts`` ({"positive": [...], "negative": [...]}) the scores came from, so that a file fitted
with other prompts is refused (:func:`check_calibration`). Plain JSON, applied with numpy alone.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from errors import UserError, read_json

log = logging.getLogger(__name__)

METHODS = ("platt", "isotonic")
FORMAT = "chexzero-calibration"
VERSION = 1
SCORE = ("x = logit(p) = log(p) - log(1 - p) of the ensemble's mean probability p; for one checkpoint "
         "x = s+ - s-, the cosine with the positive prompt minus the cosine with the negative one")
REFIT = ("refit it: run_zero_shot.py with --val_cxr_filepath and --val_labels_path writes calibration.json "
         "in its --out folder")

Prompts = Mapping[str, Mapping[str, Sequence[str]]]


def scores(y_pred: np.ndarray) -> np.ndarray:
    """The calibration score logit(p) in float64 (-inf/inf at p = 0/1, NaN stays NaN)."""
    p = np.asarray(y_pred, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def prompt_table(labels: Sequence[str], positives: Sequence[Sequence[str]],
                 negatives: Sequence[Sequence[str]]) -> dict[str, dict[str, list[str]]]:
    """``{label: {"positive": [...], "negative": [...]}}`` from :func:`zero_shot.prompt_texts`' lists."""
    return {label: {"positive": list(pos), "negative": list(neg)}
            for label, pos, neg in zip(labels, positives, negatives)}


def _uncalibrated(label: str, reason: str) -> dict:
    log.warning("%s: left uncalibrated (raw probabilities kept): %s", label, reason)
    return {"calibrated": False, "reason": reason}


def _fit_platt(label: str, x: np.ndarray, positive: np.ndarray) -> dict:
    """Platt's a and b for one label, or an uncalibrated entry when a <= 0."""
    mean, std = x.mean(), x.std()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(((x - mean) / std)[:, None], positive)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("%s: the Platt fit did not converge (validation separates the classes almost perfectly); "
                    "its map is close to a step", label)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if slope <= 0:
        return _uncalibrated(label, f"Platt slope {slope / std:.4g} <= 0: validation ranks this label backwards")
    return {"calibrated": True, "a": slope / std, "b": intercept - slope * mean / std}


def _fit_isotonic(label: str, x: np.ndarray, positive: np.ndarray) -> dict:
    """Isotonic thresholds for one label, or an uncalibrated entry when the fit is flat."""
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, positive)
    xs, ys = model.X_thresholds_, model.y_thresholds_
    if ys[0] == ys[-1]:
        return _uncalibrated(label, f"the isotonic map is flat ({ys[0]:.4g} for every image): validation "
                                    "does not rank this label")
    return {"calibrated": True, "x": xs.tolist(), "y": ys.tolist()}


def fit_calibration(y_pred_val: np.ndarray, y_true_val: np.ndarray, labels: Sequence[str], method: str = "platt",
                    prompts: Prompts | None = None, info: Mapping | None = None) -> dict:
    """Fit one map per label on validation probabilities (N, C) and 0/1 labels (N, C).

    ``prompts``: per label the positive and negative texts the probabilities came from
    (:func:`prompt_table`), recorded so that :func:`check_calibration` can refuse other prompts.
    ``info``: run information stored at the top level (e.g. ``pair_template``, ``prompt_style``,
    ``models``). Returns the calibration as a JSON-ready dict (module docstring).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    y_pred_val, y_true_val = np.asarray(y_pred_val, dtype=np.float64), np.asarray(y_true_val)
    if y_pred_val.shape != y_true_val.shape or y_pred_val.shape[1:] != (len(labels),):
        raise ValueError(f"y_pred_val {y_pred_val.shape} and y_true_val {y_true_val.shape} must both be "
                         f"(N, {len(labels)})")
    if not np.all((y_pred_val > 0) & (y_pred_val < 1)):
        raise ValueError("validation probabilities must lie strictly between 0 and 1")
    entries = {}
    for i, label in enumerate(labels):
        x, positive = scores(y_pred_val[:, i]), y_true_val[:, i] == 1
        if positive.all() or not positive.any():
            entry = _uncalibrated(label, "one class only in validation")
        elif x.std() == 0:
            entry = _uncalibrated(label, "every validation image has the same score")
        else:
            entry = (_fit_platt if method == "platt" else _fit_isotonic)(label, x, positive)
        entry = {"n_positives": int(positive.sum()), **entry}
        if prompts is not None:
            entry["prompts"] = {side: list(texts) for side, texts in prompts[label].items()}
        entries[label] = entry
    return {"format": FORMAT, "version": VERSION, "method": method, "score": SCORE,
            "n_images": int(len(y_pred_val)), **dict(info or {}), "labels": entries}


def apply_calibration(y_pred: np.ndarray, labels: Sequence[str], calibration: Mapping) -> np.ndarray:
    """Calibrated probabilities (N, C) float64 of ``y_pred`` (N, C), column i being ``labels[i]``.

    Uncalibrated labels keep their probabilities; NaN stays NaN. A label the calibration does not
    cover is a :class:`UserError`.
    """
    y_pred = np.asarray(y_pred, dtype=np.float64)
    entries = calibration["labels"]
    missing = [label for label in labels if label not in entries]
    if missing:
        raise UserError(f"the calibration has no map for {missing}; {REFIT} for these labels, or leave them out")
    calibrated = y_pred.copy()
    for i, label in enumerate(labels):
        entry = entries[label]
        if not entry["calibrated"]:
            continue
        x = scores(y_pred[:, i])
        if calibration["method"] == "platt":
            calibrated[:, i] = _sigmoid(entry["a"] * x + entry["b"])
        else:
            calibrated[:, i] = np.interp(x, entry["x"], entry["y"])
    return calibrated


def _entry_problem(entry: object, method: str) -> str | None:
    """Why one label's entry cannot be applied, or None."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("calibrated"), bool):
        return "no 'calibrated' true/false"
    if not entry["calibrated"]:
        return None
    if method == "platt":
        a, b = entry.get("a"), entry.get("b")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (a, b)):
            return "Platt's 'a' and 'b' must be finite numbers"
        return None if a > 0 else f"Platt's 'a' is {a}, not > 0"
    xs, ys = entry.get("x"), entry.get("y")
    try:
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    except (TypeError, ValueError):
        return "isotonic 'x' and 'y' must be lists of numbers"
    if xs.ndim != 1 or xs.shape != ys.shape or len(xs) == 0 or not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return "isotonic 'x' and 'y' must be finite lists of the same length"
    if (np.diff(xs) < 0).any() or (np.diff(ys) < 0).any() or ys.min() < 0 or ys.max() > 1:
        return "isotonic 'x' and 'y' must be non-decreasing, 'y' within 0..1"
    return None


def _shown(sides: Mapping[str, Sequence[str]]) -> str:
    return f"{' / '.join(sides['positive'])!r} vs {' / '.join(sides['negative'])!r}"


def check_calibration(calibration: object, source: str = "calibration", labels: Sequence[str] | None = None,
                      prompts: Prompts | None = None) -> dict:
    """``calibration`` checked: its structure, that it covers ``labels``, and that each of their
    recorded prompts equals ``prompts[label]`` (labels recorded without prompts are not compared).
    A problem is a one-line :class:`UserError` naming ``source``, the labels and the fix."""
    if (not isinstance(calibration, Mapping) or calibration.get("format") != FORMAT
            or calibration.get("version") != VERSION or not isinstance(calibration.get("labels"), Mapping)):
        raise UserError(f"{source}: not a calibration file (format {FORMAT!r} version {VERSION} with a 'labels' "
                        f"object); {REFIT}")
    method = calibration.get("method")
    if method not in METHODS:
        raise UserError(f"{source}: unknown calibration method {method!r} (known: {', '.join(METHODS)}); {REFIT}")
    entries = calibration["labels"]
    broken = {label: problem for label, entry in entries.items() if (problem := _entry_problem(entry, method))}
    if broken:
        problems = "; ".join(sorted(set(broken.values())))
        raise UserError(f"{source}: the maps of {sorted(broken)} are damaged ({problems}); {REFIT}")
    if labels is not None:
        missing = [label for label in labels if label not in entries]
        if missing:
            raise UserError(f"{source}: no calibration for {missing} (the file covers {list(entries)}); {REFIT} "
                            "with these labels (--labels), or leave them out")
    if prompts is not None:
        differ = [label for label in (labels if labels is not None else list(prompts))
                  if "prompts" in entries.get(label, {}) and label in prompts
                  and {side: list(t) for side, t in entries[label]["prompts"].items()}
                  != {side: list(t) for side, t in prompts[label].items()}]
        if differ:
            first = differ[0]
            run = ", ".join(f"{key} {calibration[key]}" for key in ("pair_template", "prompt_style")
                            if key in calibration)
            raise UserError(f"{source}: fitted with other prompts for {differ} (e.g. {first}: "
                            f"{_shown(entries[first]['prompts'])} in the file, {_shown(prompts[first])} here); "
                            f"score with the prompts it was fitted with ({run or 'see the file'}) or {REFIT} "
                            "with these prompts")
    return dict(calibration)


def write_calibration(calibration: Mapping, path: str | Path) -> Path:
    """Write ``calibration`` as JSON (floats round-trip exactly) to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=1) + "\n")
    return path


def read_calibration(path: str | Path, labels: Sequence[str] | None = None, prompts: Prompts | None = None) -> dict:
    """A calibration.json, checked by :func:`check_calibration` (a missing or unreadable file is a
    one-line :class:`UserError` naming it)."""
    calibration = read_json(path, "calibration file", fix=REFIT)
    return check_calibration(calibration, str(path), labels, prompts)
