"""Training under hostile inputs and faults (issue 13, training half): a state file that would run
code, flags that would train nothing, resumes that change the run, damaged states, duplicate
metrics rows, a second run into a live run's folder, and inputs that are checked before they cost
time. Every user error is one line on stderr with exit status 2, no traceback."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import errors
import run_lock
import run_train
import train
from conftest import CAPTIONS, MICRO, ROOT
from cxr_data import H5_KEY

N = 24   # images: 3 batches of 8 per epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """24 uint8 images at the micro model's 32 px (no resize), 4 kinds of caption."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (N, 32, 32), dtype=np.uint8)
    for i in range(N):
        images[i, 4 + 6 * (i % 4): 10 + 6 * (i % 4), 8:24] = 230
    with h5py.File(root / "cxr.h5", "w") as f:
        f.create_dataset(H5_KEY, data=images)
    pd.DataFrame({"impression": [CAPTIONS[i % 4] for i in range(N)]}).to_csv(root / "impressions.csv", index=False)
    return root / "cxr.h5", root / "impressions.csv"


def argv(data, save_dir: Path, *extra: str, cxr=None, txt=None) -> list[str]:
    return ["--cxr_filepath", str(cxr or data[0]), "--txt_filepath", str(txt or data[1]), "--save_dir", str(save_dir),
            "--batch_size", "8", "--lr", "1e-3", "--log_interval", "1", *MICRO, *extra]


def train_run(args: list[str]) -> Path:
    return train.train(run_train.parse_args(args))


def cli(args: list[str], capsys) -> tuple[int, str]:
    """run_train's CLI in this process: exit status and stderr."""
    capsys.readouterr()
    status = errors.run_cli(run_train.main, args)
    return status, capsys.readouterr().err


def error_lines(stderr: str) -> list[str]:
    """stderr without the log lines and progress bars a run writes before it fails."""
    return [line for line in stderr.splitlines()
            if line.strip() and " INFO " not in line and " WARNING " not in line and "training:" not in line]


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("run_train.py: error: "), done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- security
class RunsCode:
    """Unpickling this calls ``func(*args)``: what a hostile training-state file would hold."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def plant_code(tmp_path: Path, payload: RunsCode) -> None:
    """A run folder whose latest.json names a state file that runs ``payload`` when unpickled."""
    run_dir = tmp_path / "pt-imp"
    run_dir.mkdir()
    torch.save({"weights": payload, "optimizer": {}, "step": 3}, run_dir / "checkpoint_3.state")
    (run_dir / "latest.json").write_text(json.dumps({"state": "checkpoint_3.state", "step": 3}))


def test_resume_refuses_a_state_file_that_would_run_code(data, tmp_path) -> None:
    marker = tmp_path / "code_ran"
    plant_code(tmp_path, RunsCode(pathlib.Path.touch, marker))
    done = run_script(argv(data, tmp_path, "--resume", "latest"))
    line = assert_one_line_error(done, "checkpoint_3.state", "(getattr)", "could run code", "refused unread")
    assert "No other intact checkpoint_*.state" in line
    assert not marker.exists(), "loading the state file ran its code"


def test_resume_refuses_a_state_file_that_would_call_os_system(data, tmp_path, capsys) -> None:
    marker = tmp_path / "code_ran"
    plant_code(tmp_path, RunsCode(os.system, f"touch {marker}"))
    status, stderr = cli(argv(data, tmp_path, "--resume", "latest"), capsys)
    assert status == 2 and "(posix.system)" in stderr and "could run code" in stderr
    assert not marker.exists(), "loading the state file ran its code"


def test_no_torch_load_outside_weights_only_remains() -> None:
    needle = "weights_only=" + "False"
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if ".venv" not in p.parts and needle in p.read_text(errors="replace")]
    assert offenders == []


def test_training_state_loads_weights_only_and_round_trips_the_rngs(data, tmp_path) -> None:
    train_run(argv(data, tmp_path, "--max_steps", "1"))
    state = torch.load(tmp_path / "pt-imp" / "checkpoint.state", weights_only=True)
    assert set(train.STATE_KEYS) <= set(state) and state["config"]["batch_size"] == 8
    np.random.seed(5)
    import random
    random.seed(5)
    saved = train.rng_state()
    expected = (np.random.rand(3), random.random(), torch.rand(2))
    train.set_rng_state(saved)
    np.testing.assert_array_equal(np.random.rand(3), expected[0])
    assert random.random() == expected[1]
    torch.testing.assert_close(torch.rand(2), expected[2], rtol=0, atol=0)


# --------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag,value,says", [
    ("--batch_size", "0", "must be at least 1"), ("--batch_size", "-4", "must be at least 1"),
    ("--epochs", "0", "must be at least 1"), ("--save_interval", "0", "must be at least 1"),
    ("--log_interval", "0", "must be at least 1"), ("--val_interval", "0", "must be at least 1"),
    ("--keep_best", "0", "must be at least 1"), ("--keep_last", "0", "must be at least 1"),
    ("--accum_freq", "0", "must be at least 1"), ("--context_length", "0", "must be at least 1"),
    ("--max_steps", "0", "must be at least 1"), ("--num_workers", "-1", "must be at least 0"),
    ("--lr", "0", "must be > 0"), ("--lr", "-1e-4", "must be > 0"), ("--lr", "nan", "must be > 0"),
    ("--batch_size", "eight", "expected a whole number"), ("--seed", "-1", "must be at least 0"),
])
def test_counts_and_rates_that_would_train_nothing_are_refused_by_name(flag, value, says, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_train.parse_args([f"{flag}={value}"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"error: argument {flag}: {says}" in line


def test_resume_override_needs_resume(capsys) -> None:
    with pytest.raises(SystemExit):
        run_train.parse_args(["--resume_override", "lr"])
    assert "--resume_override only applies with --resume" in capsys.readouterr().err


def test_a_resume_that_takes_no_optimizer_step_exits_non_zero_and_writes_no_checkpoint(data, tmp_path, capsys) -> None:
    train_run(argv(data, tmp_path, "--epochs", "1"))
    run_dir = tmp_path / "pt-imp"
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    status, stderr = cli(argv(data, tmp_path, "--epochs", "1", "--resume", "latest"), capsys)
    assert status == 2
    assert "is at step 3, already the end of its --epochs 1; nothing to train" in error_lines(stderr)[0]
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


# --------------------------------------------------------------------------- resume settings
def recorded_batches(monkeypatch) -> list[list[int]]:
    """Every batch of sample indices the training loader reads (num_workers 0: in this process)."""
    seen: list[list[int]] = []
    original = train.PairBatches.__getitem__

    def reading(self, i):
        seen.append(self.batches[i].tolist())
        return original(self, i)

    monkeypatch.setattr(train.PairBatches, "__getitem__", reading)
    return seen


def test_resume_with_another_batch_size_sees_the_samples_of_an_uninterrupted_run(data, tmp_path, monkeypatch) -> None:
    seen = recorded_batches(monkeypatch)
    train_run(argv(data, tmp_path / "straight", "--epochs", "2", "--max_steps", "4"))    # 32 samples: into epoch 1
    straight = [i for batch in seen for i in batch]
    seen.clear()
    train_run(argv(data, tmp_path / "split", "--epochs", "2", "--max_steps", "2"))       # 16 of epoch 0's 24
    state = torch.load(tmp_path / "split" / "pt-imp" / "checkpoint.state", weights_only=True)
    assert (state["epoch"], state["sample_in_epoch"]) == (0, 16)
    first = [i for batch in seen for i in batch]
    seen.clear()
    # the 8 samples left of epoch 0 in 2 batches of 4, then 8 samples of epoch 1 in 2 more
    train_run(argv(data, tmp_path / "split", "--epochs", "2", "--max_steps", "6", "--batch_size", "4",
                   "--resume", "latest", "--resume_override", "batch_size"))
    assert [len(batch) for batch in seen] == [4, 4, 4, 4]
    assert first + [i for batch in seen for i in batch] == straight
    assert len(straight) == 32 and sorted(straight[:N]) == list(range(N))
    state = torch.load(tmp_path / "split" / "pt-imp" / "checkpoint.state", weights_only=True)
    assert (state["step"], state["epoch"], state["sample_in_epoch"]) == (6, 1, 8)


def test_resume_refuses_changed_settings_with_the_list_of_differences(data, tmp_path, capsys) -> None:
    base = ("--epochs", "2", "--max_steps", "2", "--lr_schedule", "cosine", "--optimizer", "sgd")
    train_run(argv(data, tmp_path, *base))
    edited = tmp_path / "edited.csv"
    frame = pd.read_csv(data[1])
    frame.loc[0, "impression"] = "small right apical pneumothorax"
    frame.to_csv(edited, index=False)
    status, stderr = cli(argv(data, tmp_path, "--epochs", "3", "--max_steps", "2", "--lr_schedule", "cosine",
                              "--optimizer", "adam", "--batch_size", "4", "--lr", "0.5", "--seed", "7",
                              "--log_interval", "5", "--resume", "latest", txt=edited), capsys)
    assert status == 2
    (line,) = error_lines(stderr)
    for difference in ("--batch_size: 8 -> 4", "--epochs: 2 -> 3", "--lr: 0.001 -> 0.5", "--optimizer: sgd -> adam",
                       "--seed: 1234 -> 7", f"--txt_filepath: {data[1]} (", f"-> {edited} ("):
        assert difference in line
    assert "--log_interval" not in line                                    # free to change
    assert "--weight_decay" not in line                  # left at its default: adam brings AdamW's own
    assert line.endswith("--resume_override batch_size,epochs,lr,optimizer,seed,txt_filepath")
    # the same CSV under the same name, edited in place, is a difference too
    copy = tmp_path / "copy.csv"
    pd.read_csv(data[1]).to_csv(copy, index=False)
    train_run(argv(data, tmp_path / "b", "--max_steps", "1", txt=copy))
    frame.to_csv(copy, index=False)
    status, stderr = cli(argv(data, tmp_path / "b", "--max_steps", "2", "--resume", "latest", txt=copy), capsys)
    assert status == 2 and f"--txt_filepath: {copy} (" in error_lines(stderr)[0]
    status, stderr = cli(argv(data, tmp_path / "b", "--resume", "latest", "--resume_override", "lr,log_interval",
                              txt=copy), capsys)
    assert status == 2 and "--resume_override log_interval: not a setting compared on resume" in stderr


def test_flags_left_out_on_resume_take_the_saved_values(data, tmp_path) -> None:
    train_run(argv(data, tmp_path, "--max_steps", "2", "--optimizer", "adam", "--lr", "3e-3"))
    # only the run folder and what this invocation needs: lr, optimizer, data and model come from the state
    train_run(["--save_dir", str(tmp_path), "--resume", "latest", "--max_steps", "3", "--num_workers", "0",
               "--device", "cpu"])
    state = torch.load(tmp_path / "pt-imp" / "checkpoint.state", weights_only=True)
    assert state["step"] == 3 and state["config"]["lr"] == 3e-3 and state["config"]["optimizer"] == "adam"
    assert state["config"]["cxr_filepath"] == str(data[0])


def test_resume_override_lr_really_changes_the_lr(data, tmp_path) -> None:
    train_run(argv(data, tmp_path, "--max_steps", "2"))
    with pytest.raises(errors.UserError, match=r"--lr: 0.001 -> 0.5\. .*--resume_override lr$"):
        train_run(argv(data, tmp_path, "--max_steps", "4", "--lr", "0.5", "--resume", "latest"))
    train_run(argv(data, tmp_path, "--max_steps", "4", "--lr", "0.5", "--resume", "latest", "--resume_override", "lr"))
    metrics = pd.read_csv(tmp_path / "pt-imp" / "metrics.csv")
    assert metrics["lr"].tolist() == [1e-3, 1e-3, 0.5, 0.5]
    state = torch.load(tmp_path / "pt-imp" / "checkpoint.state", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.5]
    assert state["config"]["lr"] == 0.5 and state["scheduler"]["base_lrs"] == [0.5]


def test_resume_override_optimizer_starts_a_fresh_adam_state(data, tmp_path, caplog) -> None:
    """Before: ``--resume latest --optimizer adam`` died with KeyError: 'step'."""
    train_run(argv(data, tmp_path, "--max_steps", "2", "--optimizer", "sgd"))
    with caplog.at_level("INFO", logger="checkpoints"):
        train_run(argv(data, tmp_path, "--max_steps", "3", "--optimizer", "adam", "--resume", "latest",
                       "--resume_override", "optimizer"))
    assert "starts from a fresh state" in caplog.text
    state = torch.load(tmp_path / "pt-imp" / "checkpoint.state", weights_only=True)
    assert state["step"] == 3
    moments = next(iter(state["optimizer"]["state"].values()))
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(moments) and float(moments["step"]) == 1


# --------------------------------------------------------------------------- damaged states, metrics
@pytest.mark.parametrize("damaged", ["state", "weights"])
def test_resume_from_a_truncated_state_names_it_and_offers_the_previous_intact_one(data, tmp_path, capsys,
                                                                                   damaged) -> None:
    common = ("--save_interval", "1", "--keep_last", "2")
    train_run(argv(data, tmp_path, "--max_steps", "3", *common))
    run_dir = tmp_path / "pt-imp"
    bad = run_dir / ("checkpoint.state" if damaged == "state" else "checkpoint.pt")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    status, stderr = cli(argv(data, tmp_path, "--max_steps", "4", "--resume", "latest", *common), capsys)
    assert status == 2
    (line,) = error_lines(stderr)
    assert f"{bad} " in line and "truncated" in line
    assert (f"The newest intact earlier state is {run_dir / 'checkpoint_3.state'}: continue with --resume "
            f"{run_dir / 'checkpoint_3.state'} (other intact ones, newest first: "
            f"{run_dir / 'checkpoint_2.state'})") in line
    # the offered state works
    train_run(argv(data, tmp_path, "--max_steps", "4", "--resume", str(run_dir / "checkpoint_3.state"), *common))
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 4


def test_metrics_rows_logged_after_the_resumed_state_are_dropped(data, tmp_path) -> None:
    """kill -9 after a step's metrics row but before its state: the resumed run logs that step again."""
    train_run(argv(data, tmp_path, "--max_steps", "3", "--save_interval", "2"))
    run_dir = tmp_path / "pt-imp"
    metrics = run_dir / "metrics.csv"
    first = pd.read_csv(metrics)
    with open(metrics, "a") as f:
        f.write("4,1,2.07")                                    # a row torn by the kill
    # as if killed after step 3 was logged but before its state: the latest state is step 2's
    (run_dir / "latest.json").write_text(json.dumps({"state": "checkpoint_2.state", "step": 2}))
    train_run(argv(data, tmp_path, "--max_steps", "4", "--save_interval", "2", "--resume", "latest"))
    after = pd.read_csv(metrics)
    assert after["step"].tolist() == [1, 2, 3, 4]
    # step 3 was recomputed from step 2's state, identically
    assert after["loss"].iloc[:3].tolist() == first["loss"].tolist()


# --------------------------------------------------------------------------- concurrency
def test_a_second_training_into_a_live_runs_folder_is_refused(data, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "pt-imp"
    refusals: list[str] = []
    original = train.train_step

    def step_and_try_a_second_run(*a, **k):
        if not refusals:        # while this run trains, another asks for the same folder
            with pytest.raises(errors.UserError) as err:
                train_run(argv(data, tmp_path, "--max_steps", "2", "--resume", "latest"))
            refusals.append(str(err.value))
        return original(*a, **k)

    monkeypatch.setattr(train, "train_step", step_and_try_a_second_run)
    train_run(argv(data, tmp_path, "--max_steps", "2"))
    assert len(refusals) == 1
    assert f"{run_dir} is being written by a live process (pid {os.getpid()}: training" in refusals[0]
    with run_lock.hold(run_dir, "check"):       # released when the run ends
        pass


# --------------------------------------------------------------------------- inputs
def test_captions_mostly_empty_are_refused_before_the_model_is_built(data, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(train, "make_model", lambda config: pytest.fail("the model was built"))
    captions = [CAPTIONS[i % 4] for i in range(N)]
    for i in range(13):
        captions[i] = np.nan if i % 2 else "  "
    csv = tmp_path / "blank.csv"
    pd.DataFrame({"filename": [f"s{i}.txt" for i in range(N)], "impression": captions}).to_csv(csv, index=False)
    with pytest.raises(errors.UserError, match=rf"{csv}: 13 of 24 'impression' captions are empty \(more than 50%\)"):
        train_run(argv(data, tmp_path, txt=csv))
    assert train.MAX_EMPTY_CAPTION_FRACTION == 0.5


def test_some_empty_captions_are_counted_in_a_warning(tmp_path, caplog) -> None:
    csv = tmp_path / "some.csv"
    pd.DataFrame({"filename": list("abcd"), "impression": ["effusion", np.nan, " ", "edema"]}).to_csv(csv, index=False)
    with caplog.at_level("WARNING", logger="cxr_data"):
        assert train.check_captions(csv) == 4
    assert "2 of 4 'impression' captions are empty" in caplog.text


def test_float_h5_scaled_to_one_is_refused(tmp_path) -> None:
    path = tmp_path / "scaled.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(H5_KEY, data=np.random.default_rng(0).random((4, 32, 32), dtype=np.float32))
    with pytest.raises(errors.UserError, match="scaled to 0..1"):
        train.h5_rows(path)


@pytest.mark.parametrize("problem,says", [
    ("missing", "no such validation labels CSV"),
    ("nan", "column 'Atelectasis' has 1 of 24 values that are not 0 or 1 (nan)"),
    ("uncertain", "column 'Edema' has 2 of 24 values that are not 0 or 1 (-1)"),
    ("column", "lacks the label columns ['Pleural Effusion']"),
    ("rows", "holds 24 images but"),
])
def test_bad_validation_labels_are_refused_before_training(data, tmp_path, monkeypatch, problem, says) -> None:
    monkeypatch.setattr(train, "make_model", lambda config: pytest.fail("the model was built"))
    labels = pd.DataFrame(np.zeros((N, 5), dtype=int), columns=train.COMPETITION_LABELS)
    if problem == "nan":
        labels["Atelectasis"] = labels["Atelectasis"].astype(float)
        labels.loc[3, "Atelectasis"] = np.nan
    if problem == "uncertain":
        labels.loc[[1, 2], "Edema"] = -1
    if problem == "column":
        labels = labels.drop(columns="Pleural Effusion")
    if problem == "rows":
        labels = labels.head(10)
    path = tmp_path / "val.csv"
    if problem != "missing":
        labels.to_csv(path, index=False)
    with pytest.raises(errors.UserError, match=re.escape(says)):
        train_run(argv(data, tmp_path, "--val_cxr_filepath", str(data[0]), "--val_labels_path", str(path)))


def test_epoch_batches_from_the_start_equal_distributed_sampler() -> None:
    from torch.utils.data import DistributedSampler
    for n, world, batch in ((50, 1, 8), (50, 2, 4), (7, 4, 3)):
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=11)
            sampler.set_epoch(2)
            expected = list(sampler)
            got = [i for b in train.epoch_batches(n, batch, 2, 11, rank, world) for i in b.tolist()]
            assert got == expected


# --------------------------------------------------------------------------- the CLI: one line, exit 2
@pytest.fixture(scope="module")
def bad_inputs(data, tmp_path_factory) -> dict[str, list[str]]:
    """run_train.py arguments for each user error, and what its one line must say."""
    root = tmp_path_factory.mktemp("bad")
    with h5py.File(root / "wrong_key.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((N, 32, 32), np.uint8))
    pd.read_csv(data[1]).head(10).to_csv(root / "short.csv", index=False)
    pd.read_csv(data[1]).rename(columns={"impression": "report"}).to_csv(root / "report.csv", index=False)
    (root / "garbage.state").write_bytes(b"PK\x03\x04 not a training state")
    train_run(argv(data, root / "truncated", "--max_steps", "1"))
    state = root / "truncated" / "pt-imp" / "checkpoint.state"
    state.write_bytes(state.read_bytes()[:300])
    return {
        "missing h5": (argv(data, root, cxr=root / "nope.h5"), [f"{root / 'nope.h5'}: no such h5 file"]),
        "wrong key": (argv(data, root, cxr=root / "wrong_key.h5"), ["no dataset 'cxr'", "['images']"]),
        "misaligned CSV": (argv(data, root, txt=root / "short.csv"), ["holds 24 images but", "has 10 caption rows"]),
        "missing column": (argv(data, root, txt=root / "report.csv"), ["has no column 'impression'", "['report']"]),
        "bad checkpoint": (argv(data, root, "--resume", str(root / "garbage.state")),
                           [f"--resume {root / 'garbage.state'}: {root / 'garbage.state'} is damaged"]),
        "truncated state": (argv(data, root / "truncated", "--resume", "latest"),
                            [f"{state} is damaged or truncated", "No other intact checkpoint_*.state"]),
    }


@pytest.mark.parametrize("case", ["missing h5", "wrong key", "misaligned CSV", "missing column", "bad checkpoint",
                                  "truncated state"])
def test_user_errors_are_one_line_and_exit_2(bad_inputs, case) -> None:
    args, fragments = bad_inputs[case]
    assert_one_line_error(run_script(args), *fragments)


def test_a_flag_error_is_one_line_and_exit_2(data, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(argv(data, tmp_path, "--epochs", "0"), capsys)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "error: argument --epochs: must be at least 1 (passes over the data), got 0" in line


def test_debug_shows_the_traceback(bad_inputs, capsys) -> None:
    with pytest.raises(errors.UserError, match="no such h5 file"):
        cli([*bad_inputs["missing h5"][0], "--debug"], capsys)


def test_two_ranks_resumed_mid_epoch_consume_the_samples_a_single_process_would() -> None:
    """The data position is a sample count: any batch size and number of processes continue from it."""
    single = train.batch_plan(50, 8, seed=3, epochs=2, epoch=0, start=16)
    ranks = [train.batch_plan(50, 4, seed=3, epochs=2, epoch=0, start=16, rank=r, world=2) for r in range(2)]
    assert [consumed for _, consumed, _ in ranks[0]] == [consumed for _, consumed, _ in single]
    for (e, _, idx), (_, _, a), (_, _, b) in zip(single, *ranks):
        assert sorted(idx.tolist()) == sorted(set(a.tolist()) | set(b.tolist()))   # the last one padded
    assert [i for _, _, idx in single[:5] for i in idx] == train.epoch_order(50, 0, 3)[16:].tolist()


def test_a_change_in_processes_is_a_change_in_the_global_batch(data, tmp_path) -> None:
    config = run_train.parse_args(argv(data, tmp_path, "--batch_size", "4"))
    files = {key: train.file_fingerprint(getattr(config, key)) for key in train.DATA_FLAGS}
    saved = {"config": {**train.plain_config(config), "batch_size": 8}, "world": 1, "data": files}
    assert train.resume_differences(saved, config, files, world=2) == []         # 8 x 1 = 4 x 2
    assert train.resume_differences(saved, config, files, world=1) == [("batch_size", "8", "4")]
    assert train.resume_differences(saved, config, files, world=4) == [
        ("batch_size", "8 x 1 processes", "4 x 4 processes")]
