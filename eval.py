"""Zero-shot evaluation: AUROC with bootstrap CIs, thresholded MCC/F1/Youden, PadChest summary, ROC plots.

The AUROC part keeps CheXzero's public API and numbers (`evaluate`, `bootstrap`, `compute_cis`,
`plot_roc`, `plot_pr`, `choose_operating_point`, `sigmoid`, `compute_mean`, `accuracy`): replicate i
of the bootstrap draws the same indices as `sklearn.utils.resample(arange(N), replace=True,
random_state=i)`, so the CIs equal the original's to 4 decimals. The bootstrap is vectorised: AUROC of
every replicate comes from a Mann-Whitney U over per-replicate sample counts instead of 1000 x labels
sklearn calls.

Threshold selection (`choose_thresholds`) and the thresholded bootstrap (`binary_metric_bootstrap`)
implement what the original `metrics.py` intended (thresholds chosen on a validation set, applied
frozen to the test set), with a seeded, reproducible bootstrap.

Calibration metrics (`expected_calibration_error` with equal-width or equal-mass bins, Brier score,
`calibration_bootstrap` with the same replicates, `plot_reliability`) measure how far probabilities
are from observed frequencies, before and after `calibration.py`'s maps.
"""
import logging
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from errors import UserError
from labels import COMPETITION_LABELS  # the 5 the paper's headline "mean" averages

logger = logging.getLogger(__name__)

THRESHOLD_METRICS = ("mcc", "f1", "youden")


class LabelValueError(UserError, ValueError):
    """Ground truth holding something other than 0 and 1 (blank/NaN, -1 "uncertain", other values).
    A ValueError as before, and a :class:`errors.UserError`: a CLI prints it as one line."""


def label_value_problems(columns: Mapping[str, Sequence]) -> list:
    """For each column holding anything but 0 and 1, ``"<name>: 3 NaN, 5 uncertain (-1), 1 other (2.0)"``.

    Blank cells and NaN count as NaN, -1 as CheXpert's "uncertain", anything else (other numbers,
    text) as other, with up to 3 distinct examples.
    """
    problems = []
    for name, values in columns.items():
        raw = pd.Series(np.asarray(values).ravel() if not isinstance(values, pd.Series) else values)
        if pd.api.types.is_numeric_dtype(raw) and raw.isin((0, 1)).all():
            continue
        numeric = pd.to_numeric(raw, errors="coerce")
        blank = raw.isna()
        uncertain = numeric == -1
        other = ~blank & ~uncertain & ~numeric.isin((0, 1))
        counts = [f"{int(blank.sum())} NaN" if blank.any() else "",
                  f"{int(uncertain.sum())} uncertain (-1)" if uncertain.any() else ""]
        if other.any():
            examples = ", ".join(repr(v) if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)
                                 for v in pd.unique(raw[other])[:3])
            counts.append(f"{int(other.sum())} other ({examples})")
        if any(counts):
            problems.append(f"{name}: {', '.join(c for c in counts if c)}")
    return problems


def check_binary_labels(columns: Mapping[str, Sequence], source: str = "y_true") -> None:
    """Raise :class:`LabelValueError` naming ``source``, the columns and the counts unless every
    value of ``columns`` (name -> values) is 0 or 1."""
    problems = label_value_problems(columns)
    if problems:
        raise LabelValueError(
            f"{source}: the labels must be binary (0 or 1), but {'; '.join(problems)}. CheXpert's test and "
            "valid ground truth hold only 0/1; labels with blanks or -1 (uncertain), as CheXpert train's, "
            "must be mapped to 0/1 first (decide what uncertain means), or evaluate other labels (--labels)")


# ---------------------------------------------------------------------------------------------
# Original CheXzero API
# ---------------------------------------------------------------------------------------------

def compute_mean(stats: Union[pd.DataFrame, Mapping], is_df: bool = True) -> float:
    """Mean over the 5 competition labels of the first row/element of `stats` (NaN if any is NaN).

    `is_df=True`: `stats` is a DataFrame (e.g. `evaluate()` output or a `compute_cis()` table, whose
    first row is 'mean'). `is_df=False`: `stats` maps label -> sequence, first element used.
    Columns may be plain labels or `<label>_auc` (the original KeyError'd on the latter).
    """
    values = []
    for label in COMPETITION_LABELS:
        key = label if label in stats else f"{label}_auc"
        column = stats[key]
        values.append(column.iloc[0] if is_df or isinstance(column, pd.Series) else column[0])
    return float(np.mean(values))


def accuracy(output, target, topk: Sequence[int] = (1,)) -> list:
    """Top-k accuracy counts: for each k in `topk`, how many rows of `output` (N, C class scores, a
    numpy array or torch tensor) have their `target` class (N class indices, shape (N,) or (N, 1))
    among their k highest scores, as a float (divide by N for a rate).

    The original's helper (unused there) printed its intermediate tensors and compared a (k, N)
    prediction table with a (N, k) target table, which fails unless N equals max(topk); here each
    row is compared with its own target, and nothing is printed.
    """
    scores = np.asarray(output.detach().cpu() if hasattr(output, "detach") else output)
    classes = np.asarray(target.detach().cpu() if hasattr(target, "detach") else target).reshape(-1, 1)
    if scores.ndim != 2 or len(classes) != len(scores):
        raise ValueError(f"output has shape {scores.shape} and target {len(classes)} entries; expected "
                         "(N, C) scores and N class indices")
    if max(topk) > scores.shape[1]:
        raise ValueError(f"top-{max(topk)} of {scores.shape[1]} classes")
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :max(topk)]  # best first; ties: lower index
    hits = ranked == classes
    return [float(hits[:, :k].any(axis=1).sum()) for k in topk]


def sigmoid(x: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """Logistic function 1 / (1 + exp(-x)), elementwise."""
    return 1 / (1 + np.exp(-x))


def _plot_curve(title: str, x: np.ndarray, y: np.ndarray, area: float, chance: Tuple[float, float], xlabel: str,
                ylabel: str) -> None:
    """A curve with its AUC on a new pyplot figure (inline in notebooks), and dashed red the line of a
    random scorer, from (0, chance[0]) to (1, chance[1])."""
    import matplotlib.pyplot as plt  # only here: keeps pyplot's global state out of library use

    plt.figure(dpi=100)
    plt.title(title)
    plt.plot(x, y, "b", label=f"AUC = {area:0.2f}")
    plt.legend(loc="lower right")
    plt.plot([0, 1], list(chance), "r--")
    plt.xlim([0, 1])
    plt.ylim([0, 1])
    plt.ylabel(ylabel)
    plt.xlabel(xlabel)


def plot_roc(y_pred: np.ndarray, y_true: np.ndarray, roc_name: str,
             plot: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """ROC curve and trapezoidal AUC (= roc_auc_score; NaN with a single class) of one label.

    With `plot=True` the curve is drawn on a new pyplot figure (shown inline in notebooks).
    """
    fpr, tpr, thresholds = roc_curve(y_true, y_pred)
    roc_auc = auc(fpr, tpr)
    if plot:
        _plot_curve(roc_name, fpr, tpr, roc_auc, (0, 1), "False Positive Rate", "True Positive Rate")
    return fpr, tpr, thresholds, roc_auc


def plot_pr(y_pred: np.ndarray, y_true: np.ndarray, pr_name: str,
            plot: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve of one label: ``(precision, recall, thresholds)`` of sklearn's
    `precision_recall_curve`.

    With `plot=True` it is drawn on a new pyplot figure with its trapezoidal area and, dashed, the
    prevalence (a random scorer's precision). `evaluate` does not call it (the original computed it
    for every label and threw it away).
    """
    y_true = np.asarray(y_true)
    precision, recall, thresholds = precision_recall_curve(y_true, y_pred)
    if plot:
        prevalence = float(np.mean(y_true == 1))
        _plot_curve(pr_name, recall, precision, auc(recall, precision), (prevalence, prevalence), "Recall",
                    "Precision")
    return precision, recall, thresholds


def choose_operating_point(fpr: np.ndarray, tpr: np.ndarray,
                           thresholds: np.ndarray) -> Tuple[float, float]:
    """(sensitivity, specificity) at the first ROC point with the largest Youden J = tpr - fpr > 0."""
    sens, spec, best_j = 0, 0, 0
    for point_fpr, point_tpr in zip(fpr, tpr):
        if point_tpr - point_fpr > best_j:
            sens, spec, best_j = point_tpr, 1 - point_fpr, point_tpr - point_fpr
    return sens, spec


def _true_column(y_true: np.ndarray, labels: Sequence[str], i: int,
                 label_idx_map: Optional[Mapping[str, int]]) -> np.ndarray:
    """Ground-truth column of prediction column i: i itself, or label_idx_map[labels[i]] (alt labels)."""
    return y_true[:, i if label_idx_map is None else label_idx_map[labels[i]]]


def _check_inputs(y_pred: np.ndarray, y_true: np.ndarray, labels: Sequence[str]) -> None:
    """Fail early on shapes or values the original would reject mid-loop (or silently truncate)."""
    if y_pred.ndim != 2 or y_pred.shape[1] != len(labels):
        raise ValueError(f"y_pred has shape {y_pred.shape}, expected (N, {len(labels)}) for the labels")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    if not np.isfinite(y_pred).all():
        raise ValueError("y_pred contains NaN or infinite scores")
    if not np.isin(y_true, (0, 1)).all():
        names = labels if y_true.ndim == 2 and y_true.shape[1] == len(labels) else \
            [f"column {i}" for i in range(y_true.shape[1] if y_true.ndim == 2 else 1)]
        columns = y_true.T if y_true.ndim == 2 else y_true[None]
        check_binary_labels(dict(zip(names, columns)), "y_true")


def evaluate(y_pred: np.ndarray, y_true: np.ndarray, cxr_labels: Sequence[str],
             roc_name: str = "Receiver Operating Characteristic", pr_name: str = "Precision-Recall Curve",
             label_idx_map: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """AUROC per label as a 1-row DataFrame with columns `<label>_auc` (NaN for a single-class label).

    `roc_name`/`pr_name` are kept for the original signature; the original ignored them too. The
    original's discarded precision-recall curve and operating point are not computed.
    """
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    _check_inputs(y_pred, y_true, cxr_labels)
    row = {}
    for i, label in enumerate(cxr_labels):
        truth = _true_column(y_true, cxr_labels, i, label_idx_map)
        if truth.min() == truth.max():
            logger.warning("%s: only one class in y_true, AUROC is NaN", label)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            row[f"{label}_auc"] = plot_roc(y_pred[:, i], truth, f"{label} ROC Curve")[3]
    return pd.DataFrame([row])


def compute_cis(data: pd.DataFrame, confidence_level: float = 0.05) -> pd.DataFrame:
    """Per column: bootstrap mean (NaN skipped) and the original's percentile bounds, rounded to 4 dp.

    Values are sorted ascending with NaN last (NaN still counted in n); lower = sorted[int(cl/2*n) - 1],
    upper = sorted[int((1 - cl/2)*n) - 1], e.g. elements 24 and 974 for n = 1000.
    Returns a DataFrame with index ['mean', 'lower', 'upper'] and the columns of `data`.
    """
    n = len(data)
    lower_index = int(confidence_level / 2 * n) - 1
    upper_index = int((1 - confidence_level / 2) * n) - 1
    if lower_index < 0:
        # The original would silently wrap to the last (largest or NaN) element here.
        raise ValueError(f"{n} replicates are too few for confidence_level={confidence_level}")
    table = np.empty((3, data.shape[1]))
    for j in range(data.shape[1]):
        ordered = data.iloc[:, j].sort_values()
        table[:, j] = [round(ordered.mean(), 4), ordered.iloc[lower_index].round(4),
                       ordered.iloc[upper_index].round(4)]
    return pd.DataFrame(table, index=["mean", "lower", "upper"], columns=data.columns)


def _resample_counts(n: int, n_samples: int) -> np.ndarray:
    """(n, n_samples) int32: how often item k is drawn in bootstrap replicate i (column i).

    Replicate i draws RandomState(i).randint(0, n, n), exactly what
    `sklearn.utils.resample(arange(n), replace=True, random_state=i)` returns (tested); re-seeding one
    RandomState avoids constructing 1000 generators. Item-major int32 keeps the per-label row
    gathers and cumulative sums below contiguous and small.
    """
    rng = np.random.RandomState(0)
    counts = np.empty((n, n_samples), dtype=np.int32)
    for i in range(n_samples):
        rng.seed(i)
        counts[:, i] = np.bincount(rng.randint(0, n, n), minlength=n)
    return counts


def _replicate_auroc(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of one label in every replicate via the Mann-Whitney U (ties count 1/2, as roc_auc_score).

    Replicates are given by item multiplicities (`counts`, items x replicates). U sums, over positive
    items, the replicate's negatives scored below the item plus half those tied with it; both come
    from a cumulative count over the score-sorted negatives. U is doubled (int64) so everything stays
    integer until one final division. NaN where a replicate holds a single class.
    """
    neg_items = np.flatnonzero(~positive)
    neg_items = neg_items[np.argsort(scores[neg_items], kind="stable")]
    neg_scores = scores[neg_items]
    neg_cumulative = np.zeros((len(neg_items) + 1, counts.shape[1]), dtype=counts.dtype)
    np.cumsum(counts[neg_items], axis=0, out=neg_cumulative[1:])
    pos_items = np.flatnonzero(positive)
    below = np.searchsorted(neg_scores, scores[pos_items], side="left")
    not_above = np.searchsorted(neg_scores, scores[pos_items], side="right")
    pos_counts = counts[pos_items]
    twice_u = np.multiply(pos_counts, neg_cumulative[below] + neg_cumulative[not_above],
                          dtype=np.int64).sum(axis=0)
    n_pos, n_neg = pos_counts.sum(axis=0, dtype=np.int64), neg_cumulative[-1].astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), twice_u / (2 * n_pos * n_neg), np.nan)


def bootstrap(y_pred: np.ndarray, y_true: np.ndarray, cxr_labels: Sequence[str], n_samples: int = 1000,
              label_idx_map: Optional[Mapping[str, int]] = None) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Bootstrap AUROC: (boot_stats, cis) with the original's replicates and CI rule.

    boot_stats has one row per replicate (index 0..n_samples-1; the original's index was all 0s)
    and columns `<label>_auc`; cis is `compute_cis(boot_stats)`. Replicates with a single class
    give NaN, sorted last by `compute_cis` as in the original.
    """
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    _check_inputs(y_pred, y_true, cxr_labels)
    counts = _resample_counts(len(y_true), n_samples)
    columns = {}
    for i, label in enumerate(cxr_labels):
        positive = _true_column(y_true, cxr_labels, i, label_idx_map) == 1
        columns[f"{label}_auc"] = _replicate_auroc(y_pred[:, i], positive, counts)
        n_nan = int(np.isnan(columns[f"{label}_auc"]).sum())
        if n_nan:
            logger.info("%s: %d of %d replicates hold a single class (AUROC NaN)", label, n_nan, n_samples)
    boot_stats = pd.DataFrame(columns)
    return boot_stats, compute_cis(boot_stats)


def bootstrap_difference(y_pred_a: np.ndarray, y_pred_b: np.ndarray, y_true: np.ndarray,
                         cxr_labels: Sequence[str], n_samples: int = 1000) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """AUROC of ``y_pred_b`` minus AUROC of ``y_pred_a`` per label, paired: both on the same replicates.

    Returns ``(diff_stats, table)``: the per-replicate differences (columns `<label>_auc`, as
    :func:`bootstrap`'s boot_stats) and a table with index ['full', 'mean', 'lower', 'upper'] (the
    whole sample's difference, then :func:`compute_cis`). Pairing matters: two methods scored on the
    same images share the images' difficulty, so the interval of their difference is narrower than
    their two AUROC intervals side by side suggest.
    """
    stats_a, _ = bootstrap(y_pred_a, y_true, cxr_labels, n_samples)
    stats_b, _ = bootstrap(y_pred_b, y_true, cxr_labels, n_samples)
    diff_stats = stats_b - stats_a
    full = evaluate(y_pred_b, y_true, cxr_labels).iloc[0] - evaluate(y_pred_a, y_true, cxr_labels).iloc[0]
    return diff_stats, pd.concat([full.to_frame("full").T, compute_cis(diff_stats)])


# ---------------------------------------------------------------------------------------------
# Thresholds chosen on validation, applied frozen to test (what metrics.py intended)
# ---------------------------------------------------------------------------------------------

def _metric_from_counts(metric: str, tp, fp, tn, fn) -> np.ndarray:
    """MCC, F1 or Youden J from confusion counts (arrays, any shape), with sklearn's edge cases.

    MCC follows matthews_corrcoef's arithmetic exactly (0.0 when undefined), F1 = 2TP/(2TP+FP+FN)
    as f1_score (0.0 when undefined); Youden J = TPR - FPR (NaN with a single class).
    """
    tp, fp, tn, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "mcc":
            n = tp + fp + tn + fn
            true_neg, true_pos = tn + fp, fn + tp
            pred_neg, pred_pos = tn + fn, fp + tp
            cov_ytyp = (tp + tn) * n - (true_neg * pred_neg + true_pos * pred_pos)
            cov_ypyp = n ** 2 - (pred_neg * pred_neg + pred_pos * pred_pos)
            cov_ytyt = n ** 2 - (true_neg * true_neg + true_pos * true_pos)
            denominator = cov_ypyp * cov_ytyt
            return np.where(denominator == 0, 0.0, cov_ytyp / np.sqrt(denominator))
        if metric == "f1":
            denominator = 2 * tp + fp + fn
            return np.where(denominator == 0, 0.0, 2 * tp / denominator)
        if metric == "youden":
            return tp / (tp + fn) - fp / (fp + tn)
    raise ValueError(f"metric must be one of {THRESHOLD_METRICS}, got {metric!r}")


def metric_at_thresholds(y_pred_i: np.ndarray, y_true_i: np.ndarray,
                         metric: str = "mcc") -> Tuple[np.ndarray, np.ndarray]:
    """(candidate thresholds ascending, metric of `y_pred_i >= threshold` at each) for one label.

    Candidates are the ROC thresholds without the leading +inf (as metrics.get_best_p_vals); the
    confusion counts at all of them come from two sorts and binary searches, O(n log n).
    """
    y_pred_i, positive = np.asarray(y_pred_i), np.asarray(y_true_i) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        thresholds = np.sort(roc_curve(positive, y_pred_i)[2][1:])
    pos_scores, neg_scores = np.sort(y_pred_i[positive]), np.sort(y_pred_i[~positive])
    tp = len(pos_scores) - np.searchsorted(pos_scores, thresholds, side="left")
    fp = len(neg_scores) - np.searchsorted(neg_scores, thresholds, side="left")
    tn, fn = len(neg_scores) - fp, len(pos_scores) - tp
    return thresholds, _metric_from_counts(metric, tp, fp, tn, fn)


def choose_thresholds(y_pred_val: np.ndarray, y_true_val: np.ndarray, labels: Sequence[str],
                      metric: str = "mcc", label_idx_map: Optional[Mapping[str, int]] = None) -> pd.Series:
    """Per-label threshold maximising `metric` ('mcc', 'f1' or 'youden') on a validation set.

    The smallest candidate threshold reaching the maximum wins (first argmax over ascending
    thresholds, as the original). A label with a single class in validation gets NaN (logged).
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
    y_pred_val, y_true_val = np.asarray(y_pred_val), np.asarray(y_true_val)
    _check_inputs(y_pred_val, y_true_val, labels)
    chosen = {}
    for i, label in enumerate(labels):
        truth = _true_column(y_true_val, labels, i, label_idx_map)
        if truth.min() == truth.max():
            logger.warning("%s: only one class in validation, no threshold chosen", label)
            chosen[label] = np.nan
            continue
        thresholds, values = metric_at_thresholds(y_pred_val[:, i], truth, metric)
        chosen[label] = thresholds[np.argmax(values)]
    return pd.Series(chosen, name=f"threshold_{metric}", dtype=np.float64)


def binary_metric_bootstrap(y_pred: np.ndarray, y_true: np.ndarray, labels: Sequence[str],
                            thresholds: Mapping[str, float], metric: str = "mcc", n_samples: int = 1000,
                            label_idx_map: Optional[Mapping[str, int]] = None
                            ) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Bootstrap a thresholded metric on test predictions: (boot_stats, cis).

    Predictions are binarised with frozen per-label thresholds (`p >= threshold`; a NaN threshold,
    i.e. none chosen, gives NaN); replicate i uses the same seeded draws as `bootstrap`. Columns
    `<label>_<metric>`, plus `Mean_<metric>` (mean over the 5 competition labels, NaN-propagating as
    the original) when all 5 are among `labels`.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    _check_inputs(y_pred, y_true, labels)
    counts = _resample_counts(len(y_true), n_samples).astype(np.float64)  # exact: small integers
    columns = {}
    for i, label in enumerate(labels):
        if np.isnan(thresholds[label]):
            columns[f"{label}_{metric}"] = np.full(n_samples, np.nan)
            continue
        positive = _true_column(y_true, labels, i, label_idx_map) == 1
        predicted = y_pred[:, i] >= thresholds[label]
        cells = np.stack([positive & predicted, ~positive & predicted,
                          ~positive & ~predicted, positive & ~predicted], axis=1)
        tp, fp, tn, fn = cells.T.astype(np.float64) @ counts
        columns[f"{label}_{metric}"] = _metric_from_counts(metric, tp, fp, tn, fn)
    if all(label in labels for label in COMPETITION_LABELS):
        columns[f"Mean_{metric}"] = np.mean([columns[f"{label}_{metric}"] for label in COMPETITION_LABELS],
                                            axis=0)
    boot_stats = pd.DataFrame(columns)
    return boot_stats, compute_cis(boot_stats)


# ---------------------------------------------------------------------------------------------
# Calibration: expected calibration error, Brier score, reliability diagram
# ---------------------------------------------------------------------------------------------

CALIBRATION_METRICS = ("ece_width", "ece_mass", "brier")
ECE_STRATEGIES = ("width", "mass")
_CALIBRATION_CHUNK = 1 << 22   # (distinct probabilities x replicates) cells per step, to bound memory


def _check_probabilities(y_prob: np.ndarray) -> None:
    if not ((y_prob >= 0) & (y_prob <= 1)).all():
        raise ValueError("calibration metrics need probabilities within 0..1 (no NaN)")


def _binned_abs_sum(gap: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Per replicate (column), the sum over bins of |sum of `gap` in the bin|; `bins` as `gap` or (U, 1)."""
    n_replicates = gap.shape[1]
    flat = (np.broadcast_to(bins, gap.shape) + n_bins * np.arange(n_replicates)).ravel()
    sums = np.bincount(flat, weights=gap.ravel(), minlength=n_bins * n_replicates)
    return np.abs(sums.reshape(n_replicates, n_bins)).sum(axis=1)


def _replicate_calibration(y_prob: np.ndarray, positive: np.ndarray, counts: np.ndarray,
                           n_bins: int) -> Dict[str, np.ndarray]:
    """ECE (equal-width and equal-mass bins) and Brier score of one label in every replicate.

    Replicates are item multiplicities (`counts`, items x replicates, each column summing to n).
    ECE = sum over bins of |sum(y) - sum(p)| / n: each bin's |observed frequency - mean probability|
    weighted by its share of the draws; empty bins count 0.
    - equal width: bin b holds p in [b/n_bins, (b+1)/n_bins), the last bin also p = 1.
    - equal mass: a probability with k of the replicate's n draws strictly below it goes to bin
      floor(k * n_bins / n), so each bin holds n/n_bins draws, except that equal probabilities (ties,
      and an item drawn more than once) always share a bin.
    Brier = sum((p - y)^2) / n. Computed per distinct probability, in chunks of replicates.
    """
    n = len(y_prob)
    values, group = np.unique(y_prob, return_inverse=True)     # distinct probabilities, ascending
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(values)))
    width_bins = np.clip(np.floor(values * n_bins).astype(np.int64), 0, n_bins - 1)[:, None]
    squared_error = (y_prob - positive) ** 2
    result = {metric: np.empty(counts.shape[1]) for metric in CALIBRATION_METRICS}
    step = max(1, _CALIBRATION_CHUNK // len(values))
    for first in range(0, counts.shape[1], step):
        chunk = counts[:, first:first + step]
        sorted_chunk = chunk[order]
        drawn = np.add.reduceat(sorted_chunk, starts, axis=0, dtype=np.int64)
        hits = np.add.reduceat(sorted_chunk * positive[order, None], starts, axis=0, dtype=np.int64)
        gap = hits - values[:, None] * drawn                  # sum(y) - sum(p) per value and replicate
        # values not drawn in a replicate (gap 0) can sit above all n draws: keep them in the last bin
        mass_bins = np.minimum((np.cumsum(drawn, axis=0) - drawn) * n_bins // n, n_bins - 1)
        columns = slice(first, first + chunk.shape[1])
        result["ece_width"][columns] = _binned_abs_sum(gap, width_bins, n_bins) / n
        result["ece_mass"][columns] = _binned_abs_sum(gap, mass_bins, n_bins) / n
        result["brier"][columns] = squared_error @ chunk / n
    return result


def expected_calibration_error(y_prob: np.ndarray, y_true: np.ndarray, n_bins: int = 10,
                               strategy: str = "width") -> float:
    """ECE of one label's probabilities: bins of equal width ('width') or equal mass ('mass').

    Sum over bins of (bin share of the images) x |observed frequency - mean probability|; see
    `_replicate_calibration` for the bin rules (equal-mass bins keep equal probabilities together).
    """
    if strategy not in ECE_STRATEGIES:
        raise ValueError(f"strategy must be one of {ECE_STRATEGIES}, got {strategy!r}")
    y_prob, positive = np.asarray(y_prob, dtype=np.float64), np.asarray(y_true) == 1
    _check_probabilities(y_prob)
    ones = np.ones((len(y_prob), 1), dtype=np.int32)
    return float(_replicate_calibration(y_prob, positive, ones, n_bins)[f"ece_{strategy}"][0])


def calibration_bootstrap(y_pred: np.ndarray, y_true: np.ndarray, labels: Sequence[str], n_bins: int = 10,
                          n_samples: int = 1000, label_idx_map: Optional[Mapping[str, int]] = None
                          ) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Bootstrap ECE (equal width, equal mass) and Brier score: (boot_stats, cis).

    Replicate i draws the images of `sklearn.utils.resample(random_state=i)`, as `bootstrap`, and
    its metrics are those of the drawn sample (bins re-formed on it). Columns `<label>_<metric>` for
    metric in `CALIBRATION_METRICS`, plus `Mean_<metric>` (mean over the 5 competition labels) when
    all 5 are among `labels`; cis is `compute_cis(boot_stats)`.
    """
    boot_stats = _calibration_replicates(y_pred, y_true, labels, _resample_counts(len(y_true), n_samples),
                                         n_bins, label_idx_map)
    return boot_stats, compute_cis(boot_stats)


def _calibration_replicates(y_pred: np.ndarray, y_true: np.ndarray, labels: Sequence[str], counts: np.ndarray,
                            n_bins: int = 10, label_idx_map: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """`calibration_bootstrap`'s replicate table for given draws (`counts`: items x replicates)."""
    y_pred, y_true = np.asarray(y_pred, dtype=np.float64), np.asarray(y_true)
    _check_inputs(y_pred, y_true, labels)
    _check_probabilities(y_pred)
    columns = {}
    for i, label in enumerate(labels):
        positive = _true_column(y_true, labels, i, label_idx_map) == 1
        for metric, values in _replicate_calibration(y_pred[:, i], positive, counts, n_bins).items():
            columns[f"{label}_{metric}"] = values
    if all(label in labels for label in COMPETITION_LABELS):
        for metric in CALIBRATION_METRICS:
            columns[f"Mean_{metric}"] = np.mean([columns[f"{label}_{metric}"] for label in COMPETITION_LABELS],
                                                axis=0)
    return pd.DataFrame(columns)


def calibration_metrics(y_pred: np.ndarray, y_true: np.ndarray, labels: Sequence[str], n_bins: int = 10,
                        label_idx_map: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """ECE (equal width, equal mass) and Brier score on the whole sample, as a 1-row DataFrame with
    `calibration_bootstrap`'s columns. Report these with the bootstrap's bounds: the bootstrap *mean*
    of an ECE sits above the full-sample value, since resampling noise only ever adds to a bin's gap."""
    ones = np.ones((len(np.asarray(y_true)), 1), dtype=np.int32)
    return _calibration_replicates(y_pred, y_true, labels, ones, n_bins, label_idx_map)


def reliability_curve(y_prob: np.ndarray, y_true: np.ndarray, n_bins: int = 10
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean probability, observed frequency, images) per non-empty equal-width bin, ascending."""
    y_prob, positive = np.asarray(y_prob, dtype=np.float64), np.asarray(y_true) == 1
    _check_probabilities(y_prob)
    bins = np.clip(np.floor(y_prob * n_bins).astype(np.int64), 0, n_bins - 1)
    sizes = np.bincount(bins, minlength=n_bins)
    used = sizes > 0
    mean_prob = np.bincount(bins, weights=y_prob, minlength=n_bins)[used] / sizes[used]
    observed = np.bincount(bins, weights=positive, minlength=n_bins)[used] / sizes[used]
    return mean_prob, observed, sizes[used]


def plot_reliability(y_pred_before: np.ndarray, y_pred_after: np.ndarray, y_true: np.ndarray,
                     labels: Sequence[str], out_path: Union[str, Path], n_bins: int = 10,
                     plot_labels: Optional[Sequence[str]] = None,
                     label_idx_map: Optional[Mapping[str, int]] = None) -> Path:
    """Save one PNG of reliability diagrams, a panel per label of `plot_labels` (default: all).

    Each panel shows the observed frequency against the mean probability in `n_bins` equal-width
    bins (marker area ~ images in the bin), before and after calibration, with each curve's ECE in
    the legend; the diagonal is perfect calibration. Agg canvas, no pyplot state.
    """
    y_true = np.asarray(y_true)
    shown = list(plot_labels if plot_labels is not None else labels)
    n_cols = min(3, len(shown))
    n_rows = -(-len(shown) // n_cols)
    figure = Figure(figsize=(4 * n_cols, 4 * n_rows))
    FigureCanvasAgg(figure)
    for k, label in enumerate(shown):
        i = list(labels).index(label)
        truth = _true_column(y_true, labels, i, label_idx_map)
        axes = figure.add_subplot(n_rows, n_cols, k + 1)
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        for name, y_pred, marker in (("uncalibrated", y_pred_before, "o"), ("calibrated", y_pred_after, "s")):
            column = np.asarray(y_pred, dtype=np.float64)[:, i]
            mean_prob, observed, sizes = reliability_curve(column, truth, n_bins)
            ece = expected_calibration_error(column, truth, n_bins)
            line, = axes.plot(mean_prob, observed, label=f"{name} ECE {ece:.3f}")
            axes.scatter(mean_prob, observed, s=200 * sizes / len(truth) + 4, marker=marker, color=line.get_color())
        axes.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="Mean predicted probability",
                 ylabel="Observed frequency", title=f"{label} ({int(truth.sum())} of {len(truth)} positive)")
        axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=120)
    return out_path


# ---------------------------------------------------------------------------------------------
# Reporting helpers
# ---------------------------------------------------------------------------------------------

def _label_name(column: str) -> str:
    return column[: -len("_auc")] if column.endswith("_auc") else column


def summarize_padchest(auroc: Union[pd.DataFrame, pd.Series, Mapping[str, float]],
                       positives: Mapping[str, int], min_positives: int = 50) -> Dict[str, object]:
    """The paper's PadChest headline: findings with AUROC > 0.9 and >= 0.7 among well-populated ones.

    `auroc`: a `compute_cis` table (its 'mean' row is used), a 1-row `evaluate` DataFrame, or a
    label -> AUROC mapping; `<label>_auc` names are matched to `positives` keys by plain label.
    Only findings with at least `min_positives` positives count.
    """
    if isinstance(auroc, pd.DataFrame):
        auroc = auroc.loc["mean"] if "mean" in auroc.index else auroc.iloc[0]
    values = pd.Series({_label_name(str(k)): float(v) for k, v in dict(auroc).items()})
    counts = pd.Series({_label_name(str(k)): int(v) for k, v in dict(positives).items()})
    missing = values.index.difference(counts.index)
    if len(missing):
        raise KeyError(f"no positive count for: {list(missing)}")
    eligible = values[counts.reindex(values.index) >= min_positives]
    above_09, at_least_07 = int((eligible > 0.9).sum()), int((eligible >= 0.7).sum())
    return {
        "n_findings": len(eligible),
        "auc_gt_0.9": above_09,
        "auc_ge_0.7": at_least_07,
        "headline": (f"AUROC > 0.9 on {above_09} findings and >= 0.7 on {at_least_07} of "
                     f"{len(eligible)} findings with >= {min_positives} positives"),
    }


def plot_roc_curves(y_pred: np.ndarray, y_true: np.ndarray, labels: Sequence[str], cis: pd.DataFrame,
                    out_path: Union[str, Path], plot_labels: Optional[Sequence[str]] = None,
                    label_idx_map: Optional[Mapping[str, int]] = None) -> Path:
    """Save one PNG with the ROC curves of `plot_labels` (default: all `labels`).

    Legends read "Label AUROC 0.xx [lo, hi]" from `cis` (the bootstrap mean and bounds of
    `<label>_auc`). Uses the Agg canvas directly, so no display or pyplot state is needed.
    """
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    figure = Figure(figsize=(6, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label in plot_labels if plot_labels is not None else labels:
        i = list(labels).index(label)
        fpr, tpr, _ = roc_curve(_true_column(y_true, labels, i, label_idx_map), y_pred[:, i])
        mean, lower, upper = cis[f"{label}_auc"].loc[["mean", "lower", "upper"]]
        axes.plot(fpr, tpr, label=f"{label} AUROC {mean:.2f} [{lower:.2f}, {upper:.2f}]")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="False Positive Rate", ylabel="True Positive Rate",
             title="ROC curves")
    axes.legend(loc="lower right", fontsize="small")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=150, bbox_inches="tight")
    return out_path


# ---------------------------------------------------------------------------------------------
# Localisation: where-maps against ground-truth regions (CheXlocalize's hit rate and IoU)
# ---------------------------------------------------------------------------------------------

def _check_maps(maps: np.ndarray, masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(N, H*W) float maps and bool masks; refuses shapes that differ, NaN maps and empty regions."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    if maps.ndim == 2:
        maps = np.broadcast_to(maps, masks.shape)   # one map (a prior) for every image
    if maps.shape != masks.shape or masks.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    if np.isnan(maps).any():
        raise ValueError("maps hold NaN")
    flat_masks = masks.reshape(len(masks), -1)
    empty = np.flatnonzero(~flat_masks.any(axis=1))
    if len(empty):
        raise ValueError(f"{len(empty)} of {len(masks)} masks are empty (first: row {empty[0]}); localisation is "
                         "scored on images that show the finding only")
    return maps.reshape(len(maps), -1), flat_masks


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pointing game: 1.0 where the map's maximum lies inside the image's region, else 0.0, per image.

    ``maps`` (N, H, W) or one (H, W) map for all; ``masks`` (N, H, W) bool, none empty. A tie for
    the maximum is resolved to the first pixel in row-major order (``np.argmax``), so a constant map
    points at the top-left corner rather than being credited everywhere.
    """
    maps, masks = _check_maps(maps, masks)
    return masks[np.arange(len(masks)), maps.argmax(axis=1)].astype(np.float64)


def iou_at_threshold(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per image, the IoU of the map's region with the ground truth.

    The map's region is where the map, min-max normalised per image to [0, 1] (CheXlocalize
    normalises saliency the same way), is at least ``threshold``. A constant map has no contrast and
    so no region (IoU 0).
    """
    maps, masks = _check_maps(maps, masks)
    low, high = maps.min(axis=1, keepdims=True), maps.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        region = ((maps - low) / (high - low) >= threshold) & (high > low)
    union = (region | masks).sum(axis=1)
    return (region & masks).sum(axis=1) / union


def prior_map(masks: np.ndarray) -> np.ndarray:
    """The prior baseline: the mean of training (or validation) regions of a label, (H, W) float64.

    It knows where a finding usually is, but nothing about the image at hand; a where-map is worth
    looking at only where it beats this."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or not len(masks):
        raise ValueError(f"prior_map needs (N, H, W) masks with N >= 1, got shape {masks.shape}")
    return masks.mean(axis=0)


def random_maps(n: int, shape: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """The chance baseline: (n, H, W) float32 maps of independent uniform noise (seeded)."""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def localisation_scores(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Per image: ``pointing`` (:func:`pointing_hits`) and ``iou`` (:func:`iou_at_threshold`)."""
    return pd.DataFrame({"pointing": pointing_hits(maps, masks), "iou": iou_at_threshold(maps, masks, threshold)})


def mean_bootstrap(scores: pd.DataFrame, n_samples: int = 1000) -> pd.DataFrame:
    """Bootstrap CIs of the mean of each column of per-image ``scores``: ``compute_cis`` of the
    replicate means (rows mean/lower/upper), replicate i drawing the images of
    ``sklearn.utils.resample(random_state=i)`` (the AUROC bootstrap's replicates), plus a row
    ``full``: the mean over all images."""
    counts = _resample_counts(len(scores), n_samples).astype(np.float64)
    replicates = pd.DataFrame(counts.T @ scores.to_numpy(np.float64) / len(scores), columns=scores.columns)
    table = compute_cis(replicates)
    table.loc["full"] = scores.mean(axis=0)
    return table


def localisation_bootstrap(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5, n_samples: int = 1000
                           ) -> pd.DataFrame:
    """Pointing-game hit rate and mean IoU over images showing the finding, with bootstrap CIs:
    :func:`mean_bootstrap` of :func:`localisation_scores` (columns ``pointing`` and ``iou``)."""
    return mean_bootstrap(localisation_scores(maps, masks, threshold), n_samples)
