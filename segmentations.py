"""Ground-truth region files: where each finding lies in an image, as CheXlocalize stores it.

Why: a saliency map (or any localisation) can only be scored against regions known to hold the
finding. CheXlocalize (Saporta et al. 2022) ships its radiologists' regions for the CheXpert
valid and test sets as ``gt_segmentations_{val,test}.json``; the phantom generator writes its own
painted regions in the same form (``python -m phantom``, LAYOUT), so code written against one
reads the other.

The file: a JSON object mapping an image key (:func:`segmentation_key`, e.g.
``patient64741_study1_view1_frontal``) to an object mapping CheXpert label names to a binary mask
at the image file's own pixel size, in COCO's *uncompressed* run-length encoding
(:func:`rle_encode`): ``{"size": [height, width], "counts": [zeros, ones, zeros, ...]}``, runs
taken down the columns (column-major, Fortran order) and starting with a run of zeros (0 when
the first pixel is set), as ``pycocotools.mask.frPyObjects`` reads it. An image without any
region, and a label without one, is simply absent. CheXlocalize's own files hold the same runs in
COCO's *compressed* string form (``"counts": "<ascii>"``, pycocotools' ``encode``); every reader
here accepts both, so the real ``gt_segmentations_test.json`` scores the same way as the phantoms'.

:func:`model_masks` turns the regions of one label into masks on the model's input grid (the
h5 images of preprocessing), so mask pixel (y, x) lies over h5 pixel (y, x).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from errors import UserError, read_json
from image_reader import RESOLUTION, scaled_size

#: The folders an image key is made of: ``.../patientNNNNN/studyK/<file>``.
PATIENT, STUDY = re.compile(r"patient\d+"), re.compile(r"study\d+")


def rle_encode(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a 2-D mask (nonzero = inside): ``{"size": [h, w], "counts": [...]}``,
    run lengths down the columns, alternating outside / inside and starting outside."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D (height, width), got shape {mask.shape}")
    flat = (mask != 0).ravel(order="F")
    if not flat.size:
        return {"size": list(mask.shape), "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return {"size": list(mask.shape), "counts": ([0] + counts) if flat[0] else counts}


def counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed form of RLE counts (pycocotools' ``rleToString``): from the fourth run on,
    each count is stored as its difference from the count two runs before, and every number is
    written in 5-bit groups, least significant first, as characters from '0' (48) on, bit 0x20
    meaning "another group follows" and bit 0x10 of the last group carrying the sign."""
    chars = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        while True:
            group, x = x & 0x1F, x >> 5
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(48 + (group | (0x20 if more else 0))))
            if not more:
                break
    return "".join(chars)


def counts_from_string(text: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (the inverse of :func:`counts_to_string`)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        x, shift, more = 0, 0, True
        while more:
            if position == len(text):
                raise ValueError("the compressed RLE string ends inside a number")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {text[position]!r} is not part of a compressed RLE")
            x |= (group & 0x1F) << shift
            more, position, shift = bool(group & 0x20), position + 1, shift + 5
            if not more and group & 0x10:
                x |= -1 << shift
        counts.append(x + (counts[-2] if len(counts) > 2 else 0))
    return counts


def _counts(rle: Mapping) -> object:
    """The run lengths of an RLE, decompressing CheXlocalize's string form."""
    return counts_from_string(rle["counts"]) if isinstance(rle["counts"], str) else rle["counts"]


def rle_problem(rle: object) -> str:
    """Why ``rle`` is not a valid COCO RLE (uncompressed or compressed), in a few words ("" when it is one)."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        return 'not a COCO RLE ({"size": [height, width], "counts": [...] or "..."})'
    try:
        counts = np.asarray(_counts(rle))
    except ValueError as e:
        return f"RLE counts: {e}"
    size = np.asarray(rle["size"])
    if size.shape != (2,) or size.dtype.kind not in "iu" or (size < 0).any():
        return f"RLE size {rle['size']!r} is not [height, width]"
    if counts.ndim != 1 or (counts.size and counts.dtype.kind not in "iu") or (counts < 0).any():
        return "RLE counts are not a list of non-negative whole numbers"
    if int(counts.sum()) != int(size.prod()):
        return f"RLE counts add up to {int(counts.sum())}, not {size[0]} x {size[1]} = {int(size.prod())}"
    return ""


def rle_decode(rle: Mapping) -> np.ndarray:
    """The bool (height, width) mask of a COCO RLE, uncompressed or compressed; UserError for an
    invalid one (:func:`rle_problem`)."""
    problem = rle_problem(rle)
    if problem:
        raise UserError(problem)
    counts = np.asarray(_counts(rle), dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    height, width = (int(x) for x in rle["size"])
    return np.repeat(values, counts).reshape((height, width), order="F")


def segmentation_key(image_path: str | os.PathLike) -> str:
    """CheXlocalize's key of an image: its patient, study and file stem joined by ``_``, e.g.
    ``.../test/patient64741/study1/view1_frontal.jpg`` -> ``patient64741_study1_view1_frontal``."""
    parts = PurePosixPath(str(image_path).replace("\\", "/")).parts
    if len(parts) < 3 or not PATIENT.fullmatch(parts[-3]) or not STUDY.fullmatch(parts[-2]):
        raise UserError(f"{image_path}: not a CheXpert image path (.../patientNNNNN/studyK/viewX_frontal.jpg), "
                        "so it has no segmentation key")
    return f"{parts[-3]}_{parts[-2]}_{PurePosixPath(parts[-1]).stem}"


def read_segmentations(path: str | os.PathLike) -> dict:
    """A region file: {image key: {label: RLE}}; a UserError naming the file when it is missing, not
    JSON, not that shape, or holds an RLE whose runs do not fill its size."""
    data = read_json(path, "segmentation file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a segmentation file holds an object of image keys, not a {type(data).__name__}")
    for key, labels in data.items():
        if not isinstance(labels, dict):
            raise UserError(f"{path}: {key}: an object of label -> RLE expected, not a {type(labels).__name__}")
        for label, rle in labels.items():
            problem = rle_problem(rle)
            if problem:
                raise UserError(f"{path}: {key} / {label}: {problem}")
    return data


def write_segmentations(path: str | os.PathLike, segmentations: Mapping[str, Mapping[str, Mapping]]) -> None:
    """Write a region file: valid JSON with one image per line, keys sorted (the same regions give
    the same bytes)."""
    lines = [f"{json.dumps(key)}:{json.dumps(segmentations[key], sort_keys=True, separators=(',', ':'))}"
             for key in sorted(segmentations)]
    Path(path).write_text("{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n")


def model_masks(segmentations: Mapping, image_paths: Sequence[str], label: str,
                resolution: int = RESOLUTION) -> np.ndarray:
    """(N, resolution, resolution) bool masks of ``label`` for the images at ``image_paths``, in
    the h5's geometry: each mask goes through the image's own transform (image_reader.preprocess:
    the long side LANCZOS-resized to ``resolution`` with the same truncated size, pasted centred
    at the same floor offsets), resampled as 0/1 floats with the same LANCZOS filter and
    thresholded at 0.5. An image with no region for the label gets an all-False mask."""
    masks = np.zeros((len(image_paths), resolution, resolution), dtype=bool)
    for i, path in enumerate(image_paths):
        rle = segmentations.get(segmentation_key(path), {}).get(label)
        if rle is None:
            continue
        mask = rle_decode(rle)
        width, height = scaled_size((mask.shape[1], mask.shape[0]), resolution)
        resampled = Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.Resampling.LANCZOS)
        left, top = (resolution - width) // 2, (resolution - height) // 2
        masks[i, top:top + height, left:left + width] = np.asarray(resampled) >= 0.5
    return masks
