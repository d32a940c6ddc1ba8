"""CLIP architecture: exact OpenAI/CheXzero state_dict layout and the numbers it computes."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clip
from model import CLIP, MODEL_CONFIGS, MultiheadSelfAttention, build_model, convert_weights, model_config

SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
             transformer_layers=2)


def small_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**SMALL).eval()


@pytest.fixture(scope="module")
def vit_b_32() -> CLIP:
    torch.manual_seed(0)
    return CLIP(**MODEL_CONFIGS["vit-b-32"]).eval()


def test_vit_b_32_layout(vit_b_32: CLIP) -> None:
    sd = vit_b_32.state_dict()
    assert len(sd) == 302
    assert sum(v.numel() for v in sd.values()) == 151_277_313
    keys = list(sd)
    assert keys[:7] == ["positional_embedding", "text_projection", "logit_scale", "visual.class_embedding",
                        "visual.positional_embedding", "visual.proj", "visual.conv1.weight"]
    assert keys[-3:] == ["token_embedding.weight", "ln_final.weight", "ln_final.bias"]
    shapes = {
        "positional_embedding": (77, 512), "text_projection": (512, 512), "logit_scale": (),
        "visual.class_embedding": (768,), "visual.positional_embedding": (50, 768), "visual.proj": (768, 512),
        "visual.conv1.weight": (768, 3, 32, 32),
        "visual.transformer.resblocks.11.attn.in_proj_weight": (2304, 768),
        "visual.transformer.resblocks.11.attn.in_proj_bias": (2304,),
        "visual.transformer.resblocks.0.attn.out_proj.weight": (768, 768),
        "visual.transformer.resblocks.0.mlp.c_fc.weight": (3072, 768),
        "visual.transformer.resblocks.0.mlp.c_proj.weight": (768, 3072),
        "transformer.resblocks.11.attn.in_proj_weight": (1536, 512),
        "transformer.resblocks.0.mlp.c_fc.weight": (2048, 512),
        "token_embedding.weight": (49408, 512), "ln_final.weight": (512,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("mask" in k or k.startswith(("input_resolution", "context_length", "vocab_size")) for k in sd)
    assert model_config(sd) == MODEL_CONFIGS["vit-b-32"]


def test_random_init_320_layout() -> None:
    model = CLIP(**MODEL_CONFIGS["random-init-320"])
    sd = model.state_dict()
    assert len(sd) == 302
    assert sum(v.numel() for v in sd.values()) == 150_105_089
    assert tuple(sd["visual.positional_embedding"].shape) == (401, 768)


def test_mixed_layout_matches_released_file_sizes(vit_b_32: CLIP) -> None:
    model = CLIP(**MODEL_CONFIGS["vit-b-32"])
    convert_weights(model)
    sd = model.state_dict()
    fp16 = sum(v.numel() for v in sd.values() if v.dtype == torch.float16)
    fp32 = sum(v.numel() for v in sd.values() if v.dtype == torch.float32)
    assert (fp16, fp32) == (125_836_288, 25_441_025)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_nn_multihead_attention(causal: bool) -> None:
    torch.manual_seed(0)
    ours = MultiheadSelfAttention(64, 4)
    ref = nn.MultiheadAttention(64, 4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 10, 64)
    mask = torch.full((10, 10), float("-inf")).triu_(1) if causal else None
    expected = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(ours(x, causal=causal), expected.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_encode_text_pools_at_eot() -> None:
    model = small_clip()
    tokens = clip.tokenize(["small left pleural effusion", "no acute process"])
    with torch.no_grad():
        features = model.encode_text(tokens)
        # Manual pooling: run the tower and take the row of the EOT token (id 49407).
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x))
        eot = (tokens == 49407).int().argmax(dim=1)
        manual = x[torch.arange(2), eot] @ model.text_projection
        # Causality: whatever follows EOT (padding) cannot change the embedding.
        padded = tokens.clone()
        padded[:, -5:] = 1234
        changed = model.encode_text(padded)
    torch.testing.assert_close(features, manual)
    torch.testing.assert_close(features, changed, rtol=1e-5, atol=1e-6)


def test_forward_is_scaled_cosine() -> None:
    model = small_clip()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(42.0))
        images = torch.randn(4, 3, 32, 32)
        tokens = clip.tokenize(["a", "b c", "d e f"])
        per_image, per_text = model(images, tokens)
        cos = F.cosine_similarity(model.encode_image(images)[:, None], model.encode_text(tokens)[None], dim=-1)
    torch.testing.assert_close(per_image, 42.0 * cos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_text, per_image.t())
    assert per_image.shape == (4, 3)


def test_build_model_vit_and_resnet_roundtrip() -> None:
    vit = small_clip(1)
    rebuilt = build_model(vit.state_dict())
    assert model_config(rebuilt.state_dict()) == SMALL
    torch.manual_seed(2)
    resnet = CLIP(embed_dim=32, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=16,
                  vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                  transformer_heads=1, transformer_layers=1).eval()
    sd = dict(resnet.state_dict())
    sd["input_resolution"] = torch.tensor(64)   # archive-only keys are dropped
    rebuilt = build_model(sd)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_image(image), resnet.encode_image(image))
    assert model_config(rebuilt.state_dict())["vision_layers"] == (1, 2, 1, 1)


def test_trimmed_padding_gives_the_same_text_features() -> None:
    import train
    model = small_clip()
    tokens = clip.tokenize(["small left pleural effusion", "no acute process", "a"])
    trimmed = train.trim_padding(tokens)
    assert trimmed.shape == (3, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(trimmed), model.encode_text(tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "tiny-rn"])
def test_small_configs_are_read_back_from_their_state_dicts(name: str) -> None:
    """The zero-shot code builds trained small models from the checkpoint alone."""
    model = CLIP(**MODEL_CONFIGS[name])
    assert model_config(model.state_dict()) == MODEL_CONFIGS[name]


def test_text_encoded_in_length_groups_equals_one_pass() -> None:
    import train
    model = small_clip()
    captions = ["a", "no acute cardiopulmonary process", "effusion", "x " * 60, "moderate cardiomegaly with edema",
                "small left pleural effusion and basilar atelectasis, unchanged from the prior study"]
    tokens = clip.tokenize(captions, truncate=True)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        for groups in (1, 2, 4, 8):
            torch.testing.assert_close(train.encode_text_by_length(model, tokens, groups), expected, rtol=1e-5, atol=1e-6)
