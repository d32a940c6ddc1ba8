"""Checks: are the findings learnable, and not a brightness shortcut (`learnability`)? And what
do they look like (`contact_sheet`, docs/phantoms.png)?"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from . import streams
from .canvas import sample_anatomy
from .images import parallel_map, render
from .labels import COMPETITION, Finding
from .reports import findings_for_labels, iu_reports, sample_label_rows


def square_thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Longest side resized to `size`, zero-padded to a centred square (as CheXzero preprocesses)."""
    h, w = image.shape
    scale = size / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size), image.dtype)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _render_thumbnail(job: tuple) -> np.ndarray:
    seed, index, findings, size = job
    rng = streams.rng(seed, "learnability_image", index)
    anatomy = sample_anatomy(rng, female=bool(rng.random() < 0.5))
    view = "AP" if rng.random() < 0.4 else "PA"
    image = render(view, anatomy, findings, (224, int(rng.choice([168, 186, 200, 245]))), rng)
    return square_thumbnail((image * 255).round().astype(np.uint8), size).astype(np.float32) / 255.0


def learnability(n: int = 600, seed: int = 0, size: int = 64,
                 workers: int | None = None) -> dict[str, dict[str, float]]:
    """Held-out AUROC, per competition finding, of (a) logistic regression on `size` x `size`
    pixels (each image standardised, as a network's input would be) and (b) mean image intensity
    alone, on `n` frontal phantoms: two thirds to train, one third held out. Label sets are IU
    reports re-weighted so that each competition finding is in 35% of studies (enough positives);
    the other findings keep their IU co-occurrence."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = streams.rng(seed, "learnability_labels")
    rows = sample_label_rows(n, {label: 0.35 for label in COMPETITION}, rng)
    reports = iu_reports()
    jobs = [(seed, i, findings_for_labels(labels, reports[r], rng), size) for i, (r, labels) in enumerate(rows)]
    images = np.stack(list(parallel_map(_render_thumbnail, jobs, workers or os.cpu_count() or 1)))
    x = images.reshape(n, -1)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    train, test = np.arange(n) < 2 * n // 3, np.arange(n) >= 2 * n // 3
    scaler = StandardScaler().fit(x[train])
    result = {}
    for label in COMPETITION:
        y = np.array([label in labels for _, labels in rows])
        model = LogisticRegression(C=0.001, max_iter=3000).fit(scaler.transform(x[train]), y[train])
        logreg = roc_auc_score(y[test], model.decision_function(scaler.transform(x[test])))
        brightness = roc_auc_score(y[test], images[test].mean(axis=(1, 2)))
        result[label] = {"logreg_auroc": round(float(logreg), 4), "mean_intensity_auroc": round(float(brightness), 4)}
    return result


# ---- contact sheet ---------------------------------------------------------------------------

CONTACT_SHEET_CASES = [
    ("normal", []),
    ("Cardiomegaly (severe)", [Finding("Cardiomegaly", 3)]),
    ("Effusion (R, moderate)", [Finding("Pleural Effusion", 2, "right")]),
    ("Effusion (bilateral, small)", [Finding("Pleural Effusion", 1, "bilateral")]),
    ("Edema (moderate)", [Finding("Edema", 2)]),
    ("Consolidation (RUL)", [Finding("Consolidation", 3, "right", "upper")]),
    ("Consolidation (LLL)", [Finding("Consolidation", 2, "left", "lower")]),
    ("Atelectasis (L, plate-like)", [Finding("Atelectasis", 2, "left", "lower")]),
    ("Atelectasis (R, lobar)", [Finding("Atelectasis", 3, "right", "upper")]),
    ("Pneumothorax (R, large)", [Finding("Pneumothorax", 3, "right", "upper")]),
    ("Lung Lesion (L, mass)", [Finding("Lung Lesion", 3, "left", "upper")]),
    ("Enl. Cardiomediastinum", [Finding("Enlarged Cardiomediastinum", 3)]),
    ("Fracture (R rib)", [Finding("Fracture", 3, "right")]),
    ("Support Devices", [Finding("Support Devices", 2, device="pacemaker"),
                         Finding("Support Devices", 2, device="endotracheal_tube"),
                         Finding("Support Devices", 2, device="enteric_tube"),
                         Finding("Support Devices", 2, device="central_line")]),
    ("Lung Opacity + Pneumonia", [Finding("Lung Opacity", 2, "left", "middle"),
                                  Finding("Pneumonia", 3, "right", "lower")]),
    ("Cardiomegaly, Edema, Effusion", [Finding("Cardiomegaly", 2), Finding("Edema", 3),
                                       Finding("Pleural Effusion", 2, "bilateral")]),
]


def contact_sheet(path: str | Path, seed: int = 0, tile: tuple[int, int] = (172, 208)) -> None:
    """A grid of frontal phantoms, one per finding, each captioned (docs/phantoms.png); grey
    levels are posterized to 5 bits to keep the PNG small."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = tile
    caption = 18
    columns = 4
    rows = math.ceil(len(CONTACT_SHEET_CASES) / columns)
    sheet = Image.new("L", (columns * width, rows * (height + caption)), 0)
    font = ImageFont.load_default(size=11)
    draw = ImageDraw.Draw(sheet)
    for i, (title, findings) in enumerate(CONTACT_SHEET_CASES):
        rng = streams.rng(seed, "contact_sheet", i)
        anatomy = sample_anatomy(rng, female=False)
        image = render("PA", anatomy, findings, (height, width), rng)
        x, y = (i % columns) * width, (i // columns) * (height + caption)
        sheet.paste(Image.fromarray(np.round(np.round(image * 31) * 255 / 31).astype(np.uint8)), (x, y + caption))
        draw.text((x + 4, y + 3), title, fill=255, font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
