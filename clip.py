"""Load CLIP weights, tokenize text, and transform chest X-rays for the model.

Everything that reads a checkpoint goes through :func:`load_checkpoint` and
:func:`load_weights`: ``torch.load(weights_only=True)``, the released mixed fp16/fp32
layout upcast to fp32, DDP ``module.`` prefixes and ``{"model": ...}`` /
``{"state_dict": ...}`` wrappers accepted, and a strict key check whose error says what is
missing, what is unexpected and which architecture the file holds.

Nothing here touches the network at import. :func:`load` looks for OpenAI weights in
``models/`` and ``~/.cache/clip`` and only then downloads (with SHA256 verification).
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from model import CLIP, build_model, model_config
from simple_tokenizer import SimpleTokenizer

__all__ = ["available_models", "load", "tokenize", "cxr_transform", "load_checkpoint", "load_weights"]

log = logging.getLogger(__name__)

# The URL's path segment is the file's SHA256.
_MODELS = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
}

# Where :func:`load` looks for OpenAI weights before downloading.
MODELS_DIR = Path(__file__).resolve().parent / "models"
CACHE_DIR = Path("~/.cache/clip").expanduser()

# CheXzero's grayscale normalisation on the 0-255 scale (not CLIP's RGB statistics).
CXR_MEAN = 101.48761
CXR_STD = 83.43944


def available_models() -> list[str]:
    """Names of the OpenAI CLIP models :func:`load` knows."""
    return list(_MODELS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_or_download(name: str, download_root: Path) -> Path:
    """Path of a verified local copy of OpenAI model ``name``; download it if none exists."""
    url = _MODELS[name]
    expected = url.split("/")[-2]
    filename = os.path.basename(url)
    for folder in (MODELS_DIR, download_root):
        candidate = folder / filename
        if candidate.is_file():
            if _sha256(candidate) != expected:
                raise RuntimeError(f"{candidate} does not have the SHA256 of {name} ({expected}); "
                                   f"delete it or replace it with the official file from {url}")
            return candidate
    target = download_root / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    log.info("Downloading %s to %s", url, target)
    try:
        urllib.request.urlretrieve(url, partial)
    except OSError as err:
        raise RuntimeError(
            f"Could not download the OpenAI {name} weights ({err}). Offline, put {filename} "
            f"(SHA256 {expected}, from {url}) in {MODELS_DIR}/ or {download_root}/.") from err
    if _sha256(partial) != expected:
        partial.unlink()
        raise RuntimeError(f"Downloaded {url} but its SHA256 does not match {expected}; try again.")
    partial.replace(target)
    return target


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder (state-dict zips have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from ``path`` as fp32 tensors on the CPU.

    Accepts plain state dicts (the released CheXzero files, mixed fp16/fp32), DDP
    ``module.``-prefixed keys, ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers and
    OpenAI TorchScript archives.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    if _is_torchscript(path):
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is OpenAI's format
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RuntimeError(f"Could not read checkpoint {path}: {err}. Is it a complete "
                               f"torch.save'd state dict?") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise RuntimeError(f"Checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}


def _describe(state_dict: dict[str, torch.Tensor]) -> str:
    """A one-line architecture summary of a state dict, for error messages."""
    try:
        cfg = model_config(state_dict)
    except (KeyError, IndexError) as err:
        return f"not a CLIP state dict (no {err})"
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly; on mismatch, say exactly what differs."""
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
        raise RuntimeError(
            f"{source} does not fit the model.\n"
            f"  missing keys ({len(missing)}): {head(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {head(unexpected)}\n"
            f"  shape mismatches ({len(wrong_shape)}): {head(wrong_shape)}\n"
            f"  {source} holds: {_describe(state_dict)}\n"
            f"  model is: {_describe(own)}\n"
            f"Released CheXzero checkpoints are ViT-B/32 (pretrained=True); "
            f"--random_init checkpoints are the 320-px model (pretrained=False).")
    model.load_state_dict(state_dict, strict=True)
    return model


def cxr_transform(image_resolution: int) -> transforms.Compose:
    """CheXzero's tensor transform for (..., 3, 320, 320) float images with values 0-255.

    Normalise with the CXR mean/std, then, for models below 320 px, bicubic resize with
    ``antialias=False`` (torchvision 0.11 behaviour, which the released models saw).
    """
    steps: list[nn.Module] = [transforms.Normalize((CXR_MEAN,) * 3, (CXR_STD,) * 3)]
    if image_resolution != 320:
        steps.append(transforms.Resize(image_resolution, interpolation=InterpolationMode.BICUBIC, antialias=False))
    return transforms.Compose(steps)


def load(name: str, device: str | torch.device = "cuda" if torch.cuda.is_available() else "cpu",
         jit: bool = False, download_root: str | None = None) -> tuple[CLIP, transforms.Compose]:
    """Build a CLIP from an OpenAI model name or a checkpoint path.

    Returns ``(model, transform)``: an fp32 model in eval mode on ``device`` and the CheXzero
    CXR transform for its input resolution. TorchScript archives (as OpenAI distributes them)
    and plain state dicts are both accepted; the model is always rebuilt in Python.
    """
    if jit:
        raise ValueError("jit=True is not supported: CheXzero always loads with jit=False, and the "
                         "model is rebuilt from the archive's weights.")
    if name in _MODELS:
        path = _find_or_download(name, Path(download_root).expanduser() if download_root else CACHE_DIR)
    elif Path(name).is_file():
        path = Path(name)
    else:
        raise RuntimeError(f"Model {name} not found; available models = {available_models()} or an existing file")
    model = build_model(load_checkpoint(path)).to(device)
    return model, cxr_transform(model.visual.input_resolution)


@lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    """Token ids ``[SOT] + bpe(text) + [EOT]``, zero-padded to ``context_length``.

    Too-long text raises unless ``truncate`` is set; then it is cut to ``context_length``
    with EOT forced at the last position (CheXzero's ``preprocess_text`` rule).
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = _tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [tok.sot] + tok.encode(text) + [tok.eot]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text!r} is {len(ids)} tokens, longer than the context length "
                                   f"{context_length}; pass truncate=True to cut it")
            ids = ids[:context_length]
            ids[-1] = tok.eot
        result[i, : len(ids)] = torch.tensor(ids)
    return result
