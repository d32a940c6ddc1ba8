"""Zero-shot scoring, ensembles and the CLI, on small random CLIPs and tiny h5/CSV files."""
import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clip
import eval as ev
import run_zero_shot
import zero_shot as zs
from conftest import N, save_clip, small_clip, write_h5, write_labels
from cxr_data import H5_KEY
from model import CLIP

LABELS = zs.CHEXPERT_LABELS
PAIR = ("{}", "no {}")


@pytest.fixture
def images(tmp_path) -> str:
    return write_h5(tmp_path / "test.h5")


def direct_probabilities(model: CLIP, h5_path: str, labels, pair=PAIR) -> np.ndarray:
    """The score written out by hand: sigmoid(cos(image, pos text) - cos(image, neg text))."""
    with h5py.File(h5_path, "r") as f:
        raw = torch.from_numpy(f[H5_KEY][:].astype(np.float32))
    x = (raw[:, None].repeat(1, 3, 1, 1) - 101.48761) / 83.43944
    x = F.interpolate(x, size=model.visual.input_resolution, mode="bicubic", align_corners=False)
    with torch.no_grad():
        image = F.normalize(model.encode_image(x), dim=-1)
        pos = F.normalize(model.encode_text(clip.tokenize([pair[0].format(c) for c in labels])), dim=-1)
        neg = F.normalize(model.encode_text(clip.tokenize([pair[1].format(c) for c in labels])), dim=-1)
    return torch.sigmoid(image @ pos.t() - image @ neg.t()).numpy()


# --------------------------------------------------------------------------- the score
def test_run_softmax_eval_is_sigmoid_of_raw_cosine_difference(images) -> None:
    model = small_clip()
    expected = direct_probabilities(model, images, LABELS)
    for batch_size in (1, 5, 64):
        got = zs.run_softmax_eval(model, zs.make_loader(images, 32, batch_size=batch_size), LABELS, PAIR)
        assert got.shape == (N, len(LABELS)) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert expected.std() > 1e-3  # not a degenerate all-0.5 comparison


def test_run_softmax_eval_equals_the_original_two_pass_formula(images) -> None:
    """Original: two run_single_prediction passes, then exp(pos) / (exp(pos) + exp(neg))."""
    model = small_clip()
    loader = zs.make_loader(images, 32, batch_size=1)
    pos = zs.run_single_prediction(LABELS, PAIR[0], model, loader)
    neg = zs.run_single_prediction(LABELS, PAIR[1], model, loader)
    np.testing.assert_allclose(zs.run_softmax_eval(model, loader, LABELS, PAIR),
                               np.exp(pos) / (np.exp(pos) + np.exp(neg)), rtol=0, atol=1e-6)


def test_predict_without_softmax_standardises_each_image_then_sigmoid(images) -> None:
    model = small_clip()
    loader = zs.make_loader(images, 32, batch_size=4)
    weights = zs.zeroshot_classifier(LABELS, ["{}", "a chest x-ray showing {}"], model)
    cosines = zs.predict(loader, model, weights)
    z = (cosines - cosines.mean(axis=1, keepdims=True)) / cosines.std(axis=1, keepdims=True)
    np.testing.assert_allclose(zs.predict(loader, model, weights, softmax_eval=False), 1 / (1 + np.exp(-z)),
                               rtol=0, atol=1e-6)
    # zeroshot_classifier: per class the normalised mean of its templates' normalised embeddings
    with torch.no_grad():
        both = F.normalize(model.encode_text(clip.tokenize(["Edema", "a chest x-ray showing Edema"])), dim=-1)
    torch.testing.assert_close(weights[:, 3], F.normalize(both.mean(0), dim=0))


def test_run_softmax_eval_restores_train_mode_and_leaves_no_grad(images) -> None:
    model = small_clip().train()
    zs.run_softmax_eval(model, zs.make_loader(images, 32, batch_size=8), LABELS[:2], PAIR)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_raw_batches_transformed_on_the_device_score_like_per_image_transforms(tmp_path, images) -> None:
    model = small_clip()
    per_image = zs.run_softmax_eval(model, zs.make_loader(images, 32, batch_size=4, num_workers=0), LABELS, PAIR)
    for path in (images, write_h5(tmp_path / "f32.h5", dtype=np.float32)):  # same pixels stored as float32
        batches = zs.raw_loader(path, batch_size=5, num_workers=0)
        assert [tuple(b["img"].shape) for b in batches] == [(5, 1, 320, 320), (5, 1, 320, 320), (2, 1, 320, 320)]
        raw = zs.run_softmax_eval(model, batches, LABELS, PAIR, transform=clip.cxr_transform(32))
        np.testing.assert_allclose(raw, per_image, rtol=0, atol=1e-6)
    with_workers = torch.cat([b["img"] for b in zs.raw_loader(images, batch_size=5, num_workers=2)])
    with h5py.File(images, "r") as f:
        np.testing.assert_array_equal(with_workers[:, 0].numpy(), f[H5_KEY][:])


def test_dataset_reads_uint8_and_float32_alike_and_with_workers(tmp_path) -> None:
    as_uint8 = write_h5(tmp_path / "u8.h5", n=6)
    as_float = write_h5(tmp_path / "f32.h5", n=6, dtype=np.float32)
    item = zs.CXRTestDataset(as_uint8)[2]["img"]
    assert item.shape == (3, 320, 320) and item.dtype == torch.float32
    torch.testing.assert_close(item, zs.CXRTestDataset(as_float)[2]["img"])
    serial = torch.cat([b["img"] for b in zs.make_loader(as_uint8, 32, batch_size=4, num_workers=0)])
    parallel = torch.cat([b["img"] for b in zs.make_loader(as_uint8, 32, batch_size=4, num_workers=2)])
    torch.testing.assert_close(serial, parallel)
    assert serial.shape == (6, 3, 32, 32)


# --------------------------------------------------------------------------- prompts
def test_prompt_token_ids_of_both_styles() -> None:
    """chexzero keeps the original's "No Finding" / "no No Finding" (issue #19's inversion);
    negation_aware compares it with texts that assert an abnormality instead."""
    pos, neg = zs.prompt_texts(["No Finding", "Atelectasis"], PAIR, "chexzero")
    assert (pos, neg) == ([["No Finding"], ["Atelectasis"]], [["no No Finding"], ["no Atelectasis"]])
    assert clip.tokenize(neg[0])[0, :5].tolist() == [49406, 871, 871, 6002, 49407]
    assert clip.tokenize(pos[0])[0, :4].tolist() == [49406, 871, 6002, 49407]

    pos, neg = zs.prompt_texts(["No Finding", "Atelectasis", "no pneumothorax", "normal"], PAIR, "negation_aware")
    assert pos[0][0] == "No Finding" and "normal chest x-ray" in pos[0]
    assert neg[0] == list(zs.ABNORMAL_PROMPTS) and not any(t.startswith("no ") for t in neg[0])
    assert (pos[1], neg[1]) == (["Atelectasis"], ["no Atelectasis"])  # ordinary labels unchanged
    assert (pos[2], neg[2]) == (["no pneumothorax"], ["pneumothorax"])
    assert neg[3] == list(zs.ABNORMAL_PROMPTS)
    with pytest.raises(ValueError, match="prompt_style"):
        zs.prompt_texts(LABELS, PAIR, "fancy")


class BagOfWords(nn.Module):
    """A toy CLIP whose text encoder is a bag of words (one orthonormal vector per token, special
    tokens ignored) and whose image embedding is that of the image's report: a perfectly trained
    model with a negation-blind text encoder, the mechanism behind the inverted "No Finding"."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        ids = sorted({t for text in texts for t in clip.tokenize(text)[0].tolist()} - {0, 49406, 49407})
        self.index = {token: i for i, token in enumerate(ids)}
        self.scale = nn.Parameter(torch.ones(()))
        self.context_length = 77

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(tokens), len(self.index))
        for row, sequence in enumerate(tokens.tolist()):
            for token in sequence:
                if token in self.index:
                    out[row, self.index[token]] += 1
        return out * self.scale

    def encode_image(self, reports: torch.Tensor) -> torch.Tensor:
        return reports


def test_negation_aware_prompts_undo_the_inverted_no_finding_auroc() -> None:
    normal = ["No acute cardiopulmonary process.", "No active disease.", "Normal chest x-ray. No acute disease.",
              "Lungs are clear. No acute abnormality."]
    abnormal = ["Moderate cardiomegaly.", "Small left pleural effusion.", "Pulmonary edema.",
                "Right lower lobe consolidation. No pneumothorax.", "Bibasilar atelectasis."]
    prompts = [t for style in zs.PROMPT_STYLES for side in zs.prompt_texts(["No Finding"], PAIR, style)
               for texts in side for t in texts]
    model = BagOfWords(normal + abnormal + prompts)
    loader = [{"img": model.encode_text(clip.tokenize(normal + abnormal))}]
    y_true = np.array([[1]] * len(normal) + [[0]] * len(abnormal))
    auroc = {style: ev.evaluate(zs.run_softmax_eval(model, loader, ["No Finding"], PAIR, prompt_style=style),
                                y_true, ["No Finding"]).iloc[0, 0] for style in zs.PROMPT_STYLES}
    assert auroc["chexzero"] < 0.2          # inverted, as the original's 0.07
    assert auroc["negation_aware"] > 0.9


# --------------------------------------------------------------------------- loading and checks
def test_load_clip_infers_or_enforces_the_architecture(tmp_path) -> None:
    path = save_clip(tmp_path / "small.pt", seed=3)
    model = zs.load_clip(path, pretrained=None, device="cpu")
    assert not model.training and model.visual.input_resolution == 32
    torch.testing.assert_close(model.state_dict()["visual.proj"], small_clip(3).state_dict()["visual.proj"])
    with pytest.raises(RuntimeError, match="(?s)missing keys.*unexpected keys.*shape mismatches"):
        zs.make(path, write_h5(tmp_path / "x.h5", n=2), pretrained=True)  # a small file into ViT-B/32
    torch.save({"not": torch.zeros(1)}, tmp_path / "junk.pt")
    with pytest.raises(RuntimeError, match="not a CLIP state dict"):
        zs.load_clip(tmp_path / "junk.pt", pretrained=None)


def test_label_errors_name_the_files_and_counts(tmp_path, images) -> None:
    labels_csv = write_labels(tmp_path / "gt.csv", LABELS, n=N + 1)
    with pytest.raises(ValueError, match=rf"gt.csv has {N + 1} label rows but .*test.h5 has {N} images"):
        zs.make_true_labels(labels_csv, LABELS, cxr_filepath=images)
    with pytest.raises(KeyError, match=r"no column \['Nodule'\]"):
        zs.make_true_labels(labels_csv, ["Edema", "Nodule"])
    y = zs.make_true_labels(labels_csv, ["Edema", "Atelectasis"])  # by name, in the order asked
    table = pd.read_csv(labels_csv)
    np.testing.assert_array_equal(y, table[["Edema", "Atelectasis"]].to_numpy())


def test_run_zero_shot_with_alt_labels_maps_to_the_main_truth_column(tmp_path, images) -> None:
    labels_csv = write_labels(tmp_path / "gt.csv", LABELS)
    path = save_clip(tmp_path / "m.pt", seed=1)
    alt = {"Edema": ["pulmonary edema"], "Atelectasis": []}
    assert zs.process_alt_labels(alt, LABELS) == (["Edema", "pulmonary edema", "Atelectasis"],
                                                  {"Edema": 3, "pulmonary edema": 3, "Atelectasis": 0})
    assert zs.process_alt_labels(None, LABELS) == (None, None)
    results, y_pred = zs.run_zero_shot(LABELS, [PAIR], path, images, labels_csv, alt_labels_dict=alt,
                                       pretrained=None, use_bootstrap=False)
    y_true = pd.read_csv(labels_csv)["Edema"].to_numpy()
    assert list(results[0].columns) == ["Edema_auc", "pulmonary edema_auc", "Atelectasis_auc"]
    assert results[0]["pulmonary edema_auc"].iloc[0] == pytest.approx(ev.plot_roc(y_pred[:, 1], y_true, "")[3])
    (boot, cis), = zs.run_zero_shot(LABELS, [PAIR], path, images, labels_csv, pretrained=None)[0]
    assert len(boot) == 1000 and list(cis.index) == ["mean", "lower", "upper"]


# --------------------------------------------------------------------------- ensembles
def test_ensemble_is_the_mean_probability_and_reuses_its_cache(tmp_path, images, monkeypatch) -> None:
    paths = [save_clip(tmp_path / "b.pt", seed=1), save_clip(tmp_path / "a.pt", seed=2)]
    cache = tmp_path / "cache"
    preds, avg = zs.ensemble_models(paths, images, LABELS, PAIR, cache_dir=cache, batch_size=5, device="cpu")
    direct = [direct_probabilities(zs.load_clip(p, None, device="cpu"), images, LABELS) for p in sorted(paths)]
    for got, want in zip(preds, direct):  # sorted by path: a.pt first
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(avg, (direct[0] + direct[1]) / 2, rtol=0, atol=2e-6)
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npy")) == ["a", "b"]
    key = json.loads(next(cache.glob("a-*.json")).read_text())
    assert key["negative_prompts"][0] == ["no Atelectasis"]

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although its predictions are cached")
    monkeypatch.setattr(zs, "load_clip", no_model)
    again, again_avg = zs.ensemble_models(paths, images, LABELS, PAIR, cache_dir=cache)
    np.testing.assert_array_equal(again_avg, avg)
    for changed in (dict(prompt_style="negation_aware"), dict(cxr_labels=LABELS[:3]),
                    dict(cxr_pair_template=("{}", "without {}"))):
        arguments = dict(model_paths=paths, cxr_filepath=images, cxr_labels=LABELS, cxr_pair_template=PAIR,
                         cache_dir=cache) | changed
        with pytest.raises(AssertionError, match="cached"):
            zs.ensemble_models(**arguments)


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def chexpert_files(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for seed in (1, 2):
        save_clip(folder / f"model_{seed}.pt", seed)
    val_table = pd.read_csv(write_labels(tmp_path / "val.csv", LABELS, n=10, seed=5, key="Path"))
    val_table[LABELS] = val_table[LABELS].astype(float)  # CheXpert valid.csv stores 0.0/1.0
    val_table.to_csv(tmp_path / "val.csv", index=False)
    return dict(models=str(folder), test_h5=write_h5(tmp_path / "test.h5"),
                test_csv=write_labels(tmp_path / "gt.csv", list(reversed(LABELS))),  # order must not matter
                val_h5=write_h5(tmp_path / "val.h5", n=10, seed=5), val_csv=str(tmp_path / "val.csv"))


def test_cli_writes_every_output_and_reuses_the_cache(tmp_path, chexpert_files, monkeypatch, caplog) -> None:
    f = chexpert_files
    out = tmp_path / "out"
    argv = ["--model_paths", f["models"], "--cxr_filepath", f["test_h5"], "--labels_path", f["test_csv"],
            "--val_cxr_filepath", f["val_h5"], "--val_labels_path", f["val_csv"], "--bootstrap", "100",
            "--out", str(out), "--batch_size", "8", "--device", "cpu"]
    with caplog.at_level(logging.INFO):
        table = run_zero_shot.main(argv)
    assert "Mean (5 competition)" in caplog.text and "Atelectasis" in caplog.text

    assert len(list((out / "cached").glob("model_*.npy"))) == 2
    assert len(list((out / "cached").glob("val_model_*.npy"))) == 2
    members = [np.load(p) for p in sorted((out / "cached").glob("model_*.npy"))]
    y_pred = np.load(out / "chexpert_preds.npy")
    np.testing.assert_allclose(y_pred, np.mean(members, axis=0))
    csv = pd.read_csv(out / "chexpert_preds.csv")
    assert list(csv.columns) == ["Study", *LABELS]
    np.testing.assert_allclose(csv[LABELS].to_numpy(), y_pred, atol=1e-6)

    y_true = zs.make_true_labels(f["test_csv"], LABELS)
    _, cis = ev.bootstrap(y_pred, y_true, LABELS, n_samples=100)
    assert list(table.index) == [*LABELS, "Mean (5 competition)"]
    np.testing.assert_allclose(table.loc[LABELS, "mean"], cis.loc["mean"])
    assert table.loc["Mean (5 competition)", "mean"] == pytest.approx(
        table.loc[ev.COMPETITION_LABELS, "mean"].mean())
    pd.testing.assert_frame_equal(pd.read_csv(out / "auroc.csv", index_col="label", dtype={"positives": "Int64"}),
                                  table, atol=1e-9)
    assert "| Atelectasis |" in (out / "auroc.md").read_text()
    assert (out / "roc.png").stat().st_size > 10_000

    thresholds = pd.read_csv(out / "thresholds.csv", index_col="label")
    assert list(thresholds.columns) == ["threshold_mcc", "threshold_f1", "threshold_youden"]
    val_pred = np.mean([np.load(p) for p in sorted((out / "cached").glob("val_model_*.npy"))], axis=0)
    y_val = zs.make_true_labels(f["val_csv"], LABELS)
    pd.testing.assert_series_equal(thresholds["threshold_mcc"], ev.choose_thresholds(val_pred, y_val, LABELS),
                                   check_names=False)
    mcc_f1 = pd.read_csv(out / "mcc_f1.csv", index_col="label")
    assert list(mcc_f1.columns) == ["mcc_mean", "mcc_lower", "mcc_upper", "f1_mean", "f1_lower", "f1_upper"]
    assert "Mean" in mcc_f1.index

    monkeypatch.setattr(zs, "load_clip", lambda *a, **k: pytest.fail("cached predictions were not reused"))
    rerun = run_zero_shot.main(argv)
    pd.testing.assert_frame_equal(rerun, table)


def test_cli_padchest_keeps_labels_with_enough_positives(tmp_path, monkeypatch) -> None:
    n = 16
    labels = pd.DataFrame({"Path": [f"img{i}.png" for i in range(n)], "ImageID": [f"{i}.png" for i in range(n)],
                           "normal": [1, 0] * 8, "pleural effusion": [0, 1] * 8,
                           "cardiomegaly": [1] * 5 + [0] * 11, "kerley lines": [1, 1] + [0] * 14})
    labels.to_csv(tmp_path / "padchest.csv", index=False)
    out = tmp_path / "out"
    run_zero_shot.main(["--model_paths", save_clip(tmp_path / "m.pt", 1), "--dataset", "padchest",
                        "--cxr_filepath", write_h5(tmp_path / "pc.h5", n=n), "--labels_path",
                        str(tmp_path / "padchest.csv"), "--min_positives", "5", "--bootstrap", "50",
                        "--out", str(out), "--prompt_style", "negation_aware"])
    table = pd.read_csv(out / "auroc.csv", index_col="label")
    assert list(table.index) == ["normal", "pleural effusion", "cardiomegaly"]   # kerley lines: 2 < 5
    summary = json.loads((out / "padchest_summary.json").read_text())
    assert summary["n_findings"] == 3
    assert summary["auc_ge_0.7"] == int((table["mean"] >= 0.7).sum())
    assert list(pd.read_csv(out / "padchest_preds.csv").columns[:2]) == ["Path", "ImageID"]


def test_cli_rejects_misaligned_or_missing_inputs(tmp_path, chexpert_files) -> None:
    f = chexpert_files
    base = ["--model_paths", f["models"], "--cxr_filepath", f["val_h5"], "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"gt.csv has 12 label rows but .*val.h5 has 10 images"):
        run_zero_shot.main(base + ["--labels_path", f["test_csv"]])
    with pytest.raises(KeyError, match=r"no column \['Nodule'\]"):
        run_zero_shot.main(base + ["--labels_path", f["val_csv"], "--labels", "Edema", "Nodule"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        run_zero_shot.main(["--model_paths", str(tmp_path / "*.ckpt")] + base[2:] + ["--labels_path", f["val_csv"]])
    assert run_zero_shot.expand_model_paths([f["models"] + "/*_2.pt", f["models"]]) == sorted(
        str(p) for p in (tmp_path / "ckpts").glob("*.pt"))
