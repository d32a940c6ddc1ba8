"""Exactness of the scaled-up training paths on the CPU: 2-process torchrun (gloo) with
per-rank batch B equals 1 process with batch 2B; --accum_freq 2 equals a batch twice as large;
bf16 autocast stays within 1e-2 of fp32."""
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_train
import train
from conftest import MICRO, torchrun


def argv(files, save_dir, batch: int, *extra: str) -> list[str]:
    return ["--cxr_filepath", str(files[0]), "--txt_filepath", str(files[1]), "--save_dir", str(save_dir),
            "--batch_size", str(batch), "--lr", "0.05", "--optimizer", "sgd", "--max_steps", "3",
            "--log_interval", "1", *MICRO, *extra]


def weights_and_losses(save_dir: Path) -> tuple[dict, list[float]]:
    run_dir = save_dir / "pt-imp"
    return (torch.load(run_dir / "checkpoint.pt", weights_only=True),
            pd.read_csv(run_dir / "metrics.csv")["loss"].tolist())


def assert_same_run(a: Path, b: Path) -> None:
    (wa, la), (wb, lb) = weights_and_losses(a), weights_and_losses(b)
    assert la == pytest.approx(lb, rel=1e-5)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=2e-6, msg=key)
    # the run really moved the weights
    moved = (wa["visual.proj"] - train.make_model(run_train.parse_args(["--random_init", *MICRO])).visual.proj).abs()
    assert moved.max() > 1e-4


@pytest.fixture(scope="module")
def single_process(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    train.train(run_train.parse_args(argv(pairs, out, 8)))
    return out


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_gloo_ranks_equal_one_process_with_twice_the_batch(pairs, single_process, tmp_path, local_loss) -> None:
    extra = ["--gather_with_grad"] + (["--local_loss"] if local_loss else [])
    done = torchrun("run_train.py", *argv(pairs, tmp_path, 4, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(single_process, tmp_path)


def test_accumulated_micro_batches_equal_one_large_batch(pairs, single_process, tmp_path) -> None:
    train.train(run_train.parse_args(argv(pairs, tmp_path, 4, "--accum_freq", "2")))
    assert_same_run(single_process, tmp_path)


def test_bf16_autocast_loss_close_to_fp32(pairs) -> None:
    torch.manual_seed(0)
    config = run_train.parse_args(["--random_init", "--model_config", "tiny", "--device", "cpu"])
    model = train.make_model(config)
    tokens = train.caption_tokens(pairs[1], 77)
    batch = train.PairBatches(str(pairs[0]), tokens, [torch.arange(16).numpy()])[0]
    images = train.device_transform(batch[0], model.visual.input_resolution)
    losses = {}
    for precision in ("fp32", "amp_bf16"):
        config.precision = precision
        rt = train.setup_runtime(config)
        with torch.no_grad(), rt.autocast():
            losses[precision] = train.clip_loss(*train.Features(model)(images, batch[1])).item()
    assert losses["amp_bf16"] == pytest.approx(losses["fp32"], rel=1e-2)
    assert losses["amp_bf16"] != losses["fp32"]          # autocast really ran in bf16
