"""Checkpoints. Loading: released mixed fp16/fp32 layout, wrappers, DDP prefixes, TorchScript, and
clear errors, all without any download. Writing (:class:`checkpoints.Checkpoints`, the run folder):
atomic files, the latest pointer, keep-best ranking, rotation, metrics trimmed on resume, and a
model config that makes every checkpoint load by itself."""
import json

import pytest
import torch

import checkpoints
import clip
import train
from checkpoints import Checkpoints, Position
from conftest import SMALL
from model import CLIP, MODEL_CONFIGS, convert_weights


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
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): ln_final.bias[\s\S]*"
                                           r"unexpected keys \(1\): visual.extra.weight"):
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


# --------------------------------------------------------------------------- the run folder
def tiny(width: int = 64, heads: int = 1, **changes) -> CLIP:
    torch.manual_seed(0)
    return CLIP(**{**SMALL, "vision_layers": 1, "transformer_layers": 1, "transformer_width": width,
                   "transformer_heads": heads, **changes})


def test_save_writes_weights_then_state_then_the_latest_pointer(tmp_path) -> None:
    saver, model = Checkpoints(tmp_path, best=[(0.8, 4, "best_x_4_0.800.pt")]), tiny()
    saver.save("checkpoint_6", model, {"step": 6, "epoch": 1})
    assert json.loads((tmp_path / "latest.json").read_text()) == {"state": "checkpoint_6.state", "step": 6}
    state = torch.load(tmp_path / "checkpoint_6.state", weights_only=True)
    assert state == {"step": 6, "epoch": 1, "weights": "checkpoint_6.pt", "best": [[0.8, 4, "best_x_4_0.800.pt"]]}
    weights = torch.load(tmp_path / "checkpoint_6.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob("*.tmp"))                                  # every write renamed into place


def test_a_written_state_reads_back_through_latest(tmp_path) -> None:
    saver = Checkpoints(tmp_path)
    saver.save("checkpoint_2", tiny(), {key: 0 for key in checkpoints.STATE_KEYS} | {"step": 2})
    path = checkpoints.resolve_resume("latest", tmp_path)
    assert path == tmp_path / "checkpoint_2.state"
    assert checkpoints.load_training_state(path, tmp_path)["step"] == 2


def test_rotation_keeps_the_newest_periodic_checkpoints_and_their_states(tmp_path) -> None:
    saver, model = Checkpoints(tmp_path, keep_last=2), tiny()
    for step in (2, 4, 6, 8, 10):
        saver.save_periodic(step, model, {"step": step})
    saver.save("checkpoint", model, {"step": 11})                           # the final one is never rotated
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == [
        "checkpoint.pt", "checkpoint.state", "checkpoint_10.pt", "checkpoint_10.state", "checkpoint_8.pt",
        "checkpoint_8.state"]


def test_keep_best_ranks_by_score_then_earlier_step_and_deletes_the_one_pushed_out(tmp_path) -> None:
    saver, model = Checkpoints(tmp_path, keep_best=2, best_prefix="best_16_0.0001_run"), tiny()
    kept = [saver.offer_best(score, step, model) for score, step in ((0.5, 1), (0.7, 2), (0.6, 3), (0.4, 4), (0.7, 5))]
    assert kept == [True, True, True, False, True]
    assert saver.best == [(0.7, 2, "best_16_0.0001_run_2_0.700.pt"), (0.7, 5, "best_16_0.0001_run_5_0.700.pt")]
    assert sorted(p.name for p in tmp_path.glob("best_*")) == [name for _, _, name in saver.best]


def test_a_resumed_saver_keeps_ranking_against_the_saved_best(tmp_path) -> None:
    first = Checkpoints(tmp_path, keep_best=1)
    first.offer_best(0.6, 10, tiny())
    first.save("checkpoint_10", tiny(), {"step": 10})
    saved = torch.load(tmp_path / "checkpoint_10.state", weights_only=True)["best"]
    resumed = Checkpoints(tmp_path, keep_best=1, best=saved)
    assert not resumed.offer_best(0.5, 12, tiny()) and resumed.offer_best(0.9, 14, tiny())
    assert [p.name for p in tmp_path.glob("best_*")] == ["best_14_0.900.pt"]


def test_a_fresh_run_is_refused_only_where_an_earlier_run_left_checkpoints(tmp_path) -> None:
    saver = Checkpoints(tmp_path)
    saver.write_model_config(tiny())
    saver.start_metrics()
    saver.refuse_fresh_run()                                 # a config and metrics alone are no earlier run
    saver.offer_best(0.5, 3, tiny())
    with pytest.raises(checkpoints.RunFolderTaken, match=r"holds an earlier run's checkpoints \(best_3_0.500.pt\)"):
        saver.refuse_fresh_run()


@pytest.mark.parametrize("shape", [dict(width=32, heads=2), dict(width=128, heads=4),
                                   dict(vision_layers=[1, 1, 1, 1], vision_patch_size=None)])
def test_every_checkpoint_of_a_run_loads_by_itself_with_its_model_config(tmp_path, shape) -> None:
    """A text tower narrower than 64 (heads unreadable from the weights), heads other than width // 64,
    a ResNet image tower: ``model_config.json`` beside the checkpoints says what the shapes cannot."""
    model = tiny(**shape).eval()
    saver = Checkpoints(tmp_path)
    saver.write_model_config(model)
    saver.save("checkpoint_1", model, {"step": 1})
    loaded = clip.load_model(tmp_path / "checkpoint_1.pt")
    assert json.loads((tmp_path / "model_config.json").read_text()) == checkpoints.model_kwargs(loaded)
    tokens = clip.tokenize(["small left effusion"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=0)


def test_metrics_rows_after_the_resumed_step_and_torn_rows_are_dropped(tmp_path) -> None:
    saver = Checkpoints(tmp_path)
    saver.start_metrics()
    for step in (1, 2, 3):
        saver.log_metrics([step, 0, "2.0", "0.1", "4.6", "10", ""])
    with open(saver.metrics, "a") as f:
        f.write("4,0,1.9")
    Checkpoints(tmp_path).start_metrics(resumed_step=2)
    assert saver.metrics.read_text().splitlines() == [",".join(checkpoints.METRIC_FIELDS), "1,0,2.0,0.1,4.6,10,",
                                                      "2,0,2.0,0.1,4.6,10,"]


def test_the_position_moves_to_the_next_epoch_in_the_runs_order(caplog) -> None:
    position = Position(step=3, epoch=0, sample_in_epoch=16, order_seed=7)         # a resume that changed --seed
    position.advance(epoch=0, consumed=20, samples_per_epoch=24, seed=1)
    assert position == Position(4, 0, 20, 7)
    position.advance(epoch=0, consumed=24, samples_per_epoch=24, seed=1)
    assert position == Position(5, 1, 0, 1)
    saved = {"step": 5, "epoch": 1, "sample_in_epoch": 8, "order_seed": 1, "samples_per_epoch": 24}
    assert Position.resumed(saved, 24, seed=1) == Position(5, 1, 8, 1)
    with caplog.at_level("WARNING", logger="checkpoints"):
        assert Position.resumed(saved, 30, seed=2, source="new.h5") == Position(5, 1, 0, 2)
    assert "new.h5 holds 30 images, the saved run had 24" in caplog.text
    assert Position.resumed(None, 24, seed=3) == Position(0, 0, 0, 3)
