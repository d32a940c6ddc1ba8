"""The files of a training run's folder: checkpoints, training states, the latest pointer, metrics.

A run folder (``<save_dir>/<model_name>``) holds, all written atomically (a temporary file, then a
rename: a kill never leaves a torn file):

- ``checkpoint_<step>.pt`` every ``--save_interval`` steps (the newest ``--keep_last`` kept) and
  ``checkpoint.pt`` at the end: plain fp32 state dicts named as the original's;
- ``best_<batch>_<lr>_<model_name>_<step>_<auroc>.pt``: the ``--keep_best`` best by validation AUROC;
- beside each ``checkpoint*.pt`` a ``.state`` file, the training state (:data:`STATE_KEYS`), and
  ``latest.json`` naming the newest, for ``--resume latest``. Every state is read with
  ``torch.load(weights_only=True)``: it holds only tensors and plain values, and a file holding
  anything else is refused unread;
- ``model_config.json``: the model's ``CLIP(**kwargs)``, so that its checkpoints load by themselves
  (``clip.load_model`` reads it) even when the architecture cannot be read off the weights;
- ``metrics.csv`` (one row per logged step; rows after the resumed step are dropped on resume)
  and ``loss.png``.

:class:`Checkpoints` is the writer, with its state explicit (the best list); :class:`Position` is
where a run stands; :func:`load_training_state` and :func:`restore_state` read a state back.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import random
import re
import zipfile
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import clip
from errors import UserError
from model import MODEL_CONFIG_FILE, ArchitectureError, model_config
from runtime import TrainInputError

log = logging.getLogger(__name__)

#: What a training-state file (``checkpoint*.state``) holds. All of it is tensors, numbers,
#: strings, None and lists/tuples/dicts of them, so it loads with ``torch.load(weights_only=True)``,
#: which refuses anything that could run code.
STATE_KEYS = ("weights", "optimizer", "scheduler", "scaler", "step", "epoch", "sample_in_epoch",
              "samples_per_epoch", "order_seed", "best", "rng", "config", "world", "data")
LATEST = "latest.json"
METRIC_FIELDS = ["step", "epoch", "loss", "lr", "logit_scale", "pairs_per_s", "val_auroc"]


class RunFolderTaken(UserError, FileExistsError):
    """A fresh run into a folder that holds an earlier run's checkpoints (also a FileExistsError)."""


# =========================================================================== writing
def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def model_kwargs(model: nn.Module) -> dict:
    """The ``CLIP(**kwargs)`` that built ``model``: the shapes of its weights, and the number of text
    attention heads read off the module (the weights do not hold it)."""
    try:
        kwargs = model_config(model.state_dict())
    except ArchitectureError as err:   # a text tower narrower than 64: its heads are not in the shapes
        kwargs = dict(err.config)
    kwargs["transformer_heads"] = model.transformer.resblocks[0].attn.n_head
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def rng_state() -> dict:
    """The torch, numpy and Python RNG states as tensors and plain values (weights-only loadable)."""
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"algorithm": str(algorithm), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state((saved["algorithm"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["internal"]), saved["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def periodic(run_dir: Path, suffix: str) -> list[tuple[int, Path]]:
    """The run's ``checkpoint_<step><suffix>`` files, oldest step first."""
    found = []
    for path in run_dir.glob(f"checkpoint_*{suffix}"):
        step = path.name[len("checkpoint_"):-len(suffix)]
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


@dataclass
class Position:
    """Where a run stands: optimizer steps taken, the epoch, and the samples of that epoch's order
    consumed (of all processes together), in the order seeded with ``order_seed``."""

    step: int = 0
    epoch: int = 0
    sample_in_epoch: int = 0
    order_seed: int = 0

    @classmethod
    def resumed(cls, state: dict | None, samples_per_epoch: int, seed: int, source: str = "the image file") -> Position:
        """The start of a run: the beginning (``state`` None), or where the training ``state`` stood; a
        resume over an image file (``source``) of another size starts its epoch again from the first sample."""
        if state is None:
            return cls(order_seed=seed)
        position = cls(state["step"], state["epoch"], state["sample_in_epoch"], state["order_seed"])
        if state["samples_per_epoch"] != samples_per_epoch and position.sample_in_epoch:
            log.warning("resume: %s holds %d images, the saved run had %d: epoch %d starts again from its first "
                        "sample", source, samples_per_epoch, state["samples_per_epoch"], position.epoch)
            position.sample_in_epoch, position.order_seed = 0, seed
        return position

    def advance(self, epoch: int, consumed: int, samples_per_epoch: int, seed: int) -> None:
        """One optimizer step more, whose last batch left ``consumed`` samples of ``epoch`` read; the
        end of an epoch moves to the next one, in the order of ``seed``."""
        self.step += 1
        if consumed >= samples_per_epoch:
            self.epoch, self.sample_in_epoch, self.order_seed = epoch + 1, 0, seed
        else:
            self.epoch, self.sample_in_epoch = epoch, consumed


class Checkpoints:
    """The checkpoint files of one run folder, and the ranking of its best checkpoints.

    State: ``best``, the kept best checkpoints as ``(score, step, file name)``, best first (saved in
    every training state, so a resumed run keeps ranking against them). Writes are atomic; the
    training state names its weights file, and ``latest.json`` names the newest complete pair.
    """

    def __init__(self, run_dir: Path, keep_last: int | None = None, keep_best: int = 10,
                 best_prefix: str = "best", best: list | tuple = ()) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_prefix = best_prefix
        self.best = [tuple(b) for b in best]
        self.metrics = self.run_dir / "metrics.csv"

    def earlier_run(self) -> list[str]:
        """Names of the checkpoints already in the folder (a run that a fresh one would overwrite)."""
        return sorted(p.name for pattern in ("checkpoint*.pt", "best_*.pt") for p in self.run_dir.glob(pattern))

    def refuse_fresh_run(self) -> None:
        """Raise :class:`RunFolderTaken` when the folder holds an earlier run's checkpoints: a fresh run
        would overwrite some of them and leave the rest to be mistaken for its own."""
        earlier = self.earlier_run()
        if earlier:
            raise RunFolderTaken(f"{self.run_dir} already holds an earlier run's checkpoints ({', '.join(earlier[:3])}"
                                 f"{' ...' if len(earlier) > 3 else ''}). Continue it with --resume latest, or train "
                                 "into another --model_name / --save_dir, or delete the folder.")

    def write_model_config(self, model: nn.Module) -> None:
        """``model_config.json``: the model's ``CLIP(**kwargs)`` (:func:`model_kwargs`)."""
        atomic_write_text(json.dumps(model_kwargs(model), indent=1), self.run_dir / MODEL_CONFIG_FILE)

    def save(self, name: str, model: nn.Module, state: dict) -> None:
        """``<name>.pt`` (the weights), then ``<name>.state`` (``state`` with the weights' name and the
        best list), then ``latest.json`` pointing at it: each write atomic."""
        atomic_save(model.state_dict(), self.run_dir / f"{name}.pt")
        atomic_save({**state, "weights": f"{name}.pt", "best": [list(b) for b in self.best]},
                    self.run_dir / f"{name}.state")
        atomic_write_text(json.dumps({"state": f"{name}.state", "step": state["step"]}), self.run_dir / LATEST)

    def save_periodic(self, step: int, model: nn.Module, state: dict) -> None:
        """``checkpoint_<step>``, then the oldest periodic checkpoints beyond ``keep_last`` removed."""
        self.save(f"checkpoint_{step}", model, state)
        self.rotate()

    def rotate(self) -> None:
        """Remove the periodic checkpoints (weights and state) older than the newest ``keep_last``."""
        if not self.keep_last:
            return
        for step, path in periodic(self.run_dir, ".pt")[:-self.keep_last]:
            path.unlink(missing_ok=True)
            (self.run_dir / f"checkpoint_{step}.state").unlink(missing_ok=True)

    def offer_best(self, score: float, step: int, model: nn.Module) -> bool:
        """Keep the weights as ``<best_prefix>_<step>_<score>.pt`` if they rank among the ``keep_best``
        best (higher score first, then the earlier step); the one pushed out is deleted."""
        if len(self.best) >= self.keep_best and not score > min(b[0] for b in self.best):
            return False
        name = f"{self.best_prefix}_{step}_{score:.3f}.pt"
        atomic_save(model.state_dict(), self.run_dir / name)
        self.best.append((score, step, name))
        self.best.sort(key=lambda b: (-b[0], b[1]))
        for _, _, dropped in self.best[self.keep_best:]:
            (self.run_dir / dropped).unlink(missing_ok=True)
        del self.best[self.keep_best:]
        return True

    def start_metrics(self, resumed_step: int | None = None) -> None:
        """A fresh ``metrics.csv``, or on resume the existing one without the rows after ``resumed_step``."""
        if resumed_step is not None and self.metrics.exists():
            dropped = trim_metrics(self.metrics, resumed_step)
            if dropped:
                log.info("resume: dropped %d rows of %s logged after step %d (the saved state)", dropped,
                         self.metrics, resumed_step)
            return
        with open(self.metrics, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)

    def log_metrics(self, row: list) -> None:
        with open(self.metrics, "a", newline="") as f:
            csv.writer(f).writerow(row)


def trim_metrics(metrics_path: Path, step: int) -> int:
    """Drop the rows of ``metrics.csv`` after ``step`` (logged by a run killed after its last
    saved state) and any torn row; rewritten atomically. Returns how many rows were dropped."""
    with open(metrics_path, newline="") as f:
        rows = list(csv.reader(f))
    body = rows[1:]
    keep = [r for r in body if len(r) == len(METRIC_FIELDS) and r[0].isdigit() and int(r[0]) <= step]
    if len(keep) == len(body) and rows[:1] == [METRIC_FIELDS]:
        return 0
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRIC_FIELDS)
        writer.writerows(keep)
    os.replace(tmp, metrics_path)
    return len(body) - len(keep)


def plot_loss(metrics_path: Path, out_path: Path) -> None:
    """Training loss (and validation AUROC when present) against step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = pd.read_csv(metrics_path)
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(frame["step"], frame["loss"], label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if frame["val_auroc"].notna().any():
        twin = ax.twinx()
        valid = frame[frame["val_auroc"].notna()]
        twin.plot(valid["step"], valid["val_auroc"], "o-", color="tab:orange", label="validation mean AUROC")
        twin.set_ylabel("validation mean AUROC")
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)


# =========================================================================== reading
def resolve_resume(resume: str, run_dir: Path) -> Path:
    """The training-state file named by ``--resume`` (a path, or ``latest``)."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise TrainInputError(f"--resume {resume}: no such training-state file; pass 'latest' or one of the "
                                  "run's checkpoint_*.state files")
        return path
    pointer = run_dir / LATEST
    if not pointer.is_file():
        raise TrainInputError(f"--resume latest: {pointer} does not exist; nothing to resume in {run_dir} (check "
                              "--save_dir and --model_name, or start without --resume)")
    try:
        name = json.loads(pointer.read_text())["state"]
        if not isinstance(name, str):
            raise TypeError(name)
    except (ValueError, KeyError, TypeError):
        raise TrainInputError(_unusable_message("latest", _Unusable(pointer, "is not a readable latest.json pointer"),
                                                run_dir)) from None
    return run_dir / Path(name).name


class _Unusable(Exception):
    """A training-state file (or the weights it names) that cannot be resumed from, and why."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file} {reason}")
        self.file, self.reason = file, reason


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _zip_intact(path: Path) -> bool:
    """A torch.save file whose zip directory and CRCs check out (a truncated one fails)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        return False


def _read_state(path: Path) -> dict:
    """Load one training-state file with ``weights_only=True`` and check it and the weights it
    names; raise :class:`_Unusable` saying which file and why otherwise."""
    if not path.is_file():
        raise _Unusable(path, "does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "Weights only load failed" in str(err) and unsafe:
            raise _Unusable(path, f"holds Python objects beyond tensors and plain values ({unsafe.group(1)}); "
                                  "loading them could run code, so the file was refused unread (a training state "
                                  "written by this train.py holds none)") from None
        raise _Unusable(path, "is damaged, or holds objects beyond tensors and plain values (refused unread)") from None
    except Exception as err:   # torch reports truncation as RuntimeError, EOFError, ValueError ...
        raise _Unusable(path, f"is damaged or truncated ({_first_line(err)})") from None
    if not isinstance(state, dict):
        raise _Unusable(path, f"holds a {type(state).__name__}, not a training state written by train.py")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise _Unusable(path, f"is not a training state of this train.py (it lacks {', '.join(missing)})")
    weights = path.parent / str(state["weights"])
    if not _zip_intact(weights):
        raise _Unusable(weights, f"(the weights {path.name} names) is missing, damaged or truncated")
    return state


def intact_states(run_dir: Path, exclude: Path | None = None, limit: int = 3) -> list[Path]:
    """Up to ``limit`` periodic training states in ``run_dir`` that load, newest first."""
    found = []
    for _, path in reversed(periodic(run_dir, ".state")):
        if exclude is not None and path.resolve() == exclude.resolve():
            continue
        try:
            _read_state(path)
        except _Unusable:
            continue
        found.append(path)
        if len(found) == limit:
            break
    return found


def _unusable_message(resume: str, bad: _Unusable, run_dir: Path, state_path: Path | None = None) -> str:
    """One line: which file is unusable and why, and the newest intact earlier state to resume from."""
    alternatives = intact_states(run_dir, exclude=state_path)
    if alternatives:
        rest = ", ".join(map(str, alternatives[1:]))
        others = f" (other intact ones, newest first: {rest})" if rest else ""
        offer = (f"The newest intact earlier state is {alternatives[0]}: continue with --resume "
                 f"{alternatives[0]}{others}")
    else:
        offer = (f"No other intact checkpoint_*.state is in {run_dir}; start the run again into another "
                 "--model_name (or remove the folder)")
    return f"--resume {resume}: {bad.file} {bad.reason}. {offer}"


def load_training_state(path: Path, run_dir: Path, resume: str = "latest") -> dict:
    """The training state in ``path`` (weights-only load), or a :class:`TrainInputError` that names
    the unusable file and offers the newest intact earlier state."""
    try:
        return _read_state(path)
    except _Unusable as bad:
        raise TrainInputError(_unusable_message(resume, bad, run_dir, path)) from None


def state_weights(path: Path, flag: str = "--init_checkpoint") -> Path:
    """The weights file a training-state file names (checked intact; the state read weights-only),
    or a one-line :class:`TrainInputError` starting with ``flag`` and the file."""
    try:
        state = _read_state(Path(path))
    except _Unusable as bad:
        raise TrainInputError(f"{flag} {path}: {bad.file} {bad.reason}") from None
    return Path(path).parent / str(state["weights"])


def restore_state(state: dict, state_path: Path, run_dir: Path, config: Namespace, overridden: set[str],
                  model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler) -> None:
    """Load a checked training state into the run's objects, taking the new values of the
    ``overridden`` flags: the optimizer's hyperparameters (lr, momentum, weight decay) and the
    schedule always follow ``config``; a new optimizer type starts from a fresh optimizer state."""
    weights = state_path.parent / str(state["weights"])
    try:
        weights_state = clip.load_checkpoint(weights)
    except (RuntimeError, OSError) as err:
        raise TrainInputError(_unusable_message(config.resume, _Unusable(weights, f"is damaged ({_first_line(err)})"),
                                                run_dir, state_path)) from None
    try:
        clip.load_weights(model, weights_state, str(weights))
    except RuntimeError as err:
        raise TrainInputError(f"--resume {config.resume}: {err}") from None
    # The new flags' hyperparameters, as the optimizer was just built with them.
    fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if "optimizer" in overridden:
        log.info("resume: --optimizer %s -> %s: the new optimizer starts from a fresh state (no momentum or moment "
                 "estimates carried over)", state["config"].get("optimizer"), config.optimizer)
    elif {"lock_image", "lock_text"} & overridden:
        log.info("resume: a tower locked or unlocked (--resume_override %s): the optimizer, over other parameters "
                 "now, starts from a fresh state", ",".join(sorted({"lock_image", "lock_text"} & overridden)))
    else:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise TrainInputError(f"--resume {config.resume}: the optimizer state in {state_path} does not fit this "
                                  f"model and --optimizer {config.optimizer} ({_first_line(err)})") from None
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update(fresh)
    scheduler.load_state_dict(state["scheduler"])
    # The schedule's base LR is the new --lr; the current LR is where the (new) schedule stands.
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
