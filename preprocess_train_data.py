"""Build CheXzero's inputs: images -> HDF5 (key ``cxr``) plus CSVs row-aligned with it.

MIMIC-CXR (training), the user's first command::

    python preprocess_train_data.py \\
        --chest_x_ray_path data/phantom/mimic-cxr-jpg/2.0.0/files \\
        --radiology_reports_path data/phantom/mimic-cxr/2.0.0/files \\
        --cxr_out_path data/demo/cxr.h5 --csv_out_path data/demo/cxr_paths.csv \\
        --mimic_impressions_path data/demo/mimic_impressions.csv

MIMIC-CXR's own DICOM release works the same way: point ``--chest_x_ray_path`` at its files/
folder (``.dcm`` files) and choose how DICOM pixels become grey levels with ``--dicom_rule``
(``mimic``, the default: MIMIC-CXR-JPG's conversion, i.e. the training images; ``window``: the
DICOM display pipeline). ``--views`` then finds the metadata CSV of a MIMIC-CXR-JPG release beside
it (``../../mimic-cxr-jpg/<version>/``) or takes ``--metadata_path``.

Evaluation sets: ``--dataset_type chexpert-test | chexpert-valid | padchest`` write the HDF5
and a labels CSV (``--labels_out_path``) whose row i is image i.

Your own data: ``--dataset_type csv --csv pairs.csv --path_column image --text_column report``
builds the training h5 + captions CSV from any CSV (or .jsonl) of image paths and report texts
(relative paths are resolved against ``--image_root``, default the CSV's folder). The text is the
caption as it is, or ``--impression_rule chexzero|mimic`` extracts the impression of a whole
report. Reports that cannot train anything (empty, a Git LFS pointer, binary/undecodable bytes,
one repeated token) are listed in ``failed_reports.csv`` (row, path, reason) and left out
(``--bad_reports skip``, the default) or stop the run (``stop``); a summary (pairs kept, dropped
by reason, caption lengths in BPE tokens, share cut at 77 tokens) is printed and saved as JSON.
``--dataset_type csv-labels --csv labels.csv --path_column image`` writes an h5 and a labels CSV
for run_zero_shot.py: Path + the label columns by name (``--label_columns``, default every other
column); 1/0 (also true/false, yes/no, positive/negative), a blank is 0 (CheXpert's convention:
not mentioned = negative), -1 or "uncertain" is refused unless ``--uncertain zero|one|drop``.

Invariant for every dataset type: h5 rows == CSV rows == images that decoded (failures are
listed in ``failed_images.csv``), unless ``--keep_failed`` keeps all-zero rows as the
original did. Output files appear only when complete; ``--resume`` continues a killed run.

When something goes wrong: a user error (a missing folder or file, a bad flag, a full disk, an
output another live run is writing, an interrupted run without ``--resume``) is one line on
stderr and exit status 2 (``--debug`` shows the traceback). A run that stops after its first
committed chunk keeps ``<cxr_out_path>.partial`` for ``--resume``; one that stops before it leaves
nothing. ``<cxr_out_path>.lock`` is held while the images are written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

import data_process as dp
from errors import ArgumentParser, UserError, positive_int, run_cli
from image_reader import DICOM_RULES, DICOM_SUFFIXES
from labels import CHEXPERT_CSV_ORDER as CHEXPERT_LABELS  # CheXpert's CSV columns, in their order
from labels import PADCHEST_CSV

log = logging.getLogger("preprocess")

#: ``--impression_rule none``: the text is the caption as it is.
NO_RULE = "none"

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
#: The image files of the two MIMIC releases: MIMIC-CXR-JPG's .jpg, MIMIC-CXR's DICOMs.
MIMIC_SUFFIXES = (".jpg", *DICOM_SUFFIXES)


class PreprocessError(UserError):
    """A problem with the inputs the user can fix; printed without a traceback."""


@dataclass
class Plan:
    """What to decode and which CSVs to write: ``tables[path]`` row i belongs to ``paths[i]``."""

    paths: list[str]
    tables: dict[str, pd.DataFrame]
    bits: list[int | None] | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out before decoding
    #: Called inside the output lock once the tables are written, with the kept row indices and
    #: the images that failed to decode (the csv route's report list and summary).
    finish: Callable[[list[int], list], None] | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_type", default="mimic", choices=list(PLANS),
                   help="mimic: training images + impressions. chexpert-test: sorted view1_frontal.jpg "
                        "images aligned to groundtruth.csv by Study. chexpert-valid: Frontal rows of "
                        "valid.csv in CSV order. padchest: Physician-labelled rows of the PadChest CSV in "
                        "CSV order, filtered by --projections, with a multi-hot label CSV.")
    p.add_argument("--chest_x_ray_path", default="data/mimic-cxr-jpg/2.0.0/files",
                   help="image root. mimic: the files/ folder (p10..p19) of MIMIC-CXR-JPG (.jpg) or of "
                        "MIMIC-CXR (.dcm, read by --dicom_rule). chexpert-test: folder "
                        "holding test/patient*/study1/ (and usually groundtruth.csv). chexpert-valid: folder holding "
                        "CheXpert-v1.0-small/valid.csv. padchest: folder holding <ImageDir>/<ImageID> or "
                        "<ImageID> (flat) and usually the PadChest CSV.")
    p.add_argument("--radiology_reports_path", default="data/mimic-cxr/2.0.0/files",
                   help="mimic: the reports files/ folder (pXX/pXXXXXXXX/sXXXXXXXX.txt); trailing / optional")
    p.add_argument("--cxr_out_path", default="data/cxr.h5", help="output HDF5 (dataset key 'cxr')")
    p.add_argument("--csv_out_path", default=None,
                   help="CSV with one column Path, row-aligned with the h5 (mimic default: data/cxr_paths.csv; "
                        "other dataset types: written only when given, the labels CSV already holds Path)")
    p.add_argument("--mimic_impressions_path", default="data/mimic_impressions.csv",
                   help="mimic: captions CSV with columns filename,impression, row-aligned with the h5")
    p.add_argument("--labels_out_path", default=None,
                   help="chexpert-test / chexpert-valid / padchest: labels CSV row-aligned with the h5 "
                        "(default: <cxr_out_path without .h5>_labels.csv). chexpert-test: Path, Study + the "
                        "14 groundtruth columns; chexpert-valid: Path (as in valid.csv) + the 14 observations; "
                        "padchest: Path, ImageID + one 0/1 column per label (sorted)")
    p.add_argument("--labels_path", default=None,
                   help="input label CSV (chexpert-test: groundtruth.csv; chexpert-valid: valid.csv; padchest: "
                        "the PadChest CSV); default: looked up in and next to --chest_x_ray_path")
    p.add_argument("--failed_out_path", default=None,
                   help="CSV listing every image left out with its reason (default: failed_images.csv next "
                        "to --cxr_out_path; give distinct paths when several datasets share a folder)")
    p.add_argument("--num_workers", type=positive_int, default=len(os.sched_getaffinity(0)),
                   help="decode+resize processes (default: all cores; 1 decodes in this process)")
    p.add_argument("--dtype", default="uint8", choices=("uint8", "float32"),
                   help="h5 pixel type; values are 0..255 either way, uint8 is 4x smaller (default uint8)")
    p.add_argument("--views", default=None,
                   help="mimic: keep only these ViewPosition values from the metadata CSV, e.g. PA,AP "
                        "(default: all images, as the original; blank ViewPositions never match)")
    p.add_argument("--metadata_path", default=None,
                   help=f"mimic: {MIMIC_METADATA} for --views (default: the parent of --chest_x_ray_path)")
    p.add_argument("--impression_rule", default=None, choices=(NO_RULE, *dp.IMPRESSION_RULES),
                   help="chexzero: the original rule (text after the last 'IMPRESSION:' token, else "
                        "'NO IMPRESSION'). mimic: the official MIMIC-CXR section parser's choice "
                        "(impression > findings > last_paragraph > comparison). none: the text as it is. "
                        "Default: chexzero for mimic, none for csv (whose text is the caption already)")
    p.add_argument("--csv", default=None,
                   help="csv / csv-labels: the input table, a .csv (or .jsonl, one JSON object a line); "
                        "undecodable bytes are read as U+FFFD and make that row's report 'binary'")
    p.add_argument("--path_column", default="path",
                   help="csv / csv-labels: column holding the image paths (anything the image reader reads: "
                        "JPEG, PNG, DICOM, ...); default 'path'")
    p.add_argument("--text_column", default="report",
                   help="csv: column holding the report (or impression) text; default 'report'")
    p.add_argument("--image_root", default=None,
                   help="csv / csv-labels: folder relative image paths are resolved against (default: the "
                        "folder of --csv)")
    p.add_argument("--bad_reports", default="skip", choices=("skip", "stop"),
                   help="csv: reports that are empty, a Git LFS pointer, binary or one repeated token are "
                        "listed in failed_reports.csv and left out (skip, default) or stop the run before any "
                        "image is decoded (stop, exit 2)")
    p.add_argument("--failed_reports_path", default=None,
                   help="csv: list of the reports left out, columns row,path,reason (row 1 = the first data "
                        "row); default failed_reports.csv next to --mimic_impressions_path")
    p.add_argument("--summary_path", default=None,
                   help="csv: JSON summary (pairs kept, dropped by reason, caption length percentiles in "
                        "BPE tokens, share cut at 77); default <--mimic_impressions_path without .csv>_summary.json")
    p.add_argument("--label_columns", default=None,
                   help="csv-labels: comma-separated label columns to keep, by name (default: every column "
                        "but --path_column)")
    p.add_argument("--uncertain", default="error", choices=("error", "zero", "one", "drop"),
                   help="csv-labels: what -1 / 'uncertain' label values become: refused naming the column "
                        "(error, default), 0, 1, or the row is dropped (listed in the failed-images CSV)")
    p.add_argument("--missing_report", default="error", choices=("error", "skip"),
                   help="mimic: a missing report file stops the run naming it (error) or drops its images (skip)")
    p.add_argument("--keep_failed", action="store_true",
                   help="keep an all-zero h5 row (and its CSV rows) for each image that failed to decode, "
                        "for exact row parity with the original; default drops both")
    p.add_argument("--projections", default="PA,AP,AP_horizontal",
                   help="padchest: Projection values to keep (default PA,AP,AP_horizontal)")
    p.add_argument("--fast_decode", action="store_true",
                   help="JPEG DCT-domain downscaled decode before the LANCZOS step: faster, not pixel-exact "
                        "(deviation in bench/README.md)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last completed chunk (same inputs and options)")
    p.add_argument("--chunk_images", type=positive_int, default=256,
                   help="images per crash-safe commit (default 256)")
    p.add_argument("--dicom_rule", default="mimic", choices=DICOM_RULES,
                   help="how DICOM pixels become grey levels. mimic: MIMIC-CXR-JPG's conversion of MIMIC-CXR's "
                        "DICOMs (the training images): (x - min) / max to 8 bits, MONOCHROME1 inverted, "
                        "histogram equalisation, JPEG quality 95. window: Modality LUT, the first window or "
                        "VOI LUT (LINEAR or SIGMOID), MONOCHROME1 inverted, no equalisation (default mimic)")
    return p.parse_args(argv)


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _find_file(explicit: str | None, candidates: list[Path], what: str) -> Path:
    if explicit:
        if not Path(explicit).is_file():
            raise PreprocessError(f"{what} not found: {explicit}")
        return Path(explicit)
    for c in candidates:
        if c.is_file():
            return c
    raise PreprocessError(f"{what} not found; looked for {', '.join(map(str, candidates))}. "
                          f"Pass --labels_path (or --metadata_path) explicitly.")


def _read_csv(path: Path | str, **kwargs) -> pd.DataFrame:
    """pd.read_csv, with a file that is not a readable CSV (or lacks asked-for columns) as a user error."""
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise PreprocessError(f"{path}: not a readable CSV of the expected kind ({first})") from None


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], path: Path | str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PreprocessError(f"{path} lacks columns {missing}")


def _labels_out(args: argparse.Namespace) -> str:
    return args.labels_out_path or str(Path(args.cxr_out_path).with_suffix("")) + "_labels.csv"


# --------------------------------------------------------------------------------------
# Plans, one per dataset type
# --------------------------------------------------------------------------------------


def _filter_views(paths: list[str], args: argparse.Namespace) -> list[str]:
    """Keep the images whose metadata ViewPosition is in --views (dicom_id = file stem)."""
    views = {v.upper() for v in _split_list(args.views)}
    release = Path(args.chest_x_ray_path).parent      # mimic-cxr-jpg/<version>, or mimic-cxr/<version> (DICOM)
    beside = sorted(release.parent.parent.glob(f"mimic-cxr-jpg/*/{MIMIC_METADATA}"), reverse=True)
    meta_file = _find_file(args.metadata_path, [release / MIMIC_METADATA, *beside], "MIMIC metadata CSV")
    meta = _read_csv(meta_file, usecols=["dicom_id", "ViewPosition"], dtype=str)
    view_of = dict(zip(meta["dicom_id"], meta["ViewPosition"].fillna("").str.strip().str.upper()))
    unknown = [p for p in paths if Path(p).stem not in view_of]
    if unknown:
        log.warning("%d images are not in %s and are left out by --views (first: %s)",
                    len(unknown), meta_file, unknown[0])
    kept = [p for p in paths if view_of.get(Path(p).stem) in views]
    log.info("--views %s: %d of %d images kept", ",".join(sorted(views)), len(kept), len(paths))
    return kept


def _one_file_per_image(paths: list[str]) -> None:
    """Refuse a tree holding one dicom_id twice (e.g. <id>.jpg beside <id>.dcm): it would be two rows."""
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        key = (os.path.dirname(path), Path(path).stem)
        if key in seen:
            raise PreprocessError(f"{seen[key]} and {path} are the same image in two formats; keep one "
                                  f"(point --chest_x_ray_path at the MIMIC-CXR-JPG or the MIMIC-CXR files/)")
        seen[key] = path


def plan_mimic(args: argparse.Namespace) -> Plan:
    """Sorted images (.jpg, or the DICOM release's .dcm; optionally view-filtered), one caption row each."""
    root = args.chest_x_ray_path
    if not Path(root).is_dir():
        raise PreprocessError(f"--chest_x_ray_path {root} is not a folder (expected the files/ folder of "
                              f"MIMIC-CXR-JPG or MIMIC-CXR)")
    if not Path(args.radiology_reports_path).is_dir():
        raise PreprocessError(f"--radiology_reports_path {args.radiology_reports_path} is not a folder "
                              f"(expected the mimic-cxr reports files/ with pXX/pXXXXXXXX/sXXXXXXXX.txt)")
    paths, skipped = dp.find_files(root, MIMIC_SUFFIXES)
    skipped.pop(".txt", None)   # reports beside the images: MIMIC-CXR's DICOM release holds both
    suffixes = "/".join(MIMIC_SUFFIXES)
    if not paths:
        found = f"; it holds {dp.describe_skipped(skipped)}" if skipped else ""
        raise PreprocessError(f"no {suffixes} files under {root}{found} (MIMIC-CXR-JPG images end in .jpg, "
                              f"MIMIC-CXR's in .dcm)")
    if skipped:
        log.warning("%s: skipped %s that do not end in %s", root, dp.describe_skipped(skipped), suffixes)
    _one_file_per_image(paths)
    log.info("found %d images under %s", len(paths), root)
    if args.views:
        paths = _filter_views(paths, args)

    dropped = []
    missing = [p for p in paths if not os.path.isfile(dp.report_path(p, args.radiology_reports_path))]
    if missing:
        first = dp.report_path(missing[0], args.radiology_reports_path)
        if args.missing_report == "error":
            raise PreprocessError(
                f"{len(missing)} images have no report file, e.g. {first} (for {missing[0]}). Check "
                f"--radiology_reports_path, or pass --missing_report skip to drop those images.")
        log.warning("--missing_report skip: dropping %d images without a report (first: %s)", len(missing), first)
        missing_set = set(missing)
        dropped = [(p, f"missing report {dp.report_path(p, args.radiology_reports_path)}") for p in missing]
        paths = [p for p in paths if p not in missing_set]

    try:
        rule = args.impression_rule or "chexzero"
        if rule == NO_RULE:
            raise PreprocessError("--impression_rule none applies to --dataset_type csv; mimic reports need "
                                  f"one of {', '.join(dp.IMPRESSION_RULES)}")
        filenames, impressions = dp.impressions_for(paths, args.radiology_reports_path, rule)
    except (FileNotFoundError, ValueError) as e:   # a report that vanished, or is not UTF-8 text
        raise PreprocessError(str(e)) from None
    log.info("%d captions (%s rule), %d are '%s'", len(impressions), rule,
             sum(i == dp.NO_IMPRESSION for i in impressions), dp.NO_IMPRESSION)
    tables = {args.csv_out_path or "data/cxr_paths.csv": pd.DataFrame({"Path": paths}),
              args.mimic_impressions_path: pd.DataFrame({"filename": filenames, "impression": impressions})}
    return Plan(paths, tables, dropped=dropped)


def _study_key(study_or_path: str) -> str:
    """'patientNNNNN/studyK' from a groundtruth Study or an image folder path."""
    parts = Path(study_or_path).parts
    return "/".join(parts[-2:])


def plan_chexpert_test(args: argparse.Namespace) -> Plan:
    """Sorted view1_frontal.jpg images, each matched to its groundtruth.csv row by Study."""
    root = Path(args.chest_x_ray_path)
    gt_file = _find_file(args.labels_path, [root / "groundtruth.csv", root.parent / "groundtruth.csv"],
                         "CheXpert test groundtruth.csv")
    gt = _read_csv(gt_file)
    _require_columns(gt, ("Study", *CHEXPERT_LABELS), gt_file)
    gt["key"] = gt["Study"].map(_study_key)
    if gt["key"].duplicated().any():
        raise PreprocessError(f"{gt_file}: duplicate Study {gt.loc[gt['key'].duplicated(), 'Study'].iloc[0]}")
    images = sorted((str(p) for p in root.rglob("view1_frontal.jpg")), key=lambda p: Path(p).parts)
    if not images:
        raise PreprocessError(f"no view1_frontal.jpg under {root}")
    by_key: dict[str, str] = {}
    for img in images:
        key = _study_key(str(Path(img).parent))
        if key in by_key:
            raise PreprocessError(f"two view1_frontal.jpg for study {key}: {by_key[key]} and {img}")
        by_key[key] = img

    labelled = set(gt["key"])
    dropped = [(img, f"study not in {gt_file.name}") for key, img in by_key.items() if key not in labelled]
    dropped += [(row.Study, "no view1_frontal.jpg for this study") for row in gt.itertuples() if row.key not in by_key]
    for path, reason in dropped:
        log.warning("left out %s: %s", path, reason)
    keys = [key for key in by_key if key in labelled]
    paths = [by_key[key] for key in keys]
    rows = gt.set_index("key").loc[keys]
    labels = pd.DataFrame({"Path": paths, "Study": rows["Study"].to_numpy()})
    for c in CHEXPERT_LABELS:
        labels[c] = rows[c].to_numpy()
    log.info("chexpert-test: %d studies with image and labels", len(paths))
    tables = {_labels_out(args): labels}
    if args.csv_out_path:
        tables[args.csv_out_path] = pd.DataFrame({"Path": paths})
    return Plan(paths, tables, dropped=dropped)


def plan_chexpert_valid(args: argparse.Namespace) -> Plan:
    """Frontal rows of valid.csv, in CSV order; image = <release parent>/<Path>."""
    root = Path(args.chest_x_ray_path)
    csv_file = _find_file(args.labels_path, [root / "CheXpert-v1.0-small" / "valid.csv",
                                             root / "CheXpert-v1.0" / "valid.csv", root / "valid.csv"],
                          "CheXpert valid.csv")
    df = _read_csv(csv_file)
    _require_columns(df, ("Path", "Frontal/Lateral", *CHEXPERT_LABELS), csv_file)
    df = df[df["Frontal/Lateral"].astype(str).str.strip() == "Frontal"].reset_index(drop=True)
    if df.empty:
        raise PreprocessError(f"no Frontal rows in {csv_file}")
    # Path starts with the release folder (CheXpert-v1.0-small/valid/...), so it is relative
    # to the folder above valid.csv's own folder.
    base = csv_file.parent.parent if Path(df["Path"].iloc[0]).parts[0] == csv_file.parent.name else csv_file.parent
    paths = [str(base / p) for p in df["Path"]]
    log.info("chexpert-valid: %d frontal images from %s", len(paths), csv_file)
    tables = {_labels_out(args): df[["Path", *CHEXPERT_LABELS]]}
    if args.csv_out_path:
        tables[args.csv_out_path] = pd.DataFrame({"Path": paths})
    return Plan(paths, tables)


def padchest_image_path(root: Path, image_dir: object, image_id: str) -> str:
    """<root>/<ImageDir>/<ImageID> (unzipped layout) or <root>/<ImageID> (flat layout)."""
    nested = root / str(int(image_dir)) / image_id if pd.notna(image_dir) else None
    if nested is not None and nested.is_file():
        return str(nested)
    flat = root / image_id
    return str(flat if flat.is_file() or nested is None else nested)


def plan_padchest(args: argparse.Namespace) -> Plan:
    """Physician-labelled rows of the PadChest CSV with the chosen projections, in CSV order."""
    root = Path(args.chest_x_ray_path)
    csv_file = _find_file(args.labels_path, [root / PADCHEST_CSV, root / (PADCHEST_CSV + ".gz"),
                                             root.parent / PADCHEST_CSV, root.parent / (PADCHEST_CSV + ".gz")],
                          "PadChest CSV")
    df = _read_csv(csv_file, low_memory=False)
    _require_columns(df, ("ImageID", "ImageDir", "Labels", "MethodLabel", "Projection"), csv_file)
    projections = set(_split_list(args.projections))
    physician = df["MethodLabel"].astype(str).str.strip() == "Physician"
    df = df[physician & df["Projection"].astype(str).str.strip().isin(projections)].reset_index(drop=True)
    log.info("padchest: %d Physician-labelled rows (of %d), %d with projection in %s",
             int(physician.sum()), len(physician), len(df), sorted(projections))
    if df.empty:
        raise PreprocessError(f"no PadChest rows left after the Physician and --projections filters in {csv_file}")

    parsed = []
    for row in df.itertuples():
        try:
            parsed.append(dp.parse_padchest_labels(row.Labels))
        except ValueError as e:
            raise PreprocessError(f"{csv_file}, ImageID {row.ImageID}: {e}") from None
    names = sorted({label for labels in parsed for label in labels})
    paths = [padchest_image_path(root, d, i) for d, i in zip(df["ImageDir"], df["ImageID"])]
    multi_hot = pd.DataFrame([[int(n in found) for n in names] for found in map(set, parsed)], columns=names)
    labels = pd.concat([pd.DataFrame({"Path": paths, "ImageID": df["ImageID"]}), multi_hot], axis=1)
    bits = [int(b) if pd.notna(b) else None for b in df.get("BitsStored_DICOM", pd.Series([None] * len(df)))]
    log.info("padchest: %d images, %d distinct labels", len(paths), len(names))
    tables = {_labels_out(args): labels}
    if args.csv_out_path:
        tables[args.csv_out_path] = pd.DataFrame({"Path": paths})
    return Plan(paths, tables, bits=bits)


# --------------------------------------------------------------------------------------
# Your own data: a CSV (or .jsonl) of image paths + report texts, or + labels
# --------------------------------------------------------------------------------------

LFS_POINTER = "version https://git-lfs.github.com/spec/v1"
#: Reasons a report is left out of training (failed_reports.csv's ``reason`` column).
REPORT_REASONS = ("empty", "git-lfs pointer", "binary", "one repeated token", "empty impression")
#: Control characters a text report may hold (tab, newlines, vertical tab, form feed).
_TEXT_CONTROLS = set("\t\n\r\x0b\x0c")
CONTEXT_LENGTH = 77


def read_table(path: str | Path) -> pd.DataFrame:
    """A .csv (or .jsonl) as strings, read robustly: bytes that are not UTF-8 become U+FFFD and NUL
    bytes become U+FFFD too (the report check calls both 'binary'), so one bad row never stops the read."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"--csv {path}: no such file; check the path")
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    if text.startswith("\ufeff"):
        text = text[1:]   # a UTF-8 byte-order mark (Excel's "CSV UTF-8")
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            table = pd.read_json(io.StringIO(text), lines=True, dtype=False)
            return table.astype(object).where(table.notna(), None).map(lambda v: None if v is None else str(v))
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        kind = "JSON lines file" if path.suffix.lower() in (".jsonl", ".ndjson") else "CSV"
        raise PreprocessError(f"--csv {path}: not a readable {kind} ({first})") from None


def _need_columns(table: pd.DataFrame, columns: list[str], path: str, flags: list[str]) -> None:
    missing = [(c, f) for c, f in zip(columns, flags) if c not in table.columns]
    if missing:
        named = ", ".join(f"{c!r} ({f})" for c, f in missing)
        raise PreprocessError(f"{path} has no column {named}; its columns are {list(table.columns)}")


def _csv_paths(table: pd.DataFrame, args: argparse.Namespace) -> tuple[list[str | None], list[int]]:
    """(image path of each row, resolved against --image_root or the CSV's folder; None when blank)."""
    root = Path(args.image_root) if args.image_root else Path(args.csv).parent
    if args.image_root and not root.is_dir():
        raise PreprocessError(f"--image_root {root} is not a folder")
    paths: list[str | None] = []
    for value in table[args.path_column]:
        text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
        paths.append(str(root / text) if text else None)   # an absolute path stays as it is
    return paths, [i for i, p in enumerate(paths) if p is None]


def report_problem(text: object) -> str | None:
    """Why a report cannot train anything (one of :data:`REPORT_REASONS`), or None when it can."""
    if text is None or (isinstance(text, float) and pd.isna(text)) or not str(text).strip():
        return "empty"
    text = str(text)
    if text.lstrip().startswith(LFS_POINTER):
        return "git-lfs pointer"
    if "\ufffd" in text or any(ord(c) < 32 and c not in _TEXT_CONTROLS for c in text):
        return "binary"
    tokens = text.lower().split()
    if len(tokens) > 1 and len(set(tokens)) == 1:
        return "one repeated token"
    return None


def _caption(text: str, rule: str) -> str:
    return text if rule == NO_RULE else dp.extract_impression(text, rule)


def caption_stats(captions: list[str], context_length: int = CONTEXT_LENGTH) -> dict:
    """Caption lengths in BPE tokens (start and end tokens included, as the model sees them)."""
    import numpy as np

    from clip import _tokenizer

    tok = _tokenizer()
    lengths = np.array([len(tok.encode(c)) + 2 for c in captions], dtype=np.int64)
    if not len(lengths):
        return {"n": 0}
    percentiles = {f"p{q}": float(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 95, 99)}
    return {"n": int(len(lengths)), "min": int(lengths.min()), **percentiles, "max": int(lengths.max()),
            "context_length": context_length,
            "share_truncated": float((lengths > context_length).mean()),
            "n_truncated": int((lengths > context_length).sum())}


def plan_csv(args: argparse.Namespace) -> Plan:
    """Rows of --csv in order; rows whose report is bad or whose path is blank are left out (listed)."""
    if not args.csv:
        raise PreprocessError("--dataset_type csv needs --csv (a CSV or .jsonl of image paths and report texts)")
    table = read_table(args.csv)
    _need_columns(table, [args.path_column, args.text_column], args.csv, ["--path_column", "--text_column"])
    if table.empty:
        raise PreprocessError(f"--csv {args.csv}: no data rows")
    rule = args.impression_rule or NO_RULE
    paths, _ = _csv_paths(table, args)
    texts = table[args.text_column].tolist()
    impressions_out = args.mimic_impressions_path
    reports_out = args.failed_reports_path or str(Path(impressions_out).parent / "failed_reports.csv")
    summary_out = args.summary_path or str(Path(impressions_out).with_suffix("")) + "_summary.json"

    bad: list[tuple[int, str, str]] = []   # (row number, path, reason)
    dropped: list[tuple[str, str]] = []
    keep: list[int] = []
    captions: list[str] = []
    for i, (path, text) in enumerate(zip(paths, texts)):
        reason = report_problem(text)
        caption = None
        if reason is None:
            caption = _caption(str(text), rule)
            if not caption.strip():
                reason = "empty impression"
        if reason is not None:
            bad.append((i + 1, path or "", reason))
        elif path is None:
            dropped.append((f"{args.csv} row {i + 1}", "no image path"))
        else:
            keep.append(i)
            captions.append(caption)
    failed_reports = pd.DataFrame(bad, columns=["row", "path", "reason"])
    if bad:
        counts = ", ".join(f"{k}: {v}" for k, v in failed_reports["reason"].value_counts().items())
        if args.bad_reports == "stop":
            write_csv_atomic(failed_reports, reports_out)
            raise PreprocessError(f"{len(bad)} bad reports in {args.csv} ({counts}), listed in {reports_out}; "
                                  "fix them or pass --bad_reports skip to leave them out")
        log.warning("--bad_reports skip: leaving out %d reports (%s), listed in %s", len(bad), counts, reports_out)
    for path, reason in dropped:
        log.warning("left out %s: %s", path, reason)
    if not keep:
        raise PreprocessError(f"--csv {args.csv}: no row has both an image path and a usable report")
    kept_paths = [paths[i] for i in keep]
    filenames = [str(table[args.path_column].iloc[i]).strip() for i in keep]
    tables = {impressions_out: pd.DataFrame({"filename": filenames, "impression": captions})}
    if args.csv_out_path:
        tables[args.csv_out_path] = pd.DataFrame({"Path": kept_paths})

    def finish(kept: list[int], failures: list) -> None:
        write_csv_atomic(failed_reports, reports_out)
        dropped_by = {reason: int(n) for reason, n in failed_reports["reason"].value_counts().items()}
        if dropped:
            dropped_by["no image path"] = len(dropped)
        if failures and not args.keep_failed:
            dropped_by["image failed to decode"] = len(failures)
        summary = {"csv": str(args.csv), "rows": len(table), "pairs_kept": len(kept),
                   "dropped": dropped_by, "impression_rule": rule,
                   "caption_tokens": caption_stats([captions[i] for i in kept]),
                   "outputs": {"h5": args.cxr_out_path, "impressions": impressions_out,
                               "failed_reports": reports_out}}
        Path(summary_out).parent.mkdir(parents=True, exist_ok=True)
        tmp = summary_out + ".tmp"
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, summary_out)
        tokens = summary["caption_tokens"]
        print(f"csv summary: {len(kept)} of {len(table)} pairs kept; dropped "
              f"{dropped_by or 'none'}; caption BPE tokens p50 {tokens.get('p50')} p95 {tokens.get('p95')} "
              f"max {tokens.get('max')}; {tokens.get('share_truncated', 0):.1%} cut at {CONTEXT_LENGTH} tokens "
              f"(saved to {summary_out})")

    log.info("csv: %d pairs from %s (%s rule), %d reports left out", len(keep), args.csv, rule, len(bad))
    return Plan(kept_paths, tables, dropped=dropped, finish=finish)


_POSITIVE = {"1", "1.0", "true", "yes", "positive", "pos"}
_NEGATIVE = {"0", "0.0", "false", "no", "negative", "neg"}
_UNCERTAIN = {"-1", "-1.0", "uncertain", "u"}


def _label_value(value: object) -> str:
    """'1', '0', 'uncertain' or 'other' for one cell; a blank is '0' (not mentioned = negative)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "0"
    text = str(value).strip().lower()
    if text in ("", "nan"):
        return "0"
    if text in _POSITIVE:
        return "1"
    if text in _NEGATIVE:
        return "0"
    if text in _UNCERTAIN:
        return "uncertain"
    return "other"


def plan_csv_labels(args: argparse.Namespace) -> Plan:
    """Rows of --csv in order, with the label columns by name as 0/1 (blank = 0; -1/uncertain by --uncertain)."""
    if not args.csv:
        raise PreprocessError("--dataset_type csv-labels needs --csv (a CSV or .jsonl of image paths and labels)")
    table = read_table(args.csv)
    _need_columns(table, [args.path_column], args.csv, ["--path_column"])
    names = (_split_list(args.label_columns) if args.label_columns
             else [c for c in table.columns if c != args.path_column])
    if not names:
        raise PreprocessError(f"{args.csv} has no label columns besides {args.path_column!r}")
    _need_columns(table, names, args.csv, ["--label_columns"] * len(names))
    if "Path" in names:
        raise PreprocessError(f"{args.csv}: 'Path' is the labels CSV's image column; it cannot be a label column")
    if table.empty:
        raise PreprocessError(f"--csv {args.csv}: no data rows")
    paths, blank = _csv_paths(table, args)
    kinds = pd.DataFrame({c: table[c].map(_label_value) for c in names})
    other = {c: table[c][kinds[c] == "other"] for c in names if (kinds[c] == "other").any()}
    if other:
        c, values = next(iter(other.items()))
        raise PreprocessError(f"{args.csv}: label column {c!r} holds {values.iloc[0]!r} (row {values.index[0] + 1}); "
                              f"labels must be 1/0 (true/false, yes/no), blank (= 0) or -1/uncertain; pick the label "
                              f"columns with --label_columns")
    uncertain = kinds.eq("uncertain")
    if uncertain.to_numpy().any():
        counts = {c: int(n) for c, n in uncertain.sum().items() if n}
        if args.uncertain == "error":
            raise PreprocessError(f"{args.csv}: uncertain (-1) labels {counts}; choose what they become with "
                                  f"--uncertain zero|one|drop")
        log.warning("--uncertain %s: uncertain labels %s", args.uncertain, counts)
        kinds = kinds.replace("uncertain", {"zero": "0", "one": "1", "drop": "uncertain"}[args.uncertain])
    drop_rows = set(blank) | {i for i in range(len(table)) if uncertain.iloc[i].any() and args.uncertain == "drop"}
    dropped = [(f"{args.csv} row {i + 1}", "no image path" if paths[i] is None
                else "uncertain label (--uncertain drop)") for i in sorted(drop_rows)]
    keep = [i for i in range(len(table)) if i not in drop_rows]
    if not keep:
        raise PreprocessError(f"--csv {args.csv}: no rows left (blank paths or --uncertain drop)")
    kept_paths = [paths[i] for i in keep]
    labels = pd.DataFrame({"Path": kept_paths})
    for c in names:
        labels[c] = kinds[c].iloc[keep].astype(int).to_numpy()
    log.info("csv-labels: %d images, %d label columns %s", len(keep), len(names), names)
    tables = {_labels_out(args): labels}
    if args.csv_out_path:
        tables[args.csv_out_path] = pd.DataFrame({"Path": kept_paths})
    return Plan(kept_paths, tables, dropped=dropped)


PLANS = {"mimic": plan_mimic, "chexpert-test": plan_chexpert_test,
         "chexpert-valid": plan_chexpert_valid, "padchest": plan_padchest,
         "csv": plan_csv, "csv-labels": plan_csv_labels}


# --------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------


def write_csv_atomic(df: pd.DataFrame, path: str) -> None:
    """Write a CSV via a temporary file and a rename, so a crash never leaves half a file.

    A write that fails (disk full, no permission) removes the temporary file and raises
    :class:`data_process.OutputWriteError` naming ``path``; the decoded images are kept, so
    ``--resume`` finishes the run once the cause is fixed.
    """
    tmp = path + ".tmp"
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise dp.OutputWriteError(f"{path}: cannot write it: {reason}. The images are decoded and kept: fix "
                                  f"that (free space, or another path), then run again with --resume") from None


def run(args: argparse.Namespace) -> None:
    """Plan, decode into the partial h5, then publish the aligned CSVs and the h5.

    The output's lock is held from the first write to the publication, so a second run on the
    same ``--cxr_out_path`` is told that a live process is writing it (planning writes nothing).
    """
    plan = PLANS[args.dataset_type](args)
    with dp.output_lock(args.cxr_out_path):
        failures = dp.build_h5_partial(
            plan.paths, args.cxr_out_path, num_workers=args.num_workers, dtype=args.dtype,
            keep_failed=args.keep_failed, fast_decode=args.fast_decode, resume=args.resume,
            bits_stored=plan.bits, chunk_images=args.chunk_images, desc=args.dataset_type,
            dicom_rule=args.dicom_rule)
        failed_rows = {f.index for f in failures}
        kept = [i for i in range(len(plan.paths)) if args.keep_failed or i not in failed_rows]

        failed = pd.DataFrame(plan.dropped + [(f.path, f.reason) for f in failures], columns=["Path", "reason"])
        failed_out = args.failed_out_path or str(Path(args.cxr_out_path).parent / "failed_images.csv")
        write_csv_atomic(failed, failed_out)
        for out_path, table in plan.tables.items():
            write_csv_atomic(table.iloc[kept].reset_index(drop=True), out_path)
        if plan.finish is not None:
            plan.finish(kept, failures)
        dp.finalize_h5(args.cxr_out_path)
    log.info("wrote %s: %d rows (%s); %d images failed to decode%s; %d left out before decoding; "
             "failures listed in %s", args.cxr_out_path, len(kept), args.dtype, len(failures),
             " (kept as zero rows)" if args.keep_failed and failures else "", len(plan.dropped), failed_out)
    for out_path in plan.tables:
        log.info("wrote %s", out_path)


def _main(argv: list[str] | None) -> int:
    run(parse_args(argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when every output is written, 2 for a user error (one line on stderr;
    a bad flag too, whose exit argparse would raise)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_cli(_main, argv)
    except SystemExit as stop:   # a bad flag (2, its line already printed) or --help (0)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2


if __name__ == "__main__":
    raise SystemExit(main())
