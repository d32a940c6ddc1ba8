"""Labels: the vocabularies, the MeSH -> CheXpert table and its parser, and the Finding to draw.

The one place the generator's labels come from. The 14 CheXpert observations are kept here in
the two orders the datasets write them (alphabetical in MIMIC's -chexpert.csv.gz, CheXpert's own
order in its CSVs): the phantom stands in for the datasets, so it spells their names and orders
itself rather than taking them from the pipeline's labels.py; tests/test_labels.py checks they agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

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
MENTION_KEYWORDS = {"Atelectasis": r"atelecta",
                    "Cardiomegaly": r"cardiomegaly|enlarged (heart|cardiac)|heart (size )?is enlarged",
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


# ---- the MeSH parser -------------------------------------------------------------------------

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


# ---- the finding to draw ---------------------------------------------------------------------

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
            # right lower lobe pneumonia is the commonest
            p_right = 0.7 if label in ("Consolidation", "Pneumonia") else 0.5
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
