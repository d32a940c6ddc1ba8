"""The CLIP architecture, with the exact state_dict layout of OpenAI CLIP and CheXzero.

Two image towers (a Vision Transformer and the "modified" ResNet) and a causal text
Transformer, joined by a learnable temperature. Parameter names and shapes match the
released CheXzero checkpoints key for key (302 tensors for ViT-B/32), so they load with
``strict=True``. Attention is computed with ``scaled_dot_product_attention`` but stores its
weights under ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``,
``out_proj``). The causal mask is built on the fly, never stored.

Also here: the named architectures (:data:`MODEL_CONFIGS`, :func:`named_config`, the original's
choice :func:`original_config`), reading one off a state dict (:func:`model_config`) and the name
of the file that saves one beside a checkpoint (:data:`MODEL_CONFIG_FILE`). Loading weights is
:func:`clip.load_model`'s (``build_model``, the original's, calls it). The original's names and
keywords all work: ``VisualTransformer`` is :class:`VisionTransformer`, and ``Transformer`` /
``ResidualAttentionBlock`` take its ``attn_mask`` (their input is batch-first, see there).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


# --------------------------------------------------------------------------- ResNet tower
class Bottleneck(nn.Module):
    """ResNet bottleneck whose strided convolutions are replaced by an average pool."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Pool a feature map by attending from its mean (plus position) to every location."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int | None = None) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)                                  # N, HW, C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)             # N, HW+1, C
        x = x + self.positional_embedding.to(x.dtype)
        heads, hd = self.num_heads, c // self.num_heads
        q = self.q_proj(x[:, :1]).view(n, 1, heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(n, -1, heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(n, -1, heads, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, c)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: a 3-conv stem, anti-aliased strided blocks and an attention pool."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int,
                 input_resolution: int = 224, width: int = 64) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


# --------------------------------------------------------------------------- Transformer
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16 activations stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with (not exact GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names, computed by SDPA.

    Rows of ``in_proj_weight`` are the stacked q, k, v projections, as in PyTorch.
    Input and output are batch-first: (N, L, D).
    """

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if n_head < 1 or d_model % n_head:
            raise ValueError(f"{n_head} attention heads do not divide the width {d_model}; pass a number of "
                             "heads >= 1 that divides it")
        self.n_head = n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: an [L, L] (or larger: its top-left corner is used) mask with
        ``nn.MultiheadAttention``'s meaning: a float mask is added to the attention logits, in a bool
        mask True marks the pairs that may *not* attend. ``causal`` is the same as the additive
        causal mask, computed without one."""
        n, length, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(n, length, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length].to(x.device)
            if attn_mask.dtype == torch.bool:  # True = may not attend, as nn.MultiheadAttention
                attn_mask = torch.zeros(attn_mask.shape, device=x.device).masked_fill(attn_mask, float("-inf"))
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), over batch-first (N, L, D) input.

    ``attn_mask`` is the original's: an optional [L, L] mask applied in every call (a float mask is
    added to the attention logits, e.g. -inf above the diagonal; a bool mask marks with True what
    may not attend). It is a plain attribute, not a buffer, so it is never in the state dict.
    ``causal=True`` (keyword only) is the causal mask without building one: the text tower uses it,
    which lets it run on trimmed padding. Unlike the original (sequence-first (L, N, D), as
    ``nn.MultiheadAttention``), the input is batch-first; transpose the original's layout with
    ``x.permute(1, 0, 2)``.
    """

    def __init__(self, d_model: int, n_head: int, attn_mask: torch.Tensor | None = None, *,
                 causal: bool = False) -> None:
        super().__init__()
        if causal and attn_mask is not None:
            raise ValueError("pass attn_mask or causal=True, not both (causal=True is the causal attn_mask)")
        self.attn_mask = attn_mask
        self.causal = causal
        self.attn = MultiheadSelfAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=self.causal, attn_mask=self.attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks over batch-first (N, L, D) sequences.

    ``attn_mask`` (the original's parameter) and ``causal`` (keyword only) are passed to every
    :class:`ResidualAttentionBlock`. ``grad_checkpointing`` recomputes each block in the backward
    pass to save activation memory during training.
    """

    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None, *,
                 causal: bool = False) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask, causal=causal)
                                         for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: patchify, prepend a class token, add positions, ln_pre, blocks,
    ln_post on the class token only, then project with ``proj``."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int,
                 heads: int, output_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.type(self.conv1.weight.dtype))        # N, width, grid, grid
        x = x.flatten(2).transpose(1, 2)                        # N, grid², width
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


#: The original's name for the ViT tower (OpenAI CLIP's code of March 2021); the same class.
VisualTransformer = VisionTransformer


# --------------------------------------------------------------------------- CLIP
class CLIP(nn.Module):
    """Image and text encoders mapped into one embedding space, with a learnable temperature.

    ``vision_layers`` as an int selects the ViT tower (heads = width // 64); a 4-tuple
    selects the modified ResNet (heads = width * 32 // 64).
    """

    def __init__(self, embed_dim: int, image_resolution: int,
                 vision_layers: int | tuple[int, int, int, int], vision_width: int,
                 vision_patch_size: int | None, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int) -> None:
        super().__init__()
        self.context_length = context_length
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(tuple(vision_layers), embed_dim, vision_width * 32 // 64,
                                         image_resolution, vision_width)
        else:
            if vision_width < 64:
                raise ValueError(f"vision_width={vision_width}: a ViT image tower has vision_width // 64 attention "
                                 "heads, so it must be at least 64 wide")
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width,
                                            vision_layers, vision_width // 64, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """CLIP's initialisation (the ViT blocks keep PyTorch's defaults, as in CLIP)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image embeddings (not normalised), shape (N, embed_dim)."""
        return self.visual(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text embeddings (not normalised), taken at the EOT token (the largest id).

        ``text`` may be shorter than the context length (padding trimmed): the mask is causal,
        so positions after EOT never influence it and the result is the same.
        """
        x = self.token_embedding(text).type(self.dtype) + self.positional_embedding[: text.shape[1]].type(self.dtype)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities: (logits_per_image [N_img, N_txt], logits_per_text)."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# Named architectures. "vit-b-32" is OpenAI's ViT-B/32 (the released CheXzero checkpoints);
# "random-init-320" is what the original builds for --random_init / pretrained=False.
MODEL_CONFIGS: dict[str, dict] = {
    "vit-b-32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "random-init-320": dict(embed_dim=768, image_resolution=320, vision_layers=12, vision_width=768,
                            vision_patch_size=16, context_length=77, vocab_size=49408,
                            transformer_width=512, transformer_heads=8, transformer_layers=12),
    # Small enough to train on a laptop CPU in minutes: the tests use it.
    "tiny": dict(embed_dim=128, image_resolution=96, vision_layers=4, vision_width=128,
                 vision_patch_size=16, context_length=77, vocab_size=49408,
                 transformer_width=128, transformer_heads=2, transformer_layers=4),
    # The same text tower with CLIP's ResNet as the image tower (one bottleneck per stage,
    # width 16): on a few thousand images a small ViT learns too slowly for a CPU demo (see
    # bench/README.md), a small convnet does not. The demo trains this one.
    "tiny-rn": dict(embed_dim=128, image_resolution=96, vision_layers=(1, 1, 1, 1), vision_width=16,
                    vision_patch_size=None, context_length=77, vocab_size=49408,
                    transformer_width=128, transformer_heads=2, transformer_layers=4),
}


# --------------------------------------------------------------------------- weights
def convert_weights(model: nn.Module) -> None:
    """Cast to fp16 what OpenAI's ``convert_weights`` casts: conv/linear weights and biases,
    attention in-projections and the ``proj``/``text_projection`` matrices. Embeddings,
    LayerNorms and ``logit_scale`` stay fp32 (the released checkpoints' mixed layout)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, MultiheadSelfAttention):
            module.in_proj_weight.data = module.in_proj_weight.data.half()
            module.in_proj_bias.data = module.in_proj_bias.data.half()
        for name in ("text_projection", "proj"):
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                param.data = param.data.half()


# Keys that exist only in OpenAI's TorchScript archives, not in the model.
ARCHIVE_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")

#: The file beside a checkpoint that holds its architecture: a JSON dict of the ``CLIP(**kwargs)``
#: constructor arguments. Training writes it into the run folder; :func:`clip.load_model` reads it.
MODEL_CONFIG_FILE = "model_config.json"


class ArchitectureError(ValueError):
    """A state dict whose architecture cannot be read off its shapes; ``config`` holds what the
    shapes do say (every constructor argument but ``transformer_heads``)."""

    def __init__(self, message: str, config: dict) -> None:
        super().__init__(message)
        self.config = config


def named_config(name: str, **changes) -> dict:
    """The ``CLIP(**kwargs)`` of the architecture ``name`` in :data:`MODEL_CONFIGS`, with ``changes``
    (e.g. ``context_length``) applied: the one place a named config is looked up and patched."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"no model config {name!r}; the named configs are {sorted(MODEL_CONFIGS)}")
    return {**MODEL_CONFIGS[name], **changes}


def original_config(pretrained: bool, context_length: int = 77) -> dict:
    """The architecture the original CheXzero builds for ``pretrained`` (its ``load_clip``).

    True: OpenAI's ViT-B/32, the architecture of the released checkpoints; its context length is 77
    whatever ``context_length`` says (the original built it from OpenAI's weights). False: the
    random-init 320-px model (patch 16, embed 768) with ``context_length``.
    """
    if pretrained:
        return named_config("vit-b-32")
    return named_config("random-init-320", context_length=context_length)


def model_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """Infer the CLIP constructor arguments from an OpenAI-layout state dict.

    The text tower's number of heads is not in the shapes: it is read as width // 64, CLIP's rule
    (right for every OpenAI and CheXzero model). A text tower narrower than 64 raises
    :class:`ArchitectureError`; a model trained with another number of heads needs its config
    (:data:`MODEL_CONFIG_FILE`, which :func:`clip.load_model` reads beside the checkpoint).
    A state dict that is not a CLIP's raises KeyError or IndexError.
    """
    sd = state_dict
    if "visual.proj" in sd:
        vision_width = sd["visual.conv1.weight"].shape[0]
        vision_layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        vision_patch_size = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = vision_patch_size * grid
    else:
        vision_layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
        vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_patch_size = None
        image_resolution = grid * 32
    transformer_width = sd["ln_final.weight"].shape[0]
    config = dict(
        embed_dim=sd["text_projection"].shape[1],
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // 64,
        transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
    )
    if config["transformer_heads"] < 1:
        shapes = ", ".join(f"{k}={v}" for k, v in config.items() if k != "transformer_heads")
        raise ArchitectureError(
            f"its text transformer is {transformer_width} wide, narrower than 64, so its number of attention "
            f"heads cannot be read off the weights (CLIP's rule width // 64 gives 0); the shapes say {shapes}",
            {k: v for k, v in config.items() if k != "transformer_heads"})
    return config


def build_model(state_dict: dict[str, torch.Tensor]) -> CLIP:
    """Build the CLIP that ``state_dict`` describes, load it strictly, return it in eval mode.

    The original's API, through the project's one loader: ``clip.load_model(state_dict)``. Unlike
    OpenAI's version the model stays fp32: mixed fp16/fp32 checkpoints are upcast on load, which
    reproduces the original's CPU (fp32) numbers.
    """
    import clip  # here, not at the top: clip imports this module

    return clip.load_model(state_dict)
