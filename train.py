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
  beside each and an atomically written ``latest.json`` pointer for ``--resume latest``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import time
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
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

import clip
from eval import COMPETITION_LABELS
from model import CLIP, MODEL_CONFIGS

log = logging.getLogger(__name__)


# =========================================================================== model
def default_device() -> torch.device:
    """cuda:0 when a GPU is present, else the CPU (the original required CUDA)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def load_clip(model_path: str | None = None, pretrained: bool = False, context_length: int = 77) -> CLIP:
    """Build CheXzero's CLIP and optionally load a checkpoint into it.

    - ``pretrained=True`` with ``model_path``: the ViT-B/32 architecture is built locally
      and the checkpoint loaded strictly (no download; the original fetched OpenAI's
      weights only to overwrite them).
    - ``pretrained=True`` without ``model_path``: OpenAI's ViT-B/32 initial weights via
      :func:`clip.load` (``models/`` or ``~/.cache/clip``, else download).
    - ``pretrained=False``: the 320-px / patch-16 / embed-768 random-init model.
    """
    device = default_device()
    if pretrained and model_path is None:
        model, _ = clip.load("ViT-B/32", device=device, jit=False)
        return model
    config = dict(MODEL_CONFIGS["vit-b-32" if pretrained else "random-init-320"])
    if not pretrained:
        config["context_length"] = context_length
    model = CLIP(**config)
    if model_path is not None:
        clip.load_weights(model, clip.load_checkpoint(model_path), source=str(model_path))
    return model.to(device)


def preprocess_text(texts: list[str], model: CLIP) -> torch.LongTensor:
    """Tokenize captions for ``model``: too-long ones are cut with EOT forced at the end.

    The tokenizer (and its BPE cache) is built once per process, not once per batch.
    """
    return clip.tokenize(list(texts), context_length=model.context_length, truncate=True)


SIZE_OVERRIDES = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                  "transformer_width", "transformer_layers")


def make_model(config: Namespace) -> CLIP:
    """The model a training run starts from.

    Without ``--random_init`` (and with the default config) this is OpenAI's ViT-B/32, as
    the original; ``--random_init`` gives the 320-px model; ``--model_config`` and the size
    flags pick any other shape (text heads follow width // 64, as ``build_model`` infers).
    """
    name = config.model_config or ("random-init-320" if config.random_init else "vit-b-32")
    overrides = {k: getattr(config, k) for k in SIZE_OVERRIDES if getattr(config, k, None) is not None}
    if name == "vit-b-32" and not config.random_init and not overrides:
        try:
            model, _ = clip.load("ViT-B/32", device="cpu", jit=False)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\nTo train without OpenAI's weights, pass --random_init.") from err
        return model.train()
    vit_only = sorted({"vision_layers", "vision_patch_size"} & overrides.keys())
    if isinstance(MODEL_CONFIGS[name]["vision_layers"], tuple) and vit_only:
        raise ValueError(f"--model_config {name} has a ResNet image tower (bottlenecks per stage "
                         f"{MODEL_CONFIGS[name]['vision_layers']}); {', '.join('--' + k for k in vit_only)} "
                         "only apply to ViT configs")
    shape = dict(MODEL_CONFIGS[name], context_length=config.context_length, **overrides)
    shape["transformer_heads"] = max(1, shape["transformer_width"] // 64)
    return CLIP(**shape).train()


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
        raise ValueError(f"{txt_filepath} has no column {column!r} (columns: {list(frame.columns)})")
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
    """Number of images in an h5 file written by preprocessing (dataset ``cxr``)."""
    with h5py.File(cxr_filepath, "r") as f:
        if "cxr" not in f:
            raise KeyError(f"{cxr_filepath} has no dataset 'cxr' (keys: {list(f)}); was it written by "
                           f"preprocess_train_data.py?")
        return f["cxr"].shape[0]


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


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This rank's index batches for one epoch, from ``DistributedSampler``'s seeded order.

    With W processes, global batch b is the union of the ranks' batch b, and equals batch b
    of a single process with batch W*B: the contrastive loss over the gathered batch is the
    same (up to the order of its rows).
    """
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


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
        raise RuntimeError("--device cuda was asked for but no GPU is visible; use --device cpu")
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
def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(resume: str, run_dir: Path) -> Path:
    """The training-state file named by ``--resume`` (a path, or ``latest``)."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such training-state file")
        return path
    pointer = run_dir / "latest.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"--resume latest: {pointer} does not exist; nothing to resume in {run_dir}")
    return run_dir / json.loads(pointer.read_text())["state"]


# =========================================================================== validation
def validation_auroc(model: CLIP, loader: DataLoader, y_true: np.ndarray, labels: list[str],
                     pair_template: tuple[str, str] = ("{}", "no {}")) -> float:
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


def validation_data(config: Namespace, resolution: int) -> tuple[DataLoader, np.ndarray]:
    """Loader over the validation h5 and its labels (CheXpert-valid format, by name)."""
    import zero_shot
    labels = pd.read_csv(config.val_label_path)
    missing = [c for c in COMPETITION_LABELS if c not in labels.columns]
    if missing:
        raise ValueError(f"{config.val_label_path} lacks the label columns {missing}")
    n = h5_rows(config.val_cxr_filepath)
    if n != len(labels):
        raise ValueError(f"{config.val_cxr_filepath} holds {n} images but {config.val_label_path} has "
                         f"{len(labels)} rows; they must be row-aligned")
    dataset = zero_shot.CXRTestDataset(config.val_cxr_filepath, transform=clip.cxr_transform(resolution))
    loader = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0)
    return loader, labels[COMPETITION_LABELS].to_numpy().astype(int)


# =========================================================================== loop
METRIC_FIELDS = ["step", "epoch", "loss", "lr", "logit_scale", "pairs_per_s", "val_auroc"]


def train(config: Namespace) -> Path:
    """Run (or resume) contrastive training; return the final checkpoint path."""
    rt = setup_runtime(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    run_dir = Path(config.save_dir) / config.model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = sorted(p.name for pattern in ("checkpoint*.pt", "best_*.pt") for p in run_dir.glob(pattern))
    if earlier and not config.resume:
        # A fresh run would overwrite some of them and leave the rest to be mistaken for its own.
        raise FileExistsError(f"{run_dir} already holds an earlier run's checkpoints ({', '.join(earlier[:3])}"
                              f"{' ...' if len(earlier) > 3 else ''}). Continue it with --resume latest, or train "
                              "into another --model_name / --save_dir, or delete the folder.")

    n_images = h5_rows(config.cxr_filepath)
    tokens = caption_tokens(config.txt_filepath, config.context_length)
    if n_images != len(tokens):
        raise ValueError(f"{config.cxr_filepath} holds {n_images} images but {config.txt_filepath} has "
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
    batches_per_epoch = math.ceil(math.ceil(n_images / rt.world) / config.batch_size)  # per rank
    steps_per_epoch = math.ceil(batches_per_epoch / config.accum_freq)
    total_steps = min(config.max_steps or 10 ** 12, steps_per_epoch * config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)

    step, epoch, batch_in_epoch, best = 0, 0, 0, []
    if config.resume:
        state = torch.load(resolve_resume(config.resume, run_dir), map_location="cpu", weights_only=False)
        clip.load_weights(model, clip.load_checkpoint(run_dir / state["weights"]), state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch, best = state["step"], state["epoch"], state["batch_in_epoch"], state["best"]
        set_rng_state(state["rng"])
        if rt.is_main:
            log.info("Resumed from %s at step %d (epoch %d, batch %d)", state["weights"], step, epoch, batch_in_epoch)

    net: nn.Module = Features(model, trim_text=not config.compile)
    if rt.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    val = validation_data(config, resolution) if config.val_cxr_filepath and rt.is_main else None
    metrics_path = run_dir / "metrics.csv"
    if rt.is_main and (not config.resume or not metrics_path.exists()):
        with open(metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)

    def save_state(weights_name: str, state_name: str) -> None:
        """Weights, then training state, then the latest pointer: each write atomic."""
        atomic_save(model.state_dict(), run_dir / weights_name)
        atomic_save({"weights": weights_name, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                     "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best": best, "rng": rng_state(),
                     "config": vars(config)}, run_dir / state_name)
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

    running, window_start, window_pairs = [], time.perf_counter(), 0
    progress = tqdm(total=total_steps, initial=step, desc="training", disable=not rt.is_main)
    # One loader for the whole run (workers live as long as the run), over the batches that
    # remain: epoch by epoch, each from the sampler's seeded order, starting where a resume left.
    plan = [(e, b, idx) for e in range(epoch, config.epochs)
            for b, idx in enumerate(epoch_batches(n_images, config.batch_size, e, config.seed, rt.rank, rt.world))
            if e > epoch or b >= batch_in_epoch]
    loader = pair_loader(images, tokens, [idx for _, _, idx in plan], config.num_workers, rt.device)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (e, b, _), (imgs, txt) in zip(plan, loader):
        pending.append((device_transform(imgs.to(rt.device, non_blocking=True), resolution),
                        txt.to(rt.device, non_blocking=True)))
        end_of_epoch = b == batches_per_epoch - 1
        if len(pending) < config.accum_freq and not end_of_epoch:
            continue
        loss = train_step(net, model, pending, optimizer, scaler, config, rt)
        scheduler.step()
        step += 1
        epoch, batch_in_epoch = (e + 1, 0) if end_of_epoch else (e, b + 1)
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

    final = run_dir / "checkpoint.pt"
    if rt.is_main:
        save_state("checkpoint.pt", "checkpoint.state")
        plot_loss(metrics_path, run_dir / "loss.png")
        log.info("Saved %s", final)
    if rt.world > 1:
        dist.barrier()
    return final


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
