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
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import data_process as dp
from errors import ArgumentParser, UserError, positive_int, run_cli
from image_reader import DICOM_RULES, DICOM_SUFFIXES
from labels import CHEXPERT_CSV_ORDER as CHEXPERT_LABELS  # CheXpert's CSV columns, in their order
from labels import PADCHEST_CSV

log = logging.getLogger("preprocess")

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
    p.add_argument("--impression_rule", default="chexzero", choices=dp.IMPRESSION_RULES,
                   help="chexzero: the original rule (text after the last 'IMPRESSION:' token, else "
                        "'NO IMPRESSION'). mimic: the official MIMIC-CXR section parser's choice "
                        "(impression > findings > last_paragraph > comparison)")
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
        filenames, impressions = dp.impressions_for(paths, args.radiology_reports_path, args.impression_rule)
    except (FileNotFoundError, ValueError) as e:   # a report that vanished, or is not UTF-8 text
        raise PreprocessError(str(e)) from None
    log.info("%d captions (%s rule), %d are '%s'", len(impressions), args.impression_rule,
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


PLANS = {"mimic": plan_mimic, "chexpert-test": plan_chexpert_test,
         "chexpert-valid": plan_chexpert_valid, "padchest": plan_padchest}


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
