"""The DICOM phantoms (phantom/dicom.py): every variant holds the stored values it means to, the
display pipeline of the DICOM standard gives the phantom's grey levels back exactly, compressed
copies decode to the uncompressed pixels, one seed gives byte-identical files, and nothing DICOM
is written without --dicom."""
import csv
import gzip
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

import phantom
from conftest import run_python
from phantom.dicom import DX_FOR_PRESENTATION, Header, write_dicom

HEADER = Header("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", seed=0)
LOSSLESS = [v for v in phantom.VARIANTS if v.syntax != "jpeg_baseline"]
BASELINE = [v for v in phantom.VARIANTS if v.syntax == "jpeg_baseline"]


def every_grey_level(seed: int = 0) -> np.ndarray:
    """A 48 x 64 grey image holding each of the 256 levels 12 times, shuffled (JPEG 2000 wants 32 px or more)."""
    return np.random.default_rng(seed).permutation(np.arange(256, dtype=np.uint8).repeat(12)).reshape(48, 64)


def first(value) -> float:
    """The first value of a possibly multi-valued DS."""
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def displayed(ds: pydicom.Dataset, skip: str = "") -> np.ndarray:
    """What the file displays, rounded to 8 bits, written from the standard (not pydicom's
    apply_voi_lut): Modality LUT (PS3.3 C.11.1), then the VOI LUT Sequence or the first window,
    LINEAR (C.11.2.1.2.1) or SIGMOID (C.11.2.1.3.1), with 0..255 output, then MONOCHROME1 inverted.
    ``skip`` names a step a faulty reader leaves out: modality, inversion, sigmoid (taken as
    LINEAR) or first_window (the last one used instead)."""
    x = ds.pixel_array.astype(np.float64)
    if skip != "modality":
        x = x * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        entries, first_input, bits = item.LUTDescriptor
        table = np.frombuffer(item.LUTData, "<u2")
        y = table[np.clip(x - first_input, 0, (entries or 65536) - 1).astype(int)] / (2 ** bits - 1) * 255
    else:
        c, w = first(ds.WindowCenter), first(ds.WindowWidth)
        if skip == "first_window":
            c, w = float(ds.WindowCenter[-1]), float(ds.WindowWidth[-1])
        if ds.get("VOILUTFunction", "LINEAR") == "SIGMOID" and skip != "sigmoid":
            y = 255 / (1 + np.exp(-4 * (x - c) / w))
        else:
            y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                         np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255))
    if ds.PhotometricInterpretation == "MONOCHROME1" and skip != "inversion":
        y = 255 - y
    return np.round(y).astype(np.uint8)


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory) -> tuple[Path, dict]:
    """A small phantom root with every MIMIC image also as DICOM, and the variants and edge cases."""
    root = tmp_path_factory.mktemp("dicom_root")
    manifest = phantom.generate(root, studies=14, seed=1, test_studies=0, valid_studies=0, padchest_images=0,
                                workers=1, dicom=1000)
    return root, manifest


def test_each_variant_holds_the_stored_values_it_means_to(tmp_path):
    grey = every_grey_level()
    for variant in LOSSLESS:
        write_dicom(tmp_path / f"{variant.name}.dcm", grey, HEADER, variant)
        ds = pydicom.dcmread(tmp_path / f"{variant.name}.dcm")
        assert ds.file_meta.TransferSyntaxUID == phantom.TRANSFER_SYNTAXES[variant.syntax], variant
        assert (ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel,
                ds.BitsAllocated) == (variant.photometric, variant.bits_stored, variant.bits_stored - 1, 0, 1, 16)
        assert np.array_equal(ds.pixel_array, phantom.stored_values(grey, variant)), variant
        assert ("RescaleSlope" in ds and ds.RescaleSlope != 1) == variant.rescale
        assert ("VOILUTSequence" in ds) == (variant.voi == "lut")
        assert ds.get("VOILUTFunction", "LINEAR") == ("SIGMOID" if variant.voi == "sigmoid" else "LINEAR")
        if variant.voi == "windows":
            assert ds["WindowCenter"].VM == ds["WindowWidth"].VM == 2


def test_the_standard_display_pipeline_gives_every_grey_level_back_exactly(tmp_path):
    """Modality LUT, VOI (one window, several, a LUT, SIGMOID) and MONOCHROME1 inversion undo the storage."""
    grey = every_grey_level()
    for variant in LOSSLESS:
        write_dicom(tmp_path / "x.dcm", grey, HEADER, variant)
        assert np.array_equal(displayed(pydicom.dcmread(tmp_path / "x.dcm")), grey), variant


def test_a_reader_that_skips_a_step_of_the_pipeline_gets_other_grey_levels(tmp_path):
    grey = every_grey_level()
    for variant in LOSSLESS:
        write_dicom(tmp_path / "x.dcm", grey, HEADER, variant)
        ds = pydicom.dcmread(tmp_path / "x.dcm")
        skips = (["modality"] * variant.rescale + ["inversion"] * (variant.photometric == "MONOCHROME1")
                 + ["sigmoid"] * (variant.voi == "sigmoid") + ["first_window"] * (variant.voi == "windows"))
        for skip in skips:
            assert np.abs(displayed(ds, skip).astype(int) - grey).mean() > 5, (variant, skip)


def test_jpeg_baseline_is_marked_lossy_and_within_one_grey_level(tmp_path):
    grey = every_grey_level()
    for variant in BASELINE:
        write_dicom(tmp_path / "x.dcm", grey, HEADER, variant)
        ds = pydicom.dcmread(tmp_path / "x.dcm")
        assert ds.BitsAllocated == ds.BitsStored == 8 and ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1" and float(ds.LossyImageCompressionRatio) > 0
        assert np.abs(displayed(ds).astype(int) - grey).max() <= 1, variant


def test_compressed_copies_decode_to_the_uncompressed_file_and_differ_only_in_encoding(tmp_path):
    grey = every_grey_level(1)
    for variant in phantom.VARIANTS:
        plain = replace(variant, syntax="explicit_le")
        write_dicom(tmp_path / "plain.dcm", grey, HEADER, plain)
        write_dicom(tmp_path / "packed.dcm", grey, HEADER, variant)
        a, b = pydicom.dcmread(tmp_path / "plain.dcm"), pydicom.dcmread(tmp_path / "packed.dcm")
        lossy = variant.syntax == "jpeg_baseline"
        if lossy:
            assert np.abs(a.pixel_array.astype(int) - b.pixel_array).max() <= 1
        else:
            assert np.array_equal(a.pixel_array, b.pixel_array), variant
        lossy_tags = {"LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"}
        assert ({e.keyword for e in a} ^ {e.keyword for e in b}) <= lossy_tags
        assert all(a[e.tag] == e for e in b if e.keyword not in lossy_tags | {"PixelData"})
        assert b["PixelData"].is_undefined_length == (variant.syntax != "explicit_le")


def test_the_mimic_dicom_tree_shows_the_jpg_pixels_under_the_same_dicom_ids(dicom_root):
    root, manifest = dicom_root
    jpg_files, dicom_files = root / "mimic-cxr-jpg/2.0.0/files", root / "mimic-cxr/2.0.0/files"
    with gzip.open(root / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        metadata = {row["dicom_id"]: row for row in csv.DictReader(f)}
    damaged = set(manifest["truncated_jpg"] + manifest["zero_byte_jpg"])
    jpgs = {p.relative_to(jpg_files).with_suffix("") for p in jpg_files.rglob("*.jpg")
            if p.relative_to(root).as_posix() not in damaged}
    dcms = {p.relative_to(dicom_files).with_suffix("") for p in dicom_files.rglob("*.dcm")}
    assert dcms == jpgs and manifest["dicom"]["mimic"]["files"] == len(dcms) > 15
    photometrics, syntaxes, studies = set(), set(), {}
    for stem in sorted(dcms):
        ds = pydicom.dcmread((dicom_files / stem).with_suffix(".dcm"))
        row = metadata[stem.name]
        assert (ds.PatientID, ds.StudyID, ds.ViewPosition, ds.StudyDate) == (
            row["subject_id"], row["study_id"], row["ViewPosition"], row["StudyDate"])
        assert stem.parts[:2] == (f"p{row['subject_id'][:2]}", f"p{row['subject_id']}")
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.SOPClassUID) == (
            int(row["Rows"]), int(row["Columns"]), 16, 12, DX_FOR_PRESENTATION)
        assert np.array_equal(displayed(ds), cv2.imread(str((jpg_files / stem).with_suffix(".jpg")),
                                                        cv2.IMREAD_GRAYSCALE)), stem
        photometrics.add(ds.PhotometricInterpretation)
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        studies.setdefault(ds.StudyInstanceUID, set()).add(row["study_id"])
        assert UID(ds.SOPInstanceUID).is_valid and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and len(syntaxes) >= 3
    assert all(len(ids) == 1 for ids in studies.values())
    assert len(studies) == len({stem.parts[2] for stem in dcms})
    with gzip.open(root / manifest["dicom"]["mimic"]["record_list"], "rt") as f:
        records = list(csv.reader(f))
    assert records[0] == ["subject_id", "study_id", "dicom_id", "path"]
    assert {r[3] for r in records[1:]} == {f"files/{stem.as_posix()}.dcm" for stem in dcms}


def test_the_variants_folder_shows_its_source_jpgs_as_the_manifest_says(dicom_root):
    root, manifest = dicom_root
    entries = manifest["dicom"]["variants"]
    assert sorted(p.name for p in (root / "dicom" / "variants").iterdir()) == sorted(
        Path(e["path"]).name for e in entries) and len(entries) == len(phantom.VARIANTS)
    assert {e["transfer_syntax"] for e in entries} == set(phantom.TRANSFER_SYNTAXES.values())
    with gzip.open(root / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        views = {row["dicom_id"]: row["ViewPosition"] for row in csv.DictReader(f)}
    damaged = set(manifest["truncated_jpg"] + manifest["zero_byte_jpg"])
    frontal = {p.relative_to(root).as_posix() for p in (root / "mimic-cxr-jpg").rglob("*.jpg")
               if views[p.stem] in ("PA", "AP") and p.relative_to(root).as_posix() not in damaged}
    assert {e["source"] for e in entries} <= frontal
    assert len({e["source"] for e in entries}) == min(len(entries), len(frontal))
    for e in entries:
        ds = pydicom.dcmread(root / e["path"])
        assert (ds.PhotometricInterpretation, ds.BitsStored, ds.file_meta.TransferSyntaxUID) == (
            e["photometric"], e["bits_stored"], e["transfer_syntax"])
        assert ds.ViewPosition in ("PA", "AP") and ds.PatientID == Path(e["source"]).parts[-3][1:]
        jpg = cv2.imread(str(root / e["source"]), cv2.IMREAD_GRAYSCALE)
        assert np.abs(displayed(ds).astype(int) - jpg).max() <= (1 if e["syntax"] == "jpeg_baseline" else 0), e


def test_the_edge_cases_are_what_the_manifest_says(dicom_root):
    root, manifest = dicom_root
    cases = {e["case"]: e for e in manifest["dicom"]["edge_cases"]}
    assert set(cases) == {"multi_frame", "no_pixel_data", "rgb", "truncated", "no_extension"}
    assert all(e["what"] for e in cases.values())
    grey = cv2.imread(str(root / cases["rgb"]["source"]), cv2.IMREAD_GRAYSCALE)
    multi = pydicom.dcmread(root / cases["multi_frame"]["path"])
    assert multi.NumberOfFrames == 2 and multi.pixel_array.shape == (2, *grey.shape)
    assert np.array_equal(multi.pixel_array[1], multi.pixel_array[0][:, ::-1])
    assert "PixelData" not in pydicom.dcmread(root / cases["no_pixel_data"]["path"])
    rgb = pydicom.dcmread(root / cases["rgb"]["path"])
    assert (rgb.SamplesPerPixel, rgb.PhotometricInterpretation) == (3, "RGB")
    assert np.array_equal(rgb.pixel_array, np.repeat(grey[:, :, None], 3, axis=2))
    with pytest.raises(ValueError, match="less than expected"):
        pydicom.dcmread(root / cases["truncated"]["path"]).pixel_array
    bare = root / cases["no_extension"]["path"]
    assert bare.suffix == "" and bare.read_bytes()[128:132] == b"DICM"
    assert np.array_equal(displayed(pydicom.dcmread(bare)), grey)


def test_the_same_seed_gives_byte_identical_dicom_files_from_the_cli_and_the_api(tmp_path):
    run_python("-m", "phantom", "--out", str(tmp_path / "cli"), "--studies", "6", "--test_studies", "0",
               "--valid_studies", "0", "--padchest_images", "0", "--seed", "5", "--workers", "2", "--dicom", "4",
               check=True)
    phantom.generate(tmp_path / "api", studies=6, seed=5, test_studies=0, valid_studies=0, padchest_images=0,
                     workers=1, dicom=4)
    files = [{p.relative_to(tmp_path / name): p.read_bytes() for p in sorted((tmp_path / name).rglob("*"))
              if p.is_file()} for name in ("cli", "api")]
    assert files[0].keys() == files[1].keys() and all(files[0][k] == files[1][k] for k in files[0])
    assert sum(k.suffix == ".dcm" and k.parts[0] == "mimic-cxr" for k in files[0]) == 4
    manifest = json.loads(files[0][Path("manifest.json")])
    assert manifest["dicom"]["mimic"]["files"] == 4


def test_without_the_flag_no_dicom_is_written(phantom_root):
    root, manifest = phantom_root
    assert "dicom" not in manifest and not (root / "dicom").exists()
    assert not [p for p in root.rglob("*") if p.suffix == ".dcm" or p.name == "cxr-record-list.csv.gz"]


def test_cli_help_documents_the_dicom_flag_and_layout():
    text = run_python("-m", "phantom", "-h", check=True).stdout
    assert "--dicom [N]" in text and "dicom/variants/" in text and "<dicom_id>.dcm" in text
