"""Bench: the original zero-shot loop vs zero_shot.run_softmax_eval, ViT-B/32, 14 labels, same CPU, same run.

Run from the repository root:  .venv/bin/python -m bench.zero_shot [--n_images 24] [--batch_size 32]
On a GPU machine:  python3 -m bench.zero_shot --device cuda --n_images 512 --batch_size 256 --num_workers 8

The baseline re-implements the original's path with our model: a batch-1 DataLoader, the text
encoder called once per class, and every image encoded twice (one pass for "{}", one for
"no {}"). Ours: one batched pass over the images and one text pass for all 28 prompts. Both use
random ViT-B/32 weights on a synthetic uint8 h5 (N x 320 x 320); ours reads it as ensemble_models
does (contiguous uint8 batches, normalise + resize batched on the model's device). Prints img/s for both (text
encoding included, as a user waits for it), the speedup, and the largest difference of the scores.
"""
import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import clip
import cxr_data
import zero_shot as zs
from labels import CHEXPERT_EVAL_ORDER, PAIR_TEMPLATE
from model import CLIP, MODEL_CONFIGS


def original_zeroshot_classifier(classnames, template, model, device):
    """One class at a time: tokenize, encode, normalise, average, normalise; stacked [D, C]."""
    weights = []
    with torch.no_grad():
        for classname in classnames:
            embedding = model.encode_text(clip.tokenize([template.format(classname)]).to(device))
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
            embedding = embedding.mean(dim=0)
            weights.append(embedding / embedding.norm())
    return torch.stack(weights, dim=1)


def original_predict(loader, model, weights, device):
    """Batch size 1: encode, normalise, dot with the class weights, squeeze; (N, C)."""
    rows = []
    with torch.no_grad():
        for batch in loader:
            features = model.encode_image(batch["img"].to(device))
            features = features / features.norm(dim=-1, keepdim=True)
            rows.append(np.squeeze((features @ weights).cpu().numpy(), axis=0))
    return np.array(rows)


def original_softmax_eval(model, loader, labels, pair, device):
    """Two full passes over the images (positive, then negative template), then the 2-way softmax.

    Returns (probabilities, seconds spent in the text encoder, seconds spent on the images).
    """
    start = time.perf_counter()
    pos_weights = original_zeroshot_classifier(labels, pair[0], model, device)
    neg_weights = original_zeroshot_classifier(labels, pair[1], model, device)
    text_s = time.perf_counter() - start
    start = time.perf_counter()
    pos = original_predict(loader, model, pos_weights, device)
    neg = original_predict(loader, model, neg_weights, device)
    image_s = time.perf_counter() - start
    return np.exp(pos) / (np.exp(pos) + np.exp(neg)), text_s, image_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_images", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_workers", type=int, default=0, help="loader processes for ours (baseline: 0)")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = CLIP(**MODEL_CONFIGS["vit-b-32"]).eval().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        h5_path = Path(tmp) / "bench.h5"
        with h5py.File(h5_path, "w") as f:
            f[cxr_data.H5_KEY] = np.random.default_rng(0).integers(0, 256, (args.n_images, 320, 320), dtype=np.uint8)
        transform = clip.cxr_transform(224)
        with torch.no_grad():  # warm-up, so neither path pays for first-call allocations
            model.encode_image(F.interpolate(torch.zeros(2, 3, 320, 320, device=device), size=224))
            model.encode_text(clip.tokenize(["warm up"]).to(device))

        loader = zs.raw_loader(h5_path, batch_size=args.batch_size, num_workers=args.num_workers, device=device)
        start = time.perf_counter()  # the path ensemble_models takes: raw uint8 batches, transform on the device
        ours = zs.run_softmax_eval(model, loader, CHEXPERT_EVAL_ORDER, PAIR_TEMPLATE, transform=transform)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()  # our text part alone (all 28 prompts), to split the total
        zs.zeroshot_classifier(CHEXPERT_EVAL_ORDER + [f"no {c}" for c in CHEXPERT_EVAL_ORDER], ["{}"], model)
        ours_image_s = ours_s - (time.perf_counter() - start)

        baseline_loader = DataLoader(zs.CXRTestDataset(h5_path, transform=transform), batch_size=1, shuffle=False)
        original, original_text_s, original_image_s = original_softmax_eval(
            model, baseline_loader, CHEXPERT_EVAL_ORDER, PAIR_TEMPLATE, device)
        original_s = original_text_s + original_image_s

    n = args.n_images
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"ViT-B/32 (random weights, fp32), {n} images x 14 labels, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {hardware}")
    print(f"original loop (batch 1, images encoded twice, text per class): {original_s:6.1f} s  "
          f"{n / original_s:6.2f} img/s  (images alone: {n / original_image_s:.2f} img/s, "
          f"text {original_text_s:.1f} s)")
    print(f"zero_shot.run_softmax_eval (batch {args.batch_size}, images encoded once, "
          f"{args.num_workers} workers): {ours_s:6.1f} s  "
          f"{n / ours_s:6.2f} img/s  (images alone: {n / ours_image_s:.2f} img/s)")
    print(f"speedup: {original_s / ours_s:.1f}x end to end, {original_image_s / ours_image_s:.1f}x on the images; "
          f"max |p_ours - p_original| = {np.abs(ours - original).max():.2e}")


if __name__ == "__main__":
    main()
