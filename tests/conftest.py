"""Shared test setup and the helpers more than one test file uses.

The repository root is on ``sys.path`` through pyproject.toml (``[tool.pytest.ini_options]
pythonpath``); this file gives torch a small CPU thread budget. Test files import the helpers
below with ``from conftest import ...``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cxr_data import H5_KEY
from model import CLIP

torch.set_num_threads(2)

#: The repository root: the working folder of every CLI a test starts.
ROOT = Path(__file__).resolve().parents[1]


def run_python(*args: str, cwd: Path | str = ROOT, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python *args`` in a child interpreter (this one's), output captured as text, ended after ``timeout``."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc <repo>/script *args`` on one node (gloo on the CPU, one thread
    a rank, a free loopback port), output captured as text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def env_with_path(*folders: Path | str) -> dict[str, str]:
    """This process's environment with ``folders`` (default: the repository root) on PYTHONPATH, for a
    child interpreter that runs a script from outside the repository."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(f) for f in folders or (ROOT,))}


def kill_9_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 60, cwd: Path | str = ROOT) -> int:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds, and return its exit status. Fails if
    the run ends (or ``timeout`` passes) before that: a run that finished was not interrupted."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def read_h5(path: Path | str) -> np.ndarray:
    """All images of a preprocessed h5 (dataset :data:`cxr_data.H5_KEY`)."""
    with h5py.File(path, "r") as f:
        return f[H5_KEY][:]


def mimic_args(root: Path, out: Path, *extra: str) -> list[str]:
    """preprocess_train_data.py's flags for a MIMIC tree laid out as the releases (the phantom's, or
    a test's) under ``root``, writing into ``out`` with one worker."""
    return ["--chest_x_ray_path", str(root / "mimic-cxr-jpg/2.0.0/files"),
            "--radiology_reports_path", str(root / "mimic-cxr/2.0.0/files"),
            "--cxr_out_path", str(out / "cxr.h5"), "--csv_out_path", str(out / "cxr_paths.csv"),
            "--mimic_impressions_path", str(out / "mimic_impressions.csv"), "--num_workers", "1", *extra]


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> tuple[Path, dict]:
    """A small phantom root (every dataset, seed 0) and its manifest, generated once per session."""
    import phantom

    root = tmp_path_factory.mktemp("phantom")
    manifest = phantom.generate(root, studies=40, seed=0, test_studies=40, valid_studies=15, padchest_images=12,
                                workers=2)
    return root, manifest


# --------------------------------------------------------------------------- small models and files
#: A small CLIP (2 layers, width 64, 32 px) whose forward pass takes milliseconds on a CPU.
SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
             transformer_layers=2)
#: Images in :func:`write_h5`'s and :func:`write_labels`' files by default.
N = 12


def small_clip(seed: int = 0) -> CLIP:
    """A :data:`SMALL` CLIP with the seed's initial weights, in eval mode."""
    torch.manual_seed(seed)
    return CLIP(**SMALL).eval()


def save_clip(path, seed: int) -> str:
    """Save :func:`small_clip`'s weights to ``path`` (a plain state dict, as the released files)."""
    torch.save(small_clip(seed).state_dict(), path)
    return str(path)


def write_h5(path, n: int = N, dtype=np.uint8, seed: int = 0) -> str:
    """A preprocessed-style h5 of ``n`` random 320 x 320 grey-level images."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 320, 320)).astype(dtype)
    with h5py.File(path, "w") as f:
        f.create_dataset(H5_KEY, data=pixels)
    return str(path)


def write_labels(path, labels, n: int = N, seed: int = 0, key: str = "Study") -> str:
    """A label CSV with a key column and 0/1 labels; rows 0 and 1 make both classes present."""
    y = np.random.default_rng(seed).integers(0, 2, (n, len(labels)))
    y[0], y[1] = 1, 0
    table = pd.DataFrame(y, columns=labels)
    table.insert(0, key, [f"CheXpert-v1.0/test/patient{64741 + i}/study1" for i in range(n)])
    table.to_csv(path, index=False)
    return str(path)


# --------------------------------------------------------------------------- training runs
# A very small CLIP so a step takes milliseconds on a CPU.
MICRO = ["--random_init", "--model_config", "tiny", "--image_resolution", "32", "--vision_patch_size", "8",
         "--vision_width", "64", "--vision_layers", "1", "--transformer_width", "64", "--transformer_layers", "1",
         "--embed_dim", "32", "--num_workers", "0", "--device", "cpu"]
CAPTIONS = ["no acute cardiopulmonary process", "large left pleural effusion", "moderate cardiomegaly",
            "right lower lobe consolidation"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """64 uint8 images whose bright square's position depends on the caption."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (64, 320, 320), dtype=np.uint8)
    captions = []
    for i in range(64):
        k = i % 4
        images[i, 40 + 60 * k: 120 + 60 * k, 100:220] = 230
        captions.append(CAPTIONS[k])
    with h5py.File(root / "cxr.h5", "w") as f:
        f.create_dataset(H5_KEY, data=images, chunks=(1, 320, 320))
    pd.DataFrame({"filename": [f"s{i}.txt" for i in range(64)], "impression": captions}).to_csv(
        root / "impressions.csv", index=False)
    return root / "cxr.h5", root / "impressions.csv"
