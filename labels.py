"""The label names and prompt wordings, in one place.

Every module that names a CheXpert observation, averages the competition labels, words a prompt
or looks for PadChest's label CSV takes it from here; the older names stay importable where they
were (``zero_shot.CHEXPERT_LABELS``, ``zero_shot.PAIR_TEMPLATE``, ``eval.COMPETITION_LABELS``,
``preprocess_train_data.CHEXPERT_LABELS``, ``preprocess_train_data.PADCHEST_CSV``).

The 14 CheXpert observations come in two orders, and both matter:

* ``CHEXPERT_CSV_ORDER``: the column order of CheXpert's own CSVs (train.csv, valid.csv, the test
  set's groundtruth.csv), which the preprocessing reads and writes;
* ``CHEXPERT_EVAL_ORDER``: the order the original CheXzero evaluates in (its notebook's
  ``cxr_labels``), which is alphabetical, and is therefore derived here from the other one.

The phantom generator (``phantom/``) keeps its own copies of these names on purpose: it stands in
for the datasets, so it spells their formats independently, and a test checks that the two agree.
"""
from __future__ import annotations

import ast
import math
import re

#: The 14 CheXpert observations in CheXpert's CSV column order.
CHEXPERT_CSV_ORDER = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
#: The same 14 in the original CheXzero's evaluation order (alphabetical), a list as CheXzero's.
CHEXPERT_EVAL_ORDER = sorted(CHEXPERT_CSV_ORDER)

#: The 5 CheXpert competition labels: the paper's headline "mean" averages only these.
COMPETITION_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

#: The original (positive, negative) prompt templates: "Pleural Effusion" vs "no Pleural Effusion".
PAIR_TEMPLATE = ("{}", "no {}")
#: The same pair as sentences. A text tower trained from scratch on impressions that end with a
#: full stop has almost only seen end-of-text after "."; the demo scores with these
#: (bench/README.md, "Prompts").
SENTENCE_PAIR_TEMPLATE = ("{}.", "no {}.")

# prompt_style="negation_aware" (zero_shot.prompt_texts). Labels that name a normal study get these
# normal-study impressions (the commonest MIMIC-CXR and Indiana University wordings) as extra
# positives, and as negative the average of common affirmative findings: a text that asserts an
# abnormality, instead of "no No Finding", which the text encoder reads as more normal than
# "No Finding" itself.
NORMAL_LABELS = ("no finding", "normal")
NORMAL_PROMPTS = ("no acute cardiopulmonary process", "no acute cardiopulmonary abnormality",
                  "normal chest x-ray")
ABNORMAL_PROMPTS = ("pleural effusion", "cardiomegaly", "pulmonary edema", "consolidation",
                    "atelectasis", "pneumothorax", "lung opacity")
# Other negated labels ("no pneumothorax") get the un-negated finding as their negative.
NEGATION_PREFIXES = ("no ", "without ", "absence of ")

#: PadChest's label CSV, as the release names it (the preprocessing also accepts it gzipped).
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


# PadChest's Labels column: a stringified Python list per image, read without eval.
_QUOTED = re.compile(r"'([^'\\]*)'")
_SIMPLE_STR_LIST = re.compile(r"\[\s*(?:'[^'\\]*'\s*(?:,\s*'[^'\\]*'\s*)*)?\]")


def parse_padchest_labels(value: object) -> list[str]:
    """PadChest ``Labels`` cell -> clean label list.

    The cell is a stringified Python list (``['pleural effusion', ' cardiomegaly ']``), ``[]``
    or NaN. Labels are stripped, inner whitespace collapsed, lower-cased ('COPD signs' ->
    'copd signs'), empty entries and duplicates dropped. Anything else raises ValueError.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    text = str(value).strip()
    if not text:
        return []
    if _SIMPLE_STR_LIST.fullmatch(text):  # the common case, 20x faster than literal_eval
        items = _QUOTED.findall(text)
    else:
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"PadChest Labels cell is not a list: {text[:120]!r}") from None
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"PadChest Labels cell is not a list of strings: {text[:120]!r}")
    labels: list[str] = []
    for s in items:
        s = " ".join(s.split()).lower()
        if s and s not in labels:
            labels.append(s)
    return labels
