"""Train CheXzero: CLIP on chest X-rays paired with their report impressions.

    python run_train.py --cxr_filepath data/cxr.h5 --txt_filepath data/mimic_impressions.csv

The original's flags and defaults are kept (OpenAI ViT-B/32 start, SGD momentum 0.9, constant
LR 1e-4, batch 16, 4 epochs, a checkpoint every 100 steps). Everything else is an option.
More GPUs: ``torchrun --nproc_per_node 8 run_train.py ... --gather_with_grad``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from model import MODEL_CONFIGS
import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    orig = p.add_argument_group("original CheXzero flags")
    orig.add_argument("--cxr_filepath", default="data/cxr.h5", help="h5 of images (dataset 'cxr', uint8 or float32)")
    orig.add_argument("--txt_filepath", default="data/mimic_impressions.csv", help="CSV with an 'impression' column, row-aligned with the h5")
    orig.add_argument("--batch_size", type=int, default=16, help="images per step (per process under torchrun)")
    orig.add_argument("--epochs", type=int, default=4)
    orig.add_argument("--lr", type=float, default=1e-4)
    orig.add_argument("--save_interval", type=int, default=100, help="steps between checkpoint_{step}.pt saves")
    orig.add_argument("--log_interval", type=int, default=10, help="steps between loss log lines")
    orig.add_argument("--save_dir", default="checkpoints/")
    orig.add_argument("--seed", type=int, default=1234, help="seeds init, data order and RNGs (the original ignored it)")
    orig.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="sgd (momentum) or adam (AdamW)")
    orig.add_argument("--momentum", type=float, default=0.9)
    orig.add_argument("--context_length", type=int, default=77)
    orig.add_argument("--random_init", action="store_true", help="train from scratch (320-px model unless --model_config)")
    orig.add_argument("--model_name", default="pt-imp", help="run folder under --save_dir")

    new = p.add_argument_group("model")
    new.add_argument("--model_config", choices=sorted(MODEL_CONFIGS), default=None,
                     help="architecture (default: vit-b-32 from OpenAI weights, or random-init-320 with --random_init)")
    for name in train.SIZE_OVERRIDES:
        new.add_argument(f"--{name}", type=int, default=None, help=f"override the config's {name}")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--weight_decay", type=float, default=None, help="default: 0 for sgd, 0.01 for adam (as the original)")
    opt.add_argument("--warmup_steps", type=int, default=0)
    opt.add_argument("--lr_schedule", choices=["constant", "cosine"], default="constant")
    opt.add_argument("--grad_clip", type=float, default=None, help="max gradient norm (off by default)")
    opt.add_argument("--clamp_logit_scale", action="store_true", help="clamp logit_scale to [0, ln 100] as CLIP intends")
    opt.add_argument("--max_steps", type=int, default=None, help="stop after this many steps in total")

    run = p.add_argument_group("runtime")
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    run.add_argument("--precision", choices=["fp32", "amp_bf16", "amp_fp16"], default=None,
                     help="default: amp_bf16 on CUDA, fp32 on CPU; weights stay fp32 either way")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--grad_checkpointing", action="store_true", help="recompute blocks in backward to save memory")
    run.add_argument("--num_workers", type=int, default=4, help="data loader processes (each opens its own h5 handle)")
    run.add_argument("--data_in_memory", action="store_true", help="read the whole h5 into RAM first")
    run.add_argument("--gather_with_grad", action="store_true", help="under torchrun: exact gradient of the global-batch loss")
    run.add_argument("--local_loss", action="store_true", help="under torchrun: score local rows against the global batch")
    run.add_argument("--accum_freq", type=int, default=1,
                     help="micro-batches per step with cached features: effective batch = batch_size x accum_freq x GPUs")

    ck = p.add_argument_group("checkpoints and validation")
    ck.add_argument("--resume", default=None, help="'latest' or a checkpoint_*.state file")
    ck.add_argument("--keep_last", type=int, default=None, help="keep only the N newest periodic checkpoints (default: all)")
    ck.add_argument("--val_cxr_filepath", default=None, help="validation h5 (e.g. CheXpert valid, frontal)")
    ck.add_argument("--val_label_path", default=None, help="validation labels CSV, row-aligned, CheXpert column names")
    ck.add_argument("--val_interval", type=int, default=1000, help="steps between validations")
    ck.add_argument("--keep_best", type=int, default=10, help="keep the k best checkpoints by validation AUROC")
    ck.add_argument("--val_pair_template", nargs=2, default=["{}", "no {}"], metavar=("POSITIVE", "NEGATIVE"),
                    help="validation prompts, '{}' is the label (default: '{}' 'no {}'); use the templates "
                         "you will evaluate with (run_zero_shot.py --pair_template)")
    args = p.parse_args(argv)
    if bool(args.val_cxr_filepath) != bool(args.val_label_path):
        p.error("--val_cxr_filepath and --val_label_path go together")
    return args


def model_pipeline(config: argparse.Namespace) -> Path:
    """Train with ``config`` and return the final checkpoint (the original's entry point)."""
    return train.train(config)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model_pipeline(parse_args())
