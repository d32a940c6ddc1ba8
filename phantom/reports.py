"""Reports: the Indiana University reports torchxrayvision ships, label sampling, and the report
text written the MIMIC-CXR way.

Report text is real: the FINDINGS and IMPRESSION sections of the IU chest X-ray collection
(torchxrayvision/data/NLMCXR_reports.tgz). A report's labels come from its manual MeSH terms
(labels.MESH_TO_CHEXPERT); the findings drawn for a study are those of its report.
"""
from __future__ import annotations

import functools
import importlib.util
import re
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from errors import UserError

from .labels import (
    LABELS,
    MESH_DEVICE,
    PATHOLOGIES,
    SENTENCE_BREAK,
    Finding,
    finding_from_words,
    make_finding,
    mesh_term,
    report_labels,
)


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


# ---- MIMIC report text -----------------------------------------------------------------------

TECHNIQUE = {"CHEST (PA AND LAT)": "Chest PA and lateral",
             "CHEST (PORTABLE AP)": "Single portable AP view of the chest",
             "CHEST (PRE-OP PA AND LAT)": "Chest PA and lateral",
             "CHEST (SINGLE VIEW)": "Single frontal view of the chest"}
NOTIFICATION = ("The findings were discussed with ___, M.D. by ___, M.D. on the telephone on ___ at ___, "
                "within ___ minutes of their discovery.")


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
