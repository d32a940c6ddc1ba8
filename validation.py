"""Validation during training: zero-shot mean AUROC on a labelled validation set.

The validation set is an h5 of images (``--val_cxr_filepath``) and a CSV with one row per image and
the CheXpert competition labels as 0/1 columns, by name (``--val_labels_path``): CheXpert's own
validation set in its format. :func:`validation_labels` checks them before training starts;
:func:`validation_auroc` is what the training loop logs and ranks its best checkpoints by.
"""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

import clip
from cxr_data import CXRTestDataset, h5_rows
from labels import COMPETITION_LABELS, PAIR_TEMPLATE
from model import CLIP
from runtime import TrainInputError


def validation_auroc(model: CLIP, loader: DataLoader, y_true: np.ndarray, labels: list[str],
                     pair_template: tuple[str, str] = PAIR_TEMPLATE) -> float:
    """Zero-shot mean AUROC over ``labels`` with the ``pair_template`` prompts (the original's
    ("{}", "no {}") by default)."""
    from sklearn.metrics import roc_auc_score

    import zero_shot
    was_training = model.training
    model.eval()
    y_pred = zero_shot.run_softmax_eval(model, loader, labels, pair_template, context_length=model.context_length)
    model.train(was_training)
    aucs = [roc_auc_score(y_true[:, i], y_pred[:, i]) for i in range(len(labels)) if len(set(y_true[:, i])) == 2]
    return float(np.mean(aucs)) if aucs else float("nan")


def validation_labels(config: Namespace) -> np.ndarray:
    """The validation labels (CheXpert column names, 0/1), checked against the validation h5."""
    path = Path(config.val_labels_path)
    if not path.is_file():
        raise TrainInputError(f"{path}: no such validation labels CSV (--val_labels_path)")
    try:
        labels = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise TrainInputError(f"{path}: not a readable CSV ({' '.join(str(err).split())}) "
                              "(--val_labels_path)") from None
    missing = [c for c in COMPETITION_LABELS if c not in labels.columns]
    if missing:
        raise TrainInputError(f"{path} lacks the label columns {missing} (--val_labels_path needs CheXpert's "
                              f"column names; it has {list(labels.columns)})")
    for column in COMPETITION_LABELS:
        bad = ~pd.to_numeric(labels[column], errors="coerce").isin([0, 1])
        if bad.any():
            shown = sorted({str(v) for v in labels[column][bad]})[:5]
            raise TrainInputError(f"{path}: column {column!r} has {int(bad.sum())} of {len(labels)} values that are "
                                  f"not 0 or 1 ({', '.join(shown)}); validation AUROC needs binary labels: map "
                                  "blanks and uncertain (-1) labels to 0 or 1 first")
    n = h5_rows(config.val_cxr_filepath)
    if n != len(labels):
        raise TrainInputError(f"{config.val_cxr_filepath} holds {n} images but {path} has {len(labels)} rows; "
                              "they must be row-aligned")
    return labels[COMPETITION_LABELS].to_numpy().astype(int)


def validation_data(config: Namespace, resolution: int) -> tuple[DataLoader, np.ndarray]:
    """Loader over the validation h5 and its labels (CheXpert-valid format, by name)."""
    y_true = validation_labels(config)
    dataset = CXRTestDataset(config.val_cxr_filepath, transform=clip.cxr_transform(resolution))
    return DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0), y_true
