"""Bench: image preprocessing throughput (img/s) and output size (bytes/img) of data_process.

Run from the repository root:  .venv/bin/python -m bench.preprocess [--n 200]

Generates N MIMIC-sized JPGs (2544x3056, quality 95, CXR-like smooth anatomy plus film grain,
about 1.5 MB each) once into a temporary folder, then times ``data_process.img_to_hdf5`` on them:
the exact path with 1 worker and with all cores, the original float32 layout, and
``fast_decode``; and reports how far fast_decode's pixels are from the exact ones.

Two rates per configuration: "wall" = N / total time, including starting the worker processes
(about 1-2 s with spawn); "steady" = (N - N/2) / (time for N - time for N/2), which cancels the
fixed start-up cost and is the rate a long MIMIC run sees.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import h5py
import numpy as np

import data_process as dp

WIDTH, HEIGHT, QUALITY = 2544, 3056, 95


def make_jpg(args: tuple[str, int]) -> int:
    """One CXR-like JPG: bright mediastinum, darker lung fields, ribs, grain. Returns its size."""
    path, seed = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    u, v = (xx - WIDTH / 2) / (WIDTH / 2), yy / HEIGHT
    lungs = np.exp(-((np.abs(u) - 0.45) / 0.25) ** 2 - ((v - 0.45) / 0.3) ** 2)
    ribs = 0.5 + 0.5 * np.sin(v * 60 + np.abs(u) * 6 + seed)
    img = 200 - 110 * lungs + 18 * ribs * lungs - 40 * np.clip(np.abs(u) - 0.9, 0, 1) * 10
    grain = cv2.GaussianBlur(rng.normal(0, 10, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 1.0)
    img = np.clip(img + grain, 0, 255).astype(np.uint8)
    cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    return os.path.getsize(path)


def timed_run(paths: list[str], out: str, **kwargs) -> tuple[float, int]:
    """Seconds for img_to_hdf5 and the size of the file it wrote."""
    start = time.perf_counter()
    failures = dp.img_to_hdf5(paths, out, **kwargs)
    seconds = time.perf_counter() - start
    assert not failures, failures
    return seconds, os.path.getsize(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="number of generated images (default 200)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="'all workers' count (default: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="bench_preprocess_")
    try:
        paths = [os.path.join(tmp, f"{i:04d}.jpg") for i in range(args.n)]
        with ProcessPoolExecutor(args.workers) as pool:
            jpg_bytes = list(pool.map(make_jpg, zip(paths, range(args.n))))
        print(f"{args.n} JPGs {WIDTH}x{HEIGHT} q{QUALITY}, mean {np.mean(jpg_bytes) / 1e6:.2f} MB; "
              f"{os.cpu_count()} cores, load average before the runs {os.getloadavg()[0]:.1f}")

        runs = [("exact", 1, "uint8", False), ("exact", args.workers, "uint8", False),
                ("exact (original float32 layout)", args.workers, "float32", False),
                ("fast_decode", 1, "uint8", True), ("fast_decode", args.workers, "uint8", True)]
        outputs = {}
        half = args.n // 2
        print("| path | workers | dtype | wall img/s | steady img/s | bytes/img |\n|---|---|---|---|---|---|")
        for name, workers, dtype, fast in runs:
            out = os.path.join(tmp, f"{name.split()[0]}_{workers}_{dtype}.h5")
            options = dict(num_workers=workers, dtype=dtype, fast_decode=fast)
            seconds_half, _ = timed_run(paths[:half], out, **options)
            seconds, size = timed_run(paths, out, **options)
            outputs[(fast, dtype)] = out
            print(f"| {name} | {workers} | {dtype} | {args.n / seconds:.1f} | "
                  f"{(args.n - half) / (seconds - seconds_half):.1f} | {size / args.n:,.0f} |", flush=True)

        with h5py.File(outputs[(False, "uint8")], "r") as a, h5py.File(outputs[(True, "uint8")], "r") as b:
            exact, fast = a[dp.H5_KEY][:].astype(np.int16), b[dp.H5_KEY][:].astype(np.int16)
        diff = np.abs(exact - fast)
        content = exact > 0     # the resized image, not the zero padding (identical in both)
        print(f"fast_decode vs exact: max |diff| {diff.max()}, mean {diff.mean():.3f} over all pixels, "
              f"{diff[content].mean():.3f} over image pixels; "
              f"{100 * (diff > 2).mean():.2f}% of pixels differ by more than 2")
        print(f"load average after the runs {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
