"""run_zero_shot.py when something is wrong (issue 13): every user error is one line on stderr and
exit status 2, before any model runs where the input can be checked up front; a checkpoint that
holds pickled code is refused without running it; tracebacks only with --debug.

The CLI matrix runs ``run_zero_shot.py`` as ``__main__`` (``runpy``, the path ``python
run_zero_shot.py`` takes) in one child interpreter, one case after another with fresh stderr and
logging, because importing torch costs seconds per process on a small CPU; the pickled-code,
and --debug cases also run as separate ``python run_zero_shot.py`` processes.
"""
import json
import pickle
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import clip
import errors
import eval as ev
import run_zero_shot
import zero_shot as zs
from conftest import ROOT, SMALL, run_python, save_clip, small_clip, write_h5, write_labels
from cxr_data import H5_KEY
from labels import CHEXPERT_EVAL_ORDER as LABELS
from model import CLIP

PROG = "run_zero_shot.py"


class PlantedCode:
    """Unpickling this runs ``open(marker, 'w')``: the file appears only if the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# --------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Good files (two small checkpoints, a 12-image test set and a 10-image validation set with
    their labels) and one bad file per failure case."""
    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": d}
    models = d / "models"
    models.mkdir()
    f["models"] = str(models)
    f["model"] = save_clip(models / "model_1.pt", seed=1)
    f["h5"] = write_h5(d / "test.h5")
    f["csv"] = write_labels(d / "gt.csv", LABELS)
    f["val_h5"] = write_h5(d / "val.h5", n=10, seed=5)
    f["val_csv"] = write_labels(d / "val.csv", LABELS, n=10, seed=5, key="Path")

    with h5py.File(d / "wrong_key.h5", "w") as h5:
        h5.create_dataset("images", data=np.zeros((12, 320, 320), np.uint8))
    f["wrong_key_h5"] = str(d / "wrong_key.h5")
    with h5py.File(d / "unit_scale.h5", "w") as h5:  # float32 scaled to 0..1 instead of 0..255
        h5.create_dataset(H5_KEY, data=np.random.default_rng(0).random((12, 320, 320), dtype=np.float32))
    f["unit_scale_h5"] = str(d / "unit_scale.h5")

    table = pd.read_csv(f["csv"])
    table.loc[:2, "Pleural Effusion"] = np.nan            # 3 blanks
    table.loc[3:7, "Pleural Effusion"] = -1               # 5 uncertain
    table.loc[8, "Edema"] = -1
    table.to_csv(d / "uncertain.csv", index=False)
    f["uncertain_csv"] = str(d / "uncertain.csv")
    val = pd.read_csv(f["val_csv"])
    val.loc[0, "Cardiomegaly"] = -1
    val.to_csv(d / "val_uncertain.csv", index=False)
    f["val_uncertain_csv"] = str(d / "val_uncertain.csv")

    (d / "empty_models").mkdir()
    f["empty_models"] = str(d / "empty_models")
    whole = Path(f["model"]).read_bytes()
    (d / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    f["truncated"] = str(d / "truncated.pt")
    (d / "notes.pt").write_text("these are not weights\n")
    f["text_file"] = str(d / "notes.pt")
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2)).state_dict(), d / "cnn.pt")
    f["other_arch"] = str(d / "cnn.pt")
    with_head = small_clip(2).state_dict() | {"head.weight": torch.zeros(14, 32), "head.bias": torch.zeros(14)}
    torch.save(with_head, d / "clip_with_head.pt")
    f["clip_with_head"] = str(d / "clip_with_head.pt")
    torch.save({"epoch": 3, "step": 120, "optimizer": {"lr": 1e-4}}, d / "training.state")
    f["training_state"] = str(d / "training.state")
    f["marker"] = d / "code_ran.marker"
    torch.save(small_clip(3).state_dict() | {"extra": PlantedCode(f["marker"])}, d / "planted.pt")
    f["planted"] = str(d / "planted.pt")
    (d / "a_file").write_text("x")
    f["out_is_file"] = str(d / "a_file")
    return f


def argv(f: dict, out: str, **changes) -> list[str]:
    """Arguments of a good run on the test set, with ``changes`` (flag -> value, None drops it)."""
    flags = {"--model_paths": f["model"], "--cxr_filepath": f["h5"], "--labels_path": f["csv"],
             "--bootstrap": "40", "--device": "cpu", "--out": str(f["dir"] / out)} | changes
    return [x for flag, value in flags.items() if value is not None
            for x in ([flag] + (value if isinstance(value, list) else [value]))]


# (case, changes, what the one line must say)
CASES = [
    ("missing_h5", {"--cxr_filepath": "{dir}/nowhere.h5"}, ["nowhere.h5", "no such h5 file"]),
    ("wrong_h5_key", {"--cxr_filepath": "{wrong_key_h5}"}, ["wrong_key.h5", "no dataset 'cxr'", "images"]),
    ("h5_scaled_0_to_1", {"--cxr_filepath": "{unit_scale_h5}"}, ["unit_scale.h5", "scaled to 0..1", "255"]),
    ("missing_labels_csv", {"--labels_path": "{dir}/nowhere.csv"}, ["--labels_path", "nowhere.csv", "no such"]),
    ("misaligned_labels", {"--cxr_filepath": "{val_h5}"}, ["gt.csv has 12 label rows", "val.h5 has 10 images"]),
    ("missing_label_column", {"--labels": ["Edema", "Nodule"]}, ["gt.csv has no column ['Nodule']", "--labels"]),
    ("uncertain_labels", {"--labels_path": "{uncertain_csv}"},
     ["uncertain.csv", "Pleural Effusion: 3 NaN, 5 uncertain (-1)", "Edema: 1 uncertain (-1)", "0/1", "mapped",
      "--labels"]),
    ("uncertain_val_labels", {"--val_cxr_filepath": "{val_h5}", "--val_labels_path": "{val_uncertain_csv}"},
     ["val_uncertain.csv", "Cardiomegaly: 1 uncertain (-1)"]),
    ("empty_model_folder", {"--model_paths": "{empty_models}"}, ["--model_paths", "empty_models", "no *.pt"]),
    ("missing_model", {"--model_paths": "{dir}/nowhere.pt"}, ["--model_paths", "nowhere.pt", "no such file"]),
    ("truncated_checkpoint", {"--model_paths": "{truncated}"},
     ["truncated.pt", "not a readable PyTorch weights file", "truncated, damaged"]),
    ("text_file_as_checkpoint", {"--model_paths": "{text_file}"}, ["notes.pt", "not a readable PyTorch weights"]),
    ("another_architecture", {"--model_paths": "{other_arch}"}, ["cnn.pt", "not a CLIP state dict"]),
    ("clip_with_extra_keys", {"--model_paths": "{clip_with_head}"},
     ["clip_with_head.pt does not fit the model", "0 missing, 2 unexpected and 0 mis-shaped keys", "head.weight"]),
    ("training_state_as_checkpoint", {"--model_paths": "{training_state}"},
     ["training.state", "not tensors", "epoch"]),
    ("pickled_code", {"--model_paths": "{planted}"}, ["planted.pt", "refused, not loaded", "could run code"]),
    ("wrong_context_length", {"--context_length": "64"}, ["context_length=64", "--context_length 77"]),
    ("batch_size_0", {"--batch_size": "0"}, ["argument --batch_size: must be at least 1, got 0"]),
    ("num_workers_negative", {"--num_workers": "-1"}, ["argument --num_workers: must be at least 0"]),
    ("context_length_0", {"--context_length": "0"}, ["argument --context_length: must be at least 1"]),
    ("min_positives_negative", {"--min_positives": "-1"}, ["argument --min_positives: must be at least 0"]),
    ("bootstrap_too_few", {"--bootstrap": "39"}, ["argument --bootstrap: must be at least 40"]),
    ("template_without_label", {"--pair_template": ["{}", "normal"]}, ["--pair_template 'normal'", "'{}'"]),
    ("out_is_a_file", {"--out": "{out_is_file}"}, ["--out", "a_file", "not a folder"]),
]

DRIVER = r"""
import io, json, logging, runpy, sys, traceback
script = sys.argv[1]
cases = json.load(sys.stdin)
results = {}
for name, args in cases.items():
    sys.argv = [script] + args
    sys.stderr = io.StringIO()
    logging.root.handlers.clear()  # basicConfig in __main__ binds to this case's stderr, as in a new process
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # what an uncaught exception does to a process: traceback, exit 1
        traceback.print_exc()
        status = 1
    results[name] = {"status": status, "stderr": sys.stderr.getvalue()}
sys.stderr = sys.__stderr__
print(json.dumps(results))
"""


def _fill(value, f: dict):
    """'{key}...' -> the path of input ``key``; anything else (e.g. the template '{}') as it is."""
    if isinstance(value, list):
        return [_fill(v, f) for v in value]
    key = value[1:value.find("}")] if value.startswith("{") else None
    return value.format(**f) if key in f else value


@pytest.fixture(scope="module")
def cli_results(inputs) -> dict:
    """Every case of :data:`CASES`, and the good arguments ("good"), run through ``run_zero_shot.py``'s
    ``__main__`` in one child process: {case: {"status": exit status, "stderr": text}}."""
    cases = {name: argv(inputs, f"out_{name}", **{k: _fill(v, inputs) for k, v in changes.items()})
             for name, changes, _ in CASES}
    cases["good"] = argv(inputs, "out_good")
    done = run_python("-c", DRIVER, str(ROOT / PROG), input=json.dumps(cases), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_one_line_user_error(status: int, stderr: str, needles: list[str]) -> str:
    """Exit status 2, no traceback, exactly one error line, the last one, holding every needle."""
    assert status == errors.USER_ERROR_EXIT, stderr
    assert "Traceback" not in stderr, stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(error_lines) == 1 and stderr.rstrip().splitlines()[-1] == error_lines[0], stderr
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])
    return error_lines[0]


@pytest.mark.parametrize("name, needles", [(name, needles) for name, _, needles in CASES],
                         ids=[name for name, _, _ in CASES])
def test_each_user_error_is_one_line_naming_the_input_with_exit_status_2(cli_results, inputs, name, needles):
    result = cli_results[name]
    assert_one_line_user_error(result["status"], result["stderr"], needles)


@pytest.mark.parametrize("name", ["uncertain_labels", "uncertain_val_labels", "misaligned_labels",
                                  "missing_label_column", "h5_scaled_0_to_1", "batch_size_0"])
def test_input_errors_come_before_any_model_runs(cli_results, inputs, name):
    """No prediction is cached, no output folder is made, no model progress bar: the check ran first."""
    assert not (inputs["dir"] / f"out_{name}").exists()
    assert "models:" not in cli_results[name]["stderr"]


def test_the_same_arguments_without_a_fault_run_to_exit_0(cli_results, inputs):
    """The failures come from the faults, not from the arguments or the driver."""
    good = cli_results["good"]
    assert good["status"] == 0 and "error" not in good["stderr"] and "Traceback" not in good["stderr"]
    assert "models:" in good["stderr"]   # the model ran: what the cases above never reach
    table = pd.read_csv(inputs["dir"] / "out_good" / "auroc.csv", index_col="label")
    assert list(table.index) == [*LABELS, "Mean (5 competition)"]
    assert len(list((inputs["dir"] / "out_good" / "cached").glob("model_1-*.npy"))) == 1


# --------------------------------------------------------------------------- real processes
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_python(PROG, *args)


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(inputs):
    marker = inputs["marker"]
    done = run_cli(*argv(inputs, "out_planted_process", **{"--model_paths": inputs["planted"]}))
    assert_one_line_user_error(done.returncode, done.stderr, ["planted.pt", "refused, not loaded", "io.open"])
    assert not marker.exists()
    with pytest.raises(clip.CheckpointError, match="could run code"):
        zs.load_clip(inputs["planted"], pretrained=None, device="cpu")
    assert not marker.exists()
    pickle.loads(pickle.dumps(PlantedCode(marker)))  # the payload is live: unpickling it runs the code
    assert marker.exists()
    marker.unlink()


def test_debug_shows_the_traceback_of_a_user_error(inputs):
    done = run_cli(*argv(inputs, "out_debug", **{"--model_paths": inputs["truncated"]}), "--debug")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "CheckpointError" in done.stderr and "truncated.pt" in done.stderr


# --------------------------------------------------------------------------- library
def test_label_checks_run_before_the_ensemble_in_main(inputs, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model ran before the labels were checked")
    monkeypatch.setattr(zs, "ensemble_models", no_model)
    monkeypatch.setattr(zs, "load_clip", no_model)
    with pytest.raises(ev.LabelValueError, match=r"Pleural Effusion: 3 NaN, 5 uncertain \(-1\)"):
        run_zero_shot.main(argv(inputs, "out_lib", **{"--labels_path": inputs["uncertain_csv"]}))
    with pytest.raises(ev.LabelValueError, match=r"val_uncertain.csv: .*Cardiomegaly: 1 uncertain"):
        run_zero_shot.main(argv(inputs, "out_lib", **{"--val_cxr_filepath": inputs["val_h5"],
                                                      "--val_labels_path": inputs["val_uncertain_csv"]}))
    assert not (inputs["dir"] / "out_lib").exists()


def test_make_true_labels_refuses_uncertain_and_blank_labels_with_counts(inputs):
    with pytest.raises(ValueError, match=r"Edema: 1 uncertain \(-1\); Pleural Effusion: 3 NaN, 5 uncertain") as err:
        zs.make_true_labels(cxr_true_labels_path=inputs["uncertain_csv"], cxr_labels=LABELS)  # Appendix S name
    assert isinstance(err.value, errors.UserError) and "uncertain.csv" in str(err.value)
    ok = [label for label in LABELS if label not in ("Pleural Effusion", "Edema")]
    np.testing.assert_array_equal(zs.make_true_labels(inputs["uncertain_csv"], ok),
                                  pd.read_csv(inputs["uncertain_csv"])[ok].to_numpy())
    table = pd.read_csv(inputs["csv"]).drop(columns="Study")   # cutlabels=False: every column but the first
    table.insert(0, "Key", "x")
    table[LABELS[1]] = table[LABELS[1]].astype(object)
    table.loc[0, LABELS[1]] = "yes"
    table.to_csv(inputs["dir"] / "text_value.csv", index=False)
    with pytest.raises(ev.LabelValueError, match=r"Cardiomegaly: 1 other \('yes'\)"):
        zs.make_true_labels(inputs["dir"] / "text_value.csv", LABELS, cutlabels=False)


def test_evaluate_names_the_label_and_counts_of_non_binary_truth():
    y_true = np.array([[0, 1], [1, -1], [np.nan, 2.0], [1, 0]])
    with pytest.raises(ev.LabelValueError, match=r"binary.*A: 1 NaN; B: 1 uncertain \(-1\), 1 other \(2\)"):
        ev.evaluate(np.full((4, 2), 0.5), y_true, ["A", "B"])


def test_user_errors_keep_the_exception_types_callers_caught_before(inputs, tmp_path):
    """Each user error is also the type it was before (KeyError, ValueError, RuntimeError,
    FileNotFoundError), so existing ``except`` clauses still work."""
    with pytest.raises(KeyError, match=r"no column \['Nodule'\]") as err:
        zs.make_true_labels(inputs["csv"], ["Edema", "Nodule"])
    assert isinstance(err.value, errors.UserError) and not str(err.value).startswith("'")
    with pytest.raises(ValueError, match="label rows") as err:
        zs.check_alignment(inputs["csv"], 11, inputs["h5"])
    assert isinstance(err.value, errors.UserError)
    with pytest.raises(RuntimeError, match="not a readable PyTorch weights file") as err:
        clip.load_checkpoint(inputs["truncated"])
    assert isinstance(err.value, errors.UserError)
    with pytest.raises(FileNotFoundError) as err:
        clip.load_checkpoint(tmp_path / "none.pt")
    assert isinstance(err.value, errors.UserError)
    with pytest.raises(FileNotFoundError, match="no \\*.pt") as err:
        run_zero_shot.expand_model_paths([inputs["empty_models"]])
    assert isinstance(err.value, errors.UserError)
    with pytest.raises(ValueError, match="at least 1000 positives") as err:
        run_zero_shot.main(argv(inputs, "out_rare", **{"--min_positives": "1000"}))
    assert isinstance(err.value, errors.UserError)


def test_architecture_mismatch_is_one_line_that_starts_with_the_summary(inputs):
    other = CLIP(**(SMALL | {"embed_dim": 16, "vision_layers": 3}))   # wider file, deeper model
    with pytest.raises(clip.CheckpointMismatchError) as err:
        clip.load_weights(other, clip.load_checkpoint(inputs["model"]), source=inputs["model"])
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, RuntimeError) and isinstance(err.value, errors.UserError)
    summary = message.split("Details:")[0]
    assert "model_1.pt does not fit the model" in summary and "mis-shaped keys" in summary
    assert "embed_dim=32" in summary and "embed_dim=16" in summary and "pretrained=None" in summary
    assert err.value.wrong_shape and err.value.missing and not err.value.unexpected   # the lists, in full


def test_h5_length_is_the_shared_h5_check(inputs):
    assert zs.h5_length(inputs["h5"]) == 12
    with pytest.raises(errors.UserError, match="scaled to 0..1"):
        zs.h5_length(inputs["unit_scale_h5"])
    with pytest.raises(errors.UserError, match="scaled to 0..1"):
        zs.CXRTestDataset(inputs["unit_scale_h5"])
