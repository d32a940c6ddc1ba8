"""Named random streams: every random draw of the generator comes from one of these.

Each stream is a numpy Generator seeded with ``[seed, number, *extra]``: the user's seed, the
stream's fixed number from :data:`STREAMS`, and the index of the thing it draws for (a study, a
patient, an image). Streams never share state, so adding a draw to one changes nothing in the
others, and an image's bytes do not depend on which process draws it or in what order.

The numbers are the generator's file format: changing one changes every root written with
that seed. Add new streams with new numbers; never renumber.
"""
from __future__ import annotations

import numpy as np

#: Stream name -> its fixed number. Extra indices in brackets.
STREAMS = {
    # MIMIC-CXR(-JPG)
    "mimic_cohort": 1,             # patients, study counts, ids, splits, sex, first study day
    "mimic_study": 2,              # [study index]: report, findings, protocol, dates, dicom ids
    "mimic_patient": 3,            # [subject_id]: anatomy (the same in every study)
    "mimic_image": 4,              # [study index, view index]: pose, exposure, finding details
    "mimic_edge_cases": 5,         # which training studies get an edge case
    # learnability check
    "learnability_image": 7,       # [image index]: anatomy, view, size, drawing
    "learnability_labels": 8,      # label sets and findings
    # CheXpert test
    "chexpert_test_labels": 10,    # label sets, findings, sex
    "chexpert_test_views": 11,     # views and sizes
    "chexpert_test_patient": 12,   # [study index]: anatomy
    "chexpert_test_image": 13,     # [study index, view index]: drawing
    # CheXpert valid
    "chexpert_valid_labels": 20,   # label sets, findings, sex
    "chexpert_valid_views": 21,    # ages, views and sizes
    "chexpert_valid_patient": 22,  # [study index]: anatomy
    "chexpert_valid_image": 23,    # [study index, view index]: drawing
    # PadChest
    "padchest_rows": 30,           # which CSV rows, which image is missing and which truncated
    "padchest_findings": 31,       # [row index]: finding details from the row's labels
    "padchest_patient": 32,        # [crc32 of PatientID]: anatomy
    "padchest_image": 33,          # [row index]: drawing
    # contact sheet
    "contact_sheet": 40,           # [tile index]: anatomy and drawing
    # DICOM copies (only with --dicom)
    "dicom_mimic": 50,             # [MIMIC image index]: photometric and transfer syntax of its DICOM
}


def stream_key(seed: int, name: str, *extra: int) -> tuple[int, ...]:
    """The seed sequence of stream `name` (``(seed, number, *extra)``), for a job that seeds its
    own generator in another process."""
    return (seed, STREAMS[name], *extra)


def rng(seed: int, name: str, *extra: int) -> np.random.Generator:
    """The generator of stream `name` for this seed (and these indices)."""
    return np.random.default_rng(stream_key(seed, name, *extra))
