"""Checkpoint loading: released mixed fp16/fp32 layout, wrappers, DDP prefixes, TorchScript,
and clear errors, all without any download."""
import pytest
import torch

import clip
import train
from model import CLIP, MODEL_CONFIGS, convert_weights

SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
             transformer_layers=2)


def features(model: CLIP, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(123)
    image = torch.randn(2, 3, resolution, resolution)
    tokens = clip.tokenize(["moderate cardiomegaly", "no pleural effusion"])
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(tokens)


def test_released_mixed_layout_loads_into_load_clip(tmp_path) -> None:
    torch.manual_seed(0)
    reference = CLIP(**MODEL_CONFIGS["vit-b-32"]).eval()
    released = CLIP(**MODEL_CONFIGS["vit-b-32"])
    released.load_state_dict(reference.state_dict())
    convert_weights(released)                       # the layout of the 10 released files
    path = tmp_path / "best_64_5e-05_original_22000_0.864.pt"
    torch.save(released.state_dict(), path)
    dtypes = {v.dtype for v in torch.load(path, weights_only=True).values()}
    assert dtypes == {torch.float16, torch.float32}

    loaded = train.load_clip(model_path=str(path), pretrained=True).cpu().eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # The fp32 reference rounded to fp16 where the file is fp16 is what must come back.
    rounded = CLIP(**MODEL_CONFIGS["vit-b-32"]).eval()
    rounded.load_state_dict({k: v.float() for k, v in released.state_dict().items()})
    for (a, b), (c, d) in [(features(loaded, 224), features(rounded, 224))]:
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, d, rtol=0, atol=0)
    # and it is the fp32 model within fp16 rounding
    img, txt = features(loaded, 224)
    ref_img, ref_txt = features(reference, 224)
    assert torch.nn.functional.cosine_similarity(img, ref_img).min() > 0.999
    assert torch.nn.functional.cosine_similarity(txt, ref_txt).min() > 0.999


@pytest.mark.parametrize("wrap", ["module", "model", "state_dict"])
def test_wrapped_and_ddp_checkpoints_load(tmp_path, wrap: str) -> None:
    torch.manual_seed(0)
    model = CLIP(**SMALL).eval()
    sd = model.state_dict()
    payload = {f"module.{k}": v for k, v in sd.items()} if wrap == "module" else {wrap: sd, "step": 10}
    path = tmp_path / f"{wrap}.pt"
    torch.save(payload, path)
    fresh = clip.load_weights(CLIP(**SMALL).eval(), clip.load_checkpoint(path), str(path))
    for a, b in zip(features(fresh, 32), features(model, 32)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddp_checkpoint_through_load_clip(tmp_path) -> None:
    torch.manual_seed(0)
    model = CLIP(**MODEL_CONFIGS["random-init-320"])
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = train.load_clip(model_path=str(path), pretrained=False)
    torch.testing.assert_close(loaded.cpu().state_dict()["visual.proj"], model.state_dict()["visual.proj"])


def test_wrong_architecture_reports_keys(tmp_path) -> None:
    path = tmp_path / "random_init.pt"
    torch.save(CLIP(**SMALL).state_dict(), path)
    with pytest.raises(RuntimeError) as err:
        train.load_clip(model_path=str(path), pretrained=True)
    message = str(err.value)
    assert "shape mismatches" in message and "visual.proj" in message
    assert "embed_dim=32" in message and "embed_dim=512" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path) -> None:
    sd = CLIP(**SMALL).state_dict()
    sd.pop("ln_final.bias")
    sd["visual.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): ln_final.bias[\s\S]*unexpected keys \(1\): visual.extra.weight"):
        clip.load_weights(CLIP(**SMALL), sd, "bad.pt")


def test_torchscript_archive_round_trips_through_clip_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = CLIP(**SMALL).eval()
    image = torch.randn(2, 3, 32, 32)
    tokens = clip.tokenize(["a chest x-ray", "left basilar atelectasis"])
    traced = torch.jit.trace(model, (image, tokens), check_trace=False)
    path = tmp_path / "small_clip_jit.pt"
    traced.save(str(path))
    loaded, transform = clip.load(str(path), device="cpu")
    assert list(loaded.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, tokens)[0], model(image, tokens)[0], rtol=1e-5, atol=1e-5)
    assert loaded.visual.input_resolution == 32
    assert transform(torch.full((3, 320, 320), 101.48761)).abs().max() < 1e-4


def test_offline_clip_load_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(clip, "MODELS_DIR", tmp_path / "models")

    def no_network(url, filename):
        raise OSError("network is unreachable")

    monkeypatch.setattr(clip.urllib.request, "urlretrieve", no_network)
    with pytest.raises(RuntimeError, match=r"put ViT-B-32.pt \(SHA256 40d36571"):
        clip.load("ViT-B/32", device="cpu", download_root=str(tmp_path / "cache"))
    assert clip.available_models() == ["RN50", "RN101", "RN50x4", "ViT-B/32"]


def test_corrupt_local_file_is_rejected(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(clip, "MODELS_DIR", tmp_path)
    (tmp_path / "ViT-B-32.pt").write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="does not have the SHA256"):
        clip.load("ViT-B/32", device="cpu", download_root=str(tmp_path / "cache"))


def test_cxr_transform_matches_chexzero_chain() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 320, 320)).float()
    expected = torch.nn.functional.interpolate(((image - 101.48761) / 83.43944)[None], size=(224, 224),
                                               mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(clip.cxr_transform(224)(image), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clip.cxr_transform(320)(image), (image - 101.48761) / 83.43944)


def test_preprocess_text_truncates_like_chexzero() -> None:
    model = CLIP(**SMALL)
    tokens = train.preprocess_text(["no acute cardiopulmonary process " * 30, " "], model)
    assert tokens.shape == (2, 77) and tokens[0, -1] == 49407
    assert tokens[1, :2].tolist() == [49406, 49407]
