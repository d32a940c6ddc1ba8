"""predict.py: scoring image files with small random CLIPs, on tiny PNG/JPG files written here."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

import clip
import data_process
import errors
import image_reader
import predict
import zero_shot as zs
from conftest import save_clip, torchrun
from cxr_data import DeviceTransform

PAIR = ("{}", "no {}")
PRECISIONS = ("fp32", "bf16")
LABELS = ["Edema", "Pleural Effusion", "rib fracture"]


@pytest.fixture
def models(tmp_path) -> list[str]:
    folder = tmp_path / "models"
    folder.mkdir()
    return [save_clip(folder / f"m{seed}.pt", seed) for seed in (0, 1)]


def write_images(folder: Path) -> list[str]:
    """Grey images of several sizes and kinds: 8-bit PNG, 16-bit PNG (12-bit values), grey and colour JPG."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    images = {"a.png": rng.integers(0, 256, (61, 47), dtype=np.uint8),
              "b.png": rng.integers(0, 4096, (40, 52), dtype=np.uint16),
              "c.jpg": rng.integers(0, 256, (38, 70), dtype=np.uint8),
              "d.jpg": rng.integers(0, 256, (50, 50, 3), dtype=np.uint8),
              "e.png": rng.integers(0, 256, (33, 33), dtype=np.uint8)}
    for name, pixels in images.items():
        cv2.imwrite(str(folder / name), pixels)
    return [str(folder / name) for name in images]


def one_error_line(stderr: str) -> str:
    """The user error: one line, the last on stderr (a progress bar may come before it), no traceback."""
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and stderr.rstrip().splitlines()[-1] == lines[0] and "Traceback" not in stderr, stderr
    return lines[0]


def cli_status(argv: list[str]) -> int:
    """predict.py's exit status for ``argv``, as the script returns it (argparse's errors exit)."""
    try:
        return errors.run_cli(predict.main, argv)
    except SystemExit as done:
        return done.code


def run(argv: list[str]) -> pd.DataFrame:
    return predict.main(["--num_workers", "0", "--device", "cpu", *argv])


def test_predicting_image_files_gives_the_probabilities_of_the_h5_that_preprocessing_makes(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    h5 = tmp_path / "scans.h5"
    assert data_process.img_to_hdf5(paths, str(h5), num_workers=1) == []
    _, expected = zs.ensemble_models(models, h5, LABELS, PAIR, device="cpu", batch_size=4)
    run(["--images", *paths, "--model_paths", *models, "--labels", *LABELS, "--batch_size", "2",
         "--out", str(tmp_path / "p.csv")])
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["path"].tolist() == paths
    assert np.abs(got[LABELS].to_numpy() - expected).max() <= 1e-5
    assert expected.std() > 1e-3   # the images really differ


def test_a_folder_mixing_good_and_bad_files_scores_the_good_ones_and_lists_the_bad_ones(tmp_path, models) -> None:
    folder = tmp_path / "scans"
    good = write_images(folder / "sub")[:2]
    (folder / "empty.png").write_bytes(b"")
    jpg = (folder / "sub" / "c.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpg[:len(jpg) // 2])
    (folder / "notes.png").write_text("not an image")
    (folder / "README.txt").write_text("left out: not an image suffix")
    (folder / "sub" / "c.jpg").unlink()
    (folder / "sub" / "d.jpg").unlink()
    (folder / "sub" / "e.png").unlink()
    out = tmp_path / "p.csv"
    predict.main(["--images", str(folder), "--model_paths", *models, "--out", str(out), "--num_workers", "2",
                  "--device", "cpu"])
    assert pd.read_csv(out)["path"].tolist() == good
    failed = pd.read_csv(tmp_path / "p.failed.csv").set_index("path")["reason"]
    assert failed.to_dict() == {str(folder / "empty.png"): "zero-byte file",
                                str(folder / "notes.png"): "not decodable (corrupt or unsupported format)",
                                str(folder / "truncated.jpg"): "truncated JPEG (no end-of-image marker after the "
                                                               "scan data)"}


def test_nothing_readable_exits_non_zero_with_one_line(tmp_path, models, capsys) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("text")
    out = tmp_path / "p.csv"
    status = cli_status(["--images", str(tmp_path / "empty.png"), str(tmp_path / "notes.png"),
                                           "--model_paths", *models, "--out", str(out), "--num_workers", "0"])
    line = one_error_line(capsys.readouterr().err)
    assert status == 2 and "no image could be scored: all 2 inputs failed" in line and "zero-byte file" in line
    assert not out.exists() and len(pd.read_csv(tmp_path / "p.failed.csv")) == 2


@pytest.mark.parametrize("argv, message", [
    (["--images", "no/such/folder"], "--images no/such/folder: no such file or folder"),
    (["--images", "no/such/*.png"], "the pattern matches no file"),
    (["--images", "{tmp}/list.csv"], "the CSV has no 'path' or 'Path' column"),
    (["--images", "{tmp}/a.png", "--prompts", "{tmp}/bad.json"], "not valid JSON"),
    (["--images", "{tmp}/a.png", "--pair_template", "{}", "no"], "a template needs '{}'"),
    (["--images", "{tmp}/a.png", "--thresholds", "{tmp}/list.csv"], "expected columns 'label' and 'threshold_mcc'"),
])
def test_a_user_error_is_one_line_and_exit_status_2(tmp_path, models, capsys, argv, message) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "list.csv").write_text("file\na.png\n")
    (tmp_path / "bad.json").write_text("{'Edema': 1}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    status = cli_status([*argv, "--model_paths", *models, "--out", str(tmp_path / "p.csv")])
    assert status == 2 and message in one_error_line(capsys.readouterr().err)


def test_rows_follow_the_input_order_and_a_duplicate_path_is_scored_once(tmp_path, models) -> None:
    a, b, c = write_images(tmp_path / "scans")[:3]
    table = run(["--images", c, a, str(Path(c).parent) + "//c.jpg", b, a, "--model_paths", *models,
                 "--out", str(tmp_path / "p.csv")])
    assert table["path"].tolist() == [c, a, b]
    alone = run(["--images", a, "--model_paths", *models, "--out", str(tmp_path / "a.csv")])
    written = pd.read_csv(tmp_path / "p.csv")
    assert written["path"].tolist() == [c, a, b]
    np.testing.assert_allclose(written.iloc[1, 1:].to_numpy(float), alone.iloc[0, 1:-1].to_numpy(float), atol=1e-7)


def test_txt_and_csv_lists_name_the_same_images_as_the_files(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    (tmp_path / "list.txt").write_text("# my scans\n" + "\n".join(paths[:3]) + "\n\n")
    pd.DataFrame({"Path": paths[3:], "other": 1}).to_csv(tmp_path / "list.csv", index=False)
    direct = run(["--images", *paths, "--model_paths", *models, "--out", str(tmp_path / "direct.csv")])
    listed = run(["--images", str(tmp_path / "list.txt"), str(tmp_path / "list.csv"), "--model_paths", *models,
                  "--out", str(tmp_path / "listed.csv")])
    pd.testing.assert_frame_equal(listed, direct)
    assert (tmp_path / "listed.csv").read_text() == (tmp_path / "direct.csv").read_text()


def test_thresholds_add_positive_columns_where_p_reaches_the_threshold(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    probabilities = run(["--images", *paths, "--model_paths", *models, "--labels", "Edema", "Pleural Effusion",
                         "--out", str(tmp_path / "plain.csv")])
    edema = float(np.sort(probabilities["Edema"])[2])     # 3 of 5 images at or above it
    pd.DataFrame({"label": ["Edema", "Pleural Effusion"], "threshold_mcc": [0.0, 0.0],
                  "threshold_f1": [edema, np.nan], "threshold_youden": [1.0, 1.0]}).to_csv(
        tmp_path / "thresholds.csv", index=False)
    run(["--images", *paths, "--model_paths", *models, "--labels", "Edema", "Pleural Effusion",
         "--thresholds", str(tmp_path / "thresholds.csv"), "--threshold_metric", "f1",
         "--out", str(tmp_path / "p.csv")])
    written = pd.read_csv(tmp_path / "p.csv")
    assert list(written.columns) == ["path", "Edema", "Pleural Effusion", "Edema_positive", "Pleural Effusion_positive"]
    assert written["Edema_positive"].tolist() == (probabilities["Edema"] >= edema).astype(int).tolist()
    assert written["Edema_positive"].sum() == 3
    assert written["Pleural Effusion_positive"].isna().all()   # no threshold chosen: left empty


def test_jsonl_holds_the_rows_of_the_csv(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    run(["--images", *paths, "--model_paths", *models, "--out", str(tmp_path / "p.csv")])
    run(["--images", *paths, "--model_paths", *models, "--out", str(tmp_path / "p.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    table = pd.read_csv(tmp_path / "p.csv")
    assert [row["path"] for row in rows] == table["path"].tolist()
    assert list(rows[0]) == list(table.columns)
    np.testing.assert_allclose(pd.DataFrame(rows).iloc[:, 1:].to_numpy(float), table.iloc[:, 1:].to_numpy(float),
                               rtol=0, atol=1e-7)


def test_a_prompts_file_scores_each_side_as_the_normalised_mean_of_its_prompts(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    prompts = {"rib fracture": {"positive": ["rib fracture", "fractured rib", "acute rib fracture"],
                                "negative": ["no rib fracture", "intact ribs"]}}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    table = run(["--images", *paths, "--model_paths", *models, "--prompts", str(tmp_path / "prompts.json"),
                 "--labels", "rib fracture", "Edema", "--out", str(tmp_path / "p.csv")])
    pixels = torch.from_numpy(np.stack([data_process.load_cxr(p) for p in paths])).float()[:, None]
    expected = []
    for path in models:
        model = zs.load_clip(path, pretrained=None, device="cpu")
        with torch.no_grad():
            image = F.normalize(model.encode_image(DeviceTransform(32)(pixels)), dim=-1)

            def side(texts):
                return F.normalize(F.normalize(model.encode_text(clip.tokenize(texts)), dim=-1).mean(0), dim=0)
            rib = image @ side(prompts["rib fracture"]["positive"]) - image @ side(prompts["rib fracture"]["negative"])
            edema = image @ side(["Edema"]) - image @ side(["no Edema"])
        expected.append(torch.sigmoid(torch.stack([rib, edema], dim=1)).numpy())
    assert np.abs(table[["rib fracture", "Edema"]].to_numpy() - np.mean(expected, axis=0)).max() <= 1e-5
    assert table["error"].isna().all()


def test_predict_images_equals_predict_on_the_same_pixels_saved_as_png(tmp_path, models) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (45, 60), dtype=np.uint8), rng.integers(0, 4096, (64, 36), dtype=np.uint16),
              rng.integers(0, 256, (30, 30), dtype=np.uint8)]
    paths = []
    for i, array in enumerate(arrays):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], array)
    predictor = predict.Predictor(models, labels=LABELS, device="cpu", num_workers=0, progress=False)
    from_files = predictor.predict(paths)
    for images in (arrays, [Image.fromarray(array) for array in arrays]):   # PIL: modes 'L' and 'I;16'
        in_memory = predictor.predict_images(images)
        np.testing.assert_allclose(in_memory.to_numpy(), from_files[LABELS].to_numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="2-D uint8 or uint16"):
        predictor.predict_images([np.zeros((8, 8), np.float32)])


def write_dicom(path: Path, pixels: np.ndarray) -> str:
    """An uncompressed 12-bit MONOCHROME2 DX file with a display window narrower than its values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.2"
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1800, 1200
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


@pytest.mark.parametrize("dicom_rule", ["mimic", "window"])
def test_a_dicom_is_scored_as_its_grey_image_under_the_chosen_dicom_rule(tmp_path, models, dicom_rule) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    pixels = np.random.default_rng(2).integers(0, 4096, (48, 40))
    dcm = write_dicom(folder / "a.dcm", pixels)
    bare = write_dicom(folder / "b", pixels)         # no extension: found by its DICM preamble
    table = run(["--images", str(folder), "--model_paths", *models, "--dicom_rule", dicom_rule,
                 "--out", str(tmp_path / "p.csv")])
    assert table["path"].tolist() == [dcm, bare] and table["error"].isna().all()
    grey = image_reader.read_image(dcm, dicom_rule)
    predictor = predict.Predictor(models, device="cpu", num_workers=0, progress=False)
    expected = predictor.predict_images([grey])
    np.testing.assert_allclose(table.iloc[:, 1:-1].to_numpy(float), np.repeat(expected.to_numpy(), 2, axis=0),
                               rtol=0, atol=1e-6)
    other = image_reader.read_image(dcm, "window" if dicom_rule == "mimic" else "mimic")
    assert not np.array_equal(grey, other)       # the rules really differ on this file


def test_bf16_autocast_stays_within_1e_2_of_fp32(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    fp32, bf16 = (predict.Predictor(models, labels=LABELS, device="cpu", num_workers=0, precision=precision,
                                    progress=False).predict(paths)[LABELS].to_numpy() for precision in PRECISIONS)
    assert np.abs(bf16 - fp32).max() <= 1e-2
    assert not np.array_equal(bf16, fp32)   # autocast really ran in bf16


def test_two_gloo_ranks_write_the_same_files_as_one_process(tmp_path, models) -> None:
    paths = write_images(tmp_path / "scans")
    (tmp_path / "scans" / "empty.png").write_bytes(b"")
    images = [*paths[:3], str(tmp_path / "scans" / "empty.png"), *paths[3:]]
    argv = ["--images", *images, "--model_paths", *models, "--batch_size", "2", "--num_workers", "0",
            "--device", "cpu"]
    predict.main([*argv, "--out", str(tmp_path / "one.csv")])
    done = torchrun("predict.py", *argv, "--out", str(tmp_path / "two.csv"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()
    assert (tmp_path / "two.failed.csv").read_text() == (tmp_path / "one.failed.csv").read_text()
    assert len(pd.read_csv(tmp_path / "two.csv")) == 5
