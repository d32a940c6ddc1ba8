"""Ground-truth region files (segmentations.py) and the regions the phantom writes for its CheXpert test
and valid sets: COCO's RLE convention, CheXlocalize's keys, masks where the findings are drawn, and
masks that line up with the h5 images."""
import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image

import phantom
import segmentations
from errors import UserError
from image_reader import load_cxr
from phantom.canvas import ANATOMY_CHANGES, LEFT, RIGHT, Canvas, anatomy_with, sample_anatomy, sample_pose
from phantom.frontal import draw_frontal_anatomy
from phantom.images import ANATOMY_REGIONS, render
from segmentations import (
    counts_from_string,
    counts_to_string,
    model_masks,
    read_segmentations,
    rle_decode,
    rle_encode,
    segmentation_key,
)

# phantom_root (conftest.py): a small phantom root, 40 CheXpert test and 15 valid studies, seed 0.
TEST_FILE = "chexpert-test/gt_segmentations.json"
VALID_FILE = "chexpert/CheXpert-v1.0-small/gt_segmentations_valid.json"
PAINTED_LABELS = [label for label in phantom.CHEXPERT_ORDER if label != "No Finding"]


# ---- the RLE --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 3), (31, 17), (0, 4)])
def test_rle_round_trips_random_empty_and_full_masks_of_odd_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in [rng.random(shape) < p for p in (0.1, 0.5, 0.9)] + [np.zeros(shape, bool), np.ones(shape, bool)]:
        rle = rle_encode(mask)
        assert rle["size"] == list(shape) and sum(rle["counts"]) == mask.size
        decoded = rle_decode(json.loads(json.dumps(rle)))
        assert decoded.dtype == bool and decoded.shape == shape and (decoded == mask).all()
    if shape[0] * shape[1]:
        assert rle_encode(np.zeros(shape, bool))["counts"] == [mask.size]
        assert rle_encode(np.ones(shape, bool))["counts"] == [0, mask.size]


def test_rle_counts_run_down_the_columns_starting_with_zeros_as_coco_does():
    # columns top to bottom: (0, 0), (1, 1), (1, 0) -> 0 0 | 1 1 1 | 0 -> runs 2, 3, 1
    assert rle_encode(np.array([[0, 1, 1], [0, 1, 0]]))["counts"] == [2, 3, 1]
    # the first pixel set: an empty run of zeros first, then 1 1 | 0 0
    assert rle_encode(np.array([[1, 0], [1, 0]])) == {"size": [2, 2], "counts": [0, 2, 2]}
    # a row-major reading would give runs 1, 1, ... : the transpose shows the difference
    mask = np.array([[1, 1, 0]])
    assert rle_encode(mask)["counts"] == [0, 2, 1] and rle_encode(mask.T)["counts"] == [0, 2, 1]
    assert rle_encode(np.array([[1, 0], [0, 1]]))["counts"] == [0, 1, 2, 1]


def test_pycocotools_reads_the_rle_as_written():
    coco = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (7, 4), (40, 33)]:
        mask = rng.random(shape) < 0.4
        ours = coco.frPyObjects(rle_encode(mask), *shape)
        assert (coco.decode(ours) == mask).all()
        assert ours["counts"] == coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


def test_compressed_rle_strings_as_chexlocalize_stores_them_decode_to_the_same_mask():
    rng = np.random.default_rng(8)
    for shape in [(1, 1), (5, 9), (64, 48), (300, 200)]:
        mask = rng.random(shape) < rng.uniform(0.05, 0.95)
        rle = rle_encode(mask)
        text = counts_to_string(rle["counts"])
        assert counts_from_string(text) == rle["counts"]
        assert (rle_decode({"size": list(shape), "counts": text}) == mask).all()
    big = np.zeros((2000, 2000), dtype=bool)
    big[700:1500, 300:1800] = True                        # runs far above 2**5, and a shrinking delta
    assert (rle_decode({"size": [2000, 2000], "counts": counts_to_string(rle_encode(big)["counts"])}) == big).all()


def test_our_compressed_strings_equal_pycocotools_encode():
    coco = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(9)
    for shape in [(3, 3), (40, 33), (256, 256)]:
        mask = rng.random(shape) < 0.3
        ours = counts_to_string(rle_encode(mask)["counts"])
        assert ours == coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def test_a_broken_compressed_string_is_a_one_line_error():
    with pytest.raises(UserError, match="ends inside a number"):
        rle_decode({"size": [2, 2], "counts": "1" + chr(48 + 0x20)})


def test_rle_decode_refuses_counts_that_do_not_fill_the_mask():
    for rle in ({"size": [2, 3], "counts": [2, 3]}, {"size": [2, 3], "counts": [7, -1]}, {"counts": [6]}):
        with pytest.raises(UserError):
            rle_decode(rle)


# ---- keys and files -------------------------------------------------------------------------------

def test_segmentation_key_is_chexlocalizes_patient_study_stem():
    for path in ("CheXpert-v1.0/test/patient64741/study1/view1_frontal.jpg",
                 "/data/chexpert-test/test/patient64741/study1/view1_frontal.jpg",
                 r"C:\data\test\patient64741\study1\view1_frontal.jpg"):
        assert segmentation_key(path) == "patient64741_study1_view1_frontal"
    assert segmentation_key("valid/patient64541/study1/view2_lateral.jpg") == "patient64541_study1_view2_lateral"
    for path in ("view1_frontal.jpg", "mimic/p10/p10000032/s50414267/abc.jpg"):
        with pytest.raises(UserError, match="not a CheXpert image path"):
            segmentation_key(path)


def test_region_files_round_trip_and_bad_ones_are_one_line_errors_naming_the_file(tmp_path):
    regions = {"patient1_study1_view1_frontal": {"Edema": rle_encode(np.eye(3, dtype=bool))},
               "patient0_study2_view2_lateral": {"Cardiomegaly": rle_encode(np.ones((2, 5), bool))}}
    path = tmp_path / "gt.json"
    segmentations.write_segmentations(path, regions)
    assert read_segmentations(path) == regions
    assert list(json.loads(path.read_text())) == sorted(regions)
    bad = {"missing.json": None, "not_json.json": "{oops", "a_list.json": "[]",
           "not_rle.json": json.dumps({"patient1_study1_view1_frontal": {"Edema": [1, 2]}}),
           "short_runs.json": json.dumps({"patient1_study1_view1_frontal": {"Edema": {"size": [2, 2], "counts": [3]}}})}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as err:
            read_segmentations(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


# ---- the regions the phantom draws ----------------------------------------------------------------

def canvas_of(view, anatomy, findings, shape, seed):
    """The canvas render() draws on for this seed (the same draws in the same order), with its anatomy."""
    rng = np.random.default_rng(seed)
    a = anatomy_with(anatomy, findings, rng)
    c = Canvas(shape, sample_pose(rng, shape, a, view), a.lung_height)
    draw_frontal_anatomy(c, a, rng)
    return c, a


def drawn_regions(view, findings, seed, shape=(224, 186)):
    anatomy = sample_anatomy(np.random.default_rng([seed, 1]), female=False)
    regions = {}
    image = render(view, anatomy, findings, shape, np.random.default_rng(seed), regions)
    return image, regions, anatomy


@pytest.mark.parametrize("view", ["PA", "LATERAL"])
def test_recording_regions_leaves_the_image_unchanged_and_a_normal_film_has_none(view):
    findings = [phantom.Finding("Pleural Effusion", 2, "left"),
                phantom.Finding("Support Devices", 3, device="pacemaker")]
    for seed in range(3):
        image, regions, anatomy = drawn_regions(view, findings, seed)
        plain = render(view, anatomy, findings, (224, 186), np.random.default_rng(seed))
        assert (plain == image).all() and set(regions) == {"Pleural Effusion", "Support Devices"}
        assert drawn_regions(view, [], seed)[1] == {}


@pytest.mark.parametrize("label", PAINTED_LABELS)
def test_every_label_drawn_alone_has_a_region_in_each_view_that_draws_it(label):
    views = ["PA", "AP"] + (["LATERAL"] if label in phantom.LATERAL_FINDINGS or label == "Cardiomegaly" else [])
    for seed, view in enumerate(views):
        for severity in (1, 3):
            finding = phantom.make_finding(label, np.random.default_rng(seed), severity=severity)
            _, regions, _ = drawn_regions(view, [finding], seed)
            assert set(regions) == {label} and regions[label].sum() >= 10, (view, finding)


@pytest.mark.parametrize("side", [RIGHT, LEFT])
def test_an_effusion_region_lies_in_the_lower_half_of_its_own_lung(side):
    for seed in range(4):
        finding = phantom.Finding("Pleural Effusion", 2, "right" if side == RIGHT else "left")
        _, regions, anatomy = drawn_regions("PA", [finding], seed)
        c, _ = canvas_of("PA", anatomy, [finding], (224, 186), seed)
        region = regions["Pleural Effusion"]
        assert region.sum() > 50
        assert (c.lung[side][region] > 0).all() and not (c.lung[-side][region] > 0.5).any()
        assert c.v[region].min() > 0.5 * c.lh


def test_the_cardiomegaly_region_is_the_heart_its_width_the_cardiothoracic_ratio():
    for seed in range(4):
        finding = phantom.Finding("Cardiomegaly", 2)
        _, regions, anatomy = drawn_regions("PA", [finding], seed)
        c, a = canvas_of("PA", anatomy, [finding], (224, 186), seed)
        region = regions["Cardiomegaly"]
        assert (region == (c.parts["heart"] >= 0.5)).all()
        columns = np.flatnonzero(region.any(axis=0))
        ratio = (columns[-1] - columns[0] + 1) / (2 * c.pose.scale)
        assert a.ctr > 0.5 and abs(ratio - a.ctr) < 0.05, (ratio, a.ctr)


def test_anatomy_regions_name_structures_the_canvas_keeps():
    findings = [phantom.Finding(label, 2) for label in ANATOMY_REGIONS]
    _, regions, anatomy = drawn_regions("PA", findings, 0)
    c, _ = canvas_of("PA", anatomy, findings, (224, 186), 0)
    assert set(ANATOMY_REGIONS.values()) <= set(c.parts) and set(regions) == set(ANATOMY_REGIONS)
    # the mediastinum region stops at the lung apices and the left dome
    rows = c.v[regions["Enlarged Cardiomediastinum"]]
    assert rows.min() >= 0.0 and rows.max() <= c.geometry[LEFT]["dome"]


# ---- the files of a phantom root ------------------------------------------------------------------

def frontal_labels_drawn_before(label):
    """The findings that change the anatomy (drawn with it, first), then those painted earlier."""
    order = list(phantom.FRONTAL_FINDINGS)
    return list(ANATOMY_CHANGES) + (order[:order.index(label)] if label in order else [])


def test_test_set_regions_match_groundtruth_positives(phantom_root):
    """Every positive the generator paints has a region on its study's frontal image, unless a finding
    drawn before it covers it (an effusion over a basal opacity, a big heart over the left base);
    negatives, and studies without any positive, have none."""
    root, _ = phantom_root
    regions = read_segmentations(root / TEST_FILE)
    with open(root / "chexpert-test" / "groundtruth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shown = hidden = 0
    for row in rows:
        folder = root / "chexpert-test" / row["Study"].replace("CheXpert-v1.0/", "")
        positives = {label for label in PAINTED_LABELS if row[label] == "1"}
        for image in folder.glob("*.jpg"):
            found = set(regions.get(segmentation_key(image), {}))
            assert found <= positives, (image, found - positives)
        frontal = set(regions.get(segmentation_key(folder / "view1_frontal.jpg"), {}))
        if not positives:   # No Finding; but a No Finding study may show a support device
            assert segmentation_key(folder / "view1_frontal.jpg") not in regions
        for label in positives - frontal:
            assert positives & set(frontal_labels_drawn_before(label)), (row["Study"], label)
        shown, hidden = shown + len(positives & frontal), hidden + len(positives - frontal)
    assert shown > 20 and hidden <= 0.1 * (shown + hidden)
    assert set(regions) <= {segmentation_key(p) for p in (root / "chexpert-test").rglob("*.jpg")}


def test_valid_set_regions_are_per_image_with_its_size_and_positives(phantom_root):
    root, _ = phantom_root
    base = root / "chexpert" / "CheXpert-v1.0-small"
    regions = read_segmentations(root / VALID_FILE)
    with open(base / "valid.csv", newline="") as f:
        rows = {segmentation_key(r["Path"]): r for r in csv.DictReader(f)}
    assert regions and set(regions) <= set(rows)
    assert any(key.endswith("lateral") for key in regions)
    for key, found in regions.items():
        row = rows[key]
        assert set(found) <= {label for label in PAINTED_LABELS if row[label] == "1.0"}
        with Image.open(root / "chexpert" / row["Path"]) as image:
            width, height = image.size
        assert all(rle["size"] == [height, width] for rle in found.values())


def test_device_masks_lie_over_the_bright_devices_of_the_h5_images(phantom_root):
    """Alignment on the phantom's own files: through model_masks, a Support Devices mask covers
    pixels of the preprocessed (h5) image that are brighter than those just around it."""
    root, _ = phantom_root
    regions = read_segmentations(root / TEST_FILE)
    paths = sorted(str(p) for p in (root / "chexpert-test").rglob("view1_frontal.jpg")
                   if "Support Devices" in regions.get(segmentation_key(p), {}))
    masks = model_masks(regions, paths, "Support Devices")
    assert len(paths) >= 3
    for path, mask in zip(paths, masks):
        image = load_cxr(path).astype(float)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
        assert image[mask].mean() > image[ring].mean() + 5, path


@pytest.mark.parametrize("size", [(300, 411), (517, 233), (64, 64)])
def test_model_masks_follow_the_resize_and_pad_of_the_h5_images(tmp_path, size):
    """A bright rectangle and its mask, in a non-square image: after load_cxr (the h5 path) and
    model_masks the mask covers the rectangle's pixels and little else."""
    width, height = size
    pixels = np.full((height, width), 20, np.uint8)
    box = np.zeros((height, width), bool)
    box[height // 5: height // 2, width // 3: width - 7] = True
    pixels[box] = 230
    path = tmp_path / "test" / "patient64741" / "study1" / "view1_frontal.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path)
    regions = {segmentation_key(path): {"Lung Lesion": rle_encode(box)}}
    other = str(tmp_path / "test" / "patient64742" / "study1" / "view1_frontal.png")
    masks = model_masks(regions, [str(path), other], "Lung Lesion", resolution=128)
    bright = load_cxr(path, resolution=128) > 125
    assert masks.shape == (2, 128, 128) and masks.dtype == bool and not masks[1].any()
    overlap = (masks[0] & bright).sum() / (masks[0] | bright).sum()
    assert overlap > 0.9, overlap
    assert not model_masks(regions, [str(path)], "Edema", resolution=128).any()
