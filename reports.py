"""Radiology report text -> the caption the model trains on (the IMPRESSION section).

Two rules: ``chexzero``, the original's token rule reproduced exactly (:func:`chexzero_impression`),
and ``mimic``, the official MIMIC-CXR section parser's choice, re-implemented from its description
(:func:`mimic_impression`). :func:`write_report_csv` writes the ``filename,impression`` CSV that
training reads, one row per image. The original's line helpers (``section_start``, ``section_end``,
``getIndexOfLast``) live here too. All of these stay importable from ``data_process``, where the
original had them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm import tqdm

#: The caption of a report without an ``IMPRESSION:`` token (the original's literal).
NO_IMPRESSION = "NO IMPRESSION"


def report_path(cxr_path: str, txt_folder: str) -> str:
    """Report of the study an image belongs to: ``<txt_folder>/pXX/pXXXXXXXX/sXXXXXXXX.txt``
    (works with or without a trailing slash on ``txt_folder``)."""
    parts = Path(cxr_path).parts
    if len(parts) < 4:
        raise ValueError(f"{cxr_path}: expected .../pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg")
    group, patient, study = parts[-4], parts[-3], parts[-2]
    return os.path.join(txt_folder, group, patient, study + ".txt")


def read_report(path: str) -> str:
    """Report text, with a clear error when the file is missing or not text."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"report not found: {path}. Check --radiology_reports_path (the folder holding p10..p19 "
            f"of mimic-cxr-reports), or pass --missing_report skip to drop its images.") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"report {path} is not UTF-8 text: {e}") from None


def _first_index(tokens: list[str], *candidates: str) -> int | None:
    """Index of the first occurrence of the first candidate present (the original's elif chain)."""
    for c in candidates:
        if c in tokens:
            return tokens.index(c)
    return None


# The original's line-based helpers (unused by its pipeline, kept for notebooks that import them).
# A section header line: optional indent, then capitals (and " ()/,-") ending in a colon, e.g.
# " IMPRESSION:" or " RECOMMENDATION(S):", the headers of MIMIC-CXR reports.
_SECTION_HEADER_LINE = re.compile(r"\s*[A-Z][A-Z ()/,-]*:")


def section_start(lines: Sequence[str], section: str = " IMPRESSION") -> int:
    """Index of the first line that starts with ``section`` (MIMIC-CXR indents its headers by one
    space, hence the default ``" IMPRESSION"``), or -1 when no line does."""
    for idx, line in enumerate(lines):
        if line.startswith(section):
            return idx
    return -1


def section_end(lines: Sequence[str], section_start: int) -> int:
    """End (exclusive) of the section whose header is line ``section_start``: the next line that is a
    section header (``" RECOMMENDATION(S): ..."``, ``" NOTIFICATION: ..."``...), else ``len(lines)``;
    ``lines[start:end]`` is the section. -1 when ``section_start`` is -1 (no such section).

    The original left this a stub that returned None.
    """
    if section_start < 0:
        return -1
    for idx in range(section_start + 1, len(lines)):
        if _SECTION_HEADER_LINE.match(lines[idx]):
            return idx
    return len(lines)


def getIndexOfLast(l: Sequence, element: object) -> int:  # noqa: E741 - the original's names
    """Index of the last occurrence of ``element`` in ``l``; ValueError when it does not occur."""
    for idx in range(len(l) - 1, -1, -1):
        if l[idx] == element:
            return idx
    raise ValueError(f"{element!r} is not in the list")


def chexzero_impression(text: str) -> str:
    """CheXzero's impression rule, exactly.

    Whitespace-split tokens; start after the *last* exact token ``IMPRESSION:``; stop at the
    first ``RECOMMENDATION(S):``/``RECOMMENDATION:``/``RECOMMENDATIONS:`` and/or the first
    ``NOTIFICATION:``/``NOTIFICATIONS:`` (the earlier of the two), searched over the whole
    report, with a match at token 0 counting as absent; tokens re-joined by single spaces.
    No ``IMPRESSION:`` token gives the literal ``NO IMPRESSION`` (so do ``CONCLUSION:``,
    ``Impression:`` and a glued ``IMPRESSION:No``); a NOTIFICATION before the impression
    gives an empty string.
    """
    tokens = text.split()
    if "IMPRESSION:" not in tokens:
        return NO_IMPRESSION
    begin = len(tokens) - 1 - tokens[::-1].index("IMPRESSION:") + 1
    ends = [e for e in (_first_index(tokens, "RECOMMENDATION(S):", "RECOMMENDATION:", "RECOMMENDATIONS:"),
                        _first_index(tokens, "NOTIFICATION:", "NOTIFICATIONS:")) if e]
    return " ".join(tokens[begin:min(ends)] if ends else tokens[begin:])


# Official MIMIC-CXR section parser (MIT-LCP/mimic-cxr txt/section_parser.py and
# create_section_files.py), re-implemented from its documented behaviour. The tables below
# are its data: header synonyms and typos, whole-study title patterns, per-study overrides.
_MIMIC_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
_MIMIC_SECTION_NAMES = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison",
    "indication": "indication", "findings": "findings", "examination": "examination",
    "technique": "technique", "history": "history", "comparisons": "comparison",
    "clinical history": "history", "reason for examination": "indication",
    "notification": "notification", "reason for exam": "indication",
    "clinical information": "history", "exam": "examination", "clinical indication": "indication",
    "conclusion": "impression", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment",
    "findings and impression": "impression", "wet read": "wet read", "comparison film": "comparison",
    "recommendations": "recommendations", "findings/impression": "impression", "pfi": "history",
    "recommendation": "recommendations", "wetread": "wet read",
    "ndication": "impression",  # sic: the official table maps this typo to impression
    "impresson": "impression", "imprression": "impression", "imoression": "impression",
    "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "findings/ impression": "impression", "finding": "findings", "findins": "findings",
    "findindgs": "findings", "findgings": "findings", "findngs": "findings", "findnings": "findings",
    "finidngs": "findings", "idication": "indication", "reference findings": "findings",
    "comparision": "comparison", "comparsion": "comparison", "comparrison": "comparison",
    "comparisions": "comparison",
}
_MIMIC_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
_MIMIC_WHOLE_STUDY = re.compile(
    "chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|"
    "two views|frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|"
    "frontal semi-upright|ribs|pa and lat")
_MIMIC_CUSTOM_SECTION = {
    "s50913680": "recommendations", "s59363654": "examination", "s59279892": "technique",
    "s59768032": "recommendations", "s57936451": "indication", "s50058765": "indication",
    "s53356173": "examination", "s53202765": "technique", "s50808053": "technique",
    "s51966317": "indication", "s50743547": "examination", "s56451190": "note",
    "s59067458": "recommendations", "s59215320": "examination", "s55124749": "indication",
    "s54365831": "indication", "s59087630": "recommendations", "s58157373": "recommendations",
    "s56482935": "recommendations", "s58375018": "recommendations", "s54654948": "indication",
    "s55157853": "examination", "s51491012": "history",
}
_MIMIC_CUSTOM_SLICE = {
    "s50525523": (201, 349), "s57564132": (233, 554), "s59982525": (313, 717),
    "s53488209": (149, 475), "s54875119": (234, 988), "s50196495": (59, 399),
    "s56579911": (59, 218), "s52648681": (292, 631), "s59889364": (172, 453),
    "s53514462": (73, 377), "s59505494": (59, 450), "s53182247": (59, 412),
    "s51410602": (47, 320), "s56412866": (522, 822), "s54986978": (59, 306),
    "s59003148": (262, 505), "s57150433": (61, 394), "s56760320": (219, 457),
    "s59562049": (158, 348), "s52674888": (145, 296), "s55258338": (192, 568),
    "s59330497": (140, 655), "s52119491": (179, 454), "s58235663": (0, 0), "s50798377": (0, 0),
    "s54168089": (0, 0), "s53071062": (0, 0), "s56724958": (0, 0), "s54231141": (0, 0),
    "s53607029": (0, 0),
}
MIMIC_PRIORITY = ("impression", "findings", "last_paragraph", "comparison")


def _normalize_section_name(name: str) -> str:
    name = name.lower().strip()
    if name in _MIMIC_SECTION_NAMES:
        return _MIMIC_SECTION_NAMES[name]
    for main in _MIMIC_MAIN_SECTIONS:
        if main in name:
            return main
    return "findings" if _MIMIC_WHOLE_STUDY.search(name) else name


def mimic_sections(text: str) -> list[tuple[str, str]]:
    """Split a report into (normalized name, raw text) sections as the official parser does.

    A header is ``\\n`` + one space + ALL-CAPS name + ``:`` + one whitespace character; the
    next header is looked for only from the first newline after a section starts. Text before
    the first header is ``preamble``; no header at all gives one ``full report`` section.
    Empty impression/findings sections are dropped; if neither remains, everything after the
    first `` `` blank line of the last section becomes ``last_paragraph``.
    """
    match = _MIMIC_HEADER.search(text)
    if match is None:
        sections = [("full report", text)]
    else:
        sections = [("preamble", text[:match.start(1)])]
        while match:
            name, start = match.group(1), match.end()
            newline = text.find("\n", start)
            match = _MIMIC_HEADER.search(text, newline if newline != -1 else start)
            sections.append((name, text[start:match.start() if match else len(text)]))
    sections = [(_normalize_section_name(n), body) for n, body in sections]
    sections = [(n, body) for n, body in sections if not (n in ("impression", "findings") and not body.strip())]
    names = {n for n, _ in sections}
    if "impression" not in names and "findings" not in names and "\n \n" in sections[-1][1]:
        last_name, last_body = sections[-1]
        first, *rest = last_body.split("\n \n")
        sections[-1] = (last_name, first)
        sections.append(("last_paragraph", "\n \n".join(rest)))
    return sections


def _last_section(sections: list[tuple[str, str]], name: str) -> str | None:
    for n, body in reversed(sections):
        if n == name:
            return body.strip()
    return None


def mimic_impression(text: str, study: str | None = None) -> str:
    """The official MIMIC-CXR selection (create_section_files.py): the last section of the
    first name present in impression > findings > last_paragraph > comparison, stripped;
    empty string if none. ``study`` (``s5xxxxxxx``) enables the official per-study overrides
    (a raw character slice, or a named section for mis-labelled impressions)."""
    if study in _MIMIC_CUSTOM_SLICE:
        a, b = _MIMIC_CUSTOM_SLICE[study]
        return text[a:b]
    sections = mimic_sections(text)
    if study in _MIMIC_CUSTOM_SECTION:
        chosen = _last_section(sections, _MIMIC_CUSTOM_SECTION[study])
        if chosen is not None:
            return chosen
    for name in MIMIC_PRIORITY:
        chosen = _last_section(sections, name)
        if chosen is not None:
            return chosen
    return ""


IMPRESSION_RULES = ("chexzero", "mimic")


def extract_impression(text: str, rule: str = "chexzero", study: str | None = None) -> str:
    """Caption of one report under ``rule``: ``chexzero`` (the original) or ``mimic`` (official
    parser, whitespace collapsed to single spaces so every caption is one CSV line)."""
    if rule == "chexzero":
        return chexzero_impression(text)
    if rule == "mimic":
        return " ".join(mimic_impression(text, study).split())
    raise ValueError(f"unknown impression rule {rule!r}; choose from {IMPRESSION_RULES}")


def impressions_for(cxr_paths: Sequence[str], txt_folder: str, rule: str = "chexzero"
                    ) -> tuple[list[str], list[str]]:
    """(filename, impression) for every image, one row per image, each report read once."""
    cache: dict[str, str] = {}
    filenames, impressions = [], []
    for cxr_path in tqdm(cxr_paths, desc="reports", unit="img", mininterval=2):
        txt = report_path(cxr_path, txt_folder)
        if txt not in cache:
            study = Path(txt).stem
            cache[txt] = extract_impression(read_report(txt), rule, study)
        filenames.append(Path(txt).name)
        impressions.append(cache[txt])
    return filenames, impressions


def write_report_csv(cxr_paths: Iterable[str], txt_folder: str, out_path: str, rule: str = "chexzero") -> None:
    """Write ``filename,impression`` with one row per image, aligned with ``cxr_paths``.

    ``filename`` is the study's report name (``s5xxxxxxx.txt``); images of one study share the
    caption. A missing report raises FileNotFoundError naming it.
    """
    filenames, impressions = impressions_for([str(p) for p in cxr_paths], txt_folder, rule)
    pd.DataFrame({"filename": filenames, "impression": impressions}).to_csv(out_path, index=False)
