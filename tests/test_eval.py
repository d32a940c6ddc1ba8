"""eval.py against brute-force sklearn references: the original per-replicate bootstrap loop,
roc_auc_score, matthews_corrcoef / f1_score per threshold, and the original compute_cis rule."""
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import auc, confusion_matrix, f1_score, matthews_corrcoef, roc_auc_score, roc_curve
from sklearn.utils import resample

import eval as ev

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pleural Other"]


def make_data(n: int, prevalences, seed: int, decimals: int = 2):
    """Scores near 0.5 with weak signal, rounded so that many ties occur (as float32 zero-shot output)."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, len(prevalences))) < prevalences).astype(int)
    scores = 0.5 + 0.05 * rng.standard_normal(y_true.shape) + 0.04 * y_true
    return np.round(scores, decimals).astype(np.float32), y_true


def original_bootstrap_stats(y_pred, y_true, labels, n_samples, label_idx_map=None):
    """The original's loop: resample(random_state=i), then roc_curve + auc per label."""
    idx = np.arange(len(y_true))
    rows = []
    for i in range(n_samples):
        sample = resample(idx, replace=True, random_state=i)
        row = {}
        for j, label in enumerate(labels):
            truth = y_true[sample, j if label_idx_map is None else label_idx_map[label]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                fpr, tpr, _ = roc_curve(truth, y_pred[sample, j])
                row[f"{label}_auc"] = auc(fpr, tpr)
        rows.append(row)
    return pd.DataFrame(rows)


def original_compute_cis(data, confidence_level=0.05):
    """The original rule, column by column with pandas sort_values / iloc / round."""
    out = {}
    for column in data.columns:
        ordered = data[column].sort_values()
        lower = ordered.iloc[int(confidence_level / 2 * len(ordered)) - 1].round(4)
        upper = ordered.iloc[int((1 - confidence_level / 2) * len(ordered)) - 1].round(4)
        out[column] = [round(ordered.mean(), 4), lower, upper]
    return pd.DataFrame(out, index=["mean", "lower", "upper"])


def brute_force_metric(y_pred_i, y_true_i, metric):
    """Candidate thresholds as metrics.get_best_p_vals, metric via sklearn at each one."""
    thresholds = np.sort(roc_curve(y_true_i, y_pred_i)[2][1:])
    values = []
    for threshold in thresholds:
        binary = (y_pred_i >= threshold).astype(int)
        if metric == "mcc":
            values.append(matthews_corrcoef(y_true_i, binary))
        elif metric == "f1":
            values.append(f1_score(y_true_i, binary))
        else:
            tn, fp, fn, tp = confusion_matrix(y_true_i, binary, labels=[0, 1]).ravel()
            values.append(tp / (tp + fn) - fp / (fp + tn))
    return thresholds, np.array(values)


def test_resample_counts_match_sklearn_resample():
    counts = ev._resample_counts(37, 50)
    for i in range(50):
        expected = np.bincount(resample(np.arange(37), replace=True, random_state=i), minlength=37)
        np.testing.assert_array_equal(counts[:, i], expected)


def test_bootstrap_equals_original_loop_with_rare_and_tied_labels():
    # Pleural Other: 2 positives in 200, so about e^-2 of the replicates hold no positive (NaN).
    y_pred, y_true = make_data(200, [0.3, 0.3, 0.06, 0.15, 0.2, 0.0], seed=1)
    y_true[[5, 17], 5] = 1
    assert len(np.unique(y_pred[:, 0])) < 60  # heavy ties in every column
    boot_stats, cis = ev.bootstrap(y_pred, y_true, LABELS, n_samples=200)
    expected = original_bootstrap_stats(y_pred, y_true, LABELS, 200)

    assert list(boot_stats.columns) == [f"{label}_auc" for label in LABELS]
    assert len(boot_stats) == 200
    n_nan = boot_stats["Pleural Other_auc"].isna().sum()
    assert 10 < n_nan < 60
    np.testing.assert_array_equal(boot_stats.isna().to_numpy(), expected.isna().to_numpy())
    np.testing.assert_allclose(boot_stats.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(cis, original_compute_cis(expected), check_exact=True)
    # NaN replicates sort last and still count in n: upper = sorted[194] lies among the NaN.
    assert np.isnan(cis.loc["upper", "Pleural Other_auc"])


def test_paired_difference_is_the_per_replicate_difference_and_narrower_than_either_interval():
    y_pred, y_true = make_data(300, [0.3, 0.1, 0.2], seed=4, decimals=4)
    labels = LABELS[:3]
    rng = np.random.default_rng(5)
    better = y_pred + 0.01 * y_true + 0.003 * rng.standard_normal(y_pred.shape)   # a slightly better method
    replicates, table = ev.bootstrap_difference(y_pred, better, y_true, labels, n_samples=200)
    stats_a, cis_a = ev.bootstrap(y_pred, y_true, labels, n_samples=200)
    stats_b, cis_b = ev.bootstrap(better, y_true, labels, n_samples=200)
    pd.testing.assert_frame_equal(replicates, stats_b - stats_a)
    for i, label in enumerate(labels):
        column = f"{label}_auc"
        assert table.loc["full", column] == pytest.approx(roc_auc_score(y_true[:, i], better[:, i])
                                                          - roc_auc_score(y_true[:, i], y_pred[:, i]))
        width = table.loc["upper", column] - table.loc["lower", column]
        assert 0 < width < min(cis_a.loc["upper", column] - cis_a.loc["lower", column],
                               cis_b.loc["upper", column] - cis_b.loc["lower", column]) / 2
        assert table.loc["lower", column] > 0                                    # the better method wins
    _, same = ev.bootstrap_difference(y_pred, y_pred, y_true, labels, n_samples=50)
    assert (same.to_numpy() == 0).all()


def test_evaluate_equals_roc_auc_score():
    y_pred, y_true = make_data(300, [0.3, 0.5, 0.1, 0.2, 0.25, 0.05], seed=2)
    result = ev.evaluate(y_pred, y_true, LABELS)
    assert result.shape == (1, len(LABELS))
    for j, label in enumerate(LABELS):
        expected = roc_auc_score(y_true[:, j], y_pred[:, j])
        assert result.loc[0, f"{label}_auc"] == pytest.approx(expected, abs=1e-15)


def test_evaluate_single_class_label_is_nan():
    y_pred, y_true = make_data(50, [0.3, 0.0], seed=3)
    result = ev.evaluate(y_pred, y_true, ["A", "B"])
    assert np.isnan(result.loc[0, "B_auc"])
    assert result.loc[0, "A_auc"] == pytest.approx(roc_auc_score(y_true[:, 0], y_pred[:, 0]))


def test_evaluate_rejects_uncertain_labels():
    y_pred, y_true = make_data(20, [0.5], seed=4)
    y_true[0, 0] = -1
    with pytest.raises(ValueError, match="binary"):
        ev.evaluate(y_pred, y_true, ["A"])


def test_compute_cis_index_rule_on_hand_made_series():
    # n = 40: lower = sorted[int(1.0) - 1] = sorted[0], upper = sorted[int(39.0) - 1] = sorted[38].
    values = [0.123456 + k / 100 for k in range(37)] + [np.nan] * 3
    shuffled = pd.DataFrame({"x_auc": np.random.default_rng(0).permutation(values)})
    cis = ev.compute_cis(shuffled)
    assert list(cis.index) == ["mean", "lower", "upper"]
    assert cis.loc["lower", "x_auc"] == 0.1235
    assert np.isnan(cis.loc["upper", "x_auc"])  # sorted[38] is one of the 3 trailing NaN
    assert cis.loc["mean", "x_auc"] == 0.3035  # mean of the 37 finite values, 0.303456

    # n = 100: lower = sorted[1], upper = sorted[96].
    hundred = pd.DataFrame({"y": np.random.default_rng(1).permutation(np.arange(100) / 1000)})
    cis = ev.compute_cis(hundred)
    assert (cis.loc["lower", "y"], cis.loc["upper", "y"], cis.loc["mean", "y"]) == (0.001, 0.096, 0.0495)


def test_compute_cis_rejects_too_few_replicates():
    with pytest.raises(ValueError, match="too few"):
        ev.compute_cis(pd.DataFrame({"x": np.arange(39.0)}))


@pytest.mark.parametrize("metric", ["mcc", "f1", "youden"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_at_thresholds_equals_sklearn_brute_force(metric, seed):
    y_pred, y_true = make_data(150, [0.2], seed=seed, decimals=2)
    thresholds, values = ev.metric_at_thresholds(y_pred[:, 0], y_true[:, 0], metric)
    expected_thresholds, expected_values = brute_force_metric(y_pred[:, 0], y_true[:, 0], metric)
    np.testing.assert_array_equal(thresholds, expected_thresholds)
    np.testing.assert_array_equal(values, expected_values)


@pytest.mark.parametrize("metric", ["mcc", "f1", "youden"])
def test_choose_thresholds_picks_first_maximum(metric):
    y_pred, y_true = make_data(200, [0.3, 0.5, 0.1, 0.2, 0.25, 0.05], seed=5)
    chosen = ev.choose_thresholds(y_pred, y_true, LABELS, metric=metric)
    assert list(chosen.index) == LABELS
    for j, label in enumerate(LABELS):
        thresholds, values = brute_force_metric(y_pred[:, j], y_true[:, j], metric)
        assert chosen[label] == thresholds[np.argmax(values)]


def test_choose_thresholds_single_class_gives_nan():
    y_pred, y_true = make_data(40, [0.4, 0.0], seed=6)
    chosen = ev.choose_thresholds(y_pred, y_true, ["A", "B"])
    assert np.isnan(chosen["B"]) and not np.isnan(chosen["A"])


@pytest.mark.parametrize("metric", ["mcc", "f1"])
def test_binary_metric_bootstrap_equals_brute_force_loop(metric):
    # Pleural Other has 2 positives: some replicates hold none (sklearn's 0.0 edge cases).
    y_pred, y_true = make_data(60, [0.3, 0.5, 0.2, 0.2, 0.25, 0.0], seed=7)
    y_true[[3, 40], 5] = 1
    thresholds = ev.choose_thresholds(y_pred, y_true, LABELS, metric="mcc")
    boot_stats, cis = ev.binary_metric_bootstrap(y_pred, y_true, LABELS, thresholds, metric, n_samples=100)

    score = matthews_corrcoef if metric == "mcc" else f1_score
    rows, no_positive = [], 0
    for i in range(100):
        sample = resample(np.arange(60), replace=True, random_state=i)
        no_positive += y_true[sample, 5].sum() == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = {f"{label}_{metric}": score(y_true[sample, j], (y_pred[sample, j] >= thresholds[label]) * 1)
                   for j, label in enumerate(LABELS)}
        row[f"Mean_{metric}"] = np.mean([row[f"{label}_{metric}"] for label in ev.COMPETITION_LABELS])
        rows.append(row)
    expected = pd.DataFrame(rows)
    assert no_positive > 0
    np.testing.assert_array_equal(boot_stats.to_numpy(), expected.to_numpy())
    pd.testing.assert_frame_equal(cis, original_compute_cis(expected), check_exact=True)


def test_label_idx_map_selects_true_columns():
    # Predictions for two synonyms of Atelectasis plus Edema, against a 2-column ground truth.
    y_pred, _ = make_data(120, [0.3, 0.3, 0.2], seed=8)
    _, y_true = make_data(120, [0.3, 0.2], seed=9)
    y_pred = y_pred + 0.05 * y_true[:, [0, 0, 1]]
    labels = ["Atelectasis", "collapse", "Edema"]
    label_idx_map = {"Atelectasis": 0, "collapse": 0, "Edema": 1}
    remapped = y_true[:, [0, 0, 1]]

    result = ev.evaluate(y_pred, y_true, labels, label_idx_map=label_idx_map)
    for j, label in enumerate(labels):
        assert result.loc[0, f"{label}_auc"] == pytest.approx(roc_auc_score(remapped[:, j], y_pred[:, j]))

    boot_stats, cis = ev.bootstrap(y_pred, y_true, labels, n_samples=50, label_idx_map=label_idx_map)
    expected = original_bootstrap_stats(y_pred, y_true, labels, 50, label_idx_map)
    np.testing.assert_allclose(boot_stats.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)

    thresholds = ev.choose_thresholds(y_pred, y_true, labels, label_idx_map=label_idx_map)
    pd.testing.assert_series_equal(thresholds, ev.choose_thresholds(y_pred, remapped, labels))
    mapped = ev.binary_metric_bootstrap(y_pred, y_true, labels, thresholds, n_samples=50,
                                        label_idx_map=label_idx_map)
    plain = ev.binary_metric_bootstrap(y_pred, remapped, labels, thresholds, n_samples=50)
    pd.testing.assert_frame_equal(mapped[0], plain[0])


def test_compute_mean_accepts_auc_columns_and_plain_labels():
    y_pred, y_true = make_data(200, [0.3, 0.5, 0.1, 0.2, 0.25, 0.05], seed=10)
    result = ev.evaluate(y_pred, y_true, LABELS)
    expected = np.mean([roc_auc_score(y_true[:, j], y_pred[:, j]) for j in range(5)])
    assert ev.compute_mean(result) == pytest.approx(expected)
    plain = {label: [float(k)] for k, label in enumerate(LABELS)}
    assert ev.compute_mean(plain, is_df=False) == 2.0
    cis = pd.DataFrame({f"{label}_auc": [0.8, 0.7, 0.9] for label in ev.COMPETITION_LABELS},
                       index=["mean", "lower", "upper"])
    assert ev.compute_mean(cis) == pytest.approx(0.8)


def test_choose_operating_point_and_sigmoid():
    fpr, tpr = np.array([0.0, 0.1, 0.3, 1.0]), np.array([0.0, 0.6, 0.8, 1.0])
    sens, spec = ev.choose_operating_point(fpr, tpr, None)
    assert (sens, spec) == (0.6, 0.9)  # J = 0.5 at both inner points: the first wins (strict >)
    assert ev.sigmoid(0.0) == 0.5
    np.testing.assert_allclose(ev.sigmoid(np.array([-2.0, 2.0])), [1 / (1 + np.e ** 2), 1 / (1 + np.e ** -2)])


def test_plot_roc_returns_curve_and_auc():
    y_pred, y_true = make_data(100, [0.3], seed=11)
    fpr, tpr, thresholds, roc_auc = ev.plot_roc(y_pred[:, 0], y_true[:, 0], "A ROC Curve")
    assert roc_auc == pytest.approx(roc_auc_score(y_true[:, 0], y_pred[:, 0]))
    assert len(fpr) == len(tpr) == len(thresholds)


def test_summarize_padchest_counts_only_well_populated_findings():
    cis = pd.DataFrame({"a_auc": [0.95, 0.9, 0.97], "b_auc": [0.91, 0.8, 0.95], "c_auc": [0.75, 0.7, 0.8],
                        "d_auc": [0.7, 0.6, 0.8], "e_auc": [0.65, 0.6, 0.7], "rare_auc": [0.99, 0.9, 1.0]},
                       index=["mean", "lower", "upper"])
    positives = {"a": 120, "b": 50, "c": 300, "d": 60, "e": 80, "rare": 49}
    summary = ev.summarize_padchest(cis, positives)
    assert (summary["n_findings"], summary["auc_gt_0.9"], summary["auc_ge_0.7"]) == (5, 2, 4)
    assert ev.summarize_padchest({"a": 0.95, "rare": 0.99}, positives, min_positives=10)["auc_gt_0.9"] == 2
    with pytest.raises(KeyError):
        ev.summarize_padchest({"zzz": 0.9}, positives)


def test_plot_roc_curves_writes_png(tmp_path):
    y_pred, y_true = make_data(150, [0.3, 0.5, 0.2], seed=12)
    labels = ["Atelectasis", "Cardiomegaly", "Edema"]
    _, cis = ev.bootstrap(y_pred, y_true, labels, n_samples=100)
    out = ev.plot_roc_curves(y_pred, y_true, labels, cis, tmp_path / "figs" / "roc.png",
                             plot_labels=["Cardiomegaly", "Edema"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_accuracy_counts_rows_whose_target_is_among_their_top_k():
    import torch

    rng = np.random.default_rng(13)
    scores = rng.random((50, 6))
    target = rng.integers(0, 6, 50)
    rank_of_target = (scores > scores[np.arange(50), target][:, None]).sum(axis=1)  # 0 = best
    expected = [float((rank_of_target < k).sum()) for k in (1, 3, 5)]
    assert ev.accuracy(scores, target, (1, 3, 5)) == expected
    assert ev.accuracy(torch.tensor(scores), torch.tensor(target).view(-1, 1), topk=(1, 3, 5)) == expected
    with pytest.raises(ValueError, match="top-7 of 6"):
        ev.accuracy(scores, target, (7,))


def test_plot_pr_returns_sklearns_curve_and_draws_it():
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    y_pred, y_true = make_data(100, [0.3], seed=14)
    curve = ev.plot_pr(y_pred[:, 0], y_true[:, 0], "A Precision-Recall Curve")
    for ours, theirs in zip(curve, precision_recall_curve(y_true[:, 0], y_pred[:, 0])):
        np.testing.assert_array_equal(ours, theirs)
    figures = len(plt.get_fignums())
    ev.plot_pr(y_pred[:, 0], y_true[:, 0], "A Precision-Recall Curve", plot=True)
    assert len(plt.get_fignums()) == figures + 1 and plt.gca().get_title() == "A Precision-Recall Curve"
    plt.close("all")
