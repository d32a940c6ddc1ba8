"""Bench: the original per-replicate sklearn bootstrap loop vs eval.bootstrap on 500 x 14 synthetic data.

Run from the repository root:  .venv/bin/python -m bench.eval
Prints both timings, the speedup, and whether the CIs are equal to 4 decimals.
"""
import sys
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import auc, precision_recall_curve, roc_curve
from sklearn.utils import resample

import eval as ev  # the repository's eval.py (run as a module: see above), not this file
from labels import CHEXPERT_EVAL_ORDER
from phantom.labels import CHEXPERT_TEST_POSITIVES

# CheXpert test positives out of 500 (spec section 5), in the project's label order.
POSITIVES = {label: CHEXPERT_TEST_POSITIVES[label] for label in CHEXPERT_EVAL_ORDER}
N, N_SAMPLES = 500, 1000


def synthetic_data(seed: int = 0):
    """Exact positive counts per label; float32 scores near 0.5 like CheXzero's softmax output."""
    rng = np.random.default_rng(seed)
    y_true = np.zeros((N, len(POSITIVES)), dtype=int)
    for j, n_pos in enumerate(POSITIVES.values()):
        y_true[rng.choice(N, n_pos, replace=False), j] = 1
    y_pred = 0.5 + 0.03 * rng.standard_normal(y_true.shape) + 0.04 * y_true
    return y_pred.astype(np.float32), y_true


def original_bootstrap(y_pred, y_true, labels, n_samples):
    """The original eval.bootstrap: per replicate and label roc_curve + auc + operating point +
    the discarded precision_recall_curve + auc, one DataFrame per label, concatenated."""
    idx = np.arange(len(y_true))
    boot_stats = []
    for i in range(n_samples):
        sample = resample(idx, replace=True, random_state=i)
        frames = []
        for j, label in enumerate(labels):
            with warnings.catch_warnings():  # the original silenced all warnings in evaluate()
                warnings.simplefilter("ignore")
                fpr, tpr, thresholds = roc_curve(y_true[sample, j], y_pred[sample, j])
                roc_auc = auc(fpr, tpr)
                ev.choose_operating_point(fpr, tpr, thresholds)
                frames.append(pd.DataFrame([[roc_auc]], columns=[f"{label}_auc"]))
                precision, recall, _ = precision_recall_curve(y_true[sample, j], y_pred[sample, j])
                auc(recall, precision)
        boot_stats.append(pd.concat(frames, axis=1))
    boot_stats = pd.concat(boot_stats)
    return boot_stats, ev.compute_cis(boot_stats)


def main() -> None:
    y_pred, y_true = synthetic_data()
    labels = list(POSITIVES)

    start = time.perf_counter()
    _, original_cis = original_bootstrap(y_pred, y_true, labels, N_SAMPLES)
    original_s = time.perf_counter() - start

    vectorised_s = float("inf")
    for _ in range(3):  # best of 3: the vectorised run is short and the machine is shared
        start = time.perf_counter()
        _, cis = ev.bootstrap(y_pred, y_true, labels, n_samples=N_SAMPLES)
        vectorised_s = min(vectorised_s, time.perf_counter() - start)

    equal = cis.equals(original_cis)
    print(f"data: {N} x {len(labels)}, {N_SAMPLES} replicates")
    print(f"original per-replicate sklearn loop: {original_s:.2f} s")
    print(f"vectorised eval.bootstrap (best of 3): {vectorised_s:.3f} s")
    print(f"speedup: {original_s / vectorised_s:.0f}x")
    print(f"CIs equal to 4 decimals (mean, lower, upper; {cis.size} values): {equal}")
    if not equal:
        print((cis - original_cis).abs().max().to_string())
        sys.exit(1)


if __name__ == "__main__":
    main()
