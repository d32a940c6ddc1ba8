"""Linear-probe evaluation of a CLIP checkpoint ensemble: logistic regression on frozen image features.

The second standard evaluation of CLIP models, beside zero-shot (run_zero_shot.py): the image
encoder is frozen, and a per-label L2-regularised logistic regression (scikit-learn) is fitted on its
L2-normalised image embeddings of a labelled training h5, then scored on the test h5 with the same
AUROC table and bootstrap CIs as zero-shot.

    python linear_probe.py --model_paths checkpoints/demo/best_*.pt \\
        --train_cxr_filepath data/chexpert_valid.h5 --train_labels_path data/chexpert_valid_labels.csv \\
        --cxr_filepath data/chexpert_test.h5 --labels_path data/chexpert_test_labels.csv --out probe/

Regularisation: C is chosen per label from --C_grid by validation AUROC: on --val_cxr_filepath /
--val_labels_path when given (probes fitted on the training h5, scored on validation), otherwise by
seeded stratified --cv_folds-fold cross-validation on the training h5 (mean fold AUROC). Ties go to
the smaller C (stronger regularisation). The final probes are refitted with that C on the whole
training h5.

Ensembles: one probe per checkpoint and label, on that checkpoint's features; the ensemble's
probability is the mean of the checkpoints' probabilities, as the zero-shot ensemble averages
its checkpoints' probabilities (features of different checkpoints live in unrelated spaces, so
concatenating them would give one probe many more weights than the training set supports). C is
chosen on the ensemble's validation AUROC, so one C per label.

Features (N, embed_dim) float32 are cached per checkpoint and h5 as
``<features_dir>/<checkpoint stem>-<h5 stem>-<hash>.npy`` (default ``<out>/features``; a ``.json``
beside it says what the hash covers: checkpoint and h5 path, size and mtime) and reused on a rerun:
a checkpoint whose features are all cached is not loaded.

A label with a single class in training is skipped with a warning. Outputs in --out:
linear_probe_auroc.csv / .md (run_zero_shot's table), linear_probe_preds.npy / .csv (ensemble
probabilities, with the test CSV's key columns), linear_probe_C.csv / .json (per label: chosen C,
its validation AUROC, and the validation AUROC of every C of the grid). A user error is one line
on stderr and exit status 2 (--debug shows the traceback).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

import cxr_data
import errors
import run_zero_shot as rzs
import zero_shot as zs
from errors import UserError
from labels import CHEXPERT_EVAL_ORDER

log = logging.getLogger("linear_probe")

#: default regularisation grid (inverse strength); L2-normalised features have a small scale, hence large C
C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
MAX_ITER = 2000


# --------------------------------------------------------------------------- features
def feature_cache_path(cache_dir: str | Path, model_path: str | Path, cxr_filepath: str | Path
                       ) -> tuple[Path, dict]:
    """``(path, key)``: where the features of ``model_path`` on ``cxr_filepath`` are cached, and what
    the hash covers (both files' path, size and mtime, as :func:`zero_shot.cache_key`)."""
    key = {"checkpoint": zs.file_identity(model_path), "images": zs.file_identity(cxr_filepath),
           "features": "zero_shot.image_features, L2-normalised float32"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{Path(model_path).stem}-{Path(cxr_filepath).stem}-{digest}.npy", key


def ensemble_features(model_paths: Sequence[str | Path], cxr_filepaths: Sequence[str | Path],
                      cache_dir: str | Path, *, batch_size: int = 64, num_workers: int | None = None,
                      device: torch.device | str | None = None) -> list[list[np.ndarray]]:
    """``features[i][k]``: (N_i, embed_dim) L2-normalised image features of h5 ``i`` by checkpoint ``k``.

    Computed as :func:`zero_shot.ensemble_models` does (raw uint8 batches, the device transform for
    the model's resolution, :func:`zero_shot.image_features`), cached in ``cache_dir`` and reused;
    a checkpoint is loaded only when one of its features is not cached.
    """
    device = torch.device(device) if device is not None else cxr_data.default_device()
    features: list[list[np.ndarray]] = [[] for _ in cxr_filepaths]
    for path in model_paths:
        model = transform = None
        for i, h5 in enumerate(cxr_filepaths):
            cache_path, key = feature_cache_path(cache_dir, path, h5)
            if cache_path.is_file():
                log.info("%s on %s: cached features %s", Path(path).name, Path(h5).name, cache_path)
                features[i].append(np.load(cache_path))
                continue
            if model is None:
                model = zs.load_clip(path, None, device=device)
                transform = cxr_data.DeviceTransform(model.visual.input_resolution)
            loader = zs.raw_loader(h5, batch_size, num_workers, device)
            x = zs.image_features(model, loader, progress=True, transform=transform).cpu().numpy()
            log.info("%s on %s: %d x %d features", Path(path).name, Path(h5).name, *x.shape)
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache_path, x)
            cache_path.with_suffix(".json").write_text(json.dumps(key, indent=1))
            features[i].append(x)
        del model
    return features


# --------------------------------------------------------------------------- probes
def fit_probe(x: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    """An L2 logistic regression (lbfgs) of ``y`` (0/1) on ``x`` with inverse strength ``C``."""
    probe = LogisticRegression(C=C, max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # only at the largest C; the AUROC still counts
        return probe.fit(x, y)


def ensemble_probability(train: Sequence[np.ndarray], y: np.ndarray, test: Sequence[np.ndarray],
                         C: float) -> np.ndarray:
    """Mean over checkpoints of P(y=1) on ``test[k]`` of a probe fitted on ``train[k]``.

    BLAS runs on one thread: these problems are small, and more threads make each fit 10x slower."""
    with threadpool_limits(1):
        return np.mean([fit_probe(a, y, C).predict_proba(b)[:, 1] for a, b in zip(train, test)], axis=0)


def validation_scores(train: Sequence[np.ndarray], y: np.ndarray, c_grid: Sequence[float],
                      val: Sequence[np.ndarray] | None = None, y_val: np.ndarray | None = None,
                      cv_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Validation AUROC of the ensemble's probe for each C of ``c_grid`` (NaN where it cannot be computed).

    With ``val``/``y_val``: fitted on ``train``, scored on ``val``. Otherwise the mean AUROC over a
    seeded stratified ``cv_folds``-fold split of ``train`` (fewer folds when the rarer class has
    fewer rows, so that every fold holds both classes; NaN below 2 rows)."""
    if val is not None:
        if y_val is None or y_val.min() == y_val.max():
            return np.full(len(c_grid), np.nan)
        return np.array([roc_auc_score(y_val, ensemble_probability(train, y, val, C)) for C in c_grid])
    folds = min(cv_folds, int(np.bincount(y.astype(int), minlength=2).min()))
    if folds < 2:
        return np.full(len(c_grid), np.nan)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(train[0], y))
    return np.array([np.mean([roc_auc_score(y[b], ensemble_probability([x[a] for x in train], y[a],
                                                                       [x[b] for x in train], C))
                              for a, b in splits]) for C in c_grid])


def choose_C(scores: np.ndarray, c_grid: Sequence[float]) -> float:
    """The C of the best validation AUROC; ties go to the first in ``c_grid``; 1.0 if none could be scored."""
    if np.isnan(scores).all():
        return 1.0
    return float(c_grid[int(np.nanargmax(scores))])


def linear_probe(train: Sequence[np.ndarray], y_train: np.ndarray, test: Sequence[np.ndarray],
                 labels: Sequence[str], c_grid: Sequence[float] = C_GRID, val: Sequence[np.ndarray] | None = None,
                 y_val: np.ndarray | None = None, cv_folds: int = 5, seed: int = 0
                 ) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """``(y_pred, kept, choices)``: the ensemble's test probabilities (N_test, len(kept)) per kept label,
    and per kept label the chosen C, its validation AUROC and every C's (columns ``auroc_C=<c>``).

    ``train``, ``test``, ``val``: one feature array per checkpoint; ``y_train`` (and ``y_val``) 0/1 with
    one column per label. A label with a single class in training is skipped with a warning."""
    c_grid = sorted(c_grid)
    columns, kept, rows = [], [], []
    for j, label in enumerate(labels):
        y = y_train[:, j].astype(int)
        if y.min() == y.max():
            log.warning("%s: only class %d in the training labels; no probe, left out", label, y[0])
            continue
        scores = validation_scores(train, y, c_grid, val, None if y_val is None else y_val[:, j].astype(int),
                                   cv_folds, seed)
        C = choose_C(scores, c_grid)
        if np.isnan(scores).all():
            log.warning("%s: no validation AUROC (too few positives or negatives); C = 1.0", label)
        columns.append(ensemble_probability(train, y, test, C))
        kept.append(label)
        rows.append({"C": C, "val_auroc": float(np.nanmax(scores)) if not np.isnan(scores).all() else np.nan,
                     **{f"auroc_C={c:g}": s for c, s in zip(c_grid, scores)}})
    if not kept:
        raise UserError("every label has a single class in the training labels; no probe can be fitted")
    choices = pd.DataFrame(rows, index=pd.Index(kept, name="label"))
    return np.stack(columns, axis=1), kept, choices


# --------------------------------------------------------------------------- CLI
def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_paths", nargs="+", default=["models/chexzero_weights"],
                   help="checkpoints: files, globs, or folders of *.pt (default: models/chexzero_weights)")
    p.add_argument("--train_cxr_filepath", required=True, help="training images, HDF5 with dataset 'cxr'")
    p.add_argument("--train_labels_path", required=True, help="training labels CSV, row-aligned with its h5")
    p.add_argument("--cxr_filepath", required=True, help="test images, HDF5 with dataset 'cxr'")
    p.add_argument("--labels_path", required=True, help="test labels CSV, row-aligned with its h5")
    p.add_argument("--val_cxr_filepath", default=None, help="validation images for choosing C (default: "
                                                            "cross-validation on the training h5)")
    p.add_argument("--val_labels_path", default=None, help="validation labels CSV, row-aligned with its h5")
    p.add_argument("--labels", nargs="+", default=None,
                   help="labels to evaluate (default: the 14 CheXpert labels present in the training and test "
                        "CSVs); quote names with spaces")
    p.add_argument("--C_grid", nargs="+", type=positive_float, default=list(C_GRID),
                   help=f"inverse regularisation strengths to choose from (default: {' '.join(map(str, C_GRID))})")
    p.add_argument("--cv_folds", type=errors.int_at_least(2), default=5,
                   help="folds of the seeded stratified cross-validation without validation data (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation split (default 0)")
    p.add_argument("--bootstrap", type=errors.int_at_least(40, " (the 2.5% bound needs one replicate below it)"),
                   default=1000, help="bootstrap replicates (>= 40; default 1000)")
    p.add_argument("--out", default="linear_probe", help="output folder (default: linear_probe/)")
    p.add_argument("--features_dir", default=None, help="feature cache folder (default: <out>/features)")
    p.add_argument("--batch_size", type=errors.positive_int, default=64, help="images per batch (default 64)")
    p.add_argument("--num_workers", type=errors.non_negative_int, default=None,
                   help="loader processes (default: 0 on the CPU, up to 8 with a GPU)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    args = p.parse_args(argv)
    if (args.val_cxr_filepath is None) != (args.val_labels_path is None):
        p.error("--val_cxr_filepath and --val_labels_path go together")
    if args.device is not None:
        rzs.check_device(p, args.device)
    return args


def read_labelled(labels_path: str, cxr_filepath: str, flag: str) -> pd.DataFrame:
    """A label CSV checked to have one row per image of its h5 (one-line user errors)."""
    table = zs.read_label_csv(labels_path, flag)
    zs.check_alignment(labels_path, len(table), cxr_filepath)
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the linear probe; return the AUROC table. Inputs are checked before any model runs."""
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; pass a folder for the outputs")
    model_paths = rzs.expand_model_paths(args.model_paths)
    log.info("%d checkpoints: %s", len(model_paths), ", ".join(Path(p).name for p in model_paths))

    train_table = read_labelled(args.train_labels_path, args.train_cxr_filepath, "--train_labels_path")
    test_table = read_labelled(args.labels_path, args.cxr_filepath, "--labels_path")
    val_table = None
    if args.val_cxr_filepath is not None:
        val_table = read_labelled(args.val_labels_path, args.val_cxr_filepath, "--val_labels_path")
    labels = args.labels
    if labels is None:
        labels = [label for label in CHEXPERT_EVAL_ORDER
                  if label in train_table.columns and label in test_table.columns
                  and (val_table is None or label in val_table.columns)]
        if not labels:
            raise UserError(f"{args.labels_path}: no CheXpert label column; choose --labels")
    y_train = zs.label_columns(args.train_labels_path, train_table, labels).to_numpy()
    y_test = zs.label_columns(args.labels_path, test_table, labels).to_numpy()
    y_val = None if val_table is None else zs.label_columns(args.val_labels_path, val_table, labels).to_numpy()

    h5s = [args.train_cxr_filepath, args.cxr_filepath] + ([args.val_cxr_filepath] if val_table is not None else [])
    features = ensemble_features(model_paths, h5s, Path(args.features_dir or out / "features"),
                                 batch_size=args.batch_size, num_workers=args.num_workers, device=args.device)
    train, test = features[0], features[1]
    val = features[2] if val_table is not None else None
    y_pred, kept, choices = linear_probe(train, y_train, test, labels, args.C_grid, val, y_val, args.cv_folds,
                                         args.seed)
    y_test = y_test[:, [labels.index(label) for label in kept]]

    out.mkdir(parents=True, exist_ok=True)
    choices.to_csv(out / "linear_probe_C.csv")
    (out / "linear_probe_C.json").write_text(json.dumps(
        {"selection": "validation h5" if val is not None else f"{args.cv_folds}-fold cross-validation, "
                                                                 f"seed {args.seed}",
         "C_grid": sorted(args.C_grid), "C": choices["C"].to_dict(),
         "val_auroc": {k: (None if np.isnan(v) else v) for k, v in choices["val_auroc"].items()}}, indent=1))
    np.save(out / "linear_probe_preds.npy", y_pred)
    keys = test_table[[c for c in test_table.columns if c not in rzs.binary_columns(test_table)]]
    pd.concat([keys, pd.DataFrame(y_pred, columns=kept)], axis=1).to_csv(out / "linear_probe_preds.csv",
                                                                         index=False)
    results, _ = rzs.auroc_table(y_pred, y_test, kept, args.bootstrap)
    results.to_csv(out / "linear_probe_auroc.csv")
    (out / "linear_probe_auroc.md").write_text(rzs.markdown(results))
    log.info("Linear-probe AUROC, %d-model ensemble, %d training images, bootstrap mean [95%% CI]:\n%s",
             len(model_paths), len(y_train), rzs.markdown(results))
    log.info("Outputs in %s", out)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(errors.run_cli(main))
