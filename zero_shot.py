"""Zero-shot pathology detection with a CheXzero CLIP, and ensembles of checkpoints.

For every label the image embedding is compared with the embeddings of a positive prompt
("Pleural Effusion") and a negative one ("no Pleural Effusion"). The score is the original's:
p = exp(s+) / (exp(s+) + exp(s-)) on the raw cosines s+ and s- (no logit scale), i.e.
sigmoid(s+ - s-); an ensemble averages these probabilities over checkpoints.

The public functions keep the original names, signatures and meaning. What is faster than the
original: each image is encoded once per model and scored against all positive and negative text
embeddings at once; all prompts are encoded in one pass per model; the architecture is built
locally (no download); an ensemble reads the images as stored (uint8) in contiguous batches, one
loader for all checkpoints (worker processes on a GPU machine), and normalises and resizes them
batched on the model's device.

Beyond the original, as named options: ``prompt_style="negation_aware"`` (a correct negative for
labels that are already negations, such as "No Finding", whose AUROC the original inverts), and
per-model prediction caches keyed by everything that changes the numbers.

The h5 readers (:mod:`cxr_data`), the model loader (:func:`clip.load_model`) and the label lists and
prompt templates (:mod:`labels`) live in their own modules; the names the original's notebook imports
from here (``CXRTestDataset``, ``load_clip``, ``make``, ``make_true_labels``...) stay.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import data
from tqdm import tqdm

import clip
import cxr_data
from cxr_data import CXRTestDataset, H5Batches, default_device, make_loader, raw_loader  # noqa: F401 - re-exported
from errors import UserError
from eval import LabelValueError, bootstrap, check_binary_labels, evaluate, sigmoid  # noqa: F401 - LabelValueError re-exported
from labels import ABNORMAL_PROMPTS, NEGATION_PREFIXES, NORMAL_LABELS, NORMAL_PROMPTS, PAIR_TEMPLATE
from labels import CHEXPERT_EVAL_ORDER as CHEXPERT_LABELS  # the original's evaluation order (alphabetical)
from model import CLIP, original_config

log = logging.getLogger(__name__)

PROMPT_STYLES = ("chexzero", "negation_aware")

TEXT_CHUNK = 256  # prompts encoded per forward pass


# --------------------------------------------------------------------------- user errors
# Each is a UserError (a CLI prints it as one line, exit 2) and keeps the type it had before,
# so code that caught KeyError / ValueError still does.
class LabelColumnError(UserError, KeyError):
    """A label CSV without a requested label column."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlignmentError(UserError, ValueError):
    """A label CSV whose rows do not match the images of its h5 one to one."""


class ContextLengthError(UserError, ValueError):
    """A context length that is not the model's."""


# --------------------------------------------------------------------------- data
# The h5 readers and their loaders live in cxr_data (CXRTestDataset, H5Batches, make_loader, raw_loader,
# default_device, imported above); the names stay importable from here. h5_length is cxr_data.h5_rows.
h5_length = cxr_data.h5_rows


# --------------------------------------------------------------------------- model
def load_clip(model_path: str | Path, pretrained: bool | None = False, context_length: int = 77, *,
              device: torch.device | str | None = None) -> CLIP:
    """Build a CLIP, load ``model_path`` strictly, return it in **eval** mode on ``device``.

    A thin wrapper over :func:`clip.load_model`; its rules differ from ``train.load_clip``'s:

    - architecture: ``pretrained=True`` the ViT-B/32 of the released checkpoints (built locally, no
      download), ``False`` the original's random-init 320-px model with ``context_length``
      (:func:`model.original_config`). ``None``, accepted only here, reads it off the checkpoint:
      ``model_config.json`` beside it (what training writes), else the weights' shapes.
    - device: ``device``, by default :func:`cxr_data.default_device` (the current CUDA device, else
      the CPU; the original always scored on the CPU), the same rule as ``train.load_clip``.
    - mode: eval (``train.load_clip``: train).

    A checkpoint of another architecture fails with :func:`clip.load_weights`' report of missing,
    unexpected and mis-shaped keys; one whose architecture cannot be read, with what to pass.
    """
    config = None if pretrained is None else original_config(pretrained, context_length)
    return clip.load_model(model_path, config, device=device if device is not None else default_device())


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference_mode for the block; the caller's train/eval mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _text_embeddings(model: nn.Module, texts_per_class: Sequence[Sequence[str]],
                     context_length: int = 77) -> torch.Tensor:
    """[embed_dim, n_classes]: each class's texts encoded, L2-normalised, averaged, re-normalised.

    All texts go through the text encoder together (in chunks), not one class at a time.
    """
    _check_context_length(model, context_length)
    flat = [text for texts in texts_per_class for text in texts]
    tokens = clip.tokenize(flat, context_length=context_length).to(_device(model))
    embeddings = F.normalize(torch.cat([model.encode_text(chunk) for chunk in tokens.split(TEXT_CHUNK)]).float(),
                             dim=-1)
    sizes = [len(texts) for texts in texts_per_class]
    class_means = torch.stack([group.mean(dim=0) for group in embeddings.split(sizes)])
    return F.normalize(class_means, dim=-1).t()


def _check_context_length(model: nn.Module, context_length: int, source: str = "the model") -> None:
    model_context = getattr(model, "context_length", context_length)
    if context_length != model_context:
        raise ContextLengthError(f"context_length={context_length} but the context length of {source} is "
                                 f"{model_context}; pass {model_context} (run_zero_shot.py: --context_length "
                                 f"{model_context})")


def image_features(model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], progress: bool = False,
                   transform: nn.Module | None = None) -> torch.Tensor:
    """(N, embed_dim) L2-normalised fp32 image embeddings on the model's device, in loader order.

    Batches are dicts with key ``'img'``, of any batch size: model-ready images, or with
    ``transform`` raw 0-255 pixels [B, 1 or 3, H, W] (:func:`raw_loader`) that are replicated to
    3 channels and transformed on the model's device (:class:`cxr_data.DeviceTransform`, the one
    device-side normalise + resize, or any transform of 3-channel 0-255 images).
    """
    device = _device(model)
    features = []
    with _inference(model):
        for batch in tqdm(loader, desc="images", unit="batch", disable=not progress, leave=False):
            images = batch["img"].to(device, non_blocking=True)
            if transform is not None:
                images = transform(images.float().expand(-1, 3, -1, -1))
            features.append(F.normalize(model.encode_image(images).float(), dim=-1))
    if not features:
        raise ValueError("the loader yielded no images")
    return torch.cat(features)


def pair_weights(model: nn.Module, pos_texts: Sequence[Sequence[str]], neg_texts: Sequence[Sequence[str]],
                 context_length: int = 77) -> torch.Tensor:
    """[embed_dim, 2C] fp32 text embeddings: the C labels' positive sides, then their negative sides.

    Each side is :func:`_text_embeddings`' prompt ensemble of its texts. Computed once per model,
    they score any number of images with :func:`pair_probabilities`.
    """
    with _inference(model):
        return torch.cat([_text_embeddings(model, pos_texts, context_length),
                          _text_embeddings(model, neg_texts, context_length)], dim=1)


def pair_probabilities(features: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """exp(s+) / (exp(s+) + exp(s-)) per image and label from L2-normalised image ``features`` and
    :func:`pair_weights`, computed in float32 as the original."""
    with torch.inference_mode():
        cosines = (features @ weights).cpu().numpy()
    pos, neg = np.split(cosines, 2, axis=1)
    return np.exp(pos) / (np.exp(pos) + np.exp(neg))


def _pair_probabilities(model: nn.Module, features: torch.Tensor, pos_texts: Sequence[Sequence[str]],
                        neg_texts: Sequence[Sequence[str]], context_length: int = 77) -> np.ndarray:
    """exp(s+) / (exp(s+) + exp(s-)) per image and label, computed in float32 as the original."""
    return pair_probabilities(features, pair_weights(model, pos_texts, neg_texts, context_length))


def prompt_texts(labels: Sequence[str], pair_template: Sequence[str] = PAIR_TEMPLATE,
                 prompt_style: str = "chexzero") -> tuple[list[list[str]], list[list[str]]]:
    """Per label, the positive and the negative texts (several texts are averaged in embedding space).

    ``chexzero``: ``[pair_template[0].format(label)]`` vs ``[pair_template[1].format(label)]`` for
    every label, as the original ("No Finding" vs "no No Finding"). ``negation_aware``: the same
    for ordinary labels; a label naming a normal study ("No Finding", "normal") is compared as
    {label, normal-study impressions} vs {common affirmative findings}; another negated label
    ("no pneumothorax") is compared with the finding it negates ("pneumothorax").
    """
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
    if len(pair_template) != 2:
        raise ValueError(f"pair_template must be (positive, negative), got {pair_template!r}")
    positives, negatives = [], []
    for label in labels:
        text = label.lower().strip()
        negated = next((p for p in NEGATION_PREFIXES if text.startswith(p)), None)
        if prompt_style == "negation_aware" and text in NORMAL_LABELS:
            positives.append([label, *NORMAL_PROMPTS])
            negatives.append(list(ABNORMAL_PROMPTS))
        elif prompt_style == "negation_aware" and negated is not None:
            positives.append([label])
            negatives.append([label.strip()[len(negated):].strip()])
        else:
            positives.append([pair_template[0].format(label)])
            negatives.append([pair_template[1].format(label)])
    return positives, negatives


# --------------------------------------------------------------------------- original API
def zeroshot_classifier(classnames: Sequence[str], templates: Sequence[str], model: nn.Module,
                        context_length: int = 77) -> torch.Tensor:
    """Text weights [embed_dim, n_classes]: per class, the normalised mean of its templates' embeddings."""
    with _inference(model):
        return _text_embeddings(model, [[t.format(c) for t in templates] for c in classnames], context_length)


def predict(loader: Iterable[Mapping[str, torch.Tensor]], model: nn.Module, zeroshot_weights: torch.Tensor,
            softmax_eval: bool = True, verbose: int = 0) -> np.ndarray:
    """Cosine similarity of each image with each class, (N, C) float32.

    ``softmax_eval=False``: each image's similarities are standardised across classes (population
    std) and passed through a sigmoid, as the original. Works with any batch size.
    """
    features = image_features(model, loader, progress=bool(verbose))
    logits = (features @ zeroshot_weights.to(features.device, torch.float32)).cpu().numpy()
    if not softmax_eval:
        logits = sigmoid((logits - logits.mean(axis=1, keepdims=True)) / logits.std(axis=1, keepdims=True))
    return logits.astype(np.float32)


def run_single_prediction(cxr_labels: Sequence[str], template: str, model: nn.Module,
                          loader: Iterable[Mapping[str, torch.Tensor]], softmax_eval: bool = True,
                          context_length: int = 77) -> np.ndarray:
    """(N, C) predictions of one template: :func:`zeroshot_classifier` then :func:`predict`."""
    weights = zeroshot_classifier(cxr_labels, [template], model, context_length)
    return predict(loader, model, weights, softmax_eval=softmax_eval)


def run_softmax_eval(model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], eval_labels: Sequence[str],
                     pair_template: Sequence[str], context_length: int = 77, *, prompt_style: str = "chexzero",
                     transform: nn.Module | None = None, progress: bool = False) -> np.ndarray:
    """(N, C) float32 p = exp(s+) / (exp(s+) + exp(s-)) for ``pair_template`` = (positive, negative).

    Runs on the model's device, encodes each image once, takes loaders of any batch size whose
    batches are dicts with key ``'img'`` (raw pixels with ``transform``, see :func:`image_features`);
    no file I/O, and the model's train/eval mode is restored (the training loop calls this for
    validation).
    """
    features = image_features(model, loader, progress=progress, transform=transform)
    return _pair_probabilities(model, features, *prompt_texts(eval_labels, pair_template, prompt_style),
                               context_length=context_length)


def process_alt_labels(alt_labels_dict: Mapping[str, Sequence[str]] | None,
                       cxr_labels: Sequence[str]) -> tuple[list[str] | None, dict[str, int] | None]:
    """Expand ``{main label: [alternative names]}`` into the labels to score and their truth column.

    Returns ``(alt_label_list, alt_label_idx_map)``: every main label followed by its alternatives
    (dict order), and for each the index of its main label in ``cxr_labels``. ``(None, None)`` for None.
    """
    if alt_labels_dict is None:
        return None, None
    main_of: dict[str, str] = {}
    for main, alternatives in alt_labels_dict.items():
        main_of[main] = main
        for alternative in alternatives:
            main_of[alternative] = main
    missing = sorted({main for main in main_of.values() if main not in cxr_labels})
    if missing:
        raise KeyError(f"alt_labels_dict names main labels {missing} that are not in cxr_labels")
    alt_label_list = list(main_of)
    return alt_label_list, {name: list(cxr_labels).index(main) for name, main in main_of.items()}


def run_experiment(model: nn.Module, cxr_labels: Sequence[str], cxr_templates: Sequence,
                   loader: Iterable[Mapping[str, torch.Tensor]], y_true: np.ndarray,
                   alt_labels_dict: Mapping[str, Sequence[str]] | None = None, softmax_eval: bool = True,
                   context_length: int = 77, use_bootstrap: bool = True) -> tuple[list, np.ndarray]:
    """Evaluate each template (a (positive, negative) pair when ``softmax_eval``): (results, last y_pred).

    A result is ``bootstrap(...)``'s ``(boot_stats, cis)`` or, without bootstrap, ``evaluate(...)``'s
    AUROC row; alternative label names are mapped to their main label's truth column in both
    cases (the original forgot the mapping without bootstrap). Images are encoded once for all
    templates.
    """
    alt_labels, label_idx_map = process_alt_labels(alt_labels_dict, cxr_labels)
    eval_labels = alt_labels if alt_labels is not None else list(cxr_labels)
    features = image_features(model, loader)
    results, y_pred = [], None
    for template in cxr_templates:
        if softmax_eval:
            y_pred = _pair_probabilities(model, features, *prompt_texts(eval_labels, template),
                                         context_length=context_length)
        else:
            with _inference(model):
                weights = _text_embeddings(model, [[template.format(c)] for c in eval_labels], context_length)
                logits = (features @ weights).cpu().numpy()
            y_pred = sigmoid((logits - logits.mean(axis=1, keepdims=True)) / logits.std(axis=1, keepdims=True))
        if use_bootstrap:
            results.append(bootstrap(y_pred, y_true, eval_labels, label_idx_map=label_idx_map))
        else:
            results.append(evaluate(y_pred, y_true, eval_labels, label_idx_map=label_idx_map))
    return results, y_pred


def check_alignment(labels_path: str | Path, n_label_rows: int, cxr_filepath: str | Path) -> None:
    """Fail unless the label CSV has exactly one row per image of the h5 (row i describes image i).

    The h5 is checked by :func:`h5_length`. Raises :class:`AlignmentError` (a ValueError)."""
    n_images = h5_length(cxr_filepath)
    if n_label_rows != n_images:
        raise AlignmentError(f"{labels_path} has {n_label_rows} label rows but {cxr_filepath} has {n_images} "
                             f"images; row i of the labels must describe image i (rebuild both together)")


def read_label_csv(path: str | Path, flag: str | None = None) -> pd.DataFrame:
    """A label CSV as a table; a missing, empty or unparsable file is a one-line :class:`errors.UserError`
    naming the file (and ``flag``, the CLI option it came from)."""
    name = f"{flag} {path}" if flag else str(path)
    if not Path(path).is_file():
        raise UserError(f"{name}: no such labels CSV; check the path")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{name}: not a readable CSV ({' '.join(str(err).split())}); pass the labels CSV "
                        "(a header row, one row per image)") from err


def label_columns(path: str | Path, table: pd.DataFrame, cxr_labels: Sequence[str]) -> pd.DataFrame:
    """The ``cxr_labels`` columns of ``table``, by name and in that order, checked to hold only 0 and 1.

    A missing column raises :class:`LabelColumnError` (a KeyError), a value other than 0/1 (blank,
    NaN, -1 "uncertain", anything else) :class:`eval.LabelValueError` (a ValueError) naming the
    columns with their counts, before any model runs. The original failed on those in sklearn after
    the models had run, or, for a column of only -1 and 1, scored "uncertain" as negative without
    a word.
    """
    missing = [label for label in cxr_labels if label not in table.columns]
    if missing:
        raise LabelColumnError(f"{path} has no column {missing}; its columns are {list(table.columns)}. "
                               "Pick labels that are columns of the file (--labels), spelled as in its header")
    columns = table.loc[:, list(cxr_labels)]
    check_binary_labels({label: columns[label] for label in columns}, str(path))
    return columns


def make_true_labels(cxr_true_labels_path: str | Path, cxr_labels: Sequence[str], cutlabels: bool = True, *,
                     cxr_filepath: str | Path | None = None) -> np.ndarray:
    """Ground truth (N, C) from a CSV: the ``cxr_labels`` columns selected by name, in that order.

    ``cutlabels=False`` keeps every column but the first, as the original. The evaluated columns
    (with ``cutlabels=False``: the first ``len(cxr_labels)`` of those) must hold only 0 and 1: a
    blank, NaN or -1 ("uncertain") is refused with the column and the counts (see
    :func:`label_columns`). With ``cxr_filepath`` the row count is checked against the h5.
    """
    path = cxr_true_labels_path
    table = read_label_csv(path)
    if cutlabels:
        table = label_columns(path, table, cxr_labels)
    else:
        table = table.iloc[:, 1:]
        evaluated = table.iloc[:, :len(cxr_labels)]
        check_binary_labels({column: evaluated[column] for column in evaluated}, str(path))
    if cxr_filepath is not None:
        check_alignment(path, len(table), cxr_filepath)
    return table.to_numpy()


def make(model_path: str | Path, cxr_filepath: str | Path, pretrained: bool | None = True,
         context_length: int = 77, *, batch_size: int = 32, num_workers: int | None = None,
         device: torch.device | str | None = None) -> tuple[CLIP, data.DataLoader]:
    """(model, loader): :func:`load_clip` and a batched loader with the transform for the model's resolution.

    The resolution comes from the model (224 for ViT-B/32, 320 for the random-init model), as
    the original's pretrained -> 224 rule.
    """
    model = load_clip(model_path, pretrained, context_length, device=device)
    loader = make_loader(cxr_filepath, model.visual.input_resolution, batch_size, num_workers, _device(model))
    return model, loader


def file_identity(path: str | Path) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(model_path: str | Path, cxr_filepath: str | Path, prompts: tuple[list[list[str]], list[list[str]]],
              context_length: int = 77) -> dict:
    """Everything that determines a model's cached predictions: checkpoint and image file (path, size,
    mtime), the prompts of every label (style, template and label list) and the context length."""
    return {"checkpoint": file_identity(model_path), "images": file_identity(cxr_filepath),
            "positive_prompts": prompts[0], "negative_prompts": prompts[1], "context_length": context_length}


def ensemble_models(model_paths: Iterable[str | Path], cxr_filepath: str | Path, cxr_labels: Sequence[str],
                    cxr_pair_template: Sequence[str], cache_dir: str | Path | None = None,
                    save_name: str | None = None, *, prompt_style: str = "chexzero",
                    pretrained: bool | None = None, context_length: int = 77, batch_size: int = 64,
                    num_workers: int | None = None, device: torch.device | str | None = None
                    ) -> tuple[list[np.ndarray], np.ndarray]:
    """Zero-shot predictions of each checkpoint (sorted by path) and their mean probability.

    Returns ``(predictions, y_pred_avg)``. With ``cache_dir`` each model's (N, C) array is saved as
    ``<cache_dir>/[<save_name>_]<stem>-<hash>.npy`` (plus a ``.json`` saying what the hash covers:
    :func:`cache_key`) and reused on the next call with the same inputs; a changed prompt style,
    template, label list, image file or checkpoint gets a new file. ``pretrained=None`` reads each
    checkpoint's architecture off the file.
    """
    model_paths = sorted(str(p) for p in model_paths)
    if not model_paths:
        raise ValueError("ensemble_models got no checkpoint paths")
    prompts = prompt_texts(cxr_labels, cxr_pair_template, prompt_style)
    device = torch.device(device) if device is not None else default_device()
    loader = raw_loader(cxr_filepath, batch_size, num_workers, device)  # shared by the models
    predictions = []
    for path in tqdm(model_paths, desc="models", unit="model"):
        cache_path = None
        if cache_dir is not None:
            key = cache_key(path, cxr_filepath, prompts, context_length)
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            stem = Path(path).stem if save_name is None else f"{save_name}_{Path(path).stem}"
            cache_path = Path(cache_dir) / f"{stem}-{digest}.npy"
            if cache_path.is_file():
                log.info("%s: cached predictions %s", Path(path).name, cache_path)
                predictions.append(np.load(cache_path))
                continue
        model = load_clip(path, pretrained, context_length, device=device)
        _check_context_length(model, context_length, path)  # before the images cost time
        transform = cxr_data.DeviceTransform(model.visual.input_resolution)
        features = image_features(model, loader, progress=True, transform=transform)
        y_pred = _pair_probabilities(model, features, *prompts, context_length=context_length)
        log.info("%s: predicted %d images x %d labels", Path(path).name, *y_pred.shape)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache_path, y_pred)
            cache_path.with_suffix(".json").write_text(json.dumps(key, indent=1))
        predictions.append(y_pred)
        del model, features
    return predictions, np.mean(predictions, axis=0)


def run_zero_shot(cxr_labels: Sequence[str], cxr_templates: Sequence, model_path: str | Path,
                  cxr_filepath: str | Path, final_label_path: str | Path,
                  alt_labels_dict: Mapping[str, Sequence[str]] | None = None, softmax_eval: bool = True,
                  context_length: int = 77, pretrained: bool | None = False, use_bootstrap: bool = True,
                  cutlabels: bool = True) -> tuple[list, np.ndarray]:
    """One checkpoint end to end: labels, model, predictions per template, AUROC (bootstrapped).

    Returns :func:`run_experiment`'s ``(results, y_pred)``. The default ``pretrained=False`` is the
    original's (random-init architecture): pass True (or None) for the released ViT-B/32 files.
    """
    np.random.seed(97)
    y_true = make_true_labels(final_label_path, cxr_labels, cutlabels, cxr_filepath=cxr_filepath)
    model, loader = make(model_path, cxr_filepath, pretrained, context_length)
    return run_experiment(model, cxr_labels, cxr_templates, loader, y_true, alt_labels_dict, softmax_eval,
                          context_length, use_bootstrap)


def run_cxr_zero_shot(model_path: str | Path, context_length: int = 77, pretrained: bool | None = False, *,
                      cxr_filepath: str | Path = "data/chexpert_test.h5",
                      final_label_path: str | Path = "data/chexpert-test/groundtruth.csv"
                      ) -> tuple[list[str], pd.DataFrame]:
    """The 14 CheXpert labels with the original prompts, no bootstrap: ``(labels, AUROC row)``.

    The original read fixed internal paths; here they are arguments with the project's defaults.
    """
    results, _ = run_zero_shot(CHEXPERT_LABELS, [PAIR_TEMPLATE], model_path, cxr_filepath, final_label_path,
                               context_length=context_length, pretrained=pretrained, use_bootstrap=False)
    return CHEXPERT_LABELS, results[0]


def validation_zero_shot(model_path: str | Path, context_length: int = 77, pretrained: bool | None = False, *,
                         cxr_filepath: str | Path = "data/chexpert_valid.h5",
                         final_label_path: str | Path = "data/val_sex_labels.csv"
                         ) -> tuple[list[str], tuple[pd.DataFrame, pd.DataFrame]]:
    """The original's sanity task for tuning on a validation set: the patient's sex, zero-shot.

    Labels ``["Female", "Male"]``, the one prompt "the patient's sex is {}", scored without the
    negative prompt (``softmax_eval=False``: each image's two similarities standardised, then a
    sigmoid), AUROC bootstrapped. ``final_label_path`` is read with ``cutlabels=False``: its first
    column is a key and is dropped, the next two are 0/1 for Female and Male, one row per image of
    ``cxr_filepath`` (e.g. made from the Sex column of CheXpert's valid.csv). Returns
    ``(labels, (boot_stats, cis))``.

    The original could not run: it read an undefined ``cxr_filepath`` (NameError), so the paths
    are arguments here. It also ignored ``pretrained`` (always the ViT-B/32 architecture), ran the
    experiment twice and returned nothing; here ``pretrained`` counts as in :func:`load_clip` (True
    or None for the released checkpoints), the task runs once and its result is returned.
    """
    labels = ["Female", "Male"]
    results, _ = run_zero_shot(labels, ["the patient's sex is {}"], model_path, cxr_filepath, final_label_path,
                               softmax_eval=False, context_length=context_length, pretrained=pretrained,
                               use_bootstrap=True, cutlabels=False)
    return labels, results[0]
