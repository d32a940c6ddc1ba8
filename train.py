"""Model loading and caption tokenization for contrastive CXR-report training."""
from __future__ import annotations

import logging

import torch

import clip
from model import CLIP, MODEL_CONFIGS

log = logging.getLogger(__name__)


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
