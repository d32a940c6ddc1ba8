"""Where do the where-maps point? Score them against ground-truth regions, per label, each method
beside two baselines.

    python run_localisation.py --model_paths checkpoints/demo/best_*.pt \\
        --cxr_filepath data/demo/chexpert_test.h5 --labels_path data/demo/chexpert_test_labels.csv \\
        --segmentations data/phantom-demo/chexpert-test/gt_segmentations.json \\
        --prior_labels_path data/demo/chexpert_valid_labels.csv \\
        --prior_segmentations data/phantom-demo/chexpert/CheXpert-v1.0-small/gt_segmentations_valid.json \\
        --out results/demo

The regions are CheXlocalize's files (``gt_segmentations_{val,test}.json``, the radiologists' regions
of the CheXpert valid and test sets) or the phantom generator's, in the same layout
(segmentations.py). The labels CSVs are preprocess_train_data.py's (a ``Path`` column naming each
h5 row's image file, from which its region key is made).

For every label, on the test images that are positive and have a region: the pointing game (is the
map's maximum inside the region) and the IoU of the map's region (min-max normalised map >=
--iou_threshold) with the truth, mean and bootstrap 95% CI (the AUROC bootstrap's replicates), for

- each --methods (maps.py: ``patch``, the spatial tokens scored against the label's text direction;
  ``occlusion``, the score's drop when a square is masked),
- ``prior``: one map for every image, the mean region of the label over the --prior_* images (the
  validation set: what the label's region usually is, knowing nothing of the image at hand),
- ``random``: independent uniform noise per pixel (chance).

Writes ``localisation.csv``, ``localisation.md`` and, with --overlays N, ``localisation.png``: the
first N evaluated images of each label with each method's map and the true region outlined.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import cxr_data
import errors
import eval as ev
import maps
import segmentations as seg
import zero_shot as zs
from errors import UserError
from labels import COMPETITION_LABELS, PAIR_TEMPLATE
from run_zero_shot import check_device, check_template, expand_model_paths

log = logging.getLogger("run_localisation")

BASELINES = ("prior", "random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_paths", nargs="+", default=["models/chexzero_weights"],
                   help="checkpoints: files, globs or folders, the ensemble (default: models/chexzero_weights)")
    p.add_argument("--cxr_filepath", required=True, help="test images, HDF5 with dataset 'cxr'")
    p.add_argument("--labels_path", required=True, help="labels CSV row-aligned with the h5, with a Path column")
    p.add_argument("--segmentations", required=True, help="regions of the test images (gt_segmentations JSON)")
    p.add_argument("--prior_labels_path", required=True,
                   help="labels CSV (with Path) of the images whose mean region is the prior, e.g. validation")
    p.add_argument("--prior_segmentations", required=True, help="regions of the --prior_labels_path images")
    p.add_argument("--labels", nargs="+", default=list(COMPETITION_LABELS),
                   help="labels to score (default: the 5 competition labels)")
    p.add_argument("--methods", nargs="+", default=list(maps.MAP_METHODS), choices=maps.MAP_METHODS,
                   help="map methods (default: patch occlusion)")
    p.add_argument("--pair_template", nargs=2, default=list(PAIR_TEMPLATE), metavar=("POSITIVE", "NEGATIVE"),
                   help="prompt templates, '{}' is the label (default: '{}' 'no {}')")
    p.add_argument("--prompt_style", default="chexzero", choices=zs.PROMPT_STYLES)
    p.add_argument("--occlusion_window", type=errors.positive_int, default=maps.Occlusion.window,
                   help=f"occlusion: side of the masked square in h5 pixels (default {maps.Occlusion.window})")
    p.add_argument("--occlusion_stride", type=errors.positive_int, default=maps.Occlusion.stride,
                   help=f"occlusion: step between squares (default {maps.Occlusion.stride}; the time grows with "
                        "(320 / stride)^2)")
    p.add_argument("--iou_threshold", type=float, default=0.5,
                   help="the map's region: min-max normalised map >= this (default 0.5)")
    p.add_argument("--bootstrap", type=errors.int_at_least(40, " (the 2.5% bound needs one replicate below it)"),
                   default=1000, help="bootstrap replicates (>= 40; default 1000)")
    p.add_argument("--overlays", type=errors.non_negative_int, default=3,
                   help="images per label in localisation.png (default 3; 0: no picture)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--batch_size", type=errors.positive_int, default=16)
    p.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when present)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions/)")
    args = p.parse_args(argv)
    if not 0.0 < args.iou_threshold <= 1.0:
        p.error(f"--iou_threshold {args.iou_threshold}: must lie in (0, 1]")
    for template in args.pair_template:
        check_template(p, template)
    if args.device is not None:
        check_device(p, args.device)
    return args


def image_paths(labels_path: str | Path) -> list[str]:
    """The ``Path`` column of a labels CSV, each checked to name a CheXpert-style image (a region key)."""
    table = zs.read_label_csv(labels_path, "labels CSV")
    if "Path" not in table.columns:
        raise UserError(f"{labels_path}: no Path column; use the labels CSV that preprocess_train_data.py wrote "
                        "(it names each h5 row's image file)")
    paths = table["Path"].astype(str).tolist()
    for path in paths:
        seg.segmentation_key(path)   # a one-line error for a path without patient/study folders
    return paths


def evaluated_rows(y_true: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows that are positive and have a region, and how many positives have none."""
    positive = y_true == 1
    has_region = masks.reshape(len(masks), -1).any(axis=1)
    return np.flatnonzero(positive & has_region), int((positive & ~has_region).sum())


def label_maps(args: argparse.Namespace, model_paths: list[str], labels: list[str], rows: np.ndarray,
               method: str) -> tuple[np.ndarray, np.ndarray]:
    """(maps (R, C, 320, 320) float16, probabilities (R, C)) of the ensemble for the h5 ``rows``."""
    chunks = list(maps.h5_map_batches(model_paths, args.cxr_filepath, labels, method, rows,
                                      pair_template=args.pair_template, prompt_style=args.prompt_style,
                                      batch_size=args.batch_size, device=args.device, progress=True,
                                      occlusion=maps.Occlusion(args.occlusion_window, args.occlusion_stride)))
    return (np.concatenate([m.astype(np.float16) for _, m, _ in chunks]),
            np.concatenate([p for _, _, p in chunks]))


def result_row(label: str, method: str, scores: pd.DataFrame, missing: int, n_bootstrap: int) -> dict:
    table = ev.mean_bootstrap(scores, n_bootstrap)
    row = {"label": label, "method": method, "images": len(scores), "positives_without_region": missing}
    for metric in ("pointing", "iou"):
        for bound in ("full", "mean", "lower", "upper"):
            row[f"{metric}_{bound}"] = table.loc[bound, metric]
    return row


def markdown(results: pd.DataFrame, threshold: float) -> str:
    """Per label and method: images, pointing game and IoU, full-sample value [bootstrap 95% CI]."""
    lines = [f"| Label | Images | Method | Pointing game [95% CI] | IoU at {threshold:g} [95% CI] |",
             "|---|---:|---|---|---|"]
    for _, r in results.iterrows():
        cells = [f"{r[f'{m}_full']:.3f} [{r[f'{m}_lower']:.3f}, {r[f'{m}_upper']:.3f}]" for m in ("pointing", "iou")]
        lines.append(f"| {r['label']} | {r['images']} | {r['method']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def contact_sheet(tiles: list[list[Image.Image]], path: Path) -> None:
    """One PNG, a row of equally sized pictures per list."""
    width, height = tiles[0][0].size
    sheet = Image.new("RGB", (width * max(len(row) for row in tiles), height * len(tiles)), "white")
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            sheet.paste(tile.resize((width, height)), (j * width, i * height))
    sheet.save(path)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Score each method and baseline per label; write the tables (and the overlays); return the table."""
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; pass a folder for the outputs")
    model_paths = expand_model_paths(args.model_paths)
    test_paths, prior_paths = image_paths(args.labels_path), image_paths(args.prior_labels_path)
    zs.check_alignment(args.labels_path, len(test_paths), args.cxr_filepath)
    y_true = zs.make_true_labels(args.labels_path, args.labels)
    test_regions, prior_regions = seg.read_segmentations(args.segmentations), seg.read_segmentations(
        args.prior_segmentations)
    images = cxr_data.H5Images(args.cxr_filepath)
    resolution = np.asarray(images[0]).shape[-1]   # masks on the h5's pixel grid

    plan = {}
    for i, label in enumerate(args.labels):
        masks = seg.model_masks(test_regions, test_paths, label, resolution)
        rows, missing = evaluated_rows(y_true[:, i], masks)
        prior_masks = seg.model_masks(prior_regions, prior_paths, label, resolution)
        prior_masks = prior_masks[prior_masks.reshape(len(prior_masks), -1).any(axis=1)]
        if not len(rows) or not len(prior_masks):
            raise UserError(f"{label}: {len(rows)} positive test images with a region in {args.segmentations} and "
                            f"{len(prior_masks)} regions in {args.prior_segmentations}; localisation needs both "
                            "(choose --labels that the files hold regions for)")
        plan[label] = (rows, masks[rows], missing, ev.prior_map(prior_masks))
        log.info("%s: %d positive test images with a region (%d without), prior from %d regions", label, len(rows),
                 missing, len(prior_masks))

    all_rows = np.unique(np.concatenate([rows for rows, *_ in plan.values()]))
    position = {row: k for k, row in enumerate(all_rows)}
    results, pictures = [], {label: [] for label in args.labels}
    for method in args.methods:
        method_maps, probabilities = label_maps(args, model_paths, list(args.labels), all_rows, method)
        for c, (label, (rows, masks, missing, _)) in enumerate(plan.items()):
            picked = [position[row] for row in rows]
            scores = ev.localisation_scores(method_maps[picked, c].astype(np.float32), masks, args.iou_threshold)
            results.append(result_row(label, method, scores, missing, args.bootstrap))
            for k in range(min(args.overlays, len(rows))):
                pictures[label].append(maps.overlay(np.asarray(images[int(rows[k])]), method_maps[picked[k], c]
                                                    .astype(np.float32), label, float(probabilities[picked[k], c]),
                                                    method, region=masks[k]))
        del method_maps
    for i, (label, (rows, masks, missing, prior)) in enumerate(plan.items()):
        results.append(result_row(label, "prior", ev.localisation_scores(prior, masks, args.iou_threshold), missing,
                                  args.bootstrap))
        noise = ev.random_maps(len(rows), masks.shape[1:], seed=args.seed + i)
        results.append(result_row(label, "random", ev.localisation_scores(noise, masks, args.iou_threshold),
                                  missing, args.bootstrap))
    order = {method: k for k, method in enumerate([*args.methods, *BASELINES])}
    table = pd.DataFrame(results)
    table = table.sort_values(["label", "method"], key=lambda col: col.map(
        {label: k for k, label in enumerate(args.labels)} if col.name == "label" else order), kind="stable")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "localisation.csv", index=False)
    (out / "localisation.md").write_text(markdown(table, args.iou_threshold))
    if args.overlays and args.methods:
        contact_sheet([pictures[label] for label in args.labels], out / "localisation.png")
    log.info("Localisation on %s, pointing game and IoU [95%% CI]:\n%s", args.cxr_filepath,
             markdown(table, args.iou_threshold))
    log.info("Outputs in %s", out)
    return table


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(errors.run_cli(main))
