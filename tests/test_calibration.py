"""Calibrated probabilities: calibration.py's maps, eval.py's ECE/Brier/reliability diagram, and their
use in run_zero_shot.py and predict.py, on synthetic zero-shot-like scores and small random CLIPs."""
import json
import logging

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss
from sklearn.utils import resample

import calibration as cal
import errors
import eval as ev
import predict
import run_zero_shot
import zero_shot as zs
from conftest import save_clip, write_h5, write_labels
from labels import COMPETITION_LABELS

PAIR = ("{}", "no {}")
PREVALENCES = [0.31, 0.12, 0.06, 0.2, 0.25]   # the demo's competition labels span 6-31%


def zero_shot_like(n: int, seed: int, prevalences=PREVALENCES, separation: float = 0.03
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float32, labels): sigmoid of small s+ - s- differences, so p stays within ~0.45..0.55
    whatever the prevalence, with positives scored a little higher (as the demo's zero-shot output)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(prevalences))) < prevalences).astype(int)
    difference = 0.02 * rng.standard_normal(y.shape) + separation * y
    return (1 / (1 + np.exp(-difference))).astype(np.float32), y


def prompts_for(labels, pair=PAIR, style="chexzero") -> dict:
    return cal.prompt_table(labels, *zs.prompt_texts(labels, pair, style))


# --------------------------------------------------------------------------- the maps
def test_platt_calibration_leaves_auroc_unchanged() -> None:
    p_val, y_val = zero_shot_like(400, seed=0)
    p_test, y_test = zero_shot_like(500, seed=1)
    calibration = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS)
    assert all(entry["calibrated"] for entry in calibration["labels"].values())
    calibrated = cal.apply_calibration(p_test, COMPETITION_LABELS, calibration)
    assert np.abs(calibrated - p_test).max() > 0.2     # the probabilities did move
    before, _ = run_zero_shot.auroc_table(p_test, y_test, COMPETITION_LABELS, n_bootstrap=200)
    after, _ = run_zero_shot.auroc_table(calibrated, y_test, COMPETITION_LABELS, n_bootstrap=200)
    pd.testing.assert_frame_equal(after, before, check_exact=True)


def test_platt_parameters_minimise_the_log_loss_of_the_logit_score() -> None:
    p_val, y_val = zero_shot_like(300, seed=2)
    calibration = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS)
    for i, label in enumerate(COMPETITION_LABELS):
        x, y = np.log(p_val[:, i] / (1 - p_val[:, i])).astype(np.float64), y_val[:, i]

        def log_loss(ab, x=x, y=y):
            z = ab[0] * x + ab[1]
            return np.sum(np.logaddexp(0, z) - y * z)

        def gradient(ab, x=x, y=y):
            residual = 1 / (1 + np.exp(-(ab[0] * x + ab[1]))) - y
            return np.array([residual @ x, residual.sum()])

        best = minimize(log_loss, x0=[1.0, 0.0], jac=gradient, method="BFGS", options={"gtol": 1e-10}).x
        entry = calibration["labels"][label]
        np.testing.assert_allclose([entry["a"], entry["b"]], best, rtol=1e-4, atol=1e-4)


def test_platt_fitted_on_validation_brings_test_ece_near_zero_and_lowers_brier() -> None:
    p_val, y_val = zero_shot_like(4000, seed=3)
    p_test, y_test = zero_shot_like(4000, seed=4)
    calibrated = cal.apply_calibration(p_test, COMPETITION_LABELS,
                                       cal.fit_calibration(p_val, y_val, COMPETITION_LABELS))
    for i in range(len(COMPETITION_LABELS)):
        before = ev.expected_calibration_error(p_test[:, i], y_test[:, i])
        after = ev.expected_calibration_error(calibrated[:, i], y_test[:, i])
        assert before > 0.15 and after < 0.03, (before, after)
        assert brier_score_loss(y_test[:, i], calibrated[:, i]) < brier_score_loss(y_test[:, i], p_test[:, i])


@pytest.mark.parametrize("method", cal.METHODS)
def test_a_label_ranked_backwards_on_validation_is_left_uncalibrated_with_a_warning(method, caplog) -> None:
    p_val, y_val = zero_shot_like(300, seed=5)
    p_val[:, 1] = 1 - p_val[:, 1]                # Cardiomegaly's positives now score lower
    y_val[:, 1] = (p_val[:, 1] < np.median(p_val[:, 1])).astype(int)   # perfectly backwards for isotonic too
    with caplog.at_level(logging.WARNING):
        calibration = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS, method)
    entry = calibration["labels"]["Cardiomegaly"]
    assert entry["calibrated"] is False and "Cardiomegaly" in caplog.text
    assert all(calibration["labels"][label]["calibrated"] for label in COMPETITION_LABELS if label != "Cardiomegaly")
    p_test, _ = zero_shot_like(50, seed=6)
    calibrated = cal.apply_calibration(p_test, COMPETITION_LABELS, calibration)
    np.testing.assert_array_equal(calibrated[:, 1], p_test[:, 1].astype(np.float64))


def test_a_label_with_one_class_in_validation_is_left_uncalibrated() -> None:
    p_val, y_val = zero_shot_like(100, seed=7)
    y_val[:, 2] = 0
    calibration = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS)
    assert calibration["labels"]["Consolidation"] == {"n_positives": 0, "calibrated": False,
                                                      "reason": "one class only in validation"}


def test_isotonic_calibration_applies_as_sklearn_isotonic_regression_predicts() -> None:
    p_val, y_val = zero_shot_like(500, seed=8)
    p_test, _ = zero_shot_like(300, seed=9, separation=0.06)   # wider: some scores beyond validation's range
    calibration = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS, "isotonic")
    calibrated = cal.apply_calibration(p_test, COMPETITION_LABELS, calibration)
    x_val, x_test = cal.scores(p_val), cal.scores(p_test)
    for i in range(len(COMPETITION_LABELS)):
        model = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(x_val[:, i], y_val[:, i])
        np.testing.assert_allclose(calibrated[:, i], model.predict(x_test[:, i]), rtol=0, atol=1e-12)
    assert (x_test.max(axis=0) > x_val.max(axis=0)).any()


def test_calibration_file_round_trips_exactly_and_records_its_inputs(tmp_path) -> None:
    p_val, y_val = zero_shot_like(200, seed=10)
    p_test, _ = zero_shot_like(80, seed=11)
    prompts = prompts_for(COMPETITION_LABELS)
    for method in cal.METHODS:
        fitted = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS, method, prompts=prompts,
                                     info={"pair_template": list(PAIR), "prompt_style": "chexzero"})
        read = cal.read_calibration(cal.write_calibration(fitted, tmp_path / f"{method}.json"), COMPETITION_LABELS,
                                    prompts)
        np.testing.assert_array_equal(cal.apply_calibration(p_test, COMPETITION_LABELS, read),
                                      cal.apply_calibration(p_test, COMPETITION_LABELS, fitted))
        assert read["method"] == method and read["n_images"] == 200 and "s+ - s-" in read["score"]
        assert read["pair_template"] == list(PAIR)
        for i, label in enumerate(COMPETITION_LABELS):
            assert read["labels"][label]["n_positives"] == int(y_val[:, i].sum())
            assert read["labels"][label]["prompts"] == prompts[label]


def test_apply_calibration_refuses_a_label_it_has_no_map_for() -> None:
    p_val, y_val = zero_shot_like(100, seed=12)
    calibration = cal.fit_calibration(p_val, y_val, COMPETITION_LABELS)
    with pytest.raises(errors.UserError, match=r"no map for \['Pneumothorax'\]"):
        cal.apply_calibration(p_val[:, :2], ["Atelectasis", "Pneumothorax"], calibration)


# --------------------------------------------------------------------------- ECE and Brier
def test_ece_equal_width_matches_hand_computation() -> None:
    p = np.array([0.05, 0.08, 0.15, 0.42, 0.47, 0.93, 1.0])
    y = np.array([0, 1, 0, 1, 0, 1, 1])
    # bins [0, .1): 0.05, 0.08; [.1, .2): 0.15; [.4, .5): 0.42, 0.47; [.9, 1]: 0.93, 1.0
    hand = (abs(1 - (0.05 + 0.08)) + abs(0 - 0.15) + abs(1 - (0.42 + 0.47)) + abs(2 - (0.93 + 1.0))) / 7
    assert ev.expected_calibration_error(p, y, n_bins=10) == pytest.approx(hand, abs=1e-15)
    # 5 bins of width 0.2: [0, .2): 0.05, 0.08, 0.15; [.4, .6): 0.42, 0.47; [.8, 1]: 0.93, 1.0
    hand5 = (abs(1 - (0.05 + 0.08 + 0.15)) + abs(1 - (0.42 + 0.47)) + abs(2 - (0.93 + 1.0))) / 7
    assert ev.expected_calibration_error(p, y, n_bins=5) == pytest.approx(hand5, abs=1e-15)


def test_ece_equal_mass_bins_hold_equal_counts_and_keep_ties_together() -> None:
    rng = np.random.default_rng(13)
    p, y = rng.random(20), (rng.random(20) < 0.4).astype(int)
    order = np.argsort(p)
    hand = sum(abs(y[part].sum() - p[part].sum()) for part in np.split(order, 4)) / 20
    assert ev.expected_calibration_error(p, y, n_bins=4, strategy="mass") == pytest.approx(hand, abs=1e-15)
    tied = np.full(20, 0.3)   # one probability: one bin, whatever n_bins
    assert ev.expected_calibration_error(tied, y, n_bins=4, strategy="mass") == pytest.approx(abs(y.mean() - 0.3))


def test_ece_of_perfectly_calibrated_predictions_is_small() -> None:
    rng = np.random.default_rng(14)
    p = 0.9 * rng.random(50_000)
    y = (rng.random(50_000) < p).astype(int)
    for strategy in ev.ECE_STRATEGIES:
        assert ev.expected_calibration_error(p, y, strategy=strategy) < 0.01
        shifted = p + 0.1                           # 0.1 too high everywhere
        assert ev.expected_calibration_error(shifted, y, strategy=strategy) == pytest.approx(0.1, abs=0.01)


def test_bootstrap_ece_replicate_i_uses_sklearn_resample_i() -> None:
    p, y = zero_shot_like(150, seed=15)
    p = np.round(p, 3)   # ties, as float32 zero-shot output has
    boot_stats, cis = ev.calibration_bootstrap(p, y, COMPETITION_LABELS, n_samples=60)
    for i in (0, 1, 17, 59):
        drawn = resample(np.arange(len(p)), replace=True, random_state=i)
        for j, label in enumerate(COMPETITION_LABELS):
            p_i, y_i = p[drawn, j].astype(np.float64), y[drawn, j]
            for strategy in ev.ECE_STRATEGIES:
                assert boot_stats.loc[i, f"{label}_ece_{strategy}"] == pytest.approx(
                    ev.expected_calibration_error(p_i, y_i, strategy=strategy), abs=1e-12)
            assert boot_stats.loc[i, f"{label}_brier"] == pytest.approx(brier_score_loss(y_i, p_i), abs=1e-12)
        assert boot_stats.loc[i, "Mean_brier"] == pytest.approx(
            np.mean([boot_stats.loc[i, f"{label}_brier"] for label in COMPETITION_LABELS]))
    pd.testing.assert_frame_equal(cis, ev.compute_cis(boot_stats))


def test_reliability_diagram_is_written_as_a_png(tmp_path) -> None:
    p_val, y_val = zero_shot_like(300, seed=16)
    calibrated = cal.apply_calibration(p_val, COMPETITION_LABELS, cal.fit_calibration(p_val, y_val, COMPETITION_LABELS))
    path = ev.plot_reliability(p_val, calibrated, y_val, COMPETITION_LABELS, tmp_path / "sub" / "calibration.png")
    assert path.stat().st_size > 10_000 and cv2.imread(str(path)) is not None


# --------------------------------------------------------------------------- run_zero_shot.py
@pytest.fixture
def chexpert_files(tmp_path) -> dict:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for seed in (1, 2):
        save_clip(folder / f"model_{seed}.pt", seed)
    return dict(models=str(folder), test_h5=write_h5(tmp_path / "test.h5", n=16),
                test_csv=write_labels(tmp_path / "gt.csv", zs.CHEXPERT_LABELS, n=16),
                val_h5=write_h5(tmp_path / "val.h5", n=14, seed=5),
                val_csv=write_labels(tmp_path / "val.csv", zs.CHEXPERT_LABELS, n=14, seed=5, key="Path"))


def zero_shot_argv(f: dict, out, validation: bool = True, *extra: str) -> list[str]:
    argv = ["--model_paths", f["models"], "--cxr_filepath", f["test_h5"], "--labels_path", f["test_csv"],
            "--bootstrap", "50", "--out", str(out), "--batch_size", "8", "--device", "cpu", *extra]
    return argv + (["--val_cxr_filepath", f["val_h5"], "--val_labels_path", f["val_csv"]] if validation else [])


@pytest.mark.parametrize("method", cal.METHODS)
def test_run_zero_shot_with_validation_fits_applies_and_reports_calibration(tmp_path, chexpert_files, monkeypatch,
                                                                            caplog, method) -> None:
    calls = []
    ensemble = zs.ensemble_models
    monkeypatch.setattr(zs, "ensemble_models", lambda *a, **k: calls.append(a[1]) or ensemble(*a, **k))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        table = run_zero_shot.main(zero_shot_argv(chexpert_files, out, True, "--calibration_method", method))
    assert calls == [chexpert_files["test_h5"], chexpert_files["val_h5"]]   # validation predicted once
    assert "Calibration (" in caplog.text

    labels = zs.CHEXPERT_LABELS
    calibration = cal.read_calibration(out / "calibration.json", labels, prompts_for(labels))
    assert calibration["method"] == method and calibration["n_images"] == 14
    assert calibration["models"] == ["model_1.pt", "model_2.pt"]
    y_pred_val = np.mean([np.load(p) for p in sorted((out / "cached").glob("val_model_*.npy"))], axis=0)
    y_val = zs.make_true_labels(chexpert_files["val_csv"], labels)
    assert calibration == json.loads(json.dumps(cal.fit_calibration(
        y_pred_val, y_val, labels, method, prompts_for(labels), info={
            "pair_template": list(PAIR), "prompt_style": "chexzero", "models": ["model_1.pt", "model_2.pt"]})))

    y_pred = np.load(out / "chexpert_preds.npy")
    calibrated = pd.read_csv(out / "chexpert_preds_calibrated.csv")
    assert list(calibrated.columns) == ["Study", *labels]
    np.testing.assert_allclose(calibrated[labels].to_numpy(), cal.apply_calibration(y_pred, labels, calibration),
                               rtol=0, atol=1e-15)

    report = pd.read_csv(out / "calibration.csv", index_col="label")
    assert list(report.index) == [*labels, "Mean (5 competition)"]
    y_true = zs.make_true_labels(chexpert_files["test_csv"], labels)
    _, cis = ev.calibration_bootstrap(y_pred, y_true, labels, n_samples=50)
    np.testing.assert_allclose(report.loc[labels, "ece_width_before_mean"], cis.loc["mean", [f"{x}_ece_width"
                                                                                            for x in labels]])
    assert {f"{m}_{s}_{b}" for m in ev.CALIBRATION_METRICS for s in ("before", "after")
            for b in ("full", "mean", "lower", "upper")} <= set(report.columns)
    full = ev.calibration_metrics(y_pred, y_true, labels)
    for x in labels:   # the full-sample value is the one-label function's, within the bootstrap's bounds
        assert report.loc[x, "ece_width_before_full"] == ev.expected_calibration_error(y_pred[:, labels.index(x)],
                                                                                       y_true[:, labels.index(x)])
        assert report.loc[x, "brier_before_full"] == full.loc[0, f"{x}_brier"]
    if method == "platt":   # strictly increasing maps: the AUROC of the calibrated predictions is the same
        pd.testing.assert_series_equal(report["auroc_after"], report["auroc_before"], check_names=False)
    assert (out / "calibration.png").stat().st_size > 10_000

    markdown = (out / "auroc.md").read_text()
    assert markdown.splitlines()[0] == ("| Label | Positives | AUROC [95% CI] | ECE before | ECE after | Brier before "
                                        "| Brier after |")
    assert markdown == run_zero_shot.markdown(table, report)
    plain = run_zero_shot.markdown(table).splitlines()[2:]   # the AUROC columns are those without calibration
    assert len(markdown.splitlines()[2:]) == len(plain)
    assert all(line.startswith(auroc) for line, auroc in zip(markdown.splitlines()[2:], plain))


def test_without_validation_auroc_md_is_the_plain_auroc_table(tmp_path, chexpert_files) -> None:
    out = tmp_path / "out"
    table = run_zero_shot.main(zero_shot_argv(chexpert_files, out, validation=False))
    lines = (out / "auroc.md").read_text().splitlines()
    assert lines[:2] == ["| Label | Positives | AUROC [95% CI] |", "|---|---:|---|"]
    assert (out / "auroc.md").read_text() == run_zero_shot.markdown(table)
    assert not [p.name for p in out.iterdir() if "calibrat" in p.name]


def test_calibration_method_without_validation_is_refused_in_one_line(tmp_path, chexpert_files, capsys) -> None:
    argv = zero_shot_argv(chexpert_files, tmp_path / "out", False, "--calibration_method", "isotonic")
    with pytest.raises(SystemExit) as done:
        errors.run_cli(run_zero_shot.main, argv)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1 and "--val_cxr_filepath" in err


# --------------------------------------------------------------------------- predict.py
LABELS = ["Edema", "Pleural Effusion"]


@pytest.fixture
def scans(tmp_path) -> dict:
    folder = tmp_path / "models"
    folder.mkdir()
    models = [save_clip(folder / f"m{seed}.pt", seed) for seed in (0, 1)]
    rng = np.random.default_rng(17)
    paths = []
    for k in range(6):
        paths.append(str(tmp_path / f"scan{k}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (40 + 3 * k, 48), dtype=np.uint8))
    raw = predict.Predictor(models, LABELS, device="cpu", num_workers=0, progress=False).predict(paths)
    # a calibration of these labels fitted on zero-shot-like validation scores centred on this model's
    p_val, y_val = zero_shot_like(300, seed=18, prevalences=[0.2, 0.3])
    p_val = (p_val - 0.5 + raw[LABELS].to_numpy().mean(axis=0)).astype(np.float32)
    calibration = cal.fit_calibration(p_val, y_val, LABELS, prompts=prompts_for(LABELS),
                                      info={"models": ["m0.pt", "m1.pt"]})
    path = cal.write_calibration(calibration, tmp_path / "calibration.json")
    return dict(models=models, paths=paths, raw=raw, calibration=calibration, path=str(path), dir=tmp_path)


def predict_argv(scans: dict, *extra: str) -> list[str]:
    return ["--images", *scans["paths"], "--model_paths", *scans["models"], "--labels", *LABELS, "--num_workers",
            "0", "--device", "cpu", *extra]


def test_predict_with_calibration_equals_apply_calibration_of_raw(scans) -> None:
    raw = scans["raw"][LABELS].to_numpy()
    expected = cal.apply_calibration(raw, LABELS, scans["calibration"])
    assert np.abs(expected - raw).max() > 0.01
    for calibration in (scans["path"], scans["calibration"]):
        predictor = predict.Predictor(scans["models"], LABELS, device="cpu", num_workers=0, progress=False,
                                      calibration=calibration)
        table = predictor.predict(scans["paths"])
        assert list(table.columns) == ["path", *LABELS, *[f"{label}_raw" for label in LABELS], "error"]
        np.testing.assert_array_equal(table[LABELS].to_numpy(), expected)
        np.testing.assert_array_equal(table[[f"{label}_raw" for label in LABELS]].to_numpy(), raw)
    pixels = [cv2.imread(path, cv2.IMREAD_GRAYSCALE) for path in scans["paths"]]
    np.testing.assert_allclose(predictor.predict_images(pixels)[LABELS].to_numpy(), expected, rtol=0, atol=1e-12)

    out = scans["dir"] / "p.csv"
    predict.main(predict_argv(scans, "--calibration", scans["path"], "--out", str(out)))
    written = pd.read_csv(out)
    assert list(written.columns) == ["path", *LABELS, *[f"{label}_raw" for label in LABELS]]
    np.testing.assert_allclose(written[LABELS].to_numpy(), expected, rtol=0, atol=1e-15)


def test_thresholds_compare_the_raw_probability_when_calibrated(scans) -> None:
    raw = scans["raw"]
    edema = float(np.sort(raw["Edema"])[3])      # 3 of 6 images at or above it
    effusion = float(np.sort(raw["Pleural Effusion"])[1])
    pd.DataFrame({"label": LABELS, "threshold_mcc": [edema, effusion]}).to_csv(scans["dir"] / "t.csv", index=False)
    out = scans["dir"] / "p.csv"
    predict.main(predict_argv(scans, "--calibration", scans["path"], "--thresholds", str(scans["dir"] / "t.csv"),
                              "--out", str(out)))
    written = pd.read_csv(out)
    mapped = cal.apply_calibration(np.array([[edema, effusion]]), LABELS, scans["calibration"])[0]
    for label, threshold, calibrated_threshold in zip(LABELS, (edema, effusion), mapped):
        assert written[f"{label}_positive"].tolist() == (raw[label] >= threshold).astype(int).tolist()
        # Platt maps are strictly increasing: the same as the calibrated probability against the mapped threshold
        assert written[f"{label}_positive"].tolist() == (written[label] >= calibrated_threshold).astype(int).tolist()
    assert written["Edema_positive"].sum() == 3


@pytest.mark.parametrize("change, needles", [
    ("missing_label", ["calibration.json", "no calibration for ['Pleural Effusion']", "run_zero_shot.py"]),
    ("other_prompts", ["calibration.json", "fitted with other prompts for ['Edema', 'Pleural Effusion']",
                       "'Edema.' vs 'no Edema.'"]),
    ("not_json", ["calibration.json", "not valid JSON"]),
    ("other_format", ["calibration.json", "not a calibration file"]),
    ("negative_slope", ["calibration.json", "the maps of ['Edema'] are damaged", "not > 0"]),
    ("no_file", ["calibration.json: no such calibration file"]),
])
def test_mismatched_calibration_file_is_refused_in_one_line(scans, capsys, change, needles) -> None:
    path = scans["dir"] / "bad" / "calibration.json"
    calibration = json.loads(json.dumps(scans["calibration"]))
    if change == "missing_label":
        del calibration["labels"]["Pleural Effusion"]
    elif change == "other_prompts":
        calibration["labels"]["Edema"]["prompts"] = {"positive": ["Edema."], "negative": ["no Edema."]}
        calibration["labels"]["Pleural Effusion"]["prompts"]["negative"] = ["not Pleural Effusion"]
    elif change == "other_format":
        calibration = {"thresholds": [0.5]}
    elif change == "negative_slope":
        calibration["labels"]["Edema"]["a"] = -2.0
    if change != "no_file":
        cal.write_calibration(calibration, path)
    if change == "not_json":
        path.write_text("{'Edema': 1}")
    status = errors.run_cli(predict.main, predict_argv(scans, "--calibration", str(path),
                                                       "--out", str(scans["dir"] / "p.csv")))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (scans["dir"] / "p.csv").exists()
