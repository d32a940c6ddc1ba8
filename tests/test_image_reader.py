"""image_reader.py: one reader for JPG, PNG and DICOM. DICOMs are built here with pydicom (and GDCM for
the JPEG processes pydicom 3 cannot encode); the ``window`` rule is checked against JPG grey levels the
files are made to display, the ``mimic`` rule against the published MIMIC-CXR-JPG conversion."""
from __future__ import annotations

import gzip
import io
import logging
import tempfile
from pathlib import Path

import cv2
import gdcm
import h5py
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

import data_process as dp
import image_reader as ir
import preprocess_train_data as cli
from conftest import mimic_args, read_h5

# 12 bits: stored value 16 * g + 8 shows as grey level g under the window (c, w) below, exactly
# (PS3.3 C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 = g).
K, X0 = 16, 8
CENTER, WIDTH = X0 + 0.5 + 127.5 * K, 255 * K + 1
# GDCM's syntaxes for the JPEG processes pydicom 3.0 cannot encode
GDCM_SYNTAX = {JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
               JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
               JPEGExtended12Bit: gdcm.TransferSyntax.JPEGExtendedProcess2_4}


def grey_jpg(path: Path, h: int = 72, w: int = 64, seed: int = 0) -> np.ndarray:
    """Write a chest-like grey JPG (every level 0..255 present) and return its decoded pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 128 + 110 * np.sin(xx / 9 + seed) * np.cos(yy / 7) + rng.normal(0, 10, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    img[0, :2] = 0, 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def dicom(pixels: np.ndarray, bits: int = 12, photometric: str = "MONOCHROME2", **attributes) -> Dataset:
    """An uncompressed DX dataset holding ``pixels`` (rows x columns, frames x rows x columns, or
    rows x columns x 3 for colour)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1"
    ds.Modality = "DX"
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    elif pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[:2] if colour else pixels.shape[-2:]
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def windowed(grey: np.ndarray, photometric: str = "MONOCHROME1") -> Dataset:
    """A 12-bit dataset whose linear window maps its stored values exactly onto ``grey``."""
    levels = 255 - grey.astype(np.uint16) if photometric == "MONOCHROME1" else grey.astype(np.uint16)
    return dicom(K * levels + X0, 12, photometric, WindowCenter=f"{CENTER:g}", WindowWidth=f"{WIDTH:g}")


def compressed(ds: Dataset, syntax: UID) -> Dataset:
    """A copy of ``ds`` in ``syntax``: pydicom's encoders, or GDCM's for the JPEG processes."""
    ds = pydicom.dcmread(io.BytesIO(as_bytes(ds)))
    if syntax not in GDCM_SYNTAX:
        ds.compress(syntax, generate_instance_uid=False)
        return ds
    with tempfile.TemporaryDirectory() as folder:
        source, target = f"{folder}/in.dcm", f"{folder}/out.dcm"
        ds.save_as(source, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(source)
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(GDCM_SYNTAX[syntax]))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(target)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
        ds["PixelData"] = pydicom.dcmread(target)["PixelData"]
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def as_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def save(ds: Dataset, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(as_bytes(ds))
    return str(path)


def published_mimic_conversion(dcm_path: str, jpg_path: str) -> np.ndarray:
    """MIMIC-CXR-JPG's conversion as its first author published it ("the core function used",
    https://github.com/MIT-LCP/mimic-cxr/issues/16), step by step: the stored values minus their
    minimum, divided by the new maximum, times 255, cast to uint8; MONOCHROME1 inverted with
    cv2.bitwise_not; cv2.equalizeHist; cv2.imwrite to a .jpg. Returns that JPG's pixels."""
    dcm_file = pydicom.dcmread(dcm_path)
    raw_image = dcm_file.pixel_array
    raw_image = raw_image - raw_image.min()
    rescaled = (raw_image / raw_image.max() * 255).astype(np.uint8)
    if dcm_file.PhotometricInterpretation == "MONOCHROME1":
        rescaled = cv2.bitwise_not(rescaled)
    assert cv2.imwrite(jpg_path, cv2.equalizeHist(rescaled))
    return cv2.imread(jpg_path, cv2.IMREAD_UNCHANGED)


# ------------------------------------------------------------------------------------------
# window rule: the display pipeline gives the JPG's grey levels back
# ------------------------------------------------------------------------------------------


def test_a_monochrome1_12bit_dicom_windowed_onto_a_jpg_gives_that_jpgs_pixels(tmp_path):
    grey = grey_jpg(tmp_path / "a.jpg")
    path = save(windowed(grey), tmp_path / "a.dcm")
    np.testing.assert_array_equal(ir.read_image(path, "window"), grey)
    # and the 320 px image preprocessing writes is the JPG's
    np.testing.assert_array_equal(dp.load_cxr(path, dicom_rule="window"), dp.load_cxr(str(tmp_path / "a.jpg")))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1],
                         ids=["rle", "jpeg_ls", "jpeg2000", "jpeg_lossless"])
def test_lossless_compressed_copies_give_identical_pixels(tmp_path, syntax):
    grey = grey_jpg(tmp_path / "a.jpg")
    plain = save(windowed(grey), tmp_path / "plain.dcm")
    packed = save(compressed(windowed(grey), syntax), tmp_path / "packed.dcm")
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    for rule in ir.DICOM_RULES:
        np.testing.assert_array_equal(ir.read_image(packed, rule), ir.read_image(plain, rule))


def test_every_phantom_variant_displays_as_its_source_grey_image(tmp_path):
    """phantom/dicom.py writes, independently of this reader, DICOMs whose standard display is a
    given grey image: Modality LUT, several windows (the first is exact), VOI LUT Sequence, SIGMOID,
    MONOCHROME1/2, 8/12/16 bits, six transfer syntaxes."""
    from phantom import dicom as phantom_dicom

    grey = grey_jpg(tmp_path / "a.jpg")
    for variant in phantom_dicom.VARIANTS:
        path = tmp_path / f"{variant.name}.dcm"
        phantom_dicom.write_dicom(path, grey, phantom_dicom.Header("p10000001", "s50000001", variant.name, 0),
                                  variant)
        shown = ir.read_image(path, "window").astype(int)
        allowed = 1 if variant.syntax == "jpeg_baseline" else 0
        assert np.abs(shown - grey).max() <= allowed, variant.name


def test_window_picks_the_first_of_several_windows_and_applies_sigmoid_and_rescale(tmp_path):
    x = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)
    first = save(dicom(x, WindowCenter=["2000.5", "100"], WindowWidth=["2001", "10"]), tmp_path / "w.dcm")
    # LINEAR: x <= c - 0.5 - (w-1)/2 = 1000 -> 0; x > 3000 -> 255; else ((x - 2000) / 2000 + 0.5) * 255
    assert ir.read_image(first, "window").tolist() == [[0, 0, 128, 255]]
    sigmoid = save(dicom(x, WindowCenter="2000", WindowWidth="4000", VOILUTFunction="SIGMOID",
                         RescaleSlope="2", RescaleIntercept="-2000"), tmp_path / "s.dcm")
    values = 2 * x.astype(float) - 2000            # Modality LUT first, then PS3.3 C.11.2.1.3.1
    expected = np.rint(255 / (1 + np.exp(-4 * (values - 2000) / 4000))).astype(int)
    assert ir.read_image(sigmoid, "window").tolist() == expected.tolist()


def test_window_without_any_voi_spans_the_images_own_range(tmp_path):
    x = np.array([[100, 600, 1100]], dtype=np.uint16)
    assert ir.read_image(save(dicom(x), tmp_path / "a.dcm"), "window").tolist() == [[0, 128, 255]]
    assert ir.read_image(save(dicom(x, photometric="MONOCHROME1"), tmp_path / "b.dcm"),
                         "window").tolist() == [[255, 128, 0]]


# ------------------------------------------------------------------------------------------
# mimic rule: MIMIC-CXR-JPG's conversion
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_mimic_rule_reproduces_the_published_mimic_cxr_jpg_conversion(tmp_path, photometric):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:90, 0:70]
    stored = (1500 + 900 * np.sin(xx / 11) * np.cos(yy / 13) + rng.normal(0, 60, xx.shape)).clip(300, 4095)
    path = save(dicom(stored.astype(np.uint16), 12, photometric), tmp_path / "p10/p10000001/s50000001/a.dcm")
    reference = published_mimic_conversion(path, str(tmp_path / "a.jpg"))
    np.testing.assert_array_equal(ir.read_image(path), reference)           # mimic is the default
    np.testing.assert_array_equal(dp.load_cxr(path), dp.load_cxr(str(tmp_path / "a.jpg")))


def test_mimic_rule_ignores_the_window_that_the_window_rule_applies(tmp_path):
    grey = grey_jpg(tmp_path / "a.jpg")
    narrow = windowed(grey, "MONOCHROME2")
    narrow.WindowCenter, narrow.WindowWidth = "2048", "100"
    path = save(narrow, tmp_path / "a.dcm")
    reference = published_mimic_conversion(path, str(tmp_path / "ref.jpg"))
    np.testing.assert_array_equal(ir.read_image(path, "mimic"), reference)
    assert not np.array_equal(ir.read_image(path, "window"), reference)


def test_a_dicom_of_one_value_is_refused_by_mimic_and_shown_by_its_window(tmp_path):
    path = save(dicom(np.full((8, 8), 700, np.uint16), WindowCenter="700", WindowWidth="400"), tmp_path / "a.dcm")
    with pytest.raises(ir.ImageDecodeError, match="every pixel has the same value"):
        ir.read_image(path, "mimic")
    assert ir.read_image(path, "window").tolist() == [[128] * 8] * 8


# ------------------------------------------------------------------------------------------
# What is refused, and what is converted
# ------------------------------------------------------------------------------------------


def test_a_transfer_syntax_without_any_decoder_is_refused_naming_it(tmp_path):
    ds = dicom(np.zeros((8, 8), np.uint16))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.92")    # JPEG 2000 Part 2 multi-component
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    path = save(ds, tmp_path / "a.dcm")
    with pytest.raises(ir.ImageDecodeError, match=r"no pixel decoder for transfer syntax JPEG 2000 Part 2 "
                                                  r"Multi-component .*\(1\.2\.840\.10008\.1\.2\.4\.92\)"):
        ir.read_image(path)


def test_12bit_jpeg_extended_names_the_one_decoder_that_reads_it(tmp_path):
    """GDCM encodes it, but neither GDCM nor Pillow decodes 12-bit JPEG Extended; pylibjpeg-libjpeg would."""
    grey = grey_jpg(tmp_path / "a.jpg")
    path = save(compressed(windowed(grey), JPEGExtended12Bit), tmp_path / "a.dcm")
    with pytest.raises(ir.ImageDecodeError, match=r"JPEG Extended .* not decodable .* pylibjpeg-libjpeg \(GPL-3\.0"):
        ir.read_image(path, "window")


def test_a_missing_decoder_names_the_package_to_install(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    path = save(compressed(windowed(grey_jpg(tmp_path / "a.jpg")), JPEGLSLossless), tmp_path / "a.dcm")
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))   # as without pyjpegls and gdcm
    with pytest.raises(ir.ImageDecodeError, match=r"JPEG-LS Lossless .* needs a pixel decoder that is not "
                                                  r"installed: pip install pyjpegls \(or python-gdcm\)"):
        ir.read_image(path)


def test_a_multi_frame_dicom_is_refused_with_the_reason(tmp_path):
    path = save(dicom(np.zeros((2, 8, 8), np.uint16) + 5), tmp_path / "a.dcm")
    with pytest.raises(ir.ImageDecodeError, match=r"multi-frame DICOM \(2 frames\).*does not pick a frame"):
        ir.read_image(path)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_a_colour_dicom_becomes_its_luma_with_a_warning(tmp_path, caplog, photometric):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    stored = rgb if photometric == "RGB" else pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    path = save(dicom(stored, 8, photometric), tmp_path / "a.dcm")
    luma = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    with caplog.at_level(logging.WARNING, logger="image_reader"):
        grey = ir.read_image(path, "window")
    assert f"colour DICOM ({photometric}) converted to grey" in caplog.text
    assert np.abs(grey.astype(int) - luma).max() <= (0 if photometric == "RGB" else 1)   # YBR: rounding


def test_a_dicom_without_pixel_data_is_refused(tmp_path):
    ds = dicom(np.zeros((8, 8), np.uint16))
    del ds.PixelData
    with pytest.raises(ir.ImageDecodeError, match=r"DICOM without Pixel Data \(7FE0,0010\)"):
        ir.read_image(save(ds, tmp_path / "a.dcm"))


def test_a_truncated_dicom_is_refused_uncompressed_or_compressed(tmp_path):
    grey = grey_jpg(tmp_path / "a.jpg")
    for name, ds in (("plain", windowed(grey)), ("rle", compressed(windowed(grey), RLELossless))):
        data = as_bytes(ds)
        cut = tmp_path / f"{name}.dcm"
        cut.write_bytes(data[:len(data) - 500])
        with pytest.raises(ir.ImageDecodeError, match="truncated DICOM"):
            ir.read_image(cut)
        with pytest.raises(ir.ImageDecodeError, match="truncated DICOM"):
            dp.load_cxr(str(cut))


def test_a_file_named_dcm_that_is_not_dicom_is_refused(tmp_path):
    (tmp_path / "a.dcm").write_text("not an image\n" * 20)
    with pytest.raises(ir.ImageDecodeError, match="not a DICOM file|not a readable DICOM"):
        ir.read_image(tmp_path / "a.dcm")


def test_an_unknown_dicom_rule_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="dicom_rule must be one of"):
        ir.read_image(tmp_path / "a.dcm", "voi")


# ------------------------------------------------------------------------------------------
# Recognising files; JPG and PNG
# ------------------------------------------------------------------------------------------


def test_an_extensionless_dicom_is_recognised_and_read(tmp_path):
    grey = grey_jpg(tmp_path / "a.jpg")
    path = save(windowed(grey), tmp_path / "IM000001")
    (tmp_path / "notes").write_text("x" * 200)
    assert ir.is_dicom(path) and not ir.is_dicom(tmp_path / "notes") and not ir.is_dicom(tmp_path / "gone")
    np.testing.assert_array_equal(ir.read_image(path, "window"), grey)
    assert ir.may_be_dicom(path) and ir.may_be_dicom("x/a.DCM") and not ir.may_be_dicom("x/a.jpg")


def test_a_16bit_png_is_scaled_by_its_bit_depth(tmp_path):
    values = np.array([[0, 1024, 2048, 4095]], dtype=np.uint16)          # 12-bit content (PadChest)
    assert cv2.imwrite(str(tmp_path / "a.png"), values)
    assert ir.read_image(tmp_path / "a.png").tolist() == [[0, 64, 128, 255]]
    assert ir.read_image(tmp_path / "a.png", bits_stored=16).tolist() == [[0, 4, 8, 16]]


def test_colour_and_cmyk_jpgs_read_as_their_grey_luma(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    for name in ("rgb.jpg", "cmyk.jpg"):
        grey = ir.read_image(tmp_path / name)
        assert grey.shape == (16, 20) and grey.dtype == np.uint8
        luma = np.asarray(Image.open(tmp_path / name).convert("RGB").convert("L")).astype(int)
        assert np.abs(grey.astype(int) - luma).max() <= 1, name


def test_data_process_keeps_the_reader_names_importable():
    for name in ("read_image", "load_cxr", "preprocess", "ImageDecodeError", "is_dicom", "IMAGE_SUFFIXES",
                 "to_uint8", "decode_image", "scaled_size", "resize_and_pad", "RESOLUTION", "DICOM_RULES"):
        assert getattr(dp, name) is getattr(ir, name), name


# ------------------------------------------------------------------------------------------
# Preprocessing: HDF5 rows, resume fingerprints, a MIMIC-CXR DICOM tree
# ------------------------------------------------------------------------------------------


def test_img_to_hdf5_writes_dicoms_by_the_rule_asked(tmp_path):
    grey = grey_jpg(tmp_path / "a.jpg")
    paths = [save(windowed(grey), tmp_path / "a.dcm"), str(tmp_path / "a.jpg")]
    for rule in ir.DICOM_RULES:
        out = tmp_path / f"{rule}.h5"
        assert dp.img_to_hdf5(paths, str(out), num_workers=1, dicom_rule=rule) == []
        rows = read_h5(out)
        np.testing.assert_array_equal(rows[0], ir.load_cxr(paths[0], dicom_rule=rule))
        np.testing.assert_array_equal(rows[1], ir.load_cxr(paths[1]))


def test_the_resume_fingerprint_counts_the_dicom_rule_only_where_a_path_may_be_dicom():
    jpgs, dicoms = ["a/x.jpg", "a/y.png"], ["a/x.jpg", "a/y.dcm"]
    args = ([None, None], 320, "uint8", False, False)
    assert dp._fingerprint(jpgs, *args, "mimic") == dp._fingerprint(jpgs, *args, "window") \
        == dp._fingerprint(jpgs, *args)                               # as before the rule existed
    assert dp._fingerprint(dicoms, *args, "mimic") != dp._fingerprint(dicoms, *args, "window")


def mimic_dicom_tree(root: Path) -> dict[str, np.ndarray]:
    """MIMIC-CXR's DICOM release in miniature (files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm beside the
    reports), with the MIMIC-CXR-JPG metadata CSV in its own release folder. Returns dicom_id -> grey."""
    files = root / "mimic-cxr/2.0.0/files"
    report = " FINAL REPORT\n IMPRESSION:\n \n No acute process.\n"
    images, meta = {}, []
    for k, (patient, study, dicom_id, view) in enumerate([("p10000032", "s50000001", "aa11", "PA"),
                                                          ("p10000032", "s50000001", "bb22", "LATERAL"),
                                                          ("p19000004", "s53000003", "cc33", "AP")]):
        images[dicom_id] = grey_jpg(root / "src" / f"{dicom_id}.jpg", 60 + 4 * k, 56, seed=k)
        photometric = "MONOCHROME1" if k == 1 else "MONOCHROME2"
        save(windowed(images[dicom_id], photometric), files / patient[:3] / patient / study / f"{dicom_id}.dcm")
        (files / patient[:3] / patient / f"{study}.txt").write_text(report)
        meta.append({"dicom_id": dicom_id, "subject_id": int(patient[1:]), "study_id": int(study[1:]),
                     "ViewPosition": view})
    (root / "mimic-cxr-jpg/2.0.0").mkdir(parents=True)
    with gzip.open(root / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        pd.DataFrame(meta).to_csv(f, index=False)
    return images


def test_preprocessing_a_mimic_cxr_dicom_tree_with_the_window_rule_and_a_view_filter(tmp_path):
    images = mimic_dicom_tree(tmp_path)
    out = tmp_path / "out"
    argv = mimic_args(tmp_path, out, "--dicom_rule", "window", "--views", "PA,AP")
    argv[argv.index("--chest_x_ray_path") + 1] = str(tmp_path / "mimic-cxr/2.0.0/files")
    assert cli.main(argv) == 0
    paths = pd.read_csv(out / "cxr_paths.csv")["Path"].tolist()
    assert [Path(p).name for p in paths] == ["aa11.dcm", "cc33.dcm"]            # LATERAL bb22 filtered out
    assert pd.read_csv(out / "mimic_impressions.csv")["impression"].tolist() == ["No acute process."] * 2
    rows = read_h5(out / "cxr.h5")
    for row, path in zip(rows, paths):
        np.testing.assert_array_equal(row, ir.load_cxr(path, dicom_rule="window"))
        grey = images[Path(path).stem]
        np.testing.assert_array_equal(row, np.asarray(ir.preprocess(Image.fromarray(grey))))
    with h5py.File(out / "cxr.h5") as f:
        assert f[dp.H5_KEY].shape == (2, 320, 320)


def test_a_mimic_tree_with_one_image_in_two_formats_is_refused(tmp_path, capsys):
    mimic_dicom_tree(tmp_path)
    study = tmp_path / "mimic-cxr/2.0.0/files/p10/p10000032/s50000001"
    grey_jpg(study / "aa11.jpg")
    argv = mimic_args(tmp_path, tmp_path / "out")
    argv[argv.index("--chest_x_ray_path") + 1] = str(tmp_path / "mimic-cxr/2.0.0/files")
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "aa11.dcm and" in error and "aa11.jpg are the same image in two formats" in error
