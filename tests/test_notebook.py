"""notebooks/zero_shot.ipynb runs headless (nbclient) on a tiny h5 and two small random checkpoints,
and is committed with its outputs cleared."""
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

import zero_shot as zs
from test_zero_shot import save_clip, write_h5, write_labels

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "zero_shot.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_on_a_small_ensemble(tmp_path, monkeypatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for seed in (1, 2):
        save_clip(models / f"small_{seed}.pt", seed)
    monkeypatch.setenv("CHEXZERO_CXR_FILEPATH", write_h5(tmp_path / "test.h5"))
    monkeypatch.setenv("CHEXZERO_CXR_TRUE_LABELS_PATH", write_labels(tmp_path / "gt.csv", zs.CHEXPERT_LABELS))
    monkeypatch.setenv("CHEXZERO_MODEL_DIR", str(models))
    monkeypatch.setenv("CHEXZERO_PREDICTIONS_DIR", str(tmp_path / "predictions"))
    monkeypatch.setenv("CHEXZERO_N_BOOTSTRAP", "100")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    y_pred = np.load(tmp_path / "predictions" / "chexpert_preds.npy")
    _, expected = zs.ensemble_models(sorted(models.glob("*.pt")), tmp_path / "test.h5", zs.CHEXPERT_LABELS,
                                     zs.PAIR_TEMPLATE, cache_dir=tmp_path / "predictions" / "cached")
    np.testing.assert_array_equal(y_pred, expected)
    assert (tmp_path / "predictions" / "roc.png").stat().st_size > 10_000
    text = "\n".join(str(output.get("text", output.get("data", {}).get("text/plain", "")))
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert "2 checkpoints" in text and "Mean AUROC of the 5 competition pathologies" in text
    assert "No Finding AUROC, negation_aware prompts" in text
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert "Atelectasis_auc" in text  # the displayed bootstrap CI table
