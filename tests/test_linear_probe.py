"""linear_probe.py: logistic regression on frozen CLIP image features, C chosen on validation."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

import errors
import eval as ev
import linear_probe as lp
import run_zero_shot as rzs
import zero_shot as zs
from conftest import save_clip, write_h5, write_labels
from cxr_data import H5_KEY


def square_data(folder: Path, name: str, n: int, seed: int) -> tuple[str, str]:
    """An h5 of dim noise images where label "Square" (bright square present) is a visible pattern,
    and its label CSV ("Square", and a "Noise" label unrelated to the pixels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, 320, 320), dtype=np.uint8)
    square = np.arange(n) % 2
    for i in np.flatnonzero(square):
        images[i, 100:220, 100:220] = 240
    with h5py.File(folder / f"{name}.h5", "w") as f:
        f.create_dataset(H5_KEY, data=images)
    table = pd.DataFrame({"Study": [f"{name}/study{i}" for i in range(n)], "Square": square,
                          "Noise": rng.integers(0, 2, n)})
    table.to_csv(folder / f"{name}.csv", index=False)
    return str(folder / f"{name}.h5"), str(folder / f"{name}.csv")


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("squares")
    (root / "ckpt").mkdir()
    return {"root": root, "models": [save_clip(root / "ckpt" / f"m{seed}.pt", seed) for seed in (0, 1)],
            "train": square_data(root, "train", 40, 1), "val": square_data(root, "val", 20, 2),
            "test": square_data(root, "test", 30, 3)}


def probe_args(d: dict, out: Path, *extra: str, shared_features: bool = True) -> list[str]:
    """linear_probe.py's flags for the square data; by default with the module's shared feature cache."""
    cache = ["--features_dir", str(d["root"] / "features")] if shared_features else []
    return [*cache, "--model_paths", *d["models"], "--train_cxr_filepath", d["train"][0], "--train_labels_path",
            d["train"][1], "--cxr_filepath", d["test"][0], "--labels_path", d["test"][1], "--labels", "Square",
            "--out", str(out), "--device", "cpu", "--bootstrap", "100", "--C_grid", "0.1", "10", "1000",
            "--cv_folds", "3", *extra]


def test_probe_learns_a_visible_pattern_that_label_free_zero_shot_misses(squares, tmp_path):
    table = lp.main(probe_args(squares, tmp_path / "out"))
    _, zero_shot = zs.ensemble_models(squares["models"], squares["test"][0], ["Square"], ["{}", "no {}"],
                                      device="cpu")
    y_test = pd.read_csv(squares["test"][1])[["Square"]].to_numpy()
    zero_shot_auroc = ev.evaluate(zero_shot, y_test, ["Square"]).iloc[0, 0]
    assert table.loc["Square", "auroc"] >= 0.95
    # an untrained text tower points anywhere: here its "Square" vs "no Square" ranks the squares last
    assert zero_shot_auroc < 0.5 and table.loc["Square", "auroc"] > zero_shot_auroc + 0.4
    out = tmp_path / "out"
    for name in ("linear_probe_auroc.csv", "linear_probe_auroc.md", "linear_probe_preds.npy",
                 "linear_probe_preds.csv", "linear_probe_C.csv", "linear_probe_C.json"):
        assert (out / name).is_file(), name
    preds = pd.read_csv(out / "linear_probe_preds.csv")
    assert list(preds.columns) == ["Study", "Square"]
    assert np.allclose(preds["Square"], np.load(out / "linear_probe_preds.npy")[:, 0])


def test_table_format_is_run_zero_shots_markdown(squares, tmp_path):
    table = lp.main(probe_args(squares, tmp_path))
    assert (tmp_path / "linear_probe_auroc.md").read_text() == rzs.markdown(table)
    y_pred = np.load(tmp_path / "linear_probe_preds.npy")
    y_true = pd.read_csv(squares["test"][1])[["Square"]].to_numpy()
    expected, _ = rzs.auroc_table(y_pred, y_true, ["Square"], 100)
    pd.testing.assert_frame_equal(table, expected)


def test_features_cache_is_reused_without_loading_a_model(squares, tmp_path, monkeypatch):
    first = lp.main(probe_args(squares, tmp_path, shared_features=False))
    cached = sorted((tmp_path / "features").glob("*.npy"))
    assert len(cached) == 4  # 2 checkpoints x (train, test)
    mtimes = [p.stat().st_mtime_ns for p in cached]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although its features are cached")

    monkeypatch.setattr(zs, "load_clip", no_model)
    second = lp.main(probe_args(squares, tmp_path, shared_features=False))
    pd.testing.assert_frame_equal(first, second)
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


def test_chosen_C_has_the_best_validation_auroc_of_a_brute_force_loop(squares, tmp_path):
    grid = [0.01, 1.0, 100.0, 10000.0]
    lp.main(probe_args(squares, tmp_path, "--val_cxr_filepath", squares["val"][0], "--val_labels_path",
                       squares["val"][1], "--labels", "Square", "Noise", "--C_grid", *map(str, grid)))
    chosen = pd.read_csv(tmp_path / "linear_probe_C.csv", index_col="label")
    features = lp.ensemble_features(squares["models"], [squares["train"][0], squares["val"][0]],
                                    squares["root"] / "features", device="cpu")
    train_y, val_y = pd.read_csv(squares["train"][1]), pd.read_csv(squares["val"][1])
    for label in ("Square", "Noise"):
        scores = []
        for C in grid:
            with threadpool_limits(1):
                p = np.mean([LogisticRegression(C=C, max_iter=2000).fit(a, train_y[label]).predict_proba(b)[:, 1]
                             for a, b in zip(*features)], axis=0)
            scores.append(roc_auc_score(val_y[label], p))
        assert chosen.loc[label, "C"] == grid[int(np.argmax(scores))]
        assert chosen.loc[label, "val_auroc"] == pytest.approx(max(scores))
        assert np.allclose(chosen.loc[label, [f"auroc_C={c:g}" for c in grid]].to_numpy(float), scores)


def test_cross_validation_chooses_C_by_mean_fold_auroc():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    train = [rng.normal(size=(40, 5)) + y[:, None] * k for k in (0.3, 0.6)]
    scores = lp.validation_scores(train, y, [0.1, 10.0], cv_folds=4, seed=3)
    expected = []
    for C in (0.1, 10.0):
        folds = []
        for a, b in StratifiedKFold(4, shuffle=True, random_state=3).split(train[0], y):
            with threadpool_limits(1):
                p = np.mean([LogisticRegression(C=C, max_iter=2000).fit(x[a], y[a]).predict_proba(x[b])[:, 1]
                             for x in train], axis=0)
            folds.append(roc_auc_score(y[b], p))
        expected.append(np.mean(folds))
    assert np.allclose(scores, expected)
    assert lp.choose_C(np.array([0.7, 0.9, 0.9]), [0.1, 1.0, 10.0]) == 1.0  # ties: the smaller C


def test_single_class_training_label_is_skipped_with_a_warning(caplog):
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(20, 4))]
    y = np.stack([np.arange(20) % 2, np.zeros(20, int)], axis=1)
    y_pred, kept, choices = lp.linear_probe(x, y, x, ["Half", "Never"], cv_folds=3)
    assert kept == ["Half"] and y_pred.shape == (20, 1) and list(choices.index) == ["Half"]
    assert "Never: only class 0 in the training labels" in caplog.text


def test_mismatched_label_rows_are_a_one_line_error(squares, tmp_path, capsys):
    short = write_labels(tmp_path / "short.csv", ["Square"], n=7)
    args = probe_args(squares, tmp_path / "out")
    args[args.index("--train_labels_path") + 1] = short
    assert errors.run_cli(lp.main, args) == errors.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 7 label rows but" in err and "40 images" in err
    assert not (tmp_path / "out").exists()


def test_non_binary_label_is_a_one_line_error(squares, tmp_path, capsys):
    h5 = write_h5(tmp_path / "x.h5", n=12)
    labels = write_labels(tmp_path / "x.csv", ["Square"], n=12)
    table = pd.read_csv(labels)
    table.loc[3, "Square"] = -1
    table.to_csv(labels, index=False)
    args = probe_args(squares, tmp_path / "out")
    args[args.index("--train_cxr_filepath") + 1] = h5
    args[args.index("--train_labels_path") + 1] = labels
    assert errors.run_cli(lp.main, args) == errors.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Square" in err
