"""Chest X-ray phantoms written in the real on-disk formats of MIMIC-CXR(-JPG), CheXpert and PadChest.

Why: nobody here has the real datasets, yet every stage of the pipeline (preprocessing, CLIP
training, zero-shot evaluation) should run for real. This module draws synthetic chest
radiographs whose findings a model can learn, pairs them with real report text (the Indiana
University chest X-ray reports that torchxrayvision ships) and writes them in the layouts and
quirks of the real releases, so that the code exercised here is the code that runs on real data.

    python phantom.py --out data/phantom --studies 2000 --seed 0
    python phantom.py --contact_sheet docs/phantoms.png
    python phantom.py --learnability

Reading guide:
  1. label vocabularies and the MeSH -> CheXpert mapping table (the one place labels come from);
  2. the Indiana University reports and label sampling;
  3. the drawing: a canvas in body coordinates, one function per anatomical structure, one per
     finding (frontal and lateral views);
  4. the writers for each dataset layout, the edge cases and the manifest;
  5. the learnability check; 6. the contact sheet and the CLI.

Body coordinates (frontal): u runs across the chest in units of the thoracic half-width
(u = -1 at the inner rib margin of the patient's RIGHT, which is the LEFT of the image, as on a
real PA film); v runs down from the lung apex (v = 0) to the costophrenic angles (v = lung
height, about 1.7). Every structure is defined in (u, v), so pose (shift, scale, rotation) is a
single change of coordinates.
"""
from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import functools
import gzip
import importlib.util
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tarfile
import textwrap
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from errors import UserError, add_debug_flag, non_negative_int, positive_int, run_cli

log = logging.getLogger("phantom")

# ----------------------------------------------------------------------------------------------
# 1. Label vocabularies
# ----------------------------------------------------------------------------------------------

#: The 14 CheXpert observations in alphabetical order (MIMIC -chexpert.csv.gz, CheXzero).
LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
]
#: CheXpert train.csv / valid.csv / groundtruth.csv column order.
CHEXPERT_ORDER = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]
#: The CheXpert competition five, the labels CheXzero averages.
COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
PATHOLOGIES = [label for label in LABELS if label not in ("No Finding", "Support Devices")]

#: Positive counts of the real CheXpert test set (500 studies), chexzero_spec.md section 5.
CHEXPERT_TEST_POSITIVES = {
    "No Finding": 62, "Enlarged Cardiomediastinum": 253, "Cardiomegaly": 151, "Lung Opacity": 264,
    "Lung Lesion": 8, "Edema": 78, "Consolidation": 29, "Pneumonia": 11, "Atelectasis": 153,
    "Pneumothorax": 9, "Pleural Effusion": 104, "Pleural Other": 4, "Fracture": 5,
    "Support Devices": 261,
}
CHEXPERT_TEST_PREVALENCE = {k: v / 500 for k, v in CHEXPERT_TEST_POSITIVES.items()}

#: Positive rates the MIMIC training studies are re-weighted towards when reports are drawn.
#: Pleural Effusion and Lung Opacity are the real MIMIC train rates (data_formats.md 1.6); the
#: other competition labels are set so each has enough training studies for a small CLIP.
MIMIC_TRAIN_TARGETS = {
    "Atelectasis": 0.20, "Cardiomegaly": 0.20, "Consolidation": 0.07, "Edema": 0.12,
    "Pleural Effusion": 0.23, "Lung Opacity": 0.22,
}

# MeSH -> CheXpert. Keys are a MeSH heading, or "heading/qualifier" when the heading only counts
# with that qualifier. Only the MANUAL ("major") MeSH terms of the IU reports are used: the
# "automatic" terms are text-mined and include hedged or negated mentions. Choices:
#  * Cardiomegaly: "Cardiomegaly", "Cardiac Shadow/enlarged".
#  * Enlarged Cardiomediastinum: "Mediastinum/prominent|enlarged|widened" (heart size excluded).
#  * Pleural Effusion: also "Costophrenic Angle/blunted" (the CheXpert labeler reads blunting
#    as effusion); haemothorax and hydro/haemopneumothorax also give Pneumothorax where apt.
#  * Edema: "Pulmonary Edema" and "Pulmonary Congestion" (vascular congestion is edema in CheXpert).
#  * Lung Opacity: "Opacity", "Airspace Disease", "Infiltrate", "Density/lung".
#  * Lung Lesion: "Nodule", "Mass", "Cavitation". Calcified granulomas are NOT mapped: they are
#    incidental, and the CheXpert labeler does not count them as lesions.
#  * Support Devices: catheters, tubes, implanted/medical devices, stents, surgical instruments
#    (clips). Sternotomy wires and sutures are not mapped.
#  * Pleural Other: "Thickening/pleura" and "Pleura" (pleural thickening).
#  * Not mapped (no CheXpert observation): emphysema, COPD, granulomas, scarring, degenerative
#    spine, hiatal hernia, "Heart Failure" (a diagnosis, not a radiographic sign), etc.
MESH_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly",),
    "Cardiac Shadow/enlarged": ("Cardiomegaly",),
    "Mediastinum/prominent": ("Enlarged Cardiomediastinum",),
    "Mediastinum/enlarged": ("Enlarged Cardiomediastinum",),
    "Mediastinum/widened": ("Enlarged Cardiomediastinum",),
    "Pulmonary Atelectasis": ("Atelectasis",),
    "Pleural Effusion": ("Pleural Effusion",),
    "Costophrenic Angle/blunted": ("Pleural Effusion",),
    "Hemothorax": ("Pleural Effusion",),
    "Hydropneumothorax": ("Pleural Effusion", "Pneumothorax"),
    "Hemopneumothorax": ("Pleural Effusion", "Pneumothorax"),
    "Pulmonary Edema": ("Edema",),
    "Pulmonary Congestion": ("Edema",),
    "Consolidation": ("Consolidation",),
    "Pneumonia": ("Pneumonia",),
    "Opacity": ("Lung Opacity",),
    "Airspace Disease": ("Lung Opacity",),
    "Infiltrate": ("Lung Opacity",),
    "Density/lung": ("Lung Opacity",),
    "Nodule": ("Lung Lesion",),
    "Mass": ("Lung Lesion",),
    "Cavitation": ("Lung Lesion",),
    "Pneumothorax": ("Pneumothorax",),
    "Fractures, Bone": ("Fracture",),
    "Thickening/pleura": ("Pleural Other",),
    "Pleura": ("Pleural Other",),
    "Catheters, Indwelling": ("Support Devices",),
    "Implanted Medical Device": ("Support Devices",),
    "Medical Device": ("Support Devices",),
    "Tube, Inserted": ("Support Devices",),
    "Stents": ("Support Devices",),
    "Surgical Instruments": ("Support Devices",),
}
#: Which device a MeSH heading draws (Support Devices).
MESH_DEVICE = {
    "Catheters, Indwelling": "central_line", "Implanted Medical Device": "pacemaker",
    "Tube, Inserted": "enteric_tube", "Stents": "stent", "Surgical Instruments": "surgical_clips",
}
#: MeSH qualifier -> severity 1 (mild/small), 2 (moderate), 3 (severe/large).
SEVERITY_WORDS = {"mild": 1, "small": 1, "borderline": 1, "minimal": 1, "moderate": 2,
                  "severe": 3, "large": 3, "extensive": 3, "massive": 3}
#: MeSH qualifiers that make a positive uncertain (-1.0): the report hedges.
UNCERTAIN_WORDS = {"borderline"}
#: MeSH / PadChest location words -> lung zone.
ZONE_WORDS = {"upper lobe": "upper", "apex": "upper", "apical": "upper", "middle lobe": "middle",
              "lingula": "middle", "hilum": "middle", "hilar": "middle", "perihilar": "middle",
              "middle lung field": "middle", "lower lobe": "lower", "base": "lower",
              "basal": "lower", "retrocardiac": "lower", "costophrenic angle": "lower"}
#: Sentence-level keywords for explicit negatives ("No pleural effusion." -> 0.0), so that the
#: MIMIC label file has all four states like the labeler's output.
NEGATION_KEYWORDS = {
    "Atelectasis": r"atelecta", "Cardiomegaly": r"cardiomegaly", "Consolidation": r"consolidat",
    "Edema": r"edema", "Fracture": r"fracture", "Lung Lesion": r"nodul|mass",
    "Lung Opacity": r"opacit|infiltrat|air ?space disease", "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening", "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothora",
}
NEGATION_CUES = re.compile(r"\b(no|without|negative for|free of)\b")
#: Where report text breaks into sentences (after a full stop).
SENTENCE_BREAK = re.compile(r"(?<=\.)\s+")
#: How an impression names each competition finding; CheXzero trains on the impression only, so
#: MIMIC studies prefer reports whose impression names their findings.
MENTION_KEYWORDS = {"Atelectasis": r"atelecta", "Cardiomegaly": r"cardiomegaly|enlarged (heart|cardiac)|heart (size )?is enlarged",
                    "Consolidation": r"consolidat", "Edema": r"edema|congestion", "Pleural Effusion": r"effusion"}

#: PadChest label -> CheXpert observation (the findings the phantom can draw).
PADCHEST_TO_CHEXPERT = {
    "cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion",
    "costophrenic angle blunting": "Pleural Effusion", "loculated pleural effusion": "Pleural Effusion",
    "atelectasis": "Atelectasis", "laminar atelectasis": "Atelectasis",
    "lobar atelectasis": "Atelectasis", "segmental atelectasis": "Atelectasis",
    "atelectasis basal": "Atelectasis", "consolidation": "Consolidation",
    "pneumonia": "Pneumonia", "atypical pneumonia": "Pneumonia", "pneumothorax": "Pneumothorax",
    "nodule": "Lung Lesion", "multiple nodules": "Lung Lesion", "pulmonary mass": "Lung Lesion",
    "pulmonary edema": "Edema", "kerley lines": "Edema", "alveolar pattern": "Lung Opacity",
    "infiltrates": "Lung Opacity", "increased density": "Lung Opacity",
    "ground glass pattern": "Lung Opacity", "rib fracture": "Fracture",
    "callus rib fracture": "Fracture", "mediastinal enlargement": "Enlarged Cardiomediastinum",
    "superior mediastinal enlargement": "Enlarged Cardiomediastinum",
    "pleural thickening": "Pleural Other", "apical pleural thickening": "Pleural Other",
    "pacemaker": "Support Devices", "dual chamber device": "Support Devices",
    "single chamber device": "Support Devices", "electrical device": "Support Devices",
    "NSG tube": "Support Devices", "endotracheal tube": "Support Devices",
    "tracheostomy tube": "Support Devices", "chest drain tube": "Support Devices",
    "central venous catheter": "Support Devices",
    "central venous catheter via jugular vein": "Support Devices",
    "central venous catheter via subclavian vein": "Support Devices",
    "reservoir central venous catheter": "Support Devices",
}
PADCHEST_DEVICE = {
    "pacemaker": "pacemaker", "dual chamber device": "pacemaker", "single chamber device": "pacemaker",
    "electrical device": "pacemaker", "NSG tube": "enteric_tube", "endotracheal tube": "endotracheal_tube",
    "tracheostomy tube": "endotracheal_tube", "chest drain tube": "chest_tube",
}


@dataclass(frozen=True)
class Finding:
    """One finding to draw: the CheXpert observation, its severity (1 mild/small, 2 moderate,
    3 severe/large), the patient's side (right, left, bilateral), the lung zone (upper, middle,
    lower) and, for Support Devices, which device."""

    label: str
    severity: int = 2
    side: str = "bilateral"
    zone: str = "lower"
    device: str = ""


DEVICES = ["endotracheal_tube", "enteric_tube", "central_line", "pacemaker", "chest_tube",
           "stent", "surgical_clips"]
COMMON_DEVICES = DEVICES[:5]  # drawn when a report names no particular device


def make_finding(label: str, rng: np.random.Generator, severity: int | None = None,
                 side: str | None = None, zone: str | None = None, device: str | None = None) -> Finding:
    """A Finding with the unspecified attributes drawn from plausible defaults for that label."""
    if severity is None:
        severity = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    if side is None:
        if label in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema", "Support Devices"):
            side = "bilateral"
        else:
            p_bilateral = {"Pleural Effusion": 0.35, "Atelectasis": 0.2, "Lung Opacity": 0.2}.get(label, 0.0)
            p_right = 0.7 if label in ("Consolidation", "Pneumonia") else 0.5  # right lower lobe pneumonia is the commonest
            side = "bilateral" if rng.random() < p_bilateral else ("right" if rng.random() < p_right else "left")
    if zone is None:
        zone_p = {"Atelectasis": [0.15, 0.15, 0.7], "Lung Lesion": [0.4, 0.3, 0.3],
                  "Pneumothorax": [1.0, 0.0, 0.0], "Consolidation": [0.3, 0.3, 0.4]}.get(label, [0.2, 0.25, 0.55])
        zone = str(rng.choice(["upper", "middle", "lower"], p=zone_p))
    if device is None:
        device = str(rng.choice(COMMON_DEVICES)) if label == "Support Devices" else ""
    return Finding(label, severity, side, zone, device)


def finding_from_words(label: str, words: list[str], rng: np.random.Generator, device: str | None = None) -> Finding:
    """A Finding whose severity, side and zone come from qualifier words (MeSH or PadChest)."""
    severity = next((SEVERITY_WORDS[w] for w in words if w in SEVERITY_WORDS), None)
    side = next((s for s in ("bilateral", "right", "left") if any(s in w for w in words)), None)
    zone = next((ZONE_WORDS[w] for w in words if w in ZONE_WORDS), None)
    return make_finding(label, rng, severity, side, zone, device)


# ----------------------------------------------------------------------------------------------
# 2. Indiana University reports (torchxrayvision/data/NLMCXR_reports.tgz) and label sampling
# ----------------------------------------------------------------------------------------------

@dataclass
class IUReport:
    """One Indiana University report: its sections (XXXX de-identification kept as written),
    its manual MeSH terms and the CheXpert labels mapped from them."""

    uid: str
    indication: str
    comparison: str
    findings: str
    impression: str
    mesh: tuple[str, ...]
    labels: dict[str, float] = field(default_factory=dict)  # 1.0 / 0.0 / -1.0; absent = blank

    def positive(self, label: str) -> bool:
        return self.labels.get(label) in (1.0, -1.0)


def torchxrayvision_data() -> Path:
    """torchxrayvision's bundled data folder, found without importing torch."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("torchxrayvision is not installed: it ships the IU reports and "
                        "the PadChest CSV this generator needs (pip install torchxrayvision)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def mesh_term(term: str) -> tuple[str, list[str], list[str]]:
    """(heading, qualifiers, mapped CheXpert labels) of one "heading/qualifier/..." MeSH term."""
    head, *qualifiers = [part.strip() for part in term.split("/")]
    keys = [head] + [f"{head}/{q}" for q in qualifiers]
    return head, qualifiers, [label for key in keys for label in MESH_TO_CHEXPERT.get(key, ())]


def mesh_terms_to_labels(mesh: tuple[str, ...]) -> dict[str, float]:
    """Positive (1.0) or uncertain (-1.0) CheXpert labels of a list of MeSH terms."""
    labels: dict[str, float] = {}
    for term in mesh:
        _, qualifiers, mapped = mesh_term(term)
        value = -1.0 if UNCERTAIN_WORDS & set(qualifiers) else 1.0
        for label in mapped:
            labels[label] = max(labels.get(label, value), value)
    return labels


def report_labels(mesh: tuple[str, ...], text: str) -> dict[str, float]:
    """CheXpert labels of a report: positives/uncertains from MeSH, explicit negatives from the
    text, and No Finding = 1.0 when no pathology is positive or uncertain (Support Devices exempt)."""
    labels = mesh_terms_to_labels(mesh)
    for sentence in SENTENCE_BREAK.split(text.lower()):
        if NEGATION_CUES.search(sentence):
            for label, keyword in NEGATION_KEYWORDS.items():
                if label not in labels and re.search(keyword, sentence):
                    labels[label] = 0.0
    if not any(labels.get(p) in (1.0, -1.0) for p in PATHOLOGIES):
        labels["No Finding"] = 1.0
    return labels


@functools.lru_cache(maxsize=1)
def iu_reports() -> tuple[IUReport, ...]:
    """The indexed IU reports that have FINDINGS or IMPRESSION text (sorted by report number)."""
    path = torchxrayvision_data() / "NLMCXR_reports.tgz"
    reports = []
    with tarfile.open(path) as tar:
        xmls = {int(Path(m.name).stem): tar.extractfile(m).read() for m in tar if m.name.endswith(".xml")}
    for number in sorted(xmls):
        root = ET.fromstring(xmls[number])
        text = {a.get("Label"): " ".join((a.text or "").split()) for a in root.iter("AbstractText")}
        mesh = tuple(m.text.strip() for m in root.find("MeSH") if m.tag == "major" and m.text)
        if not (text.get("FINDINGS") or text.get("IMPRESSION")) or "No Indexing" in mesh:
            continue
        report = IUReport(root.find("uId").get("id"), text.get("INDICATION", ""),
                          text.get("COMPARISON", ""), text.get("FINDINGS", ""),
                          text.get("IMPRESSION", ""), mesh)
        report.labels = report_labels(mesh, report.findings + " " + report.impression)
        reports.append(report)
    return tuple(reports)


def findings_of_report(report: IUReport, rng: np.random.Generator) -> list[Finding]:
    """The findings a study drawn with this report shows: one per mapped MeSH term (at most two
    per observation), with the term's qualifiers as severity, side and zone."""
    found: list[Finding] = []
    for term in report.mesh:
        head, qualifiers, mapped = mesh_term(term)
        for label in sorted(set(mapped)):
            if sum(f.label == label for f in found) < 2:
                device = MESH_DEVICE.get(head) if label == "Support Devices" else None
                found.append(finding_from_words(label, qualifiers, rng, device))
    return found


def positives_matrix(reports: tuple[IUReport, ...]) -> np.ndarray:
    """(reports x LABELS) 0/1 matrix: positive or uncertain."""
    return np.array([[r.positive(label) for label in LABELS] for r in reports], dtype=np.float64)


def raking_weights(positives: np.ndarray, targets: dict[str, float], cap: float = 25.0,
                   prior: np.ndarray | None = None) -> np.ndarray:
    """Sampling weights over reports (starting from `prior`) whose weighted positive rates
    approach `targets` (iterative proportional fitting, each weight capped at `cap` x the mean
    so that a handful of rare reports cannot dominate)."""
    weights = np.ones(len(positives)) if prior is None else prior.astype(np.float64).copy()
    for _ in range(60):
        for label, target in targets.items():
            has = positives[:, LABELS.index(label)] > 0
            rate = weights[has].sum() / weights.sum()
            if 0 < rate < 1:
                weights[has] *= target / rate
                weights[~has] *= (1 - target) / (1 - rate)
        weights = np.minimum(weights, cap * weights.mean())
    return weights / weights.sum()


def sample_label_rows(n: int, targets: dict[str, float], rng: np.random.Generator) -> list[tuple[int, set[str]]]:
    """`n` binary label sets with the `targets` prevalences, for studies that need labels but no
    report (CheXpert test/valid). IU reports are drawn with raking weights on the labels the IU
    collection has enough of (realistic co-occurrence); then every label is brought to its exact
    target count, adding it preferably to studies that already have a pathology and removing it
    from random studies, and pathologies are moved from multi-finding studies to healthy ones
    until No Finding (re-derived) reaches its target too. Returns (report index, positive labels) pairs."""
    reports = iu_reports()
    pathologies = set(PATHOLOGIES)
    positives = positives_matrix(reports)
    rakeable = {lab: t for lab, t in targets.items() if positives[:, LABELS.index(lab)].sum() >= 40}
    picks = rng.choice(len(reports), size=n, p=raking_weights(positives, rakeable, cap=10.0))
    rows = [(int(i), {lab for lab in LABELS if positives[i, LABELS.index(lab)] and lab != "No Finding"})
            for i in picks]
    healthy_goal = round(targets.get("No Finding", 0.0) * n)
    for label in sorted(targets, key=lambda lab: (targets[lab], lab)):
        if label == "No Finding":
            continue
        have = [i for i, (_, labels) in enumerate(rows) if label in labels]
        surplus = len(have) - round(targets[label] * n)
        for i in rng.permutation(have)[:max(surplus, 0)]:
            rows[i][1].discard(label)
        sick = [i for i, (_, labels) in enumerate(rows) if label not in labels and labels & pathologies]
        healthy = [i for i, (_, labels) in enumerate(rows) if label not in labels and not labels & pathologies]
        spare = max(0, len(healthy) - healthy_goal) if label in PATHOLOGIES else len(healthy)
        order = list(rng.permutation(sick)) + list(rng.permutation(healthy))[:spare]
        for i in order[:max(-surplus, 0)]:
            rows[i][1].add(label)
    # too many healthy studies: move a pathology from a study that has several (counts unchanged)
    healthy = [i for i, (_, labels) in enumerate(rows) if not labels & pathologies]
    excess = len(healthy) - healthy_goal if "No Finding" in targets else 0
    for i in list(rng.permutation(healthy))[:max(0, excess)]:
        donors = [j for j, (_, labels) in enumerate(rows) if len(labels & pathologies) > 1]
        if not donors:
            break
        donor = rows[int(rng.choice(donors))][1]
        moved = str(rng.choice(sorted(donor & pathologies)))
        donor.discard(moved)
        rows[i][1].add(moved)
    for _, labels in rows:
        if not labels & pathologies:
            labels.add("No Finding")
    return rows


def findings_for_labels(labels: set[str], report: IUReport | None, rng: np.random.Generator) -> list[Finding]:
    """Findings for a binary label set: the report's own (with its qualifiers) where it has the
    label, a default-drawn finding otherwise."""
    own = [f for f in findings_of_report(report, rng) if f.label in labels] if report else []
    extra = [make_finding(label, rng) for label in sorted(labels)
             if label != "No Finding" and all(f.label != label for f in own)]
    return own + extra


# ----------------------------------------------------------------------------------------------
# 3. Drawing: anatomy, pose, canvas
# ----------------------------------------------------------------------------------------------

RIGHT, LEFT = -1, +1  # the patient's side as a sign of u (patient right = image left)
SIDES = {"right": (RIGHT,), "left": (LEFT,), "bilateral": (RIGHT, LEFT)}
ZONES = {"upper": (0.0, 0.42), "middle": (0.38, 0.7), "lower": (0.62, 1.05)}  # fractions of lung height


@dataclass
class Anatomy:
    """One patient's chest, in thoracic half-widths. Findings that change anatomy (a big heart,
    a wide mediastinum, volume loss, a broken rib) are applied to a copy of it."""

    lung_height: float          # apex to costophrenic angle
    body_half_width: float      # skin outline at the chest
    neck_half_width: float
    ctr: float                  # cardiothoracic ratio (normal < 0.5)
    heart_aspect: float         # vertical / horizontal heart semi-axis
    mediastinum: float          # upper mediastinal half-width
    aortic_knob: float
    dome_height: float          # diaphragm dome height, fraction of lung height
    right_dome_raise: float     # the right hemidiaphragm sits higher
    rib_spacing: float
    rib_phase: float
    clavicle_level: float
    ap_depth: float             # lateral view: chest depth / chest width
    breasts: bool
    gastric_bubble: bool
    raise_right: float = 0.0    # volume loss: hemidiaphragm elevation (fraction of lung height)
    raise_left: float = 0.0
    shift: float = 0.0          # mediastinal shift towards the patient's left (+) or right (-)
    rib_fracture: tuple[int, int, float, float] | None = None  # side, rib, distance from midline, step


def sample_anatomy(rng: np.random.Generator, female: bool) -> Anatomy:
    """A random adult chest."""
    lung_height = rng.uniform(1.5, 1.85)
    return Anatomy(
        lung_height=lung_height, body_half_width=rng.uniform(1.12, 1.45) + 0.05 * female,
        neck_half_width=rng.uniform(0.36, 0.46), ctr=rng.uniform(0.40, 0.485),
        heart_aspect=rng.uniform(0.68, 0.8), mediastinum=rng.uniform(0.16, 0.21),
        aortic_knob=rng.uniform(0.06, 0.09), dome_height=rng.uniform(0.09, 0.15),
        right_dome_raise=rng.uniform(0.01, 0.05), rib_spacing=lung_height / rng.uniform(9.0, 10.5),
        rib_phase=rng.uniform(-0.1, 0.0), clavicle_level=rng.uniform(0.02, 0.1),
        ap_depth=rng.uniform(0.52, 0.66), breasts=female and rng.random() < 0.85,
        gastric_bubble=rng.random() < 0.75)


@dataclass
class Pose:
    """Where the chest lies on the detector and how it was exposed."""

    cx: float       # pixel position of the midline at apex height
    cy: float
    scale: float    # pixels per thoracic half-width
    angle: float    # radians
    low: float      # window: attenuation shown black ...
    high: float     # ... and white
    gamma: float
    noise: float
    heel: float     # exposure gradient from top to bottom (anode heel effect)


def sample_pose(rng: np.random.Generator, shape: tuple[int, int], a: Anatomy, view: str) -> Pose:
    """Random positioning and exposure; portable AP films are more rotated and noisier."""
    h, w = shape
    lateral = view == "LATERAL"
    scale = h * rng.uniform(0.56, 0.62) / a.lung_height
    if not lateral:
        scale = min(scale, w * rng.uniform(0.42, 0.46))
    tilt = math.radians(rng.uniform(-4, 4) if view == "AP" else rng.uniform(-2.5, 2.5))
    return Pose(cx=w * rng.uniform(0.47, 0.53),
                cy=h * rng.uniform(0.09, 0.14), scale=scale, angle=tilt,
                low=rng.uniform(-0.10, 0.06), high=rng.uniform(0.78, 1.08), gamma=rng.uniform(0.75, 1.3),
                noise=rng.uniform(0.008, 0.03) * (1.4 if view == "AP" else 1.0), heel=rng.uniform(-0.08, 0.08))


def ramp(d: np.ndarray | float, width: float) -> np.ndarray:
    """Soft step: 0 where d < -width/2, 1 where d > width/2 (anti-aliased edges)."""
    return np.clip(d / width + 0.5, 0.0, 1.0)


def sharpen(x: np.ndarray) -> np.ndarray:
    """x ** 8: thin bright ridges from a 0..1 cosine (repeated squaring is fast)."""
    x = x * x
    x *= x
    return x * x


def smooth_curve(points: list[tuple[float, float]], rounds: int = 3) -> np.ndarray:
    """Chaikin corner cutting: a smooth curve through a few control points."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(rounds):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.vstack([p[:1], np.column_stack([q, r]).reshape(-1, 2), p[-1:]])
    return p


class Canvas:
    """The film: body coordinates (u, v) of every pixel, and the layers whose sum is the
    attenuation image: soft tissue, lung air (a 0..1 fraction that opacities reduce), vessels,
    bone and metal."""

    def __init__(self, shape: tuple[int, int], pose: Pose, lung_height: float):
        self.shape, self.pose, self.lh = shape, pose, lung_height
        y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
        dx, dy = x - pose.cx, y - pose.cy
        cos, sin = math.cos(pose.angle), math.sin(pose.angle)
        self.u = (dx * cos + dy * sin) / pose.scale
        self.v = (-dx * sin + dy * cos) / pose.scale
        self.soft, self.air, self.vessels, self.bone, self.metal = (np.zeros(shape, np.float32) for _ in range(5))
        self.lung: dict[int, np.ndarray] = {}
        self.geometry: dict[int, dict[str, np.ndarray | float]] = {}
        self.heart = (0.0, 0.0, 0.0, 0.0)

    def pixels(self, points: np.ndarray) -> np.ndarray:
        """Body coordinates -> fixed-point pixel coordinates for OpenCV (shift=4)."""
        p = self.pose
        cos, sin = math.cos(p.angle), math.sin(p.angle)
        x = p.cx + p.scale * (points[:, 0] * cos - points[:, 1] * sin)
        y = p.cy + p.scale * (points[:, 0] * sin + points[:, 1] * cos)
        return np.round(np.column_stack([x, y]) * 16).astype(np.int32)

    def stroke(self, points: list[tuple[float, float]], width: float, smooth: bool = True) -> np.ndarray:
        """0..1 mask of a (smoothed) polyline `width` body units wide."""
        layer = np.zeros(self.shape, np.uint8)
        curve = smooth_curve(points) if smooth and len(points) > 2 else np.asarray(points, np.float64)
        thickness = max(1, int(round(width * self.pose.scale)))
        cv2.polylines(layer, [self.pixels(curve)], False, 255, thickness, cv2.LINE_AA, shift=4)
        return layer.astype(np.float32) / 255.0

    def fill(self, points: list[tuple[float, float]], blur: float = 0.0) -> np.ndarray:
        """0..1 mask of a filled polygon, optionally blurred by `blur` body units."""
        layer = np.zeros(self.shape, np.uint8)
        cv2.fillPoly(layer, [self.pixels(np.asarray(points, np.float64))], 255, cv2.LINE_AA, shift=4)
        mask = layer.astype(np.float32) / 255.0
        sigma = blur * self.pose.scale
        return cv2.GaussianBlur(mask, (0, 0), sigma) if sigma > 0.5 else mask

    def ellipse(self, center: tuple[float, float], radii: tuple[float, float], edge: float = 0.02) -> np.ndarray:
        r = np.sqrt(((self.u - center[0]) / radii[0]) ** 2 + ((self.v - center[1]) / radii[1]) ** 2)
        return ramp(1.0 - r, edge / min(radii))

    def blob(self, center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
        return np.exp(-((self.u - center[0]) / radii[0]) ** 2 - ((self.v - center[1]) / radii[1]) ** 2)

    def noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        """Smooth random field (zero mean, unit spread) with about `cells` bumps across."""
        h, w = self.shape
        small = rng.standard_normal((max(2, cells * h // w), cells)).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)

    def expose(self, rng: np.random.Generator) -> np.ndarray:
        """The radiograph in 0..1 (bone white, air black): attenuation through a window, gamma,
        heel effect and quantum noise."""
        p = self.pose
        attenuation = self.soft - 0.27 * self.air + 0.13 * self.vessels * self.air + self.bone + self.metal
        image = np.clip((attenuation - p.low) / (p.high - p.low), 0.0, 1.0) ** p.gamma
        image *= 1.0 + p.heel * (self.v / self.lh - 0.5)
        image += p.noise * rng.standard_normal(self.shape, dtype=np.float32)
        return np.clip(image, 0.0, 1.0)


# ---- frontal anatomy: one function per structure ---------------------------------------------

def body_outline(c: Canvas, a: Anatomy) -> None:
    """Soft tissue of the trunk, brighter where it is thicker; the neck above the shoulders."""
    half = a.neck_half_width + (a.body_half_width - a.neck_half_width) * ramp(c.v + 0.14 * c.lh, 0.25 * c.lh)
    depth = np.sqrt(np.clip(1.0 - (c.u / half) ** 2, 0.0, 1.0))
    c.soft += 0.5 * depth ** 0.6


def lungs(c: Canvas, a: Anatomy) -> None:
    """Two lungs: rounded apices, rib-cage lateral walls, domed hemidiaphragms with sharp
    costophrenic angles (the right dome higher)."""
    for side in (RIGHT, LEFT):
        x = side * c.u
        t = np.clip(c.v / c.lh, 0.0, 1.0)
        raise_ = (a.raise_right + a.right_dome_raise) if side == RIGHT else a.raise_left
        lateral = 0.62 + 0.38 * t ** 0.45
        top = 0.28 * c.lh * ((x - 0.5) / 0.5) ** 2
        costophrenic = c.lh * (1.0 - 0.6 * raise_)
        dome = c.lh * (1.0 - a.dome_height - raise_)
        diaphragm = costophrenic - (costophrenic - dome) * np.clip(1.0 - ((x - 0.45) / 0.62) ** 2, 0.0, 1.0)
        edge = 0.012
        mask = ramp(lateral - x, edge) * ramp(x - 0.06, edge) * ramp(c.v - top, edge) * ramp(diaphragm - c.v, edge)
        c.lung[side] = mask
        c.geometry[side] = {"x": x, "lateral": lateral, "top": top, "costophrenic": costophrenic, "dome": dome}
        np.maximum(c.air, mask, out=c.air)


def mediastinum(c: Canvas, a: Anatomy) -> None:
    """Upper mediastinum between the lungs, with the aortic knob bulging to the patient's left."""
    uc = c.u - a.shift
    widening = 1.0 + 0.6 * np.clip(c.v / c.lh - 0.25, 0.0, 0.4)
    knob = a.aortic_knob * np.exp(-((c.v - 0.2 * c.lh) / (0.07 * c.lh)) ** 2)
    half = np.where(uc > 0, a.mediastinum * widening + knob, 0.85 * a.mediastinum * widening)
    mask = ramp(half - np.abs(uc), 0.03)
    c.air *= 1.0 - mask
    c.soft += 0.05 * mask


def heart(c: Canvas, a: Anatomy) -> None:
    """The cardiac silhouette: a tilted ellipse, two-thirds left of the midline, its apex
    pointing down and to the left, resting on the left hemidiaphragm. Its horizontal extent over
    the thoracic width is the cardiothoracic ratio."""
    tilt = math.radians(32.0)
    ratio = a.heart_aspect
    major = a.ctr / math.sqrt(math.cos(tilt) ** 2 + (ratio * math.sin(tilt)) ** 2)
    vertical = major * math.sqrt(math.sin(tilt) ** 2 + (ratio * math.cos(tilt)) ** 2)
    center_u = a.shift + 0.27 * a.ctr
    center_v = c.geometry[LEFT]["dome"] - 0.3 * vertical
    du, dv = c.u - center_u, c.v - center_v
    along = du * math.cos(tilt) + dv * math.sin(tilt)
    across = -du * math.sin(tilt) + dv * math.cos(tilt)
    r = np.sqrt((along / major) ** 2 + (across / (ratio * major)) ** 2)
    mask = ramp(1.0 - r, 0.02 / (ratio * major))
    c.heart = (center_u, center_v, a.ctr, vertical)
    c.air *= 1.0 - mask
    c.soft += 0.06 * mask * ramp(center_v + 0.3 * vertical - c.v, 0.05 * c.lh)


def hila(c: Canvas, a: Anatomy) -> None:
    """Pulmonary arteries at the hila."""
    for side in (RIGHT, LEFT):
        c.soft += 0.08 * c.blob((side * 0.27 + a.shift, 0.42 * c.lh), (0.08, 0.12 * c.lh))


def trachea(c: Canvas, a: Anatomy) -> None:
    """Air column in the midline down to the carina, then the main bronchi."""
    tx = 1.2 * a.shift
    column = ramp(0.05 - np.abs(c.u - tx), 0.015) * ramp(0.3 * c.lh - c.v, 0.03)
    bronchi = (c.stroke([(tx, 0.3 * c.lh), (tx - 0.24, 0.42 * c.lh)], 0.05, smooth=False)
               + c.stroke([(tx, 0.3 * c.lh), (tx + 0.24, 0.45 * c.lh)], 0.05, smooth=False))
    c.soft -= 0.16 * column + 0.1 * np.minimum(bronchi, 1.0)


def gastric_bubble(c: Canvas, a: Anatomy) -> None:
    """Air in the stomach under the left hemidiaphragm."""
    if a.gastric_bubble:
        dome = c.geometry[LEFT]["dome"]
        c.soft -= 0.2 * c.ellipse((0.45, dome + 0.1 * c.lh), (0.14, 0.055 * c.lh), edge=0.03)


def breasts(c: Canvas, a: Anatomy) -> None:
    """Breast shadows over the lower zones (a confounder for basal findings)."""
    if a.breasts:
        for side in (RIGHT, LEFT):
            c.soft += 0.09 * c.ellipse((side * 0.62, 1.02 * c.lh), (0.45, 0.3 * c.lh), edge=0.25)


def spine(c: Canvas, a: Anatomy) -> None:
    """Thoracic vertebral bodies behind the mediastinum, separated by darker disc spaces."""
    level = (c.v / (c.lh / 10.0)) % 1.0
    discs = 0.75 + 0.25 * ramp(0.4 - np.abs(level - 0.5), 0.06)
    c.bone += 0.07 * ramp(0.085 - np.abs(c.u), 0.02) * discs * ramp(c.v + 0.4 * c.lh, 0.1)


def ribs(c: Canvas, a: Anatomy) -> None:
    """Posterior ribs arching down and out from the spine (brighter), anterior ribs running down
    and in (fainter). A fracture interrupts one posterior rib and steps its lateral end down."""
    x = np.abs(c.u)
    w = c.v - 0.26 * c.lh * np.clip(x, 0.0, 1.1) ** 1.7
    if a.rib_fracture is not None:
        side, rib, at, step = a.rib_fracture
        on_rib = np.abs(w - a.rib_phase - (rib + 0.25) * a.rib_spacing) < 0.6 * a.rib_spacing
        lateral_part = (np.sign(c.u) == side) & (x > at) & on_rib
        w = w - step * a.rib_spacing * lateral_part
    index = (w - a.rib_phase) / a.rib_spacing
    phase = index - np.floor(index)
    band = ramp(0.2 - np.abs(phase - 0.2), 0.08) * (index >= 0) * (index < 10)
    band *= ramp(x - 0.07, 0.03) * ramp(1.1 - x, 0.05) * ramp(1.08 * c.lh - c.v, 0.1 * c.lh)
    if a.rib_fracture is not None:
        side, rib, at, step = a.rib_fracture
        gap = (np.sign(c.u) == side) & (np.floor(index) == rib) & (np.abs(x - at) < 0.012 + 0.02 * step)
        band *= 1.0 - gap
    w2 = c.v - 0.3 * c.lh * (1.0 - np.clip(x, 0.0, 1.0))
    index2 = (w2 - a.rib_phase - 0.3 * c.lh) / (1.15 * a.rib_spacing)
    phase2 = index2 - np.floor(index2)
    band2 = ramp(0.2 - np.abs(phase2 - 0.2), 0.1) * (index2 >= 0) * (index2 < 7) * ramp(x - 0.3, 0.1) * ramp(1.02 - x, 0.05) * ramp(c.lh - c.v, 0.1 * c.lh)
    c.bone += 0.085 * band * (0.6 + 0.4 * c.air) + 0.035 * band2


def clavicles(c: Canvas, a: Anatomy) -> None:
    """S-shaped clavicles from the sternum up and out to the shoulders."""
    for side in (RIGHT, LEFT):
        x = side * c.u
        s = (x - 0.12) / 0.8
        center = c.lh * (a.clavicle_level + 0.06 - 0.13 * s + 0.025 * np.sin(2 * np.pi * s))
        band = ramp(0.032 * c.lh - np.abs(c.v - center), 0.012) * ramp(x - 0.12, 0.03) * ramp(0.95 - x, 0.05)
        c.bone += 0.13 * band


def humeral_heads(c: Canvas, a: Anatomy) -> None:
    """Shoulder joints at the upper corners (often cut off by the collimation)."""
    for side in (RIGHT, LEFT):
        c.bone += 0.14 * c.ellipse((side * (a.body_half_width - 0.05), -0.05 * c.lh), (0.15, 0.1 * c.lh), edge=0.04)


def lung_markings(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """Branching vessels, densest at the hila and tapering towards the periphery, over a fine
    parenchymal texture."""
    hilum_distance = np.sqrt((np.abs(c.u - a.shift) - 0.27) ** 2 + (c.v - 0.42 * c.lh) ** 2)
    vessel_tree(c, rng, hilum_distance)


def vessel_tree(c: Canvas, rng: np.random.Generator, hilum_distance: np.ndarray) -> None:
    """Ridged noise fading with distance from the hila (both views), plus parenchymal texture."""
    ridges = sharpen(np.clip(1.0 - 1.6 * np.abs(c.noise(rng, 16)), 0.0, 1.0))
    c.vessels += ridges * np.exp(-hilum_distance / 0.5) + 0.25 * c.noise(rng, 45)
    c.soft += 0.03 * c.noise(rng, 5)


def draw_frontal_anatomy(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A normal PA/AP chest, structure by structure."""
    body_outline(c, a)
    lungs(c, a)
    mediastinum(c, a)
    heart(c, a)
    hila(c, a)
    trachea(c, a)
    gastric_bubble(c, a)
    breasts(c, a)
    spine(c, a)
    ribs(c, a)
    clavicles(c, a)
    humeral_heads(c, a)
    lung_markings(c, a, rng)


# ---- findings that change the anatomy -------------------------------------------------------

def enlarge_heart(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Cardiomegaly: cardiothoracic ratio above 0.5, graded."""
    a.ctr = rng.uniform(*{1: (0.55, 0.59), 2: (0.6, 0.65), 3: (0.66, 0.72)}[f.severity])
    a.heart_aspect *= 0.92


def widen_mediastinum(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Enlarged cardiomediastinum: a wide upper mediastinum and a prominent aortic knob."""
    a.mediastinum *= {1: 1.5, 2: 1.8, 3: 2.1}[f.severity] * rng.uniform(0.95, 1.05)
    a.aortic_knob *= 1.6


def lose_volume(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Atelectasis: the collapsed side's hemidiaphragm rises and the mediastinum shifts towards it."""
    for side in SIDES[f.side]:
        lift = {1: 0.06, 2: 0.09, 3: 0.13}[f.severity] * rng.uniform(0.8, 1.2)
        if side == RIGHT:
            a.raise_right = max(a.raise_right, lift)
        else:
            a.raise_left = max(a.raise_left, lift)
        if f.side != "bilateral":
            a.shift += side * {1: 0.015, 2: 0.03, 3: 0.07}[f.severity]


def break_rib(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Fracture: one posterior rib broken laterally, its outer fragment stepped down."""
    side = SIDES[f.side][0]
    a.rib_fracture = (side, int(rng.integers(3, 8)), float(rng.uniform(0.55, 0.9)), 0.12 * f.severity)


ANATOMY_CHANGES = {"Cardiomegaly": enlarge_heart, "Enlarged Cardiomediastinum": widen_mediastinum,
                   "Atelectasis": lose_volume, "Fracture": break_rib}


def anatomy_with(a: Anatomy, findings: list[Finding], rng: np.random.Generator) -> Anatomy:
    """A copy of the patient's anatomy changed by the study's findings."""
    changed = dataclasses.replace(a)
    for f in findings:
        if f.label in ANATOMY_CHANGES:
            ANATOMY_CHANGES[f.label](changed, f, rng)
    return changed


# ---- findings drawn on a frontal film: one function per finding ------------------------------

def lobe_region(c: Canvas, side: int, zone: str, softness: float = 0.04, grow: float = 0.0) -> np.ndarray:
    """The part of one lung in a zone (upper: above the horizontal fissure level; middle:
    perihilar / middle lobe / lingula; lower: the bases), optionally `grow`n up and down."""
    low, high = ZONES[zone][0] - grow, ZONES[zone][1] + grow
    return c.lung[side] * ramp(c.v - low * c.lh, softness * c.lh) * ramp(high * c.lh - c.v, softness * c.lh)


def patch_in(c: Canvas, region: np.ndarray, rng: np.random.Generator, coverage: float, softness: float,
             cells: int = 5) -> np.ndarray:
    """A random contiguous patch covering about `coverage` of `region`, with soft edges."""
    inside = region > 0.5
    if not inside.any():
        return np.zeros(c.shape, np.float32)
    weights = region * inside
    cu, cv = float((c.u * weights).sum() / weights.sum()), float((c.v * weights).sum() / weights.sum())
    field = c.noise(rng, cells) + 2.0 * c.blob((cu, cv), (0.35, 0.25 * c.lh))
    threshold = np.quantile(field[inside], 1.0 - coverage)
    return ramp(field - threshold, softness) * region


def air_bronchograms(c: Canvas, side: int, patch: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Air-filled bronchi left visible inside an opacified lobe: dark branching lines."""
    inside = np.argwhere(patch > 0.6)
    if len(inside) == 0:
        return
    hilum = (side * 0.25, 0.45 * c.lh)
    tubes = np.zeros(c.shape, np.float32)
    for y, x in inside[rng.integers(0, len(inside), size=count)]:
        end = (float(c.u[y, x]), float(c.v[y, x]))
        mid = (0.5 * (hilum[0] + end[0]) + rng.uniform(-0.05, 0.05), 0.5 * (hilum[1] + end[1]))
        tubes = np.maximum(tubes, c.stroke([hilum, mid, end], 0.014))
    c.air = np.maximum(c.air, 0.55 * tubes * patch * c.lung[side])


def pleural_effusion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Fluid layering at the base: a meniscus climbing the lateral chest wall, the costophrenic
    angle blunted, the hemidiaphragm silhouette lost; height graded by severity."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        height = {1: 0.14, 2: 0.26, 3: 0.42}[f.severity] * c.lh * rng.uniform(0.85, 1.15)
        meniscus = (0.05 + 0.03 * f.severity) * c.lh * np.clip(g["x"], 0.0, 1.0) ** 3
        surface = g["costophrenic"] - height - meniscus
        fluid = ramp(c.v - surface, 0.05 * c.lh) * ramp(g["x"] - 0.02, 0.02) * ramp(1.06 - g["x"], 0.02)
        c.air *= 1.0 - 0.95 * fluid


def edema(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Bilateral perihilar (bat-wing) haze with indistinct vessels, and Kerley B septal lines at
    the lateral bases."""
    strength = {1: 0.32, 2: 0.45, 3: 0.6}[f.severity]
    haze = sum(c.blob((side * 0.34 + a.shift, 0.5 * c.lh), (0.48, 0.42 * c.lh)) for side in (RIGHT, LEFT))
    c.air *= 1.0 - strength * np.minimum(haze, 1.0)
    septal = np.zeros(c.shape, np.float32)
    for side in (RIGHT, LEFT):
        for _ in range(3 + 2 * f.severity):
            t = rng.uniform(0.62, 0.95)
            wall = 0.62 + 0.38 * t ** 0.45 - 0.01
            length, v = rng.uniform(0.05, 0.1), t * c.lh
            septal = np.maximum(septal, c.stroke([(side * wall, v), (side * (wall - length), v + rng.uniform(-0.01, 0.01))], 0.012, smooth=False))
    c.air *= 1.0 - 0.6 * septal


def airspace_opacity(c: Canvas, f: Finding, rng: np.random.Generator, density: float,
                     coverage: dict[int, float], softness: float, bronchograms: int, grow: float = 0.0) -> None:
    """Shared by consolidation, pneumonia and lung opacity: a patch of a lobe whose air is
    replaced by fluid or cells."""
    for side in SIDES[f.side]:
        region = lobe_region(c, side, f.zone, softness=0.02 if f.zone == "upper" else 0.05, grow=grow)
        patch = patch_in(c, region, rng, coverage[f.severity], softness)
        c.air *= 1.0 - density * patch * (0.85 + 0.15 * np.tanh(c.noise(rng, 30)))
        if bronchograms:
            air_bronchograms(c, side, patch, rng, bronchograms)


def consolidation(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Dense lobar opacity filling most of a lobe, with air bronchograms, sharp at the fissure."""
    airspace_opacity(c, f, rng, density=0.95, coverage={1: 0.8, 2: 0.9, 3: 1.0}, softness=0.3, bronchograms=4, grow=0.06)


def pneumonia(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Patchy airspace opacity in a lobe, with a few air bronchograms."""
    airspace_opacity(c, f, rng, density=0.7, coverage={1: 0.35, 2: 0.55, 3: 0.8}, softness=0.8, bronchograms=2)


def lung_opacity(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Ill-defined hazy opacity, no bronchograms."""
    airspace_opacity(c, f, rng, density=0.45, coverage={1: 0.25, 2: 0.4, 3: 0.6}, softness=1.2, bronchograms=0)


def atelectasis(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Plate-like (discoid) bands in the affected zone; a severe one collapses a lobe into a dense
    triangle. Volume loss is applied to the anatomy (lose_volume)."""
    low, high = ZONES[f.zone]
    for side in SIDES[f.side]:
        # The dome of this (raised) hemidiaphragm, as a fraction of lung height: bands and the
        # collapsed lobe are drawn above it, where there is lung to make opaque.
        dome = c.geometry[side]["dome"] / c.lh
        top = min(high - 0.12, dome - 0.06)
        bands = np.zeros(c.shape, np.float32)
        for _ in range(1 + (f.severity == 2)):
            t = rng.uniform(min(low + 0.08, top - 0.05), top)
            center, half, tilt = rng.uniform(0.35, 0.6), rng.uniform(0.22, 0.34), rng.uniform(-0.12, 0.12)
            ends = [(side * (center - half), t * c.lh - tilt * half), (side * (center + half), t * c.lh + tilt * half)]
            bands = np.maximum(bands, c.stroke(ends, {1: 0.09, 2: 0.1, 3: 0.1}[f.severity], smooth=False))
        bands = cv2.GaussianBlur(bands, (0, 0), 0.012 * c.pose.scale + 0.5)
        c.air *= 1.0 - 0.9 * bands * c.lung[side]
        if f.severity == 3:
            wedge = {"upper": [(0.12, 0.02), (0.75, 0.08), (0.15, 0.45)],
                     "middle": [(0.12, 0.45), (0.6, 0.6), (0.15, 0.82)],
                     "lower": [(0.08, 0.5), (0.18, 1.0), (0.5, 1.0)]}[f.zone]
            triangle = c.fill([(side * x, min(t, dome) * c.lh) for x, t in wedge], blur=0.02)
            c.air *= 1.0 - 0.9 * triangle * c.lung[side]


def pneumothorax(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Air in the pleural space at the apex and lateral wall: a lucent rim without lung markings,
    bounded by the thin white visceral pleural line; rim width graded by severity."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        rim_width = {1: 0.07, 2: 0.14, 3: 0.28}[f.severity] * rng.uniform(0.85, 1.15)
        reach = rim_width * np.clip(1.0 - 0.95 * c.v / c.lh, 0.05, 1.0)
        depth = np.minimum(g["lateral"] - g["x"], c.v - g["top"])
        rim = c.lung[side] * ramp(reach - depth, 0.01)
        line = c.lung[side] * ramp(0.007 - np.abs(depth - reach), 0.006) * (c.v < 0.85 * c.lh)
        c.vessels *= 1.0 - rim
        c.soft += 0.1 * line - 0.05 * rim


#: Lesion radius by severity (nodule, larger nodule, mass), the same in the frontal and lateral views.
LESION_RADIUS = {1: 0.045, 2: 0.07, 3: 0.12}


def lung_lesion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """A well-defined, slightly lobulated nodule (or, when severe, a mass) in the given zone."""
    low, high = ZONES[f.zone]
    for side in SIDES[f.side]:
        radius = LESION_RADIUS[f.severity]
        center = (side * rng.uniform(0.3, 0.7), rng.uniform(low + 0.08, min(high, 0.92) - 0.05) * c.lh)
        du, dv = c.u - center[0], c.v - center[1]
        r = np.sqrt(du * du + dv * dv) / (radius * (1.0 + 0.12 * np.sin(3.0 * np.arctan2(dv, du) + rng.uniform(0, 6))))
        c.air *= 1.0 - 0.9 * ramp(1.0 - r, 0.25) * c.lung[side]


def pleural_thickening(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Pleural Other: a band of thickened pleura along the lateral wall and an apical cap."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        thickness = 0.02 + 0.015 * f.severity
        band = ramp(thickness - np.minimum(g["lateral"] - g["x"], c.v - g["top"]), 0.01) * (c.v < 0.8 * c.lh)
        c.air *= 1.0 - 0.85 * band * c.lung[side]


# ---- support devices --------------------------------------------------------------------------

def endotracheal_tube(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A tube down the trachea with a radiopaque stripe, tip a few cm above the carina."""
    tx = 1.2 * a.shift + rng.uniform(-0.01, 0.01)
    c.metal += 0.3 * c.stroke([(tx, -0.7 * c.lh), (tx, rng.uniform(0.1, 0.22) * c.lh)], 0.022, smooth=False)


def enteric_tube(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A nasogastric tube down the oesophagus, through the diaphragm, into the stomach."""
    dome = c.geometry[LEFT]["dome"]
    path = [(0.02, -0.7 * c.lh), (0.04, 0.4 * c.lh), (0.1, dome), (0.3, dome + 0.14 * c.lh),
            (0.5, dome + rng.uniform(0.05, 0.15) * c.lh)]
    c.metal += 0.28 * c.stroke(path, 0.018)


def central_line(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A central venous catheter from the right subclavian or jugular vein to the SVC."""
    start = (-0.85, 0.02 * c.lh) if rng.random() < 0.5 else (-0.3, -0.5 * c.lh)
    path = [start, (-0.35, 0.08 * c.lh), (-0.12, 0.2 * c.lh), (-0.09, rng.uniform(0.38, 0.5) * c.lh)]
    c.metal += 0.3 * c.stroke(path, 0.014)


def pacemaker(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A pulse generator under the left clavicle with leads to the right atrium and ventricle."""
    gx, gy = rng.uniform(0.5, 0.7), rng.uniform(0.02, 0.12) * c.lh
    box = [(gx - 0.12, gy - 0.07), (gx + 0.12, gy - 0.07), (gx + 0.12, gy + 0.07), (gx - 0.12, gy + 0.07)]
    c.metal += 0.9 * c.fill(box, blur=0.01)
    hx, hy, hw, hh = c.heart
    leads = c.stroke([(gx - 0.1, gy), (0.15, 0.12 * c.lh), (-0.08, 0.35 * c.lh), (-0.1, hy - 0.2 * hh)], 0.012)
    leads = np.maximum(leads, c.stroke([(gx - 0.1, gy + 0.02), (0.1, 0.15 * c.lh), (-0.05, 0.4 * c.lh),
                                        (hx + 0.3 * hw, hy + 0.4 * hh)], 0.012))
    c.metal += 0.5 * leads


def chest_tube(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A pleural drain entering low on the lateral wall and running up to the apex."""
    side = RIGHT if rng.random() < 0.6 else LEFT
    c.metal += 0.3 * c.stroke([(side * 1.1, 0.85 * c.lh), (side * 0.85, 0.6 * c.lh), (side * 0.55, 0.15 * c.lh)], 0.028)


def stent(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A short metallic mesh tube over the heart (coronary or vascular stent)."""
    hx, hy, hw, hh = c.heart
    x0, y0 = hx + rng.uniform(-0.3, 0.3) * hw, hy - rng.uniform(0.0, 0.4) * hh
    mesh = sum(c.stroke([(x0 + dx, y0), (x0 + dx + 0.03, y0 + 0.12)], 0.008, smooth=False) for dx in (-0.02, 0.0, 0.02))
    c.metal += 0.5 * np.minimum(mesh, 1.0)


def surgical_clips(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A few small metallic clips clustered near a hilum or the mediastinum."""
    cx, cy = rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.7) * c.lh
    for _ in range(int(rng.integers(3, 7))):
        x, y = cx + rng.normal(0, 0.06), cy + rng.normal(0, 0.06)
        angle = rng.uniform(0, np.pi)
        c.metal += 0.8 * c.stroke([(x, y), (x + 0.035 * math.cos(angle), y + 0.035 * math.sin(angle))], 0.012, smooth=False)


DEVICE_DRAWERS = {"endotracheal_tube": endotracheal_tube, "enteric_tube": enteric_tube,
                  "central_line": central_line, "pacemaker": pacemaker, "chest_tube": chest_tube,
                  "stent": stent, "surgical_clips": surgical_clips}


def support_devices(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """The finding's device, plus another one for a more instrumented (severity 3) patient."""
    DEVICE_DRAWERS[f.device or "central_line"](c, a, rng)
    if f.severity == 3:
        DEVICE_DRAWERS[str(rng.choice(COMMON_DEVICES))](c, a, rng)


FRONTAL_FINDINGS = {
    "Pleural Effusion": pleural_effusion, "Edema": edema, "Consolidation": consolidation,
    "Pneumonia": pneumonia, "Lung Opacity": lung_opacity, "Atelectasis": atelectasis,
    "Pneumothorax": pneumothorax, "Lung Lesion": lung_lesion, "Pleural Other": pleural_thickening,
    "Support Devices": support_devices,
}


# ---- lateral view: anterior to the image left, u = 0 at mid-depth, same units ------------------

def lateral_body(c: Canvas, a: Anatomy) -> None:
    """The trunk seen from the side (the beam crosses its full width: dense), and the raised arms
    over the upper chest."""
    depth = a.ap_depth * 1.3
    c.soft += 0.55 * np.sqrt(np.clip(1.0 - (c.u / depth) ** 2, 0.0, 1.0)) ** 0.3 * ramp(c.v + 0.6 * c.lh, 0.2)
    c.soft += 0.1 * c.blob((0.1, -0.1 * c.lh), (0.9, 0.35 * c.lh))


def lateral_lungs(c: Canvas, a: Anatomy) -> None:
    """Both lungs superimposed, bell-shaped (narrow apex, deep base), each with its own
    hemidiaphragm, lowest in the posterior costophrenic sulcus; the right dome sits higher, so
    two domes show."""
    depth = a.ap_depth
    s = (c.u + depth) / (2 * depth)  # 0 anterior, 1 posterior
    t = np.sqrt(np.clip(c.v / c.lh, 0.0, 1.0))
    front, back = -0.92 * depth * (0.45 + 0.55 * t), 0.95 * depth * (0.6 + 0.4 * t)
    for side in (RIGHT, LEFT):
        raise_ = (a.raise_right + a.right_dome_raise) if side == RIGHT else a.raise_left
        diaphragm = c.lh * (0.8 + 0.2 * s ** 2 - raise_)
        mask = ramp(c.u - front, 0.02) * ramp(back - c.u, 0.02) * ramp(c.v - 0.03 * c.lh, 0.03) * ramp(diaphragm - c.v, 0.012)
        c.lung[side] = mask
        c.geometry[side] = {"s": s}
        c.air += 0.5 * mask


def lateral_heart(c: Canvas, a: Anatomy) -> None:
    """The heart in the anterior-inferior chest against the lower sternum, its long axis tilted
    down and forwards; it grows backwards over the retrocardiac space when enlarged."""
    grow = a.ctr / 0.45
    depth = a.ap_depth
    major, minor = 0.62 * depth * grow, 0.13 * c.lh * grow ** 0.5
    center = (-0.45 * depth + 0.75 * major, c.lh * (0.84 - a.dome_height) - 0.6 * minor)
    tilt = math.radians(25.0)
    du, dv = c.u - center[0], c.v - center[1]
    along = du * math.cos(tilt) + dv * math.sin(tilt)
    across = -du * math.sin(tilt) + dv * math.cos(tilt)
    mask = ramp(1.0 - np.sqrt((along / major) ** 2 + (across / minor) ** 2), 0.03 / minor)
    c.heart = (center[0], center[1], major, minor)
    c.air *= 1.0 - mask
    c.soft += 0.04 * mask


def lateral_great_vessels(c: Canvas, a: Anatomy) -> None:
    """The aortic arch over the top of the heart and the descending aorta along the spine, and
    the hilum in the middle."""
    d = a.ap_depth
    aorta = c.stroke([(-0.3 * d, 0.45 * c.lh), (-0.2 * d, 0.18 * c.lh), (0.2 * d, 0.14 * c.lh),
                      (0.42 * d, 0.3 * c.lh), (0.42 * d, 0.95 * c.lh)], 0.09 * (1.0 + 2.0 * a.aortic_knob))
    c.air *= 1.0 - 0.25 * aorta
    c.soft += 0.08 * c.blob((0.0, 0.45 * c.lh), (0.12, 0.1 * c.lh))


def lateral_trachea(c: Canvas, a: Anatomy) -> None:
    """The trachea running down and back to the carina."""
    d = a.ap_depth
    c.soft -= 0.08 * c.stroke([(-0.3 * d, -0.6 * c.lh), (0.02 * d, 0.4 * c.lh)], 0.07, smooth=False)


def lateral_spine(c: Canvas, a: Anatomy) -> None:
    """Vertebral bodies stacked behind the lungs with a gentle kyphosis, posterior elements behind."""
    d = a.ap_depth
    center = 0.55 * d + 0.08 * d * np.sin(np.pi * c.v / (1.3 * c.lh))
    level = (c.v / (c.lh / 10.0)) % 1.0
    discs = 0.6 + 0.4 * ramp(0.38 - np.abs(level - 0.5), 0.06)
    bodies = ramp(0.16 * d - np.abs(c.u - center), 0.02) * discs
    posterior = ramp(0.12 * d - np.abs(c.u - center - 0.32 * d), 0.05)
    c.bone += (0.14 * bodies + 0.06 * posterior) * ramp(c.v + 0.5 * c.lh, 0.1)


def sternum(c: Canvas, a: Anatomy) -> None:
    """The sternum along the anterior chest wall."""
    d = a.ap_depth
    c.bone += 0.1 * ramp(0.035 - np.abs(c.u + 1.0 * d), 0.015) * ramp(c.v - 0.05 * c.lh, 0.03) * ramp(0.75 * c.lh - c.v, 0.03)


def lateral_ribs(c: Canvas, a: Anatomy) -> None:
    """Faint oblique rib shadows, both sides superimposed."""
    index = (c.v + 0.45 * c.u) / a.rib_spacing
    phase = index - np.floor(index)
    c.bone += 0.03 * ramp(0.2 - np.abs(phase - 0.2), 0.1) * (c.air > 0.1)


def lateral_markings(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """Branching vessels around the hilum."""
    vessel_tree(c, rng, np.sqrt(c.u ** 2 + (c.v - 0.45 * c.lh) ** 2))


def draw_lateral_anatomy(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A normal lateral chest, structure by structure."""
    lateral_body(c, a)
    lateral_lungs(c, a)
    lateral_heart(c, a)
    lateral_great_vessels(c, a)
    lateral_trachea(c, a)
    lateral_spine(c, a)
    sternum(c, a)
    lateral_ribs(c, a)
    lateral_markings(c, a, rng)


# ---- findings on the lateral view (pneumothorax, fracture and pleural thickening are not drawn) -

LATERAL_ZONE_CENTERS = {"upper": (0.1, 0.25), "middle": (-0.5, 0.62), "lower": (0.55, 0.85)}  # (x depth, x lung height)


def lateral_region(c: Canvas, a: Anatomy, f: Finding, size: float) -> np.ndarray:
    cu, cv = LATERAL_ZONE_CENTERS[f.zone]
    return np.minimum(c.air, 1.0) * c.blob((cu * a.ap_depth, cv * c.lh), (size, size * c.lh))


def lateral_effusion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Fluid filling the posterior costophrenic sulcus, its meniscus climbing the back wall."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        height = {1: 0.1, 2: 0.22, 3: 0.4}[f.severity] * c.lh * rng.uniform(0.85, 1.15)
        surface = c.lh * 1.0 - height * (0.4 + 0.9 * g["s"] ** 2)
        c.air -= 0.5 * 0.95 * ramp(c.v - surface, 0.05 * c.lh) * c.lung[side]
    np.clip(c.air, 0.0, None, out=c.air)


def lateral_edema(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Haze around the hilum."""
    c.air *= 1.0 - {1: 0.3, 2: 0.45, 3: 0.62}[f.severity] * c.blob((0.0, 0.5 * c.lh), (0.45, 0.35 * c.lh))


def lateral_opacity(density: float, size: float, coverage: dict[int, float]):
    """A lateral-view drawer for an airspace opacity of this density in the finding's zone."""
    def draw(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
        region = lateral_region(c, a, f, size)
        c.air *= 1.0 - density * patch_in(c, region, rng, coverage[f.severity], 0.5)
    draw.__doc__ = f"Airspace opacity of density {density} in the zone of the finding."
    return draw


def lateral_atelectasis(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """A plate-like band across the zone (a collapsed lobe when severe)."""
    cu, cv = LATERAL_ZONE_CENTERS[f.zone]
    x, y = cu * a.ap_depth, cv * c.lh
    band = c.stroke([(x - 0.3, y + 0.05), (x + 0.3, y - 0.08)], 0.06 if f.severity < 3 else 0.16, smooth=False)
    c.air *= 1.0 - 0.85 * band * np.minimum(c.air * 2, 1.0)


def lateral_lesion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """The nodule or mass, seen end on."""
    cu, cv = LATERAL_ZONE_CENTERS[f.zone]
    radius = LESION_RADIUS[f.severity]
    c.air *= 1.0 - 0.9 * c.ellipse((cu * a.ap_depth + rng.uniform(-0.1, 0.1), cv * c.lh), (radius, radius), edge=0.01)


def lateral_mediastinum(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Enlarged cardiomediastinum: the retrosternal clear space filled in."""
    d = a.ap_depth
    fill = c.fill([(-0.95 * d, 0.1 * c.lh), (-0.2 * d, 0.12 * c.lh), (-0.3 * d, 0.55 * c.lh), (-0.95 * d, 0.6 * c.lh)], blur=0.05)
    c.air *= 1.0 - {1: 0.4, 2: 0.6, 3: 0.8}[f.severity] * fill


def lateral_devices(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Tubes and lines as seen from the side; a pacemaker generator in front of the chest."""
    d, lh = a.ap_depth, c.lh
    hx, hy, hw, hh = c.heart
    paths = {"endotracheal_tube": [(-0.3 * d, -0.7 * lh), (-0.02 * d, 0.2 * lh)],
             "enteric_tube": [(-0.1 * d, -0.7 * lh), (0.25 * d, 0.5 * lh), (0.1 * d, 1.05 * lh), (-0.2 * d, 1.15 * lh)],
             "central_line": [(-0.5 * d, -0.3 * lh), (-0.3 * d, 0.1 * lh), (-0.25 * d, 0.45 * lh)],
             "chest_tube": [(0.9 * d, 0.95 * lh), (0.6 * d, 0.5 * lh), (0.3 * d, 0.15 * lh)],
             "pacemaker": [(-1.05 * d, 0.08 * lh), (-0.4 * d, 0.2 * lh), (hx, hy + 0.3 * hh)],
             "stent": [(hx - 0.03, hy - 0.05), (hx + 0.03, hy + 0.07)],
             "surgical_clips": [(0.0, 0.45 * lh), (0.03, 0.48 * lh)]}
    device = f.device or "central_line"
    c.metal += 0.35 * c.stroke(paths[device], 0.02 if device != "chest_tube" else 0.03)
    if device == "pacemaker":
        c.metal += 0.9 * c.ellipse((-1.1 * d, 0.08 * lh), (0.05, 0.1), edge=0.01)


LATERAL_FINDINGS = {
    "Pleural Effusion": lateral_effusion, "Edema": lateral_edema,
    "Consolidation": lateral_opacity(0.9, 0.35, {1: 0.5, 2: 0.75, 3: 0.95}),
    "Pneumonia": lateral_opacity(0.7, 0.35, {1: 0.35, 2: 0.55, 3: 0.8}),
    "Lung Opacity": lateral_opacity(0.55, 0.35, {1: 0.3, 2: 0.5, 3: 0.75}),
    "Atelectasis": lateral_atelectasis, "Lung Lesion": lateral_lesion,
    "Enlarged Cardiomediastinum": lateral_mediastinum, "Support Devices": lateral_devices,
}


def render(view: str, anatomy: Anatomy, findings: list[Finding], shape: tuple[int, int],
           rng: np.random.Generator) -> np.ndarray:
    """A radiograph (float 0..1, `shape`) of this patient showing exactly these findings.
    `view` is PA, AP (frontal) or LATERAL."""
    a = anatomy_with(anatomy, findings, rng)
    c = Canvas(shape, sample_pose(rng, shape, a, view), a.lung_height)
    lateral = view == "LATERAL"
    (draw_lateral_anatomy if lateral else draw_frontal_anatomy)(c, a, rng)
    for label, draw in (LATERAL_FINDINGS if lateral else FRONTAL_FINDINGS).items():
        for f in findings:
            if f.label == label:
                draw(c, a, f, rng)
    return c.expose(rng)


# ----------------------------------------------------------------------------------------------
# 4. Writers: MIMIC-CXR(-JPG), CheXpert test/valid, PadChest, manifest
# ----------------------------------------------------------------------------------------------

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
TECHNIQUE = {"CHEST (PA AND LAT)": "Chest PA and lateral", "CHEST (PORTABLE AP)": "Single portable AP view of the chest",
             "CHEST (PRE-OP PA AND LAT)": "Chest PA and lateral", "CHEST (SINGLE VIEW)": "Single frontal view of the chest"}
NOTIFICATION = ("The findings were discussed with ___, M.D. by ___, M.D. on the telephone on ___ at ___, "
                "within ___ minutes of their discovery.")
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
VALID_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_ORDER
INTERNAL_SIZE = 224  # drawing resolution (long side); images are resized up to their file size


@dataclass
class ImageJob:
    """Everything a worker needs to draw and write one image file."""

    path: str
    view: str                      # PA, AP or LATERAL
    findings: list[Finding]
    female: bool
    patient_seed: tuple[int, ...]  # the same patient has the same anatomy in every study
    image_seed: tuple[int, ...]
    size: tuple[int, int]          # (width, height) of the file
    bits: int = 8                  # 8: 8-bit JPEG; 12: 16-bit PNG holding 12-bit values
    damage: str = ""               # "", "truncated" or "empty"


def write_image(job: ImageJob) -> None:
    """Draw the image at the internal resolution, resize it to the file size and write it."""
    width, height = job.size
    scale = INTERNAL_SIZE / max(width, height)
    anatomy = sample_anatomy(np.random.default_rng(job.patient_seed), job.female)
    image = render(job.view, anatomy, job.findings, (round(height * scale), round(width * scale)),
                   np.random.default_rng(job.image_seed))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if job.bits == 8:
        ok, data = cv2.imencode(".jpg", np.round(image * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        ok, data = cv2.imencode(".png", np.round(image * (2 ** job.bits - 1)).astype(np.uint16))
    data = data.tobytes()
    if job.damage == "truncated":
        data = data[: len(data) // 3]
    elif job.damage == "empty":
        data = b""
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    Path(job.path).write_bytes(data)


def pool(workers: int):
    """A pool of `workers` fresh processes (spawned, not forked: a fork inherits OpenCV's and
    torch's thread-pool locks and can deadlock), each with single-threaded OpenCV."""
    return multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,))


def write_images(jobs: list[ImageJob], workers: int) -> None:
    """Write all images, in parallel; each job carries its own seeds, so the bytes do not
    depend on the number of workers or their order."""
    if workers <= 1:
        for job in tqdm(jobs, desc="images", unit="img"):
            write_image(job)
        return
    with pool(workers) as p:
        for _ in tqdm(p.imap_unordered(write_image, jobs, chunksize=8), total=len(jobs), desc="images", unit="img"):
            pass


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


# ---- MIMIC report text -----------------------------------------------------------------------

def deidentify(text: str) -> str:
    """IU de-identification (XXXX) written the MIMIC way (___)."""
    return re.sub(r"X{3,}", "___", text).strip()


def wrap(text: str) -> list[str]:
    """MIMIC lines: wrapped to 79 characters, each with one leading space; numbered items
    ("1. ... 2. ...") each start a new line."""
    items = re.split(r"(?<=[.:])\s+(?=\d{1,2}\.\s)", text)
    return [" " + line for item in items for line in textwrap.wrap(item, width=78)]


def split_recommendation(impression: str) -> tuple[str, str]:
    """Move the sentences that recommend something out of the impression."""
    sentences = SENTENCE_BREAK.split(impression)
    advice = [s for s in sentences if re.match(r"(\d+\.\s*)?(Recommend|Suggest|Consider|Follow-up|Followup)", s)]
    kept = [s for s in sentences if s not in advice]
    return (" ".join(kept), " ".join(advice)) if kept and advice else (impression, "")


def mimic_report(report: IUReport, procedure: str, rng: np.random.Generator, notification_first: bool = False,
                 two_impressions: bool = False, drop_impression: bool = False) -> str:
    """An IU report written in MIMIC-CXR's format: "FINAL REPORT" title, one leading space on
    every line, " " blank lines between sections, ___ for de-identified text, sections
    EXAMINATION / INDICATION / (TECHNIQUE) / COMPARISON / FINDINGS / IMPRESSION, sometimes
    RECOMMENDATION(S) and NOTIFICATION. The flags make the edge cases."""
    impression, recommendation = split_recommendation(deidentify(report.impression))
    has_impression = bool(impression) and not drop_impression
    notify = notification_first or (has_impression and (rng.random() < 0.06 or report.positive("Pneumothorax")))
    sections: list[tuple[str, str, bool]] = [("EXAMINATION", procedure, True),
                                             ("INDICATION", deidentify(report.indication) or "___", True)]
    if rng.random() < 0.5:
        sections.append(("TECHNIQUE", TECHNIQUE[procedure], True))
    sections.append(("COMPARISON", deidentify(report.comparison) or "None.", True))
    if report.findings:
        sections.append(("FINDINGS", deidentify(report.findings), False))
    if notification_first:
        sections.append(("NOTIFICATION", NOTIFICATION, False))
    if has_impression:
        if two_impressions:
            sections.append(("IMPRESSION", SENTENCE_BREAK.split(impression)[0], False))
        sections.append(("IMPRESSION", impression, False))
        if recommendation:
            sections.append(("RECOMMENDATION(S)", recommendation, True))
    if notify and not notification_first:
        sections.append(("NOTIFICATION", NOTIFICATION, False))
    lines = [" " * 33 + "FINAL REPORT"]
    for header, text, inline in sections:
        lines += wrap(f"{header}:  {text}") if inline else [f" {header}:", " "] + wrap(text)
        lines.append(" ")
    return "\n".join(lines[:-1]) + "\n"


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


def write_mimic(out: Path, studies: int, seed: int) -> tuple[list[ImageJob], dict]:
    """Plan and write the MIMIC-CXR reports and MIMIC-CXR-JPG CSVs; returns the image jobs and
    the manifest entries (counts and edge cases)."""
    rng = np.random.default_rng([seed, 1])
    reports = iu_reports()
    unnamed = [any(r.positive(lab) and not re.search(word, r.impression.lower()) for lab, word in MENTION_KEYWORDS.items())
               for r in reports]
    weights = raking_weights(positives_matrix(reports), MIMIC_TRAIN_TARGETS, cap=60.0, prior=np.where(unnamed, 0.25, 1.0))
    jpg_root, txt_root = out / "mimic-cxr-jpg" / "2.0.0", out / "mimic-cxr" / "2.0.0"

    per_patient: list[int] = []
    while sum(per_patient) < studies:
        per_patient.append(min(int(rng.geometric(0.5)), studies - sum(per_patient)))
    subjects = unique_ids(rng, len(per_patient), 10_000_000, 20_000_000)
    study_ids = unique_ids(rng, studies, 50_000_000, 60_000_000)
    splits = [str(rng.choice(["train", "validate", "test"], p=[0.92, 0.04, 0.04])) for _ in subjects]
    for i, split in ((1, "validate"), (2, "test")):
        if split not in splits and len(splits) > 3:
            splits[i] = split

    # edge cases are drawn among training studies
    edge_rng = np.random.default_rng([seed, 5])
    study_patient = [p for p, n in enumerate(per_patient) for _ in range(n)]
    train_studies = [k for k in range(studies) if splits[study_patient[k]] == "train"]
    picks = [int(k) for k in edge_rng.permutation(train_studies)]
    report_edges = {"no_impression": picks[0:2], "notification_before_impression": picks[2:4],
                    "two_impressions": picks[4:6], "missing_from_chexpert_csv": picks[6:8]}
    image_edges = {"truncated_jpg": picks[8:10], "zero_byte_jpg": picks[10:12]}

    jobs: list[ImageJob] = []
    metadata, split_rows, label_rows, report_paths, texts = [], [], [], {}, {}
    k = 0
    for p, (subject, n_studies) in enumerate(zip(subjects, per_patient)):
        female = bool(rng.random() < 0.48)
        day = int(rng.integers(0, 36500))
        for _ in range(n_studies):
            study, study_rng = study_ids[k], np.random.default_rng([seed, 2, k])
            report = reports[int(study_rng.choice(len(reports), p=weights))]
            while any(k in report_edges[e] and not fits(report) for e, fits in EDGE_CASE_NEEDS.items()):
                report = reports[int(study_rng.choice(len(reports), p=weights))]
            findings = findings_of_report(report, study_rng)
            # the first studies use each protocol once, so that even a small root has every ViewPosition
            protocol = k if k < len(PROTOCOLS) else int(study_rng.choice(len(PROTOCOLS), p=[x[2] for x in PROTOCOLS]))
            procedure, views, _ = PROTOCOLS[protocol]
            day += int(study_rng.integers(1, 400))
            date = (np.datetime64("2110-01-01") + np.timedelta64(day, "D")).astype(str).replace("-", "")
            folder = f"p{str(subject)[:2]}/p{subject}/s{study}"
            text = mimic_report(report, procedure, study_rng,
                                notification_first=k in report_edges["notification_before_impression"],
                                two_impressions=k in report_edges["two_impressions"],
                                drop_impression=k in report_edges["no_impression"])
            report_path = txt_root / "files" / f"{folder}.txt"
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(text)
            report_paths[study] = report_path.relative_to(out).as_posix()
            texts[study] = text
            if k not in report_edges["missing_from_chexpert_csv"]:
                label_rows.append([subject, study] + [label_text(report.labels.get(lab)) for lab in LABELS])
            seconds = float(study_rng.integers(6 * 3600, 23 * 3600)) + round(float(study_rng.random()), 3)
            for j, view in enumerate(views):
                image_id = dicom_id(study_rng)
                width, height = MIMIC_SIZES[int(study_rng.integers(len(MIMIC_SIZES)))]
                drawn = "LATERAL" if view in ("LATERAL", "LL") else (view or "AP")
                damage = ("truncated" if k in image_edges["truncated_jpg"] and j == 0 else
                          "empty" if k in image_edges["zero_byte_jpg"] and j == 0 else "")
                jobs.append(ImageJob(str(jpg_root / "files" / folder / f"{image_id}.jpg"), drawn, findings, female,
                                     (seed, 3, subject), (seed, 4, k, j), (width, height), damage=damage))
                hhmmss = int(seconds // 3600) * 10000 + int(seconds % 3600 // 60) * 100 + int(seconds % 60)
                orientation = "" if not view else ("Recumbent" if view == "AP" and study_rng.random() < 0.6 else "Erect")
                metadata.append([image_id, subject, study, procedure, view, height, width, date,
                                 repr(round(hhmmss + seconds % 1, 3)), procedure, VIEW_MEANING[view], orientation])
                split_rows.append([image_id, study, subject, splits[p]])
                seconds += float(study_rng.integers(20, 90))
            k += 1

    jpg_root.mkdir(parents=True, exist_ok=True)
    metadata.sort(key=lambda r: (r[1], r[2], r[0]))
    split_rows.sort(key=lambda r: (r[2], r[1], r[0]))
    label_rows.sort(key=lambda r: (r[0], r[1]))
    (jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(gzip_bytes(csv_text(METADATA_COLUMNS, metadata).encode()))
    (jpg_root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(
        gzip_bytes(csv_text(["dicom_id", "study_id", "subject_id", "split"], split_rows).encode()))
    (jpg_root / "mimic-cxr-2.0.0-chexpert.csv.gz").write_bytes(
        gzip_bytes(csv_text(["subject_id", "study_id"] + LABELS, label_rows).encode()))

    damaged = {"truncated": "truncated_jpg", "empty": "zero_byte_jpg"}
    manifest = {key: [] for key in damaged.values()}
    for job in jobs:
        if job.damage:
            manifest[damaged[job.damage]].append(Path(job.path).relative_to(out).as_posix())
    manifest.update({
        "no_impression": sorted(report_paths[s] for s, t in texts.items() if "\n IMPRESSION:" not in t),
        "notification_before_impression": sorted(
            report_paths[s] for s, t in texts.items()
            if "\n IMPRESSION:" in t and "\n NOTIFICATION:" in t and t.index("\n NOTIFICATION:") < t.index("\n IMPRESSION:")),
        "two_impressions": sorted(report_paths[s] for s, t in texts.items() if t.count("\n IMPRESSION:") > 1),
        "missing_from_chexpert_csv": sorted(study_ids[k] for k in report_edges["missing_from_chexpert_csv"]),
    })
    lateral = sum(job.view == "LATERAL" for job in jobs)
    manifest["counts"] = {"mimic_patients": len(subjects), "mimic_studies": studies, "mimic_images": len(jobs),
                          "mimic_lateral_images": lateral,
                          "mimic_split_patients": {s: splits.count(s) for s in ("train", "validate", "test")}}
    return jobs, manifest


# ---- CheXpert test and valid -----------------------------------------------------------------

def chexpert_studies(n: int, seed: int, stream: int) -> list[tuple[set[str], list[Finding], bool]]:
    """Label sets at the real CheXpert test prevalences, their findings and the patient's sex."""
    rng = np.random.default_rng([seed, stream])
    reports = iu_reports()
    rows = sample_label_rows(n, CHEXPERT_TEST_PREVALENCE, rng)
    return [(labels, findings_for_labels(labels, reports[r], rng), bool(rng.random() < 0.45)) for r, labels in rows]


def write_chexpert_test(out: Path, n: int, seed: int) -> list[ImageJob]:
    """`chexpert-test/groundtruth.csv` (Study + 14 labels in CheXpert order, 0/1, sorted, no
    trailing newline) and `test/patientNNNNN/study1/view1_frontal.jpg` (+ some view2_lateral)."""
    root = out / "chexpert-test"
    rng = np.random.default_rng([seed, 11])
    jobs, rows = [], []
    for i, (labels, findings, female) in enumerate(chexpert_studies(n, seed, 10)):
        patient = f"patient{64741 + i:05d}"
        rows.append([f"CheXpert-v1.0/test/{patient}/study1"] + [int(lab in labels) for lab in CHEXPERT_ORDER])
        views = [("view1_frontal", "AP" if rng.random() < 0.75 else "PA")] + ([("view2_lateral", "LATERAL")] if rng.random() < 0.3 else [])
        for j, (name, view) in enumerate(views):
            size = MIMIC_SIZES[int(rng.integers(len(MIMIC_SIZES)))]
            jobs.append(ImageJob(str(root / "test" / patient / "study1" / f"{name}.jpg"), view, findings, female,
                                 (seed, 12, i), (seed, 13, i, j), size))
    root.mkdir(parents=True, exist_ok=True)
    (root / "groundtruth.csv").write_text(csv_text(["Study"] + CHEXPERT_ORDER, rows, trailing_newline=False))
    return jobs


def write_chexpert_valid(out: Path, n: int, seed: int) -> list[ImageJob]:
    """`chexpert/CheXpert-v1.0-small/valid.csv` (one row per image, 0.0/1.0 labels) and the
    small-release images (320 px short side) for patients 64541 onwards."""
    if n > 200:
        raise UserError(f"--valid_studies {n}: CheXpert valid patients are 64541-64740, so at most 200 valid studies")
    root = out / "chexpert" / "CheXpert-v1.0-small"
    rng = np.random.default_rng([seed, 21])
    jobs, rows = [], []
    for i, (labels, findings, female) in enumerate(chexpert_studies(n, seed, 20)):
        patient = f"patient{64541 + i:05d}"
        sex, age = ("Female" if female else "Male"), int(rng.integers(18, 91))
        views = [("view1_frontal", "AP" if rng.random() < 0.75 else "PA")] + ([("view2_lateral", "LATERAL")] if rng.random() < 0.16 else [])
        for j, (name, view) in enumerate(views):
            path = f"CheXpert-v1.0-small/valid/{patient}/study1/{name}.jpg"
            frontal = view != "LATERAL"
            rows.append([path, sex, age, "Frontal" if frontal else "Lateral", view if frontal else ""]
                        + [repr(float(lab in labels)) for lab in CHEXPERT_ORDER])
            size = (320, int(rng.choice([369, 390, 413]))) if frontal else (int(rng.choice([369, 390])), 320)
            jobs.append(ImageJob(str(out / "chexpert" / path), view, findings, female, (seed, 22, i), (seed, 23, i, j), size))
    root.mkdir(parents=True, exist_ok=True)
    (root / "valid.csv").write_text(csv_text(VALID_COLUMNS, rows))
    return jobs


# ---- PadChest --------------------------------------------------------------------------------

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
            places.setdefault(str(sentence[0]).strip(), []).extend(str(x).replace("loc ", "").strip() for x in sentence[1:])
    findings = []
    for label in dict.fromkeys(padchest_labels(row["Labels"])):
        if label in PADCHEST_TO_CHEXPERT:
            words = [w for place in places.get(label, []) for w in [place] + place.split()]
            device = PADCHEST_DEVICE.get(label, "central_line") if PADCHEST_TO_CHEXPERT[label] == "Support Devices" else None
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
    rng = np.random.default_rng([seed, 30])
    drawable = np.array([1.0 + 2.0 * any(lab in PADCHEST_TO_CHEXPERT for lab in padchest_labels(r[col["Labels"]]))
                         for r in physician])
    chosen = sorted(rng.choice(len(physician), size=min(n, len(physician)), replace=False, p=drawable / drawable.sum()).tolist(),
                    key=lambda i: int(physician[i][0]))
    sample = [physician[i] for i in chosen]
    root = out / "padchest"
    root.mkdir(parents=True, exist_ok=True)
    (root / PADCHEST_CSV).write_text(csv_text(header, sample), newline="")
    missing, truncated = (int(i) for i in rng.choice(len(sample), size=2, replace=False)) if len(sample) > 1 else (-1, -1)
    jobs = []
    for k, r in enumerate(sample):
        row = dict(zip(header, r))
        row_rng = np.random.default_rng([seed, 31, k])
        projection = row["Projection"]
        view = "LATERAL" if projection == "L" else "AP" if projection.startswith("AP") else "PA"
        try:
            size = (int(float(row["Columns_DICOM"])) // 4, int(float(row["Rows_DICOM"])) // 4)
        except ValueError:
            size = (512, 600)
        if k != missing:
            jobs.append(ImageJob(str(root / row["ImageDir"] / row["ImageID"]), view, padchest_findings(row, row_rng),
                                 row["PatientSex_DICOM"] == "F", (seed, 32, zlib.crc32(row["PatientID"].encode())),
                                 (seed, 33, k), size, bits=12, damage="truncated" if k == truncated else ""))
    relative = lambda k: f"padchest/{sample[k][col['ImageDir']]}/{sample[k][col['ImageID']]}"
    return jobs, {"padchest_missing": [relative(missing)] if missing >= 0 else [],
                  "padchest_truncated": [relative(truncated)] if truncated >= 0 else [],
                  "counts": {"padchest_rows": len(sample), "padchest_images": len(jobs)}}


# ---- everything --------------------------------------------------------------------------------

#: What a phantom root holds: the only entries ``overwrite`` may delete.
ROOT_ENTRIES = {"mimic-cxr-jpg", "mimic-cxr", "chexpert-test", "chexpert", "padchest", "manifest.json"}


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
             padchest_images: int = 300, workers: int | None = None, overwrite: bool = False) -> dict:
    """Write the whole phantom root (see the module docstring and --help) into an empty or new
    folder (``overwrite``: replace an earlier phantom root) and return the manifest, also saved
    as <out>/manifest.json. The same seed gives byte-identical files."""
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
    write_images(jobs, workers)
    manifest["counts"].update(padchest.pop("counts"))
    manifest["counts"].update({"chexpert_test_studies": test_studies, "chexpert_test_images": len(test_jobs),
                               "chexpert_valid_studies": valid_studies, "chexpert_valid_images": len(valid_jobs)})
    manifest.update(padchest)
    manifest["seed"] = seed
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("generated %d studies (%d images) in %.1f s with %d workers -> %s",
             studies + test_studies + valid_studies, len(jobs), time.time() - start, workers, out)
    return manifest


# ----------------------------------------------------------------------------------------------
# 5. Learnability: are the findings learnable, and not a brightness shortcut?
# ----------------------------------------------------------------------------------------------

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
    rng = np.random.default_rng([seed, 7, index])
    anatomy = sample_anatomy(rng, female=bool(rng.random() < 0.5))
    view = "AP" if rng.random() < 0.4 else "PA"
    image = render(view, anatomy, findings, (224, int(rng.choice([168, 186, 200, 245]))), rng)
    return square_thumbnail((image * 255).round().astype(np.uint8), size).astype(np.float32) / 255.0


def learnability(n: int = 600, seed: int = 0, size: int = 64, workers: int | None = None) -> dict[str, dict[str, float]]:
    """Held-out AUROC, per competition finding, of (a) logistic regression on `size` x `size`
    pixels (each image standardised, as a network's input would be) and (b) mean image intensity
    alone, on `n` frontal phantoms: two thirds to train, one third held out. Label sets are IU
    reports re-weighted so that each competition finding is in 35% of studies (enough positives);
    the other findings keep their IU co-occurrence."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng([seed, 8])
    rows = sample_label_rows(n, {label: 0.35 for label in COMPETITION}, rng)
    reports = iu_reports()
    jobs = [(seed, i, findings_for_labels(labels, reports[r], rng), size) for i, (r, labels) in enumerate(rows)]
    with pool(workers or os.cpu_count() or 1) as p:
        images = np.stack(list(p.map(_render_thumbnail, jobs, chunksize=8)))
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


# ----------------------------------------------------------------------------------------------
# 6. Contact sheet and CLI
# ----------------------------------------------------------------------------------------------

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
    ("Support Devices", [Finding("Support Devices", 2, device="pacemaker"), Finding("Support Devices", 2, device="endotracheal_tube"),
                         Finding("Support Devices", 2, device="enteric_tube"), Finding("Support Devices", 2, device="central_line")]),
    ("Lung Opacity + Pneumonia", [Finding("Lung Opacity", 2, "left", "middle"), Finding("Pneumonia", 3, "right", "lower")]),
    ("Cardiomegaly, Edema, Effusion", [Finding("Cardiomegaly", 2), Finding("Edema", 3), Finding("Pleural Effusion", 2, "bilateral")]),
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
        rng = np.random.default_rng([seed, 40, i])
        anatomy = sample_anatomy(rng, female=False)
        image = render("PA", anatomy, findings, (height, width), rng)
        x, y = (i % columns) * width, (i // columns) * (height + caption)
        sheet.paste(Image.fromarray(np.round(np.round(image * 31) * 255 / 31).astype(np.uint8)), (x, y + caption))
        draw.text((x + 4, y + 3), title, fill=255, font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


LAYOUT = """layout written under --out:
  mimic-cxr-jpg/2.0.0/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg
  mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-{metadata,split,chexpert}.csv.gz
  mimic-cxr/2.0.0/files/pXX/pXXXXXXXX/sXXXXXXXX.txt            (reports)
  chexpert-test/groundtruth.csv
  chexpert-test/test/patientNNNNN/study1/view1_frontal.jpg      (+ some view2_lateral.jpg)
  chexpert/CheXpert-v1.0-small/valid.csv
  chexpert/CheXpert-v1.0-small/valid/patientNNNNN/study1/*.jpg
  padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv
  padchest/<ImageDir>/<ImageID>                                  (16-bit PNG, 12-bit values)
  manifest.json                                                  (seed, counts, edge cases)"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=LAYOUT)
    parser.add_argument("--out", default="data/phantom", help="root folder to write (default: data/phantom)")
    parser.add_argument("--studies", type=positive_int, default=2000, help="MIMIC-CXR studies (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--test_studies", type=non_negative_int, default=500, help="CheXpert test studies, patients 64741+ (default: 500)")
    parser.add_argument("--valid_studies", type=non_negative_int, default=200,
                        help="CheXpert valid studies, patients 64541-64740 (default and maximum: 200)")
    parser.add_argument("--padchest_images", type=non_negative_int, default=300,
                        help="PadChest rows sampled from the Physician-labelled rows (default: 300)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes drawing images (default: all cores)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier phantom root at --out first (a non-empty --out is refused otherwise)")
    parser.add_argument("--contact_sheet", metavar="PATH",
                        help="only write a captioned grid of frontal phantoms to PATH (e.g. docs/phantoms.png)")
    parser.add_argument("--learnability", action="store_true",
                        help="only print the learnability check: held-out AUROC of logistic regression on 64x64 "
                             "pixels and of mean intensity, per competition finding, on 600 frontal phantoms")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.contact_sheet:
        contact_sheet(args.contact_sheet, args.seed)
        log.info("wrote %s", args.contact_sheet)
    elif args.learnability:
        for label, scores in learnability(seed=args.seed, workers=args.workers).items():
            log.info("%-17s logistic regression AUROC %.3f   mean intensity AUROC %.3f",
                     label, scores["logreg_auroc"], scores["mean_intensity_auroc"])
    else:
        generate(args.out, args.studies, args.seed, args.test_studies, args.valid_studies, args.padchest_images,
                 args.workers, args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
