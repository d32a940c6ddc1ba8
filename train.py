"""Contrastive image-report training: data, model, loss, runtime, checkpoints and the loop.

Kept apart on purpose (open_clip style):
- data: captions tokenized once and cached; images read from the h5 one batch per call, in
  worker processes, as uint8; normalisation and the 320->224 resize happen on the device.
- model: :func:`load_clip` (the original's semantics) and :func:`make_model` (named configs).
- loss: :func:`clip_loss`, the symmetric InfoNCE of CheXzero, exact over a global batch when
  features are gathered across processes (``--gather_with_grad``, ``--local_loss``).
- runtime: :func:`setup_runtime` is the one place that decides device, precision, compile
  and distribution.
- checkpoints: plain fp32 state dicts named as the original, plus a training-state file
  beside each and an atomically written ``latest.json`` pointer for ``--resume latest``. Every
  file is read with ``torch.load(weights_only=True)``: the training state holds only tensors and
  plain values, and a file holding anything else is refused unread.
- resume: the saved settings are compared with the new flags (:func:`check_resume`), and the
  data position is the number of samples of the epoch's order consumed, so a resume continues
  from the exact sample whatever the new batch size or number of processes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import time
import zipfile
from argparse import Namespace
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import clip
import cxr_data
import run_lock
from errors import UserError
from labels import COMPETITION_LABELS, PAIR_TEMPLATE
from model import CLIP, MODEL_CONFIGS, named_config, original_config

log = logging.getLogger(__name__)


# =========================================================================== user errors
class TrainInputError(UserError, ValueError):
    """A training input or flag the user can fix (also a ValueError, as these errors were before)."""


class TrainSetupError(UserError, RuntimeError):
    """The environment cannot run what the flags ask (no GPU, no OpenAI weights); also a RuntimeError."""


class RunFolderTaken(UserError, FileExistsError):
    """A fresh run into a folder that holds an earlier run's checkpoints (also a FileExistsError)."""


# =========================================================================== model
def default_device() -> torch.device:
    """cuda:0 when a GPU is present, else the CPU (the original required CUDA)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def load_clip(model_path: str | None = None, pretrained: bool = False, context_length: int = 77) -> CLIP:
    """Build CheXzero's CLIP and optionally load a checkpoint into it, in **train** mode.

    A thin wrapper over :func:`clip.load_model`; its rules differ from ``zero_shot.load_clip``'s:

    - architecture (:func:`model.original_config`): ``pretrained=True`` OpenAI's ViT-B/32,
      ``False`` the 320-px / patch-16 / embed-768 random-init model with ``context_length``.
      There is no ``pretrained=None`` (read off the checkpoint) here: that is zero_shot's.
      With ``model_path`` the architecture is built locally and the checkpoint loaded strictly
      (no download; the original fetched OpenAI's weights only to overwrite them); ``pretrained=True``
      without ``model_path`` gives OpenAI's ViT-B/32 initial weights via :func:`clip.load`
      (``models/`` or ``~/.cache/clip``, else download).
    - device: ``cuda:0`` when there is a GPU, else the CPU (:func:`default_device`), not an argument.
    - mode: train (``zero_shot.load_clip``: eval).
    """
    device = default_device()
    if pretrained and model_path is None:
        model, _ = clip.load("ViT-B/32", device=device, jit=False)
        return model.train()
    return clip.load_model(model_path, original_config(pretrained, context_length), device=device, train=True)


def preprocess_text(texts: list[str], model: CLIP) -> torch.LongTensor:
    """Tokenize captions for ``model``: too-long ones are cut with EOT forced at the end.

    The tokenizer (and its BPE cache) is built once per process, not once per batch.
    """
    return clip.tokenize(list(texts), context_length=model.context_length, truncate=True)


SIZE_OVERRIDES = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                  "transformer_width", "transformer_layers")


def make_model(config: Namespace) -> CLIP:
    """The model a training run starts from, on the CPU in train mode.

    Without ``--random_init`` (and with the default config) this is OpenAI's ViT-B/32, as
    the original (:func:`clip.load`); ``--random_init`` gives the 320-px model; ``--model_config``
    and the size flags pick any other shape (text heads: width // 64, at least 1). All but the first
    are new models from :func:`clip.load_model`.
    """
    name = config.model_config or ("random-init-320" if config.random_init else "vit-b-32")
    overrides = {k: getattr(config, k) for k in SIZE_OVERRIDES if getattr(config, k, None) is not None}
    if name == "vit-b-32" and not config.random_init and not overrides:
        try:
            model, _ = clip.load("ViT-B/32", device="cpu", jit=False)
        except RuntimeError as err:
            raise TrainSetupError(f"{err} To train without OpenAI's weights, pass --random_init.") from err
        return model.train()
    vit_only = sorted({"vision_layers", "vision_patch_size"} & overrides.keys())
    if isinstance(MODEL_CONFIGS[name]["vision_layers"], tuple) and vit_only:
        raise TrainInputError(f"--model_config {name} has a ResNet image tower (bottlenecks per stage "
                              f"{MODEL_CONFIGS[name]['vision_layers']}); {', '.join('--' + k for k in vit_only)} "
                              "only apply to ViT configs")
    shape = named_config(name, context_length=config.context_length, **overrides)
    shape["transformer_heads"] = max(1, shape["transformer_width"] // 64)
    return clip.load_model(config=shape, train=True)


# =========================================================================== data
class CXRDataset(Dataset):
    """The original per-image dataset: ``{'img': float32 [3, H, W], 'txt': str}``.

    Accepts uint8 or float32 h5 files; the h5 is opened lazily in each worker process.
    """

    def __init__(self, img_path: str, txt_path: str, column: str = "report", size: int | None = None,
                 transform=None) -> None:
        self.img_path = img_path
        self.txt_dset = pd.read_csv(txt_path)[column]
        if size is not None:
            self.txt_dset = self.txt_dset[:size]
        self.transform = transform
        self._h5 = None

    def __len__(self) -> int:
        return len(self.txt_dset)

    def __getitem__(self, idx: int) -> dict:
        if self._h5 is None:
            self._h5 = h5py.File(self.img_path, "r")["cxr"]
        img = torch.from_numpy(np.asarray(self._h5[idx], dtype=np.float32))[None].repeat(3, 1, 1)
        txt = self.txt_dset[idx]
        if isinstance(txt, float):  # empty impression read back as NaN
            txt = " "
        if self.transform:
            img = self.transform(img)
        return {"img": img, "txt": txt}


def load_data(cxr_filepath: str, txt_filepath: str, batch_size: int = 4, column: str = "report",
              pretrained: bool = False, verbose: bool = False) -> tuple[DataLoader, torch.device]:
    """The original loader: per-image reads, CPU transform, shuffled, no workers."""
    transform = clip.cxr_transform(224 if pretrained else 320)
    dataset = CXRDataset(cxr_filepath, txt_filepath, column=column, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0), default_device()


def read_captions(txt_filepath: str | Path, column: str = "impression") -> list[str]:
    """Captions in row order; NaN (empty impression) becomes " " as in the original."""
    frame = pd.read_csv(txt_filepath)
    if column not in frame.columns:
        raise TrainInputError(f"{txt_filepath} has no column {column!r} (columns: {list(frame.columns)})")
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


def h5_rows(cxr_filepath: str | Path) -> int:
    """Number of images in an h5 file written by preprocessing, after :func:`cxr_data.h5_rows`'
    checks (the file exists, holds ``cxr`` (N, H, W) uint8/float with grey levels 0..255)."""
    return cxr_data.h5_rows(cxr_filepath)


#: A captions CSV with more than this fraction of empty impressions is refused: the model would
#: mostly learn to pair images with a blank caption. Fewer empty ones are trained on (as " ", as
#: the original did) with a warning that counts them.
MAX_EMPTY_CAPTION_FRACTION = 0.5


def check_captions(txt_filepath: str | Path, column: str = "impression") -> int:
    """Rows of the captions CSV, after checking it can be read, has ``column`` and that not too
    many of its captions are empty (NaN or blank); raises :class:`TrainInputError` otherwise."""
    path = Path(txt_filepath)
    if not path.is_file():
        raise TrainInputError(f"{path}: no such captions CSV; pass --txt_filepath the impressions CSV written by "
                              "preprocess_train_data.py")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise TrainInputError(f"{path}: not a readable CSV ({' '.join(str(err).split())}); pass --txt_filepath the "
                              "impressions CSV written by preprocess_train_data.py") from None
    if column not in frame.columns:
        raise TrainInputError(f"{path} has no column {column!r} (columns: {list(frame.columns)}); the captions "
                              f"CSV needs one caption per h5 row in a column named {column!r}")
    text = frame[column]
    n = len(text)
    if n == 0:
        raise TrainInputError(f"{path}: no caption rows; re-run preprocessing")
    empty = int((text.isna() | text.astype(str).str.strip().eq("")).sum())
    if empty > MAX_EMPTY_CAPTION_FRACTION * n:
        raise TrainInputError(f"{path}: {empty} of {n} {column!r} captions are empty (more than "
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
    asks; each worker opens its own h5 handle. ``images`` may be an in-memory array instead
    of a path (``--data_in_memory``).
    """

    def __init__(self, images: str | np.ndarray, tokens: np.ndarray, batches: list[np.ndarray]) -> None:
        self.images = images
        self.tokens = tokens
        self.batches = batches
        self._h5 = None

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if isinstance(self.images, np.ndarray):
            return self.images[idx]
        if self._h5 is None:
            self._h5 = h5py.File(self.images, "r")["cxr"]
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


def device_transform(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8/float [B, 320, 320] on the device -> normalised float32 [B, 3, res, res].

    Equal to the original per-sample CPU transform (channel repeat, Normalize, bicubic
    resize without antialias) within fp32 rounding, but one call per batch on the device,
    on one channel instead of three.
    """
    # The three channels are identical: normalise and resize one, then repeat it.
    x = (images.float().unsqueeze(1) - clip.CXR_MEAN) / clip.CXR_STD
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=False)
    return x.expand(-1, 3, -1, -1)


# =========================================================================== loss
def gather_features(image_features: torch.Tensor, text_features: torch.Tensor, gather_with_grad: bool,
                    rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the global batch, rank-major.

    ``gather_with_grad`` back-propagates through the gather (the exact gradient of the
    global loss); otherwise only the local slice carries gradient (open_clip's default).
    """
    if gather_with_grad:
        import torch.distributed.nn.functional as dist_fn
        return torch.cat(dist_fn.all_gather(image_features)), torch.cat(dist_fn.all_gather(text_features))
    images = [torch.zeros_like(image_features) for _ in range(world)]
    texts = [torch.zeros_like(text_features) for _ in range(world)]
    dist.all_gather(images, image_features)
    dist.all_gather(texts, text_features)
    images[rank], texts[rank] = image_features, text_features
    return torch.cat(images), torch.cat(texts)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              gather_with_grad: bool = False, local_loss: bool = False, rank: int = 0,
              world: int = 1) -> torch.Tensor:
    """CheXzero's loss: mean of the image->text and text->image cross-entropies over
    ``exp(logit_scale) * cos``, the i-th image matched with the i-th caption.

    Features are normalised here. Across processes the batch is the global one;
    ``local_loss`` scores only this rank's rows against all columns (less memory, same
    gradient with ``gather_with_grad``).
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    scale = logit_scale.exp()
    n = image_features.shape[0]
    if world == 1:
        logits = scale * image_features @ text_features.t()
        labels = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    all_images, all_texts = gather_features(image_features, text_features, gather_with_grad, rank, world)
    if local_loss:
        per_image = scale * image_features @ all_texts.t()
        per_text = scale * text_features @ all_images.t()
        labels = torch.arange(n, device=per_image.device) + rank * n
    else:
        per_image = scale * all_images @ all_texts.t()
        per_text = per_image.t()
        labels = torch.arange(per_image.shape[0], device=per_image.device)
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


class Features(nn.Module):
    """CLIP seen as one forward returning (image features, text features, logit_scale), so
    that DDP and torch.compile wrap the whole training computation.

    ``trim_text`` encodes the captions in ``text_groups`` groups of similar length, each cut
    after its longest caption's EOT (exact, see :func:`encode_text_by_length`); it is off
    under torch.compile, where data-dependent shapes break the graph.
    """

    def __init__(self, model: CLIP, trim_text: bool = True, text_groups: int = 4) -> None:
        super().__init__()
        self.clip = model
        self.trim_text = trim_text
        self.text_groups = text_groups

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.trim_text:
            text_features = encode_text_by_length(self.clip, texts, self.text_groups)
        else:
            text_features = self.clip.encode_text(texts)
        return self.clip.encode_image(images), text_features, self.clip.logit_scale


def trim_padding(texts: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Drop the padding columns that follow every caption's EOT (rounded up to ``multiple``
    columns, so few distinct shapes occur). Exact under the causal mask."""
    length = int(texts.argmax(dim=-1).max()) + 1
    return texts[:, : min(texts.shape[1], -(-length // multiple) * multiple)]


def encode_text_by_length(model: CLIP, texts: torch.Tensor, groups: int = 4) -> torch.Tensor:
    """``model.encode_text(texts)``, computed in ``groups`` groups of captions sorted by length,
    each trimmed by :func:`trim_padding`. Impressions are mostly short (median ~14 tokens) but
    nearly every batch holds one of ~77, so one trim for the whole batch still spends most of
    the text tower on padding; grouping cuts that ~2-3x. Rows come back in the input order."""
    order = torch.argsort(texts.argmax(dim=-1), stable=True)
    parts = [model.encode_text(trim_padding(texts[idx])) for idx in order.tensor_split(groups) if len(idx)]
    return torch.cat(parts)[torch.argsort(order)]


# =========================================================================== runtime
@dataclass
class Runtime:
    """Where and how the run computes: decided once, in :func:`setup_runtime`."""

    device: torch.device
    rank: int
    world: int
    local_rank: int
    autocast_dtype: torch.dtype | None   # None: fp32
    use_scaler: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def setup_runtime(config: Namespace) -> Runtime:
    """Device, process group, precision and TF32, from the flags and torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise TrainSetupError(f"--device {wanted} was asked for but no GPU is visible; use --device cpu")
    if wanted == "cuda":
        wanted = f"cuda:{local_rank}"
    device = torch.device(wanted)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    precision = config.precision or ("amp_bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}[precision]
    return Runtime(device, rank, world, local_rank, dtype, use_scaler=precision == "amp_fp16")


def make_optimizer(config: Namespace, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum (the original's default) or AdamW, with fused kernels (on the CPU too:
    the multi-tensor path allocates temporaries the size of the model every step)."""
    kernel = {"fused": True}
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay or 0.0, **kernel)
    if config.optimizer == "adam":
        wd = 0.01 if config.weight_decay is None else config.weight_decay
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=wd, **kernel)
    raise ValueError(f"--optimizer must be 'sgd' or 'adam', not {config.optimizer!r}")


def lr_lambda(config: Namespace, total_steps: int):
    """LR multiplier per step: linear warmup, then constant (original) or cosine to zero."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "cosine":
            progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


# =========================================================================== checkpoints
#: What a training-state file (``checkpoint*.state``) holds. All of it is tensors, numbers,
#: strings, None and lists/tuples/dicts of them, so it loads with ``torch.load(weights_only=True)``,
#: which refuses anything that could run code.
STATE_KEYS = ("weights", "optimizer", "scheduler", "scaler", "step", "epoch", "sample_in_epoch",
              "samples_per_epoch", "order_seed", "best", "rng", "config", "world", "data")


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    """The torch, numpy and Python RNG states as tensors and plain values (weights-only loadable)."""
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"algorithm": str(algorithm), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state((saved["algorithm"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["internal"]), saved["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


#: Data files up to this size are hashed whole to recognise them on --resume; larger ones (the
#: image h5) by their size, modification time and the hash of their first and last HASH_EDGE_BYTES.
FULL_HASH_BYTES = 64 << 20
HASH_EDGE_BYTES = 8 << 20


def file_fingerprint(path: str | Path) -> dict:
    """What identifies a data file across a resume: path, size, a SHA-256 (prefix) and, for large
    files, the modification time."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        else:
            digest.update(f.read(HASH_EDGE_BYTES))
            f.seek(-HASH_EDGE_BYTES, os.SEEK_END)
            digest.update(f.read(HASH_EDGE_BYTES))
    found = {"path": str(path), "size": size, "sha256": digest.hexdigest()[:16]}
    if size > FULL_HASH_BYTES:
        found["mtime_ns"] = path.stat().st_mtime_ns
    return found


def _same_file(a: dict | None, b: dict) -> bool:
    return a is not None and all(a.get(k) == b.get(k) for k in ("size", "sha256", "mtime_ns"))


def _describe_file(fp: dict | None) -> str:
    if fp is None:
        return "(not recorded)"
    return f"{fp['path']} ({fp['size']} bytes, sha256 {fp['sha256']})"


def resolve_resume(resume: str, run_dir: Path) -> Path:
    """The training-state file named by ``--resume`` (a path, or ``latest``)."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise TrainInputError(f"--resume {resume}: no such training-state file; pass 'latest' or one of the "
                                  "run's checkpoint_*.state files")
        return path
    pointer = run_dir / "latest.json"
    if not pointer.is_file():
        raise TrainInputError(f"--resume latest: {pointer} does not exist; nothing to resume in {run_dir} (check "
                              "--save_dir and --model_name, or start without --resume)")
    try:
        name = json.loads(pointer.read_text())["state"]
        if not isinstance(name, str):
            raise TypeError(name)
    except (ValueError, KeyError, TypeError):
        raise TrainInputError(_unusable_message("latest", _Unusable(pointer, "is not a readable latest.json pointer"),
                                                run_dir)) from None
    return run_dir / Path(name).name


class _Unusable(Exception):
    """A training-state file (or the weights it names) that cannot be resumed from, and why."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file} {reason}")
        self.file, self.reason = file, reason


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _zip_intact(path: Path) -> bool:
    """A torch.save file whose zip directory and CRCs check out (a truncated one fails)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        return False


def _read_state(path: Path) -> dict:
    """Load one training-state file with ``weights_only=True`` and check it and the weights it
    names; raise :class:`_Unusable` saying which file and why otherwise."""
    if not path.is_file():
        raise _Unusable(path, "does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "Weights only load failed" in str(err) and unsafe:
            raise _Unusable(path, f"holds Python objects beyond tensors and plain values ({unsafe.group(1)}); "
                                  "loading them could run code, so the file was refused unread (a training state "
                                  "written by this train.py holds none)") from None
        raise _Unusable(path, "is damaged, or holds objects beyond tensors and plain values (refused unread)") from None
    except Exception as err:   # torch reports truncation as RuntimeError, EOFError, ValueError ...
        raise _Unusable(path, f"is damaged or truncated ({_first_line(err)})") from None
    if not isinstance(state, dict):
        raise _Unusable(path, f"holds a {type(state).__name__}, not a training state written by train.py")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise _Unusable(path, f"is not a training state of this train.py (it lacks {', '.join(missing)})")
    weights = path.parent / str(state["weights"])
    if not _zip_intact(weights):
        raise _Unusable(weights, f"(the weights {path.name} names) is missing, damaged or truncated")
    return state


def intact_states(run_dir: Path, exclude: Path | None = None, limit: int = 3) -> list[Path]:
    """Up to ``limit`` periodic training states in ``run_dir`` that load, newest first."""
    numbered = []
    for path in run_dir.glob("checkpoint_*.state"):
        suffix = path.stem.split("_", 1)[1]
        if suffix.isdigit():
            numbered.append((int(suffix), path))
    found = []
    for _, path in sorted(numbered, reverse=True):
        if exclude is not None and path.resolve() == exclude.resolve():
            continue
        try:
            _read_state(path)
        except _Unusable:
            continue
        found.append(path)
        if len(found) == limit:
            break
    return found


def _unusable_message(resume: str, bad: _Unusable, run_dir: Path, state_path: Path | None = None) -> str:
    """One line: which file is unusable and why, and the newest intact earlier state to resume from."""
    alternatives = intact_states(run_dir, exclude=state_path)
    if alternatives:
        others = f" (other intact ones, newest first: {', '.join(map(str, alternatives[1:]))})" if alternatives[1:] else ""
        offer = f"The newest intact earlier state is {alternatives[0]}: continue with --resume {alternatives[0]}{others}"
    else:
        offer = (f"No other intact checkpoint_*.state is in {run_dir}; start the run again into another "
                 "--model_name (or remove the folder)")
    return f"--resume {resume}: {bad.file} {bad.reason}. {offer}"


def load_training_state(path: Path, run_dir: Path, resume: str = "latest") -> dict:
    """The training state in ``path`` (weights-only load), or a :class:`TrainInputError` that names
    the unusable file and offers the newest intact earlier state."""
    try:
        return _read_state(path)
    except _Unusable as bad:
        raise TrainInputError(_unusable_message(resume, bad, run_dir, path)) from None


# --------------------------------------------------------------------------- resume settings
#: Flags that may change on --resume without changing what the run computes: where and how fast
#: it runs, how often it logs, saves and validates, how many checkpoints it keeps.
RESUME_FREE = frozenset({"num_workers", "device", "precision", "compile", "grad_checkpointing", "data_in_memory",
                         "log_interval", "save_interval", "keep_last", "keep_best", "val_interval"})
#: Never compared nor taken from the saved run: where the run lives and how this command was asked.
RESUME_OWN = frozenset({"resume", "resume_override", "debug", "save_dir", "model_name", "given_flags"})
#: Where the run stops: free under the constant schedule; under cosine they set the decay's length.
RUN_LENGTH = frozenset({"epochs", "max_steps"})
DATA_FLAGS = ("cxr_filepath", "txt_filepath")


def plain_config(config: Namespace) -> dict:
    """The run's flags as a dict of plain values (what a training state stores)."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(config).items() if k != "given_flags"}


def resume_comparable(config: Namespace) -> list[str]:
    """The flags whose change on --resume needs --resume_override."""
    return sorted(set(vars(config)) - RESUME_FREE - RESUME_OWN)


def adopt_saved_flags(config: Namespace, saved: dict) -> list[str]:
    """Flags that set what the run computes and were not given on the command line take the saved
    run's values (``config.given_flags``, set by ``run_train.parse_args``; without it every flag
    counts as given). Flags about this invocation (:data:`RESUME_FREE`; :data:`RUN_LENGTH` under
    the constant schedule) keep their given or default values. Returns the names taken."""
    given = getattr(config, "given_flags", None)
    if given is None:
        return []
    own = RESUME_OWN | RESUME_FREE | (RUN_LENGTH if saved.get("lr_schedule") != "cosine" else frozenset())
    taken = []
    for key, value in saved.items():
        if key in own or key in given or not hasattr(config, key):
            continue
        current = getattr(config, key)
        if (list(current) if isinstance(current, (list, tuple)) else current) != value:
            setattr(config, key, value)
            taken.append(key)
    if taken:
        log.info("resume: flags not given take the saved run's values: %s",
                 ", ".join(f"--{k} {getattr(config, k)}" for k in taken))
    return taken


def _effective(config: dict, key: str, world: int, other: dict) -> object:
    """A flag's value as it acts on the run: the global batch; the weight decay with its optimizer's
    default (unless the optimizer changes too, which brings its own default: compared as given)."""
    if key == "batch_size":
        return config["batch_size"] * world
    if key == "weight_decay" and config.get("optimizer") == other.get("optimizer"):
        wd = config.get("weight_decay")
        return (0.01 if config.get("optimizer") == "adam" else 0.0) if wd is None else float(wd)
    value = config.get(key)
    return list(value) if isinstance(value, tuple) else value


def resume_differences(state: dict, config: Namespace, data: dict, world: int) -> list[tuple[str, str, str]]:
    """``(flag, saved, new)`` for every setting that changes the run's meaning and differs."""
    saved, new = state["config"], plain_config(config)
    keys = set(saved) & set(new) - RESUME_FREE - RESUME_OWN
    if saved.get("lr_schedule") == "constant" and new.get("lr_schedule") == "constant":
        keys -= RUN_LENGTH
    diffs = []
    for key in sorted(keys):
        if key in DATA_FLAGS:
            if not _same_file(state["data"].get(key), data[key]):
                diffs.append((key, _describe_file(state["data"].get(key)), _describe_file(data[key])))
            continue
        before, after = _effective(saved, key, state["world"], new), _effective(new, key, world, saved)
        if before == after:
            continue
        if key == "batch_size" and (state["world"] != 1 or world != 1):
            diffs.append((key, f"{saved[key]} x {state['world']} processes", f"{new[key]} x {world} processes"))
        else:
            diffs.append((key, str(before), str(after)))
    return diffs


def check_resume(config: Namespace, state: dict, data: dict, world: int, run_dir: Path) -> set[str]:
    """Refuse a resume whose settings differ from the saved run's, listing the differences, unless
    ``--resume_override`` names them; return the flags whose new values are taken."""
    asked = set(config.resume_override or ())
    unknown = sorted(asked - set(resume_comparable(config)))
    if unknown:
        raise TrainInputError(f"--resume_override {','.join(unknown)}: not a setting compared on resume; the ones "
                              f"that are: {', '.join(resume_comparable(config))} (the rest may change freely)")
    diffs = resume_differences(state, config, data, world)
    refused = [d for d in diffs if d[0] not in asked]
    if refused:
        listed = "; ".join(f"--{flag}: {before} -> {after}" for flag, before, after in refused)
        raise TrainInputError(f"--resume {config.resume}: the run in {run_dir} was saved with other settings: "
                              f"{listed}. Resume with the saved values (leave these flags out or pass the saved "
                              f"ones), or take the new ones with --resume_override "
                              f"{','.join(flag for flag, _, _ in refused)}")
    for flag, before, after in diffs:
        log.info("resume: --resume_override takes the new --%s: %s -> %s", flag, before, after)
    for flag in sorted(asked - {d[0] for d in diffs}):
        log.info("resume: --resume_override %s: unchanged, nothing to take", flag)
    return {d[0] for d in diffs}


def trim_metrics(metrics_path: Path, step: int) -> int:
    """Drop the rows of ``metrics.csv`` after ``step`` (logged by a run killed after its last
    saved state) and any torn row; rewritten atomically. Returns how many rows were dropped."""
    with open(metrics_path, newline="") as f:
        rows = list(csv.reader(f))
    body = rows[1:]
    keep = [r for r in body if len(r) == len(METRIC_FIELDS) and r[0].isdigit() and int(r[0]) <= step]
    if len(keep) == len(body) and rows[:1] == [METRIC_FIELDS]:
        return 0
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRIC_FIELDS)
        writer.writerows(keep)
    os.replace(tmp, metrics_path)
    return len(body) - len(keep)


# =========================================================================== validation
def validation_auroc(model: CLIP, loader: DataLoader, y_true: np.ndarray, labels: list[str],
                     pair_template: tuple[str, str] = PAIR_TEMPLATE) -> float:
    """Zero-shot mean AUROC over ``labels`` with the ``pair_template`` prompts (the original's
    ("{}", "no {}") by default)."""
    from sklearn.metrics import roc_auc_score

    import zero_shot
    was_training = model.training
    model.eval()
    y_pred = zero_shot.run_softmax_eval(model, loader, labels, pair_template, context_length=model.context_length)
    model.train(was_training)
    aucs = [roc_auc_score(y_true[:, i], y_pred[:, i]) for i in range(len(labels)) if len(set(y_true[:, i])) == 2]
    return float(np.mean(aucs)) if aucs else float("nan")


def validation_labels(config: Namespace) -> np.ndarray:
    """The validation labels (CheXpert column names, 0/1), checked against the validation h5."""
    path = Path(config.val_label_path)
    if not path.is_file():
        raise TrainInputError(f"{path}: no such validation labels CSV (--val_label_path)")
    try:
        labels = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise TrainInputError(f"{path}: not a readable CSV ({' '.join(str(err).split())}) (--val_label_path)") from None
    missing = [c for c in COMPETITION_LABELS if c not in labels.columns]
    if missing:
        raise TrainInputError(f"{path} lacks the label columns {missing} (--val_label_path needs CheXpert's "
                              f"column names; it has {list(labels.columns)})")
    for column in COMPETITION_LABELS:
        bad = ~pd.to_numeric(labels[column], errors="coerce").isin([0, 1])
        if bad.any():
            shown = sorted({str(v) for v in labels[column][bad]})[:5]
            raise TrainInputError(f"{path}: column {column!r} has {int(bad.sum())} of {len(labels)} values that are "
                                  f"not 0 or 1 ({', '.join(shown)}); validation AUROC needs binary labels: map "
                                  "blanks and uncertain (-1) labels to 0 or 1 first")
    n = h5_rows(config.val_cxr_filepath)
    if n != len(labels):
        raise TrainInputError(f"{config.val_cxr_filepath} holds {n} images but {path} has {len(labels)} rows; "
                              "they must be row-aligned")
    return labels[COMPETITION_LABELS].to_numpy().astype(int)


def validation_data(config: Namespace, resolution: int) -> tuple[DataLoader, np.ndarray]:
    """Loader over the validation h5 and its labels (CheXpert-valid format, by name)."""
    import zero_shot
    y_true = validation_labels(config)
    dataset = zero_shot.CXRTestDataset(config.val_cxr_filepath, transform=clip.cxr_transform(resolution))
    return DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0), y_true


# =========================================================================== loop
METRIC_FIELDS = ["step", "epoch", "loss", "lr", "logit_scale", "pairs_per_s", "val_auroc"]


def train(config: Namespace) -> Path:
    """Run (or resume) contrastive training; return the final checkpoint path.

    The run folder is locked while the run lives (:func:`run_lock.hold`): a second training into
    the same folder, fresh or resumed, is refused instead of interleaving with this one.
    """
    config = Namespace(**vars(config))
    run_dir = Path(config.save_dir) / config.model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0
    with run_lock.hold(run_dir, "training") if is_main else nullcontext():
        return _train(config, run_dir)


def _train(config: Namespace, run_dir: Path) -> Path:
    earlier = sorted(p.name for pattern in ("checkpoint*.pt", "best_*.pt") for p in run_dir.glob(pattern))
    if earlier and not config.resume:
        # A fresh run would overwrite some of them and leave the rest to be mistaken for its own.
        raise RunFolderTaken(f"{run_dir} already holds an earlier run's checkpoints ({', '.join(earlier[:3])}"
                             f"{' ...' if len(earlier) > 3 else ''}). Continue it with --resume latest, or train "
                             "into another --model_name / --save_dir, or delete the folder.")

    # The saved state and every input are checked before anything costs time.
    state, state_path = None, None
    if config.resume:
        state_path = resolve_resume(config.resume, run_dir)
        state = load_training_state(state_path, run_dir, config.resume)
        adopt_saved_flags(config, state["config"])
    n_images = h5_rows(config.cxr_filepath)
    if n_images == 0:
        raise TrainInputError(f"{config.cxr_filepath} holds no images; re-run preprocessing")
    n_captions = check_captions(config.txt_filepath)
    if n_images != n_captions:
        raise TrainInputError(f"{config.cxr_filepath} holds {n_images} images but {config.txt_filepath} has "
                              f"{n_captions} caption rows; they must be row-aligned (re-run preprocessing)")
    if config.val_cxr_filepath:
        validation_labels(config)
    data = {key: file_fingerprint(getattr(config, key)) for key in DATA_FLAGS}
    rt = setup_runtime(config)
    overridden = check_resume(config, state, data, rt.world, run_dir) if state is not None else set()

    # Where the run stands: steps taken, and the samples of the current epoch's order consumed.
    step, epoch, sample_in_epoch, order_seed, best = 0, 0, 0, config.seed, []
    if state is not None:
        step, epoch, sample_in_epoch = state["step"], state["epoch"], state["sample_in_epoch"]
        order_seed, best = state["order_seed"], [tuple(b) for b in state["best"]]
        if state["samples_per_epoch"] != n_images and sample_in_epoch:
            log.warning("resume: %s holds %d images, the saved run had %d: epoch %d starts again from its first "
                        "sample", config.cxr_filepath, n_images, state["samples_per_epoch"], epoch)
            sample_in_epoch, order_seed = 0, config.seed
    plan = batch_plan(n_images, config.batch_size, config.seed, config.epochs, epoch, sample_in_epoch, order_seed,
                      rt.rank, rt.world)
    total_steps = min(config.max_steps or 10 ** 12, step + plan_steps(plan, config.accum_freq))
    if total_steps <= step:
        limit = f"--epochs {config.epochs}" + (f" / --max_steps {config.max_steps}" if config.max_steps else "")
        raise TrainInputError(f"--resume {config.resume}: the run in {run_dir} is at step {step}, already the end "
                              f"of its {limit}; nothing to train. Pass a larger --epochs or --max_steps to continue it"
                              + (" (with --resume_override, as the cosine schedule depends on them)"
                                 if config.lr_schedule == "cosine" else ""))

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    tokens = caption_tokens(config.txt_filepath, config.context_length)
    if len(tokens) != n_images:
        raise TrainInputError(f"{config.cxr_filepath} holds {n_images} images but {config.txt_filepath} has "
                              f"{len(tokens)} caption rows; they must be row-aligned (re-run preprocessing)")
    images: str | np.ndarray = config.cxr_filepath
    if config.data_in_memory:
        with h5py.File(config.cxr_filepath, "r") as f:
            images = f["cxr"][:]

    model = make_model(config).to(rt.device)
    resolution = model.visual.input_resolution
    if config.grad_checkpointing:
        model.visual.transformer.grad_checkpointing = True
        model.transformer.grad_checkpointing = True
    optimizer = make_optimizer(config, model, rt.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    if state is not None:
        restore_state(state, state_path, run_dir, config, overridden, model, optimizer, scheduler, scaler, rt)
        if rt.is_main:
            log.info("Resumed from %s at step %d (epoch %d, sample %d of %d)", state_path, step, epoch,
                     sample_in_epoch, n_images)

    net: nn.Module = Features(model, trim_text=not config.compile)
    if rt.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    val = validation_data(config, resolution) if config.val_cxr_filepath and rt.is_main else None
    metrics_path = run_dir / "metrics.csv"
    if rt.is_main:
        if state is not None and metrics_path.exists():
            dropped = trim_metrics(metrics_path, step)
            if dropped:
                log.info("resume: dropped %d rows of %s logged after step %d (the saved state)", dropped,
                         metrics_path, step)
        else:
            with open(metrics_path, "w", newline="") as f:
                csv.writer(f).writerow(METRIC_FIELDS)

    def save_state(weights_name: str, state_name: str) -> None:
        """Weights, then training state, then the latest pointer: each write atomic."""
        atomic_save(model.state_dict(), run_dir / weights_name)
        atomic_save({"weights": weights_name, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                     "epoch": epoch, "sample_in_epoch": sample_in_epoch, "samples_per_epoch": n_images,
                     "order_seed": order_seed, "best": [list(b) for b in best], "rng": rng_state(),
                     "config": plain_config(config), "world": rt.world, "data": data}, run_dir / state_name)
        pointer = run_dir / "latest.json.tmp"
        pointer.write_text(json.dumps({"state": state_name, "step": step}))
        os.replace(pointer, run_dir / "latest.json")

    def rotate_periodic() -> None:
        if not config.keep_last:
            return
        saved = sorted((int(p.stem.split("_")[1]), p) for p in run_dir.glob("checkpoint_*.pt"))
        for s, path in saved[:-config.keep_last]:
            path.unlink(missing_ok=True)
            (run_dir / f"checkpoint_{s}.state").unlink(missing_ok=True)

    def validate() -> float:
        auc = validation_auroc(model, val[0], val[1], COMPETITION_LABELS, tuple(config.val_pair_template))
        name = f"best_{config.batch_size * rt.world}_{config.lr}_{config.model_name}_{step}_{auc:.3f}.pt"
        if len(best) < config.keep_best or auc > min(b[0] for b in best):
            atomic_save(model.state_dict(), run_dir / name)
            best.append((auc, step, name))
            best.sort(key=lambda b: (-b[0], b[1]))
            for _, _, dropped in best[config.keep_best:]:
                (run_dir / dropped).unlink(missing_ok=True)
            del best[config.keep_best:]
        log.info("step %d: validation mean AUROC %.4f (best %.4f)", step, auc, best[0][0])
        return auc

    first_step = step
    running, window_start, window_pairs = [], time.perf_counter(), 0
    progress = tqdm(total=total_steps, initial=step, desc="training", disable=not rt.is_main)
    # One loader for the whole run (workers live as long as the run), over the batches that
    # remain: epoch by epoch, each from the sampler's seeded order, from the sample a resume left at.
    loader = pair_loader(images, tokens, [idx for _, _, idx in plan], config.num_workers, rt.device)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (e, consumed, _), (imgs, txt) in zip(plan, loader):
        pending.append((device_transform(imgs.to(rt.device, non_blocking=True), resolution),
                        txt.to(rt.device, non_blocking=True)))
        end_of_epoch = consumed >= n_images
        if len(pending) < config.accum_freq and not end_of_epoch:
            continue
        loss = train_step(net, model, pending, optimizer, scaler, config, rt)
        scheduler.step()
        step += 1
        epoch, sample_in_epoch = (e + 1, 0) if end_of_epoch else (e, consumed)
        if end_of_epoch:
            order_seed = config.seed
        running.append(loss)
        window_pairs += sum(img.shape[0] for img, _ in pending) * rt.world
        pending = []
        progress.update(1)

        val_auc = ""
        is_val_step = bool(config.val_cxr_filepath and config.val_interval and step % config.val_interval == 0)
        if is_val_step and val is not None:
            val_auc = f"{validate():.4f}"
        if step % config.log_interval == 0 or is_val_step or step == total_steps:
            mean_loss = torch.stack(running).mean()
            if rt.world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= rt.world
            rate = window_pairs / (time.perf_counter() - window_start)
            if rt.is_main:
                progress.set_postfix(loss=f"{mean_loss.item():.3f}", pairs_s=f"{rate:.1f}")
                with open(metrics_path, "a", newline="") as f:
                    csv.writer(f).writerow([step, e, f"{mean_loss.item():.6f}", f"{scheduler.get_last_lr()[0]:.3g}",
                                            f"{model.logit_scale.item():.6f}", f"{rate:.2f}", val_auc])
            running, window_start, window_pairs = [], time.perf_counter(), 0
        if rt.is_main and step % config.save_interval == 0:
            save_state(f"checkpoint_{step}.pt", f"checkpoint_{step}.state")
            rotate_periodic()
        if step >= total_steps:
            break
    progress.close()
    if step == first_step:
        # Never an untrained model saved as the final one.
        raise TrainInputError(f"the run in {run_dir} took no optimizer step (no batches left in --epochs "
                              f"{config.epochs}); no checkpoint was written")

    final = run_dir / "checkpoint.pt"
    if rt.is_main:
        save_state("checkpoint.pt", "checkpoint.state")
        plot_loss(metrics_path, run_dir / "loss.png")
        log.info("Saved %s", final)
    if rt.world > 1:
        dist.barrier()
    return final


def restore_state(state: dict, state_path: Path, run_dir: Path, config: Namespace, overridden: set[str],
                  model: CLIP, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                  rt: Runtime) -> None:
    """Load a checked training state into the run's objects, taking the new values of the
    ``overridden`` flags: the optimizer's hyperparameters (lr, momentum, weight decay) and the
    schedule always follow ``config``; a new optimizer type starts from a fresh optimizer state."""
    weights = state_path.parent / str(state["weights"])
    try:
        weights_state = clip.load_checkpoint(weights)
    except (RuntimeError, OSError) as err:
        raise TrainInputError(_unusable_message(config.resume, _Unusable(weights, f"is damaged ({_first_line(err)})"),
                                                run_dir, state_path)) from None
    try:
        clip.load_weights(model, weights_state, str(weights))
    except RuntimeError as err:
        raise TrainInputError(f"--resume {config.resume}: {err}") from None
    # The new flags' hyperparameters, as the optimizer was just built with them.
    fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if "optimizer" in overridden:
        log.info("resume: --optimizer %s -> %s: the new optimizer starts from a fresh state (no momentum or moment "
                 "estimates carried over)", state["config"].get("optimizer"), config.optimizer)
    else:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise TrainInputError(f"--resume {config.resume}: the optimizer state in {state_path} does not fit this "
                                  f"model and --optimizer {config.optimizer} ({_first_line(err)})") from None
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update(fresh)
    scheduler.load_state_dict(state["scheduler"])
    # The schedule's base LR is the new --lr; the current LR is where the (new) schedule stands.
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if rt.use_scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


def train_step(net: nn.Module, model: CLIP, micro: list[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, config: Namespace,
               rt: Runtime) -> torch.Tensor:
    """One optimizer step over one or more micro-batches; returns the loss (detached).

    With several micro-batches (``--accum_freq``) the features of all of them are first
    computed without gradient and cached; each micro-batch is then re-encoded with gradient
    and scored against the cached rest, so the summed gradient is that of the contrastive
    loss over the whole effective batch (open_clip's scheme, with the logit scale's gradient
    counted once rather than once per micro-batch), at one micro-batch's memory.
    """
    optimizer.zero_grad(set_to_none=True)
    if len(micro) == 1:
        with rt.autocast():
            image_features, text_features, logit_scale = net(*micro[0])
            loss = clip_loss(image_features, text_features, logit_scale, config.gather_with_grad,
                             config.local_loss, rt.rank, rt.world)
        scaler.scale(loss).backward()
    else:
        with torch.no_grad(), rt.autocast():
            cached = [net(images, texts)[:2] for images, texts in micro]
        for j, (images, texts) in enumerate(micro):
            sync = rt.world == 1 or j == len(micro) - 1
            with (nullcontext() if sync else net.no_sync()):
                with rt.autocast():
                    image_features, text_features, logit_scale = net(images, texts)
                    all_images = torch.cat([image_features if k == j else c[0] for k, c in enumerate(cached)])
                    all_texts = torch.cat([text_features if k == j else c[1] for k, c in enumerate(cached)])
                    # every micro-loss is the whole-batch loss: let the temperature's gradient in once
                    scale = logit_scale if j == len(micro) - 1 else logit_scale.detach()
                    loss = clip_loss(all_images, all_texts, scale, config.gather_with_grad,
                                     config.local_loss, rt.rank, rt.world)
                scaler.scale(loss).backward()
    if config.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if config.clamp_logit_scale:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return loss.detach()


def plot_loss(metrics_path: Path, out_path: Path) -> None:
    """Training loss (and validation AUROC when present) against step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = pd.read_csv(metrics_path)
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(frame["step"], frame["loss"], label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if frame["val_auroc"].notna().any():
        twin = ax.twinx()
        valid = frame[frame["val_auroc"].notna()]
        twin.plot(valid["step"], valid["val_auroc"], "o-", color="tab:orange", label="validation mean AUROC")
        twin.set_ylabel("validation mean AUROC")
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
