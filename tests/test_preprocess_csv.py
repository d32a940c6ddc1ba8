"""preprocess_train_data.py --dataset_type csv / csv-labels: your own pairs or labels from a CSV."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import clip
import cxr_data
import preprocess_train_data as cli
import run_train
import train
from conftest import MICRO, mimic_args, read_h5, run_python
from zero_shot import make_true_labels


def png(path: Path, value: int, w: int = 90, h: int = 120) -> str:
    """A uniform grey image: after resize and pad its h5 row's maximum is ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w), value, np.uint8))
    return str(path)


def csv_args(csv: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset_type", "csv", "--csv", str(csv), "--path_column", "image", "--text_column", "report",
            "--cxr_out_path", str(out / "cxr.h5"), "--mimic_impressions_path", str(out / "impressions.csv"),
            "--num_workers", "1", *extra]


def test_csv_route_reproduces_the_mimic_route_row_for_row(phantom_root, tmp_path):
    """Every MIMIC row with a caption is reproduced exactly; the phantom's empty captions (which the MIMIC
    route keeps as blank text) are the csv route's 'empty' failed reports instead."""
    root, _ = phantom_root
    assert cli.main(mimic_args(root, tmp_path / "mimic")) == 0
    paths = pd.read_csv(tmp_path / "mimic" / "cxr_paths.csv")["Path"].tolist()
    mimic_captions = pd.read_csv(tmp_path / "mimic" / "mimic_impressions.csv", keep_default_na=False)["impression"]
    has_caption = mimic_captions.str.strip().ne("").to_numpy()
    assert len(paths) > 20 and 0 < (~has_caption).sum() < 10   # the phantom holds a few empty impressions
    # paths relative to --image_root (the phantom root), so the resolution rule is exercised too
    relative = [str(Path(p).relative_to(root)) for p in paths]
    pd.DataFrame({"image": relative, "report": mimic_captions}).to_csv(tmp_path / "pairs.csv", index=False)

    out = tmp_path / "csv"
    assert cli.main(csv_args(tmp_path / "pairs.csv", out, "--image_root", str(root))) == 0
    mimic_h5, csv_h5 = read_h5(tmp_path / "mimic" / "cxr.h5"), read_h5(out / "cxr.h5")
    assert csv_h5.dtype == mimic_h5.dtype and len(csv_h5) == has_caption.sum()
    assert np.array_equal(csv_h5, mimic_h5[has_caption])
    captions = pd.read_csv(out / "impressions.csv", keep_default_na=False)
    assert list(captions.columns) == ["filename", "impression"]
    assert captions["impression"].tolist() == mimic_captions[has_caption].tolist()
    assert captions["filename"].tolist() == [r for r, keep in zip(relative, has_caption) if keep]
    failed = pd.read_csv(out / "failed_reports.csv")
    assert failed["row"].tolist() == [i + 1 for i in np.flatnonzero(~has_caption)]
    assert set(failed["reason"]) == {"empty"}
    assert failed["path"].tolist() == [str(root / r) for r, keep in zip(relative, has_caption) if not keep]
    summary = json.loads((out / "impressions_summary.json").read_text())
    assert summary["pairs_kept"] == has_caption.sum() and summary["dropped"] == {"empty": (~has_caption).sum()}
    tokens = summary["caption_tokens"]
    assert tokens["n"] == has_caption.sum() and 0 <= tokens["share_truncated"] <= 1 and tokens["p50"] <= tokens["max"]


BAD_CSV = (b"image,report\n"
           b"img/a.png,No acute cardiopulmonary process.\n"
           b"img/b.png,\"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n\"\n"
           b"img/c.png,\n"
           b"img/d.png,\"   \"\n"
           b"img/e.png,\"\x00\x01\xff\xfe\x89PNG\"\n"
           b"img/f.png,effusion effusion effusion Effusion\n"
           b"img/g.png,\"Moderate cardiomegaly.\nSmall left effusion.\"\n"
           b"img/h.png,Broken image file.\n"
           b"img/i.png,Right lower lobe consolidation.\n")


def test_pairs_may_list_dicom_files_read_by_the_dicom_rule(tmp_path):
    """A MONOCHROME1 12-bit DICOM copy of a PNG (its window maps onto the PNG's grey levels) gives the
    PNG's h5 row under --dicom_rule window, and its report trains beside it."""
    from phantom.dicom import Header, Variant, write_dicom

    grey = np.random.default_rng(0).integers(0, 256, (120, 90), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "a.png"), grey)
    write_dicom(tmp_path / "a.dcm", grey, Header("10000032", "50414267", "dicom-in-a-csv", seed=0),
                Variant("MONOCHROME1", 12, "window", False, "explicit_le"))
    pd.DataFrame({"image": ["a.png", "a.dcm"], "report": ["Small left effusion.", "No effusion."]}).to_csv(
        tmp_path / "pairs.csv", index=False)
    assert cli.main(csv_args(tmp_path / "pairs.csv", tmp_path / "out", "--dicom_rule", "window")) == 0
    h5 = read_h5(tmp_path / "out" / "cxr.h5")
    assert len(h5) == 2 and h5[0].std() > 0 and np.array_equal(h5[0], h5[1])
    captions = pd.read_csv(tmp_path / "out" / "impressions.csv")
    assert captions["filename"].tolist() == ["a.png", "a.dcm"]


@pytest.fixture
def bad_pairs(tmp_path) -> Path:
    """Nine pairs: three good ones, one broken image, five bad reports (LFS, empty, blank, binary, repeated)."""
    for name, value in zip("abcdefgi", (40, 60, 80, 100, 120, 140, 160, 180)):
        png(tmp_path / "data" / "img" / f"{name}.png", value)
    (tmp_path / "data" / "img" / "h.png").write_bytes(b"not an image")
    (tmp_path / "data" / "pairs.csv").write_bytes(BAD_CSV)
    return tmp_path / "data" / "pairs.csv"


def test_bad_reports_are_listed_with_reasons_and_the_good_pairs_kept_aligned(bad_pairs, tmp_path):
    out = tmp_path / "out"
    assert cli.main(csv_args(bad_pairs, out)) == 0
    failed = pd.read_csv(out / "failed_reports.csv")
    assert failed["row"].tolist() == [2, 3, 4, 5, 6]
    assert failed["reason"].tolist() == ["git-lfs pointer", "empty", "empty", "binary", "one repeated token"]
    assert [Path(p).name for p in failed["path"]] == ["b.png", "c.png", "d.png", "e.png", "f.png"]
    # h.png is a report that is fine but an image that does not decode: listed as the other routes do
    failed_images = pd.read_csv(out / "failed_images.csv")
    assert [Path(p).name for p in failed_images["Path"]] == ["h.png"]
    cxr = read_h5(out / "cxr.h5")
    captions = pd.read_csv(out / "impressions.csv")
    assert len(cxr) == len(captions) == 3
    assert captions["filename"].tolist() == ["img/a.png", "img/g.png", "img/i.png"]
    assert captions["impression"].tolist() == ["No acute cardiopulmonary process.",
                                               "Moderate cardiomegaly.\nSmall left effusion.",
                                               "Right lower lobe consolidation."]
    assert [int(row.max()) for row in cxr] == [40, 160, 180]   # image i is the image of caption i
    summary = json.loads((out / "impressions_summary.json").read_text())
    assert summary["rows"] == 9 and summary["pairs_kept"] == 3
    assert summary["dropped"] == {"empty": 2, "git-lfs pointer": 1, "binary": 1, "one repeated token": 1,
                                  "image failed to decode": 1}
    assert summary["caption_tokens"]["share_truncated"] == 0.0
    # the rest trains: the tokens the loop reads are exactly the 3 good captions', and the loss is finite
    tokens = cxr_data.caption_tokens(out / "impressions.csv")
    assert np.array_equal(tokens, clip.tokenize(captions["impression"].tolist(), 77, truncate=True).numpy())
    train.train(run_train.parse_args(["--cxr_filepath", str(out / "cxr.h5"), "--txt_filepath",
                                      str(out / "impressions.csv"), "--save_dir", str(tmp_path / "runs"),
                                      "--batch_size", "3", "--max_steps", "2", "--log_interval", "1", *MICRO]))
    losses = pd.read_csv(tmp_path / "runs" / "pt-imp" / "metrics.csv")["loss"]
    assert len(losses) == 2 and np.isfinite(losses).all()


def test_bad_reports_stop_exits_non_zero_with_one_line_naming_count_and_file(bad_pairs, tmp_path):
    out = tmp_path / "out"
    result = run_python("preprocess_train_data.py", *csv_args(bad_pairs, out, "--bad_reports", "stop"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "5 bad reports" in lines[0] and str(out / "failed_reports.csv") in lines[0]
    assert len(pd.read_csv(out / "failed_reports.csv")) == 5
    assert not (out / "cxr.h5").exists() and not (out / "impressions.csv").exists()


def test_impression_rule_extracts_the_impression_of_whole_reports_from_jsonl(tmp_path):
    png(tmp_path / "a.png", 50)
    png(tmp_path / "b.png", 70)
    report = "FINDINGS: Heart size is normal. IMPRESSION: No acute process. RECOMMENDATION(S): none"
    rows = [{"image": "a.png", "report": report}, {"image": "b.png", "report": "FINDINGS: clear. IMPRESSION:"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert cli.main(csv_args(tmp_path / "pairs.jsonl", out, "--impression_rule", "chexzero")) == 0
    assert pd.read_csv(out / "impressions.csv")["impression"].tolist() == ["No acute process."]
    assert pd.read_csv(out / "failed_reports.csv")["reason"].tolist() == ["empty impression"]
    assert len(read_h5(out / "cxr.h5")) == 1


def test_a_missing_column_is_one_line_naming_the_csv_and_its_columns(bad_pairs, tmp_path):
    result = run_python("preprocess_train_data.py", *csv_args(bad_pairs, tmp_path / "out", "--text_column", "text"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad_pairs) in lines[0] and "'text'" in lines[0] and "['image', 'report']" in lines[0]


LABELS = pd.DataFrame({"image": ["a.png", "b.png", "c.png", "d.png"],
                       "Sex": ["F", "M", "F", "M"],
                       "Edema": ["1", "", "-1", "0"],
                       "Atelectasis": ["0", "1", "1", "uncertain"]})


@pytest.fixture
def labelled(tmp_path) -> Path:
    for name, value in zip("abcd", (30, 60, 90, 120)):
        png(tmp_path / f"{name}.png", value)
    LABELS.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def label_args(csv: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset_type", "csv-labels", "--csv", str(csv), "--path_column", "image",
            "--label_columns", "Edema,Atelectasis", "--cxr_out_path", str(out / "test.h5"),
            "--labels_out_path", str(out / "labels.csv"), "--num_workers", "1", *extra]


def test_csv_labels_keeps_label_columns_by_name_blank_is_0_and_zero_shot_reads_them(labelled, tmp_path):
    out = tmp_path / "out"
    assert cli.main(label_args(labelled, out, "--uncertain", "zero")) == 0
    labels = pd.read_csv(out / "labels.csv")
    assert list(labels.columns) == ["Path", "Edema", "Atelectasis"]
    assert [Path(p).name for p in labels["Path"]] == ["a.png", "b.png", "c.png", "d.png"]
    assert labels["Edema"].tolist() == [1, 0, 0, 0]          # blank -> 0, -1 -> 0 by --uncertain zero
    assert labels["Atelectasis"].tolist() == [0, 1, 1, 0]    # "uncertain" -> 0
    y = make_true_labels(out / "labels.csv", ["Atelectasis", "Edema"], cxr_filepath=out / "test.h5")
    assert y.tolist() == [[0, 1], [1, 0], [1, 0], [0, 0]]
    assert [int(row.max()) for row in read_h5(out / "test.h5")] == [30, 60, 90, 120]


def test_csv_labels_uncertain_one_and_drop(labelled, tmp_path):
    assert cli.main(label_args(labelled, tmp_path / "one", "--uncertain", "one")) == 0
    one = pd.read_csv(tmp_path / "one" / "labels.csv")
    assert one["Edema"].tolist() == [1, 0, 1, 0] and one["Atelectasis"].tolist() == [0, 1, 1, 1]
    assert cli.main(label_args(labelled, tmp_path / "drop", "--uncertain", "drop")) == 0
    drop = pd.read_csv(tmp_path / "drop" / "labels.csv")
    assert [Path(p).name for p in drop["Path"]] == ["a.png", "b.png"]
    assert len(read_h5(tmp_path / "drop" / "test.h5")) == 2
    make_true_labels(tmp_path / "drop" / "labels.csv", ["Edema"], cxr_filepath=tmp_path / "drop" / "test.h5")


def test_csv_labels_refuses_uncertain_and_non_label_values_in_one_line(labelled, tmp_path):
    result = run_python("preprocess_train_data.py", *label_args(labelled, tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--uncertain" in lines[0] and "'Edema': 1" in lines[0]
    assert not (tmp_path / "out" / "test.h5").exists()
    # every column but the path by default: Sex is not a label
    args = [a for a in label_args(labelled, tmp_path / "out", "--uncertain", "zero") if a != "Edema,Atelectasis"]
    args.remove("--label_columns")
    result = run_python("preprocess_train_data.py", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'Sex'" in lines[0] and "--label_columns" in lines[0]
