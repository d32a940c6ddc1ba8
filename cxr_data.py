"""Chest X-ray image data in HDF5, and the captions trained with it: the one place that reads them.

- Files: a preprocessed h5 holds one dataset, ``cxr`` (:data:`H5_KEY`), of shape (N, H, W), uint8 or
  float32, with grey values 0..255 (the original wrote float32 0..255; this project writes uint8).
  :func:`h5_rows` is what every reader calls first: it names the file and says what to do when the
  file is missing, holds no ``cxr``, has the wrong shape, or holds values outside 0..255 (for
  example a float file scaled to 0..1, which would train and score on near-black images without a
  word). :class:`H5Images` is the one lazy handle: opened on first use in each process, so that
  DataLoader workers, forked or spawned, each read through their own.
- Image-only readers (zero-shot): :class:`CXRTestDataset` (one model-ready image per item, the
  original's) and :class:`H5Batches` (raw consecutive batches, for the transform on the device),
  with their ordered loaders :func:`make_loader` and :func:`raw_loader`.
- Image-caption readers (training): :class:`CXRDataset` and :func:`load_data` (the original's,
  per image), and the fast path: captions tokenized once and cached (:func:`caption_tokens`),
  :class:`PairBatches` reading one batch per h5 read in worker processes (:func:`pair_loader`),
  in the seeded order of :func:`epoch_batches` / :func:`batch_plan`.
- :func:`device_transform`: the one normalise + resize on the device, for a batch of raw pixels
  (:class:`DeviceTransform` as a module).
- :func:`default_device`: the device the original-API loaders and models use when none is given.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import clip
from data_process import H5_KEY  # the one definition: the preprocessing writes the format
from errors import UserError

log = logging.getLogger(__name__)

#: rows read to check the value range (spread evenly over the file; cheap for any size)
RANGE_SAMPLE_ROWS = 16


# =========================================================================== the h5 file
def _check_range(path: str | Path, images: h5py.Dataset) -> None:
    """Refuse a float h5 whose values are not on the 0..255 grey scale (a sample of rows)."""
    if images.dtype == np.uint8 or len(images) == 0:
        return
    rows = np.unique(np.linspace(0, len(images) - 1, min(RANGE_SAMPLE_ROWS, len(images))).astype(int))
    sample = np.stack([np.asarray(images[r], dtype=np.float64) for r in rows])
    if not np.isfinite(sample).all():
        raise UserError(f"{path}: '{H5_KEY}' holds NaN or infinite values; re-run preprocessing")
    low, high = float(sample.min()), float(sample.max())
    if low < 0 or high > 255:
        raise UserError(f"{path}: '{H5_KEY}' values span {low:g}..{high:g}, expected grey levels 0..255 "
                        "(preprocess_train_data.py writes them); rescale the file or re-run preprocessing")
    if 0 < high <= 1:
        raise UserError(f"{path}: '{H5_KEY}' is {images.dtype} with values in 0..{high:g}, i.e. scaled to 0..1; "
                        "CheXzero expects grey levels 0..255: multiply by 255 or re-run preprocessing")


def h5_rows(cxr_filepath: str | Path, check_range: bool = True) -> int:
    """Number of images in a preprocessed h5, after checking the file, its key, shape and value range."""
    path = Path(cxr_filepath)
    if not path.is_file():
        raise UserError(f"{path}: no such h5 file; preprocess the images first (preprocess_train_data.py)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err}); re-run preprocessing") from None
    with f:
        if H5_KEY not in f:
            raise UserError(f"{path}: no dataset '{H5_KEY}' (it holds {list(f.keys())}); was it written by "
                            "preprocess_train_data.py?")
        images = f[H5_KEY]
        if not isinstance(images, h5py.Dataset) or images.ndim != 3:
            raise UserError(f"{path}: '{H5_KEY}' has shape {getattr(images, 'shape', None)}, expected (N, H, W)")
        if images.dtype not in (np.uint8, np.float32, np.float64):
            raise UserError(f"{path}: '{H5_KEY}' has type {images.dtype}, expected uint8 or float32 grey levels")
        if check_range:
            _check_range(path, images)
        return len(images)


def read_images(cxr_filepath: str | Path) -> np.ndarray:
    """Every image of the h5, in memory, as stored (``--data_in_memory``)."""
    with h5py.File(cxr_filepath, "r") as f:
        return f[H5_KEY][:]


class H5Images:
    """The ``cxr`` images of an h5 file through one handle per process, opened on first use.

    A handle inherited from another process (a forked DataLoader worker) is never used: the file is
    opened again when the process id changes, and the handle is left out when the object is pickled
    (spawned workers). ``images[idx]`` reads like the h5py dataset.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[H5_KEY]

    def __getitem__(self, index):
        return self.dataset()[index]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # open handles do not pickle
        return state


def default_device() -> torch.device:
    """The current CUDA device (``cuda:0`` unless ``torch.cuda.set_device`` chose another) when a GPU
    is present, else the CPU. The original trained on ``cuda:0`` and scored zero-shot on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """None: 0 on the CPU (the model needs every core; reading is a small share there), else up to 8."""
    if num_workers is not None:
        return num_workers
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


# =========================================================================== on the device
def device_transform(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Raw grey levels [B, H, W] or [B, C, H, W] (uint8 or float, 0..255) -> the model's input,
    normalised float32 [B, 3, resolution, resolution].

    Equal to the original per-image CPU transform (:func:`clip.cxr_transform`: channel repeat,
    Normalize, bicubic resize without antialias) within fp32 rounding for square images, but one
    call per batch on the batch's device, on one channel instead of three (the channels of a grey
    image are identical; of [B, C, H, W] the first is used). Images not already
    ``resolution`` x ``resolution`` are resized to it.
    """
    x = images.float()
    x = x.unsqueeze(1) if x.dim() == 3 else x[:, :1]
    x = (x - clip.CXR_MEAN) / clip.CXR_STD
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=False)
    return x.expand(-1, 3, -1, -1)


class DeviceTransform(nn.Module):
    """:func:`device_transform` to ``resolution`` as a module: the ``transform`` to pass with
    :func:`raw_loader`'s batches to ``zero_shot.image_features`` and ``zero_shot.run_softmax_eval``."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return device_transform(images, self.resolution)


# =========================================================================== images only
class H5Dataset(Dataset):
    """A dataset over the images of an h5 file checked by :func:`h5_rows` (``n_images`` of them),
    read through a per-process handle (``images``, :class:`H5Images`)."""

    def __init__(self, img_path: str | Path) -> None:
        super().__init__()
        self.img_path = str(img_path)
        self.n_images = h5_rows(self.img_path)
        self.images = H5Images(self.img_path)


class CXRTestDataset(H5Dataset):
    """Images of an HDF5 file (dataset ``cxr``, (N, H, W), uint8 or float32, values 0-255).

    Item i is ``{'img': float32 tensor [3, H, W]}``: the image repeated on 3 channels, then
    ``transform``.
    """

    def __init__(self, img_path: str | Path, transform: nn.Module | None = None) -> None:
        super().__init__(img_path)
        self.transform = transform

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if torch.is_tensor(idx):
            idx = idx.item()
        img = torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32))
        img = img.unsqueeze(0).repeat(3, 1, 1)
        if self.transform is not None:
            img = self.transform(img)
        return {"img": img}


class H5Batches(H5Dataset):
    """Consecutive batches of raw images, one h5 read each: item b is ``{'img': [B, 1, H, W]}`` in the
    file's dtype (uint8 or float32, values 0-255), rows b*B to (b+1)*B - 1.

    For scoring with a ``transform`` on the device (:class:`DeviceTransform`): the bytes that travel
    are the stored pixels (uint8 is 12x less than a normalised 3-channel float image), and the
    transform runs batched on the model's device instead of per image in the workers.
    """

    def __init__(self, img_path: str | Path, batch_size: int = 64) -> None:
        super().__init__(img_path)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.n_images // self.batch_size)

    def __getitem__(self, batch: int) -> dict[str, torch.Tensor]:
        if not 0 <= batch < len(self):
            raise IndexError(batch)
        start = batch * self.batch_size
        return {"img": torch.from_numpy(self.images[start:start + self.batch_size]).unsqueeze(1)}


def make_loader(cxr_filepath: str | Path, image_resolution: int, batch_size: int = 32,
                num_workers: int | None = None, device: torch.device | str | None = None) -> DataLoader:
    """Ordered loader of model-ready images (:class:`CXRTestDataset` with the CheXzero transform for
    ``image_resolution``), for ``zero_shot.run_softmax_eval`` and ``zero_shot.predict``."""
    device = torch.device(device) if device is not None else default_device()
    dataset = CXRTestDataset(cxr_filepath, transform=clip.cxr_transform(image_resolution))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(num_workers, device),
                      pin_memory=device.type == "cuda")


def raw_loader(cxr_filepath: str | Path, batch_size: int = 64, num_workers: int | None = None,
               device: torch.device | str | None = None) -> DataLoader:
    """Ordered loader of raw image batches (:class:`H5Batches`); pass ``transform`` to the scoring
    functions with it. One loader serves models of any input resolution."""
    device = torch.device(device) if device is not None else default_device()
    return DataLoader(H5Batches(cxr_filepath, batch_size), batch_size=None, shuffle=False,
                      num_workers=loader_workers(num_workers, device), pin_memory=device.type == "cuda")


# =========================================================================== images and captions
class CaptionError(UserError, ValueError):
    """A captions CSV that cannot be trained on (also a ValueError, as these errors were before)."""


class CXRDataset(Dataset):
    """The original per-image dataset: ``{'img': float32 [3, H, W], 'txt': str}``.

    Accepts uint8 or float32 h5 files; the h5 is opened lazily in each process (:class:`H5Images`).
    """

    def __init__(self, img_path: str, txt_path: str, column: str = "report", size: int | None = None,
                 transform=None) -> None:
        self.img_path = img_path
        self.txt_dset = pd.read_csv(txt_path)[column]
        if size is not None:
            self.txt_dset = self.txt_dset[:size]
        self.transform = transform
        self.images = H5Images(img_path)

    def __len__(self) -> int:
        return len(self.txt_dset)

    def __getitem__(self, idx: int) -> dict:
        img = torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32))[None].repeat(3, 1, 1)
        txt = self.txt_dset[idx]
        if isinstance(txt, float):  # empty impression read back as NaN
            txt = " "
        if self.transform:
            img = self.transform(img)
        return {"img": img, "txt": txt}


def load_data(cxr_filepath: str, txt_filepath: str, batch_size: int = 4, column: str = "report",
              pretrained: bool = False, verbose: bool = False) -> tuple[DataLoader, torch.device]:
    """The original loader: per-image reads, CPU transform, shuffled, no workers; and the device."""
    transform = clip.cxr_transform(224 if pretrained else 320)
    dataset = CXRDataset(cxr_filepath, txt_filepath, column=column, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0), default_device()


def read_captions(txt_filepath: str | Path, column: str = "impression") -> list[str]:
    """Captions in row order; NaN (empty impression) becomes " " as in the original."""
    frame = pd.read_csv(txt_filepath)
    if column not in frame.columns:
        raise CaptionError(f"{txt_filepath} has no column {column!r} (columns: {list(frame.columns)})")
    return [" " if isinstance(t, float) else str(t) for t in frame[column]]


def caption_tokens(txt_filepath: str | Path, context_length: int = 77, column: str = "impression") -> np.ndarray:
    """All captions tokenized once, int32 [N, context_length], cached next to the CSV.

    The cache file name holds a hash of the CSV bytes, the column and the context length,
    so an edited CSV or another context length never reuses stale tokens.
    """
    txt_filepath = Path(txt_filepath)
    digest = hashlib.sha256(txt_filepath.read_bytes())
    digest.update(f"{column}:{context_length}".encode())
    cache = txt_filepath.with_name(f"{txt_filepath.stem}.tokens-{digest.hexdigest()[:16]}.npy")
    if cache.exists():
        return np.load(cache)
    captions = read_captions(txt_filepath, column)
    tokens = np.zeros((len(captions), context_length), dtype=np.int32)
    for start in tqdm(range(0, len(captions), 4096), desc="tokenizing captions", leave=False, disable=None):
        chunk = captions[start:start + 4096]
        tokens[start:start + len(chunk)] = clip.tokenize(chunk, context_length, truncate=True).numpy()
    try:
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, tokens)
        os.replace(tmp, cache)
    except OSError as err:
        log.warning("Could not cache tokens at %s (%s); they will be recomputed next run", cache, err)
    return tokens


#: A captions CSV with more than this fraction of empty impressions is refused: the model would
#: mostly learn to pair images with a blank caption. Fewer empty ones are trained on (as " ", as
#: the original did) with a warning that counts them.
MAX_EMPTY_CAPTION_FRACTION = 0.5


def check_captions(txt_filepath: str | Path, column: str = "impression") -> int:
    """Rows of the captions CSV, after checking it can be read, has ``column`` and that not too
    many of its captions are empty (NaN or blank); raises :class:`CaptionError` otherwise."""
    path = Path(txt_filepath)
    if not path.is_file():
        raise CaptionError(f"{path}: no such captions CSV; pass --txt_filepath the impressions CSV written by "
                           "preprocess_train_data.py")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CaptionError(f"{path}: not a readable CSV ({' '.join(str(err).split())}); pass --txt_filepath the "
                           "impressions CSV written by preprocess_train_data.py") from None
    if column not in frame.columns:
        raise CaptionError(f"{path} has no column {column!r} (columns: {list(frame.columns)}); the captions "
                           f"CSV needs one caption per h5 row in a column named {column!r}")
    text = frame[column]
    n = len(text)
    if n == 0:
        raise CaptionError(f"{path}: no caption rows; re-run preprocessing")
    empty = int((text.isna() | text.astype(str).str.strip().eq("")).sum())
    if empty > MAX_EMPTY_CAPTION_FRACTION * n:
        raise CaptionError(f"{path}: {empty} of {n} {column!r} captions are empty (more than "
                           f"{MAX_EMPTY_CAPTION_FRACTION:.0%}); training would pair the images with blank text. "
                           "Check that preprocessing found the reports (preprocess_train_data.py "
                           "--radiology_reports_path) and re-run it")
    if empty:
        log.warning("%s: %d of %d %r captions are empty; those images are trained with a blank caption",
                    path, empty, n, column)
    return n


class PairBatches(Dataset):
    """Item i is batch i of an epoch: uint8/float32 images [B, H, W] and int64 tokens [B, L].

    One h5 read per batch (indices sorted, as h5py requires), in whichever worker process
    asks, each through its own handle (:class:`H5Images`). ``images`` may be an in-memory array
    instead of a path (``--data_in_memory``).
    """

    def __init__(self, images: str | np.ndarray, tokens: np.ndarray, batches: list[np.ndarray]) -> None:
        self.images = images
        self.tokens = tokens
        self.batches = batches
        self._h5 = None if isinstance(images, np.ndarray) else H5Images(images)

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if self._h5 is None:
            return self.images[idx]
        # h5py's list indexing is ~100x slower than slices: read runs of consecutive rows.
        unique, inverse = np.unique(idx, return_inverse=True)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        runs = [self._h5[run[0]:run[-1] + 1] for run in np.split(unique, breaks)]
        return np.concatenate(runs)[inverse]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.batches[i]
        return torch.from_numpy(self._read(idx)), torch.from_numpy(self.tokens[idx].astype(np.int64))


def pair_loader(images: str | np.ndarray, tokens: np.ndarray, batches: list[np.ndarray], num_workers: int,
                device: torch.device) -> DataLoader:
    """The training input pipeline: :class:`PairBatches` over ``batches`` in order, read ahead by
    ``num_workers`` processes (4 batches each), pinned for a GPU."""
    return DataLoader(PairBatches(images, tokens, batches), batch_size=None, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None)


# =========================================================================== sample order
def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The global sample order of one epoch: ``DistributedSampler``'s seeded permutation
    (``randperm(n)`` from a generator seeded with ``seed + epoch``)."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).numpy()


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  start: int = 0) -> list[np.ndarray]:
    """This rank's index batches for one epoch, from sample ``start`` of its global order on.

    The samples left (``epoch_order(...)[start:]``) are padded cyclically to a multiple of the
    ``world`` processes and dealt out rank by rank, as ``DistributedSampler`` does (equal to it
    for ``start=0``). With W processes, global batch b is the union of the ranks' batch b, and
    equals batch b of a single process with batch W*B: the contrastive loss over the gathered
    batch is the same (up to the order of its rows). The first k global batches consume exactly
    the next ``min(k*W*B, n - start)`` samples of the order, so a run can stop after any batch and
    continue from that sample with any batch size or number of processes.
    """
    rest = epoch_order(n, epoch, seed)[start:]
    if len(rest) == 0:
        return []
    padded = np.resize(rest, math.ceil(len(rest) / world) * world)
    mine = padded[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def batch_plan(n: int, batch_size: int, seed: int, epochs: int, epoch: int = 0, start: int = 0,
               start_seed: int | None = None, rank: int = 0, world: int = 1) -> list[tuple[int, int, np.ndarray]]:
    """This rank's batches from sample ``start`` of epoch ``epoch`` to the end of epoch ``epochs - 1``:
    ``(epoch, samples of that epoch consumed once the batch is done (all ranks), indices)``.

    ``start_seed`` is the seed of the first epoch's order when it differs from ``seed`` (a resume
    that changed ``--seed`` finishes the interrupted epoch in the order it started).
    """
    plan = []
    for e in range(epoch, epochs):
        first = start if e == epoch else 0
        order_seed = start_seed if e == epoch and start_seed is not None else seed
        for b, idx in enumerate(epoch_batches(n, batch_size, e, order_seed, rank, world, start=first)):
            plan.append((e, min(n, first + (b + 1) * batch_size * world), idx))
    return plan


def plan_steps(plan: list[tuple[int, int, np.ndarray]], accum_freq: int) -> int:
    """Optimizer steps over ``plan``: ``accum_freq`` batches per step, a shorter last step per epoch."""
    per_epoch: dict[int, int] = {}
    for e, _, _ in plan:
        per_epoch[e] = per_epoch.get(e, 0) + 1
    return sum(math.ceil(k / accum_freq) for k in per_epoch.values())
