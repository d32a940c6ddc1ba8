"""Where-maps: which part of a chest X-ray drives a finding's zero-shot score.

A label's score is s+ - s-: the image embedding's cosine with the label's positive text embedding t+
minus its cosine with the negative one t- (:func:`zero_shot.pair_weights`). CheXzero's probability
exp(s+) / (exp(s+) + exp(s-)) is sigmoid(s+ - s-), so the score is that probability's logit. A
where-map spreads the score over the image. Two methods (:data:`MAP_METHODS`):

- ``patch`` (one forward pass per model; MaskCLIP's observation, Zhou et al. 2022, that a CLIP image
  tower's spatial tokens, projected as its pooled token is, live in the joint image-text space):
  each spatial token of the tower's last layer is projected as the pooled one, L2-normalised as the
  pooled feature is, and scored against t+ - t- (so each position gets its own s+ - s-).

  - ViT: the patch tokens after the last block, through ``ln_post`` and ``proj`` as the class token.
  - ModifiedResNet: each position of the final feature grid, plus that position's row of the
    attention pool's positional embedding, through the pool's value projection and ``c_proj``: the
    pool's output had all its attention been on that position. The positional embedding is kept
    because it is part of what the pool reads at that position (the pooled output is ``c_proj`` of
    the attention-weighted mean of exactly these values, per head); with identical features and
    identical positional rows every position's token *is* the pooled output. (On the demo's tiny-rn the
    positional rows are small beside the features, norm 1 against 14: leaving them out, as MaskCLIP
    does, moves the scores by about 0.002 and no argmax.)

  The result is a g x g grid (g = input resolution / 32 for ViT-B/32 and the ResNets: 7 for the
  released ViT-B/32, 3 for the demo's 96-px ``tiny-rn``), upsampled bilinearly (:func:`upsample`).
- ``occlusion`` (model-agnostic; one forward pass per window, 82 instead of 1 per image: about 60 times
  slower, 1.45 s against 0.023 s per image for the demo's 5 tiny-rn checkpoints on one CPU thread): the drop in
  s+ - s- when a square of the image is filled with a constant (:class:`Occlusion`; by default
  64-px windows every 32 px, 81 on a 320-px image, filled with the training mean grey level
  ``clip.CXR_MEAN``, which the model's normalisation maps to 0; black, the pad colour, would read as
  air in an X-ray). Each pixel gets the mean drop of the windows that cover it (1 to 4 of them).

In both a positive value means "this region pushes towards the finding", in units of s+ - s-.

Geometry: maps lie over the images they were computed on (the 320 x 320 resize-and-padded images of
the h5 files and of predict.py): map pixel (y, x) is over image pixel (y, x). The model sees the whole
image resized to its input resolution, so token (i, j) of a g x g grid covers image pixels
[i*S/g, (i+1)*S/g) and bilinear upsampling (``align_corners=False``) puts its value at that block's centre.

Ensembles: the mean of the per-model maps in score units, with no per-model rescaling: every model's
map is a difference of cosines (one unit), the sign keeps its meaning, and the ensemble's probability
is likewise a plain mean. Normalise for display or scoring downstream (the overlays use a symmetric
colour scale per map; ``eval.iou_at_threshold`` min-max normalises per image).

Memory: full-resolution maps are 400 kB per image and label in float32 (500 images x 5 labels x
320 x 320: 1 GB). :func:`h5_map_batches` yields a batch at a time, so that a consumer (eval) holds one
batch; :func:`maps_for_h5` collects the rows asked for (e.g. only the images showing the finding) in
the dtype asked for (float16 halves it); :func:`patch_maps` alone keeps the g x g grid.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from tqdm import tqdm

import clip
import cxr_data
import zero_shot as zs
from labels import PAIR_TEMPLATE
from model import AttentionPool2d, ModifiedResNet, VisionTransformer
from run_zero_shot import expand_model_paths

log = logging.getLogger(__name__)

MAP_METHODS = ("patch", "occlusion")
#: Images mapped at once by predict.Predictor: a batch's maps are 400 kB per image and label.
MAP_BATCH = 16


@dataclass(frozen=True)
class Occlusion:
    """The occlusion method's settings, in pixels of the images the maps are computed on.

    ``window`` x ``window`` squares, their corners every ``stride`` pixels (and one more flush with the
    far edge, so every pixel is covered), filled with ``fill`` (grey level 0..255); ``batch_size``
    occluded images go through a model at once.
    """

    window: int = 64
    stride: int = 32
    fill: float = clip.CXR_MEAN
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.batch_size < 1:
            raise ValueError(f"window, stride and batch_size must be >= 1, got {self}")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"fill is a grey level 0..255, got {self.fill}")

    def corners(self, extent: int) -> list[int]:
        """Window starts along an axis of ``extent`` pixels: every ``stride``, plus one flush with the end."""
        if self.window > extent:
            raise ValueError(f"an occlusion window of {self.window} px does not fit an image {extent} px wide")
        starts = list(range(0, extent - self.window + 1, self.stride))
        return starts if starts[-1] == extent - self.window else [*starts, extent - self.window]

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(K, height, width) bool: True inside window k, windows in row-major order of their corners."""
        def spans(extent: int) -> torch.Tensor:   # (windows along the axis, extent): inside each window
            place = torch.arange(extent, device=device)
            starts = torch.tensor(self.corners(extent), device=device).unsqueeze(1)
            return (place >= starts) & (place < starts + self.window)

        rows, columns = spans(height), spans(width)
        return (rows[:, None, :, None] & columns[None, :, None, :]).reshape(-1, height, width)


@dataclass
class WhereMaps:
    """Maps and probabilities of N images for C labels.

    ``maps`` (N, C, H, W) float32 over the images' pixels (NaN for an image that could not be read),
    ``probabilities`` (N, C) the ensemble's zero-shot probabilities, ``errors`` per image why it could
    not be read (None where it was), ``method`` one of :data:`MAP_METHODS`.
    """

    labels: list[str]
    method: str
    maps: np.ndarray
    probabilities: np.ndarray
    errors: list[str | None] = field(default_factory=list)


# --------------------------------------------------------------------------- tokens
def label_directions(weights: torch.Tensor) -> torch.Tensor:
    """(embed_dim, C) t+ - t- from :func:`zero_shot.pair_weights`' (embed_dim, 2C): a unit feature f
    scores f @ (t+ - t-) = s+ - s-."""
    positive, negative = weights.float().chunk(2, dim=1)
    return positive - negative


def vit_tokens(visual: VisionTransformer, hidden: torch.Tensor) -> torch.Tensor:
    """(B, g*g, embed_dim): the patch tokens of the last block's output ``hidden`` (B, 1 + g*g, width)
    through ``ln_post`` and ``proj``, as the ViT projects its class token."""
    return visual.ln_post(hidden[:, 1:]) @ visual.proj


def attnpool_tokens(pool: AttentionPool2d, features: torch.Tensor) -> torch.Tensor:
    """(B, h*w, embed_dim), row-major: each position of ``features`` (B, C, h, w), plus its row of the
    positional embedding, through the value projection and ``c_proj``; the pool's output had its
    attention been wholly on that position."""
    x = features.flatten(2).transpose(1, 2)
    x = x + pool.positional_embedding[1:].to(x.dtype)
    return pool.c_proj(pool.v_proj(x))


def image_tokens(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled (B, embed_dim), tokens (B, g, g, embed_dim)), neither normalised, of model-ready images,
    from one forward pass of ``model.encode_image`` (the last layer's input is caught by a hook)."""
    visual = model.visual
    caught: list[torch.Tensor] = []
    if isinstance(visual, VisionTransformer):
        hook = visual.transformer.register_forward_hook(lambda module, args, output: caught.append(output))
    elif isinstance(visual, ModifiedResNet):
        hook = visual.attnpool.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
    else:
        raise TypeError(f"patch maps need a VisionTransformer or ModifiedResNet image tower, not "
                        f"{type(visual).__name__}; use the occlusion method")
    try:
        pooled = model.encode_image(images)
    finally:
        hook.remove()
    tokens = vit_tokens(visual, caught[0]) if isinstance(visual, VisionTransformer) \
        else attnpool_tokens(visual.attnpool, caught[0])
    grid = math.isqrt(tokens.shape[1])
    return pooled, tokens.reshape(len(tokens), grid, grid, -1)


# --------------------------------------------------------------------------- the two methods
def _fp32(device: torch.device) -> torch.autocast:
    """fp32 arithmetic for the scores even inside a caller's autocast: bf16 would round away the small
    differences of cosines (and of scores) that the maps are made of."""
    return torch.autocast(device.type, enabled=False)


def _scores(features: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(..., C) s+ - s- of features (..., D), L2-normalised here, in fp32."""
    with _fp32(features.device):
        return F.normalize(features.float(), dim=-1) @ directions.to(features.device, torch.float32)


def _patch(model: nn.Module, images: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit pooled features (B, D), score grid (B, C, g, g)) of model-ready images."""
    pooled, tokens = image_tokens(model, images)
    return F.normalize(pooled.float(), dim=-1), _scores(tokens, directions).permute(0, 3, 1, 2)


def patch_maps(model: nn.Module, images: torch.Tensor, directions: torch.Tensor) -> np.ndarray:
    """(B, C, g, g) float32 per-token s+ - s- of model-ready images (see the module docstring); the
    model in eval mode, ``directions`` from :func:`label_directions`. :func:`upsample` puts the grid
    over the image."""
    with torch.inference_mode():
        return _patch(model, images, directions)[1].cpu().numpy()


def _features(model: nn.Module, pixels: torch.Tensor, transform: nn.Module) -> torch.Tensor:
    return model.encode_image(transform(pixels.unsqueeze(1)))


def _occlusion(model: nn.Module, pixels: torch.Tensor, directions: torch.Tensor, transform: nn.Module,
               occlusion: Occlusion) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit features (B, D) of the intact images, drop maps (B, C, H, W)) of grey images (B, H, W)."""
    n, height, width = pixels.shape
    masks = occlusion.masks(height, width, pixels.device)
    pixels = pixels.float()
    features = _features(model, pixels, transform)
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(len(masks))).to(pixels.device)
    scores = torch.cat([
        _scores(_features(model, torch.where(masks[chunk[:, 1]], occlusion.fill, pixels[chunk[:, 0]]), transform),
                directions) for chunk in pairs.split(occlusion.batch_size)])
    with _fp32(pixels.device):
        drops = _scores(features, directions).unsqueeze(1) - scores.view(n, len(masks), -1)     # (B, K, C)
        flat = masks.flatten(1).float()                                                         # (K, H*W)
        heat = torch.einsum("bkc,kp->bcp", drops, flat) / flat.sum(dim=0)
    return F.normalize(features.float(), dim=-1), heat.view(n, -1, height, width)


def occlusion_maps(model: nn.Module, pixels: torch.Tensor | np.ndarray, directions: torch.Tensor,
                   transform: nn.Module | None = None, occlusion: Occlusion = Occlusion()) -> np.ndarray:
    """(B, C, H, W) float32: per pixel the mean drop in s+ - s- over the windows that cover it (so constant
    over each stride x stride cell: a tie for the maximum goes to its top-left pixel in ``np.argmax``).

    ``pixels``: grey images (B, H, W), 0..255 (the 320-px resize-and-padded images), occluded before
    ``transform`` (default :class:`cxr_data.DeviceTransform` to ``model.visual.input_resolution``) makes
    them model-ready; any ``model`` with ``encode_image``, in eval mode.
    """
    if isinstance(pixels, np.ndarray):
        pixels = torch.as_tensor(pixels, device=next(model.parameters()).device)
    transform = transform if transform is not None else cxr_data.DeviceTransform(model.visual.input_resolution)
    with torch.inference_mode():
        return _occlusion(model, pixels, directions, transform, occlusion)[1].cpu().numpy()


def upsample(maps: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> np.ndarray:
    """(B, C, h, w) -> (B, C, *size) float32, bilinear with ``align_corners=False`` (cell centres over
    the centres of their pixel blocks). A map already that size comes back unchanged."""
    maps = torch.as_tensor(maps).float()
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.cpu().numpy()


def ensemble_maps(models: Sequence[nn.Module], weights: Sequence[torch.Tensor], pixels: torch.Tensor,
                  method: str = "patch", size: int | None = None, occlusion: Occlusion = Occlusion()
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(maps (B, C, size, size) float32, probabilities (B, C)) of grey images ``pixels`` (B, H, W) 0..255.

    Per model: its :func:`zero_shot.pair_weights` ``weights`` (C labels), the image transform for its
    input resolution, its map (``method``) upsampled to ``size`` (default the images' own, H = W);
    then the mean of the models' maps and of their probabilities. Models in eval mode, on one device;
    under a caller's autocast only the models' forward passes run in low precision, the scores in fp32.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"method must be one of {MAP_METHODS}, got {method!r}")
    size = size or pixels.shape[-1]
    total, probabilities = None, []
    with torch.inference_mode():
        for model, pair in zip(models, weights):
            transform = cxr_data.DeviceTransform(model.visual.input_resolution)
            directions = label_directions(pair)
            if method == "patch":
                features, maps = _patch(model, transform(pixels.unsqueeze(1).float()), directions)
            else:
                features, maps = _occlusion(model, pixels, directions, transform, occlusion)
            maps = upsample(maps, size)
            total = maps if total is None else total + maps
            with _fp32(pixels.device):
                probabilities.append(zs.pair_probabilities(features, pair))
    return total / len(models), np.mean(probabilities, axis=0)


# --------------------------------------------------------------------------- h5 rows
def h5_map_batches(model_paths: str | Path | Sequence[str | Path], h5_path: str | Path, labels: Sequence[str],
                   method: str = "patch", rows: Sequence[int] | np.ndarray | None = None, *,
                   pair_template: Sequence[str] = PAIR_TEMPLATE, prompt_style: str = "chexzero",
                   batch_size: int = 16, device: torch.device | str | None = None, size: int | None = None,
                   occlusion: Occlusion = Occlusion(), progress: bool = False
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Maps of an h5's images (``rows``, default all, in that order), ``batch_size`` at a time:
    yields (row numbers (B,), maps (B, C, size, size) float32, probabilities (B, C)).

    ``model_paths``: checkpoint files, globs or folders (architecture read off each), the ensemble;
    the prompts are :func:`zero_shot.prompt_texts` of ``labels``; ``device`` default
    :func:`cxr_data.default_device`. Map pixel (y, x) lies over h5 pixel (y, x).
    """
    paths = expand_model_paths([str(p) for p in ([model_paths] if isinstance(model_paths, (str, Path))
                                                 else model_paths)])
    device = torch.device(device) if device is not None else cxr_data.default_device()
    n_rows = cxr_data.h5_rows(h5_path)
    rows = np.arange(n_rows) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        raise IndexError(f"rows must lie in 0..{n_rows - 1} ({h5_path} has {n_rows} images)")
    positives, negatives = zs.prompt_texts(labels, pair_template, prompt_style)
    models = [zs.load_clip(path, pretrained=None, device=device) for path in paths]
    weights = [zs.pair_weights(model, positives, negatives, model.context_length) for model in models]
    images = cxr_data.H5Images(h5_path)
    log.info("%s maps of %d images of %s for %d labels with %d checkpoints", method, len(rows), h5_path, len(labels),
             len(models))
    for start in tqdm(range(0, len(rows), batch_size), desc=f"{method} maps", unit="batch", disable=not progress):
        batch = rows[start:start + batch_size]
        pixels = torch.from_numpy(np.stack([np.asarray(images[int(r)]) for r in batch])).to(device)
        maps, probabilities = ensemble_maps(models, weights, pixels, method, size, occlusion)
        yield batch, maps, probabilities


def maps_for_h5(model_paths: str | Path | Sequence[str | Path], h5_path: str | Path, labels: Sequence[str],
                method: str = "patch", rows: Sequence[int] | np.ndarray | None = None, *,
                dtype: np.dtype | type = np.float32, **options) -> np.ndarray:
    """(len(rows), C, size, size) maps of an h5's images in ``dtype`` (float16 halves the memory: 1 GB
    of float32 for 500 images x 5 labels at 320 px), rows in the order given; the options of
    :func:`h5_map_batches`. For the pointing game and IoU (``eval.pointing_hits``) pass the rows of
    the images that show the finding."""
    return np.concatenate([maps.astype(dtype, copy=False)
                           for _, maps, _ in h5_map_batches(model_paths, h5_path, labels, method, rows, **options)])


# --------------------------------------------------------------------------- pictures and files
def label_slug(label: str) -> str:
    """A label as a file-name part: lower case, runs of other characters as one '-' ("Pleural Effusion"
    -> "pleural-effusion")."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "label"


def _unique(names: list[str]) -> list[str]:
    """``names`` with each one that repeats suffixed ``-<its index>``, so none collide."""
    repeated = {name for name in names if names.count(name) > 1}
    return [f"{name}-{i}" if name in repeated else name for i, name in enumerate(names)]


def image_names(paths: Sequence[str | Path]) -> list[str]:
    """A file-name stem per image: its file stem, joined with ``_`` to as many of its folders as it takes
    to tell it apart (CheXpert's ``.../patient64741/study1/view1_frontal.jpg`` ->
    ``patient64741_study1_view1_frontal`` when every file is ``view1_frontal``); a name that still
    repeats gets ``-<input index>``."""
    parts = [[part for part in Path(p).with_suffix("").parts if part != Path(p).anchor] or ["image"]
             for p in paths]
    names: list[str | None] = [None] * len(parts)
    for depth in range(1, max((len(p) for p in parts), default=0) + 1):
        keys = ["_".join(p[-depth:]) for p in parts]
        counts = Counter(keys)
        names = [name if name is not None or counts[key] > 1 else key for name, key in zip(names, keys)]
        if all(name is not None for name in names):
            break
    return _unique([name if name is not None else "_".join(p) for name, p in zip(names, parts)])


def overlay(image: np.ndarray, heat: np.ndarray, label: str, probability: float, method: str = "patch",
            region: np.ndarray | None = None) -> Image.Image:
    """A picture of ``heat`` (H, W) over the grey ``image`` (H, W): red where the region pushes towards
    ``label``, blue where it pushes away (a colour scale symmetric about 0, per map), its maximum
    marked with a cross, the label, probability and method in the title, a colour bar in s+ - s-;
    with ``region`` (H, W bool, e.g. a ground-truth mask) its outline in green."""
    figure = Figure(figsize=(4.6, 4), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(image, cmap="gray", vmin=0, vmax=255)
    limit = float(np.nanmax(np.abs(heat))) or 1.0
    shown = axes.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.45)
    top = np.unravel_index(np.nanargmax(heat), heat.shape)
    axes.plot(top[1], top[0], marker="x", color="yellow", markersize=10, markeredgewidth=2)
    if region is not None and region.any():
        axes.contour(region.astype(np.float32), levels=[0.5], colors="lime", linewidths=1)
    axes.set_title(f"{label}: p = {probability:.3f} ({method})", fontsize=10)
    axes.set_axis_off()
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04).set_label(
        "drop in s+ - s-" if method == "occlusion" else "s+ - s-", fontsize=8)
    figure.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def write_image_maps(folder: str | Path, name: str, image: np.ndarray, maps: np.ndarray,
                     probabilities: np.ndarray, labels: Sequence[str], method: str) -> list[Path]:
    """Write one image's ``<folder>/<name>_<label slug>.png`` overlays (:func:`overlay`) and
    ``<folder>/<name>.npz`` (``maps`` (C, H, W) float16, ``probabilities`` (C,), ``labels``, ``method``);
    return the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for slug, label, heat, probability in zip(_unique([label_slug(x) for x in labels]), labels, maps, probabilities):
        path = folder / f"{name}_{slug}.png"
        overlay(image, heat, label, float(probability), method).save(path)
        written.append(path)
    arrays = folder / f"{name}.npz"
    np.savez_compressed(arrays, maps=maps.astype(np.float16), probabilities=np.asarray(probabilities, np.float32),
                        labels=np.asarray(labels, dtype=str), method=np.asarray(method))
    return [*written, arrays]
