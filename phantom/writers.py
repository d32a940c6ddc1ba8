"""Writers: the phantom root in the real on-disk layouts of MIMIC-CXR(-JPG) and its reports,
the CheXpert test and valid sets (with the ground-truth regions of their findings, CheXlocalize's
way: segmentations.py) and PadChest, with their seeded edge cases (damaged images, reports without
IMPRESSION, NOTIFICATION before IMPRESSION, missing label rows) and the manifest that lists them.
`generate` writes everything.

Each writer plans its files with its own named random streams (streams.STREAMS), writes the
text files itself and returns the image jobs, which images.write_images then draws in parallel.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from errors import UserError
from segmentations import segmentation_key, write_segmentations

from . import streams
from .dicom import write_dicom_root
from .images import ImageJob, write_images
from .labels import (
    CHEXPERT_ORDER,
    CHEXPERT_TEST_PREVALENCE,
    LABELS,
    MENTION_KEYWORDS,
    MIMIC_TRAIN_TARGETS,
    PADCHEST_DEVICE,
    PADCHEST_TO_CHEXPERT,
    SENTENCE_BREAK,
    Finding,
    finding_from_words,
)
from .reports import (
    IUReport,
    findings_for_labels,
    findings_of_report,
    iu_reports,
    mimic_report,
    positives_matrix,
    raking_weights,
    sample_label_rows,
    torchxrayvision_data,
)

log = logging.getLogger("phantom")

#: Real detector sizes (width, height) scaled down by 4, e.g. 2544 x 3056 -> 636 x 764.
MIMIC_SIZES = [(636, 764), (635, 762), (635, 676), (625, 750), (512, 625), (764, 636)]
#: Study protocols: (PerformedProcedureStepDescription, ViewPositions, probability). About a
#: third of the images are laterals, as in MIMIC-CXR (32.7%).
PROTOCOLS = [
    ("CHEST (PA AND LAT)", ("PA", "LATERAL"), 0.52), ("CHEST (PORTABLE AP)", ("AP",), 0.30),
    ("CHEST (PA AND LAT)", ("PA", "LL"), 0.04), ("CHEST (PRE-OP PA AND LAT)", ("PA", "LATERAL", "AP"), 0.03),
    ("CHEST (SINGLE VIEW)", ("PA",), 0.06), ("CHEST (PORTABLE AP)", ("",), 0.05),
]
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral", "": ""}
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
VALID_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_ORDER
#: Where the MIMIC-CXR-JPG images and CSVs, and the MIMIC-CXR reports, go under the root.
MIMIC_JPG, MIMIC_REPORTS = Path("mimic-cxr-jpg", "2.0.0"), Path("mimic-cxr", "2.0.0")


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no file name and a zero timestamp, so the same content gives the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def csv_text(header: list[str], rows: list[list], trailing_newline: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    return text if trailing_newline else text.rstrip("\n")


def label_text(value: float | None) -> str:
    """A MIMIC label cell: 1.0, 0.0, -1.0, or empty when not mentioned."""
    return "" if value is None else repr(float(value))


# ---- MIMIC-CXR-JPG + reports -----------------------------------------------------------------

def unique_ids(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < count:
        for value in rng.integers(low, high, size=count).tolist():
            if value not in seen and len(ids) < count:
                seen.add(value)
                ids.append(value)
    return ids


def dicom_id(rng: np.random.Generator) -> str:
    """A MIMIC dicom_id: five dash-separated groups of 8 hex digits."""
    return "-".join(f"{x:08x}" for x in rng.integers(0, 2 ** 32, size=5, dtype=np.uint64).tolist())


#: What an edge-case study's report must have for the edge case to make sense.
EDGE_CASE_NEEDS = {"no_impression": lambda r: bool(r.findings and r.impression),
                   "notification_before_impression": lambda r: bool(r.impression),
                   "two_impressions": lambda r: len(SENTENCE_BREAK.split(r.impression)) > 1}


@dataclass
class MimicCohort:
    """The MIMIC patients and studies, drawn before anything is written: per patient the
    subject_id, number of studies, split, sex and the day before the first study; per study
    (index k, in patient order) the study_id; and which training studies carry an edge case."""

    subjects: list[int]
    per_patient: list[int]
    splits: list[str]
    female: list[bool]
    first_day: list[int]
    study_ids: list[int]
    report_edges: dict[str, list[int]]
    image_edges: dict[str, list[int]]


def mimic_cohort(studies: int, seed: int) -> MimicCohort:
    """Patients with 1, 2, ... studies (geometric), unique ids, a split per patient (every split
    present once there are more than three patients), sex and first day; then the edge cases."""
    rng = streams.rng(seed, "mimic_cohort")
    per_patient: list[int] = []
    while sum(per_patient) < studies:
        per_patient.append(min(int(rng.geometric(0.5)), studies - sum(per_patient)))
    subjects = unique_ids(rng, len(per_patient), 10_000_000, 20_000_000)
    study_ids = unique_ids(rng, studies, 50_000_000, 60_000_000)
    splits = [str(rng.choice(["train", "validate", "test"], p=[0.92, 0.04, 0.04])) for _ in subjects]
    for i, split in ((1, "validate"), (2, "test")):
        if split not in splits and len(splits) > 3:
            splits[i] = split
    people = [(bool(rng.random() < 0.48), int(rng.integers(0, 36500))) for _ in subjects]
    report_edges, image_edges = mimic_edge_cases(studies, seed, per_patient, splits)
    return MimicCohort(subjects, per_patient, splits, [female for female, _ in people], [day for _, day in people],
                       study_ids, report_edges, image_edges)


def mimic_edge_cases(studies: int, seed: int, per_patient: list[int],
                     splits: list[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Which studies (by index) get each report edge case and each damaged first image: two
    each, distinct, drawn among the training studies."""
    rng = streams.rng(seed, "mimic_edge_cases")
    study_patient = [p for p, n in enumerate(per_patient) for _ in range(n)]
    train_studies = [k for k in range(studies) if splits[study_patient[k]] == "train"]
    picks = [int(k) for k in rng.permutation(train_studies)]
    report_edges = {"no_impression": picks[0:2], "notification_before_impression": picks[2:4],
                    "two_impressions": picks[4:6], "missing_from_chexpert_csv": picks[6:8]}
    image_edges = {"truncated_jpg": picks[8:10], "zero_byte_jpg": picks[10:12]}
    return report_edges, image_edges


def mimic_report_weights(reports: tuple[IUReport, ...]) -> np.ndarray:
    """Sampling weights over the IU reports: raked towards the MIMIC training rates, and a
    quarter of the weight for reports whose impression does not name one of their competition
    findings (CheXzero trains on the impression only)."""
    unnamed = [any(r.positive(lab) and not re.search(word, r.impression.lower())
                   for lab, word in MENTION_KEYWORDS.items())
               for r in reports]
    return raking_weights(positives_matrix(reports), MIMIC_TRAIN_TARGETS, cap=60.0, prior=np.where(unnamed, 0.25, 1.0))


@dataclass
class MimicTables:
    """What the MIMIC writer collects study by study: the image jobs, the rows of the three
    CSVs, and each report's path and text (by study_id) for the manifest."""

    jobs: list[ImageJob] = field(default_factory=list)
    metadata: list[list] = field(default_factory=list)
    split_rows: list[list] = field(default_factory=list)
    label_rows: list[list] = field(default_factory=list)
    report_paths: dict[int, str] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)


def write_mimic(out: Path, studies: int, seed: int) -> tuple[list[ImageJob], dict]:
    """Plan and write the MIMIC-CXR reports and MIMIC-CXR-JPG CSVs; returns the image jobs and
    the manifest entries (counts and edge cases)."""
    reports = iu_reports()
    weights = mimic_report_weights(reports)
    cohort = mimic_cohort(studies, seed)
    tables = MimicTables()
    k = 0
    for p, n_studies in enumerate(cohort.per_patient):
        day = cohort.first_day[p]
        for _ in range(n_studies):
            day = write_mimic_study(out, seed, cohort, k, p, day, reports, weights, tables)
            k += 1
    write_mimic_csvs(out / MIMIC_JPG, tables)
    return tables.jobs, mimic_manifest(out, cohort, tables)


def write_mimic_study(out: Path, seed: int, cohort: MimicCohort, k: int, p: int, day: int,
                      reports: tuple[IUReport, ...], weights: np.ndarray, tables: MimicTables) -> int:
    """Study `k` (of patient `p`): draw its report (one that suits its edge case, if any), its
    findings and protocol, write the report, add its label row and its images. Returns the
    study's day (a later study of the same patient comes after it)."""
    rng = streams.rng(seed, "mimic_study", k)
    edges = cohort.report_edges
    report = reports[int(rng.choice(len(reports), p=weights))]
    while any(k in edges[e] and not fits(report) for e, fits in EDGE_CASE_NEEDS.items()):
        report = reports[int(rng.choice(len(reports), p=weights))]
    findings = findings_of_report(report, rng)
    # the first studies use each protocol once, so that even a small root has every ViewPosition
    protocol = k if k < len(PROTOCOLS) else int(rng.choice(len(PROTOCOLS), p=[x[2] for x in PROTOCOLS]))
    procedure, views, _ = PROTOCOLS[protocol]
    day += int(rng.integers(1, 400))
    date = (np.datetime64("2110-01-01") + np.timedelta64(day, "D")).astype(str).replace("-", "")
    subject, study = cohort.subjects[p], cohort.study_ids[k]
    folder = f"p{str(subject)[:2]}/p{subject}/s{study}"
    text = mimic_report(report, procedure, rng, notification_first=k in edges["notification_before_impression"],
                        two_impressions=k in edges["two_impressions"], drop_impression=k in edges["no_impression"])
    report_path = out / MIMIC_REPORTS / "files" / f"{folder}.txt"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    tables.report_paths[study] = report_path.relative_to(out).as_posix()
    tables.texts[study] = text
    if k not in edges["missing_from_chexpert_csv"]:
        tables.label_rows.append([subject, study] + [label_text(report.labels.get(lab)) for lab in LABELS])
    add_mimic_images(out / MIMIC_JPG / "files" / folder, seed, cohort, k, p, procedure, views, date, findings, rng,
                     tables)
    return day


def add_mimic_images(folder: Path, seed: int, cohort: MimicCohort, k: int, p: int, procedure: str,
                     views: tuple[str, ...], date: str, findings: list[Finding], rng: np.random.Generator,
                     tables: MimicTables) -> None:
    """One image per view of study `k`: its job (the first image of a damaged-image study is
    damaged), metadata row (size, acquisition time a minute or so apart, orientation) and split row."""
    subject, study = cohort.subjects[p], cohort.study_ids[k]
    seconds = float(rng.integers(6 * 3600, 23 * 3600)) + round(float(rng.random()), 3)
    for j, view in enumerate(views):
        image_id = dicom_id(rng)
        width, height = MIMIC_SIZES[int(rng.integers(len(MIMIC_SIZES)))]
        drawn = "LATERAL" if view in ("LATERAL", "LL") else (view or "AP")
        damage = ("truncated" if k in cohort.image_edges["truncated_jpg"] and j == 0 else
                  "empty" if k in cohort.image_edges["zero_byte_jpg"] and j == 0 else "")
        tables.jobs.append(ImageJob(str(folder / f"{image_id}.jpg"), drawn, findings, cohort.female[p],
                                    streams.stream_key(seed, "mimic_patient", subject),
                                    streams.stream_key(seed, "mimic_image", k, j), (width, height), damage=damage))
        hhmmss = int(seconds // 3600) * 10000 + int(seconds % 3600 // 60) * 100 + int(seconds % 60)
        orientation = "" if not view else ("Recumbent" if view == "AP" and rng.random() < 0.6 else "Erect")
        tables.metadata.append([image_id, subject, study, procedure, view, height, width, date,
                                repr(round(hhmmss + seconds % 1, 3)), procedure, VIEW_MEANING[view], orientation])
        tables.split_rows.append([image_id, study, subject, cohort.splits[p]])
        seconds += float(rng.integers(20, 90))


def write_mimic_csvs(jpg_root: Path, tables: MimicTables) -> None:
    """The metadata, split and CheXpert-label CSVs, gzipped, sorted as the real ones are."""
    jpg_root.mkdir(parents=True, exist_ok=True)
    metadata = sorted(tables.metadata, key=lambda r: (r[1], r[2], r[0]))
    split_rows = sorted(tables.split_rows, key=lambda r: (r[2], r[1], r[0]))
    label_rows = sorted(tables.label_rows, key=lambda r: (r[0], r[1]))
    (jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(
        gzip_bytes(csv_text(METADATA_COLUMNS, metadata).encode()))
    (jpg_root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(
        gzip_bytes(csv_text(["dicom_id", "study_id", "subject_id", "split"], split_rows).encode()))
    (jpg_root / "mimic-cxr-2.0.0-chexpert.csv.gz").write_bytes(
        gzip_bytes(csv_text(["subject_id", "study_id"] + LABELS, label_rows).encode()))


def mimic_manifest(out: Path, cohort: MimicCohort, tables: MimicTables) -> dict:
    """The MIMIC part of manifest.json: the files of each edge case, read back from what was
    written, and the counts."""
    damaged = {"truncated": "truncated_jpg", "empty": "zero_byte_jpg"}
    manifest = {key: [] for key in damaged.values()}
    for job in tables.jobs:
        if job.damage:
            manifest[damaged[job.damage]].append(Path(job.path).relative_to(out).as_posix())
    paths, texts = tables.report_paths, tables.texts
    manifest.update({
        "no_impression": sorted(paths[s] for s, t in texts.items() if "\n IMPRESSION:" not in t),
        "notification_before_impression": sorted(
            paths[s] for s, t in texts.items()
            if "\n IMPRESSION:" in t and "\n NOTIFICATION:" in t
            and t.index("\n NOTIFICATION:") < t.index("\n IMPRESSION:")),
        "two_impressions": sorted(paths[s] for s, t in texts.items() if t.count("\n IMPRESSION:") > 1),
        "missing_from_chexpert_csv": sorted(cohort.study_ids[k]
                                            for k in cohort.report_edges["missing_from_chexpert_csv"]),
    })
    splits = cohort.splits
    manifest["counts"] = {"mimic_patients": len(cohort.subjects), "mimic_studies": len(cohort.study_ids),
                          "mimic_images": len(tables.jobs),
                          "mimic_lateral_images": sum(job.view == "LATERAL" for job in tables.jobs),
                          "mimic_split_patients": {s: splits.count(s) for s in ("train", "validate", "test")}}
    return manifest


# ---- CheXpert test and valid -----------------------------------------------------------------

def chexpert_studies(n: int, seed: int, stream: str) -> list[tuple[set[str], list[Finding], bool]]:
    """Label sets at the real CheXpert test prevalences, their findings and the patient's sex,
    drawn from the named `stream`."""
    rng = streams.rng(seed, stream)
    reports = iu_reports()
    rows = sample_label_rows(n, CHEXPERT_TEST_PREVALENCE, rng)
    return [(labels, findings_for_labels(labels, reports[r], rng), bool(rng.random() < 0.45)) for r, labels in rows]


def write_chexpert_test(out: Path, n: int, seed: int) -> list[ImageJob]:
    """`chexpert-test/groundtruth.csv` (Study + 14 labels in CheXpert order, 0/1, sorted, no
    trailing newline) and `test/patientNNNNN/study1/view1_frontal.jpg` (+ some view2_lateral)."""
    root = out / "chexpert-test"
    rng = streams.rng(seed, "chexpert_test_views")
    jobs, rows = [], []
    for i, (labels, findings, female) in enumerate(chexpert_studies(n, seed, "chexpert_test_labels")):
        patient = f"patient{64741 + i:05d}"
        rows.append([f"CheXpert-v1.0/test/{patient}/study1"] + [int(lab in labels) for lab in CHEXPERT_ORDER])
        views = ([("view1_frontal", "AP" if rng.random() < 0.75 else "PA")]
                 + ([("view2_lateral", "LATERAL")] if rng.random() < 0.3 else []))
        for j, (name, view) in enumerate(views):
            size = MIMIC_SIZES[int(rng.integers(len(MIMIC_SIZES)))]
            jobs.append(ImageJob(str(root / "test" / patient / "study1" / f"{name}.jpg"), view, findings, female,
                                 streams.stream_key(seed, "chexpert_test_patient", i),
                                 streams.stream_key(seed, "chexpert_test_image", i, j), size, regions=True))
    root.mkdir(parents=True, exist_ok=True)
    (root / "groundtruth.csv").write_text(csv_text(["Study"] + CHEXPERT_ORDER, rows, trailing_newline=False))
    return jobs


def write_chexpert_valid(out: Path, n: int, seed: int) -> list[ImageJob]:
    """`chexpert/CheXpert-v1.0-small/valid.csv` (one row per image, 0.0/1.0 labels) and the
    small-release images (320 px short side) for patients 64541 onwards."""
    if n > 200:
        raise UserError(f"--valid_studies {n}: CheXpert valid patients are 64541-64740, so at most 200 valid studies")
    root = out / "chexpert" / "CheXpert-v1.0-small"
    rng = streams.rng(seed, "chexpert_valid_views")
    jobs, rows = [], []
    for i, (labels, findings, female) in enumerate(chexpert_studies(n, seed, "chexpert_valid_labels")):
        patient = f"patient{64541 + i:05d}"
        sex, age = ("Female" if female else "Male"), int(rng.integers(18, 91))
        views = ([("view1_frontal", "AP" if rng.random() < 0.75 else "PA")]
                 + ([("view2_lateral", "LATERAL")] if rng.random() < 0.16 else []))
        for j, (name, view) in enumerate(views):
            path = f"CheXpert-v1.0-small/valid/{patient}/study1/{name}.jpg"
            frontal = view != "LATERAL"
            rows.append([path, sex, age, "Frontal" if frontal else "Lateral", view if frontal else ""]
                        + [repr(float(lab in labels)) for lab in CHEXPERT_ORDER])
            size = (320, int(rng.choice([369, 390, 413]))) if frontal else (int(rng.choice([369, 390])), 320)
            jobs.append(ImageJob(str(out / "chexpert" / path), view, findings, female,
                                 streams.stream_key(seed, "chexpert_valid_patient", i),
                                 streams.stream_key(seed, "chexpert_valid_image", i, j), size, regions=True))
    root.mkdir(parents=True, exist_ok=True)
    (root / "valid.csv").write_text(csv_text(VALID_COLUMNS, rows))
    return jobs


#: The region files, beside their set's label CSV (CheXlocalize's gt_segmentations_{test,val}.json).
TEST_SEGMENTATIONS = Path("chexpert-test", "gt_segmentations.json")
VALID_SEGMENTATIONS = Path("chexpert", "CheXpert-v1.0-small", "gt_segmentations_valid.json")


def write_chexpert_segmentations(path: Path, jobs: list[ImageJob], regions: dict[str, dict | None]) -> None:
    """One set's region file from the regions write_images returned (by image path): image key ->
    {label: RLE} for each of the set's images with a drawn region (images without one are left out)."""
    write_segmentations(path, {segmentation_key(job.path): regions[job.path] for job in jobs if regions[job.path]})


# ---- PadChest --------------------------------------------------------------------------------

#: The release's label CSV name, spelled here as the dataset does (labels.py has the pipeline's; a test compares).
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


def padchest_labels(cell: str) -> list[str]:
    """The Labels cell (a stringified Python list, possibly empty or NaN) as stripped strings."""
    try:
        return [str(label).strip() for label in ast.literal_eval(cell)]
    except (ValueError, SyntaxError):
        return []


def padchest_findings(row: dict[str, str], rng: np.random.Generator) -> list[Finding]:
    """Findings for the row's drawable labels, located with the localisations that its sentences
    attach to each label ('loc left', 'loc basal', ...)."""
    try:
        sentences = ast.literal_eval(row["LabelsLocalizationsBySentence"])
    except (ValueError, SyntaxError):
        sentences = []
    places: dict[str, list[str]] = {}
    for sentence in sentences:
        if sentence:
            places.setdefault(str(sentence[0]).strip(), []).extend(str(x).replace("loc ", "").strip()
                                                                   for x in sentence[1:])
    findings = []
    for label in dict.fromkeys(padchest_labels(row["Labels"])):
        if label in PADCHEST_TO_CHEXPERT:
            words = [w for place in places.get(label, []) for w in [place] + place.split()]
            is_device = PADCHEST_TO_CHEXPERT[label] == "Support Devices"
            device = PADCHEST_DEVICE.get(label, "central_line") if is_device else None
            findings.append(finding_from_words(PADCHEST_TO_CHEXPERT[label], words, rng, device))
    return findings


def write_padchest(out: Path, n: int, seed: int) -> tuple[list[ImageJob], dict]:
    """Physician-labelled rows sampled from the real PadChest CSV that torchxrayvision ships
    (all columns kept, rows unchanged), written as the CSV, and a 16-bit PNG with 12-bit values
    at <ImageDir>/<ImageID> for each, drawn with the findings among its labels. One image is
    truncated and one row has no image."""
    with gzip.open(torchxrayvision_data() / f"{PADCHEST_CSV}.gz", "rt", newline="") as f:
        header, *rows = list(csv.reader(f))
    col = {name: i for i, name in enumerate(header)}
    physician = [r for r in rows if r[col["MethodLabel"]] == "Physician"]
    rng = streams.rng(seed, "padchest_rows")
    drawable = np.array([1.0 + 2.0 * any(lab in PADCHEST_TO_CHEXPERT for lab in padchest_labels(r[col["Labels"]]))
                         for r in physician])
    picked = rng.choice(len(physician), size=min(n, len(physician)), replace=False, p=drawable / drawable.sum())
    chosen = sorted(picked.tolist(), key=lambda i: int(physician[i][0]))
    sample = [physician[i] for i in chosen]
    root = out / "padchest"
    root.mkdir(parents=True, exist_ok=True)
    (root / PADCHEST_CSV).write_text(csv_text(header, sample), newline="")
    missing, truncated = ((int(i) for i in rng.choice(len(sample), size=2, replace=False)) if len(sample) > 1
                          else (-1, -1))
    jobs = []
    for k, r in enumerate(sample):
        row = dict(zip(header, r))
        row_rng = streams.rng(seed, "padchest_findings", k)
        projection = row["Projection"]
        view = "LATERAL" if projection == "L" else "AP" if projection.startswith("AP") else "PA"
        try:
            size = (int(float(row["Columns_DICOM"])) // 4, int(float(row["Rows_DICOM"])) // 4)
        except ValueError:
            size = (512, 600)
        if k != missing:
            jobs.append(ImageJob(str(root / row["ImageDir"] / row["ImageID"]), view, padchest_findings(row, row_rng),
                                 row["PatientSex_DICOM"] == "F",
                                 streams.stream_key(seed, "padchest_patient", zlib.crc32(row["PatientID"].encode())),
                                 streams.stream_key(seed, "padchest_image", k), size, bits=12,
                                 damage="truncated" if k == truncated else ""))

    def relative(k: int) -> str:
        return f"padchest/{sample[k][col['ImageDir']]}/{sample[k][col['ImageID']]}"

    return jobs, {"padchest_missing": [relative(missing)] if missing >= 0 else [],
                  "padchest_truncated": [relative(truncated)] if truncated >= 0 else [],
                  "counts": {"padchest_rows": len(sample), "padchest_images": len(jobs)}}


# ---- everything ------------------------------------------------------------------------------

#: What a phantom root holds: the only entries ``overwrite`` may delete.
ROOT_ENTRIES = {"mimic-cxr-jpg", "mimic-cxr", "chexpert-test", "chexpert", "padchest", "dicom", "manifest.json"}


def clear_root(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (a second phantom written over a first one would leave the
    first one's files for preprocessing to find: two datasets mixed), or with ``overwrite``
    delete it, but only if it holds nothing except a phantom root's entries."""
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise UserError(f"{out} is not empty ({', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}): "
                              "writing phantoms over an earlier root would mix the two datasets. Choose an empty "
                              "folder, or pass --overwrite to delete this one first.")
    strangers = [name for name in entries if name not in ROOT_ENTRIES]
    if strangers:
        raise UserError(f"{out} holds files that are not part of a phantom root ({', '.join(strangers[:5])}); "
                              "not deleting it. Choose an empty folder.")
    shutil.rmtree(out)


def generate(out: str | Path, studies: int = 2000, seed: int = 0, test_studies: int = 500, valid_studies: int = 200,
             padchest_images: int = 300, workers: int | None = None, overwrite: bool = False,
             dicom: int | None = None) -> dict:
    """Write the whole phantom root (see the package docstring and --help) into an empty or new
    folder (``overwrite``: replace an earlier phantom root) and return the manifest, also saved
    as <out>/manifest.json. The same seed gives byte-identical files. ``dicom`` (off by default):
    also DICOM copies of the first ``dicom`` MIMIC images and the DICOM variants and edge cases
    (phantom.dicom)."""
    out = Path(out)
    start = time.time()
    clear_root(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    mimic_jobs, manifest = write_mimic(out, studies, seed)
    test_jobs = write_chexpert_test(out, test_studies, seed)
    valid_jobs = write_chexpert_valid(out, valid_studies, seed)
    padchest_jobs, padchest = write_padchest(out, padchest_images, seed)
    jobs = mimic_jobs + test_jobs + valid_jobs + padchest_jobs
    workers = workers or os.cpu_count() or 1
    regions = dict(zip((job.path for job in jobs), write_images(jobs, workers)))
    write_chexpert_segmentations(out / TEST_SEGMENTATIONS, test_jobs, regions)
    write_chexpert_segmentations(out / VALID_SEGMENTATIONS, valid_jobs, regions)
    if dicom is not None:
        manifest["dicom"] = write_dicom_root(out, mimic_jobs, seed, dicom, workers, MIMIC_JPG, MIMIC_REPORTS)
    manifest["counts"].update(padchest.pop("counts"))
    manifest["counts"].update({"chexpert_test_studies": test_studies, "chexpert_test_images": len(test_jobs),
                               "chexpert_valid_studies": valid_studies, "chexpert_valid_images": len(valid_jobs)})
    manifest.update(padchest)
    manifest["seed"] = seed
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("generated %d studies (%d images) in %.1f s with %d workers -> %s",
             studies + test_studies + valid_studies, len(jobs), time.time() - start, workers, out)
    return manifest
