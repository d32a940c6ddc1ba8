"""Images: a study's radiograph rendered in either view, and image files written in parallel.

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

from .canvas import Anatomy, Canvas, anatomy_with, sample_anatomy, sample_pose
from .frontal import FRONTAL_FINDINGS, draw_frontal_anatomy
from .labels import Finding
from .lateral import LATERAL_FINDINGS, draw_lateral_anatomy

INTERNAL_SIZE = 224  # drawing resolution (long side); images are resized up to their file size


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


def _single_threaded_opencv() -> None:
    cv2.setNumThreads(1)   # a worker process: parallelism comes from the processes


def parallel_map(func, items: list, workers: int):
    """``func`` over ``items`` in order, in ``workers`` processes (:func:`worker_pool.imap`: spawned,
    never re-running the caller's ``__main__``, an error rather than a hang if one dies)."""
    return worker_pool.imap(func, items, workers, batch=8, initializer=_single_threaded_opencv,
                            what="phantom drawing worker")


def write_images(jobs: list[ImageJob], workers: int) -> None:
    """Write all images, in parallel; each job carries its own seeds, so the bytes do not
    depend on the number of workers or their order."""
    for _ in tqdm(parallel_map(write_image, jobs, workers), total=len(jobs), desc="images", unit="img"):
        pass
