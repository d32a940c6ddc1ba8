"""The demo chain at smoke scale: phantom data -> preprocessing -> training -> zero-shot AUROC,
through the same CLIs a user types, into a temporary folder; a second run reuses the stages."""
from pathlib import Path

import pandas as pd

from conftest import run_python
from labels import COMPETITION_LABELS


def run_demo(workdir: Path) -> str:
    done = run_python("demo.py", "--scale", "smoke", "--workdir", str(workdir), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_smoke_demo_runs_end_to_end_and_reuses_its_outputs(tmp_path) -> None:
    first = run_demo(tmp_path)
    out = tmp_path / "results" / "smoke"
    for name in ("auroc.md", "auroc.csv", "roc.png", "loss.png", "mcc_f1.csv", "thresholds.csv", "README.md"):
        assert (out / name).stat().st_size > 0, name
    auroc = pd.read_csv(out / "auroc.csv")
    assert set(COMPETITION_LABELS) <= set(auroc.iloc[:, 0])
    table = (out / "auroc.md").read_text()
    assert "Mean (5 competition)" in table and table in first          # the table is printed at the end
    summary = (out / "README.md").read_text()
    assert "not clinical performance" in summary.replace("\n", " ") or "clinical performance" in summary
    # every h5 row has a caption row, and the corrupt phantoms were dropped, not zero-filled
    impressions = pd.read_csv(tmp_path / "data" / "smoke" / "mimic_impressions.csv")
    failed = pd.read_csv(tmp_path / "data" / "smoke" / "failed_images.csv")
    assert len(failed) >= 2 and len(impressions) > 100
    best = sorted((tmp_path / "checkpoints" / "smoke").glob("best_*.pt"))
    assert 1 <= len(best) <= 2

    second = run_demo(tmp_path)
    assert second.count("reusing") == 5                               # only evaluation runs again
    assert pd.read_csv(out / "auroc.csv").equals(auroc)               # seeded: same numbers
