"""Where and how a training run computes, decided once: device, processes, precision, optimizer, LR schedule.

:func:`setup_runtime` reads the flags and torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and returns a :class:`Runtime`; :func:`make_optimizer` and :func:`lr_lambda` turn
the optimisation flags into PyTorch objects. Also the errors a training run raises for what the
user can fix (:class:`TrainInputError`) or the machine cannot do (:class:`TrainSetupError`).
"""
from __future__ import annotations

import math
import os
from argparse import Namespace
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from errors import UserError


class TrainInputError(UserError, ValueError):
    """A training input or flag the user can fix (also a ValueError, as these errors were before)."""


class TrainSetupError(UserError, RuntimeError):
    """The environment cannot run what the flags ask (no GPU, no OpenAI weights); also a RuntimeError."""


@dataclass
class Runtime:
    """Where and how the run computes: decided once, in :func:`setup_runtime`."""

    device: torch.device
    rank: int
    world: int
    local_rank: int
    autocast_dtype: torch.dtype | None   # None: fp32
    use_scaler: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def setup_runtime(config: Namespace) -> Runtime:
    """Device, process group, precision and TF32, from the flags and torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise TrainSetupError(f"--device {wanted} was asked for but no GPU is visible; use --device cpu")
    if wanted == "cuda":
        wanted = f"cuda:{local_rank}"
    device = torch.device(wanted)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    precision = config.precision or ("amp_bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}[precision]
    return Runtime(device, rank, world, local_rank, dtype, use_scaler=precision == "amp_fp16")


def make_optimizer(config: Namespace, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum (the original's default) or AdamW over the parameters that require grad (a
    tower locked with --lock_image / --lock_text is left out), with fused kernels (on the CPU too:
    the multi-tensor path allocates temporaries the size of the model every step)."""
    kernel = {"fused": True}
    params = [p for p in model.parameters() if p.requires_grad]   # a locked tower's are not optimised
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay or 0.0, **kernel)
    if config.optimizer == "adam":
        wd = 0.01 if config.weight_decay is None else config.weight_decay
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=wd, **kernel)
    raise ValueError(f"--optimizer must be 'sgd' or 'adam', not {config.optimizer!r}")


def lr_lambda(config: Namespace, total_steps: int):
    """LR multiplier per step: linear warmup, then constant (original) or cosine to zero."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "cosine":
            progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor
