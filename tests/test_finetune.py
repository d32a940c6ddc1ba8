"""Fine-tuning: --init_checkpoint starts from a CLIP checkpoint, --lock_image / --lock_text freeze a tower."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clip
import run_train
import train
from conftest import MICRO, ROOT, SMALL, run_python, save_clip, torchrun
from model import CLIP, named_config
from runtime import TrainInputError, setup_runtime

#: MICRO's architecture without --random_init and the shape flags: the run reads it off the checkpoint.
RUNTIME = ["--num_workers", "0", "--device", "cpu"]
assert MICRO[-4:] == RUNTIME
MICRO_SHAPE = {**named_config("tiny", image_resolution=32, vision_patch_size=8, vision_width=64, vision_layers=1,
                              transformer_width=64, transformer_layers=1, embed_dim=32), "transformer_heads": 1}


def micro_checkpoint(path: Path, seed: int = 3) -> Path:
    """A plain state dict (as the released files) of MICRO's architecture with the seed's weights."""
    torch.manual_seed(seed)
    torch.save(CLIP(**MICRO_SHAPE).state_dict(), path)
    return path


def args(pairs, save_dir: Path, *extra: str) -> list[str]:
    return ["--cxr_filepath", str(pairs[0]), "--txt_filepath", str(pairs[1]), "--save_dir", str(save_dir),
            "--batch_size", "8", "--lr", "1e-2", "--log_interval", "1", *RUNTIME, *extra]


def run(argv: list[str]) -> Path:
    return train.train(run_train.parse_args(argv))


def tower_changes(before: dict, after: dict) -> dict[str | None, list[str]]:
    """Names of the entries that changed, by tower ("image", "text", None for logit_scale)."""
    changed: dict[str | None, list[str]] = {"image": [], "text": [], None: []}
    for name, value in before.items():
        if not torch.equal(value, after[name]):
            changed[train.tower_of(name)].append(name)
    return changed


def test_every_weight_belongs_to_the_image_tower_the_text_tower_or_is_logit_scale() -> None:
    towers = {name: train.tower_of(name) for name in CLIP(**SMALL).state_dict()}
    assert [n for n, t in towers.items() if t is None] == ["logit_scale"]
    assert all(t == "image" for n, t in towers.items() if n.startswith("visual."))
    assert {n.split(".")[0] for n, t in towers.items() if t == "text"} == set(train.TEXT_TOWER)


def test_zero_steps_from_init_checkpoint_is_exactly_the_loaded_weights(pairs, tmp_path) -> None:
    """No flag takes zero optimizer steps (a run that takes none is refused, never saving an untrained
    model as its final one), so zero steps is the model the run builds before its first step:
    train.build_model, what train.train calls, with the parsed flags."""
    ckpt = micro_checkpoint(tmp_path / "released.pt")
    loaded = torch.load(ckpt, weights_only=True)
    for lock in ([], ["--lock_image"], ["--lock_text"]):
        config = run_train.parse_args(args(pairs, tmp_path / "runs", "--init_checkpoint", str(ckpt), *lock))
        model, optimizer, _, _ = train.build_model(config, setup_runtime(config), total_steps=10)
        state = model.state_dict()
        assert state.keys() == loaded.keys()
        assert all(torch.equal(state[k], loaded[k]) for k in loaded)
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert optimised == trainable
        assert (len(trainable) < len(list(model.parameters()))) == bool(lock)


def test_released_style_mixed_fp16_checkpoint_loads_as_its_fp32_values(pairs, tmp_path) -> None:
    from model import convert_weights
    torch.manual_seed(5)
    net = CLIP(**MICRO_SHAPE)
    convert_weights(net)
    torch.save(net.state_dict(), tmp_path / "mixed.pt")
    config = run_train.parse_args(args(pairs, tmp_path / "runs", "--init_checkpoint", str(tmp_path / "mixed.pt")))
    model = train.make_model(config)
    assert all(torch.equal(v, net.state_dict()[k].float()) for k, v in model.state_dict().items())
    assert model.training


def test_both_towers_locked_one_step_saves_the_loaded_towers_bit_identical(pairs, tmp_path) -> None:
    """End to end through run_train's flags: the saved checkpoint equals the loaded file in every
    tower weight; only logit_scale (never locked) trained."""
    ckpt = micro_checkpoint(tmp_path / "init.pt")
    final = run(args(pairs, tmp_path / "runs", "--init_checkpoint", str(ckpt), "--max_steps", "1",
                     "--lock_image", "--lock_text"))
    changed = tower_changes(torch.load(ckpt, weights_only=True), torch.load(final, weights_only=True))
    assert changed == {"image": [], "text": [], None: ["logit_scale"]}


@pytest.mark.parametrize("locked, trained", [("image", "text"), ("text", "image")])
def test_locked_tower_is_bit_identical_after_steps_while_the_other_tower_changes(pairs, tmp_path, locked,
                                                                                trained) -> None:
    ckpt = micro_checkpoint(tmp_path / "init.pt")
    final = run(args(pairs, tmp_path / "runs", "--init_checkpoint", str(ckpt), "--max_steps", "3",
                     "--save_interval", "2", "--optimizer", "adam", f"--lock_{locked}"))
    before = torch.load(ckpt, weights_only=True)
    for saved in (final.parent / "checkpoint_2.pt", final):
        changed = tower_changes(before, torch.load(saved, weights_only=True))
        assert changed[locked] == []
        assert len(changed[trained]) == sum(train.tower_of(k) == trained for k in before)  # all of it, weight decay too
        assert changed[None] == ["logit_scale"]


def test_locked_resnet_tower_keeps_batchnorm_stats_and_eval_mode(pairs, tmp_path) -> None:
    shape = {**named_config("tiny-rn", image_resolution=32, transformer_width=64, transformer_layers=1,
                            embed_dim=32), "transformer_heads": 1}
    torch.manual_seed(4)
    torch.save(CLIP(**shape).state_dict(), tmp_path / "rn.pt")
    final = run(args(pairs, tmp_path / "runs", "--init_checkpoint", str(tmp_path / "rn.pt"), "--max_steps", "2",
                     "--lock_image"))
    before, after = torch.load(tmp_path / "rn.pt", weights_only=True), torch.load(final, weights_only=True)
    assert any("running_mean" in k for k in before)
    changed = tower_changes(before, after)
    assert changed["image"] == [] and changed["text"]
    config = run_train.parse_args(args(pairs, tmp_path / "x", "--init_checkpoint", str(tmp_path / "rn.pt"),
                                       "--lock_image"))
    model = train.build_model(config, setup_runtime(config), 2)[0]
    model.train()   # the run's and validation's model.train() leave the locked tower in eval mode
    assert model.training and model.transformer.training
    assert not any(m.training for m in model.visual.modules())


def test_init_from_own_training_state_and_resume_continues_identically(pairs, tmp_path) -> None:
    first = run(args(pairs, tmp_path / "a", "--random_init", *MICRO, "--max_steps", "2"))
    state = first.with_suffix(".state")
    common = ["--init_checkpoint", str(state), "--lock_text", "--max_steps", "4", "--save_interval", "2"]
    straight = run(args(pairs, tmp_path / "b", *common))
    # the architecture came from the run folder's model_config.json, the weights from checkpoint.pt
    assert tower_changes(torch.load(first, weights_only=True), torch.load(straight, weights_only=True))["text"] == []
    halted = args(pairs, tmp_path / "c", *common[:3], "--max_steps", "2", "--save_interval", "2")
    run(halted)
    resumed = run(args(pairs, tmp_path / "c", "--resume", "latest", "--max_steps", "4", "--save_interval", "2"))
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_lock_or_init_checkpoint_is_refused_listing_them(pairs, tmp_path) -> None:
    ckpt = micro_checkpoint(tmp_path / "init.pt")
    run(args(pairs, tmp_path / "runs", "--init_checkpoint", str(ckpt), "--max_steps", "1"))
    with pytest.raises(TrainInputError, match=r"--lock_image: False -> True.*--resume_override lock_image"):
        run(args(pairs, tmp_path / "runs", "--resume", "latest", "--max_steps", "2", "--lock_image"))
    with pytest.raises(TrainInputError, match=r"--init_checkpoint: .*init.pt -> .*other.pt"):
        run(args(pairs, tmp_path / "runs", "--resume", "latest", "--max_steps", "2", "--init_checkpoint",
                 str(tmp_path / "other.pt")))
    # overridden: the lock takes effect, with a fresh optimizer state (its parameters are others now)
    before = torch.load(tmp_path / "runs" / "pt-imp" / "checkpoint.pt", weights_only=True)
    final = run(args(pairs, tmp_path / "runs", "--resume", "latest", "--max_steps", "3", "--lock_image",
                     "--resume_override", "lock_image"))
    changed = tower_changes(before, torch.load(final, weights_only=True))
    assert changed["image"] == [] and changed["text"]


def test_checkpoint_of_another_architecture_is_refused_in_one_line_naming_the_file(pairs, tmp_path) -> None:
    other = save_clip(tmp_path / "small.pt", seed=0)   # SMALL: 2 layers, 32-px image, embed 32, width 64
    micro_flags = [f for f in MICRO if f != "--random_init"]
    proc = run_python(str(ROOT / "run_train.py"), *args(pairs, tmp_path / "runs", "--init_checkpoint", other,
                                                       *micro_flags, "--max_steps", "1"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--init_checkpoint {other}: another architecture" in lines[0]
    assert "missing" in lines[0] and "--model_config tiny" in lines[0]
    assert not (tmp_path / "runs" / "pt-imp" / "checkpoint.pt").exists()


def test_init_checkpoint_with_mismatched_shapes_names_them(pairs, tmp_path) -> None:
    ckpt = micro_checkpoint(tmp_path / "init.pt")
    micro_flags = [f for f in MICRO if f != "--random_init"]
    config = run_train.parse_args(args(pairs, tmp_path / "r", "--init_checkpoint", str(ckpt), *micro_flags,
                                       "--embed_dim", "16"))
    with pytest.raises(TrainInputError, match=r"init.pt: another architecture .*text_projection: \(64, 32\) vs "
                                              r"model \(64, 16\)"):
        train.make_model(config)


@pytest.mark.parametrize("extra, needle", [
    (["--random_init"], "--init_checkpoint starts from the checkpoint's weights, --random_init"),
    (["--context_length", "40"], "its text tower takes 77 tokens"),
])
def test_contradicting_flags_are_one_line(pairs, tmp_path, extra, needle) -> None:
    ckpt = micro_checkpoint(tmp_path / "init.pt")
    proc = run_python(str(ROOT / "run_train.py"), *args(pairs, tmp_path / "runs", "--init_checkpoint", str(ckpt),
                                                       "--max_steps", "1", *extra))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_missing_or_foreign_init_checkpoint_is_one_line(pairs, tmp_path) -> None:
    (tmp_path / "notes.state").write_text("not a state")
    for path, needle in ((tmp_path / "nope.pt", "no such checkpoint file"),
                         (tmp_path / "notes.state", "notes.state")):
        proc = run_python(str(ROOT / "run_train.py"), *args(pairs, tmp_path / "runs", "--init_checkpoint", str(path)))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert clip.load_checkpoint  # the reader every --init_checkpoint goes through


def test_two_gloo_ranks_with_a_locked_tower_equal_one_process_and_keep_it_bit_identical(pairs, tmp_path) -> None:
    """DDP registers only the trainable tower: under torchrun the locked image tower stays the loaded
    file's to the bit, and the text tower's steps equal one process with the global batch."""
    ckpt = micro_checkpoint(tmp_path / "init.pt")

    def argv(save_dir: Path, batch: int) -> list[str]:
        return ["--cxr_filepath", str(pairs[0]), "--txt_filepath", str(pairs[1]), "--save_dir", str(save_dir),
                "--batch_size", str(batch), "--lr", "0.05", "--optimizer", "sgd", "--max_steps", "3",
                "--log_interval", "1", "--init_checkpoint", str(ckpt), "--lock_image", "--gather_with_grad", *RUNTIME]

    single = run(argv(tmp_path / "one", 8))
    done = torchrun("run_train.py", *argv(tmp_path / "two", 4))
    assert done.returncode == 0, done.stderr[-3000:]
    before = torch.load(ckpt, weights_only=True)
    one, two = (torch.load(p, weights_only=True) for p in (single, tmp_path / "two" / "pt-imp" / "checkpoint.pt"))
    assert tower_changes(before, two)["image"] == [] and tower_changes(before, one)["image"] == []
    assert len(tower_changes(before, two)["text"]) > 0
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=key)
