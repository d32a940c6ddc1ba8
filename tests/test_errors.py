"""The shared error path: user errors are one line and exit 2, bugs keep their traceback; the h5
check and the output lock that every CLI uses."""
import errno
import subprocess
import sys

import h5py
import numpy as np
import pytest

import cxr_data
import errors
import run_lock
from conftest import ROOT
from cxr_data import H5_KEY


def _main_raising(exc):
    def main(argv):
        raise exc
    return main


def test_a_user_error_is_one_line_on_stderr_with_exit_status_2(capsys):
    status = errors.run_cli(_main_raising(errors.UserError("--flag x: wrong.\nDo y instead.")), [])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "error: --flag x: wrong. Do y instead." in err
    assert "Traceback" not in err


def test_a_full_disk_names_the_file_and_says_what_to_do(capsys):
    status = errors.run_cli(_main_raising(OSError(errno.ENOSPC, "No space left on device", "/data/cxr.h5")), [])
    err = capsys.readouterr().err
    assert status == 2 and "/data/cxr.h5" in err and "no space left" in err and "--resume" in err


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        errors.run_cli(_main_raising(ZeroDivisionError("bug")), [])


def test_debug_flag_and_environment_show_the_traceback_of_a_user_error(monkeypatch):
    with pytest.raises(errors.UserError):
        errors.run_cli(_main_raising(errors.UserError("x")), ["--debug"])
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(errors.UserError):
        errors.run_cli(_main_raising(errors.UserError("x")), [])


def test_main_return_value_is_the_exit_status():
    assert errors.run_cli(lambda argv: 3, []) == 3
    assert errors.run_cli(lambda argv: {"a table": 1}, []) == 0


def _h5(path, images):
    with h5py.File(path, "w") as f:
        f.create_dataset(H5_KEY, data=images)
    return path


def test_h5_rows_counts_a_preprocessed_file(tmp_path):
    rng = np.random.default_rng(0)
    assert cxr_data.h5_rows(_h5(tmp_path / "u8.h5", rng.integers(0, 256, (5, 8, 8), dtype=np.uint8))) == 5
    assert cxr_data.h5_rows(_h5(tmp_path / "f32.h5", rng.uniform(0, 255, (3, 8, 8)).astype(np.float32))) == 3


@pytest.mark.parametrize("images, needle", [
    (np.random.default_rng(0).uniform(0, 1, (20, 8, 8)).astype(np.float32), "scaled to 0..1"),
    (np.full((4, 8, 8), 300.0, dtype=np.float32), "0..255"),
    (np.full((4, 8, 8), np.nan, dtype=np.float32), "NaN"),
    (np.zeros((4, 8), dtype=np.uint8), "expected (N, H, W)"),
    (np.zeros((4, 8, 8), dtype=np.int64), "expected uint8 or float32"),
])
def test_h5_rows_refuses_files_that_are_not_grey_levels(tmp_path, images, needle):
    with pytest.raises(errors.UserError, match=r"u\.h5.*" + __import__("re").escape(needle)):
        cxr_data.h5_rows(_h5(tmp_path / "u.h5", images))


def test_h5_rows_names_a_missing_file_a_wrong_key_and_a_non_h5_file(tmp_path):
    with pytest.raises(errors.UserError, match="no such h5 file"):
        cxr_data.h5_rows(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "key.h5", "w") as f:
        f.create_dataset("cxr_unprocessed", data=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(errors.UserError, match=r"no dataset 'cxr' \(it holds \['cxr_unprocessed'\]\)"):
        cxr_data.h5_rows(tmp_path / "key.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(errors.UserError, match="not a readable HDF5 file"):
        cxr_data.h5_rows(tmp_path / "text.h5")


LOCK_HOLDER = """
import sys, time, run_lock
with run_lock.hold(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_live_holder_is_named_and_a_killed_one_releases_the_lock(tmp_path):
    out = tmp_path / "out.h5"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(errors.UserError, match=rf"being written by a live process \(pid {holder.pid}: test holder"):
            with run_lock.hold(out, "second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock.hold(out, "after kill -9"):   # the kernel dropped the dead holder's lock
        assert "after kill -9" in run_lock.lock_path(out).read_text()


def test_a_user_error_that_is_also_an_os_error_is_still_one_line(capsys):
    class MissingModel(errors.UserError, FileNotFoundError):
        pass
    assert errors.run_cli(_main_raising(MissingModel("--model_paths m.pt: no such file")), []) == 2
    assert "error: --model_paths m.pt: no such file" in capsys.readouterr().err


def test_a_bad_flag_is_one_line_with_exit_status_2(capsys):
    parser = errors.ArgumentParser(prog="tool")
    parser.add_argument("--batch_size", type=errors.positive_int)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--batch_size", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err == "tool: error: argument --batch_size: must be at least 1, got 0 (see --help)\n"
    assert parser.parse_args(["--debug"]).debug is True
