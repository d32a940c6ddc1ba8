"""data_process.py: pixel parity with CheXzero's preprocessing, failure handling, HDF5 layout,
both impression rules on the data_formats.md 6.1 report table, PadChest label parsing."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import data_process as dp
from cxr_data import H5_KEY

# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def original_chexzero(path: str, desired_size: int = 320) -> np.ndarray:
    """The original pipeline, step by step: cv2 colour read -> RGB -> PIL -> LANCZOS to the long
    side with int() truncation -> paste centred on a black 'L' canvas."""
    img = Image.fromarray(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
    ratio = float(desired_size) / max(img.size)
    new_size = tuple(int(x * ratio) for x in img.size)
    img = img.resize(new_size, Image.LANCZOS)
    canvas = Image.new("L", (desired_size, desired_size))
    canvas.paste(img, ((desired_size - new_size[0]) // 2, (desired_size - new_size[1]) // 2))
    return np.asarray(canvas)


def cxr_like(w: int, h: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A bright, textured 8-bit image (no black border of its own, so padding is visible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 140 + 60 * np.sin(xx / max(w, 8) * 7) * np.cos(yy / max(h, 8) * 5)
    img = np.clip(base + rng.normal(0, 15, (h, w)), 30, 255).astype(np.uint8)
    if channels == 3:
        img = np.stack([img, np.roll(img, 3, axis=1), 255 - img], axis=-1)
    return img


def write(path: Path, arr: np.ndarray, quality: int = 95) -> str:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), arr, params)
    return str(path)


# (width, height) -> (resized width, resized height, x offset, y offset), computed by hand:
# ratio = 320 / long side, short side = int(side * ratio), offset = (320 - size) // 2.
GEOMETRY = {
    (2544, 3056): (266, 320, 27, 0),   # 2544 * 320/3056 = 266.38
    (3056, 2544): (320, 266, 0, 27),
    (300, 390): (246, 320, 37, 0),     # 300 * 320/390 = 246.15
    (2539, 2705): (300, 320, 10, 0),   # 2539 * 320/2705 = 300.36
    (100, 80): (320, 256, 0, 32),      # upsampling: 80 * 3.2 = 256
    (320, 320): (320, 320, 0, 0),
    (400, 581): (220, 319, 50, 0),     # 581 * (320/581) = 319.99999999999994 -> 319, as in the original
}


@pytest.mark.parametrize("size", list(GEOMETRY))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_preprocess_matches_original_pixel_for_pixel(tmp_path, size, suffix):
    w, h = size
    path = write(tmp_path / f"img{suffix}", cxr_like(w, h, seed=w + h))
    ours = dp.load_cxr(path)
    assert ours.dtype == np.uint8 and ours.shape == (320, 320)
    np.testing.assert_array_equal(ours, original_chexzero(path))

    new_w, new_h, x0, y0 = GEOMETRY[size]
    assert dp.scaled_size((w, h)) == (new_w, new_h)
    inside = np.zeros((320, 320), bool)
    inside[y0:y0 + new_h, x0:x0 + new_w] = True
    assert (ours[~inside] == 0).all()          # zero padding exactly where expected
    assert (ours[inside] > 0).mean() > 0.99    # the image itself is bright


def test_preprocess_api_on_pil_image():
    img = Image.fromarray(cxr_like(2544, 3056))
    out = dp.preprocess(img)
    assert out.mode == "L" and out.size == (320, 320)
    arr = np.asarray(out)
    assert (arr[:, :27] == 0).all() and (arr[:, 27 + 266:] == 0).all() and (arr[:, 27:293] > 0).all()
    assert dp.preprocess(img, desired_size=224).size == (224, 224)


def test_colour_jpeg_takes_the_original_rgb_path(tmp_path):
    path = write(tmp_path / "rgb.jpg", cxr_like(500, 420, channels=3))
    np.testing.assert_array_equal(dp.load_cxr(path), original_chexzero(path))


def test_16bit_png_scaled_by_real_bit_depth(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 400).round().astype(np.uint16), (300, 1))  # 12-bit content
    path = write(tmp_path / "padchest.png", ramp)
    assert cv2.imread(path).max() == 15             # the trap: OpenCV's default keeps the high byte
    img = dp.decode_image(Path(path).read_bytes())
    arr = np.asarray(img)
    assert img.mode == "L" and arr.max() == 255 and arr.min() == 0
    assert arr[0, 200] == round(int(ramp[0, 200]) * 255 / 4095)
    # BitsStored wins when the image does not reach its maximum: 2047 in 12 bits is mid-gray
    half = np.full((50, 60), 2047, np.uint16)
    assert dp.to_uint8(half, bits_stored=12).max() == 127
    assert dp.to_uint8(half).max() == 255               # inferred depth: 11 bits
    full = np.array([[0, 65535]], np.uint16)
    assert dp.to_uint8(full, bits_stored=12).tolist() == [[0, 255]]


@pytest.mark.parametrize("kind, reason", [
    ("zero_byte", "zero-byte file"),
    ("truncated_jpg", "truncated JPEG"),
    ("garbage_jpg", "truncated JPEG"),
    ("truncated_png", "truncated PNG"),
    ("missing", "file not found"),
    ("not_an_image", "not decodable"),
])
def test_broken_files_raise_with_a_reason(tmp_path, kind, reason):
    good_jpg = (tmp_path / "ok.jpg")
    write(good_jpg, cxr_like(300, 200))
    good_png = tmp_path / "ok.png"
    write(good_png, cxr_like(300, 200))
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated_jpg":   # cut mid-scan: OpenCV would still return an image, padded with gray
        data = good_jpg.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert cv2.imread(str(path)) is not None
    elif kind == "garbage_jpg":     # a JPEG header followed by noise
        path.write_bytes(good_jpg.read_bytes()[:200] + np.random.default_rng(0).bytes(3000))
    elif kind == "truncated_png":
        path = tmp_path / "cut.png"
        data = good_png.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_an_image":
        path.write_bytes(b"this is a text file, not an image\n" * 10)
    with pytest.raises(dp.ImageDecodeError, match=reason):
        dp.load_cxr(str(path))


def test_fast_decode_same_geometry_small_deviation(tmp_path):
    path = write(tmp_path / "big.jpg", cxr_like(2544, 3056, seed=3))
    exact = dp.load_cxr(path).astype(int)
    fast = dp.load_cxr(path, fast_decode=True).astype(int)
    assert ((exact == 0) == (fast == 0)).mean() > 0.999    # same pasted rectangle
    assert (fast[:, :27] == 0).all() and (fast[:, 293:] == 0).all()
    diff = np.abs(exact - fast)
    assert diff.max() <= 12 and diff[:, 27:293].mean() < 2.0
    png = write(tmp_path / "big.png", cxr_like(900, 700))
    np.testing.assert_array_equal(dp.load_cxr(png, fast_decode=True), dp.load_cxr(png))  # JPEG only


# ------------------------------------------------------------------------------------------
# HDF5
# ------------------------------------------------------------------------------------------


@pytest.fixture
def image_set(tmp_path):
    """Five good images of assorted shapes with a zero-byte file at index 2."""
    paths = []
    for i, (w, h) in enumerate([(400, 500), (500, 400), (10, 10), (300, 390), (640, 480)]):
        p = tmp_path / f"img{i}.jpg"
        if i == 2:
            p.write_bytes(b"")
        else:
            write(p, cxr_like(w, h, seed=i))
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("workers", [1, 2])
def test_img_to_hdf5_drops_failures_and_keeps_order(tmp_path, image_set, workers):
    out = str(tmp_path / "cxr.h5")
    failures = dp.img_to_hdf5(image_set, out, num_workers=workers, chunk_images=2)
    assert failures == [dp.Failure(2, image_set[2], "zero-byte file")]
    with h5py.File(out, "r") as f:
        d = f[H5_KEY]
        assert d.shape == (4, 320, 320) and d.dtype == np.uint8 and d.chunks == (1, 320, 320)
        for row, src in enumerate([0, 1, 3, 4]):
            np.testing.assert_array_equal(d[row], original_chexzero(image_set[src]))
    assert not os.path.exists(out + ".partial") and not os.path.exists(out + ".partial.json")


def test_keep_failed_gives_original_row_parity_and_float32_same_values(tmp_path, image_set):
    u8, f32 = str(tmp_path / "u8.h5"), str(tmp_path / "f32.h5")
    dp.img_to_hdf5(image_set, u8, num_workers=1, keep_failed=True)
    dp.img_to_hdf5(image_set, f32, num_workers=1, keep_failed=True, dtype="float32")
    with h5py.File(u8, "r") as a, h5py.File(f32, "r") as b:
        assert a[H5_KEY].shape == b[H5_KEY].shape == (5, 320, 320)
        assert b[H5_KEY].dtype == np.float32
        assert (a[H5_KEY][2] == 0).all()
        np.testing.assert_array_equal(a[H5_KEY][:].astype(np.float32), b[H5_KEY][:])
    assert os.path.getsize(f32) > 3.9 * os.path.getsize(u8)


def test_partial_run_needs_resume_and_same_inputs(tmp_path, image_set):
    out = str(tmp_path / "cxr.h5")
    dp.build_h5_partial(image_set, out, num_workers=1)          # completed but not published
    with pytest.raises(dp.ResumeError, match="--resume"):
        dp.build_h5_partial(image_set, out, num_workers=1)
    with pytest.raises(dp.ResumeError, match="different inputs"):
        dp.build_h5_partial(image_set[:3], out, num_workers=1, resume=True)
    progress = json.loads(Path(out + ".partial.json").read_text())
    assert progress["n_done"] == 5 and progress["n_rows"] == 4
    failures = dp.build_h5_partial(image_set, out, num_workers=1, resume=True)  # nothing left to do
    assert [f.index for f in failures] == [2]
    dp.finalize_h5(out)
    with h5py.File(out, "r") as f:
        assert f[H5_KEY].shape[0] == 4


def test_fast_decode_partial_of_another_oversampling_is_not_continued(tmp_path, image_set, monkeypatch):
    out = str(tmp_path / "cxr.h5")
    monkeypatch.setattr(dp, "FAST_DECODE_OVERSAMPLE", 1)        # the fast path as it first was
    dp.build_h5_partial(image_set, out, num_workers=1, fast_decode=True)
    monkeypatch.undo()
    with pytest.raises(dp.ResumeError, match="different inputs"):
        dp.build_h5_partial(image_set, out, num_workers=1, fast_decode=True, resume=True)
    # the exact path's fingerprint does not involve the oversampling
    assert dp._fingerprint(image_set, [None] * 5, 320, "uint8", False, False) == \
        hashlib.sha256(json.dumps(["1", 320, "uint8", False, False]).encode()
                       + "".join(f"{p}\0None\n" for p in image_set).encode()).hexdigest()


def test_resume_from_a_mid_run_journal_is_identical(tmp_path, image_set):
    """Rewind the journal to a chunk boundary, as a kill after that commit would leave it."""
    ref, out = str(tmp_path / "ref.h5"), str(tmp_path / "out.h5")
    dp.img_to_hdf5(image_set, ref, num_workers=1)
    dp.build_h5_partial(image_set, out, num_workers=1, chunk_images=2)
    state = json.loads(Path(out + ".partial.json").read_text())
    state.update(n_done=2, n_rows=2, failed=[])
    Path(out + ".partial.json").write_text(json.dumps(state))
    failures = dp.build_h5_partial(image_set, out, num_workers=1, resume=True, chunk_images=2)
    dp.finalize_h5(out)
    assert [f.index for f in failures] == [2]
    assert Path(out).read_bytes() == Path(ref).read_bytes()


def test_paths_are_sorted_part_by_part(tmp_path):
    for rel in ["p10/p10000032/s5/b.jpg", "p10/p10000032/s5/a.jpg", "p10/p1000003/s1/z.jpg",
                "p11/p11000001/s9/a.jpg", "p10/p10000032/s5/notes.txt", "p10-x/p1/s1/a.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [os.path.relpath(p, tmp_path) for p in dp.get_files(str(tmp_path))]
    assert got == ["p10/p1000003/s1/z.jpg", "p10/p10000032/s5/a.jpg", "p10/p10000032/s5/b.jpg",
                   "p10-x/p1/s1/a.jpg", "p11/p11000001/s9/a.jpg"]
    dp.get_cxr_path_csv(str(tmp_path / "paths.csv"), str(tmp_path))
    assert list(dp.get_cxr_paths_list(str(tmp_path / "paths.csv"))) == dp.get_files(str(tmp_path))


# ------------------------------------------------------------------------------------------
# Reports: data_formats.md 6.1 table, MIMIC whitespace (leading space, " " blank lines)
# ------------------------------------------------------------------------------------------

TITLE = " " * 33 + "FINAL REPORT"


def report(*lines: str) -> str:
    """A MIMIC report: centred title, then every line with one leading space; '' -> ' '."""
    return "\n".join([TITLE] + [" " + line for line in lines]) + "\n"


# name: (report text, study id, expected chexzero caption, expected official mimic choice)
REPORTS = {
    "1_standard": (report(
        "EXAMINATION:  CHEST (PA AND LAT)", "", "INDICATION:  ___ year old man with cough  // eval for pneumonia",
        "", "TECHNIQUE:  Chest PA and lateral", "", "COMPARISON:  ___", "", "FINDINGS:", "",
        "Heart size is normal.  No focal consolidation, effusion or pneumothorax.", "", "IMPRESSION:", "",
        "No acute cardiopulmonary process."),
        None, "No acute cardiopulmonary process.", "No acute cardiopulmonary process."),
    "2_findings_only": (report("FINDINGS:", "", "The lungs are clear.  No pleural effusion."),
                        None, "NO IMPRESSION", "The lungs are clear.  No pleural effusion."),
    "3_last_paragraph": (report(
        "INDICATION:  Cough.", "", "PA and lateral views of the chest were obtained.", "", "The lungs are clear."),
        None, "NO IMPRESSION", "PA and lateral views of the chest were obtained.\n \n The lungs are clear."),
    "4_conclusion": (report("FINDINGS:  Clear lungs.", "", "CONCLUSION:  Normal chest."),
                     None, "NO IMPRESSION", "Normal chest."),
    "5_misspelled": (report("FINDINGS:  Clear lungs.", "", "IMPRESSON:  Normal chest radiograph."),
                     None, "NO IMPRESSION", "Normal chest radiograph."),
    "6_recommendation_notification": (report(
        "IMPRESSION:", "", "Right lower lobe pneumonia.", "", "RECOMMENDATION(S):  Follow-up radiograph in 6 weeks.",
        "", "NOTIFICATION:  The findings were discussed with Dr. ___ by phone."),
        None, "Right lower lobe pneumonia.", "Right lower lobe pneumonia."),
    "7_notification_first": (report(
        "FINDINGS:  Small left effusion.", "", "NOTIFICATION:  Discussed with Dr. ___ at 10:00.", "",
        "IMPRESSION:  Small left pleural effusion."),
        None, "", "Small left pleural effusion."),
    "8_two_impressions": (report(
        "FINDINGS:  Lines and tubes in place.", "", "IMPRESSION:  No pneumothorax.", "", "ADDENDUM:", "",
        "IMPRESSION:  Small apical pneumothorax on the right."),
        None, "Small apical pneumothorax on the right.", "Small apical pneumothorax on the right."),
    "9_addendum_on_top": (report(
        "ADDENDUM:  Comparison with ___ shows the line is unchanged.", "", "_" * 78, TITLE[1:],
        "EXAMINATION:  CHEST (PORTABLE AP)", "", "IMPRESSION:  Right internal jugular line tip in the SVC."),
        None, "Right internal jugular line tip in the SVC.", "Right internal jugular line tip in the SVC."),
    "10_wet_read": (report(
        "WET READ: ___ ___ 10:15 PM  No pneumothorax.", "_" * 78, TITLE[1:], "FINDINGS:  Chest tube removed.",
        "", "IMPRESSION:  No pneumothorax after chest tube removal."),
        None, "No pneumothorax after chest tube removal.", "No pneumothorax after chest tube removal."),
    "11_same_line": (report("FINDINGS:  Normal.", "", "IMPRESSION: No acute process."),
                     None, "No acute process.", "No acute process."),
    "12_empty_impression": (report("IMPRESSION:", "", "FINDINGS:  The heart is normal in size.  Lungs are clear."),
                            None, "FINDINGS: The heart is normal in size. Lungs are clear.",
                            "The heart is normal in size.  Lungs are clear."),
    "13_lower_case": (report("INDICATION:  Fever.", "", "Impression: No acute process."),
                      None, "NO IMPRESSION", "Impression: No acute process."),
    "14_comparison_only": (report("COMPARISON:  ___.  The lungs are clear.  No effusion."),
                           None, "NO IMPRESSION", "___.  The lungs are clear.  No effusion."),
    "15_custom_section": (report("FINDINGS:  Nodule in the right upper lobe.", "",
                                 "RECOMMENDATION(S):  Chest CT is recommended."),
                          "s50913680", "NO IMPRESSION", "Chest CT is recommended."),
    "15_custom_indices": (report("FINDINGS:  Clear.", "", "IMPRESSION:  Normal."), "s58235663", "Normal.", ""),
    "glued_impression": (report("FINDINGS:  Clear lungs.", "", "IMPRESSION:No acute process."),
                         None, "NO IMPRESSION", "Clear lungs.\n \n IMPRESSION:No acute process."),
}


@pytest.mark.parametrize("name", list(REPORTS))
def test_chexzero_rule(name):
    text, _, expected, _ = REPORTS[name]
    assert dp.chexzero_impression(text) == expected


@pytest.mark.parametrize("name", list(REPORTS))
def test_official_mimic_rule(name):
    text, study, _, expected = REPORTS[name]
    assert dp.mimic_impression(text, study) == expected
    assert dp.extract_impression(text, "mimic", study) == " ".join(expected.split())


def test_chexzero_end_marker_quirks():
    # elif priority: RECOMMENDATION(S): wins over an earlier RECOMMENDATION:
    assert dp.chexzero_impression("IMPRESSION: a b RECOMMENDATION: c RECOMMENDATION(S): d") == "a b RECOMMENDATION: c"
    # the earlier of the recommendation and notification markers ends the caption
    assert dp.chexzero_impression("IMPRESSION: a NOTIFICATIONS: b RECOMMENDATIONS: c") == "a"
    # a marker at token 0 counts as absent
    assert dp.chexzero_impression("RECOMMENDATION: follow up. IMPRESSION: mass.") == "mass."
    assert dp.chexzero_impression("") == "NO IMPRESSION"


def test_official_sections_and_synonyms():
    names = [n for n, _ in dp.mimic_sections(report(
        "EXAM:  x", "", "CLINICAL HISTORY:  y", "", "CHEST, PA AND LATERAL:  z", "", "FINDINGS/IMPRESSION:  w"))]
    assert names == ["preamble", "examination", "history", "findings", "impression"]
    assert dp.mimic_sections("no headers at all") == [("full report", "no headers at all")]
    assert dp.mimic_impression("no headers at all") == ""


def write_reports(root: Path, cases: dict[str, str]) -> list[str]:
    """One study per case under a MIMIC tree; returns one fake image path per study."""
    images = []
    for i, (study, text) in enumerate(cases.items()):
        (root / "reports" / "p10" / f"p1000000{i}").mkdir(parents=True, exist_ok=True)
        (root / "reports" / "p10" / f"p1000000{i}" / f"{study}.txt").write_text(text)
        images.append(str(root / "files" / "p10" / f"p1000000{i}" / study / "0a1b.jpg"))
    return images


@pytest.mark.parametrize("slash", ["", "/"])
def test_write_report_csv_one_row_per_image(tmp_path, slash):
    images = write_reports(tmp_path, {"s50000001": REPORTS["1_standard"][0],
                                      "s50000002": REPORTS["7_notification_first"][0]})
    images.insert(1, images[0].replace("0a1b.jpg", "ffff.jpg"))  # a second image of the first study
    out = tmp_path / "imp.csv"
    dp.write_report_csv(images, str(tmp_path / "reports") + slash, str(out))
    df = pd.read_csv(out)
    assert list(df.columns) == ["filename", "impression"]
    assert df["filename"].tolist() == ["s50000001.txt", "s50000001.txt", "s50000002.txt"]
    assert df["impression"].tolist()[:2] == ["No acute cardiopulmonary process."] * 2
    assert pd.isna(df["impression"][2])    # the original's empty caption, read back as NaN


def test_missing_report_names_the_file(tmp_path):
    images = [str(tmp_path / "files" / "p12" / "p12345678" / "s51234567" / "x.jpg")]
    with pytest.raises(FileNotFoundError, match="p12/p12345678/s51234567.txt"):
        dp.write_report_csv(images, str(tmp_path / "reports"), str(tmp_path / "o.csv"))


# ------------------------------------------------------------------------------------------
# PadChest labels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, expected", [
    ("['normal']", ["normal"]),
    ("['pleural effusion', 'cardiomegaly']", ["pleural effusion", "cardiomegaly"]),
    ("['pleural effusion', ' cardiomegaly ']", ["pleural effusion", "cardiomegaly"]),
    ("[]", []),
    (float("nan"), []),
    (None, []),
    ("", []),
    ("['COPD signs', 'copd signs', '  ']", ["copd signs"]),
    ("['exclude']", ["exclude"]),
    ("['suboptimal study']", ["suboptimal study"]),
    ('["it\'s odd", \'air  trapping\']', ["it's odd", "air trapping"]),
])
def test_padchest_label_parser(cell, expected):
    assert dp.parse_padchest_labels(cell) == expected


@pytest.mark.parametrize("cell", ["pleural effusion", "[1, 2]", "['unterminated"])
def test_padchest_label_parser_rejects_non_lists(cell):
    with pytest.raises(ValueError, match="PadChest Labels"):
        dp.parse_padchest_labels(cell)


def test_real_padchest_csv_parses_without_errors():
    import phantom  # finds torchxrayvision's data without importing it (its import shadows our model.py)
    csv = phantom.torchxrayvision_data() / f"{phantom.PADCHEST_CSV}.gz"
    df = pd.read_csv(csv, usecols=["ImageID", "MethodLabel", "Labels"])
    parsed = [dp.parse_padchest_labels(v) for v in df["Labels"]]   # raises on any malformed cell
    assert len(df) == 160861
    physician = (df["MethodLabel"] == "Physician").to_numpy()
    assert physician.sum() == 39053           # the paper's radiologist-labelled subset
    labels = {label for labels, phys in zip(parsed, physician) if phys for label in labels}
    assert len(labels) == 193                 # 174 findings + 19 differential diagnoses
    assert {"normal", "pleural effusion", "cardiomegaly", "copd signs"} <= labels
