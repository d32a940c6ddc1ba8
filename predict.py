"""Score your own chest X-rays with CheXzero checkpoints: image files in, probabilities out.

    python predict.py --images scans/ --out predictions.csv
    python predict.py --images list.txt more/*.png --labels "rib fracture" "pleural effusion" --out p.csv
    torchrun --nproc_per_node 4 predict.py --images scans/ --out predictions.csv

Every image gets the pixels of training and evaluation: ``data_process.load_cxr`` (the original
resize-and-pad to 320 px, decoded in worker processes), then on the device the one normalise +
resize to each model's input (:class:`cxr_data.DeviceTransform`). Each label's probability is the
original's exp(s+) / (exp(s+) + exp(s-)) on the cosines with its positive and negative prompt,
averaged over the checkpoints; on image files these are the numbers ``run_zero_shot.py`` gives on
the h5 that preprocessing makes from them.

Inputs (``--images``): image files (a file named explicitly is scored whatever its name), folders
(searched recursively for .jpg .jpeg .png .dcm .dicom and extensionless DICOM files), globs (each
match as if named), and lists: a .txt file with one path per line (blank lines and ``#`` comments
skipped) or a .csv file with a ``path`` or ``Path`` column. Relative paths in a list are taken from
the current folder, as in preprocessing's path CSVs. Paths are normalised (``scans//a.png`` is
``scans/a.png``); each path is scored once and gets one row, in the order it was first seen.

Outputs: ``--out`` (CSV ``path,<label>,...`` or, with ``--format jsonl``/a .jsonl name, one JSON
object per line) with a row per scored image, plus ``<label>_positive`` 0/1 columns with
``--thresholds`` (``p >= threshold``, from run_zero_shot.py's thresholds.csv; blank where the
file has no threshold). With ``--calibration calibration.json`` (written by run_zero_shot.py from
validation data; calibration.py) each ``<label>`` column is the calibrated probability, the raw
zero-shot probability stays in ``<label>_raw``, and ``<label>_positive`` still compares the raw
probability with the threshold, the scale on which run_zero_shot.py chose it (for Platt maps that is
the same as comparing the calibrated probability with the mapped threshold). A calibration file
that lacks a scored label, or was fitted with other prompts, is refused. ``<out stem>.failed.csv``
(``path,reason``) lists every input that could not be read; the rest are scored. Nothing scored,
or a user error (a missing input, a bad flag or file): one line on stderr and a non-zero exit.

Where-maps (``--maps DIR``, :mod:`maps`): for each scored image and each label (``--map_labels``,
default all) a map of where the label's score s+ - s- comes from, over the 320 x 320 padded image
the model scored (map pixel (y, x) over image pixel (y, x)). ``--map_method patch`` (default) scores
each image token of the last layer against the label's prompts in one pass; ``occlusion`` measures
the score's drop when a 64-px square is greyed out (81 passes per image). An ensemble's map is the
mean of the models' maps. Files, ``<name>`` being the image's file stem, with as many of its folders
as it takes to be unique (``patient64741_study1_view1_frontal``): ``DIR/<name>_<label slug>.png``,
the image with the map over it (red: pushes towards the label, blue: away; the maximum marked;
label, raw probability and method in the title), and ``DIR/<name>.npz`` with ``maps`` (C, 320, 320)
float16, ``probabilities``, ``labels`` and ``method``; ``DIR/maps.csv`` pairs each path with its
name. Unreadable images get no maps.

Under ``torchrun`` each process scores every WORLD_SIZE-th image on its own device (gloo on CPUs,
nccl on GPUs) and rank 0 writes one output in input order, the same file as one process.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

import calibration as cal
import data_process
import errors
import maps as where_maps
import worker_pool
import zero_shot as zs
from cxr_data import DeviceTransform, default_device
from errors import UserError
from eval import THRESHOLD_METRICS
from image_reader import DICOM_RULES, IMAGE_SUFFIXES, is_dicom
from labels import CHEXPERT_EVAL_ORDER, PAIR_TEMPLATE
from run_zero_shot import check_device, check_template, expand_model_paths

log = logging.getLogger("predict")

LIST_SUFFIXES = (".txt", ".csv")
FORMATS = ("csv", "jsonl")
PRECISIONS = ("fp32", "bf16")
DEFAULT_MODELS = "models/chexzero_weights"
class ImageInputError(UserError, FileNotFoundError):
    """An ``--images`` entry that names no image (also a FileNotFoundError)."""


# --------------------------------------------------------------------------- inputs
def find_images(folder: str | Path) -> list[str]:
    """Every image under ``folder`` (image suffixes in any case, extensionless DICOM files), sorted
    part by part; other files are counted in one log line."""
    found, skipped = [], {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and is_dicom(path)):
                found.append(path)
            else:
                skipped[suffix or "(none)"] = skipped.get(suffix or "(none)", 0) + 1
    if skipped:
        log.info("%s: skipped %s that are not images", folder, data_process.describe_skipped(skipped))
    return sorted(found, key=lambda p: Path(p).parts)


def read_path_list(path: str | Path) -> list[str]:
    """The image paths of a .txt list (one per line; blank lines and ``#`` comments skipped) or of a
    .csv list (its ``path`` or ``Path`` column, blank cells skipped)."""
    try:
        if Path(path).suffix.lower() == ".txt":
            lines = (line.strip() for line in Path(path).read_text().splitlines())
            return [line for line in lines if line and not line.startswith("#")]
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ImageInputError(f"--images {path}: not a readable list of paths ({' '.join(str(err).split())}); "
                              "pass a .txt file with one path per line or a .csv file with a 'path' column") from None
    column = next((c for c in ("path", "Path") if c in table.columns), None)
    if column is None:
        raise ImageInputError(f"--images {path}: the CSV has no 'path' or 'Path' column (its columns are "
                              f"{list(table.columns)}); name the column of image paths 'path'")
    return [p.strip() for p in table[column] if p.strip()]


def _expand(item: str) -> list[str]:
    path = Path(item)
    if path.is_dir():
        found = find_images(path)
        if not found:
            raise ImageInputError(f"--images {item}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)} or "
                                  "DICOM); check the path")
        return found
    if path.is_file():
        return read_path_list(path) if path.suffix.lower() in LIST_SUFFIXES else [item]
    if any(c in item for c in "*?["):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise ImageInputError(f"--images {item}: the pattern matches no file; check the path "
                                  "(quote the pattern so that the shell does not expand it)")
        return [path for match in matches for path in _expand(match)]
    raise ImageInputError(f"--images {item}: no such file or folder; check the path")


def expand_images(items: Sequence[str | Path]) -> list[str]:
    """The image paths that ``items`` name (files, folders, globs, .txt/.csv lists; see the module
    docstring), normalised, each once, in the order first seen."""
    paths = (os.path.normpath(path) for item in items for path in _expand(str(item)))
    return list(dict.fromkeys(paths))


# --------------------------------------------------------------------------- prompts and thresholds
def check_prompts(prompts: Mapping, source: str = "prompts") -> dict[str, dict[str, list[str]]]:
    """``{label: {"positive": [texts], "negative": [texts]}}`` checked: a non-empty list of non-empty
    texts on each side, nothing else. Raises a one-line :class:`UserError` naming ``source``."""
    if not isinstance(prompts, Mapping) or not prompts:
        raise UserError(f"{source}: expected a JSON object {{label: {{\"positive\": [...], \"negative\": [...]}}}}")
    checked = {}
    for label, sides in prompts.items():
        if not isinstance(sides, Mapping) or set(sides) != {"positive", "negative"}:
            raise UserError(f"{source}: {label!r} must map to {{\"positive\": [...], \"negative\": [...]}}, "
                            f"got {sides!r}")
        for side, texts in sides.items():
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise UserError(f"{source}: {label!r} {side}: expected a non-empty list of texts, got {texts!r}")
        checked[str(label)] = {side: list(texts) for side, texts in sides.items()}
    return checked


def read_prompts(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """A ``--prompts`` JSON file, checked by :func:`check_prompts`."""
    return check_prompts(errors.read_json(path, "prompts file", f"--prompts {path}"), f"--prompts {path}")


def label_prompts(labels: Sequence[str] | None, prompts: Mapping | None = None,
                  pair_template: Sequence[str] = PAIR_TEMPLATE, prompt_style: str = "chexzero"
                  ) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(labels, positive texts, negative texts). ``labels`` default: the keys of ``prompts`` when given,
    else the 14 CheXpert labels. A label in ``prompts`` gets its texts, any other
    :func:`zero_shot.prompt_texts` (``pair_template``, ``prompt_style``)."""
    prompts = check_prompts(prompts) if prompts is not None else {}
    labels = list(labels) if labels is not None else list(prompts) or list(CHEXPERT_EVAL_ORDER)
    clashes = sorted({label for label in labels if labels.count(label) > 1 or label == "path"})
    if clashes:
        raise UserError(f"labels {clashes}: each label must be named once and none may be 'path' (the output's "
                        "first column)")
    positives, negatives = zs.prompt_texts(labels, pair_template, prompt_style)
    for i, label in enumerate(labels):
        if label in prompts:
            positives[i], negatives[i] = prompts[label]["positive"], prompts[label]["negative"]
    return labels, positives, negatives


def read_thresholds(path: str | Path, labels: Sequence[str], metric: str = "mcc") -> pd.Series:
    """Per label the ``threshold_<metric>`` of a thresholds.csv as run_zero_shot.py writes it (columns
    ``label``, ``threshold_mcc``, ``threshold_f1``, ``threshold_youden``); NaN where none was chosen."""
    name = f"--thresholds {path}"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file; check the path") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{name}: not a readable CSV ({' '.join(str(err).split())})") from None
    column = f"threshold_{metric}"
    if "label" not in table.columns or column not in table.columns:
        raise UserError(f"{name}: expected columns 'label' and {column!r} (run_zero_shot.py writes thresholds.csv "
                        f"when given validation data), found {list(table.columns)}")
    thresholds = pd.to_numeric(table.set_index("label")[column], errors="coerce")
    missing = [label for label in labels if label not in thresholds.index]
    if missing:
        raise UserError(f"{name}: no threshold for {missing}; choose thresholds for these labels "
                        "(run_zero_shot.py --labels ...) or leave them out of --labels")
    return thresholds.loc[list(labels)]


def positive_columns(probabilities: pd.DataFrame, thresholds: pd.Series) -> pd.DataFrame:
    """``<label>_positive``: 1 where ``p >= threshold``, else 0; empty (NA) where the threshold is NaN.

    ``p`` is the raw probability, ``<label>_raw`` when the table has it (calibrated tables), the scale
    run_zero_shot.py chose the thresholds on."""
    columns = {}
    for label, threshold in thresholds.items():
        if np.isnan(threshold):
            log.warning("%s: the thresholds file has no threshold; %s_positive is left empty", label, label)
            columns[f"{label}_positive"] = pd.Series(pd.NA, index=probabilities.index, dtype="Int64")
        else:
            raw = probabilities.get(f"{label}_raw", probabilities[label])
            columns[f"{label}_positive"] = (raw >= threshold).astype("Int64")
    return pd.DataFrame(columns, index=probabilities.index)


# --------------------------------------------------------------------------- in-memory images
def to_pixels(image: np.ndarray | Image.Image, desired_size: int = data_process.RESOLUTION) -> np.ndarray:
    """A 2-D uint8/uint16 array or a PIL image -> the (320, 320) uint8 image :func:`data_process.load_cxr`
    makes of the same pixels in a file (uint16 scaled by its bit depth, then resize-and-pad)."""
    if isinstance(image, Image.Image):
        if image.mode in ("L", "RGB"):
            return np.asarray(data_process.preprocess(image, desired_size))
        if not image.mode.startswith(("I", "F")):   # palette, alpha, 1-bit: as OpenCV reads such files
            return np.asarray(data_process.preprocess(image.convert("RGB"), desired_size))
        image = np.asarray(image)
        if image.dtype.kind in "iu" and 0 <= image.min() and image.max() <= 65535:   # 16-bit grey: 'I;16', 'I'
            image = image.astype(np.uint16)
    array = np.asarray(image)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8 or uint16 grey image or a PIL image, got a {array.dtype} array "
                         f"of shape {array.shape}")
    return np.asarray(data_process.preprocess(Image.fromarray(data_process.to_uint8(array)), desired_size))


# --------------------------------------------------------------------------- the predictor
class Predictor:
    """Checkpoints loaded once, their text embeddings computed once; images scored in batches.

    ``model_paths``: checkpoint files, globs or folders (:func:`run_zero_shot.expand_model_paths`),
    each with its architecture read off the file. ``labels``, ``prompts``, ``pair_template``,
    ``prompt_style``: see :func:`label_prompts`. ``device`` default :func:`cxr_data.default_device`;
    ``precision`` default bf16 autocast on CUDA, fp32 elsewhere. ``dicom_rule``: how
    DICOM pixels become grey levels (:func:`image_reader.read_image`). ``num_workers`` decoding processes
    (default one per core; 0 or 1 decodes here). Every model stays in memory (the released ViT-B/32 is
    0.6 GB in fp32): the images stream through once, each decoded once and encoded once per model.
    ``calibration``: a calibration.json path or its dict (:mod:`calibration`), checked to cover the
    labels with the same prompts before any model loads; the label columns are then calibrated
    probabilities and ``<label>_raw`` the raw ones.
    """

    def __init__(self, model_paths: str | Path | Sequence[str | Path], labels: Sequence[str] | None = None,
                 prompts: Mapping | str | Path | None = None, device: torch.device | str | None = None,
                 pair_template: Sequence[str] = PAIR_TEMPLATE, prompt_style: str = "chexzero",
                 dicom_rule: str = "mimic", batch_size: int = 64, num_workers: int | None = None,
                 precision: str | None = None, progress: bool = True,
                 calibration: Mapping | str | Path | None = None) -> None:
        if isinstance(prompts, (str, Path)):
            prompts = read_prompts(prompts)
        if dicom_rule not in DICOM_RULES:
            raise ValueError(f"dicom_rule must be one of {DICOM_RULES}, got {dicom_rule!r}")
        self.labels, positives, negatives = label_prompts(labels, prompts, pair_template, prompt_style)
        self.model_paths = expand_model_paths([str(p) for p in (
            [model_paths] if isinstance(model_paths, (str, Path)) else model_paths)])
        self.calibration = None
        if calibration is not None:
            used = cal.prompt_table(self.labels, positives, negatives)
            self.calibration = (cal.read_calibration(calibration, self.labels, used)
                                if isinstance(calibration, (str, Path))
                                else cal.check_calibration(calibration, "calibration", self.labels, used))
            fitted_with = sorted(self.calibration.get("models", []))
            if fitted_with and fitted_with != sorted(Path(p).name for p in self.model_paths):
                log.warning("the calibration was fitted on the predictions of %s, not of these checkpoints: its "
                            "probabilities are calibrated for those", ", ".join(fitted_with))
        self.device = torch.device(device) if device is not None else default_device()
        precision = precision or ("bf16" if self.device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision, self.dicom_rule, self.batch_size, self.progress = precision, dicom_rule, batch_size, progress
        self.num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        self.models, self.weights, self.transforms = [], [], []
        for path in self.model_paths:
            model = zs.load_clip(path, pretrained=None, device=self.device)
            self.models.append(model)
            self.weights.append(zs.pair_weights(model, positives, negatives, model.context_length))
            self.transforms.append(DeviceTransform(model.visual.input_resolution))
        log.info("%d checkpoints, %d labels, on %s (%s)", len(self.models), len(self.labels), self.device, precision)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def score_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """(B, C) float32 ensemble probabilities of resize-and-padded uint8 images (:func:`to_pixels`)."""
        images = torch.from_numpy(np.stack(pixels)).unsqueeze(1).to(self.device)   # once for all models
        per_model = []
        for model, weights, transform in zip(self.models, self.weights, self.transforms):
            with self._autocast():
                features = zs.image_features(model, [{"img": images}], transform=transform)
            per_model.append(zs.pair_probabilities(features, weights))
        return np.mean(per_model, axis=0)

    def _score(self, n: int, decoded: Iterable[tuple[int, np.ndarray | None, str | None]]
               ) -> tuple[np.ndarray, list[str | None]]:
        """(n, C) probabilities, NaN where decoding failed, and the failure reasons (None where scored)."""
        probabilities = np.full((n, len(self.labels)), np.nan, dtype=np.float32)
        reasons: list[str | None] = [None] * n
        waiting: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            probabilities[[i for i, _ in waiting]] = self.score_pixels([p for _, p in waiting])
            bar.update(len(waiting))
            waiting.clear()

        with tqdm(total=n, unit="img", desc="images", disable=not self.progress, smoothing=0.1) as bar:
            for index, pixels, reason in decoded:
                if pixels is None:
                    reasons[index] = reason
                    bar.update(1)
                    continue
                waiting.append((index, pixels))
                if len(waiting) == self.batch_size:
                    flush()
            if waiting:
                flush()
        return probabilities, reasons

    def _decoded(self, paths: list[str]) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
        tasks = [(i, path, None) for i, path in enumerate(paths)]
        load = partial(data_process.load_task, resolution=data_process.RESOLUTION, fast_decode=False,
                       dicom_rule=self.dicom_rule)
        return worker_pool.imap(load, tasks, self.num_workers, initializer=data_process.init_worker,
                                what="decode worker")

    def _columns(self, probabilities: np.ndarray) -> pd.DataFrame:
        """A column per label: the probabilities, or with a calibration the calibrated ones followed
        by the raw ones as ``<label>_raw``."""
        raw = pd.DataFrame(probabilities, columns=self.labels)
        if self.calibration is None:
            return raw
        calibrated = cal.apply_calibration(probabilities, self.labels, self.calibration)
        return pd.concat([pd.DataFrame(calibrated, columns=self.labels), raw.add_suffix("_raw")], axis=1)

    def predict(self, paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
        """One row per image file (each path once, first-seen order): ``path``, a probability column
        per label (with a calibration: calibrated, then ``<label>_raw``), and ``error``: why the file
        could not be read (its probabilities NaN), else None."""
        paths = list(dict.fromkeys(str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)))
        with contextlib.closing(self._decoded(paths)) as decoded:
            probabilities, reasons = self._score(len(paths), decoded)
        for path, reason in zip(paths, reasons):
            if reason is not None:
                log.warning("%s: not scored: %s", path, reason)
        table = self._columns(probabilities)
        table.insert(0, "path", paths)
        table["error"] = reasons
        return table

    def predict_images(self, images: Sequence[np.ndarray | Image.Image]) -> pd.DataFrame:
        """A probability column per label for in-memory images (2-D uint8/uint16 arrays or PIL images,
        :func:`to_pixels`), one row each, in order: the numbers :meth:`predict` gives on the same
        pixels in a file."""
        pixels = [to_pixels(image) for image in images]
        probabilities, _ = self._score(len(pixels), ((i, p, None) for i, p in enumerate(pixels)))
        return self._columns(probabilities)

    def map_labels(self, labels: Sequence[str] | None) -> list[str]:
        """The labels to map: ``labels`` (each one of this predictor's) or, for None, all of them."""
        chosen = list(self.labels) if labels is None else list(labels)
        unknown = [label for label in chosen if label not in self.labels]
        if unknown or not chosen:
            raise UserError(f"map labels {unknown or chosen}: name one or more of the scored labels {self.labels} "
                            "(--map_labels must be among --labels)")
        return chosen

    def iter_maps(self, images: str | Path | Sequence[str | Path | np.ndarray | Image.Image], method: str = "patch",
                  labels: Sequence[str] | None = None, occlusion: where_maps.Occlusion = where_maps.Occlusion()
                  ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, np.ndarray | None, str | None]]:
        """Where-maps (:mod:`maps`) of image files and in-memory images, computed in batches and yielded one
        image at a time as (input index, its 320 x 320 uint8 pixels, maps (C, 320, 320) float32 over those
        pixels, raw ensemble probabilities (C,), None); an unreadable file yields (index, None, None,
        None, reason). In-memory images come first, then files in input order. ``labels``: see
        :meth:`map_labels`; ``method``: ``patch`` or ``occlusion``."""
        if method not in where_maps.MAP_METHODS:
            raise ValueError(f"method must be one of {where_maps.MAP_METHODS}, got {method!r}")
        items = [images] if isinstance(images, (str, Path)) else list(images)
        chosen = [self.labels.index(label) for label in self.map_labels(labels)]
        columns = chosen + [len(self.labels) + i for i in chosen]
        weights = [w[:, columns] for w in self.weights]
        files = [(i, str(item)) for i, item in enumerate(items) if isinstance(item, (str, Path))]

        def decoded() -> Iterator[tuple[int, np.ndarray | None, str | None]]:
            yield from ((i, to_pixels(item), None) for i, item in enumerate(items) if not isinstance(item, (str, Path)))
            with contextlib.closing(self._decoded([path for _, path in files])) as stream:
                yield from ((files[j][0], pixels, reason) for j, pixels, reason in stream)

        def mapped(batch: list[tuple[int, np.ndarray]]) -> Iterator[tuple]:
            pixels = torch.from_numpy(np.stack([p for _, p in batch])).to(self.device)
            with self._autocast():
                heat, probabilities = where_maps.ensemble_maps(self.models, weights, pixels, method,
                                                               occlusion=occlusion)
            bar.update(len(batch))
            yield from ((i, p, h, q, None) for (i, p), h, q in zip(batch, heat, probabilities))

        batch: list[tuple[int, np.ndarray]] = []
        with tqdm(total=len(items), unit="img", desc=f"{method} maps", disable=not self.progress) as bar:
            for index, pixels, reason in decoded():
                if pixels is None:
                    log.warning("%s: no map: %s", items[index], reason)
                    bar.update(1)
                    yield index, None, None, None, reason
                    continue
                batch.append((index, pixels))
                if len(batch) == min(self.batch_size, where_maps.MAP_BATCH):
                    yield from mapped(batch)
                    batch = []
            if batch:
                yield from mapped(batch)

    def maps(self, images: str | Path | Sequence[str | Path | np.ndarray | Image.Image], method: str = "patch",
             labels: Sequence[str] | None = None, occlusion: where_maps.Occlusion = where_maps.Occlusion()
             ) -> where_maps.WhereMaps:
        """:meth:`iter_maps` collected in input order: (N, C, 320, 320) float32 maps (NaN for an unreadable
        file; 400 kB per image and label, so iterate for many images) and (N, C) probabilities."""
        items = [images] if isinstance(images, (str, Path)) else list(images)
        chosen = self.map_labels(labels)
        shape = (len(items), len(chosen), data_process.RESOLUTION, data_process.RESOLUTION)
        result = where_maps.WhereMaps(chosen, method, np.full(shape, np.nan, np.float32),
                                      np.full(shape[:2], np.nan, np.float32), [None] * len(items))
        for index, _, heat, probabilities, reason in self.iter_maps(items, method, chosen, occlusion):
            if reason is None:
                result.maps[index], result.probabilities[index] = heat, probabilities
            result.errors[index] = reason
        return result


# --------------------------------------------------------------------------- processes
def process_group(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; with WORLD_SIZE > 1 the process group
    is started (nccl on CUDA, gloo on the CPU) and each process takes the GPU of its LOCAL_RANK."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    chosen = torch.device(device) if device is not None else default_device()
    if chosen.type == "cuda" and world > 1 and (device is None or chosen.index is None):
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return rank, world, chosen


def predict_sharded(predictor: Predictor, paths: list[str], rank: int, world: int) -> pd.DataFrame:
    """:meth:`Predictor.predict` of every ``world``-th path from ``rank``, gathered on every process
    back into input order (one process: the whole list)."""
    if world == 1:
        return predictor.predict(paths)
    shards: list[pd.DataFrame | None] = [None] * world
    dist.all_gather_object(shards, predictor.predict(paths[rank::world]))
    order = np.concatenate([np.arange(r, len(paths), world) for r in range(world)])
    return pd.concat(shards, ignore_index=True).set_axis(order).sort_index()


# --------------------------------------------------------------------------- outputs
def failed_path(out: str | Path) -> Path:
    """``predictions.csv`` -> ``predictions.failed.csv``: the list of inputs that were not scored."""
    return Path(out).with_suffix(".failed.csv")


def _write_atomically(path: Path, write) -> None:
    partial_path = path.with_name(path.name + ".partial")
    write(partial_path)
    os.replace(partial_path, path)


def write_outputs(table: pd.DataFrame, out: Path, fmt: str, thresholds: pd.Series | None = None) -> pd.DataFrame:
    """Write the scored rows of :meth:`Predictor.predict`'s table to ``out`` (csv or jsonl, with
    ``<label>_positive`` columns for ``thresholds``) and the failed ones to :func:`failed_path`;
    return the written table. Nothing scored: a :class:`UserError` after writing the failures."""
    failed = table["error"].notna()
    _write_atomically(failed_path(out), lambda p: table.loc[failed, ["path", "error"]].rename(
        columns={"error": "reason"}).to_csv(p, index=False))
    if not (~failed).any():
        first = table.loc[failed].iloc[0] if failed.any() else None
        example = f"; first: {first['path']}: {first['error']}" if first is not None else ""
        raise UserError(f"no image could be scored: all {len(table)} inputs failed (listed in {failed_path(out)})"
                        f"{example}")
    scored = table.loc[~failed].drop(columns="error").reset_index(drop=True)
    if thresholds is not None:
        scored = pd.concat([scored, positive_columns(scored, thresholds)], axis=1)
    if fmt == "jsonl":
        _write_atomically(out, lambda p: scored.to_json(p, orient="records", lines=True, double_precision=15))
    else:
        _write_atomically(out, lambda p: scored.to_csv(p, index=False))
    return scored


def write_maps(predictor: Predictor, table: pd.DataFrame, folder: Path, method: str,
               labels: Sequence[str] | None = None, rank: int = 0, world: int = 1) -> int:
    """Write the where-maps of every ``world``-th scored image of ``table`` (:meth:`Predictor.predict`'s,
    all inputs in input order) from ``rank`` into ``folder``: ``<name>_<label slug>.png`` overlays and
    ``<name>.npz`` (:func:`maps.write_image_maps`), ``<name>`` from :func:`maps.image_names` (the file
    stem, with folders where stems repeat). Rank 0 also writes ``maps.csv`` (``path,name``). Returns the
    number of images mapped."""
    names = dict(zip(table["path"], where_maps.image_names(table["path"].tolist())))
    scored = table.loc[table["error"].isna(), "path"].tolist()
    chosen = predictor.map_labels(labels)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder / "maps.csv", lambda p: pd.DataFrame(
            {"path": scored, "name": [names[path] for path in scored]}).to_csv(p, index=False))
    mine = scored[rank::world]
    done = 0
    for index, pixels, heat, probabilities, _ in predictor.iter_maps(mine, method, chosen):
        if pixels is not None:
            where_maps.write_image_maps(folder, names[mine[index]], pixels, heat, probabilities, chosen, method)
            done += 1
    return done


# --------------------------------------------------------------------------- the CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", nargs="+", required=True,
                   help="image files, folders (recursive), globs, .txt/.csv lists of paths")
    p.add_argument("--out", default="predictions.csv", help="output file (default: predictions.csv)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="csv or jsonl (default: jsonl for a .jsonl --out, else csv)")
    p.add_argument("--model_paths", nargs="+", default=[DEFAULT_MODELS],
                   help=f"checkpoints: files, globs, or folders of *.pt; the ensemble averages their "
                        f"probabilities (default: {DEFAULT_MODELS}, the released ensemble)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="findings to score, any text (default: the 14 CheXpert labels, or the --prompts file's)")
    p.add_argument("--prompts", default=None,
                   help='JSON {label: {"positive": [texts], "negative": [texts]}}: each side is the '
                        "normalised mean of its texts' embeddings")
    p.add_argument("--pair_template", nargs=2, default=list(PAIR_TEMPLATE), metavar=("POSITIVE", "NEGATIVE"),
                   help="prompt templates, '{}' is the label (default: '{}' 'no {}')")
    p.add_argument("--prompt_style", default="chexzero", choices=zs.PROMPT_STYLES,
                   help="chexzero: the original prompts for every label (inverts 'No Finding'); "
                        "negation_aware: labels that are negations get a correct negative")
    p.add_argument("--dicom_rule", default="mimic", choices=DICOM_RULES,
                   help="how DICOM pixels become grey levels: mimic (MIMIC-CXR-JPG's published conversion, what "
                        "CheXzero trained on; default) or window (the file's own display window)")
    p.add_argument("--thresholds", default=None,
                   help="thresholds.csv from run_zero_shot.py: adds <label>_positive columns (p >= threshold)")
    p.add_argument("--threshold_metric", default="mcc", choices=THRESHOLD_METRICS,
                   help="which of the file's thresholds (default: mcc)")
    p.add_argument("--calibration", default=None,
                   help="calibration.json from run_zero_shot.py: the label columns become calibrated "
                        "probabilities, the raw ones move to <label>_raw (thresholds still apply to those)")
    p.add_argument("--batch_size", type=errors.positive_int, default=64, help="images per batch (default 64)")
    p.add_argument("--num_workers", type=errors.non_negative_int, default=None,
                   help="decoding processes (default: one per core; 0 decodes in this process)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="bf16: autocast (the default on CUDA); fp32: the default elsewhere")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="also write where-maps into DIR: per image <name>_<label>.png overlays and <name>.npz "
                        "(maps (C, 320, 320) float16 over the 320-px padded image, probabilities, labels); "
                        "DIR/maps.csv pairs each path with its name")
    p.add_argument("--map_method", default=None, choices=where_maps.MAP_METHODS,
                   help="patch: each image token scored against the label's prompts (one pass, default); "
                        "occlusion: the score's drop when a 64-px square is greyed out (81 passes per image)")
    p.add_argument("--map_labels", nargs="+", default=None,
                   help="labels to map (default: every scored label); each must be one of the scored labels")
    args = p.parse_args(argv)
    if args.maps is None and (args.map_method is not None or args.map_labels is not None):
        p.error("--map_method and --map_labels need --maps DIR")
    args.map_method = args.map_method or "patch"
    for template in args.pair_template:
        check_template(p, template)
    if args.device is not None:
        check_device(p, args.device)
    if args.format is None:
        args.format = "jsonl" if args.out.lower().endswith(".jsonl") else "csv"
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Score the images and write the outputs (rank 0); return :meth:`Predictor.predict`'s table of
    every input (on every process)."""
    args = parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; pass a file name, e.g. {out / 'predictions.csv'}")
    if args.model_paths == [DEFAULT_MODELS] and not Path(DEFAULT_MODELS).is_dir():
        raise UserError(f"--model_paths {DEFAULT_MODELS}: no such folder; download the released checkpoints "
                        "(models/README.md) or pass --model_paths")
    paths = expand_images(args.images)
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    labels = label_prompts(args.labels, prompts, args.pair_template, args.prompt_style)[0]
    thresholds = read_thresholds(args.thresholds, labels, args.threshold_metric) if args.thresholds else None
    rank, world, device = process_group(args.device)
    if args.num_workers is None:   # the machine's cores shared by the processes
        args.num_workers = max(1, (os.cpu_count() or 1) // world)
    predictor = Predictor(args.model_paths, labels, prompts, device, args.pair_template, args.prompt_style,
                          args.dicom_rule, args.batch_size, args.num_workers, args.precision, progress=rank == 0,
                          calibration=args.calibration)
    if args.maps is not None:
        predictor.map_labels(args.map_labels)   # refuse a label that is not scored before any image is
    start = time.perf_counter()
    table = predict_sharded(predictor, paths, rank, world)
    seconds = time.perf_counter() - start
    n_failed = int(table["error"].notna().sum())
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        scored = write_outputs(table, out, args.format, thresholds)
        log.info("scored %d images (%d failed, listed in %s) with %d checkpoints in %.1f s: %.1f img/s; wrote %s",
                 len(scored), n_failed, failed_path(out), len(predictor.models), seconds,
                 len(table) / max(seconds, 1e-9), out)
    elif n_failed == len(table):
        raise UserError("no image could be scored (rank 0 lists the failures)")
    if args.maps is not None:
        start = time.perf_counter()
        mapped = write_maps(predictor, table, Path(args.maps), args.map_method, args.map_labels, rank, world)
        log.info("wrote %s maps of %d images in %.1f s (%.2f s per image) into %s", args.map_method, mapped,
                 time.perf_counter() - start, (time.perf_counter() - start) / max(mapped, 1), args.maps)
    if world > 1:
        dist.destroy_process_group()
    return table


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(errors.run_cli(main))
