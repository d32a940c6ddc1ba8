"""Resuming a training run: which saved settings the new flags may change, and which they must match.

A training state stores the run's flags (:func:`plain_config`) and fingerprints of its data files
(:func:`file_fingerprint`). On ``--resume``, flags left out take the saved values
(:func:`adopt_saved_flags`); flags that change what the run computes must match the saved ones
(:func:`resume_differences`), or be named in ``--resume_override`` (:func:`check_resume`). Flags
that only change how the run computes (:data:`RESUME_FREE`) may change freely; so may the run's
length (:data:`RUN_LENGTH`) under the constant schedule.
"""
from __future__ import annotations

import hashlib
import logging
import os
from argparse import Namespace
from pathlib import Path

from runtime import TrainInputError

log = logging.getLogger(__name__)

#: Flags that may change on --resume without changing what the run computes: where and how fast
#: it runs, how often it logs, saves and validates, how many checkpoints it keeps.
RESUME_FREE = frozenset({"num_workers", "device", "precision", "compile", "grad_checkpointing", "data_in_memory",
                         "log_interval", "save_interval", "keep_last", "keep_best", "val_interval"})
#: Never compared nor taken from the saved run: where the run lives and how this command was asked.
RESUME_OWN = frozenset({"resume", "resume_override", "debug", "save_dir", "model_name", "given_flags"})
#: Where the run stops: free under the constant schedule; under cosine they set the decay's length.
RUN_LENGTH = frozenset({"epochs", "max_steps"})
DATA_FLAGS = ("cxr_filepath", "txt_filepath")
#: Flags saved under an earlier name: a state written before the rename resumes under the new one.
RENAMED = {"val_label_path": "val_labels_path"}

#: Flags added after states were first written, with the value an older state's run had.
ADDED = {"init_checkpoint": None, "lock_image": False, "lock_text": False}

#: Data files up to this size are hashed whole to recognise them on --resume; larger ones (the
#: image h5) by their size, modification time and the hash of their first and last HASH_EDGE_BYTES.
FULL_HASH_BYTES = 64 << 20
HASH_EDGE_BYTES = 8 << 20


def file_fingerprint(path: str | Path) -> dict:
    """What identifies a data file across a resume: path, size, a SHA-256 (prefix) and, for large
    files, the modification time."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        else:
            digest.update(f.read(HASH_EDGE_BYTES))
            f.seek(-HASH_EDGE_BYTES, os.SEEK_END)
            digest.update(f.read(HASH_EDGE_BYTES))
    found = {"path": str(path), "size": size, "sha256": digest.hexdigest()[:16]}
    if size > FULL_HASH_BYTES:
        found["mtime_ns"] = path.stat().st_mtime_ns
    return found


def _same_file(a: dict | None, b: dict) -> bool:
    return a is not None and all(a.get(k) == b.get(k) for k in ("size", "sha256", "mtime_ns"))


def _describe_file(fp: dict | None) -> str:
    if fp is None:
        return "(not recorded)"
    return f"{fp['path']} ({fp['size']} bytes, sha256 {fp['sha256']})"


def plain_config(config: Namespace) -> dict:
    """The run's flags as a dict of plain values (what a training state stores)."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(config).items() if k != "given_flags"}


def saved_flags(saved: dict) -> dict:
    """A saved run's flags under today's names (:data:`RENAMED`), with the flags it predates (:data:`ADDED`)."""
    return {**ADDED, **{RENAMED.get(k, k): v for k, v in saved.items()}}


def resume_comparable(config: Namespace) -> list[str]:
    """The flags whose change on --resume needs --resume_override."""
    return sorted(set(vars(config)) - RESUME_FREE - RESUME_OWN)


def adopt_saved_flags(config: Namespace, saved: dict) -> list[str]:
    """Flags that set what the run computes and were not given on the command line take the saved
    run's values (``config.given_flags``, set by ``run_train.parse_args``; without it every flag
    counts as given). Flags about this invocation (:data:`RESUME_FREE`; :data:`RUN_LENGTH` under
    the constant schedule) keep their given or default values. Returns the names taken."""
    given = getattr(config, "given_flags", None)
    if given is None:
        return []
    saved = saved_flags(saved)
    own = RESUME_OWN | RESUME_FREE | (RUN_LENGTH if saved.get("lr_schedule") != "cosine" else frozenset())
    taken = []
    for key, value in saved.items():
        if key in own or key in given or not hasattr(config, key):
            continue
        current = getattr(config, key)
        if (list(current) if isinstance(current, (list, tuple)) else current) != value:
            setattr(config, key, value)
            taken.append(key)
    if taken:
        log.info("resume: flags not given take the saved run's values: %s",
                 ", ".join(f"--{k} {getattr(config, k)}" for k in taken))
    return taken


def _effective(config: dict, key: str, world: int, other: dict) -> object:
    """A flag's value as it acts on the run: the global batch; the weight decay with its optimizer's
    default (unless the optimizer changes too, which brings its own default: compared as given)."""
    if key == "batch_size":
        return config["batch_size"] * world
    if key == "weight_decay" and config.get("optimizer") == other.get("optimizer"):
        wd = config.get("weight_decay")
        return (0.01 if config.get("optimizer") == "adam" else 0.0) if wd is None else float(wd)
    value = config.get(key)
    return list(value) if isinstance(value, tuple) else value


def resume_differences(state: dict, config: Namespace, data: dict, world: int) -> list[tuple[str, str, str]]:
    """``(flag, saved, new)`` for every setting that changes the run's meaning and differs."""
    saved, new = saved_flags(state["config"]), plain_config(config)
    keys = set(saved) & set(new) - RESUME_FREE - RESUME_OWN
    if saved.get("lr_schedule") == "constant" and new.get("lr_schedule") == "constant":
        keys -= RUN_LENGTH
    diffs = []
    for key in sorted(keys):
        if key in DATA_FLAGS:
            if not _same_file(state["data"].get(key), data[key]):
                diffs.append((key, _describe_file(state["data"].get(key)), _describe_file(data[key])))
            continue
        before, after = _effective(saved, key, state["world"], new), _effective(new, key, world, saved)
        if before == after:
            continue
        if key == "batch_size" and (state["world"] != 1 or world != 1):
            diffs.append((key, f"{saved[key]} x {state['world']} processes", f"{new[key]} x {world} processes"))
        else:
            diffs.append((key, str(before), str(after)))
    return diffs


def check_resume(config: Namespace, state: dict, data: dict, world: int, run_dir: Path) -> set[str]:
    """Refuse a resume whose settings differ from the saved run's, listing the differences, unless
    ``--resume_override`` names them; return the flags whose new values are taken."""
    asked = set(config.resume_override or ())
    unknown = sorted(asked - set(resume_comparable(config)))
    if unknown:
        raise TrainInputError(f"--resume_override {','.join(unknown)}: not a setting compared on resume; the ones "
                              f"that are: {', '.join(resume_comparable(config))} (the rest may change freely)")
    diffs = resume_differences(state, config, data, world)
    refused = [d for d in diffs if d[0] not in asked]
    if refused:
        listed = "; ".join(f"--{flag}: {before} -> {after}" for flag, before, after in refused)
        raise TrainInputError(f"--resume {config.resume}: the run in {run_dir} was saved with other settings: "
                              f"{listed}. Resume with the saved values (leave these flags out or pass the saved "
                              f"ones), or take the new ones with --resume_override "
                              f"{','.join(flag for flag, _, _ in refused)}")
    for flag, before, after in diffs:
        log.info("resume: --resume_override takes the new --%s: %s -> %s", flag, before, after)
    for flag in sorted(asked - {d[0] for d in diffs}):
        log.info("resume: --resume_override %s: unchanged, nothing to take", flag)
    return {d[0] for d in diffs}
