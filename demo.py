"""The whole CheXzero pipeline on the phantom dataset: the commands a user would type, in order.

Phantom data -> preprocessing (the MIMIC layout, and the same pairs from a CSV as your own data would
be) -> training -> zero-shot AUROC (with calibrated probabilities) on the CheXpert-format test set and
a linear probe beside it, where-maps scored against the regions the phantom painted, zero-shot AUROC
on PadChest -> predict.py on a few DICOM and JPG files, ending with each image's top findings.

    python demo.py                 # full demo (3,500 phantom studies), 6-10 minutes on 2 cores
    python demo.py --scale smoke   # the same sequence on a tiny set, for CI (< 2 minutes)
    python demo.py --force         # rebuild everything instead of reusing earlier outputs

Each stage prints the command it runs, and is skipped when its outputs already exist (so a
second run reuses the phantoms, h5 files and checkpoints). The numbers measure the pipeline on
synthetic images, not clinical performance. Results go to results/demo/ (or results/smoke/).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from errors import ArgumentParser, UserError, run_cli
from labels import CHEXPERT_EVAL_ORDER, COMPETITION_LABELS, SENTENCE_PAIR_TEMPLATE
from phantom.writers import MIMIC_JPG, MIMIC_REPORTS

ROOT = Path(__file__).resolve().parent
# Prompts for validation and test: ("{}.", "no {}.") rather than the original's ("{}", "no {}"). The
# phantom impressions end with a full stop, and on the validation set these scored higher for every
# saved checkpoint (labels.py; bench/README.md, "The demo's small model").
PAIR_TEMPLATE = list(SENTENCE_PAIR_TEMPLATE)

# Everything that changes with the scale; the sequence of commands does not.
# padchest_min_positives: PadChest findings with fewer positives are left out of its AUROC table. The
# phantom set keeps ~200 of 300 images at full scale (19 findings have >= 10 positives) and 11 of 20
# at smoke scale (3 findings have >= 2).
SCALES = {
    "full": dict(studies=3500, test_studies=500, valid_studies=200, padchest_images=300,
                 epochs=6, batch_size=64, val_interval=25, keep_best=5, bootstrap=1000, padchest_min_positives=10,
                 map_methods=["patch", "occlusion"]),
    "smoke": dict(studies=120, test_studies=60, valid_studies=40, padchest_images=20,
                  epochs=2, batch_size=16, val_interval=5, keep_best=2, bootstrap=100, padchest_min_positives=2,
                  map_methods=["patch", "occlusion"]),
}
# predict.py's inputs under the phantom root: DICOM variants (MONOCHROME1 and 2, 8 to 16 bits,
# compressed and not), one DICOM without pixel data (to show the failed list), and 3 test JPGs.
# `--dicom 8` writes these (and 8 MIMIC DICOMs) from its own random stream: the JPGs and CSVs, and
# so every number before them, are the same as without it.
PHANTOM_DICOMS = 8
PREDICT_DICOMS = ["dicom/variants/mono2_8bit_window_jpeg_baseline.dcm",
                  "dicom/variants/mono1_12bit_window_explicit_le.dcm",
                  "dicom/variants/mono2_16bit_window_rescale_explicit_le.dcm",
                  "dicom/edge_cases/no_pixel_data.dcm"]
PREDICT_JPGS = 3
# The regions the phantom painted (segmentations.py's format): the test set's are the truth, the
# validation set's mean region is the prior baseline.
TEST_REGIONS = "chexpert-test/gt_segmentations.json"
VALID_REGIONS = "chexpert/CheXpert-v1.0-small/gt_segmentations_valid.json"
# Occlusion in 25 non-overlapping 64-px squares instead of maps.py's 81 overlapping ones: 3 times
# faster (the default took 4.5 minutes for the 338 evaluated test images on 2 cores), coarser maps.
TOP_K = 3
# Your own data (issue 17): the MIMIC phantom's images listed in a CSV with their whole reports and labels,
# as a user with their own collection would write it. The csv route must make the MIMIC route's h5 and
# captions; the linear probe trains on its frontal images with their study's labels (uncertain = drawn
# by the phantom, so 1) and chooses C on the validation set.
PAIRS_CSV = "pairs.csv"
PROBE_CSV = "probe_train.csv"


def run(stage: str, cmd: list[str], outputs: list[Path], force: bool, timings: dict[str, float]) -> None:
    """Run one CLI step unless all its outputs exist; print it so the user learns it."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    if not force and outputs and all(p.exists() for p in outputs):
        print(f"\n== {stage}: reusing {', '.join(map(str, outputs))}\n   ({shown})", flush=True)
        timings[stage] = 0.0
        return
    print(f"\n== {stage}\n$ {shown}", flush=True)
    start = time.perf_counter()
    status = subprocess.run(cmd, cwd=ROOT).returncode
    if status != 0:
        raise UserError(f"stage '{stage}' failed with exit status {status} (its message is above); fix it "
                        "and run the demo again: finished stages are reused")
    timings[stage] = time.perf_counter() - start
    print(f"== {stage} took {timings[stage]:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--force", action="store_true", help="rebuild every stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=".", help="folder that receives data/, checkpoints/ and results/ "
                   "(default: the repository)")
    args = p.parse_args(argv)
    s = SCALES[args.scale]
    name = "demo" if args.scale == "full" else args.scale
    py = sys.executable
    base = Path(args.workdir)
    phantom = base / "data" / f"phantom-{name}"
    data = base / "data" / name
    run_dir = base / "checkpoints" / name
    out = base / "results" / name
    timings: dict[str, float] = {}
    A = lambda p: ROOT / p  # noqa: E731  (absolute path of a repo-relative output)

    run("1. phantom dataset (MIMIC-CXR-JPG, CheXpert and PadChest layouts)",
        [py, "-m", "phantom", "--out", str(phantom), "--studies", str(s["studies"]), "--seed", str(args.seed),
         "--test_studies", str(s["test_studies"]), "--valid_studies", str(s["valid_studies"]),
         "--padchest_images", str(s["padchest_images"]), "--dicom", str(PHANTOM_DICOMS), "--overwrite"],
        [A(phantom / "manifest.json"), A(phantom / PREDICT_DICOMS[0]), A(phantom / TEST_REGIONS)], args.force, timings)
    run("2. preprocess MIMIC: images -> cxr.h5, reports -> impressions",
        [py, "preprocess_train_data.py", "--dataset_type", "mimic",
         "--chest_x_ray_path", str(phantom / "mimic-cxr-jpg/2.0.0/files"),
         "--radiology_reports_path", str(phantom / "mimic-cxr/2.0.0/files"),
         "--cxr_out_path", str(data / "cxr.h5"), "--csv_out_path", str(data / "cxr_paths.csv"),
         "--mimic_impressions_path", str(data / "mimic_impressions.csv")],
        [A(data / "cxr.h5"), A(data / "mimic_impressions.csv")], args.force, timings)
    pairs = data / PAIRS_CSV
    if args.force or not (ROOT / pairs).exists():
        write_pairs_csv(phantom, pairs)
    run("3. the same pairs from a CSV of image paths and whole reports (--dataset_type csv, your own data)",
        [py, "preprocess_train_data.py", "--dataset_type", "csv", "--csv", str(pairs),
         "--path_column", "image", "--text_column", "report", "--image_root", str(phantom / MIMIC_JPG),
         "--impression_rule", "chexzero", "--cxr_out_path", str(data / "csv" / "cxr.h5"),
         "--csv_out_path", str(data / "csv" / "cxr_paths.csv"),
         "--mimic_impressions_path", str(data / "csv" / "impressions.csv")],
        [A(data / "csv" / "cxr.h5"), A(data / "csv" / "impressions.csv")], args.force, timings)
    routes = compare_routes(data, data / "csv")
    print(f"   {routes}", flush=True)
    for stage, split, source in (("4. preprocess the CheXpert-format test set", "test", "chexpert-test"),
                                 ("5. preprocess the CheXpert-format validation set", "valid", "chexpert")):
        run(stage,
            [py, "preprocess_train_data.py", "--dataset_type", f"chexpert-{split}",
             "--chest_x_ray_path", str(phantom / source),
             "--cxr_out_path", str(data / f"chexpert_{split}.h5"),
             "--labels_out_path", str(data / f"chexpert_{split}_labels.csv"),
             "--failed_out_path", str(data / f"chexpert_{split}_failed.csv")],
            [A(data / f"chexpert_{split}.h5"), A(data / f"chexpert_{split}_labels.csv")], args.force, timings)
    finished = (ROOT / run_dir / "checkpoint.pt").exists()
    # An interrupted training (a saved state, no final checkpoint) is continued, not thrown away.
    resumable = not args.force and not finished and (ROOT / run_dir / "latest.json").exists()
    resume = ["--resume", "latest"] if resumable else []
    if args.force or not (finished or resume):
        shutil.rmtree(ROOT / run_dir, ignore_errors=True)   # nothing resumable in it: start clean
    run("6. train a tiny CLIP from the reports (checkpoints selected on validation AUROC)",
        [py, "run_train.py", "--cxr_filepath", str(data / "cxr.h5"),
         "--txt_filepath", str(data / "mimic_impressions.csv"),
         "--random_init", "--model_config", "tiny-rn", "--optimizer", "adam", "--lr", "3e-4",
         "--batch_size", str(s["batch_size"]), "--epochs", str(s["epochs"]), "--seed", str(args.seed),
         "--warmup_steps", "20", "--lr_schedule", "cosine", "--clamp_logit_scale",
         "--save_dir", str(base / "checkpoints"), "--model_name", name, "--save_interval", "50", "--keep_last", "1",
         "--log_interval", "10",
         "--num_workers", "1", "--val_cxr_filepath", str(data / "chexpert_valid.h5"),
         "--val_labels_path", str(data / "chexpert_valid_labels.csv"), "--val_interval", str(s["val_interval"]),
         "--keep_best", str(s["keep_best"]), "--val_pair_template", *PAIR_TEMPLATE, *resume],
        [A(run_dir / "checkpoint.pt")], args.force, timings)
    run("7. zero-shot evaluation: ensemble of the best checkpoints, thresholds from validation",
        [py, "run_zero_shot.py", "--model_paths", str(run_dir / "best_*.pt"),
         "--cxr_filepath", str(data / "chexpert_test.h5"), "--labels_path", str(data / "chexpert_test_labels.csv"),
         "--val_cxr_filepath", str(data / "chexpert_valid.h5"),
         "--val_labels_path", str(data / "chexpert_valid_labels.csv"),
         "--pair_template", *PAIR_TEMPLATE, "--bootstrap", str(s["bootstrap"]), "--out", str(out)],
        [], True, timings)
    probe_csv = data / PROBE_CSV
    if args.force or not (ROOT / probe_csv).exists():
        write_probe_csv(pairs, probe_csv)
    run("8. labelled images for the linear probe: the frontal training images with their study's labels "
        "(--dataset_type csv-labels)",
        [py, "preprocess_train_data.py", "--dataset_type", "csv-labels", "--csv", str(probe_csv),
         "--path_column", "image", "--image_root", str(phantom / MIMIC_JPG), "--uncertain", "one",
         "--cxr_out_path", str(data / "probe_train.h5"), "--labels_out_path", str(data / "probe_train_labels.csv"),
         "--failed_out_path", str(data / "probe_train_failed.csv")],
        [A(data / "probe_train.h5"), A(data / "probe_train_labels.csv")], args.force, timings)
    run("9. linear probe: logistic regression on the frozen image features of the same checkpoints",
        [py, "linear_probe.py", "--model_paths", str(run_dir / "best_*.pt"),
         "--train_cxr_filepath", str(data / "probe_train.h5"),
         "--train_labels_path", str(data / "probe_train_labels.csv"),
         "--val_cxr_filepath", str(data / "chexpert_valid.h5"),
         "--val_labels_path", str(data / "chexpert_valid_labels.csv"),
         "--cxr_filepath", str(data / "chexpert_test.h5"), "--labels_path", str(data / "chexpert_test_labels.csv"),
         "--labels", *COMPETITION_LABELS, "--bootstrap", str(s["bootstrap"]), "--out", str(out / "linear_probe")],
        [], True, timings)
    probe = probe_vs_zero_shot(out, data, s["bootstrap"])
    run("10. where-maps against the regions the phantom painted (pointing game and IoU vs prior and random maps)",
        [py, "run_localisation.py", "--model_paths", str(run_dir / "best_*.pt"),
         "--cxr_filepath", str(data / "chexpert_test.h5"), "--labels_path", str(data / "chexpert_test_labels.csv"),
         "--segmentations", str(phantom / TEST_REGIONS),
         "--prior_labels_path", str(data / "chexpert_valid_labels.csv"),
         "--prior_segmentations", str(phantom / VALID_REGIONS), "--methods", *s["map_methods"],
         "--occlusion_window", "64", "--occlusion_stride", "64",
         "--pair_template", *PAIR_TEMPLATE, "--bootstrap", str(s["bootstrap"]), "--out", str(out)],
        [], True, timings)
    run("11. preprocess the PadChest-format set (16-bit PNGs, Physician-labelled frontal rows)",
        [py, "preprocess_train_data.py", "--dataset_type", "padchest",
         "--chest_x_ray_path", str(phantom / "padchest"),
         "--cxr_out_path", str(data / "padchest.h5"), "--labels_out_path", str(data / "padchest_labels.csv"),
         "--failed_out_path", str(data / "padchest_failed.csv")],
        [A(data / "padchest.h5"), A(data / "padchest_labels.csv")], args.force, timings)
    run("12. zero-shot evaluation on PadChest: every finding with enough positives",
        [py, "run_zero_shot.py", "--dataset", "padchest", "--model_paths", str(run_dir / "best_*.pt"),
         "--cxr_filepath", str(data / "padchest.h5"), "--labels_path", str(data / "padchest_labels.csv"),
         "--pair_template", *PAIR_TEMPLATE, "--min_positives", str(s["padchest_min_positives"]),
         "--bootstrap", str(s["bootstrap"]), "--out", str(out / "padchest")],
        [], True, timings)
    jpgs = sorted((ROOT / phantom / "chexpert-test" / "test").glob("*/study1/view1_frontal.jpg"))[:PREDICT_JPGS]
    images = [str(phantom / name) for name in PREDICT_DICOMS]
    images += [str(phantom / jpg.relative_to(ROOT / phantom)) for jpg in jpgs]
    # --dicom_rule window: the phantom DICOMs are made to show the phantom under their own display
    # window (the standard viewing rule); the MIMIC rule suits real MIMIC-CXR DICOMs. --calibration: the
    # map stage 7 fitted on validation, so that the probabilities shown mean something.
    run("13. predict.py: score your own images (DICOM and JPG) with the same checkpoints",
        [py, "predict.py", "--model_paths", str(run_dir / "best_*.pt"), "--pair_template", *PAIR_TEMPLATE,
         "--dicom_rule", "window", "--calibration", str(out / "calibration.json"), "--images", *images,
         "--out", str(out / "predictions.csv")],
        [], True, timings)
    top = top_findings(out / "predictions.csv", out / "calibration.json", phantom)
    write_summary(out, run_dir, data, phantom, timings, args, top, routes, probe)
    padchest = json.loads((ROOT / out / "padchest" / "padchest_summary.json").read_text())
    print("\n" + (ROOT / out / "auroc.md").read_text(), flush=True)
    print(f"Linear probe beside zero-shot (same checkpoints, same test images):\n\n{probe}", flush=True)
    print("Where-maps vs the painted regions:\n\n" + (ROOT / out / "localisation.md").read_text(), flush=True)
    print(f"PadChest: {padchest['headline']}\n\n" + (ROOT / out / "padchest" / "auroc.md").read_text(), flush=True)
    print(f"predict.py, top {TOP_K} findings per image by calibrated probability:\n\n{top}", flush=True)
    return 0


def top_findings(predictions: Path, calibration: Path, phantom: Path, k: int = TOP_K) -> str:
    """A markdown table of each scored image's k most probable findings by calibrated probability, the
    labels left out of that ranking (those the validation set could not calibrate), and the images that
    failed."""
    import pandas as pd

    from calibration import read_calibration

    table = pd.read_csv(ROOT / predictions)
    failed = pd.read_csv((ROOT / predictions).with_suffix(".failed.csv"))
    fitted = read_calibration(ROOT / calibration)["labels"]
    ranked = [label for label, fit in fitted.items() if fit["calibrated"]]
    short = lambda path: path.removeprefix(f"{phantom}/")  # noqa: E731  (path under the phantom root)
    rows = [f"| image | top {k} findings (calibrated probability; raw zero-shot probability) |", "|---|---|"]
    for _, row in table.iterrows():
        best = row[ranked].astype(float).nlargest(k)
        rows.append(f"| {short(row['path'])} | " + ", ".join(f"{label} {p:.3f} ({row[label + '_raw']:.3f})"
                                                           for label, p in best.items()) + " |")
    rows += ["", "Not ranked, their probabilities left raw: "
             + "; ".join(f"{label} ({fit['reason']})" for label, fit in fitted.items() if not fit["calibrated"])]
    rows += ["", f"Not scored ({len(failed)}, listed in `{predictions.with_suffix('.failed.csv').name}`):", ""]
    rows += [f"- {short(path)}: {reason}" for path, reason in zip(failed["path"], failed["reason"])]
    return "\n".join(rows) + "\n"


def write_pairs_csv(phantom: Path, pairs: Path) -> None:
    """The phantom's MIMIC images as a user would list their own collection: one row per image with its
    path under the MIMIC-CXR-JPG root, its view, the study's whole report and the study's 14 CheXpert
    labels (blank where the study has no label row)."""
    import pandas as pd

    from data_process import find_files
    from reports import read_report, report_path

    jpg_root, reports = ROOT / phantom / MIMIC_JPG, ROOT / phantom / MIMIC_REPORTS / "files"
    views = pd.read_csv(jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz", index_col="dicom_id")["ViewPosition"]
    labels = pd.read_csv(jpg_root / "mimic-cxr-2.0.0-chexpert.csv.gz").set_index("study_id").drop(columns="subject_id")
    rows = []
    for path in find_files(str(jpg_root / "files"), ".jpg")[0]:   # the MIMIC route's images, in its order
        jpg = Path(path)
        rows.append({"image": jpg.relative_to(jpg_root).as_posix(), "view": views.get(jpg.stem),
                     "report": read_report(report_path(path, str(reports))), "study_id": int(jpg.parent.name[1:])})
    table = pd.DataFrame(rows).join(labels, on="study_id")
    (ROOT / pairs).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(ROOT / pairs, index=False)
    print(f"\n== wrote {pairs}: {len(table)} images with their reports and labels", flush=True)


def compare_routes(mimic: Path, csv: Path, chunk: int = 512) -> str:
    """Check that the csv route's h5 rows and captions equal the MIMIC route's for the same images, and
    say so in one line. The MIMIC route keeps reports without an impression as blank captions (as the
    original); the csv route's report check leaves them out, listed in failed_reports.csv."""
    import h5py
    import pandas as pd

    from cxr_data import H5_KEY

    mimic_paths = pd.read_csv(ROOT / mimic / "cxr_paths.csv")["Path"].tolist()
    csv_paths = pd.read_csv(ROOT / csv / "cxr_paths.csv")["Path"].tolist()
    row = {path: i for i, path in enumerate(mimic_paths)}
    missing = [path for path in csv_paths if path not in row]
    if missing:
        raise RuntimeError(f"{csv}/cxr_paths.csv: {len(missing)} images the MIMIC route did not write, "
                           f"e.g. {missing[0]}")
    rows = [row[path] for path in csv_paths]
    mimic_captions = pd.read_csv(ROOT / mimic / "mimic_impressions.csv", keep_default_na=False)["impression"]
    csv_captions = pd.read_csv(ROOT / csv / "impressions.csv", keep_default_na=False)["impression"]
    differ = [p for p, a, b in zip(csv_paths, mimic_captions.iloc[rows], csv_captions) if a != b]
    with h5py.File(ROOT / mimic / "cxr.h5", "r") as a, h5py.File(ROOT / csv / "cxr.h5", "r") as b:
        for start in range(0, len(rows), chunk):
            index = rows[start:start + chunk]
            order = sorted(range(len(index)), key=index.__getitem__)
            same = a[H5_KEY][sorted(index)] == b[H5_KEY][start:start + chunk][order]
            differ += [csv_paths[start + order[k]] for k in range(len(order)) if not same[k].all()]
    if differ:
        raise RuntimeError(f"the csv route differs from the MIMIC route on {len(differ)} images, e.g. {differ[0]}")
    left = sorted(set(range(len(mimic_paths))) - set(rows))
    captioned = [mimic_paths[i] for i in left if mimic_captions.iloc[i].strip()]
    if captioned:
        raise RuntimeError(f"the csv route left out {len(captioned)} images that have a caption, e.g. {captioned[0]}")
    failed = len(pd.read_csv(ROOT / mimic / "failed_images.csv"))
    return (f"csv route = MIMIC route: {len(rows)} of the MIMIC route's {len(mimic_paths)} images with identical "
            f"pixels and captions; the other {len(left)} have an empty impression, which the MIMIC route keeps as "
            f"a blank caption and the csv route's report check leaves out ({csv}/failed_reports.csv); both leave "
            f"out the {failed} images that fail to decode")


def write_probe_csv(pairs: Path, probe_csv: Path) -> None:
    """The frontal images of the studies with a label row, with the 5 competition labels: the probe's
    labelled training set (images the CLIP model was trained on without their labels)."""
    import pandas as pd

    table = pd.read_csv(ROOT / pairs)
    labelled = table[table["view"].isin(["AP", "PA"]) & table[CHEXPERT_EVAL_ORDER].notna().any(axis=1)]
    labelled[["image", *COMPETITION_LABELS]].to_csv(ROOT / probe_csv, index=False)


def probe_vs_zero_shot(out: Path, data: Path, n_bootstrap: int) -> str:
    """The linear probe's test AUROC beside zero-shot's for the same checkpoints and images, with the
    paired bootstrap difference; written to ``<out>/linear_probe.md`` and returned."""
    import pandas as pd

    import eval as ev

    zero_shot = pd.read_csv(ROOT / out / "auroc.csv", index_col=0)
    probe = pd.read_csv(ROOT / out / "linear_probe" / "linear_probe_auroc.csv", index_col=0)
    labels = [label for label in COMPETITION_LABELS if label in probe.index]   # a one-class label has no probe
    truth = pd.read_csv(ROOT / data / "chexpert_test_labels.csv")[labels].to_numpy()
    zs_preds = pd.read_csv(ROOT / out / "chexpert_preds.csv")[labels].to_numpy()
    probe_preds = pd.read_csv(ROOT / out / "linear_probe" / "linear_probe_preds.csv")[labels].to_numpy()
    replicates, diff = ev.bootstrap_difference(zs_preds, probe_preds, truth, labels, n_bootstrap)
    cell = lambda t, k: f"{t.loc[k, 'mean']:.4f} [{t.loc[k, 'lower']:.4f}, {t.loc[k, 'upper']:.4f}]"  # noqa: E731
    lines = ["| Label | Positives | zero-shot AUROC [95% CI] | linear probe AUROC [95% CI] | "
             "probe - zero-shot [95% CI, paired] |", "|---|---:|---|---|---|"]
    for i, label in enumerate(labels):
        d = diff[f"{label}_auc"]
        lines.append(f"| {label} | {int(truth[:, i].sum())} | {cell(zero_shot, label)} | {cell(probe, label)} | "
                     f"{d['full']:+.4f} [{d['lower']:+.4f}, {d['upper']:+.4f}] |")
    mean = "Mean (5 competition)"
    if labels == COMPETITION_LABELS:
        d = ev.compute_cis(replicates.mean(axis=1, skipna=False).to_frame("mean"))["mean"]
        lines.append(f"| {mean} | | {cell(zero_shot, mean)} | {cell(probe, mean)} | "
                     f"{diff.loc['full'].mean():+.4f} [{d['lower']:+.4f}, {d['upper']:+.4f}] |")
    table = "\n".join(lines) + "\n"
    (ROOT / out / "linear_probe.md").write_text(table)
    return table


def write_summary(out: Path, run_dir: Path, data: Path, phantom: Path, timings: dict[str, float],
                  args: argparse.Namespace, top: str, routes: str, probe: str) -> None:
    """results/<name>/README.md: what ran, how long each stage took, sizes, and the caveat."""
    import pandas as pd

    from cxr_data import h5_rows

    shutil.copy(ROOT / run_dir / "loss.png", ROOT / out / "loss.png")
    n_train, n_test, n_valid, n_padchest = (h5_rows(ROOT / data / name, check_range=False) for name in
                                            ("cxr.h5", "chexpert_test.h5", "chexpert_valid.h5", "padchest.h5"))
    padchest = json.loads((ROOT / out / "padchest" / "padchest_summary.json").read_text())
    best = sorted(p.name for p in (ROOT / run_dir).glob("best_*.pt"))
    n_probe = len(pd.read_csv(ROOT / data / "probe_train_labels.csv"))
    metrics = pd.read_csv(ROOT / run_dir / "metrics.csv")
    lines = [
        f"# CheXzero demo on phantom data ({args.scale})", "",
        "**Caveat:** these images are synthetic phantoms with report text from the Indiana University "
        "collection. The numbers below measure that the pipeline works end to end; they say nothing "
        "about clinical performance.", "",
        "## Data", "",
        f"- training pairs (MIMIC layout, all views): {n_train} images in `{data}/cxr.h5` "
        f"({(ROOT / data / 'cxr.h5').stat().st_size / 2**20:.0f} MiB, uint8)",
        f"- CheXpert-format test set: {n_test} studies; validation: {n_valid} frontal images",
        f"- PadChest-format set: {n_padchest} frontal images (16-bit PNGs)",
        f"- phantom root: `{phantom}` (seed {args.seed})", "",
        "## Stages and timings", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {stage} | {sec:.0f}{' (reused)' if sec == 0 else ''} |" for stage, sec in timings.items()],
        f"| total | {sum(timings.values()):.0f} |", "",
        "## Training", "",
        f"- {int(metrics['step'].max())} steps; final training loss {metrics['loss'].iloc[-1]:.3f}; "
        f"best validation mean AUROC {metrics['val_auroc'].max():.3f}",
        f"- ensemble: {', '.join(best)}", "",
        "![loss](loss.png)", "",
        "## Zero-shot AUROC on the CheXpert-format test set (bootstrap 95% CI)", "",
        (ROOT / out / "auroc.md").read_text(), "",
        "![ROC](roc.png)", "",
        "MCC and F1 at thresholds chosen on validation: `mcc_f1.csv`.", "",
        "## Calibrated probabilities", "",
        "The ECE (10 equal-width bins) and Brier columns above: the raw zero-shot probabilities, and the same "
        "after a per-label Platt map fitted on the validation set and applied frozen (`calibration.json`, "
        "`chexpert_preds_calibrated.csv`, all figures in `calibration.csv`). AUROC is unchanged by "
        "construction.", "",
        "![reliability](calibration.png)", "",
        "## Your own data: pairs from a CSV, and a linear probe", "",
        f"The demo lists the MIMIC phantom's images in `{data / PAIRS_CSV}` (image path, view, whole report, the "
        "study's labels) and runs `preprocess_train_data.py --dataset_type csv --impression_rule chexzero` on it. "
        f"{routes}.", "",
        f"`linear_probe.py`: per-label logistic regression on the frozen image features of the same checkpoints, "
        f"trained on {n_probe} labelled frontal training images (`{data / PROBE_CSV}` through "
        "`--dataset_type csv-labels`), C chosen on the validation set, scored on the test set. The last column is "
        "the paired bootstrap difference (`linear_probe.md`, all outputs in `linear_probe/`).", "",
        probe, "",
        "## Where-maps against the regions the phantom painted", "",
        "Pointing game (is the map's maximum inside the region) and IoU of the map's region (min-max "
        "normalised map >= 0.5), on the positive test images that have a region; `prior` is one map for "
        "every image, the label's mean region on the validation set; `random` is noise. "
        "(`localisation.csv`; overlays with the true region in green: `localisation.png`.)", "",
        (ROOT / out / "localisation.md").read_text(), "",
        "![where-maps](localisation.png)", "",
        "## Zero-shot AUROC on the PadChest-format set (bootstrap 95% CI)", "",
        f"{padchest['headline']} (`padchest/padchest_summary.json`).", "",
        (ROOT / out / "padchest" / "auroc.md").read_text(), "",
        "## predict.py on DICOM and JPG files", "",
        "`predict.py --dicom_rule window --calibration calibration.json` on phantom DICOMs and CheXpert-format "
        "test JPGs (probabilities in `predictions.csv`, the raw ones as `<label>_raw`). The raw zero-shot "
        "probabilities all sit near 0.5; the calibrated ones, mapped on the validation set, can be read as "
        "probabilities and ranked across labels:", "",
        top, "",
        "## Commands", "", "Rerun with `make demo` (or `python demo.py`); `--force` rebuilds every stage.",
    ]
    (ROOT / out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
