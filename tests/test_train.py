"""Training: the faithful loss, seeded and resumable runs, data checks, device-side transform."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import clip
import run_train
import train
from conftest import CAPTIONS, MICRO, ROOT, mimic_args
from cxr_data import H5_KEY
from model import CLIP, build_model


def args(pairs, save_dir, *extra) -> list[str]:
    return ["--cxr_filepath", str(pairs[0]), "--txt_filepath", str(pairs[1]), "--save_dir", str(save_dir),
            "--batch_size", "8", "--lr", "1e-3", "--log_interval", "1", *MICRO, *extra]


def run(argv: list[str]) -> Path:
    return train.train(run_train.parse_args(argv))


def test_loss_is_chexzero_symmetric_cross_entropy() -> None:
    torch.manual_seed(0)
    img, txt, scale = torch.randn(6, 16), torch.randn(6, 16), torch.tensor(math.log(1 / 0.07))
    cos = (img / img.norm(dim=1, keepdim=True)) @ (txt / txt.norm(dim=1, keepdim=True)).t()
    logits = scale.exp() * cos
    expected = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    torch.testing.assert_close(train.clip_loss(img, txt, scale), expected)
    # the model's forward logits give the same number
    model = CLIP(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)
    images, tokens = torch.randn(3, 3, 32, 32), clip.tokenize(CAPTIONS[:3])
    per_image, per_text = model(images, tokens)
    labels = torch.arange(3)
    ours = train.clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale)
    torch.testing.assert_close(ours, (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2)


def test_same_seed_same_loss_curve_and_loss_falls(pairs, tmp_path) -> None:
    run(args(pairs, tmp_path / "a", "--epochs", "6", "--optimizer", "adam"))
    run(args(pairs, tmp_path / "b", "--epochs", "6", "--optimizer", "adam", "--max_steps", "10"))
    a = pd.read_csv(tmp_path / "a" / "pt-imp" / "metrics.csv")
    b = pd.read_csv(tmp_path / "b" / "pt-imp" / "metrics.csv")
    assert len(a) == 48                                   # ceil(64/8) steps x 6 epochs
    np.testing.assert_array_equal(a["loss"].to_numpy()[:10], b["loss"].to_numpy())
    assert a["loss"].iloc[0] == pytest.approx(math.log(8), abs=0.4)   # chance level at start
    # duplicate captions in a batch bound the loss below by about ln 2
    assert a["loss"].tail(4).mean() < 0.6 * math.log(8)
    assert (tmp_path / "a" / "pt-imp" / "loss.png").stat().st_size > 1000


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def test_resume_gives_identical_weights(pairs, tmp_path) -> None:
    common = ("--epochs", "2", "--save_interval", "3", "--optimizer", "sgd")
    run(args(pairs, tmp_path / "straight", *common))
    run(args(pairs, tmp_path / "split", *common, "--max_steps", "6"))   # stops mid-epoch
    run(args(pairs, tmp_path / "split", *common, "--resume", "latest"))
    straight, split = final_weights(tmp_path / "straight" / "pt-imp"), final_weights(tmp_path / "split" / "pt-imp")
    assert straight.keys() == split.keys()
    for key in straight:
        torch.testing.assert_close(split[key], straight[key], rtol=0, atol=0)
    a = pd.read_csv(tmp_path / "straight" / "pt-imp" / "metrics.csv")
    b = pd.read_csv(tmp_path / "split" / "pt-imp" / "metrics.csv")
    np.testing.assert_array_equal(a["loss"].to_numpy(), b["loss"].to_numpy())


def test_kill_9_then_resume_latest(pairs, tmp_path) -> None:
    common = ["--epochs", "4", "--save_interval", "2", "--keep_last", "2"]
    run(args(pairs, tmp_path / "straight", *common))
    run_dir = tmp_path / "killed" / "pt-imp"
    cmd = [sys.executable, str(ROOT / "run_train.py"), *args(pairs, tmp_path / "killed", *common)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "latest.json").exists():
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = json.loads((run_dir / "latest.json").read_text())
    assert latest["step"] < 32, "the run finished before it could be killed"
    assert not (run_dir / "checkpoint.pt").exists()
    run(args(pairs, tmp_path / "killed", *common, "--resume", "latest"))
    straight, resumed = final_weights(tmp_path / "straight" / "pt-imp"), final_weights(run_dir)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    # --keep_last 2 rotated the periodic checkpoints
    assert len(list(run_dir.glob("checkpoint_*.pt"))) == 2


def test_checkpoint_is_plain_state_dict_loadable_by_load_clip(pairs, tmp_path) -> None:
    argv = ["--cxr_filepath", str(pairs[0]), "--txt_filepath", str(pairs[1]), "--save_dir", str(tmp_path),
            "--random_init", "--batch_size", "2", "--max_steps", "1", "--num_workers", "0", "--device", "cpu"]
    path = run(argv)
    state = torch.load(path, weights_only=True)
    assert len(state) == 302 and all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    model = train.load_clip(model_path=str(path), pretrained=False)
    torch.testing.assert_close(model.cpu().state_dict()["visual.proj"], state["visual.proj"])



@pytest.mark.parametrize("template", [("{}", "no {}"), ("{}.", "no {}.")])
def test_validation_auroc_is_zero_shot_auroc_with_the_chosen_prompts(pairs, tmp_path, template) -> None:
    """The logged validation AUROC equals the zero-shot AUROC of the final weights, computed here
    from cosines to the positive and negative prompts of ``--val_pair_template``."""
    from sklearn.metrics import roc_auc_score

    labels = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    with h5py.File(pairs[0]) as f:
        val_images = f[H5_KEY][:24]
    y = np.random.default_rng(1).integers(0, 2, (24, len(labels)))
    y[:2] = [[0] * 5, [1] * 5]                                          # both classes in every column
    val_h5, val_csv = tmp_path / "val.h5", tmp_path / "val.csv"
    with h5py.File(val_h5, "w") as f:
        f.create_dataset(H5_KEY, data=val_images)
    pd.DataFrame(y, columns=labels).to_csv(val_csv, index=False)
    run(args(pairs, tmp_path, "--max_steps", "2", "--val_cxr_filepath", str(val_h5), "--val_labels_path",
             str(val_csv), "--val_interval", "2", "--val_pair_template", *template))
    logged = pd.read_csv(tmp_path / "pt-imp" / "metrics.csv").dropna(subset=["val_auroc"])
    assert logged.step.tolist() == [2]

    model = build_model(clip.load_checkpoint(tmp_path / "pt-imp" / "checkpoint.pt")).eval()
    with torch.no_grad():
        pixels = torch.from_numpy(val_images).float().unsqueeze(1).repeat(1, 3, 1, 1)
        image = F.normalize(model.encode_image(clip.cxr_transform(32)(pixels)), dim=-1)
        aucs = []
        for i, label in enumerate(labels):
            text = F.normalize(model.encode_text(clip.tokenize([t.format(label) for t in template])), dim=-1)
            cos = image @ text.t()
            aucs.append(roc_auc_score(y[:, i], torch.softmax(cos, dim=1)[:, 0].numpy()))
    assert logged.val_auroc.iloc[0] == pytest.approx(np.mean(aucs), abs=1e-4)

def test_vit_size_flags_on_a_resnet_config_are_refused() -> None:
    config = run_train.parse_args(["--random_init", "--model_config", "tiny-rn", "--vision_layers", "2"])
    with pytest.raises(ValueError, match=r"tiny-rn has a ResNet image tower .*--vision_layers only apply to ViT"):
        train.make_model(config)
    config = run_train.parse_args(["--random_init", "--model_config", "tiny-rn", "--vision_width", "32"])
    assert train.make_model(config).visual.layer1[0].conv1.in_channels == 32


def test_row_count_mismatch_names_both_files(pairs, tmp_path) -> None:
    short = tmp_path / "short.csv"
    pd.read_csv(pairs[1]).head(10).to_csv(short, index=False)
    with pytest.raises(ValueError, match=r"holds 64 images but .*short.csv has 10 caption rows"):
        run(["--cxr_filepath", str(pairs[0]), "--txt_filepath", str(short), "--save_dir", str(tmp_path), *MICRO])


def test_captions_tokenized_once_and_cached(pairs, tmp_path) -> None:
    csv = tmp_path / "captions.csv"
    pd.DataFrame({"impression": ["small effusion", np.nan, "no acute process"]}).to_csv(csv, index=False)
    tokens = train.caption_tokens(csv, 77)
    assert tokens.dtype == np.int32 and tokens.shape == (3, 77)
    assert tokens[1, :2].tolist() == [49406, 49407]                      # NaN impression -> " "
    assert len(list(tmp_path.glob("captions.tokens-*.npy"))) == 1
    np.testing.assert_array_equal(train.caption_tokens(csv, 77), tokens)
    assert len(list(tmp_path.glob("captions.tokens-*.npy"))) == 1
    train.caption_tokens(csv, 40)
    assert len(list(tmp_path.glob("captions.tokens-*.npy"))) == 2


def test_batch_reader_with_workers_matches_h5(pairs) -> None:
    tokens = train.caption_tokens(pairs[1], 77)
    batches = train.epoch_batches(64, 8, epoch=0, seed=1)
    loader = torch.utils.data.DataLoader(train.PairBatches(str(pairs[0]), tokens, batches), batch_size=None,
                                         num_workers=2)
    with h5py.File(pairs[0]) as f:
        reference = f[H5_KEY][:]
    seen = []
    for (images, toks), idx in zip(loader, batches):
        np.testing.assert_array_equal(images.numpy(), reference[idx])
        np.testing.assert_array_equal(toks.numpy(), tokens[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(64))


def test_two_ranks_form_the_single_process_global_batch() -> None:
    single = train.epoch_batches(50, 8, epoch=3, seed=7)
    rank0 = train.epoch_batches(50, 4, epoch=3, seed=7, rank=0, world=2)
    rank1 = train.epoch_batches(50, 4, epoch=3, seed=7, rank=1, world=2)
    for b in range(6):
        assert sorted(np.concatenate([rank0[b], rank1[b]])) == sorted(single[b])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_device_transform_equals_per_sample_cpu_transform(dtype) -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (4, 320, 320)).astype(dtype)
    per_sample = torch.stack([clip.cxr_transform(224)(torch.from_numpy(x.astype(np.float32))[None].repeat(3, 1, 1))
                              for x in batch])
    torch.testing.assert_close(train.device_transform(torch.from_numpy(batch), 224), per_sample, rtol=0, atol=1e-5)


def test_fresh_run_refuses_a_folder_with_an_earlier_runs_checkpoints(pairs, tmp_path) -> None:
    run(args(pairs, tmp_path, "--max_steps", "2"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "pt-imp").iterdir()}
    with pytest.raises(FileExistsError,
                       match=r"pt-imp already holds an earlier run's checkpoints \(checkpoint.pt.*--resume latest"):
        run(args(pairs, tmp_path, "--max_steps", "2"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "pt-imp").iterdir()} == before   # nothing touched


def test_tiny_clip_learns_the_phantom_pairs(tmp_path) -> None:
    """The real-data path end to end: a phantom MIMIC-CXR tree, the preprocessing CLI, then
    ``run_train.py --random_init --model_config tiny`` on its h5 and impressions. Over 10 epochs
    of 300 studies the contrastive loss falls well below ln(batch), where it starts; in the first
    epoch it stays there (bench/README.md, "The demo's small model")."""
    import phantom
    import preprocess_train_data

    phantom.generate(tmp_path / "root", studies=300, test_studies=10, valid_studies=10, padchest_images=5,
                     workers=2)
    assert preprocess_train_data.main(mimic_args(tmp_path / "root", tmp_path)) == 0
    run(["--cxr_filepath", str(tmp_path / "cxr.h5"), "--txt_filepath", str(tmp_path / "mimic_impressions.csv"),
         "--save_dir", str(tmp_path), "--random_init", "--model_config", "tiny", "--optimizer", "adam",
         "--lr", "1e-4", "--batch_size", "16", "--epochs", "10", "--seed", "0", "--device", "cpu",
         "--num_workers", "0", "--log_interval", "1"])
    loss = pd.read_csv(tmp_path / "pt-imp" / "metrics.csv").groupby("epoch")["loss"].mean()
    assert len(loss) == 10 and loss.iloc[-1] < 0.6 * math.log(16), loss.round(3).tolist()


def test_the_originals_make_and_train_main_run_with_their_keywords(pairs, tmp_path, monkeypatch) -> None:
    """``train.make(config, cxr_filepath, txt_filepath, model_path)`` gives the original's five objects;
    ``train.train_main(cxr_filepath, txt_filepath, hyperparams, output_path, model_path, pretrained)``,
    which could not run in the original, trains, saves the weights and returns the model. A small
    320-px model stands in for load_clip's (the original's random-init model is 150M parameters)."""
    from argparse import Namespace

    def small_clip(model_path=None, pretrained=False, context_length=77):
        torch.manual_seed(0)
        return CLIP(embed_dim=32, image_resolution=320, vision_layers=1, vision_width=64, vision_patch_size=32,
                    context_length=context_length, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=1).train()

    monkeypatch.setattr(train, "load_clip", small_clip)
    model, loader, device, criterion, optimizer = train.make(
        config=Namespace(batch_size=8, lr=1e-3, random_init=True, context_length=77), cxr_filepath=str(pairs[0]),
        txt_filepath=str(pairs[1]), model_path=None)
    assert loader.batch_size == 8 and device == train.default_device() and model.training
    assert isinstance(criterion, torch.nn.CrossEntropyLoss) and isinstance(optimizer, torch.optim.AdamW)
    assert next(iter(loader))["img"].shape == (8, 3, 320, 320)                 # not pretrained: 320 px
    before = small_clip().state_dict()
    trained = train.train_main(cxr_filepath=str(pairs[0]), txt_filepath=str(pairs[1]),
                               hyperparams={"batch_size": 16, "criterion": torch.nn.CrossEntropyLoss(),
                                            "learning_rate": 0.05, "momentum": 0.9, "epochs": 1},
                               output_path=str(tmp_path / "out") + os.sep, model_path=None, pretrained=False)
    saved = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in trained.state_dict().items())
    assert not torch.equal(saved["visual.proj"], before["visual.proj"])        # it trained
