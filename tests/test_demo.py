"""The demo chain at smoke scale: phantom data -> preprocessing -> training -> zero-shot AUROC on
CheXpert (calibrated) and PadChest, where-maps against the painted regions -> predict.py on DICOM and
JPG files, through the same CLIs a user types, into a temporary folder; a second run reuses the stages."""
import json
from pathlib import Path

import pandas as pd

from conftest import run_python
from demo import PREDICT_DICOMS, PREDICT_JPGS
from labels import CHEXPERT_EVAL_ORDER, COMPETITION_LABELS


def cell_labels(cell: str) -> list[str]:
    """The labels of a top-findings cell, "Edema 0.412 (0.531), Atelectasis 0.2 (0.5)"."""
    return [item.rsplit(" ", 2)[0] for item in cell.rstrip(" |").split(", ")]


def run_demo(workdir: Path) -> str:
    done = run_python("demo.py", "--scale", "smoke", "--workdir", str(workdir), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_smoke_demo_runs_end_to_end_and_reuses_its_outputs(tmp_path) -> None:
    first = run_demo(tmp_path)
    out = tmp_path / "results" / "smoke"
    for name in ("auroc.md", "auroc.csv", "roc.png", "loss.png", "mcc_f1.csv", "thresholds.csv", "README.md",
                 "calibration.json", "calibration.csv", "calibration.png", "localisation.md", "localisation.png"):
        assert (out / name).stat().st_size > 0, name
    auroc = pd.read_csv(out / "auroc.csv")
    assert set(COMPETITION_LABELS) <= set(auroc.iloc[:, 0])
    table = (out / "auroc.md").read_text()
    assert "Mean (5 competition)" in table and table in first          # the table is printed at the end
    summary = (out / "README.md").read_text()
    # calibration: ECE and Brier before and after in the table; where-maps: each method and baseline per label
    assert table.splitlines()[0].endswith("| ECE before | ECE after | Brier before | Brier after |")
    localisation = pd.read_csv(out / "localisation.csv")
    assert set(localisation["method"]) == {"patch", "occlusion", "prior", "random"}
    assert set(localisation["label"]) == set(COMPETITION_LABELS)
    assert (out / "localisation.md").read_text() in summary and (out / "localisation.md").read_text() in first
    assert "not clinical performance" in summary.replace("\n", " ") or "clinical performance" in summary
    # every h5 row has a caption row, and the corrupt phantoms were dropped, not zero-filled
    impressions = pd.read_csv(tmp_path / "data" / "smoke" / "mimic_impressions.csv")
    failed = pd.read_csv(tmp_path / "data" / "smoke" / "failed_images.csv")
    assert len(failed) >= 2 and len(impressions) > 100
    csv_failed = pd.read_csv(tmp_path / "data" / "smoke" / "csv" / "failed_images.csv")
    assert sorted(csv_failed["Path"]) == sorted(failed["Path"])     # the csv route drops the same images
    best = sorted((tmp_path / "checkpoints" / "smoke").glob("best_*.pt"))
    assert 1 <= len(best) <= 2
    # your own data: the csv route made the MIMIC route's rows; the linear probe's table beside zero-shot
    assert "csv route = MIMIC route: " in first and "csv route = MIMIC route: " in summary
    probe = (out / "linear_probe.md").read_text()
    assert probe.startswith("| Label | Positives | zero-shot AUROC [95% CI] | linear probe AUROC [95% CI] |")
    assert probe in first and probe in summary
    n_test = len(pd.read_csv(out / "chexpert_preds.csv"))
    assert len(pd.read_csv(out / "linear_probe" / "linear_probe_preds.csv")) == n_test
    # PadChest: an AUROC table over the findings with enough positives, and the headline summary
    padchest = json.loads((out / "padchest" / "padchest_summary.json").read_text())
    assert padchest["n_findings"] >= 1 and padchest["headline"] in summary and padchest["headline"] in first
    padchest_table = (out / "padchest" / "auroc.md").read_text()
    assert len(pd.read_csv(out / "padchest" / "auroc.csv")) == padchest["n_findings"]
    assert padchest_table in first and padchest_table in summary
    # predict.py: a row per readable image (the DICOM without pixel data is in the failed list)
    predictions = pd.read_csv(out / "predictions.csv")
    # calibrated with the validation map of the zero-shot stage, the raw probabilities kept beside them
    assert list(predictions.columns) == ["path", *CHEXPERT_EVAL_ORDER, *[f"{x}_raw" for x in CHEXPERT_EVAL_ORDER]]
    fitted = json.loads((out / "calibration.json").read_text())["labels"]
    changed = [x for x in CHEXPERT_EVAL_ORDER if (predictions[x] - predictions[f"{x}_raw"]).abs().max() > 1e-6]
    assert changed == [x for x in CHEXPERT_EVAL_ORDER if fitted[x]["calibrated"]] and changed
    assert len(predictions) == len(PREDICT_DICOMS) - 1 + PREDICT_JPGS
    assert predictions["path"].str.endswith(".dcm").sum() == len(PREDICT_DICOMS) - 1
    assert predictions[CHEXPERT_EVAL_ORDER].apply(lambda p: p.between(0, 1)).all().all()
    failed = pd.read_csv(out / "predictions.failed.csv")
    assert list(failed["path"].str.rsplit("/", n=1).str[-1]) == ["no_pixel_data.dcm"]
    top = first[first.index("top 3 findings per image"):]                 # the table is printed last
    ranked = [line.split(" | ")[1] for line in top.splitlines() if line.startswith("| ") and ".dcm | " in line]
    assert ranked and all(label in changed for cell in ranked for label in cell_labels(cell))
    assert top.count(".dcm | ") == len(PREDICT_DICOMS) - 1 and top.count(".jpg | ") == PREDICT_JPGS
    assert "no_pixel_data.dcm: DICOM without Pixel Data" in top
    assert "| image | top 3 findings (calibrated probability; raw zero-shot probability) |" in summary

    second = run_demo(tmp_path)
    assert second.count("reusing") == 8                               # only evaluation and prediction run again
    assert pd.read_csv(out / "auroc.csv").equals(auroc)               # seeded: same numbers
