"""run_localisation.py on a small phantom root: each method and baseline per label, on exactly the
positive test images that have a painted region, and one-line errors for inputs it cannot use."""
import json

import numpy as np
import pandas as pd
import pytest

import eval as ev
import run_localisation
import segmentations as seg
from conftest import run_python, save_clip
from errors import UserError

LABELS = ["Cardiomegaly", "Pleural Effusion"]


@pytest.fixture(scope="module")
def evaluation_files(phantom_root, tmp_path_factory):
    """The phantom's CheXpert-format test and valid sets preprocessed, and a small checkpoint."""
    root, _ = phantom_root
    out = tmp_path_factory.mktemp("localisation")
    for split, source in (("test", "chexpert-test"), ("valid", "chexpert")):
        done = run_python("preprocess_train_data.py", "--dataset_type", f"chexpert-{split}",
                          "--chest_x_ray_path", str(root / source), "--cxr_out_path", str(out / f"{split}.h5"),
                          "--labels_out_path", str(out / f"{split}_labels.csv"),
                          "--failed_out_path", str(out / f"{split}_failed.csv"), "--num_workers", "1")
        assert done.returncode == 0, done.stderr[-2000:]
    return {"root": root, "out": out, "model": save_clip(out / "model.pt", seed=1)}


def arguments(files, *extra):
    root, out = files["root"], files["out"]
    return ["--model_paths", files["model"], "--cxr_filepath", str(out / "test.h5"),
            "--labels_path", str(out / "test_labels.csv"),
            "--segmentations", str(root / "chexpert-test" / "gt_segmentations.json"),
            "--prior_labels_path", str(out / "valid_labels.csv"),
            "--prior_segmentations", str(root / "chexpert" / "CheXpert-v1.0-small" / "gt_segmentations_valid.json"),
            "--labels", *LABELS, "--bootstrap", "40", "--device", "cpu", *extra]


def test_each_method_and_baseline_is_scored_on_the_positive_images_that_have_a_region(evaluation_files, tmp_path):
    table = run_localisation.main(arguments(evaluation_files, "--overlays", "2", "--out", str(tmp_path)))
    assert list(table["method"]) == ["patch", "occlusion", "prior", "random"] * len(LABELS)
    labels = pd.read_csv(evaluation_files["out"] / "test_labels.csv")
    regions = json.loads((evaluation_files["root"] / "chexpert-test" / "gt_segmentations.json").read_text())
    for label in LABELS:
        keys = [seg.segmentation_key(p) for p in labels.loc[labels[label] == 1, "Path"]]
        expected = sum(label in regions.get(key, {}) for key in keys)
        assert expected > 0
        rows = table[table["label"] == label]
        assert (rows["images"] == expected).all()
        assert ((rows[["pointing_full", "iou_full"]] >= 0) & (rows[["pointing_full", "iou_full"]] <= 1)).all().all()
        assert (rows["pointing_lower"] <= rows["pointing_upper"]).all()
    # the prior is the mean valid-set region: scored by hand from the files it must agree
    valid = pd.read_csv(evaluation_files["out"] / "valid_labels.csv")
    valid_regions = seg.read_segmentations(
        evaluation_files["root"] / "chexpert" / "CheXpert-v1.0-small" / "gt_segmentations_valid.json")
    prior_masks = seg.model_masks(valid_regions, list(valid["Path"]), "Cardiomegaly")
    prior = ev.prior_map(prior_masks[prior_masks.any(axis=(1, 2))])
    test_masks = seg.model_masks(regions, list(labels["Path"]), "Cardiomegaly")
    test_masks = test_masks[(labels["Cardiomegaly"] == 1).to_numpy() & test_masks.any(axis=(1, 2))]
    prior_row = table[(table["label"] == "Cardiomegaly") & (table["method"] == "prior")].iloc[0]
    assert prior_row["pointing_full"] == ev.pointing_hits(prior, test_masks).mean()
    assert (tmp_path / "localisation.md").read_text().count("| Cardiomegaly |") == 4
    assert (tmp_path / "localisation.png").stat().st_size > 10_000
    assert len(pd.read_csv(tmp_path / "localisation.csv")) == 4 * len(LABELS)


def test_a_labels_csv_without_paths_is_refused_in_one_line(evaluation_files, tmp_path):
    labels = pd.read_csv(evaluation_files["out"] / "test_labels.csv").drop(columns="Path")
    labels.to_csv(tmp_path / "no_path.csv", index=False)
    args = arguments(evaluation_files, "--out", str(tmp_path))
    args[args.index("--labels_path") + 1] = str(tmp_path / "no_path.csv")
    with pytest.raises(UserError, match="no Path column"):
        run_localisation.main(args)
    done = run_python("run_localisation.py", *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "no Path column" in done.stderr


def test_a_label_without_regions_is_refused_naming_the_files(evaluation_files, tmp_path):
    args = arguments(evaluation_files, "--out", str(tmp_path))
    args[args.index("--labels") + 1: args.index("--labels") + 3] = ["No Finding"]
    with pytest.raises(UserError, match="No Finding: 0 positive test images with a region"):
        run_localisation.main(args)
    assert not np.any([p.name.startswith("localisation") for p in tmp_path.iterdir()])
