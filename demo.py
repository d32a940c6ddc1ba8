"""The whole CheXzero pipeline on the phantom dataset: the commands a user would type, in order.

    python demo.py                 # full demo (3,500 phantom studies), ~8 minutes on 2 cores
    python demo.py --scale smoke   # the same sequence on a tiny set, for CI (< 2 minutes)
    python demo.py --force         # rebuild everything instead of reusing earlier outputs

Each stage prints the command it runs, and is skipped when its outputs already exist (so a
second run reuses the phantoms, h5 files and checkpoints). The numbers measure the pipeline on
synthetic images, not clinical performance. Results go to results/demo/ (or results/smoke/).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from errors import ArgumentParser, UserError, run_cli
from labels import SENTENCE_PAIR_TEMPLATE

ROOT = Path(__file__).resolve().parent
# Prompts for validation and test: ("{}.", "no {}.") rather than the original's ("{}", "no {}"). The
# phantom impressions end with a full stop, and on the validation set these scored higher for every
# saved checkpoint (labels.py; bench/README.md, "The demo's small model").
PAIR_TEMPLATE = list(SENTENCE_PAIR_TEMPLATE)

# Everything that changes with the scale; the sequence of commands does not.
SCALES = {
    "full": dict(studies=3500, test_studies=500, valid_studies=200, padchest_images=300,
                 epochs=6, batch_size=64, val_interval=25, keep_best=5, bootstrap=1000),
    "smoke": dict(studies=120, test_studies=60, valid_studies=40, padchest_images=20,
                  epochs=2, batch_size=16, val_interval=5, keep_best=2, bootstrap=100),
}


def run(stage: str, cmd: list[str], outputs: list[Path], force: bool, timings: dict[str, float]) -> None:
    """Run one CLI step unless all its outputs exist; print it so the user learns it."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    if not force and outputs and all(p.exists() for p in outputs):
        print(f"\n== {stage}: reusing {', '.join(map(str, outputs))}\n   ({shown})", flush=True)
        timings[stage] = 0.0
        return
    print(f"\n== {stage}\n$ {shown}", flush=True)
    start = time.perf_counter()
    status = subprocess.run(cmd, cwd=ROOT).returncode
    if status != 0:
        raise UserError(f"stage '{stage}' failed with exit status {status} (its message is above); fix it "
                        "and run the demo again: finished stages are reused")
    timings[stage] = time.perf_counter() - start
    print(f"== {stage} took {timings[stage]:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--force", action="store_true", help="rebuild every stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=".", help="folder that receives data/, checkpoints/ and results/ "
                   "(default: the repository)")
    args = p.parse_args(argv)
    s = SCALES[args.scale]
    name = "demo" if args.scale == "full" else args.scale
    py = sys.executable
    base = Path(args.workdir)
    phantom = base / "data" / f"phantom-{name}"
    data = base / "data" / name
    run_dir = base / "checkpoints" / name
    out = base / "results" / name
    timings: dict[str, float] = {}
    A = lambda p: ROOT / p  # noqa: E731  (absolute path of a repo-relative output)

    run("1. phantom dataset (MIMIC-CXR-JPG, CheXpert and PadChest layouts)",
        [py, "-m", "phantom", "--out", str(phantom), "--studies", str(s["studies"]), "--seed", str(args.seed),
         "--test_studies", str(s["test_studies"]), "--valid_studies", str(s["valid_studies"]),
         "--padchest_images", str(s["padchest_images"]), "--overwrite"],
        [A(phantom / "manifest.json")], args.force, timings)
    run("2. preprocess MIMIC: images -> cxr.h5, reports -> impressions",
        [py, "preprocess_train_data.py", "--dataset_type", "mimic",
         "--chest_x_ray_path", str(phantom / "mimic-cxr-jpg/2.0.0/files"),
         "--radiology_reports_path", str(phantom / "mimic-cxr/2.0.0/files"),
         "--cxr_out_path", str(data / "cxr.h5"), "--csv_out_path", str(data / "cxr_paths.csv"),
         "--mimic_impressions_path", str(data / "mimic_impressions.csv")],
        [A(data / "cxr.h5"), A(data / "mimic_impressions.csv")], args.force, timings)
    for stage, split, source in (("3. preprocess the CheXpert-format test set", "test", "chexpert-test"),
                                 ("4. preprocess the CheXpert-format validation set", "valid", "chexpert")):
        run(stage,
            [py, "preprocess_train_data.py", "--dataset_type", f"chexpert-{split}",
             "--chest_x_ray_path", str(phantom / source),
             "--cxr_out_path", str(data / f"chexpert_{split}.h5"),
             "--labels_out_path", str(data / f"chexpert_{split}_labels.csv"),
             "--failed_out_path", str(data / f"chexpert_{split}_failed.csv")],
            [A(data / f"chexpert_{split}.h5"), A(data / f"chexpert_{split}_labels.csv")], args.force, timings)
    finished = (ROOT / run_dir / "checkpoint.pt").exists()
    # An interrupted training (a saved state, no final checkpoint) is continued, not thrown away.
    resumable = not args.force and not finished and (ROOT / run_dir / "latest.json").exists()
    resume = ["--resume", "latest"] if resumable else []
    if args.force or not (finished or resume):
        shutil.rmtree(ROOT / run_dir, ignore_errors=True)   # nothing resumable in it: start clean
    run("5. train a tiny CLIP from the reports (checkpoints selected on validation AUROC)",
        [py, "run_train.py", "--cxr_filepath", str(data / "cxr.h5"),
         "--txt_filepath", str(data / "mimic_impressions.csv"),
         "--random_init", "--model_config", "tiny-rn", "--optimizer", "adam", "--lr", "3e-4",
         "--batch_size", str(s["batch_size"]), "--epochs", str(s["epochs"]), "--seed", str(args.seed),
         "--warmup_steps", "20", "--lr_schedule", "cosine", "--clamp_logit_scale",
         "--save_dir", str(base / "checkpoints"), "--model_name", name, "--save_interval", "50", "--keep_last", "1",
         "--log_interval", "10",
         "--num_workers", "1", "--val_cxr_filepath", str(data / "chexpert_valid.h5"),
         "--val_labels_path", str(data / "chexpert_valid_labels.csv"), "--val_interval", str(s["val_interval"]),
         "--keep_best", str(s["keep_best"]), "--val_pair_template", *PAIR_TEMPLATE, *resume],
        [A(run_dir / "checkpoint.pt")], args.force, timings)
    run("6. zero-shot evaluation: ensemble of the best checkpoints, thresholds from validation",
        [py, "run_zero_shot.py", "--model_paths", str(run_dir / "best_*.pt"),
         "--cxr_filepath", str(data / "chexpert_test.h5"), "--labels_path", str(data / "chexpert_test_labels.csv"),
         "--val_cxr_filepath", str(data / "chexpert_valid.h5"),
         "--val_labels_path", str(data / "chexpert_valid_labels.csv"),
         "--pair_template", *PAIR_TEMPLATE, "--bootstrap", str(s["bootstrap"]), "--out", str(out)],
        [], True, timings)
    write_summary(out, run_dir, data, phantom, timings, args)
    print("\n" + (ROOT / out / "auroc.md").read_text(), flush=True)
    return 0


def write_summary(out: Path, run_dir: Path, data: Path, phantom: Path, timings: dict[str, float],
                  args: argparse.Namespace) -> None:
    """results/<name>/README.md: what ran, how long each stage took, sizes, and the caveat."""
    import pandas as pd

    from cxr_data import h5_rows

    shutil.copy(ROOT / run_dir / "loss.png", ROOT / out / "loss.png")
    n_train, n_test, n_valid = (h5_rows(ROOT / data / name, check_range=False)
                                for name in ("cxr.h5", "chexpert_test.h5", "chexpert_valid.h5"))
    best = sorted(p.name for p in (ROOT / run_dir).glob("best_*.pt"))
    metrics = pd.read_csv(ROOT / run_dir / "metrics.csv")
    lines = [
        f"# CheXzero demo on phantom data ({args.scale})", "",
        "**Caveat:** these images are synthetic phantoms with report text from the Indiana University "
        "collection. The numbers below measure that the pipeline works end to end; they say nothing "
        "about clinical performance.", "",
        "## Data", "",
        f"- training pairs (MIMIC layout, all views): {n_train} images in `{data}/cxr.h5` "
        f"({(ROOT / data / 'cxr.h5').stat().st_size / 2**20:.0f} MiB, uint8)",
        f"- CheXpert-format test set: {n_test} studies; validation: {n_valid} frontal images",
        f"- phantom root: `{phantom}` (seed {args.seed})", "",
        "## Stages and timings", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {stage} | {sec:.0f}{' (reused)' if sec == 0 else ''} |" for stage, sec in timings.items()],
        f"| total | {sum(timings.values()):.0f} |", "",
        "## Training", "",
        f"- {int(metrics['step'].max())} steps; final training loss {metrics['loss'].iloc[-1]:.3f}; "
        f"best validation mean AUROC {metrics['val_auroc'].max():.3f}",
        f"- ensemble: {', '.join(best)}", "",
        "![loss](loss.png)", "",
        "## Zero-shot AUROC on the CheXpert-format test set (bootstrap 95% CI)", "",
        (ROOT / out / "auroc.md").read_text(), "",
        "![ROC](roc.png)", "",
        "MCC and F1 at thresholds chosen on validation: `mcc_f1.csv`.", "",
        "## Commands", "", "Rerun with `make demo` (or `python demo.py`); `--force` rebuilds every stage.",
    ]
    (ROOT / out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
