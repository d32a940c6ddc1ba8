"""Load CLIP models, tokenize text, and transform chest X-rays for the model.

:func:`load_model` is the project's one model loader: it builds the architecture (a named config
or a dict) or reads it (``model_config.json`` beside the checkpoint, else the state dict's
shapes), and loads the weights strictly. ``clip.load``, ``model.build_model``,
``train.load_clip``, ``train.make_model`` and ``zero_shot.load_clip`` are thin wrappers over it,
each with its documented rule for device and train/eval mode.

Everything that reads a checkpoint goes through :func:`load_checkpoint` and
:func:`load_weights`: ``torch.load(weights_only=True)``, the released mixed fp16/fp32
layout upcast to fp32, DDP ``module.`` prefixes and ``{"model": ...}`` /
``{"state_dict": ...}`` wrappers accepted, and a strict key check whose error says what is
missing, what is unexpected and which architecture the file holds.

Nothing here touches the network at import. :func:`load` looks for OpenAI weights in
``models/`` and ``~/.cache/clip`` and only then downloads (with SHA256 verification).
:data:`WEIGHTS_FILES` is the one table of weights files (name, SHA256, source) that
download_checkpoints.py fetches and models/README.md shows.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from errors import UserError
from model import ARCHIVE_ONLY_KEYS, CLIP, MODEL_CONFIG_FILE, ArchitectureError, model_config, named_config
from simple_tokenizer import SimpleTokenizer

__all__ = ["available_models", "load", "load_model", "tokenize", "cxr_transform", "load_checkpoint", "load_weights",
           "CheckpointError", "CheckpointMismatchError", "CheckpointNotFoundError", "TextTooLongError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file the project can fetch: its file name, SHA256, and plain-HTTPS ``url`` (``None``
    for a file of the CheXzero authors' Google Drive folder, :data:`CHEXZERO_DRIVE_FOLDER`)."""

    name: str
    sha256: str
    url: str | None = None


def _openai(name: str, sha256: str) -> WeightsFile:
    """An OpenAI CLIP file: the path segment of its URL is its SHA256."""
    return WeightsFile(name, sha256, f"https://openaipublic.azureedge.net/clip/models/{sha256}/{name}")


# The Google Drive folder of the 10 released CheXzero checkpoints (linked from the original README).
CHEXZERO_DRIVE_FOLDER = "1makFLiEMbSleYltaRxw81aBhEDMpVwno"

# SHA256 of the 10 released checkpoints, measured by a third party on the released files.
_RELEASED_SHA256 = {
    "best_128_0.0002_original_15000_0.859.pt": "620ee11d836f65104cd77c3764fd11ee787d709b0873ea58ca1acbf89c40c50c",
    "best_128_0.0002_original_8000_0.857.pt": "c1ec95b173e8dcd007320e6c33c2ae29023f5f38efc208add99702150c0a72f7",
    "best_128_5e-05_original_22000_0.855.pt": "1e3ae7be8d92caf09aa101ab81840b39ee4b1cad3111522250800566834622bf",
    "best_64_0.0001_original_16000_0.861.pt": "8f5f2679d205476b2e8f8c5112d010008b85ee3d17286cf4d301e50857282006",
    "best_64_0.0001_original_17000_0.863.pt": "ba3f39d6981c252148d7c3eff37979f2f28d29d193259eda06aaae6b5df596f5",
    "best_64_0.0001_original_35000_0.864.pt": "40ad37ea1933b6ae021a570d1a228e1b21ce1f7f4741348050766c365de214e9",
    "best_64_0.0002_original_23000_0.854.pt": "060d9743c5580b35ce42b602adc1a6dd8cd77e06055a0699584eb111757d9460",
    "best_64_5e-05_original_16000_0.858.pt": "6af517141430a61ac4084d8d08cf77d713dda8386eb1bb4afa4ea621b3483a6b",
    "best_64_5e-05_original_18000_0.862.pt": "0bc03704af2c5db952d2b9f59af1d93b7baa58b2346c953abf556d00eeccf7dc",
    "best_64_5e-05_original_22000_0.864.pt": "567a2efbabc6a02370de6e18178afd22ee72d7e6f29a789db1535e5c798d6ae8",
}

# The one table of weights files, by file name: the 10 released CheXzero checkpoints, then OpenAI's
# ViT-B/32 that training from CLIP starts from. download_checkpoints.py fetches and verifies them;
# models/README.md shows the same table (a test checks that both agree).
WEIGHTS_FILES: dict[str, WeightsFile] = {f.name: f for f in (
    *(WeightsFile(name, sha256) for name, sha256 in _RELEASED_SHA256.items()),
    _openai("ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
)}
CHEXZERO_CHECKPOINTS = tuple(_RELEASED_SHA256)

# OpenAI's models by the original's names; the URL's path segment is the file's SHA256.
_MODELS = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "ViT-B/32": WEIGHTS_FILES["ViT-B-32.pt"].url,
}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used: damaged, truncated, not a weights file, or holding
    pickled objects that weights-only loading refuses. A RuntimeError as before, and a
    :class:`errors.UserError`, so a CLI prints it as one line."""


class CheckpointMismatchError(CheckpointError):
    """A state dict that does not fit the model (another architecture). ``str()`` is one line that
    starts with the summary (counts, both architectures, what to pass) and then lists the keys;
    the lists themselves are kept as ``missing``, ``unexpected`` and ``wrong_shape``."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """No file at the checkpoint path (a FileNotFoundError as before)."""


class TextTooLongError(UserError, RuntimeError):
    """A text with more tokens than the context length (and ``truncate=False``)."""


# Where :func:`load` looks for OpenAI weights before downloading.
MODELS_DIR = Path(__file__).resolve().parent / "models"
CACHE_DIR = Path("~/.cache/clip").expanduser()

# CheXzero's grayscale normalisation on the 0-255 scale (not CLIP's RGB statistics).
CXR_MEAN = 101.48761
CXR_STD = 83.43944


def available_models() -> list[str]:
    """Names of the OpenAI CLIP models :func:`load` knows."""
    return list(_MODELS)


def file_sha256(path: str | Path) -> str:
    """The SHA256 of a file, read in 1 MiB blocks (the checkpoints are ~350 MB)."""
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
            if file_sha256(candidate) != expected:
                raise CheckpointError(f"{candidate} does not have the SHA256 of {name} ({expected}); "
                                   f"delete it or replace it with the official file from {url}")
            return candidate
    target = download_root / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    log.info("Downloading %s to %s", url, target)
    try:
        urllib.request.urlretrieve(url, partial)
    except OSError as err:
        raise CheckpointError(
            f"Could not download the OpenAI {name} weights ({err}). Offline, put {filename} "
            f"(SHA256 {expected}, from {url}) in {MODELS_DIR}/ or {download_root}/ (python "
            "download_checkpoints.py --openai fetches it into models/, resuming an interrupted download).") from err
    actual = file_sha256(partial)
    if actual != expected:
        partial.unlink()
        raise CheckpointError(f"Downloaded {url} but its SHA256 is {actual}, expected {expected}; try again.")
    partial.replace(target)
    return target


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder (state-dict zips have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _refusal_reason(err: Exception) -> str | None:
    """The unsupported global that weights-only unpickling names, when that was why it refused."""
    match = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    if isinstance(err, pickle.UnpicklingError) and match:
        return match.group(1)
    return None


def _first_line(err: Exception) -> str:
    """The exception's type and first sentence: enough to tell what failed, on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    sentence = re.split(r"(?<=\.)\s", lines[0])[0].rstrip(".")
    return f"{type(err).__name__}: {sentence[:160]}"


def _read_state(path: Path) -> object:
    """``torch.load(weights_only=True)`` (or the weights of a TorchScript archive), with a one-line
    :class:`CheckpointError` naming the file when it is damaged, truncated or not a weights file."""
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is OpenAI's format
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: a damaged TorchScript archive ({_first_line(err)}); "
                                  "download or copy it again") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # permission denied and the like: errors.run_cli names the file
    except Exception as err:  # noqa: BLE001 - every way a damaged or foreign file fails to unpickle
        refused = _refusal_reason(err)
        if refused is not None:
            raise CheckpointError(
                f"{path}: refused, not loaded: it holds pickled Python objects ({refused}) that could run "
                "code when loaded, so it is not a plain weights file. Use a checkpoint that holds only "
                "tensors (torch.save(model.state_dict(), path): what run_train.py writes and the released "
                "CheXzero weights are)") from err
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({_first_line(err)}); it is truncated, damaged or "
            "not a checkpoint. Copy or download it again, or pass another checkpoint") from err


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from ``path`` as fp32 tensors on the CPU.

    Accepts plain state dicts (the released CheXzero files, mixed fp16/fp32), DDP
    ``module.``-prefixed keys, ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers and
    OpenAI TorchScript archives. Loading is weights-only: a file holding pickled code is refused
    without running it. A missing file raises :class:`CheckpointNotFoundError`, a damaged one or
    one that is not a state dict of tensors :class:`CheckpointError` (both user errors, one line).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file; check the path")
    state = _read_state(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of weights; pass a "
                              "file saved with torch.save(model.state_dict(), path)")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    not_tensors = [str(k) for k, v in state.items() if not torch.is_tensor(v) and k not in ARCHIVE_ONLY_KEYS]
    if not_tensors:
        shown = ", ".join(not_tensors[:5]) + (f" ... (+{len(not_tensors) - 5} more)" if len(not_tensors) > 5 else "")
        raise CheckpointError(f"{path}: not a state dict of weights: {len(not_tensors)} entries are not tensors "
                              f"({shown}); is it a training-state file? Pass a model checkpoint (*.pt)")
    return {k: v.float() if torch.is_tensor(v) and torch.is_floating_point(v) else v for k, v in state.items()}


def _describe(state_dict: dict[str, torch.Tensor]) -> str:
    """A one-line architecture summary of a state dict, for error messages."""
    try:
        cfg = model_config(state_dict)
    except (KeyError, IndexError) as err:
        return f"not a CLIP state dict (no {err})"
    except ArchitectureError as err:
        cfg = err.config  # the shapes; the heads are not among them
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly; on mismatch, say exactly what differs.

    A mismatch raises :class:`CheckpointMismatchError` (a RuntimeError): one line that names
    ``source``, counts the missing, unexpected and mis-shaped keys, gives the architecture the
    file holds and the model's, says what to pass, then lists the first keys of each kind.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in ARCHIVE_ONLY_KEYS}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        def listing(name: str, items: list[str]) -> str:
            if not items:
                return f"{name} (0)"
            more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
            return f"{name} ({len(items)}): {', '.join(items[:8])}{more}"
        holds, model_is = _describe(state_dict), _describe(own)
        architectures = (f"the file holds: {holds}; the model is: {model_is}" if holds != model_is else
                         f"the file and the model are both {holds}, so the file has extra or lacks entries")
        raise CheckpointMismatchError(
            f"{source} does not fit the model: {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(wrong_shape)} mis-shaped keys; {architectures}. "
            "Released CheXzero checkpoints are ViT-B/32 (pretrained=True); --random_init checkpoints are the "
            "320-px model (pretrained=False); pretrained=None reads the architecture off the file. "
            f"Details: {listing('missing keys', missing)}; {listing('unexpected keys', unexpected)}; "
            f"{listing('shape mismatches', wrong_shape)}",
            missing, unexpected, wrong_shape)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_model(checkpoint: str | Path | Mapping[str, torch.Tensor] | None = None,
               config: str | Mapping | None = None, *, device: str | torch.device = "cpu",
               train: bool = False) -> CLIP:
    """The project's one model loader: build or read the architecture, then load the weights strictly.

    ``checkpoint``: a weights file (anything :func:`load_checkpoint` reads), a state dict, or None
    for a new model with CLIP's initialisation. ``config``: the architecture, a
    :data:`model.MODEL_CONFIGS` name or a dict of ``CLIP(**kwargs)``; None reads it off the
    checkpoint: ``<checkpoint's folder>/model_config.json`` (:data:`model.MODEL_CONFIG_FILE`, which
    training writes) when present and the weights fit it, else the state dict's shapes
    (:func:`model.model_config`). A checkpoint whose architecture cannot be read that way (a text
    tower narrower than 64) raises :class:`CheckpointError` naming the file and what to pass.
    Weights that do not fit raise :class:`CheckpointMismatchError` (:func:`load_weights`).

    Returns an fp32 CLIP on ``device`` (default the CPU) in train mode if ``train`` else eval mode.
    The wrappers and their rules:

    - ``clip.load(name, device, jit)``: architecture read off the file; ``device``; eval.
    - ``model.build_model(state_dict)``: read off the state dict; CPU; eval.
    - ``zero_shot.load_clip(model_path, pretrained, context_length, *, device)``: the original's
      architecture for ``pretrained`` True/False (:func:`model.original_config`), read off the file
      for None; ``device``, by default :func:`cxr_data.default_device` (the current CUDA device,
      else the CPU); eval.
    - ``train.load_clip(model_path, pretrained, context_length)``: the original's architecture for
      ``pretrained`` (no None); :func:`cxr_data.default_device`, not an argument; train.
    - ``train.make_model(config)``: a named config with the run's sizes, no weights (or OpenAI's
      ViT-B/32 weights by default); CPU; train.
    """
    if checkpoint is None and config is None:
        raise ValueError("load_model needs a checkpoint, an architecture (config) or both")
    state_dict, source, folder = None, "the state dict", None
    if isinstance(checkpoint, Mapping):
        state_dict = dict(checkpoint)
    elif checkpoint is not None:
        state_dict, source, folder = load_checkpoint(checkpoint), str(checkpoint), Path(checkpoint).parent
    if config is not None:
        model = CLIP(**(named_config(config) if isinstance(config, str) else config))
        if state_dict is not None:
            load_weights(model, state_dict, source)
    else:
        model, note = _from_saved_config(state_dict, source, folder)
        if model is None:
            model = _from_shapes(state_dict, source, folder, note)
    return model.to(device).train(train)


def _from_saved_config(state_dict: dict[str, torch.Tensor], source: str,
                       folder: Path | None) -> tuple[CLIP | None, str]:
    """(the model of ``<folder>/model_config.json`` with the weights loaded, "") when that file exists
    and the weights fit it; else (None, why the file was not used, or "" when there is none)."""
    path = folder / MODEL_CONFIG_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None, ""
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"it holds a {type(config).__name__}, not a dict of CLIP arguments")
        model = load_weights(CLIP(**config), state_dict, source)
    except CheckpointMismatchError as err:
        first = (err.wrong_shape or err.missing or err.unexpected)[0]
        note = (f"{path} does not describe it (the weights do not fit it: {len(err.missing)} missing, "
                f"{len(err.unexpected)} unexpected and {len(err.wrong_shape)} mis-shaped keys, e.g. {first}). ")
    except (OSError, ValueError, TypeError) as err:
        note = f"{path} does not describe it ({_first_line(err)}). "
    else:
        return model, ""
    log.warning("%s: %sReading the architecture off the weights instead.", source, note)
    return None, note


def _from_shapes(state_dict: dict[str, torch.Tensor], source: str, folder: Path | None, note: str) -> CLIP:
    """The CLIP that the state dict's shapes describe, with the weights loaded; one-line errors."""
    try:
        config = model_config(state_dict)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{source} is not a CLIP state dict (no {err} entry): the weights of another kind "
                              "of model? Pass a CheXzero/CLIP checkpoint") from err
    except ArchitectureError as err:
        beside = (f"put them as a JSON dict in {folder / MODEL_CONFIG_FILE} (run_train.py writes that file beside "
                  "its checkpoints), or " if folder is not None else "")
        raise CheckpointError(
            f"{source}: cannot tell its architecture: {err}. {note}Give the CLIP constructor arguments it was "
            f"built with (transformer_heads included): {beside}pass them as clip.load_model(checkpoint, "
            "config={...})") from err
    try:
        model = CLIP(**config)
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{source} is not a CLIP state dict of a known layout (its shapes give {config}: "
                              f"{err}); pass a CheXzero/CLIP checkpoint") from err
    return load_weights(model, state_dict, source)


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
    """Build a CLIP from an OpenAI model name or a checkpoint path (the original's ``clip.load``).

    Returns ``(model, transform)``: an fp32 model in eval mode on ``device`` and the CheXzero
    CXR transform for its input resolution. The architecture is read off the file, as
    :func:`load_model` does without a config. TorchScript archives (as OpenAI distributes them)
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
        raise CheckpointError(f"Model {name} not found; available models = {available_models()} or an "
                              "existing checkpoint file")
    model = load_model(path, device=device)
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
                raise TextTooLongError(f"Input {text!r} is {len(ids)} tokens, longer than the context length "
                                       f"{context_length}; shorten it or pass truncate=True to cut it")
            ids = ids[:context_length]
            ids[-1] = tok.eot
        result[i, : len(ids)] = torch.tensor(ids)
    return result
