"""maps.py and predict.py --maps: where-maps of small random CLIPs (both image towers) and of a
stand-in model whose score reads one known region."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cxr_data
import errors
import maps
import predict
import zero_shot as zs
from conftest import SMALL, save_clip, small_clip, write_h5
from cxr_data import DeviceTransform
from model import CLIP, AttentionPool2d

LABELS = ["Pleural Effusion", "Cardiomegaly"]
#: :data:`conftest.SMALL` with the ResNet tower: a 3 x 3 grid at 96 px, as the demo's tiny-rn.
SMALL_RN = dict(SMALL, image_resolution=96, vision_layers=(1, 1, 1, 1), vision_width=8, vision_patch_size=None)


def small_rn(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**SMALL_RN).eval()


def weights_of(model: CLIP, labels=LABELS) -> torch.Tensor:
    return zs.pair_weights(model, *zs.prompt_texts(labels))


def grey_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 320, 320), dtype=np.uint8))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("models")
    return [save_clip(folder / f"m{seed}.pt", seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def predictors(model_files) -> tuple[predict.Predictor, list[predict.Predictor]]:
    """The two models' ensemble and each model alone, on the CPU."""
    def load(paths) -> predict.Predictor:
        return predict.Predictor(paths, LABELS, device="cpu", num_workers=0, progress=False)
    return load(model_files), [load(path) for path in model_files]


# --------------------------------------------------------------------------- patch tokens
def test_a_resnet_position_token_is_the_pooled_output_when_every_position_and_position_row_are_the_same():
    pool = small_rn().visual.attnpool
    torch.manual_seed(1)
    width = pool.v_proj.in_features
    with torch.no_grad():
        pool.positional_embedding.copy_(torch.randn(width).expand_as(pool.positional_embedding))
    features = torch.randn(1, width, 1, 1).expand(1, width, 3, 3)
    with torch.no_grad():
        tokens = maps.attnpool_tokens(pool, features)
        pooled = pool(features)
    assert tokens.shape == (1, 9, pool.c_proj.out_features)
    torch.testing.assert_close(tokens[0], pooled.expand(9, -1), rtol=1e-5, atol=1e-5)


def test_a_one_head_pool_output_is_the_attention_weighted_mean_of_the_mean_token_and_the_position_tokens():
    torch.manual_seed(0)
    pool = AttentionPool2d(spacial_dim=3, embed_dim=16, num_heads=1, output_dim=8).eval()
    features = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        tokens = maps.attnpool_tokens(pool, features)                               # (2, 9, 8)
        sequence = torch.cat([features.flatten(2).mean(2, keepdim=True), features.flatten(2)], 2).transpose(1, 2)
        sequence = sequence + pool.positional_embedding
        attention = torch.softmax(pool.q_proj(sequence[:, :1]) @ pool.k_proj(sequence).transpose(1, 2) / 4, dim=-1)
        mean_token = pool.c_proj(pool.v_proj(sequence[:, :1]))
        expected = (attention @ torch.cat([mean_token, tokens], 1))[:, 0]
        torch.testing.assert_close(pool(features), expected, rtol=1e-5, atol=1e-5)


def test_a_vit_patch_map_is_the_last_blocks_patch_tokens_through_ln_post_and_proj_scored_by_hand():
    model = small_clip()
    visual = model.visual
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32)
    directions = torch.randn(SMALL["embed_dim"], 3)
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)                     # (2, 16, width)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], 1) + visual.positional_embedding
        hidden = visual.transformer(visual.ln_pre(x))
        torch.testing.assert_close(visual.ln_post(hidden[:, 0]) @ visual.proj, model.encode_image(images))
        tokens = F.normalize(visual.ln_post(hidden[:, 1:]) @ visual.proj, dim=-1)
        expected = (tokens @ directions).view(2, 4, 4, 3).permute(0, 3, 1, 2)
    got = maps.patch_maps(model, images, directions)
    assert got.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_grid_cell_lands_over_the_block_of_image_pixels_it_covers():
    grid = np.zeros((1, 1, 4, 4), dtype=np.float32)
    grid[0, 0, 1, 2] = 1.0                                                       # rows 80-159, columns 160-239
    heat = maps.upsample(grid, 320)[0, 0]
    rows, cols = np.nonzero(np.isclose(heat, heat.max(), rtol=1e-6))
    assert set(rows) == {119, 120} and set(cols) == {199, 200}                   # the block's centre
    np.testing.assert_allclose(heat[80:160, 160:240], heat[80:160, 160:240][::-1, ::-1], atol=1e-6)


# --------------------------------------------------------------------------- both towers, both methods
@pytest.mark.parametrize("tower", ["vit", "resnet"])
@pytest.mark.parametrize("method", maps.MAP_METHODS)
def test_both_towers_give_finite_maps_over_the_image_with_the_probabilities_of_zero_shot_scoring(tower, method):
    model = small_clip() if tower == "vit" else small_rn()
    weights = weights_of(model)
    pixels = grey_images(2)
    heat, probabilities = maps.ensemble_maps([model], [weights], pixels, method,
                                             occlusion=maps.Occlusion(window=80, stride=80))
    assert heat.shape == (2, len(LABELS), 320, 320) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.std() > 0
    transform = DeviceTransform(model.visual.input_resolution)
    features = zs.image_features(model, [{"img": pixels.unsqueeze(1)}], transform=transform)
    np.testing.assert_allclose(probabilities, zs.pair_probabilities(features, weights), rtol=1e-6)


class RegionReader(nn.Module):
    """A stand-in image tower whose embedding is (mean of ``region`` of its input, 1): on the direction
    (1, 0) its score m / sqrt(m^2 + 1) grows with the region's brightness m and reads nothing else."""

    def __init__(self, region: tuple[slice, slice]) -> None:
        super().__init__()
        self.region = region

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images[:, 0, self.region[0], self.region[1]].mean(dim=(1, 2))
        return torch.stack([brightness, torch.ones_like(brightness)], dim=1)


def test_occlusion_is_highest_over_the_only_region_the_score_reads_and_zero_where_no_window_touches_it():
    region = (slice(96, 160), slice(192, 256))
    pixels = torch.full((1, 320, 320), 40, dtype=torch.uint8)
    pixels[0, region[0], region[1]] = 250
    heat = maps.occlusion_maps(RegionReader(region), pixels, torch.tensor([[1.0], [0.0]]),
                               transform=DeviceTransform(320))[0, 0]
    inside = np.zeros((320, 320), dtype=bool)
    inside[region] = True
    assert heat[inside].min() > heat[~inside].max() > 0
    windows = maps.Occlusion().masks(320, 320).numpy()
    untouched = ~windows[windows[:, inside].any(axis=1)].any(axis=0)   # every window over them misses the region
    assert untouched.sum() > 320 * 100
    np.testing.assert_allclose(heat[untouched], 0.0, atol=1e-6)


def test_occlusion_windows_cover_every_pixel_and_end_flush_with_the_edge():
    settings = maps.Occlusion(window=64, stride=48)
    assert settings.corners(320) == [0, 48, 96, 144, 192, 240, 256]
    assert settings.masks(320, 320).any(dim=0).all()


# --------------------------------------------------------------------------- the predictor and the CLI
def test_image_names_add_just_the_folders_that_tell_repeated_stems_apart():
    paths = ["x/patient1/study1/view1_frontal.jpg", "x/patient2/study1/view1_frontal.jpg",
             "y/patient1/study1/view1_frontal.jpg", "/abs/z.png", "b/IM000001", "c/IM000001"]
    assert maps.image_names(paths) == ["x_patient1_study1_view1_frontal", "patient2_study1_view1_frontal",
                                       "y_patient1_study1_view1_frontal", "z", "b_IM000001", "c_IM000001"]
    assert maps.image_names(["a_b/c.png", "z/c.png", "a/b_c.png", "y/b_c.png"]) == [
        "a_b_c-0", "z_c", "a_b_c-2", "y_b_c"]                                  # joined alike: the input index


@pytest.mark.parametrize("method", maps.MAP_METHODS)
def test_an_ensembles_maps_are_the_mean_of_its_models_maps(predictors, method):
    ensemble, singles = predictors
    images = list(grey_images(2).numpy())
    occlusion = maps.Occlusion(window=80, stride=80)
    both = ensemble.maps(images, method, occlusion=occlusion)
    alone = [single.maps(images, method, occlusion=occlusion) for single in singles]
    np.testing.assert_allclose(both.maps, (alone[0].maps + alone[1].maps) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.probabilities, ensemble.predict_images(images)[LABELS].to_numpy(), rtol=1e-6)


def test_under_bf16_autocast_the_maps_come_with_the_predictors_probabilities_and_stay_near_fp32(model_files,
                                                                                               predictors):
    images = list(grey_images(2).numpy())
    bf16 = predict.Predictor(model_files, LABELS, device="cpu", num_workers=0, progress=False, precision="bf16")
    got = bf16.maps(images)
    np.testing.assert_allclose(got.probabilities, bf16.predict_images(images)[LABELS].to_numpy(), rtol=1e-6)
    exact = predictors[0].maps(images).maps
    assert np.abs(got.maps - exact).max() < 0.05 * np.ptp(exact)


def test_maps_of_h5_rows_are_the_predictors_maps_of_the_same_pixels(tmp_path, model_files, predictors):
    h5 = write_h5(tmp_path / "x.h5", n=5)
    got = maps.maps_for_h5(model_files, h5, LABELS, "patch", rows=[3, 0], device="cpu", batch_size=1)
    pixels = [np.asarray(cxr_data.H5Images(h5)[row]) for row in (3, 0)]
    expected = predictors[0].maps(pixels)
    np.testing.assert_allclose(got, expected.maps, rtol=1e-5, atol=1e-6)
    half = maps.maps_for_h5(model_files, h5, LABELS, "patch", rows=[3], device="cpu", dtype=np.float16)
    assert half.dtype == np.float16 and half.shape == (1, 2, 320, 320)


def test_predict_maps_writes_an_overlay_and_arrays_per_readable_image_and_skips_the_unreadable(tmp_path, model_files,
                                                                                            predictors):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 48), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / "sub" / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(folder / "c.jpg")
    (folder / "notes.png").write_text("not an image")
    out, where = tmp_path / "p.csv", tmp_path / "maps"
    predict.main(["--images", str(folder), "--model_paths", *model_files, "--labels", *LABELS, "--out", str(out),
                  "--maps", str(where), "--map_labels", "Cardiomegaly", "--num_workers", "0", "--device", "cpu"])
    scores = pd.read_csv(out).set_index("path")
    index = pd.read_csv(where / "maps.csv")
    assert index["path"].tolist() == scores.index.tolist() and len(index) == 3
    assert index["name"].tolist() == ["scans_a", "c", "sub_a"]    # scans/a, c, notes (unreadable), sub/a
    expected = predictors[0].maps(index["path"].tolist(), labels=["Cardiomegaly"])
    for row, (path, name) in enumerate(index.itertuples(index=False)):
        saved = np.load(where / f"{name}.npz")
        assert saved["labels"].tolist() == ["Cardiomegaly"] and str(saved["method"]) == "patch"
        np.testing.assert_allclose(saved["maps"], expected.maps[row], rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(saved["probabilities"], [scores.loc[path, "Cardiomegaly"]], rtol=1e-6)
        with Image.open(where / f"{name}_cardiomegaly.png") as picture:
            assert picture.mode == "RGB" and min(picture.size) >= 300
    assert sorted(p.name for p in where.iterdir()) == sorted(
        ["maps.csv"] + [f"{n}{end}" for n in index["name"] for end in (".npz", "_cardiomegaly.png")])


@pytest.mark.parametrize("argv, message", [
    (["--maps", "m", "--map_labels", "Edema"], "map labels ['Edema']"),
    (["--map_method", "occlusion"], "--map_method and --map_labels need --maps DIR"),
])
def test_a_map_flag_that_cannot_work_is_one_line_and_exit_status_2(tmp_path, model_files, capsys, argv, message):
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "a.png")
    args = ["--images", str(tmp_path / "a.png"), "--model_paths", *model_files, "--labels", *LABELS,
            "--out", str(tmp_path / "p.csv"), "--num_workers", "0", "--device", "cpu", *argv]
    try:
        status = errors.run_cli(predict.main, args)
    except SystemExit as done:
        status = done.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1] and not (tmp_path / "p.csv").exists()
