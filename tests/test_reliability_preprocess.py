"""Preprocessing when something goes wrong (issue 13): no hang from any ``__main__``, nothing left
behind that blocks the next call, sizes checked before any file is written, a full disk as one
clear error with a resumable output, one writer per output, skipped files counted, and every
user error of the CLI as one line on stderr with exit status 2.

Every run is real, on small JPGs written here. Claims about a process (exit status, stderr, a
hang, a signal) run it in a subprocess with a timeout. To stop a run at a known point without
racing it, one image path is a FIFO: the run blocks reading it until the test writes the image's
bytes into it (or stops the run), and a writer can tell when the run has got there.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import data_process as dp
import preprocess_train_data as cli
from conftest import ROOT, env_with_path, read_h5, run_python

CLI = str(ROOT / "preprocess_train_data.py")
TIMEOUT = 60   # seconds; a run here takes a few


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def jpg_bytes(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.clip(120 + 50 * np.sin(xx / 17 + seed) * np.cos(yy / 23) + rng.normal(0, 8, (h, w)), 20, 255)
    ok, buf = cv2.imencode(".jpg", img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


class Paused:
    """An image whose path is a FIFO: a run that reads it blocks until :meth:`release`."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.fd = path, data, None
        os.mkfifo(path)

    def wait_for_reader(self, proc: subprocess.Popen | None = None) -> None:
        """Return once a process has the FIFO open for reading (the run got to this image)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as e:
                if e.errno != errno.ENXIO:   # ENXIO: nobody reads it yet
                    raise
            assert proc is None or proc.poll() is None, f"the run ended before reading {self.path}"
            time.sleep(0.01)
        raise AssertionError(f"no run read {self.path} within {TIMEOUT} s")

    def release(self) -> None:
        """Hand the waiting reader the image's bytes, then end of file."""
        os.set_blocking(self.fd, True)
        view = memoryview(self.data)
        while view:
            view = view[os.write(self.fd, view):]
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def has_reader(self) -> bool:
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False
            raise

    def make_regular(self) -> None:
        """Replace the FIFO by an ordinary file holding the same image."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(self.data)
        os.replace(tmp, self.path)


def mimic_tree(root: Path, n: int, paused_at: int | None = None, zero_byte_at: int | None = None
               ) -> tuple[list[str], Paused | None]:
    """n MIMIC-style studies (one image, one report each); image ``paused_at`` is a FIFO."""
    paths, paused = [], None
    for i in range(n):
        image = root / "files" / "p10" / f"p100000{i:02d}" / f"s5000{i:04d}" / "img.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        data = jpg_bytes(160 + 4 * i, 200, seed=i)
        if i == paused_at:
            paused = Paused(image, data)
        else:
            image.write_bytes(b"" if i == zero_byte_at else data)
        report = root / "reports" / "p10" / f"p100000{i:02d}" / f"s5000{i:04d}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f" FINDINGS: Heart normal.\n \n IMPRESSION: Finding {i}.\n")
        paths.append(str(image))
    return paths, paused


def cli_args(root: Path, out: Path, *extra: str, csv_dir: Path | None = None) -> list[str]:
    csv_dir = csv_dir or out
    return ["--chest_x_ray_path", str(root / "files"), "--radiology_reports_path", str(root / "reports"),
            "--cxr_out_path", str(out / "cxr.h5"), "--csv_out_path", str(out / "cxr_paths.csv"),
            "--mimic_impressions_path", str(csv_dir / "impressions.csv"), "--num_workers", "1",
            "--chunk_images", "4", *extra]


_STARTED: list[subprocess.Popen] = []


def started(proc: subprocess.Popen) -> subprocess.Popen:
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Whatever a test asserts, the runs it started (each in a session of its own) do not outlive it."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return started(subprocess.Popen([sys.executable, CLI, *args], cwd=cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True))


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_python(CLI, *args, cwd=cwd, timeout=TIMEOUT)


def the_error_line(stderr: str, prog: str = "preprocess_train_data.py") -> str:
    """The one error line of a user error: the last line on stderr, and no traceback. (In this
    process the program name is pytest's.)"""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert errors[0].startswith(f"{prog}: error: "), errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.partial*")) + sorted(p.name for p in folder.glob("*.tmp"))


def run_script(tmp_path: Path, body: str, stdin: bool = False) -> subprocess.Popen:
    """A script WITHOUT an ``if __name__ == "__main__":`` guard, as a file or on stdin (in a
    session of its own, so that :func:`finish` can stop all of its processes), run outside the
    repository with its modules on PYTHONPATH."""
    script = tmp_path / "script.py"
    script.write_text(body)
    argv = [sys.executable, "-"] if stdin else [sys.executable, str(script)]
    return started(subprocess.Popen(argv, stdin=script.open() if stdin else subprocess.DEVNULL, cwd=tmp_path,
                                    env=env_with_path(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True))


def start_img_to_hdf5(tmp_path: Path, paths: list[str], out: Path, num_workers: int) -> subprocess.Popen:
    """An unguarded script calling ``data_process.img_to_hdf5`` (see :func:`run_script`)."""
    return run_script(tmp_path, f"""import data_process
data_process.img_to_hdf5({paths!r}, {str(out)!r}, num_workers={num_workers})
""")


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a run that must end within TIMEOUT; a hung one is killed, with its workers."""
    try:
        return proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"still running after {TIMEOUT} s: killed") from None


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs: a file system the test can fill."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """A file taking the free space of ``folder``'s file system, all of it or all but ``leave`` bytes."""
    filler = folder / "filler"
    budget = shutil.disk_usage(folder).free - leave
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while budget > 0:
                budget -= f.write(block[:budget])
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


# ------------------------------------------------------------------------------------------
# 1. Parallel decoding from any __main__: no hang, no re-run of the caller's script
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["script file", "stdin"])
def test_img_to_hdf5_finishes_from_an_unguarded_script(tmp_path, how):
    paths, _ = mimic_tree(tmp_path / "data", 7, zero_byte_at=2)
    out, ran = tmp_path / "cxr.h5", tmp_path / "ran.log"
    proc = run_script(tmp_path, f"""import data_process
open({str(ran)!r}, "a").write("ran\\n")
failures = data_process.img_to_hdf5({paths!r}, {str(out)!r}, num_workers=2, chunk_images=3)
print("failures", [f.index for f in failures])
""", stdin=how == "stdin")
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "failures [2]"
    assert ran.read_text() == "ran\n"            # the workers did not run the script again
    cxr = read_h5(out)
    kept = [p for i, p in enumerate(paths) if i != 2]
    assert cxr.shape == (len(kept), 320, 320)
    for row, path in enumerate(kept):
        np.testing.assert_array_equal(cxr[row], dp.load_cxr(path))
    assert leftovers(tmp_path) == []


def test_a_pool_whose_workers_cannot_start_is_an_error_not_a_hang(tmp_path):
    """The workers import data_process afresh; here its file is gone by then, so each dies at start."""
    paths, _ = mimic_tree(tmp_path / "data", 6)
    lib = tmp_path / "lib"
    lib.mkdir()
    for module in ROOT.glob("*.py"):   # the project's modules, data_process's imports among them
        shutil.copy(module, lib / module.name)
    out = tmp_path / "cxr.h5"
    script = tmp_path / "script.py"
    script.write_text(f"""import os
import data_process
os.remove({str(lib / "data_process.py")!r})
data_process.img_to_hdf5({paths!r}, {str(out)!r}, num_workers=2)
""")
    env = {**env_with_path(lib), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = started(subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True))
    _, stderr = finish(proc)
    assert proc.returncode != 0
    assert re.search(r"WorkerPoolError: a decode worker process \(pid \d+\) stopped before finishing its share "
                     r"\(exit status 1\): it could not start", stderr), stderr
    assert "Nothing was saved" in stderr
    assert stderr.count("No module named 'data_process'") <= 2      # two workers, no respawning
    assert leftovers(tmp_path) == [] and not out.exists()


def readers_of(path: Path) -> list[int]:
    """Pids of the processes that have ``path`` open (this one included: it holds the writing end)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
    return pids


def test_a_worker_killed_mid_run_is_an_error_not_a_hang(tmp_path):
    """As the kernel's out-of-memory killer would: kill -9 the worker busy with image 5."""
    paths, paused = mimic_tree(tmp_path / "data", 9, paused_at=5)
    out = tmp_path / "cxr.h5"
    proc = start_img_to_hdf5(tmp_path, paths, out, num_workers=2)
    try:
        paused.wait_for_reader(proc)
        deadline = time.monotonic() + TIMEOUT
        while not (found := [pid for pid in readers_of(paused.path) if pid not in (proc.pid, os.getpid())]):
            assert time.monotonic() < deadline   # (its open() returns a moment after ours)
            time.sleep(0.01)
        (worker,) = found
        os.kill(worker, signal.SIGKILL)
        _, stderr = finish(proc)
    finally:
        paused.close()
    assert proc.returncode != 0
    assert f"a decode worker process (pid {worker}) stopped before finishing its share (killed by SIGKILL" in stderr
    assert leftovers(tmp_path) == [] and not out.exists()


def test_ctrl_c_stops_a_parallel_run_and_leaves_nothing_behind(tmp_path):
    paths, paused = mimic_tree(tmp_path / "data", 9, paused_at=5)
    out = tmp_path / "cxr.h5"
    proc = start_img_to_hdf5(tmp_path, paths, out, num_workers=2)
    try:
        paused.wait_for_reader(proc)          # a worker is stuck reading image 5
        proc.send_signal(signal.SIGINT)       # Ctrl-C, to the parent only
        _, stderr = finish(proc)
    finally:
        paused.close()
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert not paused.has_reader()            # the stuck worker was stopped too
    assert leftovers(tmp_path) == [] and not out.exists()

    paused.make_regular()
    assert dp.img_to_hdf5(paths, str(out), num_workers=1) == []     # a plain call just works
    assert read_h5(out).shape == (9, 320, 320)


def test_kill_9_before_the_first_commit_does_not_block_the_next_call(tmp_path):
    paths, paused = mimic_tree(tmp_path / "data", 6, paused_at=2)
    out = tmp_path / "cxr.h5"
    proc = start_img_to_hdf5(tmp_path, paths, out, num_workers=1)
    try:
        paused.wait_for_reader(proc)
        proc.kill()
        finish(proc)
    finally:
        paused.close()
    journal = json.loads(Path(str(out) + ".partial.json").read_text())
    assert journal["n_done"] == 0                       # the kill left a partial run with nothing in it

    paused.make_regular()
    assert dp.img_to_hdf5(paths, str(out), num_workers=1) == []     # no resume=True needed
    cxr = read_h5(out)
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(cxr[row], dp.load_cxr(path))
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------
# 2. A call that fails leaves nothing that blocks the next one (or says how to continue)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_a_failed_call_removes_its_partial_files_unless_images_were_saved(tmp_path, monkeypatch, caplog, stop):
    paths, _ = mimic_tree(tmp_path / "data", 5)
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    dp.img_to_hdf5(paths, str(ref), num_workers=1)
    real = dp.load_task

    def fails_at_3(task, *args, **kwargs):
        if task[0] == 3:
            raise stop("stopped at image 3")
        return real(task, *args, **kwargs)

    monkeypatch.setattr(dp, "load_task", fails_at_3)
    with pytest.raises(stop):                                   # before the first commit
        dp.img_to_hdf5(paths, str(out), num_workers=1, chunk_images=256)
    assert leftovers(tmp_path) == []
    with caplog.at_level(logging.WARNING, logger="data_process"), pytest.raises(stop):
        dp.img_to_hdf5(paths, str(out), num_workers=1, chunk_images=2)   # after committing 2 images
    assert "2 of 5 images are saved" in caplog.text and "resume=True" in caplog.text
    monkeypatch.undo()

    with pytest.raises(dp.ResumeError, match=r"2 of 5 images done.*resume=True"):
        dp.img_to_hdf5(paths, str(out), num_workers=1, chunk_images=2)
    dp.img_to_hdf5(paths, str(out), num_workers=1, chunk_images=2, resume=True)
    assert out.read_bytes() == ref.read_bytes()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------
# 3. Sizes and counts checked before anything is written
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    ({"chunk_images": 0}, "chunk_images must be a positive integer"),
    ({"chunk_images": -4}, "chunk_images must be a positive integer"),
    ({"chunk_images": 2.5}, "chunk_images must be a positive integer"),
    ({"num_workers": -2}, "num_workers must be a positive integer"),
    ({"resolution": 0}, "resolution must be a positive integer"),
])
def test_bad_sizes_are_refused_before_any_file_is_written(tmp_path, bad, match):
    paths, _ = mimic_tree(tmp_path / "data", 2)
    out = tmp_path / "out" / "cxr.h5"
    with pytest.raises(ValueError, match=match):
        dp.img_to_hdf5(paths, str(out), **bad)
    with pytest.raises(ValueError, match=match):
        dp.build_h5_partial(paths, str(out), **bad)
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------
# 4. A full disk: refused up front when it clearly cannot fit, one clear error when it fills
# ------------------------------------------------------------------------------------------


def test_a_disk_too_small_is_refused_up_front_with_the_bytes_needed(tmp_path, tmpfs):
    n = 12
    mimic_tree(tmp_path / "data", n)
    need = n * 320 * 320                        # uint8 rows
    fill(tmpfs, leave=need // 2)
    done = run_cli(cli_args(tmp_path / "data", tmpfs), tmp_path)
    assert done.returncode == 2
    line = the_error_line(done.stderr)
    assert f"{tmpfs}/cxr.h5.partial: not enough free space" in line and f"{need:,} bytes" in line
    assert leftovers(tmpfs) == [] and not (tmpfs / "cxr.h5").exists()


def test_disk_full_mid_run_is_one_line_and_resume_gives_the_same_h5(tmp_path, tmpfs):
    root = tmp_path / "data"
    _, paused = mimic_tree(root, 12, paused_at=9)
    proc = start_cli(cli_args(root, tmpfs), tmp_path)
    try:
        paused.wait_for_reader(proc)            # 8 images committed, the 9th written, 10th pending
        filler = fill(tmpfs)                    # another program takes the rest of the disk
        paused.release()
        _, stderr = finish(proc)
    finally:
        paused.close()
    assert proc.returncode == 2                 # not 139 (segmentation fault)
    line = the_error_line(stderr)
    assert f"{tmpfs}/cxr.h5.partial: write failed: No space left on device" in line
    assert "8 of 12 images are saved" in line and "--resume" in line
    assert json.loads((tmpfs / "cxr.h5.partial.json").read_text())["n_done"] == 8

    filler.unlink()                             # space freed
    paused.make_regular()
    ref = tmp_path / "ref"
    assert cli.main(cli_args(root, ref)) == 0
    assert cli.main([*cli_args(root, tmpfs), "--resume"]) == 0
    assert (tmpfs / "cxr.h5").read_bytes() == (ref / "cxr.h5").read_bytes()
    for name in ("cxr_paths.csv", "impressions.csv", "failed_images.csv"):
        assert (tmpfs / name).read_text() == (ref / name).read_text()
    assert leftovers(tmpfs) == []


def test_a_csv_that_cannot_be_written_is_one_line_and_resume_finishes(tmp_path, tmpfs):
    root = tmp_path / "data"
    mimic_tree(root, 6)
    out, ref = tmp_path / "out", tmp_path / "ref"
    filler = fill(tmpfs)                        # the captions CSV goes to a full disk
    done = run_cli(cli_args(root, out, csv_dir=tmpfs), tmp_path)
    assert done.returncode == 2
    line = the_error_line(done.stderr)
    assert f"{tmpfs}/impressions.csv: cannot write it: No space left on device" in line and "--resume" in line
    assert leftovers(tmpfs) == [] and not (out / "cxr.h5").exists()     # no half CSV, h5 not published

    filler.unlink()
    assert cli.main([*cli_args(root, out, csv_dir=tmpfs), "--resume"]) == 0
    assert cli.main(cli_args(root, ref)) == 0
    assert (out / "cxr.h5").read_bytes() == (ref / "cxr.h5").read_bytes()
    assert (tmpfs / "impressions.csv").read_text() == (ref / "impressions.csv").read_text()
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------
# 5. One writer per output
# ------------------------------------------------------------------------------------------


def test_a_second_run_on_a_live_output_is_told_it_is_being_written(tmp_path):
    root = tmp_path / "data"
    _, paused = mimic_tree(root, 8, paused_at=5)
    out = tmp_path / "out"
    first = start_cli(cli_args(root, out), tmp_path)
    try:
        paused.wait_for_reader(first)           # the first run holds the output, 4 images committed
        second = run_cli(cli_args(root, out), tmp_path)
        assert cli.main([*cli_args(root, out), "--resume"]) == 2      # --resume does not get past it either
        paused.release()
        _, first_err = finish(first)
    finally:
        paused.close()
    assert second.returncode == 2
    line = the_error_line(second.stderr)
    assert f"{out}/cxr.h5 is being written by a live process (pid {first.pid}: preprocessing" in line
    assert "delete" not in line

    assert first.returncode == 0, first_err     # the first run was not disturbed
    paused.make_regular()
    ref = tmp_path / "ref"
    assert cli.main(cli_args(root, ref)) == 0
    assert (out / "cxr.h5").read_bytes() == (ref / "cxr.h5").read_bytes()
    assert (out / "impressions.csv").read_text() == (ref / "impressions.csv").read_text()


# ------------------------------------------------------------------------------------------
# 6. Files skipped by extension are counted
# ------------------------------------------------------------------------------------------


def test_get_files_counts_the_files_it_skips_by_extension(tmp_path, caplog):
    names = {"a.jpg": 1, "b.png": 0, "c.png": 0, "d.jpeg": 0, "e.JPG": 0, "f.dcm": 0, "README": 0}
    for name in names:
        (tmp_path / "s1" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "s1" / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="data_process"):
        files = dp.get_files(str(tmp_path))
    assert [Path(f).name for f in files] == [n for n, picked in names.items() if picked]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    skipped = sum(1 for picked in names.values() if not picked)
    assert f"skipped {skipped} files" in warnings[0]
    for part in (".png: 2", ".jpeg: 1", ".JPG: 1", ".dcm: 1", "(none): 1"):
        assert part in warnings[0]

    caplog.clear()
    (tmp_path / "only_jpgs").mkdir()
    (tmp_path / "only_jpgs" / "x.jpg").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="data_process"):
        assert len(dp.get_files(str(tmp_path / "only_jpgs"))) == 1
    assert not caplog.records                   # nothing skipped, nothing said


# ------------------------------------------------------------------------------------------
# 7. User errors: one line on stderr, exit status 2, no traceback
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing folder", "bad --labels_path", "--chunk_images 0"])
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, case):
    out = tmp_path / "out"
    if case == "missing folder":
        args = cli_args(tmp_path / "nowhere", out)
        expect = f"--chest_x_ray_path {tmp_path}/nowhere/files is not a folder"
    elif case == "bad --labels_path":
        args = ["--dataset_type", "chexpert-test", "--chest_x_ray_path", str(tmp_path),
                "--labels_path", str(tmp_path / "groundtruth.csv"), "--cxr_out_path", str(out / "t.h5")]
        expect = f"CheXpert test groundtruth.csv not found: {tmp_path}/groundtruth.csv"
    else:
        mimic_tree(tmp_path / "data", 2)
        args = cli_args(tmp_path / "data", out, "--chunk_images", "0")
        expect = "argument --chunk_images: must be at least 1, got 0"
    done = run_cli(args, tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expect in the_error_line(done.stderr)
    assert not out.exists()


@pytest.mark.parametrize("case", ["--num_workers -3", "a folder of PNGs", "labels that are not a CSV"])
def test_more_user_errors_name_the_flag_or_file(tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "--num_workers -3":
        mimic_tree(tmp_path / "data", 2)
        args, expect = cli_args(tmp_path / "data", out, "--num_workers", "-3"), \
            "argument --num_workers: must be at least 1, got -3"
    elif case == "a folder of PNGs":
        for i in range(3):
            folder = tmp_path / "data" / "files" / "p10" / f"p1000000{i}" / "s1"
            folder.mkdir(parents=True)
            cv2.imwrite(str(folder / "img.png"), np.full((20, 20), 100, np.uint8))
        (tmp_path / "data" / "reports").mkdir()
        args, expect = cli_args(tmp_path / "data", out), "it holds 3 files (.png: 3)"
    else:
        (tmp_path / "groundtruth.csv").write_bytes(jpg_bytes(40, 40, 0))
        args = ["--dataset_type", "chexpert-test", "--chest_x_ray_path", str(tmp_path),
                "--labels_path", str(tmp_path / "groundtruth.csv"), "--cxr_out_path", str(out / "t.h5")]
        expect = f"{tmp_path}/groundtruth.csv: not a readable CSV"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in the_error_line(err, prog=Path(sys.argv[0]).name)
    assert not out.exists()
