"""preprocess_train_data.py end to end on small trees built here: row alignment, failure lists,
view filter, impression rules, missing reports, kill -9 + --resume, and the three test sets."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import data_process as dp
import preprocess_train_data as cli
from conftest import kill_9_when, mimic_args, read_h5


def jpg(path: Path, w: int, h: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.clip(120 + 50 * np.sin(xx / 37 + seed) * np.cos(yy / 53) + rng.normal(0, 8, (h, w)), 20, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return str(path)


def mimic_report(impression: str) -> str:
    return ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
            " FINDINGS:\n \n Heart size is normal.\n \n IMPRESSION:\n \n " + impression + "\n")


# study -> (patient, [(dicom_id, ViewPosition, kind)], impression); kind: ok | zero | truncated
MIMIC = {
    "s53000001": ("p10000032", [("b1", "LATERAL", "ok"), ("a1", "PA", "ok")], "No acute process."),
    "s51000002": ("p10000032", [("c2", "AP", "ok"), ("d2", "", "ok")], "Small left effusion."),
    "s52000003": ("p19000004", [("e3", "PA", "zero"), ("f3", "LL", "ok")], "Cardiomegaly."),
    "s50000004": ("p11000005", [("g4", "AP", "truncated")], "Mild edema."),
}


@pytest.fixture
def mimic(tmp_path) -> Path:
    """A MIMIC-CXR-JPG + reports tree (two roots, as the real releases) with broken images."""
    jroot = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    rroot = tmp_path / "mimic-cxr" / "2.0.0" / "files"
    meta = []
    for k, (study, (patient, images, impression)) in enumerate(MIMIC.items()):
        folder = jroot / "files" / patient[:3] / patient / study
        for dicom, view, kind in images:
            path = folder / f"{dicom}.jpg"
            jpg(path, 120 + 10 * k, 150, seed=k)
            if kind == "zero":
                path.write_bytes(b"")
            elif kind == "truncated":
                path.write_bytes(path.read_bytes()[:900])
            meta.append({"dicom_id": dicom, "subject_id": int(patient[1:]), "study_id": int(study[1:]),
                         "ViewPosition": view})
        (rroot / patient[:3] / patient).mkdir(parents=True, exist_ok=True)
        (rroot / patient[:3] / patient / f"{study}.txt").write_text(mimic_report(impression))
    with gzip.open(jroot / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        pd.DataFrame(meta).to_csv(f, index=False)
    return tmp_path


def kill_when_done(argv: list[str], journal: Path, n_done: int) -> None:
    """Run the CLI in a subprocess and kill -9 it once its journal records ``n_done`` images."""
    kill_9_when([sys.executable, "preprocess_train_data.py", *argv],
                lambda: journal.exists() and json.loads(journal.read_text())["n_done"] >= n_done)


def test_mimic_rows_align_and_failures_are_listed(mimic, tmp_path):
    out = tmp_path / "out"
    assert cli.main(mimic_args(mimic, out, "--num_workers", "2")) == 0
    paths = pd.read_csv(out / "cxr_paths.csv")["Path"].tolist()
    imps = pd.read_csv(out / "mimic_impressions.csv")
    cxr = read_h5(out / "cxr.h5")
    # 7 images, the truncated g4 and the zero-byte e3 dropped: h5 rows == CSV rows == decoded
    assert [Path(p).stem for p in paths] == ["c2", "d2", "a1", "b1", "f3"]   # sorted: s51.. before s53..
    assert cxr.shape == (5, 320, 320) and cxr.dtype == np.uint8 and len(imps) == 5
    assert imps["filename"].tolist() == [Path(p).parent.name + ".txt" for p in paths]
    assert imps["impression"].tolist() == ["Small left effusion."] * 2 + ["No acute process."] * 2 + ["Cardiomegaly."]
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(cxr[row], dp.load_cxr(path))
    failed = pd.read_csv(out / "failed_images.csv")
    assert [Path(p).stem for p in failed["Path"]] == ["g4", "e3"]
    assert failed["reason"].tolist() == ["truncated JPEG (no end-of-image marker after the scan data)",
                                         "zero-byte file"]
    assert not list(out.glob("*.partial*")) and not list(out.glob("*.tmp"))


def test_keep_failed_float32_gives_original_row_parity(mimic, tmp_path):
    out = tmp_path / "out"
    assert cli.main(mimic_args(mimic, out, "--keep_failed", "--dtype", "float32")) == 0
    paths = pd.read_csv(out / "cxr_paths.csv")["Path"].tolist()
    cxr = read_h5(out / "cxr.h5")
    assert cxr.shape == (7, 320, 320) and cxr.dtype == np.float32
    assert len(pd.read_csv(out / "mimic_impressions.csv")) == 7
    zero_rows = [Path(p).stem for p, img in zip(paths, cxr) if not img.any()]
    assert zero_rows == ["g4", "e3"]   # sorted order: p11/.../g4 before p19/.../e3
    assert len(pd.read_csv(out / "failed_images.csv")) == 2


def test_views_filter_and_mimic_rule(mimic, tmp_path):
    out = tmp_path / "out"
    assert cli.main(mimic_args(mimic, out, "--views", "PA,AP", "--impression_rule", "mimic")) == 0
    paths = pd.read_csv(out / "cxr_paths.csv")["Path"].tolist()
    assert [Path(p).stem for p in paths] == ["c2", "a1"]   # e3 (PA) and g4 (AP) failed to decode
    assert read_h5(out / "cxr.h5").shape[0] == 2
    assert pd.read_csv(out / "mimic_impressions.csv")["impression"].tolist() == ["Small left effusion.",
                                                                                  "No acute process."]


def test_missing_report_is_an_error_or_skipped(mimic, tmp_path, capsys):
    (mimic / "mimic-cxr/2.0.0/files/p10/p10000032/s51000002.txt").unlink()
    out = tmp_path / "out"
    assert cli.main(mimic_args(mimic, out)) == 2
    error = capsys.readouterr().err     # the user error is one line on stderr
    assert "p10/p10000032/s51000002.txt" in error and "--missing_report skip" in error
    assert not out.exists() or not any(out.iterdir())
    assert cli.main(mimic_args(mimic, out, "--missing_report", "skip")) == 0
    assert [Path(p).stem for p in pd.read_csv(out / "cxr_paths.csv")["Path"]] == ["a1", "b1", "f3"]
    failed = pd.read_csv(out / "failed_images.csv")
    assert failed["reason"].str.startswith("missing report").sum() == 2


def test_kill_9_then_resume_is_identical(tmp_path):
    root = tmp_path / "files"
    for i in range(40):
        jpg(root / f"p10/p100000{i:02d}/s5000{i:04d}/img.jpg", 1400, 1150, seed=i)
        rep = tmp_path / f"reports/p10/p100000{i:02d}/s5000{i:04d}.txt"
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(mimic_report(f"Finding {i}."))

    def args(out: Path) -> list[str]:
        return ["--chest_x_ray_path", str(root), "--radiology_reports_path", str(tmp_path / "reports"),
                "--cxr_out_path", str(out / "cxr.h5"), "--csv_out_path", str(out / "cxr_paths.csv"),
                "--mimic_impressions_path", str(out / "imp.csv"), "--num_workers", "1", "--chunk_images", "4"]

    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli.main(args(ref)) == 0
    journal = run / "cxr.h5.partial.json"
    kill_when_done(args(run), journal, 8)
    done = json.loads(journal.read_text())["n_done"]
    assert 8 <= done < 40 and not (run / "cxr.h5").exists()

    assert cli.main(args(run)) == 2                 # refuses to overwrite work without --resume
    assert cli.main([*args(run), "--resume"]) == 0
    assert (run / "cxr.h5").read_bytes() == (ref / "cxr.h5").read_bytes()
    for name in ("cxr_paths.csv", "imp.csv", "failed_images.csv"):
        assert (run / name).read_text() == (ref / name).read_text()
    assert not journal.exists()


# ------------------------------------------------------------------------------------------
# Test sets
# ------------------------------------------------------------------------------------------


def test_chexpert_test_aligned_by_study(tmp_path):
    root = tmp_path / "chexpert-test"
    studies = [f"patient{n}" for n in (64741, 64742, 64743, 64744)]
    for k, patient in enumerate(studies):
        if patient != "patient64743":          # no image for this groundtruth row
            jpg(root / "test" / patient / "study1" / "view1_frontal.jpg", 90, 110, seed=k)
        jpg(root / "test" / patient / "study1" / "view2_lateral.jpg", 110, 90, seed=10 + k)
    jpg(root / "test" / "patient64799" / "study1" / "view1_frontal.jpg", 90, 110)   # not in groundtruth
    (root / "test" / "patient64744" / "study1" / "view1_frontal.jpg").write_bytes(b"")  # fails to decode
    gt = pd.DataFrame({"Study": [f"CheXpert-v1.0/test/{p}/study1" for p in studies]})
    for j, label in enumerate(cli.CHEXPERT_LABELS):
        gt[label] = [(j + i) % 2 for i in range(len(studies))]
    gt.to_csv(root / "groundtruth.csv", index=False)

    out = tmp_path / "out"
    assert cli.main(["--dataset_type", "chexpert-test", "--chest_x_ray_path", str(root),
                     "--cxr_out_path", str(out / "chexpert_test.h5"), "--num_workers", "1"]) == 0
    labels = pd.read_csv(out / "chexpert_test_labels.csv")
    assert labels["Study"].tolist() == ["CheXpert-v1.0/test/patient64741/study1",
                                        "CheXpert-v1.0/test/patient64742/study1"]
    assert labels.columns.tolist() == ["Path", "Study", *cli.CHEXPERT_LABELS]
    assert labels["Cardiomegaly"].tolist() == [0, 1]   # j=2: (2+0)%2, (2+1)%2
    cxr = read_h5(out / "chexpert_test.h5")
    assert cxr.shape[0] == 2
    for row, path in enumerate(labels["Path"]):
        assert Path(path).name == "view1_frontal.jpg"
        np.testing.assert_array_equal(cxr[row], dp.load_cxr(path))
    failed = pd.read_csv(out / "failed_images.csv")
    assert sorted(failed["reason"]) == ["no view1_frontal.jpg for this study", "study not in groundtruth.csv",
                                        "zero-byte file"]


def test_chexpert_valid_frontal_rows_in_csv_order(tmp_path):
    root = tmp_path / "chexpert"
    rows = []
    for k, (patient, view, side) in enumerate([("patient64541", "view1_frontal", "Frontal"),
                                               ("patient64541", "view2_lateral", "Lateral"),
                                               ("patient64543", "view1_frontal", "Frontal"),
                                               ("patient64542", "view1_frontal", "Frontal")]):
        rel = f"CheXpert-v1.0-small/valid/{patient}/study1/{view}.jpg"
        jpg(root / rel, 100, 120, seed=k)
        rows.append({"Path": rel, "Sex": "Male", "Age": 50, "Frontal/Lateral": side,
                     "AP/PA": "AP" if side == "Frontal" else "",
                     **{label: float((k + j) % 2) for j, label in enumerate(cli.CHEXPERT_LABELS)}})
    pd.DataFrame(rows).to_csv(root / "CheXpert-v1.0-small" / "valid.csv", index=False)

    out = tmp_path / "out"
    assert cli.main(["--dataset_type", "chexpert-valid", "--chest_x_ray_path", str(root),
                     "--cxr_out_path", str(out / "valid.h5"), "--labels_out_path", str(out / "valid_labels.csv"),
                     "--num_workers", "1"]) == 0
    labels = pd.read_csv(out / "valid_labels.csv")
    assert labels["Path"].tolist() == ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
                                       "CheXpert-v1.0-small/valid/patient64543/study1/view1_frontal.jpg",
                                       "CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg"]
    assert labels.columns.tolist() == ["Path", *cli.CHEXPERT_LABELS]
    assert labels["No Finding"].tolist() == [0.0, 0.0, 1.0]    # k = 0, 2, 3
    cxr = read_h5(out / "valid.h5")
    for row, rel in enumerate(labels["Path"]):
        np.testing.assert_array_equal(cxr[row], dp.load_cxr(str(root / rel)))


def test_padchest_filters_labels_and_16bit(tmp_path):
    root = tmp_path / "padchest"
    cases = [  # ImageID, ImageDir, Projection, MethodLabel, Labels, on disk
        ("a.png", 0, "PA", "Physician", "['pleural effusion', ' Cardiomegaly ']", "nested"),
        ("b.png", 0, "L", "Physician", "['normal']", "nested"),
        ("c.png", 1, "AP_horizontal", "Physician", "[]", "flat"),
        ("d.png", 1, "PA", "RNN_model", "['nodule']", "nested"),
        ("e.png", 1, "AP", "Physician", float("nan"), "missing"),
        ("f.png", 0, "AP", "Physician", "['normal']", "nested"),
    ]
    for k, (image_id, image_dir, *_, where) in enumerate(cases):
        img = (np.tile(np.linspace(0, 4095, 80), (100, 1)) * (0.5 + 0.1 * k)).clip(0, 4095).astype(np.uint16)
        folder = root / str(image_dir) if where == "nested" else root
        if where != "missing":
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / image_id), img)
    pd.DataFrame([{"Unnamed: 0": i, "ImageID": c[0], "ImageDir": c[1], "Projection": c[2], "MethodLabel": c[3],
                   "Labels": c[4], "BitsStored_DICOM": 12} for i, c in enumerate(cases)]
                 ).to_csv(root / cli.PADCHEST_CSV, index=False)

    out = tmp_path / "out"
    assert cli.main(["--dataset_type", "padchest", "--chest_x_ray_path", str(root),
                     "--cxr_out_path", str(out / "padchest.h5"), "--num_workers", "1",
                     "--failed_out_path", str(out / "padchest_failed.csv")]) == 0
    labels = pd.read_csv(out / "padchest_labels.csv")
    assert labels["ImageID"].tolist() == ["a.png", "c.png", "f.png"]   # L, RNN_model, missing file dropped
    assert labels.columns.tolist() == ["Path", "ImageID", "cardiomegaly", "normal", "pleural effusion"]
    assert labels[["cardiomegaly", "normal", "pleural effusion"]].values.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert Path(labels["Path"][1]) == root / "c.png"
    cxr = read_h5(out / "padchest.h5")
    assert cxr.shape[0] == 3
    np.testing.assert_array_equal(cxr[0], dp.load_cxr(str(root / "0" / "a.png"), bits_stored=12))
    assert 120 <= cxr[0].max() <= 132      # 2047 of 4095 -> about 127, not OpenCV's high byte (7)
    assert pd.read_csv(out / "padchest_failed.csv")["reason"].tolist() == ["file not found"]


# ------------------------------------------------------------------------------------------
# The phantom roots (phantom/): every dataset type on the real layouts and edge cases
# ------------------------------------------------------------------------------------------


# phantom_root: the session's phantom root (conftest.py).


def caption_of(out: Path, report_rel: str) -> list:
    """Captions written for every image of the study whose report is ``report_rel``."""
    imps = pd.read_csv(out / "mimic_impressions.csv", keep_default_na=False)
    return imps.loc[imps["filename"] == Path(report_rel).name, "impression"].tolist()


def test_phantom_mimic(phantom_root, tmp_path):
    root, manifest = phantom_root
    out = tmp_path / "out"
    assert cli.main(mimic_args(root, out, "--num_workers", "2")) == 0
    broken = set(manifest["truncated_jpg"]) | set(manifest["zero_byte_jpg"])
    assert len(broken) == 4
    paths = pd.read_csv(out / "cxr_paths.csv")["Path"].tolist()
    n = manifest["counts"]["mimic_images"] - len(broken)
    # h5 rows == CSV rows == images that decoded, in sorted order
    assert read_h5(out / "cxr.h5").shape == (n, 320, 320)
    assert len(paths) == len(pd.read_csv(out / "mimic_impressions.csv")) == n
    assert paths == sorted(paths, key=lambda p: Path(p).parts)
    failed = pd.read_csv(out / "failed_images.csv")
    assert {Path(p).relative_to(root).as_posix() for p in failed["Path"]} == broken
    assert set(failed["reason"]) == {"zero-byte file", "truncated JPEG (no end-of-image marker after the scan data)"}

    for rel in manifest["no_impression"]:
        assert set(caption_of(out, rel)) == {"NO IMPRESSION"}
    for rel in manifest["notification_before_impression"]:
        assert set(caption_of(out, rel)) == {""}                 # the original's empty caption
    for rel in manifest["two_impressions"]:
        text = (root / rel).read_text()
        assert "RECOMMENDATION" not in text and "NOTIFICATION" not in text
        assert set(caption_of(out, rel)) == {" ".join(text.split("IMPRESSION:")[-1].split())}   # the last one


def test_phantom_mimic_views_and_official_rule(phantom_root, tmp_path):
    root, manifest = phantom_root
    out = tmp_path / "out"
    assert cli.main(mimic_args(root, out, "--views", "PA,AP", "--impression_rule", "mimic")) == 0
    meta = pd.read_csv(root / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    frontal = set(meta.loc[meta["ViewPosition"].isin(["PA", "AP"]), "dicom_id"])
    broken = {Path(p).stem for p in manifest["truncated_jpg"] + manifest["zero_byte_jpg"]}
    paths = pd.read_csv(out / "cxr_paths.csv")["Path"].tolist()
    assert {Path(p).stem for p in paths} == frontal - broken
    assert read_h5(out / "cxr.h5").shape[0] == len(paths)
    for rel in manifest["no_impression"]:            # the official parser falls back to FINDINGS
        text = (root / rel).read_text()
        assert set(caption_of(out, rel)) <= {" ".join(text.split("FINDINGS:")[-1].split())}
    for rel in manifest["notification_before_impression"]:
        text = (root / rel).read_text()
        assert set(caption_of(out, rel)) <= {" ".join(text.split("IMPRESSION:")[-1].split())}


def test_phantom_kill_9_then_resume_is_identical(phantom_root, tmp_path):
    root, _ = phantom_root
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli.main(mimic_args(root, ref)) == 0
    args = mimic_args(root, run, "--chunk_images", "3")
    kill_when_done(args, run / "cxr.h5.partial.json", 3)
    assert not (run / "cxr.h5").exists()
    assert cli.main([*args, "--resume"]) == 0
    assert (run / "cxr.h5").read_bytes() == (ref / "cxr.h5").read_bytes()
    for name in ("cxr_paths.csv", "mimic_impressions.csv", "failed_images.csv"):
        assert (run / name).read_text() == (ref / name).read_text()


def test_phantom_chexpert_test_and_valid(phantom_root, tmp_path):
    root, manifest = phantom_root
    out = tmp_path / "out"
    assert cli.main(["--dataset_type", "chexpert-test", "--chest_x_ray_path", str(root / "chexpert-test"),
                     "--cxr_out_path", str(out / "test.h5"), "--num_workers", "1"]) == 0
    gt = pd.read_csv(root / "chexpert-test" / "groundtruth.csv")
    labels = pd.read_csv(out / "test_labels.csv")
    assert len(labels) == read_h5(out / "test.h5").shape[0] == manifest["counts"]["chexpert_test_studies"]
    pd.testing.assert_frame_equal(labels.drop(columns="Path"), gt)      # same rows, same order
    assert [Path(p).parent.parent.name for p in labels["Path"]] == [s.split("/")[-2] for s in gt["Study"]]

    assert cli.main(["--dataset_type", "chexpert-valid", "--chest_x_ray_path", str(root / "chexpert"),
                     "--cxr_out_path", str(out / "valid.h5"), "--num_workers", "1"]) == 0
    valid = pd.read_csv(root / "chexpert" / "CheXpert-v1.0-small" / "valid.csv")
    frontal = valid[valid["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    labels = pd.read_csv(out / "valid_labels.csv")
    assert len(labels) == read_h5(out / "valid.h5").shape[0] == manifest["counts"]["chexpert_valid_studies"]
    pd.testing.assert_frame_equal(labels, frontal[["Path", *cli.CHEXPERT_LABELS]])


def test_phantom_padchest(phantom_root, tmp_path):
    root, manifest = phantom_root
    csv = pd.read_csv(root / "padchest" / cli.PADCHEST_CSV, low_memory=False)
    out = tmp_path / "out"
    everything = ",".join(sorted(csv["Projection"].astype(str).unique()))
    assert cli.main(["--dataset_type", "padchest", "--chest_x_ray_path", str(root / "padchest"),
                     "--cxr_out_path", str(out / "all.h5"), "--projections", everything, "--num_workers", "1"]) == 0
    broken = set(manifest["padchest_missing"]) | set(manifest["padchest_truncated"])
    failed = pd.read_csv(out / "failed_images.csv")
    assert {Path(p).relative_to(root).as_posix() for p in failed["Path"]} == broken
    assert sorted(failed["reason"]) == ["file not found", "truncated PNG (no IEND chunk)"]
    labels = pd.read_csv(out / "all_labels.csv")
    assert len(labels) == read_h5(out / "all.h5").shape[0] == len(csv) - 2
    assert read_h5(out / "all.h5").max() > 200          # 12-bit PNGs scaled to the full 8-bit range

    assert cli.main(["--dataset_type", "padchest", "--chest_x_ray_path", str(root / "padchest"),
                     "--cxr_out_path", str(out / "frontal.h5"), "--num_workers", "1"]) == 0
    frontal = pd.read_csv(out / "frontal_labels.csv")
    kept = csv[csv["Projection"].isin(["PA", "AP", "AP_horizontal"])]
    broken_ids = {Path(p).name for p in broken}
    assert frontal["ImageID"].tolist() == [i for i in kept["ImageID"] if i not in broken_ids]
    expected = kept.loc[~kept["ImageID"].isin(broken_ids), "Labels"].map(dp.parse_padchest_labels)
    got = [{c for c in frontal.columns[2:] if row[c] == 1} for _, row in frontal.iterrows()]
    assert got == [set(labels) for labels in expected]
