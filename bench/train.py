"""Training throughput: the original CheXzero loop against ours, per precision/compile setting.

Prints the device, then one row per setting: pairs/s (data loading included), peak memory
and model FLOP utilisation. Synthetic data (smooth uint8 images, report-like captions) is
generated once into a temporary folder; nothing is downloaded.

    python -m bench.train                                   # CPU: original vs fp32 vs fp32+compile, ViT-B/32, B=16
    python -m bench.train --device cuda --batch_size 256 --settings fp32,amp_bf16,amp_bf16+compile --loader

Settings: ``original`` is the original loop (per-image float32 h5 reads, per-sample CPU
normalise + resize, the tokenizer rebuilt every batch, no workers, fp32); the others are
``train.py``'s path (uint8 batch reads in workers, device-side transform, cached tokens)
at a precision, optionally ``+compile``.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import clip
import train
from cxr_data import H5_KEY
from model import CLIP, MODEL_CONFIGS
from simple_tokenizer import SimpleTokenizer

PHRASES = ["no acute cardiopulmonary process", "small left pleural effusion", "moderate cardiomegaly",
           "mild pulmonary edema", "right lower lobe consolidation", "bibasilar atelectasis",
           "endotracheal tube terminates 4 cm above the carina", "no pneumothorax", "stable mediastinal contours"]


def make_data(folder: Path, n: int, with_float32: bool, seed: int = 0) -> tuple[Path, Path, Path]:
    """uint8 (and, for the original loop, float32) h5 files of n smooth 320x320 images, and a
    caption CSV."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 40, 40)).astype(np.float32)
    tiles = torch.nn.functional.interpolate(torch.from_numpy(base)[:, None], size=(320, 320), mode="bilinear")[:, 0]
    uint8 = folder / "cxr_uint8.h5"
    float32 = folder / "cxr_float32.h5"
    with h5py.File(uint8, "w") as fu:
        du = fu.create_dataset(H5_KEY, (n, 320, 320), dtype="uint8", chunks=(1, 320, 320))
        for start in range(0, n, 256):
            stop = min(n, start + 256)
            block = (tiles[np.arange(start, stop) % 8].numpy() + rng.normal(0, 8, (stop - start, 320, 320)))
            du[start:stop] = block.clip(0, 255).astype(np.uint8)
    if with_float32:                                    # the original's h5 layout: float32, contiguous
        with h5py.File(uint8, "r") as fu, h5py.File(float32, "w") as ff:
            ff.create_dataset(H5_KEY, data=fu[H5_KEY][:].astype(np.float32))
    captions = [" ".join(rng.choice(PHRASES, size=3, replace=False)) for _ in range(n)]
    csv = folder / "impressions.csv"
    pd.DataFrame({"filename": [f"s{i}.txt" for i in range(n)], "impression": captions}).to_csv(csv, index=False)
    return uint8, float32, csv


def flops_per_pair(model: CLIP, device: torch.device) -> float:
    """FLOPs of one forward + backward per image-caption pair, counted by PyTorch."""
    res = model.visual.input_resolution
    images = torch.randn(2, 3, res, res, device=device)
    tokens = torch.randint(1, 49405, (2, model.context_length), device=device)
    tokens[:, -1] = 49407
    with FlopCounterMode(display=False) as counter:
        train.clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def original_loop(model: CLIP, float32_h5: Path, csv: Path, config: Namespace, device: torch.device):
    """The original's loop: yields after every optimizer step."""
    dataset = train.CXRDataset(str(float32_h5), str(csv), column="impression",
                               transform=clip.cxr_transform(model.visual.input_resolution))
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    while True:
        for batch in loader:
            tokenizer = SimpleTokenizer()                       # rebuilt every batch, as the original
            rows = [[tokenizer.encoder["<|startoftext|>"]] + tokenizer.encode(t) + [tokenizer.encoder["<|endoftext|>"]]
                    for t in batch["txt"]]
            texts = torch.zeros(len(rows), model.context_length, dtype=torch.long)
            for i, row in enumerate(rows):
                row = row[:model.context_length]
                row[-1] = tokenizer.encoder["<|endoftext|>"]
                texts[i, :len(row)] = torch.tensor(row)
            images, texts = batch["img"].to(device), texts.to(device)
            per_image, per_text = model(images, texts)
            labels = torch.arange(len(images), device=device)
            loss = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield len(images)


def our_loop(model: CLIP, uint8_h5: Path, csv: Path, config: Namespace, precision: str, compiled: bool,
             device: torch.device):
    """train.py's step with its data path; yields after every optimizer step."""
    run_config = Namespace(device=str(device), precision=precision, optimizer="sgd", lr=1e-4, momentum=0.9,
                           weight_decay=None, gather_with_grad=False, local_loss=False, grad_clip=None,
                           clamp_logit_scale=False)
    rt = train.setup_runtime(run_config)
    optimizer = train.make_optimizer(run_config, model, device)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.use_scaler)
    net = train.Features(model, trim_text=not compiled)
    if compiled:
        net = torch.compile(net)
    tokens = train.caption_tokens(csv, model.context_length)
    batches, epoch = [], 0
    while len(batches) < config.warmup + config.steps:      # one loader for the whole run, as train.py
        batches += train.epoch_batches(len(tokens), config.batch_size, epoch, seed=0)
        epoch += 1
    images: str | np.ndarray = str(uint8_h5)
    if config.data_in_memory:
        with h5py.File(uint8_h5, "r") as f:
            images = f[H5_KEY][:]
    loader = train.pair_loader(images, tokens, batches, config.num_workers, device)
    for imgs, txt in loader:
        imgs = train.device_transform(imgs.to(device, non_blocking=True), model.visual.input_resolution)
        train.train_step(net, model, [(imgs, txt.to(device, non_blocking=True))], optimizer, scaler, run_config, rt)
        yield imgs.shape[0]


def measure(steps_iter, warmup: int, steps: int, device: torch.device) -> float:
    """pairs/s over ``steps`` steps after ``warmup`` steps."""
    for _ in range(warmup):
        next(steps_iter)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, pairs = time.perf_counter(), 0
    for _ in range(steps):
        pairs += next(steps_iter)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return pairs / (time.perf_counter() - start)


def loader_rate(uint8_h5: Path, csv: Path, config: Namespace, device: torch.device, resolution: int) -> float:
    """Images/s of the input pipeline alone (read, transfer, device transform)."""
    tokens = train.caption_tokens(csv, 77)
    batches = train.epoch_batches(len(tokens), config.batch_size, 0, seed=0)
    loader = train.pair_loader(str(uint8_h5), tokens, batches, config.num_workers, device)
    start, n = time.perf_counter(), 0
    for imgs, _ in loader:
        out = train.device_transform(imgs.to(device, non_blocking=True), resolution)
        n += out.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def parity(uint8_h5: Path, csv: Path, config: Namespace, device: torch.device) -> None:
    """bf16 autocast loss against fp32 on one fixed batch, and the device transform against the
    original per-sample CPU transform."""
    torch.manual_seed(0)
    model = CLIP(**MODEL_CONFIGS[config.model_config]).to(device)
    tokens = train.caption_tokens(csv, model.context_length)
    images, texts = train.PairBatches(str(uint8_h5), tokens, [np.arange(min(64, len(tokens)))])[0]
    resolution = model.visual.input_resolution
    on_device = train.device_transform(images.to(device), resolution)
    per_sample = torch.stack([clip.cxr_transform(resolution)(img.float()[None].repeat(3, 1, 1)) for img in images])
    losses = {}
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses[dtype] = train.clip_loss(*train.Features(model)(on_device, texts.to(device))).item()
    rel = abs(losses[torch.bfloat16] - losses[None]) / abs(losses[None])
    print(f"parity: fp32 loss {losses[None]:.5f}, bf16 autocast loss {losses[torch.bfloat16]:.5f}, relative "
          f"difference {rel:.2e} (target < 1e-2); device transform vs per-sample CPU transform: max abs "
          f"difference {(on_device.cpu() - per_sample).abs().max().item():.2e} (target <= 1e-5)", flush=True)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20     # process peak RSS (KiB -> GiB)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model_config", default="vit-b-32", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--settings", default=None,
                   help="comma list of original, fp32, amp_bf16, amp_fp16, each optionally +compile "
                        "(default: CPU original,fp32,fp32+compile; CUDA fp32,amp_bf16,amp_bf16+compile)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (compile happens here)")
    p.add_argument("--images", type=int, default=None, help="synthetic images (default: enough for one pass)")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--loader", action="store_true", help="also time the input pipeline alone")
    p.add_argument("--data_in_memory", action="store_true", help="our settings read the images from RAM, as "
                   "run_train.py --data_in_memory")
    p.add_argument("--parity", action="store_true", help="check bf16 loss and device transform parity first")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s for MFU (default 790 on H100/H200, the figure the project "
                        "plans with and that an 8192^3 bf16 matmul reaches there; none on CPU)")
    config = p.parse_args()
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    default_settings = "fp32,amp_bf16,amp_bf16+compile" if cuda else "original,fp32,fp32+compile"
    settings = (config.settings or default_settings).split(",")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    peak = config.peak_tflops or (790.0 if cuda and ("H100" in name or "H200" in name) else None)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    n = config.images or config.batch_size * (config.warmup + config.steps)
    print(f"device: {name}; torch {torch.__version__}; model {config.model_config}; batch {config.batch_size}; "
          f"{n} synthetic images; {config.num_workers} loader workers", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        uint8_h5, float32_h5, csv = make_data(Path(tmp), n, with_float32="original" in settings)
        if config.parity:
            parity(uint8_h5, csv, config, device)
        torch.manual_seed(0)
        flops = flops_per_pair(CLIP(**MODEL_CONFIGS[config.model_config]).to(device), device)
        print(f"model FLOPs per pair (forward + backward): {flops / 1e9:.1f} GFLOP"
              + (f"; MFU against {peak:.0f} TFLOP/s" if peak else ""), flush=True)
        print(f"{'setting':<22}{'pairs/s':>10}{'peak mem GiB':>14}{'MFU':>8}", flush=True)
        results, failed = {}, []
        for setting in settings:
            precision, _, compiled = setting.partition("+")
            torch.manual_seed(0)
            model = CLIP(**MODEL_CONFIGS[config.model_config]).to(device).train()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            if precision == "original":
                steps = original_loop(model, float32_h5, csv, config, device)
            else:
                steps = our_loop(model, uint8_h5, csv, config, precision, bool(compiled), device)
            try:
                rate = measure(steps, config.warmup, config.steps, device)
            except Exception as err:   # one broken setting must not hide the others' figures
                failed.append(setting)
                print(f"{setting:<22} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
                continue
            results[setting] = rate
            mfu = f"{100 * rate * flops / (peak * 1e12):.1f}%" if peak else "n/a"
            print(f"{setting:<22}{rate:>10.1f}{peak_memory_gib(device):>14.2f}{mfu:>8}", flush=True)
            del steps, model
            if cuda:
                torch.cuda.empty_cache()
        if "original" in results:
            best = max((r, s) for s, r in results.items() if s != "original")
            print(f"fastest ({best[1]}) vs original: {best[0] / results['original']:.2f}x", flush=True)
        if config.loader:
            resolution = MODEL_CONFIGS[config.model_config]["image_resolution"]
            print(f"input pipeline alone: {loader_rate(uint8_h5, csv, config, device, resolution):.0f} images/s",
                  flush=True)
    if failed:
        sys.exit(f"failed settings: {', '.join(failed)}")


if __name__ == "__main__":
    main()
