"""Train CheXzero: CLIP on chest X-rays paired with their report impressions.

    python run_train.py --cxr_filepath data/cxr.h5 --txt_filepath data/mimic_impressions.csv

The original's flags and defaults are kept (OpenAI ViT-B/32 start, SGD momentum 0.9, constant
LR 1e-4, batch 16, 4 epochs, a checkpoint every 100 steps). Everything else is an option.
More GPUs: ``torchrun --nproc_per_node 8 run_train.py ... --gather_with_grad``.

Fine-tuning: ``--init_checkpoint PATH`` starts from a CLIP checkpoint (its architecture read off the
file, no OpenAI download); ``--lock_image`` / ``--lock_text`` freeze one tower (LiT). On --resume the
saved weights win over --init_checkpoint; the lock flags and --init_checkpoint must match the saved run.

Resuming: ``--resume latest`` (or a checkpoint_*.state file) continues a run from its last saved
state, at the exact sample it had reached. Flags left out take the saved run's values. Flags that
change what the run computes (optimizer, batch size x processes, lr, schedule, seed, data files,
model, ...) must match the saved ones: a resume that changes them is refused with the list of
differences, unless --resume_override names them. Flags that only change how it runs (device,
precision, workers, compile, logging, checkpoint and validation cadence, kept checkpoints) may
change freely; so may --epochs and --max_steps under the constant schedule.

User errors (a missing or malformed file, a bad flag, a resume that does not match) end with one
line on stderr and exit status 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import train
from errors import ArgumentParser, int_at_least, run_cli
from labels import PAIR_TEMPLATE
from model import MODEL_CONFIGS


def count(what: str, minimum: int = 1):
    """argparse type: a whole number >= ``minimum``; the error says what the flag counts."""
    return int_at_least(minimum, f" ({what})")


def real(what: str, positive: bool = False):
    """argparse type: a finite number, > 0 with ``positive`` else >= 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number ({what}), got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {'> 0' if positive else '>= 0'} ({what}), got {text}")
        return value
    parse.__name__ = "number"
    return parse


def seed(text: str) -> int:
    value = count("a seed for torch, numpy and Python", minimum=0)(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be below 2**32 (numpy's seed range), got {value}")
    return value


def flag_list(text: str) -> list[str]:
    names = [name.strip().lstrip("-") for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected flag names separated by commas, e.g. lr,batch_size")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    orig = p.add_argument_group("original CheXzero flags")
    orig.add_argument("--cxr_filepath", default="data/cxr.h5", help="h5 of images (dataset 'cxr', uint8 or float32)")
    orig.add_argument("--txt_filepath", default="data/mimic_impressions.csv",
                      help="CSV with an 'impression' column, row-aligned with the h5")
    orig.add_argument("--batch_size", type=count("images per step"), default=16,
                      help="images per step (per process under torchrun)")
    orig.add_argument("--epochs", type=count("passes over the data"), default=4)
    orig.add_argument("--lr", type=real("the learning rate", positive=True), default=1e-4)
    orig.add_argument("--save_interval", type=count("steps between checkpoints"), default=100,
                      help="steps between checkpoint_{step}.pt saves")
    orig.add_argument("--log_interval", type=count("steps between log lines"), default=10,
                      help="steps between loss log lines")
    orig.add_argument("--save_dir", default="checkpoints/")
    orig.add_argument("--seed", type=seed, default=1234,
                      help="seeds init, data order and RNGs (the original ignored it)")
    orig.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="sgd (momentum) or adam (AdamW)")
    orig.add_argument("--momentum", type=real("SGD momentum"), default=0.9)
    orig.add_argument("--context_length", type=count("tokens per caption"), default=77)
    orig.add_argument("--random_init", action="store_true",
                      help="train from scratch (320-px model unless --model_config)")
    orig.add_argument("--model_name", default="pt-imp", help="run folder under --save_dir")

    new = p.add_argument_group("model")
    new.add_argument("--model_config", choices=sorted(MODEL_CONFIGS), default=None,
                     help="architecture (default: vit-b-32 from OpenAI weights, or random-init-320 with --random_init)")
    new.add_argument("--init_checkpoint", default=None, metavar="PATH",
                     help="fine-tune: start from this CLIP checkpoint (a released CheXzero .pt, or this project's "
                          "checkpoint*.pt / best_*.pt / checkpoint*.state), its architecture read off the file; with "
                          "--model_config or size flags, a checkpoint of another shape is refused. Not with "
                          "--random_init. On --resume the saved weights win (the file is not read again)")
    new.add_argument("--lock_image", action="store_true",
                     help="freeze the image tower (visual.*) LiT-style: not optimised, kept in eval mode (BatchNorm "
                          "statistics fixed), bit-identical after training")
    new.add_argument("--lock_text", action="store_true",
                     help="freeze the text tower (token_embedding, positional_embedding, transformer, ln_final, "
                          "text_projection) likewise; logit_scale always trains (with both locks, it alone does)")
    for name in train.SIZE_OVERRIDES:
        new.add_argument(f"--{name}", type=count(f"the model's {name}"), default=None,
                         help=f"override the config's {name}")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--weight_decay", type=real("weight decay"), default=None,
                     help="default: 0 for sgd, 0.01 for adam (as the original)")
    opt.add_argument("--warmup_steps", type=count("steps of linear LR warmup", minimum=0), default=0)
    opt.add_argument("--lr_schedule", choices=["constant", "cosine"], default="constant")
    opt.add_argument("--grad_clip", type=real("the largest gradient norm", positive=True), default=None,
                     help="max gradient norm (off by default)")
    opt.add_argument("--clamp_logit_scale", action="store_true",
                     help="clamp logit_scale to [0, ln 100] as CLIP intends")
    opt.add_argument("--max_steps", type=count("optimizer steps in total; leave it out for no limit"), default=None,
                     help="stop after this many steps in total (default: no limit but --epochs)")

    run = p.add_argument_group("runtime")
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    run.add_argument("--precision", choices=["fp32", "amp_bf16", "amp_fp16"], default=None,
                     help="default: amp_bf16 on CUDA, fp32 on CPU; weights stay fp32 either way")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--grad_checkpointing", action="store_true", help="recompute blocks in backward to save memory")
    run.add_argument("--num_workers", type=count("data loader processes; 0 reads in the main process", minimum=0),
                     default=4, help="data loader processes (each opens its own h5 handle)")
    run.add_argument("--data_in_memory", action="store_true", help="read the whole h5 into RAM first")
    run.add_argument("--gather_with_grad", action="store_true",
                     help="under torchrun: exact gradient of the global-batch loss")
    run.add_argument("--local_loss", action="store_true",
                     help="under torchrun: score local rows against the global batch")
    run.add_argument("--accum_freq", type=count("micro-batches per optimizer step"), default=1,
                     help="micro-batches per step with cached features: effective batch = batch_size x accum_freq "
                          "x GPUs")

    ck = p.add_argument_group("checkpoints and validation")
    ck.add_argument("--resume", default=None,
                    help="'latest' or a checkpoint_*.state file: continue that run at the exact sample it reached "
                         "(flags left out take the saved values)")
    ck.add_argument("--resume_override", type=flag_list, default=None, metavar="FLAG,FLAG",
                    help="with --resume: take the new values of these flags although they change the run (e.g. "
                         "lr,batch_size; a new --optimizer starts a fresh optimizer state). Without it such changes "
                         "are refused with the list of differences. Free to change without it: "
                         f"{', '.join(sorted(train.RESUME_FREE))}, and {', '.join(sorted(train.RUN_LENGTH))} under "
                         "the constant schedule")
    ck.add_argument("--keep_last", type=count("periodic checkpoints kept"), default=None,
                    help="keep only the N newest periodic checkpoints (default: all)")
    ck.add_argument("--val_cxr_filepath", default=None, help="validation h5 (e.g. CheXpert valid, frontal)")
    ck.add_argument("--val_labels_path", "--val_label_path", dest="val_labels_path", default=None,
                    help="validation labels CSV, row-aligned, CheXpert column names, 0/1 (as run_zero_shot.py's "
                         "--val_labels_path; --val_label_path is the earlier spelling)")
    ck.add_argument("--val_interval", type=count("steps between validations"), default=1000,
                    help="steps between validations")
    ck.add_argument("--keep_best", type=count("best checkpoints kept"), default=10,
                    help="keep the k best checkpoints by validation AUROC")
    ck.add_argument("--val_pair_template", nargs=2, default=list(PAIR_TEMPLATE), metavar=("POSITIVE", "NEGATIVE"),
                    help="validation prompts, '{}' is the label (default: '{}' 'no {}'); use the templates "
                         "you will evaluate with (run_zero_shot.py --pair_template)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's flags; ``given_flags`` lists those given on the command line (a resume takes the
    saved values of the others). A bad flag is one line on stderr and ``SystemExit(2)``."""
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.val_cxr_filepath) != bool(args.val_labels_path):
        p.error("--val_cxr_filepath and --val_labels_path go together")
    if args.init_checkpoint and args.random_init:
        p.error("--init_checkpoint starts from the checkpoint's weights, --random_init from random ones: pass one")
    if args.resume_override and not args.resume:
        p.error("--resume_override only applies with --resume")
    # Parsed again into a namespace that already holds every flag: argparse then sets only the given ones.
    unset = object()
    given = p.parse_args(argv, namespace=argparse.Namespace(**{name: unset for name in vars(args)}))
    args.given_flags = sorted(name for name, value in vars(given).items() if value is not unset)
    return args


def model_pipeline(config: argparse.Namespace) -> Path:
    """Train with ``config`` and return the final checkpoint (the original's entry point)."""
    return train.train(config)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model_pipeline(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
