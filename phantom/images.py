"""Images: a study's radiograph rendered in either view (and, on request, the region of each
finding drawn on it), and image files written in parallel.

`parallel_map` is the package's one way to use worker processes (the image writer and the learnability check use it).
Each ImageJob carries the keys of its own random streams (streams.stream_key), so an image's
bytes depend neither on the number of workers nor on the order they run in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import worker_pool
from segmentations import rle_encode

from .canvas import Anatomy, Canvas, anatomy_with, sample_anatomy, sample_pose
from .frontal import FRONTAL_FINDINGS, draw_frontal_anatomy
from .labels import Finding
from .lateral import LATERAL_FINDINGS, draw_lateral_anatomy

INTERNAL_SIZE = 224  # drawing resolution (long side); images are resized up to their file size
#: Findings drawn as changed anatomy -> the Canvas part that is their region (where it is drawn:
#: the lateral view has only the heart; its Enlarged Cardiomediastinum is painted like the others).
ANATOMY_REGIONS = {"Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "mediastinum", "Fracture": "fracture"}


def render(view: str, anatomy: Anatomy, findings: list[Finding], shape: tuple[int, int],
           rng: np.random.Generator, regions: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A radiograph (float 0..1, `shape`) of this patient showing exactly these findings.
    `view` is PA, AP (frontal) or LATERAL.

    Given a dict, ``regions`` is filled with each finding's region (label -> bool mask, `shape`):
    for a painted finding, the pixels whose attenuation its drawing changed visibly
    (Canvas.visible: at least canvas.VISIBLE_CHANGE of the window), judged against the film as it
    was just before it (a finding painted over an earlier one's opacity may show little); for one
    drawn as changed anatomy, the structure (ANATOMY_REGIONS). Recording reads the layers only: it
    draws no random numbers, so the image is the same with or without it."""
    a = anatomy_with(anatomy, findings, rng)
    c = Canvas(shape, sample_pose(rng, shape, a, view), a.lung_height)
    lateral = view == "LATERAL"
    (draw_lateral_anatomy if lateral else draw_frontal_anatomy)(c, a, rng)
    if regions is not None:
        regions.update({f.label: c.parts[ANATOMY_REGIONS[f.label]] >= 0.5 for f in findings
                        if ANATOMY_REGIONS.get(f.label) in c.parts})
    for label, draw in (LATERAL_FINDINGS if lateral else FRONTAL_FINDINGS).items():
        for f in findings:
            if f.label == label:
                before = None if regions is None else c.attenuation()
                draw(c, a, f, rng)
                if before is not None:
                    changed = c.visible(c.attenuation() - before)
                    regions[label] = (regions[label] | changed) if label in regions else changed
    return c.expose(rng)


@dataclass
class ImageJob:
    """Everything a worker needs to draw and write one image file."""

    path: str
    view: str                      # PA, AP or LATERAL
    findings: list[Finding]
    female: bool
    patient_seed: tuple[int, ...]  # stream keys; the same patient has the same anatomy in every study
    image_seed: tuple[int, ...]
    size: tuple[int, int]          # (width, height) of the file
    bits: int = 8                  # 8: 8-bit JPEG; 12: 16-bit PNG holding 12-bit values
    damage: str = ""               # "", "truncated" or "empty"
    regions: bool = False          # also return the findings' regions (ground-truth masks)


def write_image(job: ImageJob) -> dict[str, dict] | None:
    """Draw the image at the internal resolution, resize it to the file size and write it. With
    ``job.regions``, return each drawn finding's non-empty region at the file size as COCO RLE
    (segmentations.rle_encode), label -> RLE: resized like the image (bilinear) and thresholded
    at 0.5; otherwise None."""
    width, height = job.size
    scale = INTERNAL_SIZE / max(width, height)
    anatomy = sample_anatomy(np.random.default_rng(job.patient_seed), job.female)
    regions: dict[str, np.ndarray] | None = {} if job.regions else None
    image = render(job.view, anatomy, job.findings, (round(height * scale), round(width * scale)),
                   np.random.default_rng(job.image_seed), regions)
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
    if regions is None:
        return None
    # Resized transposed, so each mask comes out column-major as the RLE runs (no copy to encode);
    # bilinear on 0/1 bytes rounds, which is thresholding at 0.5.
    masks = {label: cv2.resize(region.T.astype(np.uint8), (height, width), interpolation=cv2.INTER_LINEAR).T
             for label, region in sorted(regions.items())}
    return {label: rle_encode(mask) for label, mask in masks.items() if mask.any()}


def _single_threaded_opencv() -> None:
    cv2.setNumThreads(1)   # a worker process: parallelism comes from the processes


def parallel_map(func, items: list, workers: int):
    """``func`` over ``items`` in order, in ``workers`` processes (:func:`worker_pool.imap`: spawned,
    never re-running the caller's ``__main__``, an error rather than a hang if one dies)."""
    return worker_pool.imap(func, items, workers, batch=8, initializer=_single_threaded_opencv,
                            what="phantom drawing worker")


def write_images(jobs: list[ImageJob], workers: int) -> list[dict[str, dict] | None]:
    """Write all images, in parallel; each job carries its own seeds, so the bytes do not
    depend on the number of workers or their order. Returns write_image's regions, job by job."""
    return list(tqdm(parallel_map(write_image, jobs, workers), total=len(jobs), desc="images", unit="img"))
