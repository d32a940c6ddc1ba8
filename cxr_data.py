"""Chest X-ray image data in HDF5: the one place that opens a preprocessed h5 and checks it.

A preprocessed file holds one dataset, ``cxr`` (:data:`H5_KEY`), of shape (N, H, W), uint8 or
float32, with grey values 0..255 (the original wrote float32 0..255; this project writes
uint8). :func:`h5_rows` is what every reader calls first: it names the file and says what to
do when the file is missing, holds no ``cxr``, has the wrong shape, or holds values outside
0..255 (for example a float file scaled to 0..1, which would train and score on near-black
images without a word).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from errors import UserError

H5_KEY = "cxr"
#: rows read to check the value range (spread evenly over the file; cheap for any size)
RANGE_SAMPLE_ROWS = 16


def _check_range(path: str | Path, images: h5py.Dataset) -> None:
    """Refuse a float h5 whose values are not on the 0..255 grey scale (a sample of rows)."""
    if images.dtype == np.uint8 or len(images) == 0:
        return
    rows = np.unique(np.linspace(0, len(images) - 1, min(RANGE_SAMPLE_ROWS, len(images))).astype(int))
    sample = np.stack([np.asarray(images[r], dtype=np.float64) for r in rows])
    if not np.isfinite(sample).all():
        raise UserError(f"{path}: '{H5_KEY}' holds NaN or infinite values; re-run preprocessing")
    low, high = float(sample.min()), float(sample.max())
    if low < 0 or high > 255:
        raise UserError(f"{path}: '{H5_KEY}' values span {low:g}..{high:g}, expected grey levels 0..255 "
                        "(preprocess_train_data.py writes them); rescale the file or re-run preprocessing")
    if 0 < high <= 1:
        raise UserError(f"{path}: '{H5_KEY}' is {images.dtype} with values in 0..{high:g}, i.e. scaled to 0..1; "
                        "CheXzero expects grey levels 0..255: multiply by 255 or re-run preprocessing")


def h5_rows(cxr_filepath: str | Path, check_range: bool = True) -> int:
    """Number of images in a preprocessed h5, after checking the file, its key, shape and value range."""
    path = Path(cxr_filepath)
    if not path.is_file():
        raise UserError(f"{path}: no such h5 file; preprocess the images first (preprocess_train_data.py)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err}); re-run preprocessing") from None
    with f:
        if H5_KEY not in f:
            raise UserError(f"{path}: no dataset '{H5_KEY}' (it holds {list(f.keys())}); was it written by "
                            "preprocess_train_data.py?")
        images = f[H5_KEY]
        if not isinstance(images, h5py.Dataset) or images.ndim != 3:
            raise UserError(f"{path}: '{H5_KEY}' has shape {getattr(images, 'shape', None)}, expected (N, H, W)")
        if images.dtype not in (np.uint8, np.float32, np.float64):
            raise UserError(f"{path}: '{H5_KEY}' has type {images.dtype}, expected uint8 or float32 grey levels")
        if check_range:
            _check_range(path, images)
        return len(images)
