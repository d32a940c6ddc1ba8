"""Chest X-ray phantoms written in the real on-disk formats of MIMIC-CXR(-JPG), CheXpert and PadChest.

Why: nobody here has the real datasets, yet every stage of the pipeline (preprocessing, CLIP
training, zero-shot evaluation) should run for real. This package draws synthetic chest
radiographs whose findings a model can learn, pairs them with real report text (the Indiana
University chest X-ray reports that torchxrayvision ships) and writes them in the layouts and
quirks of the real releases, so that the code exercised here is the code that runs on real data.

    python -m phantom --out data/phantom --studies 2000 --seed 0
    python -m phantom --out data/phantom --studies 2000 --seed 0 --dicom 200    # + DICOM copies
    python -m phantom --contact_sheet docs/phantoms.png
    python -m phantom --learnability

Reading guide (each module uses only the ones above it):
  streams   the named random streams (one seed, one stream per purpose);
  labels    label vocabularies, the MeSH -> CheXpert table and its parser, the Finding to draw;
  reports   the Indiana University reports, label sampling, MIMIC-style report text;
  canvas    anatomy, pose and the film in body coordinates; primitives both views share;
  frontal   the frontal view: one function per anatomical structure, per finding, per device;
  lateral   the lateral view, the same way;
  images    a study's radiograph in either view (and its findings' regions); image files written by a process pool;
  dicom     DICOM copies of the phantoms whose display is known to the grey level (--dicom);
  writers   the dataset layouts, their edge cases, the CheXpert sets' region files (segmentations.py) and
            the manifest; generate() writes it all;
  checks    the learnability check and the contact sheet;
  __main__  the command line.

Body coordinates (frontal): u runs across the chest in units of the thoracic half-width
(u = -1 at the inner rib margin of the patient's RIGHT, which is the LEFT of the image, as on a
real PA film); v runs down from the lung apex (v = 0) to the costophrenic angles (v = lung
height, about 1.7). Every structure is defined in (u, v), so pose (shift, scale, rotation) is a
single change of coordinates.
"""
from .canvas import Anatomy, Canvas, Pose, anatomy_with, sample_anatomy, sample_pose
from .checks import contact_sheet, learnability
from .dicom import TRANSFER_SYNTAXES, VARIANTS, Header, Variant, stored_values, write_dicom
from .frontal import FRONTAL_FINDINGS, atelectasis, draw_frontal_anatomy
from .images import ImageJob, render, write_image, write_images
from .labels import (
    CHEXPERT_ORDER,
    CHEXPERT_TEST_POSITIVES,
    CHEXPERT_TEST_PREVALENCE,
    COMPETITION,
    LABELS,
    MESH_TO_CHEXPERT,
    PADCHEST_TO_CHEXPERT,
    PATHOLOGIES,
    Finding,
    make_finding,
    mesh_term,
    mesh_terms_to_labels,
    report_labels,
)
from .lateral import LATERAL_FINDINGS, draw_lateral_anatomy
from .reports import (
    IUReport,
    findings_for_labels,
    findings_of_report,
    iu_reports,
    mimic_report,
    positives_matrix,
    sample_label_rows,
    torchxrayvision_data,
)
from .streams import STREAMS
from .writers import PADCHEST_CSV, generate

__all__ = [
    "Anatomy", "Canvas", "Pose", "anatomy_with", "sample_anatomy", "sample_pose",
    "contact_sheet", "learnability",
    "TRANSFER_SYNTAXES", "VARIANTS", "Header", "Variant", "stored_values", "write_dicom",
    "FRONTAL_FINDINGS", "atelectasis", "draw_frontal_anatomy",
    "ImageJob", "render", "write_image", "write_images",
    "CHEXPERT_ORDER", "CHEXPERT_TEST_POSITIVES", "CHEXPERT_TEST_PREVALENCE", "COMPETITION", "LABELS",
    "MESH_TO_CHEXPERT", "PADCHEST_TO_CHEXPERT", "PATHOLOGIES", "Finding", "make_finding", "mesh_term",
    "mesh_terms_to_labels", "report_labels",
    "LATERAL_FINDINGS", "draw_lateral_anatomy",
    "IUReport", "findings_for_labels", "findings_of_report", "iu_reports", "mimic_report", "positives_matrix",
    "sample_label_rows", "torchxrayvision_data",
    "STREAMS",
    "PADCHEST_CSV", "generate",
]
