"""The phantom package: the synthetic dataset is written in the real formats, is deterministic, and its
findings are learnable without being a brightness shortcut."""
import csv
import gzip
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import phantom
from conftest import run_python
from data_process import chexzero_impression
from errors import UserError
from phantom import streams

# The official MIMIC section parser's header pattern: newline, space, capitals and ()/,- then ": ".
MIMIC_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")


# phantom_root: a small phantom root (40 studies of each MIMIC and CheXpert test, 15 valid, 12 PadChest
# images, seed 0), generated once for the whole session (conftest.py).


def read_gz_csv(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.reader(f))


def test_mesh_mapping_follows_the_documented_table():
    labels = phantom.mesh_terms_to_labels((
        "Pulmonary Atelectasis/base/left", "Pulmonary Congestion", "Catheters, Indwelling", "Implanted Medical Device",
        "Cardiac Shadow/enlarged/borderline", "Calcified Granuloma/lung/upper lobe/right",
        "Costophrenic Angle/bilateral/blunted"))
    assert labels == {"Atelectasis": 1.0, "Edema": 1.0, "Support Devices": 1.0, "Cardiomegaly": -1.0,
                      "Pleural Effusion": 1.0}
    negated = phantom.report_labels(("Catheters, Indwelling",),
                                    "No pleural effusion or pneumothorax. Heart size normal.")
    assert negated == {"Support Devices": 1.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0, "No Finding": 1.0}
    assert "No Finding" not in phantom.report_labels(("Opacity/lung/base/left",), "Left basilar opacity.")


def test_iu_reports_are_shipped_by_torchxrayvision():
    reports = phantom.iu_reports()
    assert 3800 < len(reports) <= 3955
    assert all(r.findings or r.impression for r in reports)
    positives = phantom.positives_matrix(reports).sum(axis=0)
    assert all(positives[phantom.LABELS.index(label)] >= 25 for label in phantom.COMPETITION)


def test_label_sampler_reaches_the_real_chexpert_test_prevalences():
    rows = phantom.sample_label_rows(500, phantom.CHEXPERT_TEST_PREVALENCE, np.random.default_rng(0))
    for label, real in phantom.CHEXPERT_TEST_POSITIVES.items():
        count = sum(label in labels for _, labels in rows)
        assert abs(count - real) <= (10 if label == "No Finding" else 1), (label, count, real)
    for _, labels in rows:
        assert ("No Finding" in labels) == (not labels & set(phantom.PATHOLOGIES))


def test_mimic_csvs_have_the_real_columns_and_values(phantom_root):
    root, manifest = phantom_root
    jpg = root / "mimic-cxr-jpg" / "2.0.0"
    metadata = read_gz_csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert metadata[0] == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                           "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                           "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
    rows = metadata[1:]
    assert {"PA", "AP", "LATERAL", "LL", ""} <= {r[4] for r in rows}
    assert all(re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", r[0]) and r[1].startswith("1") and r[2].startswith("5")
               for r in rows)
    assert all(r[7][:2] in ("21", "22") and len(r[7]) == 8 and float(r[8]) < 240000 for r in rows)
    lateral = sum(r[4] in ("LATERAL", "LL") for r in rows) / len(rows)
    assert 0.2 < lateral < 0.5

    split = read_gz_csv(jpg / "mimic-cxr-2.0.0-split.csv.gz")
    assert split[0] == ["dicom_id", "study_id", "subject_id", "split"]
    assert {r[3] for r in split[1:]} == {"train", "validate", "test"}
    per_patient = {}
    for r in split[1:]:
        per_patient.setdefault(r[2], set()).add(r[3])
    assert all(len(s) == 1 for s in per_patient.values())

    labels = read_gz_csv(jpg / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert labels[0] == ["subject_id", "study_id", *phantom.LABELS] and phantom.LABELS == sorted(phantom.LABELS)
    values = {v for r in labels[1:] for v in r[2:]}
    assert values <= {"1.0", "0.0", "-1.0", ""} and {"1.0", "0.0", ""} <= values
    assert {r[2 + phantom.LABELS.index("No Finding")] for r in labels[1:]} <= {"1.0", ""}
    studies = {int(r[2]) for r in rows}
    labelled = {int(r[1]) for r in labels[1:]}
    assert studies - labelled == set(manifest["missing_from_chexpert_csv"]) and len(studies - labelled) >= 1


def test_reports_follow_the_mimic_whitespace_rules(phantom_root):
    root, manifest = phantom_root
    reports = sorted((root / "mimic-cxr" / "2.0.0" / "files").rglob("s*.txt"))
    assert len(reports) == 40
    for path in reports:
        text = path.read_text()
        lines = text.rstrip("\n").split("\n")
        assert lines[0].startswith(" " * 10) and lines[0].strip() == "FINAL REPORT"
        assert all(line.startswith(" ") and len(line) <= 79 for line in lines[1:])
        assert all(line == " " for line in lines[1:] if not line.strip())
        assert "\n\n" not in text
        headers = [h.strip() for h in MIMIC_HEADER.findall(text)]
        assert headers[:2] == ["EXAMINATION", "INDICATION"] and "COMPARISON" in headers
        assert "XXXX" not in text
    for key in ("no_impression", "notification_before_impression", "two_impressions"):
        assert len(manifest[key]) >= 2
    for rel in manifest["no_impression"]:
        assert chexzero_impression((root / rel).read_text()) == "NO IMPRESSION"
    for rel in manifest["notification_before_impression"]:
        assert chexzero_impression((root / rel).read_text()) == ""  # CheXzero's known bug, reproduced
    for rel in manifest["two_impressions"]:
        text = (root / rel).read_text()
        assert text.count("\n IMPRESSION:") == 2 and chexzero_impression(text)


def test_mimic_images_are_8bit_single_channel_and_match_metadata(phantom_root):
    root, manifest = phantom_root
    jpg = root / "mimic-cxr-jpg" / "2.0.0"
    rows = read_gz_csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz")[1:]
    damaged = set(manifest["truncated_jpg"]) | set(manifest["zero_byte_jpg"])
    for r in rows:
        rel = f"mimic-cxr-jpg/2.0.0/files/p{r[1][:2]}/p{r[1]}/s{r[2]}/{r[0]}.jpg"
        assert (root / rel).exists()
        if rel in damaged:
            continue
        with Image.open(root / rel) as image:
            assert image.mode == "L" and image.size == (int(r[6]), int(r[5])) and image.size[0] != image.size[1]
            assert 512 <= max(image.size) <= 1024
    for rel in manifest["zero_byte_jpg"]:
        assert (root / rel).stat().st_size == 0 and cv2.imread(str(root / rel)) is None
    for rel in manifest["truncated_jpg"]:
        with pytest.raises(OSError):
            Image.open(root / rel).load()


def test_chexpert_test_groundtruth_aligns_with_sorted_view1_images(phantom_root):
    root, _ = phantom_root
    text = (root / "chexpert-test" / "groundtruth.csv").read_text()
    assert not text.endswith("\n")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Study"] + phantom.CHEXPERT_ORDER
    assert all(v in ("0", "1") for r in rows[1:] for v in r[1:])
    view1 = sorted(str(p) for p in (root / "chexpert-test").rglob("*.jpg") if "view1" in str(p))
    assert len(view1) == len(rows) - 1 == 40
    for path, row in zip(view1, rows[1:]):
        assert path.endswith(row[0].replace("CheXpert-v1.0/", "") + "/view1_frontal.jpg")
    assert rows[1][0] == "CheXpert-v1.0/test/patient64741/study1"
    assert any((root / "chexpert-test").rglob("view2_lateral.jpg"))


def test_chexpert_valid_csv(phantom_root):
    root, _ = phantom_root
    base = root / "chexpert"
    with open(base / "CheXpert-v1.0-small" / "valid.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + phantom.CHEXPERT_ORDER
    patients = set()
    for r in rows[1:]:
        assert re.fullmatch(r"CheXpert-v1\.0-small/valid/patient(\d{5})/study1/view(1_frontal|2_lateral)\.jpg", r[0])
        patients.add(int(r[0].split("patient")[1][:5]))
        assert (base / r[0]).exists()
        assert (r[3] == "Lateral") == (r[4] == "") and r[1] in ("Male", "Female")
        assert all(v in ("0.0", "1.0") for v in r[5:])
        with Image.open(base / r[0]) as image:
            assert min(image.size) == 320
    assert min(patients) == 64541 and len(patients) == 15


def test_padchest_rows_are_real_and_pngs_are_16bit_12bit(phantom_root):
    root, manifest = phantom_root
    with gzip.open(phantom.torchxrayvision_data() / f"{phantom.PADCHEST_CSV}.gz", "rt", newline="") as f:
        reader = csv.reader(f)
        real_header = next(reader)
        real_rows = {r[0]: r for r in reader}
    with open(root / "padchest" / phantom.PADCHEST_CSV, newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == real_header and header[0] == "" and len(header) == 36
    assert len(rows) == 12 and all(real_rows[r[0]] == r for r in rows)
    assert all(r[header.index("MethodLabel")] == "Physician" for r in rows)
    broken = {Path(p).name for p in manifest["padchest_truncated"] + manifest["padchest_missing"]}
    for r in rows:
        path = root / "padchest" / r[header.index("ImageDir")] / r[header.index("ImageID")]
        if r[1] in broken:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint16 and image.ndim == 2 and 0 < image.max() <= 4095
    assert not (root / manifest["padchest_missing"][0]).exists()
    with pytest.raises(OSError):
        Image.open(root / manifest["padchest_truncated"][0]).load()


def test_manifest_lists_counts_and_edge_cases(phantom_root):
    root, manifest = phantom_root
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 0 and manifest["counts"]["mimic_studies"] == 40
    for key in ("truncated_jpg", "zero_byte_jpg", "no_impression", "notification_before_impression", "two_impressions",
                "missing_from_chexpert_csv", "padchest_truncated", "padchest_missing"):
        assert manifest[key], key


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    files = []
    for name, workers in (("a", 1), ("b", 2)):
        phantom.generate(tmp_path / name, studies=8, seed=3, test_studies=4, valid_studies=3, padchest_images=3,
                         workers=workers)
        files.append({p.relative_to(tmp_path / name): p.read_bytes()
                      for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert files[0].keys() == files[1].keys() and len(files[0]) > 30
    assert all(files[0][k] == files[1][k] for k in files[0])


def test_random_streams_have_distinct_numbers_and_seed_as_before():
    numbers = list(phantom.STREAMS.values())
    assert len(set(numbers)) == len(numbers)
    assert streams.stream_key(3, "mimic_image", 5, 1) == (3, 4, 5, 1)
    ours, bare = streams.rng(7, "padchest_findings", 2), np.random.default_rng([7, 31, 2])
    assert ours.integers(0, 2 ** 62, size=4).tolist() == bare.integers(0, 2 ** 62, size=4).tolist()
    with pytest.raises(KeyError):
        streams.rng(0, "no_such_stream")


def test_findings_are_learnable_and_not_a_brightness_shortcut():
    scores = phantom.learnability(n=600, seed=0, workers=2)
    print(json.dumps(scores, indent=1))
    for label in phantom.COMPETITION:
        assert scores[label]["logreg_auroc"] >= 0.75, (label, scores[label])
        assert scores[label]["mean_intensity_auroc"] < 0.75, (label, scores[label])


def test_cli_help_documents_every_flag():
    text = run_python("-m", "phantom", "-h", check=True).stdout
    assert text.startswith("usage: python -m phantom")
    for flag in ("--out", "--studies", "--seed", "--test_studies", "--valid_studies", "--padchest_images", "--workers",
                 "--contact_sheet", "--learnability", "--overwrite"):
        assert flag in text


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    result = run_python("-m", "phantom", "--out", str(tmp_path / "root"), "--studies", "2", "--test_studies", "1",
                        "--valid_studies", "201")
    assert result.returncode == 2 and "at most 200 valid studies" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "root" / "manifest.json").exists()


def test_a_second_root_is_not_written_over_the_first(tmp_path):
    """Leftover files of an earlier root would be preprocessed as part of the new one."""
    (tmp_path / "mimic-cxr-jpg").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="is not empty .*--overwrite"):
        phantom.generate(tmp_path, studies=3, test_studies=1, valid_studies=1, padchest_images=0, workers=1)
    assert (tmp_path / "manifest.json").read_text() == "{}"
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not part of a phantom root \\(notes.txt\\)"):
        phantom.generate(tmp_path, studies=3, test_studies=1, valid_studies=1, padchest_images=0, workers=1,
                         overwrite=True)
    (tmp_path / "notes.txt").unlink()
    manifest = phantom.generate(tmp_path, studies=3, test_studies=1, valid_studies=1, padchest_images=0, workers=1,
                                overwrite=True)
    assert manifest["counts"]["mimic_studies"] == 3
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["mimic_studies"] == 3


def test_every_mapped_label_is_a_chexpert_label_the_generator_draws():
    """A label spelled differently from LABELS is silently never written nor drawn."""
    mapped = {label for labels in phantom.MESH_TO_CHEXPERT.values() for label in labels}
    assert mapped | set(phantom.PADCHEST_TO_CHEXPERT.values()) <= set(phantom.LABELS)
    widened = phantom.report_labels(("Mediastinum/widened",), "Widened mediastinum.")
    assert widened == {"Enlarged Cardiomediastinum": 1.0}


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_basal_atelectasis_is_drawn_inside_the_lung(severity):
    """Lower-zone bands (and a collapsed lower lobe) sit above the raised hemidiaphragm: drawn
    below it they fall outside the lung, and the image shows no finding under a positive label."""
    opacified = []
    for i in range(30):
        rng = np.random.default_rng([severity, i])
        finding = phantom.Finding("Atelectasis", severity, ("right", "left", "bilateral")[i % 3], "lower")
        anatomy = phantom.anatomy_with(phantom.sample_anatomy(rng, female=bool(i % 2)), [finding], rng)
        canvas = phantom.Canvas((224, 190), phantom.sample_pose(rng, (224, 190), anatomy, "PA"), anatomy.lung_height)
        phantom.draw_frontal_anatomy(canvas, anatomy, rng)
        before = canvas.air.copy()
        phantom.atelectasis(canvas, anatomy, finding, rng)
        opacified.append(int((before - canvas.air > 0.3).sum()))
    assert min(opacified) >= 50, opacified
