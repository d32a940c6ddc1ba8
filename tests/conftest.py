"""Shared test setup and the helpers more than one test file uses.

The repository root is on ``sys.path`` through pyproject.toml (``[tool.pytest.ini_options]
pythonpath``); this file gives torch a small CPU thread budget. Test files import the helpers
below with ``from conftest import ...``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

torch.set_num_threads(2)

#: The repository root: the working folder of every CLI a test starts.
ROOT = Path(__file__).resolve().parents[1]


def run_python(*args: str, cwd: Path | str = ROOT, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python *args`` in a child interpreter (this one's), output captured as text, ended after ``timeout``."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


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
    """All images of a preprocessed h5 (dataset ``cxr``)."""
    with h5py.File(path, "r") as f:
        return f["cxr"][:]


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
