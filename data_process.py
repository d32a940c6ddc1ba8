"""Preprocessing library: chest X-ray images -> HDF5, radiology reports -> impression CSV.

Keeps the public functions of CheXzero's ``data_process.py`` with the same names and
meaning (``preprocess``, ``img_to_hdf5``, ``get_cxr_paths_list``, ``get_cxr_path_csv``,
``write_report_csv``) and fixes what the original got wrong on today's stack:

* ``Image.ANTIALIAS`` (removed in Pillow 10) is ``Image.Resampling.LANCZOS``: same pixels.
* images are stored as uint8 by default (same values as the original float32, 4x smaller),
  one image per HDF5 chunk, decoded in parallel, in sorted path order;
* an unreadable, truncated or zero-byte image is never a silent all-zero row: it is
  reported with its reason and, unless ``keep_failed``, dropped together with its caption;
* the HDF5 file is built as ``<out>.partial`` with a progress journal, so an interrupted
  run resumes from the last completed chunk and the final file appears only when complete;
  a run that stops before its first completed chunk leaves nothing behind, a full disk is one
  clear error (checked up front too), and ``<out>.lock`` keeps a second process off an output
  that a live one is writing;
* the worker processes never re-run the caller's ``__main__``, so parallel decoding works from
  scripts without an ``if __name__ == "__main__":`` guard, from stdin and from notebooks;
* 16-bit PNGs (PadChest) are read at full depth and scaled by their real bit depth, and DICOM
  files are read too (``dicom_rule``): the one image reader is :mod:`image_reader`, whose names
  (``load_cxr``, ``preprocess``, ``read_image``, ``ImageDecodeError``, ...) are importable from here.

Reports -> impressions (the CheXzero rule reproduced exactly, the official MIMIC-CXR parser's choice
as the ``mimic`` rule) live in :mod:`reports`, PadChest's label lists in :mod:`labels`; their names
stay importable from here, as in the original.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

import run_lock
import worker_pool
from errors import UserError
from image_reader import (  # noqa: F401 - re-exported: the image functions' names in the original's module
    DICOM_RULES,
    FAST_DECODE_OVERSAMPLE,
    IMAGE_SUFFIXES,
    RESOLUTION,
    ImageDecodeError,
    decode_image,
    is_dicom,
    load_cxr,
    may_be_dicom,
    preprocess,
    read_image,
    resize_and_pad,
    scaled_size,
    to_uint8,
)
from labels import parse_padchest_labels  # noqa: F401 - re-exported: data_process.parse_padchest_labels
from reports import (  # noqa: F401 - re-exported: the report functions' names in the original's module
    IMPRESSION_RULES,
    MIMIC_PRIORITY,
    NO_IMPRESSION,
    chexzero_impression,
    extract_impression,
    getIndexOfLast,
    impressions_for,
    mimic_impression,
    mimic_sections,
    read_report,
    report_path,
    section_end,
    section_start,
    write_report_csv,
)
from worker_pool import WorkerPoolError

log = logging.getLogger(__name__)

#: The one name of the images dataset in every h5 this project writes and reads (cxr_data imports it).
H5_KEY = "cxr"
# Bumped whenever the pixels written for a given input could change; part of the resume
# fingerprint so a partial file is never continued by a different algorithm.
PIPELINE_VERSION = "1"


# --------------------------------------------------------------------------------------
# Images -> HDF5 (the images themselves are read by image_reader)
# --------------------------------------------------------------------------------------


class ResumeError(UserError):
    """A partial output that cannot be continued (or would be overwritten) as asked."""


class OutputWriteError(UserError):
    """An output that could not be written (disk full, no permission, I/O error). What was
    committed before stays resumable; the message says what to free and how to continue."""


@dataclass(frozen=True)
class Failure:
    """One source image that produced no pixels: its index in the input list and why."""

    index: int
    path: str
    reason: str


def load_data(filepath: str) -> pd.DataFrame:
    """Read a CSV (kept from the original API)."""
    return pd.read_csv(filepath)


def get_cxr_paths_list(filepath: str) -> pd.Series:
    """Return the ``Path`` column of a paths CSV written by :func:`get_cxr_path_csv`."""
    return load_data(filepath)["Path"]


def load_task(task: tuple[int, str, int | None], resolution: int, fast_decode: bool, dicom_rule: str = "mimic"
              ) -> tuple[int, np.ndarray | None, str | None]:
    """Decode worker (preprocessing and predict.py): (index, path, bits) -> (index, pixels or None,
    failure reason or None); a file that cannot be read is a reason, never an exception."""
    index, path, bits = task
    try:
        return index, load_cxr(path, resolution, fast_decode, bits, dicom_rule), None
    except ImageDecodeError as e:
        return index, None, str(e)
    except cv2.error as e:
        return index, None, f"OpenCV error: {e.err or e}"


def init_worker() -> None:
    """One OpenCV thread per worker process: parallelism comes from the processes."""
    cv2.setNumThreads(1)


# ---- The output: lock, free space, writes that fail cleanly


_HELD: dict[str, int] = {}   # real path of an output -> the thread holding its lock
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def output_lock(out_filepath: str) -> Iterator[None]:
    """Hold ``<out_filepath>.lock`` (see :mod:`run_lock`) for the block, re-entrant in one thread.

    Another process (or thread) building the same output is refused with a
    :class:`~errors.UserError` naming the live process. The kernel drops the lock when the
    holder exits, however it exits, so the lock file left next to the output never blocks.
    """
    key, me = os.path.realpath(out_filepath), threading.get_ident()
    with _HELD_GUARD:
        already = _HELD.get(key) == me
    if already:
        yield
        return
    with run_lock.hold(out_filepath, "preprocessing"):
        with _HELD_GUARD:
            _HELD[key] = me
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)


def _free_bytes(path: str) -> int | None:
    """Bytes this user may still write on the file system holding ``path`` (its nearest
    existing folder); None when the file system does not say."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return usage.free if usage.total > 0 else None


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _bytes_to_write(partial_path: str) -> int:
    """Bytes a partial file still needs: its chunks are all allocated up front, but the ones not
    written yet are holes the file system has not given space to."""
    try:
        st = os.stat(partial_path)
    except OSError:
        return 0
    return max(0, st.st_size - st.st_blocks * 512)


def _check_space(partial_path: str, need: int, resuming: bool) -> None:
    """Refuse to start when the file system clearly cannot hold the images still to write."""
    free = _free_bytes(partial_path)
    if free is None or need <= free:
        return
    where = os.path.dirname(os.path.abspath(partial_path))
    then = ("free space there, then run again with --resume (resume=True)" if resuming
            else "free space or write elsewhere, then run again")
    raise OutputWriteError(f"{partial_path}: not enough free space: the images still to write need about "
                           f"{_size(need)} ({need:,} bytes) and {where} has {_size(free)} free; {then}")


class _WriteFailed(Exception):
    """Internal: writing ``path`` failed with ``error`` (an OSError, or h5py's RuntimeError)."""

    def __init__(self, path: str, error: BaseException):
        super().__init__(path, error)
        self.path, self.error = path, error


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    """Turn a failed write of ``path`` (OS or HDF5 error) into :class:`_WriteFailed`."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        raise _WriteFailed(path, e) from e


def _write_reason(err: BaseException) -> tuple[str, bool]:
    """(short reason, whether it is a full disk or quota) of a failed write. h5py puts the
    system's errno in its message, sometimes in a RuntimeError."""
    code = err.errno if isinstance(err, OSError) and err.errno else None
    if code is None:
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code is not None:
        return os.strerror(code), code in (errno.ENOSPC, errno.EDQUOT)
    return (str(err).splitlines() or [type(err).__name__])[0][:200], False


def _partial_paths(out_filepath: str) -> tuple[str, str]:
    return out_filepath + ".partial", out_filepath + ".partial.json"


def _fingerprint(paths: Sequence[str], bits: Sequence[int | None], resolution: int, dtype: str,
                 keep_failed: bool, fast_decode: bool, dicom_rule: str = "mimic") -> str:
    h = hashlib.sha256()
    # fast_decode's pixels also depend on its oversampling (a partial file from before it existed must
    # not be continued); the exact path's fingerprint stays what it was. The DICOM rule counts only
    # where a path may be DICOM, so a run of JPGs and PNGs keeps the fingerprint it always had.
    decode = FAST_DECODE_OVERSAMPLE if fast_decode else False
    options = [PIPELINE_VERSION, resolution, dtype, keep_failed, decode]
    if any(may_be_dicom(p) for p in paths):
        options.append(dicom_rule)
    h.update(json.dumps(options).encode())
    for p, b in zip(paths, bits):
        h.update(f"{p}\0{b}\n".encode())
    return h.hexdigest()


def _save_progress(progress_path: str, state: dict) -> None:
    """Write the progress journal atomically (a crash leaves the old or the new one)."""
    tmp = progress_path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, progress_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _create_partial_h5(partial_path: str, n: int, resolution: int, dtype: str) -> None:
    """Create the partial file with every chunk allocated up front (one image per chunk).

    Early allocation means later writes touch only raw chunk bytes, never HDF5 metadata, so a
    process killed mid-write leaves a file that reopens cleanly; unwritten space stays sparse.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    with h5py.File(partial_path, "w") as f:
        f.create_dataset(H5_KEY, shape=(n, resolution, resolution), maxshape=(None, resolution, resolution),
                         dtype=dtype, chunks=(1, resolution, resolution), dcpl=dcpl)


def _remove_partial(partial_path: str, progress_path: str) -> None:
    for path in (partial_path, progress_path, progress_path + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _saved_count(progress_path: str) -> int:
    """Images the journal records as done (0 when there is no readable journal)."""
    try:
        with open(progress_path) as f:
            return int(json.load(f).get("n_done", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _resumable_state(partial_path: str, progress_path: str, fingerprint: str, resume: bool) -> dict | None:
    """The journal of a partial run to continue, or None to start from scratch.

    A partial run with no committed image holds nothing to lose, so it is started over whether
    or not ``resume`` was asked (the caller holds the output lock: no live process writes it).
    """
    if not (os.path.exists(progress_path) and os.path.exists(partial_path)):
        if resume:
            log.info("nothing to resume for %s: starting from scratch", partial_path)
        return None
    try:
        with open(progress_path) as f:
            state = json.load(f)
        n_done, n_total = int(state["n_done"]), int(state["n_total"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResumeError(f"{progress_path}: unreadable progress journal ({e}); delete it and {partial_path} "
                          f"to start over") from None
    if n_done == 0:
        log.info("%s holds no finished image (its run stopped before the first commit): starting over",
                 partial_path)
        return None
    if not resume:
        raise ResumeError(
            f"{partial_path} holds an interrupted run ({n_done} of {n_total} images done). Pass --resume "
            f"(resume=True) to continue it, or delete {partial_path} and {progress_path} to start over.")
    if state.get("fingerprint") != fingerprint:
        raise ResumeError(
            f"{partial_path} was started with different inputs or options (paths, dtype, resolution, "
            f"--keep_failed, --fast_decode, --dicom_rule); resume needs the same ones, or delete {partial_path} "
            f"and {progress_path} to start over.")
    log.info("resuming %s: %d/%d images already done", partial_path, n_done, n_total)
    return state


def _check_build_args(n_paths: int, n_bits: int, resolution: object, dtype: str, num_workers: object,
                      chunk_images: object) -> None:
    """ValueError for arguments that cannot work, before any file is touched."""
    def count(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if n_bits != n_paths:
        raise ValueError(f"bits_stored has {n_bits} entries for {n_paths} paths")
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', not {dtype!r}")
    if not count(chunk_images) or chunk_images < 1:
        raise ValueError(f"chunk_images must be a positive integer, not {chunk_images!r}")
    if not count(resolution) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, not {resolution!r}")
    if num_workers is not None and (not count(num_workers) or num_workers < 0):
        raise ValueError(f"num_workers must be a positive integer (None or 0: all cores), not {num_workers!r}")


def _decode_into(f: h5py.File, paths: list[str], bits: list[int | None], state: dict, progress_path: str,
                 partial_path: str, resolution: int, dtype: str, keep_failed: bool, fast_decode: bool,
                 dicom_rule: str, num_workers: int, chunk_images: int, desc: str) -> list[Failure]:
    """Decode the images not done yet into the open partial file ``f``, committing every chunk."""
    failures = [Failure(*x) for x in state["failed"]]
    n_done, n_rows = state["n_done"], state["n_rows"]
    tasks = [(i, paths[i], bits[i]) for i in range(n_done, len(paths))]
    zeros = np.zeros((resolution, resolution), dtype=dtype)
    dset = f[H5_KEY]

    def commit() -> None:
        """Make the rows written so far durable, then record how far the run got."""
        with _writing(partial_path):
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        with _writing(progress_path):
            _save_progress(progress_path, {**state, "n_done": n_done, "n_rows": n_rows,
                                           "failed": [[x.index, x.path, x.reason] for x in failures]})

    decoded = worker_pool.imap(partial(load_task, resolution=resolution, fast_decode=fast_decode,
                                       dicom_rule=dicom_rule), tasks,
                               num_workers, initializer=init_worker, what="decode worker")
    with contextlib.closing(decoded) as results, \
            tqdm(total=len(paths), initial=n_done, unit="img", desc=desc, smoothing=0.1) as bar:
        for index, pixels, reason in results:
            if pixels is None:
                failures.append(Failure(index, paths[index], reason))
                log.warning("image %d failed (%s): %s", index, reason, paths[index])
                if keep_failed:
                    with _writing(partial_path):
                        dset[n_rows] = zeros
                    n_rows += 1
            else:
                with _writing(partial_path):
                    dset[n_rows] = pixels
                n_rows += 1
            n_done = index + 1
            bar.update(1)
            if n_done % chunk_images == 0:
                commit()
    if dset.shape[0] != n_rows:
        with _writing(partial_path):
            dset.resize(n_rows, axis=0)
    commit()
    return failures


def _build(cxr_paths: Iterable[str], out_filepath: str, resolution: int, *, num_workers: int | None,
           dtype: str, keep_failed: bool, fast_decode: bool, resume: bool,
           bits_stored: Sequence[int | None] | None, chunk_images: int, desc: str, publish: bool,
           dicom_rule: str) -> list[Failure]:
    paths = [str(p) for p in cxr_paths]
    bits = list(bits_stored) if bits_stored is not None else [None] * len(paths)
    _check_build_args(len(paths), len(bits), resolution, dtype, num_workers, chunk_images)
    if dicom_rule not in DICOM_RULES:
        raise ValueError(f"dicom_rule must be one of {DICOM_RULES}, not {dicom_rule!r}")
    num_workers = num_workers or os.cpu_count() or 1
    partial_path, progress_path = _partial_paths(out_filepath)
    fingerprint = _fingerprint(paths, bits, resolution, dtype, keep_failed, fast_decode, dicom_rule)

    with output_lock(out_filepath):
        state = _resumable_state(partial_path, progress_path, fingerprint, resume)
        if state is not None:
            _check_space(partial_path, _bytes_to_write(partial_path), resuming=True)
        else:
            _check_space(partial_path, len(paths) * resolution * resolution * np.dtype(dtype).itemsize,
                         resuming=False)
            state = {"fingerprint": fingerprint, "n_total": len(paths), "n_done": 0, "n_rows": 0, "failed": []}
            try:
                with _writing(partial_path):
                    _create_partial_h5(partial_path, len(paths), resolution, dtype)
                with _writing(progress_path):
                    _save_progress(progress_path, state)
            except _WriteFailed as e:
                _remove_partial(partial_path, progress_path)
                reason, _ = _write_reason(e.error)
                raise OutputWriteError(f"{e.path}: cannot create it: {reason}. Nothing was written; free "
                                       f"space (or fix the folder), then run again") from None
        try:
            # No chunk cache: each row goes to the file as it is written, so a full disk fails that
            # write, with nothing left in memory for the close to flush (a failed flush at close
            # made HDF5 crash the interpreter).
            with _writing(partial_path):
                f = h5py.File(partial_path, "r+", rdcc_nbytes=0)
            try:
                failures = _decode_into(f, paths, bits, state, progress_path, partial_path, resolution, dtype,
                                        keep_failed, fast_decode, dicom_rule, num_workers, chunk_images, desc)
            except BaseException:
                with contextlib.suppress(Exception):
                    f.close()
                raise
            with _writing(partial_path):
                f.close()
        except BaseException as err:
            _after_failure(err, partial_path, progress_path, len(paths))
            raise   # not reached for the errors _after_failure replaces
        if publish:
            finalize_h5(out_filepath)
    return failures


def _after_failure(err: BaseException, partial_path: str, progress_path: str, n_total: int) -> None:
    """Clean up after a run that stopped, and raise the error the user should see.

    Nothing committed: the partial files are removed, so the next call starts afresh. Otherwise
    they stay for ``--resume`` (``resume=True``) and the error (or a warning) says so.
    """
    need = _bytes_to_write(partial_path)
    saved = _saved_count(progress_path)
    if saved == 0:
        _remove_partial(partial_path, progress_path)

    def then(fix: str) -> str:
        if saved == 0:
            return f"Nothing was saved (its partial files are removed): {fix}run again."
        return (f"{saved} of {n_total} images are saved in {partial_path}: {fix}run again with --resume "
                f"(resume=True) to continue from there.")

    if isinstance(err, _WriteFailed):
        reason, full = _write_reason(err.error)
        if full:
            free = _free_bytes(err.path)
            raise OutputWriteError(
                f"{err.path}: write failed: {reason} ({_size(free or 0)} free; the images not written yet need "
                f"about {_size(need)} more). {then('free space, then ')}") from None
        raise OutputWriteError(f"{err.path}: write failed: {reason}. {then('fix that, then ')}") from None
    if isinstance(err, WorkerPoolError):
        raise WorkerPoolError(f"{err} {then('')}") from None
    if saved:
        log.warning("stopped by %s: %s", type(err).__name__, then(""))


def build_h5_partial(cxr_paths: Iterable[str], out_filepath: str, resolution: int = RESOLUTION, *,
                     num_workers: int | None = None, dtype: str = "uint8", keep_failed: bool = False,
                     fast_decode: bool = False, resume: bool = False,
                     bits_stored: Sequence[int | None] | None = None, chunk_images: int = 256,
                     desc: str = "images", dicom_rule: str = "mimic") -> list[Failure]:
    """Decode every image into ``<out_filepath>.partial`` (key ``cxr``), resumable.

    Rows follow the input order. A failed image adds no row (``keep_failed=False``) or an
    all-zero row (``keep_failed=True``, the original's row parity). Every ``chunk_images``
    inputs the file is flushed and ``<out>.partial.json`` records how far it got; with
    ``resume=True`` an interrupted run continues from there with the identical result.
    Returns the failures; call :func:`finalize_h5` to publish the file.

    Safe to call again after anything: a run that stopped before its first commit leaves no
    partial files (nor does a kill -9 at that point block the next call); a later one keeps them
    and raises (or warns) how to continue. ``<out_filepath>.lock`` is held while it runs, so a
    second process is told a live one is writing. A file system without room for the images
    is refused up front, and a write that fails anyway (disk full, I/O error) raises
    :class:`OutputWriteError` naming the file, never a crash. Worker processes (``num_workers``,
    default all cores) never re-run the caller's ``__main__``. DICOM inputs become grey levels by
    ``dicom_rule`` (``mimic`` or ``window``, see :mod:`image_reader`).
    """
    return _build(cxr_paths, out_filepath, resolution, num_workers=num_workers, dtype=dtype,
                  keep_failed=keep_failed, fast_decode=fast_decode, resume=resume, bits_stored=bits_stored,
                  chunk_images=chunk_images, desc=desc, publish=False, dicom_rule=dicom_rule)


def finalize_h5(out_filepath: str) -> None:
    """Publish a completed partial file: rename it to ``out_filepath`` and drop the journal."""
    partial_path, progress_path = _partial_paths(out_filepath)
    with open(progress_path) as f:
        state = json.load(f)
    if state["n_done"] != state["n_total"]:
        raise RuntimeError(f"{partial_path} is incomplete ({state['n_done']}/{state['n_total']}); resume it first")
    os.replace(partial_path, out_filepath)
    os.remove(progress_path)


def img_to_hdf5(cxr_paths: Iterable[str], out_filepath: str, resolution: int = RESOLUTION, *,
                num_workers: int | None = None, dtype: str = "uint8", keep_failed: bool = False,
                fast_decode: bool = False, resume: bool = False,
                bits_stored: Sequence[int | None] | None = None, chunk_images: int = 256,
                desc: str = "images", dicom_rule: str = "mimic") -> list[Failure]:
    """Write every image of ``cxr_paths`` to ``out_filepath`` (dataset ``cxr``, shape (N, res, res)).

    Same meaning as the original, made safe: uint8 by default (``dtype="float32"`` for the
    original's layout, same values), parallel decode, failures returned instead of silent
    zero rows (see :func:`build_h5_partial` for the keyword options and what happens when a
    run stops), file published only when complete. Works from any ``__main__``: a script
    without an ``if __name__ == "__main__":`` guard, ``python - < script.py``, a notebook.
    """
    return _build(cxr_paths, out_filepath, resolution, num_workers=num_workers, dtype=dtype,
                  keep_failed=keep_failed, fast_decode=fast_decode, resume=resume, bits_stored=bits_stored,
                  chunk_images=chunk_images, desc=desc, publish=True, dicom_rule=dicom_rule)


# --------------------------------------------------------------------------------------
# MIMIC-CXR image paths
# --------------------------------------------------------------------------------------


def find_files(directory: str, suffix: str | tuple[str, ...] = ".jpg") -> tuple[list[str], Counter]:
    """(every file under ``directory`` ending in ``suffix`` (or one of several, e.g.
    ``IMAGE_SUFFIXES``), sorted part by part; a count of the other files by extension,
    ``(none)`` for names without one)."""
    files, skipped = [], Counter()
    for dirpath, _, names in os.walk(directory):
        for name in names:
            if name.endswith(suffix):
                files.append(os.path.join(dirpath, name))
            else:
                skipped[os.path.splitext(name)[1] or "(none)"] += 1
    return sorted(files, key=lambda p: Path(p).parts), skipped


def describe_skipped(skipped: Counter) -> str:
    """'12 files (.png: 10, .txt: 2)': most frequent extension first."""
    counts = ", ".join(f"{ext}: {n}" for ext, n in sorted(skipped.items(), key=lambda item: (-item[1], item[0])))
    total = sum(skipped.values())
    return f"{total} file{'s' if total != 1 else ''} ({counts})"


def get_files(directory: str, suffix: str = ".jpg") -> list[str]:
    """Every ``*.jpg`` under ``directory``, sorted part by part (deterministic on any machine,
    unlike the original's filesystem order). Files with another extension (``.png``, ``.jpeg``,
    ``.JPG``, ``.dcm``, ...) are left out and counted in one warning, so a folder of PNGs is
    not silently 'no images'."""
    files, skipped = find_files(directory, suffix)
    if skipped:
        log.warning("%s: skipped %s that do not end in %s", directory, describe_skipped(skipped), suffix)
    return files


def get_cxr_path_csv(out_filepath: str, directory: str) -> None:
    """Write the sorted image paths under ``directory`` to a CSV with one column ``Path``."""
    pd.DataFrame({"Path": get_files(directory)}).to_csv(out_filepath, index=False)
