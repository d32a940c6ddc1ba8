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
region, and a label without one, is simply absent.

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

from errors import UserError
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


def rle_problem(rle: object) -> str:
    """Why ``rle`` is not a valid uncompressed COCO RLE, in a few words ("" when it is one)."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        return 'not an uncompressed RLE ({"size": [height, width], "counts": [...]})'
    size, counts = np.asarray(rle["size"]), np.asarray(rle["counts"])
    if size.shape != (2,) or size.dtype.kind not in "iu" or (size < 0).any():
        return f"RLE size {rle['size']!r} is not [height, width]"
    if counts.ndim != 1 or (counts.size and counts.dtype.kind not in "iu") or (counts < 0).any():
        return "RLE counts are not a list of non-negative whole numbers"
    if int(counts.sum()) != int(size.prod()):
        return f"RLE counts add up to {int(counts.sum())}, not {size[0]} x {size[1]} = {int(size.prod())}"
    return ""


def rle_decode(rle: Mapping) -> np.ndarray:
    """The bool (height, width) mask of an uncompressed COCO RLE; UserError for an invalid one
    (:func:`rle_problem`)."""
    problem = rle_problem(rle)
    if problem:
        raise UserError(problem)
    values = np.arange(len(rle["counts"])) % 2 == 1
    height, width = (int(x) for x in rle["size"])
    return np.repeat(values, np.asarray(rle["counts"], dtype=np.int64)).reshape((height, width), order="F")


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
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such segmentation file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the segmentation file ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a JSON segmentation file ({e.msg}, line {e.lineno})") from None
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
