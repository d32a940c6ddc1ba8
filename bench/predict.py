"""Bench: predict.Predictor on MIMIC-sized JPGs and DICOMs next to the same model on a preprocessed h5.

Run from the repository root:  .venv/bin/python -m bench.predict [--n 32] [--batch_size 16] [--reps 3]
On a GPU machine:  python3 -m bench.predict --device cuda --n 512 --batch_size 128 --workers 16

Generates N 2544x3056 grey JPGs (quality 95, CXR-like anatomy plus film grain, as bench.preprocess),
the same pixels as 12-bit uncompressed DICOMs (phantom.dicom.write_dicom, MONOCHROME2, one window),
and the h5 that preprocessing makes of the JPGs (data_process.img_to_hdf5). One ViT-B/32 checkpoint
(random weights) is loaded once by predict.Predictor; text embeddings are computed before any timing.
Then, interleaved A B C A B C ... for --reps repetitions, with the same batch size and workers:

- A: Predictor.predict on the JPGs (decode + resize-and-pad in worker processes, model on batches);
- B: Predictor.predict on the DICOMs;
- C: the h5 path of zero_shot.ensemble_models: raw_loader (uint8 batches) + DeviceTransform +
  image_features, then the same pair probabilities.

Also measured once: the decode-only rate (data_process.load_task in worker_pool.imap, as predict
runs it), the model-only rate on decoded 320 px pixels (Predictor.score_pixels), the model's
forward FLOPs per image (torch.utils.flop_counter; a multiply-add counts 2) and the fp32 rate of a
square matmul on this machine, to say how far the model runs from the hardware's limit.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import data_process as dp
import worker_pool
import zero_shot as zs
from bench.preprocess import HEIGHT, QUALITY, WIDTH, make_jpg
from cxr_data import DeviceTransform
from model import CLIP, MODEL_CONFIGS
from phantom.dicom import Header, Variant, write_dicom
from predict import Predictor

#: The ratio of JPG end to end to the h5 rate that issue 15 asks for on 2 cores.
TARGET_RATIO = 0.6


def make_dicom(args: tuple[str, str, int]) -> int:
    """The JPG's grey pixels as a 12-bit uncompressed DICOM; returns its size."""
    jpg, path, index = args
    grey = cv2.imread(jpg, cv2.IMREAD_GRAYSCALE)
    write_dicom(path, grey, Header(f"p{index:08d}", f"s{index:08d}", f"d{index:08d}", seed=index), Variant())
    return os.path.getsize(path)


def predict_rate(predictor: Predictor, paths: list[str]) -> float:
    """img/s of Predictor.predict end to end (decode workers started inside)."""
    start = time.perf_counter()
    table = predictor.predict(paths)
    seconds = time.perf_counter() - start
    if table["error"].notna().any():
        raise SystemExit(f"bench: some images failed to decode: {table.loc[table['error'].notna()].iloc[0].tolist()}")
    return len(paths) / seconds


def h5_rate(predictor: Predictor, h5_path: str, n: int, batch_size: int, workers: int) -> float:
    """img/s of the h5 path of zero_shot.ensemble_models with the predictor's model and text weights."""
    model, weights = predictor.models[0], predictor.weights[0]
    start = time.perf_counter()
    loader = zs.raw_loader(h5_path, batch_size, workers, predictor.device)
    features = zs.image_features(model, loader, transform=DeviceTransform(model.visual.input_resolution))
    probabilities = zs.pair_probabilities(features, weights)
    seconds = time.perf_counter() - start
    assert probabilities.shape[0] == n
    return n / seconds


def decode_rate(paths: list[str], workers: int) -> float:
    """img/s of load_cxr (read + resize-and-pad to 320) in predict's worker pool, nothing else."""
    load = partial(dp.load_task, resolution=dp.RESOLUTION, fast_decode=False, dicom_rule="mimic")
    start = time.perf_counter()
    results = list(worker_pool.imap(load, [(i, p, None) for i, p in enumerate(paths)], workers,
                                    initializer=dp.init_worker, what="decode worker"))
    seconds = time.perf_counter() - start
    assert all(pixels is not None for _, pixels, _ in results)
    return len(paths) / seconds


def model_rate(predictor: Predictor, pixels: list[np.ndarray], batch_size: int) -> float:
    """img/s of Predictor.score_pixels on already decoded 320 px images (the model alone)."""
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        predictor.score_pixels(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def forward_gflop(model: CLIP, device: torch.device) -> float:
    """GFLOP of one image through the image tower at its input resolution (multiply-add = 2)."""
    size = model.visual.input_resolution
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


def matmul_gflops(device: torch.device, size: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of a size^3 matmul on ``device``: what this hardware reaches at best."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):6.2f} [{min(rates):.2f}-{max(rates):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="generated images (default 32)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per batch, all paths (default 16)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of A B C (default 3)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="decode / h5 loader processes (default: all cores; 16 on a GPU machine)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = tempfile.mkdtemp(prefix="bench_predict_")
    try:
        jpgs = [os.path.join(tmp, f"{i:04d}.jpg") for i in range(args.n)]
        dicoms = [os.path.join(tmp, f"{i:04d}.dcm") for i in range(args.n)]
        with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            jpg_bytes = list(pool.map(make_jpg, zip(jpgs, range(args.n))))
            dicom_bytes = list(pool.map(make_dicom, zip(jpgs, dicoms, range(args.n))))
        h5_path = os.path.join(tmp, "cxr.h5")
        assert not dp.img_to_hdf5(jpgs, h5_path, num_workers=args.workers)
        torch.manual_seed(0)
        checkpoint = os.path.join(tmp, "vit-b-32.pt")
        torch.save(CLIP(**MODEL_CONFIGS["vit-b-32"]).state_dict(), checkpoint)
        predictor = Predictor(checkpoint, device=device, batch_size=args.batch_size, num_workers=args.workers,
                              precision="fp32", progress=False)
        predictor.score_pixels([np.zeros((320, 320), np.uint8)] * 2)   # warm-up: first-call allocations

        load_before = os.getloadavg()
        rates: dict[str, list[float]] = {"JPG": [], "DICOM": [], "h5": []}
        for _ in range(args.reps):
            rates["JPG"].append(predict_rate(predictor, jpgs))
            rates["DICOM"].append(predict_rate(predictor, dicoms))
            rates["h5"].append(h5_rate(predictor, h5_path, args.n, args.batch_size, args.workers))
        load_after = os.getloadavg()

        decode_jpg, decode_dicom = decode_rate(jpgs, args.workers), decode_rate(dicoms, args.workers)
        pixels = [dp.load_cxr(path) for path in jpgs]
        model_only = model_rate(predictor, pixels, args.batch_size)
        gflop = forward_gflop(predictor.models[0], device)
        peak = matmul_gflops(device)

        hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
        print(f"ViT-B/32 (random weights, fp32), 1 checkpoint, 14 labels, {args.n} images, batch {args.batch_size}, "
              f"{args.workers} workers, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
              f"{hardware}")
        print(f"inputs: {args.n} JPGs {WIDTH}x{HEIGHT} q{QUALITY} mean {np.mean(jpg_bytes) / 1e6:.2f} MB; "
              f"DICOMs 12-bit uncompressed mean {np.mean(dicom_bytes) / 1e6:.2f} MB")
        print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
              f"{args.reps} interleaved repetitions, median [min-max]\n")
        h5 = statistics.median(rates["h5"])
        print("| input | path | img/s | ratio to h5 |\n|---|---|---|---|")
        print(f"| JPG | Predictor.predict | {summary(rates['JPG'])} | {statistics.median(rates['JPG']) / h5:.2f} |")
        print(f"| DICOM | Predictor.predict | {summary(rates['DICOM'])} | "
              f"{statistics.median(rates['DICOM']) / h5:.2f} |")
        print(f"| h5 | raw_loader + image_features | {summary(rates['h5'])} | 1.00 |\n")
        print(f"decode only (load_cxr, {args.workers} workers): JPG {decode_jpg:.2f} img/s, "
              f"DICOM {decode_dicom:.2f} img/s")
        print(f"model only (score_pixels on decoded pixels): {model_only:.2f} img/s x {gflop:.2f} GFLOP/img "
              f"(image tower forward) = {model_only * gflop:.1f} GFLOP/s; fp32 2048^3 matmul {peak:.1f} GFLOP/s "
              f"({100 * model_only * gflop / peak:.0f}% of it)")
        ratio = statistics.median(rates["JPG"]) / h5
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(f"JPG end to end / h5 = {ratio:.2f}: {verdict} the {TARGET_RATIO:.0%} target")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
