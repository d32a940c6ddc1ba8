"""Zero-shot evaluation of a checkpoint ensemble on CheXpert test or PadChest.

    python run_zero_shot.py --model_paths models/chexzero_weights \\
        --cxr_filepath data/chexpert_test.h5 --labels_path data/chexpert-test/groundtruth.csv \\
        --val_cxr_filepath data/chexpert_valid.h5 --val_labels_path data/chexpert_valid_labels.csv \\
        --out predictions/

Writes to --out: per-model predictions (cached/<stem>-<hash>.npy, reused on a rerun with the same
inputs), the ensemble's predictions (<dataset>_preds.npy and .csv with the study key), auroc.csv
and auroc.md (bootstrap mean [2.5%, 97.5%] per label, and the 5-pathology mean on CheXpert),
roc.png; with validation data, thresholds.csv (per label, maximising MCC, F1 and Youden's J on
validation) and mcc_f1.csv (test MCC and F1 at the frozen thresholds, bootstrap CIs); for PadChest,
padchest_summary.json (findings with AUROC > 0.9 and >= 0.7).

With validation data the probabilities are also calibrated (calibration.py; --calibration_method
platt, the default, or isotonic): a per-label map fitted on the validation predictions (the ones the
thresholds use), applied frozen to test. Outputs: calibration.json (the maps, for predict.py
--calibration), <dataset>_preds_calibrated.csv, calibration.csv (per label ECE with 10 equal-width and
10 equal-mass bins and Brier score, before and after: the whole test set's value, and the bootstrap
mean [2.5%, 97.5%]; the full-sample AUROC before and after), calibration.png (reliability diagrams),
and ECE and Brier columns in auroc.md.
The AUROC table itself is always that of the uncalibrated ensemble.

Inputs are checked before any model runs: the h5 files (key 'cxr', shape, 0..255 grey levels), the
label CSVs (row-aligned with their h5, the label columns present and holding only 0/1: blanks, NaN
and -1 "uncertain" are refused with the counts per column), the checkpoint paths and the flags. A
user error is one line on stderr and exit status 2; --debug (or CHEXZERO_DEBUG=1) shows its traceback.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import string
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import calibration as cal
import errors
import eval as ev
import zero_shot as zs
from errors import UserError
from labels import CHEXPERT_EVAL_ORDER, COMPETITION_LABELS, PAIR_TEMPLATE

log = logging.getLogger("run_zero_shot")

DATASETS = ("chexpert", "padchest")


class ModelPathError(UserError, FileNotFoundError):
    """A --model_paths entry that names no checkpoint (a FileNotFoundError, as before)."""



class LabelSelectionError(UserError, ValueError):
    """No label is left to evaluate (a ValueError, as before)."""


def check_template(p: argparse.ArgumentParser, template: str) -> None:
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        template.format("label")
    except (ValueError, IndexError, KeyError):
        fields = None
    if not fields:
        p.error(f"--pair_template {template!r}: a template needs '{{}}' where the label goes (and no other "
                "braces), e.g. --pair_template '{}' 'no {}'")


def check_device(p: argparse.ArgumentParser, name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        p.error(f"--device {name!r}: not a PyTorch device; e.g. cpu, cuda, cuda:1")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            p.error(f"--device {name}: PyTorch sees no CUDA GPU here; pass --device cpu or leave --device out")
        if device.index is not None and device.index >= count:
            p.error(f"--device {name}: there are {count} CUDA GPUs (cuda:0 to cuda:{count - 1})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_paths", nargs="+", default=["models/chexzero_weights"],
                   help="checkpoints: files, globs, or folders (a folder means every *.pt in it); the "
                        "ensemble averages their probabilities (default: models/chexzero_weights)")
    p.add_argument("--cxr_filepath", required=True, help="test images, HDF5 with dataset 'cxr'")
    p.add_argument("--labels_path", required=True,
                   help="labels CSV row-aligned with the h5; label columns are selected by name")
    p.add_argument("--dataset", default="chexpert", choices=DATASETS,
                   help="chexpert: the 14 CheXpert labels by default; padchest: every 0/1 column with at "
                        "least --min_positives positives, and the AUROC > 0.9 / >= 0.7 summary")
    p.add_argument("--labels", nargs="+", default=None,
                   help="labels to evaluate (default: see --dataset); quote names with spaces")
    p.add_argument("--pair_template", nargs=2, default=list(PAIR_TEMPLATE), metavar=("POSITIVE", "NEGATIVE"),
                   help="prompt templates, '{}' is the label (default: '{}' 'no {}')")
    p.add_argument("--prompt_style", default="chexzero", choices=zs.PROMPT_STYLES,
                   help="chexzero: the original prompts for every label (inverts 'No Finding'); "
                        "negation_aware: labels that are negations get a correct negative")
    p.add_argument("--val_cxr_filepath", default=None, help="validation images for the thresholds")
    p.add_argument("--val_labels_path", default=None,
                   help="validation labels (CheXpert valid format: Path + observations), row-aligned")
    p.add_argument("--calibration_method", default=None, choices=cal.METHODS,
                   help="calibration fitted on the validation data: platt (default; keeps AUROC) or isotonic "
                        "(more flexible; its ties can change AUROC slightly)")
    p.add_argument("--bootstrap", type=errors.int_at_least(40, " (the 2.5% bound needs one replicate below it)"),
                   default=1000, help="bootstrap replicates (>= 40; default 1000)")
    p.add_argument("--min_positives", type=errors.non_negative_int, default=None,
                   help="drop labels with fewer test positives (default: 50 for padchest, 0 for chexpert)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions/)")
    p.add_argument("--batch_size", type=errors.positive_int, default=64,
                   help="images per batch (default 64; 256 suits a GPU)")
    p.add_argument("--num_workers", type=errors.non_negative_int, default=None,
                   help="loader processes (default: 0 on the CPU, up to 8 with a GPU)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--context_length", type=errors.positive_int, default=77,
                   help="text context length of the checkpoints (default 77, CheXzero's)")
    args = p.parse_args(argv)
    if (args.val_cxr_filepath is None) != (args.val_labels_path is None):
        p.error("--val_cxr_filepath and --val_labels_path go together")
    if args.calibration_method is not None and args.val_cxr_filepath is None:
        p.error("--calibration_method: calibration is fitted on validation data; add --val_cxr_filepath and "
                "--val_labels_path")
    args.calibration_method = args.calibration_method or "platt"
    for template in args.pair_template:
        check_template(p, template)
    if args.device is not None:
        check_device(p, args.device)
    if args.min_positives is None:
        args.min_positives = 50 if args.dataset == "padchest" else 0
    return args


def expand_model_paths(items: list[str]) -> list[str]:
    """Files as given, globs expanded, folders as their *.pt files; sorted, duplicates removed.

    An entry that names no file raises :class:`ModelPathError` (a FileNotFoundError and a user error)."""
    paths: set[str] = set()
    for item in items:
        if Path(item).is_dir():
            found = sorted(str(p) for p in Path(item).glob("*.pt"))
            if not found:
                raise ModelPathError(f"--model_paths {item}: the folder holds no *.pt file; pass the folder "
                                     "of the checkpoints, or the checkpoint files themselves")
        elif any(c in item for c in "*?["):
            found = sorted(p for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise ModelPathError(f"--model_paths {item}: the pattern matches no file; check the path "
                                     "(quote the pattern so that the shell does not expand it)")
        elif Path(item).is_file():
            found = [item]
        else:
            raise ModelPathError(f"--model_paths {item}: no such file or folder; check the path")
        paths.update(found)
    return sorted(paths)


def binary_columns(table: pd.DataFrame) -> list[str]:
    """Columns whose values are all 0 or 1: the labels of a multi-hot CSV."""
    return [c for c in table.columns
            if pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().all() and table[c].isin((0, 1)).all()]


def select_labels(args: argparse.Namespace, table: pd.DataFrame) -> list[str]:
    """The labels to evaluate: --labels or the dataset's default, minus those under --min_positives.

    The columns must exist (:class:`zero_shot.LabelColumnError`, a KeyError) and hold only 0 and 1
    (:class:`eval.LabelValueError`, a ValueError: blanks, NaN and -1 are counted per column)."""
    if args.labels is not None:
        labels = list(args.labels)
    elif args.dataset == "chexpert":
        labels = list(CHEXPERT_EVAL_ORDER)
    else:
        labels = binary_columns(table)
    zs.label_columns(args.labels_path, table, labels)
    positives = table[labels].sum()
    rare = positives[positives < args.min_positives]
    if len(rare):
        log.info("%d labels have fewer than %d positives and are left out: %s", len(rare), args.min_positives,
                 ", ".join(f"{k} ({int(v)})" for k, v in rare.items()))
    labels = [label for label in labels if positives[label] >= args.min_positives]
    if not labels:
        raise LabelSelectionError(f"no label of {args.labels_path} has at least {args.min_positives} positives; "
                                  "lower --min_positives or choose --labels")
    return labels


def auroc_table(y_pred: np.ndarray, y_true: np.ndarray, labels: list[str], n_bootstrap: int
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, cis): per label n positives, full-sample AUROC and bootstrap mean [lower, upper].

    When the 5 competition labels are all present a last row holds their mean: the original's
    headline (mean of the 5 bootstrap means, 0.8892 for the released ensemble) with a CI from the
    per-replicate mean of the 5 (a real interval, not a mean of bounds; NaN replicates propagate).
    """
    full = ev.evaluate(y_pred, y_true, labels)
    boot_stats, cis = ev.bootstrap(y_pred, y_true, labels, n_samples=n_bootstrap)
    table = pd.DataFrame({
        "positives": y_true.sum(axis=0).astype(int),
        "auroc": full.iloc[0].to_numpy(),
        "mean": cis.loc["mean"].to_numpy(),
        "lower": cis.loc["lower"].to_numpy(),
        "upper": cis.loc["upper"].to_numpy(),
    }, index=pd.Index(labels, name="label"))
    if all(label in labels for label in COMPETITION_LABELS):
        columns = [f"{label}_auc" for label in COMPETITION_LABELS]
        mean_cis = ev.compute_cis(boot_stats[columns].mean(axis=1, skipna=False).to_frame("mean"))["mean"]
        table.loc["Mean (5 competition)"] = [np.nan, table.loc[COMPETITION_LABELS, "auroc"].mean(),
                                             ev.compute_mean(cis), mean_cis["lower"], mean_cis["upper"]]
    table["positives"] = table["positives"].astype("Int64")
    return table, cis


CALIBRATION_COLUMNS = (("ece_width", "ECE"), ("brier", "Brier"))   # shown in auroc.md, before and after


def markdown(table: pd.DataFrame, calibration: pd.DataFrame | None = None) -> str:
    """The AUROC table as Markdown: label, positives, AUROC (bootstrap mean) [95% CI]; with
    ``calibration`` (:func:`calibration_table`) also ECE (10 equal-width bins) and Brier score before
    and after calibration: the whole test set's value [bootstrap 95% CI]. Not the bootstrap mean, as for
    AUROC: resampling noise only adds to an ECE's per-bin gaps, so its bootstrap mean is biased upward."""
    header, rule = "| Label | Positives | AUROC [95% CI] |", "|---|---:|---|"
    if calibration is not None:
        header += "".join(f" {name} {stage} |" for _, name in CALIBRATION_COLUMNS for stage in ("before", "after"))
        rule += "---|" * 2 * len(CALIBRATION_COLUMNS)
    lines = [header, rule]
    for label, row in table.iterrows():
        positives = "" if pd.isna(row["positives"]) else f"{int(row['positives'])}"
        line = f"| {label} | {positives} | {row['mean']:.4f} [{row['lower']:.4f}, {row['upper']:.4f}] |"
        if calibration is not None:
            for metric, _ in CALIBRATION_COLUMNS:
                for stage in ("before", "after"):
                    mean, lower, upper = (calibration.loc[label, f"{metric}_{stage}_{bound}"]
                                          for bound in ("full", "lower", "upper"))
                    line += f" {mean:.3f} [{lower:.3f}, {upper:.3f}] |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def validation_predictions(args: argparse.Namespace, model_paths: list[str], labels: list[str],
                           out: Path) -> np.ndarray:
    """The ensemble's validation probabilities (cached under ``out/cached`` with the prefix ``val``)."""
    return zs.ensemble_models(
        model_paths, args.val_cxr_filepath, labels, args.pair_template, cache_dir=out / "cached", save_name="val",
        prompt_style=args.prompt_style, context_length=args.context_length, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device)[1]


def thresholded_metrics(args: argparse.Namespace, model_paths: list[str], labels: list[str], y_pred: np.ndarray,
                        y_true: np.ndarray, out: Path, y_true_val: np.ndarray | None = None,
                        y_pred_val: np.ndarray | None = None) -> None:
    """Thresholds chosen on validation (MCC, F1, Youden), frozen, then test MCC and F1 with bootstrap CIs.

    ``y_true_val``, ``y_pred_val``: the validation labels and predictions when already at hand
    (:func:`main` reads and checks the labels before any model runs, and predicts validation once
    for the thresholds and the calibration)."""
    if y_true_val is None:
        y_true_val = zs.make_true_labels(args.val_labels_path, labels, cxr_filepath=args.val_cxr_filepath)
    if y_pred_val is None:
        y_pred_val = validation_predictions(args, model_paths, labels, out)
    thresholds = pd.concat([ev.choose_thresholds(y_pred_val, y_true_val, labels, metric)
                            for metric in ev.THRESHOLD_METRICS], axis=1)
    thresholds.index.name = "label"
    thresholds.to_csv(out / "thresholds.csv")
    columns = {}
    for metric in ("mcc", "f1"):
        _, cis = ev.binary_metric_bootstrap(y_pred, y_true, labels, thresholds[f"threshold_{metric}"], metric,
                                            n_samples=args.bootstrap)
        for bound in ("mean", "lower", "upper"):
            columns[f"{metric}_{bound}"] = cis.loc[bound].rename(lambda c: c.rsplit("_", 1)[0])
    table = pd.DataFrame(columns)
    table.index.name = "label"
    table.to_csv(out / "mcc_f1.csv")
    log.info("Test MCC and F1 at thresholds chosen on validation:\n%s", table.to_string())


def calibration_table(y_pred: np.ndarray, calibrated: np.ndarray, y_true: np.ndarray, labels: list[str],
                      n_bootstrap: int) -> pd.DataFrame:
    """Per label: full-sample AUROC before and after calibration, and ECE (10 equal-width bins, 10
    equal-mass bins) and Brier score before and after: on the whole test set (``full``), and the
    bootstrap mean, lower, upper (the AUROC bootstrap's replicates). A last row holds the 5
    competition labels' mean when all 5 are present."""
    rows = {label: label for label in labels}
    if all(label in labels for label in COMPETITION_LABELS):
        rows["Mean (5 competition)"] = "Mean"
    columns = {}
    for stage, values in (("before", y_pred), ("after", calibrated)):
        auroc = ev.evaluate(values, y_true, labels).iloc[0].rename(lambda c: c[: -len("_auc")])
        auroc["Mean"] = auroc[COMPETITION_LABELS].mean() if "Mean" in rows.values() else np.nan
        columns[f"auroc_{stage}"] = [auroc[key] for key in rows.values()]
    cis = {stage: pd.concat([ev.calibration_bootstrap(values, y_true, labels, n_samples=n_bootstrap)[1],
                             ev.calibration_metrics(values, y_true, labels).set_axis(["full"])])
           for stage, values in (("before", y_pred), ("after", calibrated))}
    for metric in ev.CALIBRATION_METRICS:
        for stage in ("before", "after"):
            for bound in ("full", "mean", "lower", "upper"):
                columns[f"{metric}_{stage}_{bound}"] = [cis[stage].loc[bound, f"{key}_{metric}"]
                                                        for key in rows.values()]
    return pd.DataFrame(columns, index=pd.Index(list(rows), name="label"))


def calibrate(args: argparse.Namespace, model_paths: list[str], labels: list[str], keys: pd.DataFrame,
              y_pred: np.ndarray, y_true: np.ndarray, y_pred_val: np.ndarray, y_true_val: np.ndarray, out: Path,
              plotted: list[str]) -> pd.DataFrame:
    """Fit --calibration_method on the validation predictions, apply it frozen to test, and write
    calibration.json, <dataset>_preds_calibrated.csv, calibration.csv (:func:`calibration_table`,
    returned) and calibration.png (reliability diagrams of ``plotted``)."""
    prompts = cal.prompt_table(labels, *zs.prompt_texts(labels, args.pair_template, args.prompt_style))
    calibration = cal.fit_calibration(
        y_pred_val, y_true_val, labels, args.calibration_method, prompts=prompts,
        info={"pair_template": list(args.pair_template), "prompt_style": args.prompt_style,
              "models": [Path(p).name for p in model_paths]})
    cal.write_calibration(calibration, out / "calibration.json")
    calibrated = cal.apply_calibration(y_pred, labels, calibration)
    pd.concat([keys, pd.DataFrame(calibrated, columns=labels)], axis=1).to_csv(
        out / f"{args.dataset}_preds_calibrated.csv", index=False)
    table = calibration_table(y_pred, calibrated, y_true, labels, args.bootstrap)
    table.to_csv(out / "calibration.csv")
    ev.plot_reliability(y_pred, calibrated, y_true, labels, out / "calibration.png", plot_labels=plotted)
    means = table[[f"{m}_{s}_mean" for m in ev.CALIBRATION_METRICS for s in ("before", "after")]]
    log.info("Calibration (%s, fitted on %d validation images), test bootstrap means before and after: ECE with 10 "
             "equal-width and 10 equal-mass bins, Brier score:\n%s", args.calibration_method, len(y_pred_val),
             means.rename(columns=lambda c: c[: -len("_mean")]).to_string(float_format="%.4f"))
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the evaluation; return the AUROC table.

    The images, labels, checkpoint paths and flags are checked before the first model runs (see
    the module docstring), a checkpoint's contents when it is loaded; a problem raises an
    :class:`errors.UserError` naming the file or flag (one line under ``run_cli``).
    """
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; pass a folder for the outputs")
    model_paths = expand_model_paths(args.model_paths)
    log.info("%d checkpoints: %s", len(model_paths), ", ".join(Path(p).name for p in model_paths))

    table = zs.read_label_csv(args.labels_path, "--labels_path")
    zs.check_alignment(args.labels_path, len(table), args.cxr_filepath)
    labels = select_labels(args, table)
    y_true = zs.make_true_labels(args.labels_path, labels)
    y_true_val = None
    if args.val_cxr_filepath is not None:  # checked now, not after the test images have run
        val_table = zs.read_label_csv(args.val_labels_path, "--val_labels_path")
        zs.check_alignment(args.val_labels_path, len(val_table), args.val_cxr_filepath)
        y_true_val = zs.label_columns(args.val_labels_path, val_table, labels).to_numpy()
    out.mkdir(parents=True, exist_ok=True)

    _, y_pred = zs.ensemble_models(
        model_paths, args.cxr_filepath, labels, args.pair_template, cache_dir=out / "cached",
        prompt_style=args.prompt_style, context_length=args.context_length, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device)
    np.save(out / f"{args.dataset}_preds.npy", y_pred)
    keys = table[[c for c in table.columns if c not in binary_columns(table)]]
    pd.concat([keys, pd.DataFrame(y_pred, columns=labels)], axis=1).to_csv(out / f"{args.dataset}_preds.csv",
                                                                          index=False)

    results, cis = auroc_table(y_pred, y_true, labels, args.bootstrap)
    results.to_csv(out / "auroc.csv")
    plotted = [label for label in COMPETITION_LABELS if label in labels]
    if not plotted:  # PadChest spells labels its own way: plot its 5 most frequent
        plotted = list(results.loc[labels, "positives"].nlargest(5).index)
    ev.plot_roc_curves(y_pred, y_true, labels, cis, out / "roc.png", plot_labels=plotted)

    if args.dataset == "padchest":
        summary = ev.summarize_padchest(results.loc[labels, "mean"], results.loc[labels, "positives"],
                                        args.min_positives)
        (out / "padchest_summary.json").write_text(json.dumps(summary, indent=1))
        log.info("PadChest: %s", summary["headline"])
    calibration = None
    if args.val_cxr_filepath is not None:
        y_pred_val = validation_predictions(args, model_paths, labels, out)
        thresholded_metrics(args, model_paths, labels, y_pred, y_true, out, y_true_val, y_pred_val)
        calibration = calibrate(args, model_paths, labels, keys, y_pred, y_true, y_pred_val, y_true_val, out,
                                plotted)
    (out / "auroc.md").write_text(markdown(results, calibration))

    log.info("Zero-shot AUROC, %d-model ensemble, bootstrap mean [95%% CI] (%s prompts):\n%s",
             len(model_paths), args.prompt_style, markdown(results, calibration))
    log.info("Outputs in %s", out)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(errors.run_cli(main))
