"""CLIP architecture: exact OpenAI/CheXzero state_dict layout and the numbers it computes; the one model
loader (clip.load_model) and its wrappers."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clip
import zero_shot
from conftest import SMALL
from model import (
    CLIP,
    MODEL_CONFIG_FILE,
    MODEL_CONFIGS,
    MultiheadSelfAttention,
    ResidualAttentionBlock,
    Transformer,
    build_model,
    convert_weights,
    model_config,
    original_config,
)


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
            by_length = train.encode_text_by_length(model, tokens, groups)
            torch.testing.assert_close(by_length, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the one loader
NARROW = dict(SMALL, transformer_width=32, transformer_heads=2)  # heads cannot be read off the shapes


def save_with_config(folder, config: dict, seed: int = 0, write_config: bool = True) -> tuple[CLIP, str]:
    """A trained-looking run folder: checkpoint.pt and, optionally, the model_config.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**config).eval()
    torch.save(model.state_dict(), folder / "checkpoint.pt")
    if write_config:
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(config))
    return model, str(folder / "checkpoint.pt")


def same_outputs(a: CLIP, b: CLIP) -> None:
    torch.manual_seed(5)
    image = torch.randn(2, 3, 32, 32)
    tokens = clip.tokenize(["left pleural effusion", "no acute process"])
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(image), b.encode_image(image), rtol=0, atol=0)
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), rtol=0, atol=0)


def test_a_narrow_model_loads_by_itself_from_its_run_folder(tmp_path) -> None:
    trained, path = save_with_config(tmp_path / "run", NARROW)
    loaded = zero_shot.load_clip(path, pretrained=None, device="cpu")
    assert loaded.transformer.resblocks[0].attn.n_head == 2 and not loaded.training
    same_outputs(loaded, trained)


def test_a_narrow_model_without_its_config_says_what_to_pass(tmp_path) -> None:
    _, path = save_with_config(tmp_path / "run", NARROW, write_config=False)
    with pytest.raises(clip.CheckpointError) as err:
        zero_shot.load_clip(path, pretrained=None, device="cpu")
    message = str(err.value)
    assert path in message and "32 wide, narrower than 64" in message
    assert str(tmp_path / "run" / MODEL_CONFIG_FILE) in message and "config=" in message
    assert "\n" not in message
    with pytest.raises(clip.CheckpointError, match="config="):  # the original's build_model: same rule
        build_model(torch.load(path, weights_only=True))


def test_the_saved_config_gives_heads_the_shapes_cannot(tmp_path) -> None:
    """Width 64 with 4 heads: the shapes alone would give 1 head and other numbers, silently."""
    four_heads = dict(SMALL, transformer_heads=4)
    trained, path = save_with_config(tmp_path / "run", four_heads)
    loaded = clip.load_model(path)
    assert loaded.transformer.resblocks[0].attn.n_head == 4
    same_outputs(loaded, trained)
    (tmp_path / "run" / MODEL_CONFIG_FILE).unlink()
    assert clip.load_model(path).transformer.resblocks[0].attn.n_head == 1


@pytest.mark.parametrize("saved", ["another model's config", "not json", "a list"])
def test_a_config_that_does_not_fit_the_weights_is_ignored_with_a_warning(tmp_path, caplog, saved: str) -> None:
    trained, path = save_with_config(tmp_path / "run", SMALL)
    text = {"another model's config": json.dumps(MODEL_CONFIGS["tiny"]), "not json": "{embed_dim: 32",
            "a list": "[1, 2]"}[saved]
    (tmp_path / "run" / MODEL_CONFIG_FILE).write_text(text)
    loaded = clip.load_model(path)
    same_outputs(loaded, trained)
    assert MODEL_CONFIG_FILE in caplog.text and "off the weights instead" in caplog.text


def test_an_explicit_architecture_ignores_the_saved_config(tmp_path) -> None:
    _, path = save_with_config(tmp_path / "run", dict(SMALL, transformer_heads=4))
    assert clip.load_model(path, config=SMALL).transformer.resblocks[0].attn.n_head == 1
    with pytest.raises(clip.CheckpointMismatchError):
        clip.load_model(path, config="tiny")


def test_every_wrapper_keeps_its_mode_and_device(tmp_path) -> None:
    import train

    path = tmp_path / "random_init.pt"
    torch.manual_seed(0)
    reference = CLIP(**MODEL_CONFIGS["random-init-320"])
    torch.save(reference.state_dict(), path)
    by_train = train.load_clip(model_path=str(path), pretrained=False)
    by_zero_shot = zero_shot.load_clip(str(path), pretrained=False, device="cpu")
    assert by_train.training and not by_zero_shot.training
    assert next(by_train.parameters()).device == train.default_device()
    for loaded in (by_train, by_zero_shot):
        torch.testing.assert_close(loaded.state_dict()["visual.proj"].cpu(), reference.state_dict()["visual.proj"])
    assert not build_model(small_clip().state_dict()).training
    assert clip.load_model(config="tiny", train=True).training
    with pytest.raises(KeyError, match="named configs"):
        clip.load_model(config="vit-b-16")


def test_original_config_is_the_original_choice() -> None:
    assert original_config(True, context_length=64) == MODEL_CONFIGS["vit-b-32"]  # OpenAI's 77 whatever is asked
    assert original_config(False, context_length=64) == dict(MODEL_CONFIGS["random-init-320"], context_length=64)


def test_a_vit_narrower_than_64_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="vision_width=32"):
        CLIP(**dict(SMALL, vision_width=32))
    with pytest.raises(ValueError, match="heads do not divide"):
        MultiheadSelfAttention(64, 3)


# --------------------------------------------------------------------------- the original's attn_mask
def test_attn_mask_of_the_original_equals_the_causal_flag() -> None:
    torch.manual_seed(0)
    additive = torch.full((10, 10), float("-inf")).triu_(1)   # what the original's CLIP builds
    by_mask = Transformer(width=64, layers=2, heads=4, attn_mask=additive).eval()
    by_flag = Transformer(64, 2, 4, causal=True).eval()
    by_flag.load_state_dict(by_mask.state_dict())
    block = ResidualAttentionBlock(d_model=64, n_head=4, attn_mask=additive.isinf())  # bool: True = masked
    block.load_state_dict(by_mask.resblocks[0].state_dict())
    assert "attn_mask" not in str(list(by_mask.state_dict())) and by_mask.resblocks[0].attn_mask is additive
    x = torch.randn(3, 10, 64)
    with torch.no_grad():
        torch.testing.assert_close(by_mask(x), by_flag(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block(x), by_flag.resblocks[0](x), rtol=1e-5, atol=1e-6)
        unmasked = Transformer(64, 2, 4).eval()
        unmasked.load_state_dict(by_mask.state_dict())
        assert not torch.allclose(unmasked(x), by_flag(x), atol=1e-3)  # the mask does change the numbers
    with pytest.raises(ValueError, match="not both"):
        ResidualAttentionBlock(64, 4, additive, causal=True)
