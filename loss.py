"""CheXzero's contrastive loss, and the features it is computed on.

:func:`clip_loss` is the symmetric InfoNCE of CheXzero (the original's two mean-reduced cross-entropies
over ``exp(logit_scale) * cos``), exact over a global batch when features are gathered across
processes (:func:`gather_features`; ``--gather_with_grad``, ``--local_loss``). :class:`Features` is
the model seen as one forward returning what the loss takes, so that DDP and torch.compile wrap the
whole computation; it encodes captions without most of their padding (:func:`encode_text_by_length`),
exactly. :func:`accumulate_gradients` back-propagates the loss of one effective batch, in micro-batches
when ``--accum_freq`` asks, with the gradient of the whole batch's loss.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model import CLIP

if TYPE_CHECKING:
    from runtime import Runtime


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


def accumulate_gradients(net: nn.Module, micro: list[tuple[torch.Tensor, torch.Tensor]], scaler: torch.amp.GradScaler,
                         rt: Runtime, gather_with_grad: bool = False, local_loss: bool = False) -> torch.Tensor:
    """Back-propagate the contrastive loss of one effective batch given as micro-batches
    ``[(images, tokens), ...]`` through ``net`` (:class:`Features`, maybe under DDP); returns the
    loss (detached).

    With several micro-batches (``--accum_freq``) the features of all of them are first
    computed without gradient and cached; each micro-batch is then re-encoded with gradient
    and scored against the cached rest, so the summed gradient is that of the contrastive
    loss over the whole effective batch (open_clip's scheme, with the logit scale's gradient
    counted once rather than once per micro-batch), at one micro-batch's memory.
    """
    if len(micro) == 1:
        with rt.autocast():
            image_features, text_features, logit_scale = net(*micro[0])
            loss = clip_loss(image_features, text_features, logit_scale, gather_with_grad, local_loss, rt.rank,
                             rt.world)
        scaler.scale(loss).backward()
        return loss.detach()
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
                loss = clip_loss(all_images, all_texts, scale, gather_with_grad, local_loss, rt.rank, rt.world)
            scaler.scale(loss).backward()
    return loss.detach()
