"""Image data in one module: one lazy h5 handle safe across processes, one device-side transform, one
default device, one key; the readers stay importable where researchers found them."""
import multiprocessing
import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import clip
import cxr_data
import train
import zero_shot
from conftest import ROOT
from cxr_data import H5_KEY


@pytest.fixture(scope="module")
def h5(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("h5") / "cxr.h5"
    images = np.random.default_rng(0).integers(0, 256, (10, 40, 40), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset(H5_KEY, data=images)
    return path, images


def _read_row(handle: cxr_data.H5Images, row: int, queue) -> None:
    queue.put(handle[row].tolist())


def test_a_handle_opened_before_a_fork_is_reopened_in_the_child_and_never_pickled(h5) -> None:
    path, images = h5
    handle = cxr_data.H5Images(path)
    np.testing.assert_array_equal(handle[3], images[3])           # opened in this process
    assert pickle.loads(pickle.dumps(handle))._file is None          # what a spawned worker receives
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_row, args=(handle, 7, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and got == images[7].tolist()
    np.testing.assert_array_equal(handle[7], images[7])           # the parent's handle still reads


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_readers_read_the_file_in_worker_processes_after_the_parent_read_it(h5, context) -> None:
    path, images = h5
    batches = cxr_data.H5Batches(path, batch_size=4)
    assert batches[0]["img"].shape == (4, 1, 40, 40)               # the parent opened the file
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=2, multiprocessing_context=context)
    np.testing.assert_array_equal(torch.cat([b["img"] for b in loader])[:, 0].numpy(), images)


def test_the_device_transform_is_the_per_image_transform_of_the_original(h5) -> None:
    """Raw batches through :class:`cxr_data.DeviceTransform` equal the original's per-image transform,
    bit for bit, whether the pixels come as [B, H, W] (training) or [B, 1 or 3, H, W] (zero-shot)."""
    path, images = h5
    for resolution in (32, 40, 224):
        per_image = torch.cat([b["img"] for b in cxr_data.make_loader(path, resolution, batch_size=3, num_workers=0)])
        raw = torch.cat([b["img"] for b in cxr_data.raw_loader(path, batch_size=4, num_workers=0)])
        assert torch.equal(cxr_data.DeviceTransform(resolution)(raw.float().expand(-1, 3, -1, -1)), per_image)
        assert torch.equal(cxr_data.device_transform(raw[:, 0], resolution), per_image)
        assert torch.equal(cxr_data.device_transform(torch.from_numpy(images).float(), resolution), per_image)


def test_zero_shot_scores_raw_batches_with_the_device_transform_as_per_image_batches(h5) -> None:
    path, _ = h5
    torch.manual_seed(0)
    model = clip.load_model(config=dict(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=64,
                                        vision_patch_size=8, context_length=77, vocab_size=49408,
                                        transformer_width=64, transformer_heads=1, transformer_layers=1))
    labels, pair = ["Edema", "Pleural Effusion"], ("{}", "no {}")
    per_image = zero_shot.run_softmax_eval(model, cxr_data.make_loader(path, 32, 3, num_workers=0), labels, pair)
    raw = zero_shot.run_softmax_eval(model, cxr_data.raw_loader(path, batch_size=3, num_workers=0), labels, pair,
                                     transform=cxr_data.DeviceTransform(32))
    np.testing.assert_array_equal(raw, per_image)


def test_one_default_device_rule(monkeypatch) -> None:
    assert train.default_device is zero_shot.default_device is cxr_data.default_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cxr_data.default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert cxr_data.default_device() == torch.device("cuda", 1)     # the current device, with its index


def test_the_readers_stay_importable_where_they_were() -> None:
    assert zero_shot.CXRTestDataset is cxr_data.CXRTestDataset and zero_shot.H5Batches is cxr_data.H5Batches
    assert zero_shot.make_loader is cxr_data.make_loader and zero_shot.raw_loader is cxr_data.raw_loader
    assert zero_shot.h5_length is cxr_data.h5_rows and train.h5_rows is cxr_data.h5_rows
    assert train.CXRDataset is cxr_data.CXRDataset and train.load_data is cxr_data.load_data
    assert train.PairBatches is cxr_data.PairBatches and train.device_transform is cxr_data.device_transform


def test_the_original_dataset_reads_images_and_captions(h5, tmp_path) -> None:
    path, images = h5
    csv = tmp_path / "reports.csv"
    pd.DataFrame({"report": ["small effusion", np.nan] * 5}).to_csv(csv, index=False)
    dataset = train.CXRDataset(img_path=str(path), txt_path=str(csv), column="report", size=4)
    item = dataset[1]
    assert len(dataset) == 4 and item["txt"] == " " and item["img"].shape == (3, 40, 40)
    np.testing.assert_array_equal(item["img"][2].numpy(), images[1].astype(np.float32))


def test_no_module_types_the_h5_key() -> None:
    """Every module reads and writes the images under :data:`cxr_data.H5_KEY`, none types the key."""
    literal = re.compile(r"""\[\s*["']cxr["']\s*\]|create_dataset\(\s*["']cxr["']""")
    # test_original_api checks that the original's calls write the original's format, by its name.
    allowed = {"tests/test_original_api.py"}
    files = [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("phantom/*.py"), *ROOT.glob("tests/*.py")]
    offenders = sorted(str(p.relative_to(ROOT)) for p in files if literal.search(p.read_text()))
    assert [name for name in offenders if name not in allowed] == []
    assert H5_KEY == "cxr"  # the original's name, which the released h5 files use
