"""notebooks/zero_shot.ipynb runs headless (nbclient) on a tiny h5 and two small random checkpoints,
and is committed with its outputs cleared; the original CheXzero notebook's cells run unchanged
against these modules."""
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import torch
from nbclient import NotebookClient

import eval as ev
import zero_shot as zs
from conftest import ROOT, save_clip, write_h5, write_labels
from labels import CHEXPERT_CSV_ORDER
from model import CLIP, MODEL_CONFIGS, convert_weights

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


# --------------------------------------------------------------------------- the original notebook
# The cells of the original CheXzero notebooks/zero_shot.ipynb as the shared spec (section 6.1)
# describes them, run unchanged: relative paths from a notebooks/ folder, the original's keyword
# calls, `make` with its default pretrained=True (ViT-B/32, the released checkpoints' architecture).
ORIGINAL_CELLS = [
    '''import os
import numpy as np
import pandas as pd
from pathlib import Path
from typing import List, Tuple, Optional

import sys
sys.path.append('../')

from model import CLIP
from eval import evaluate, bootstrap
from zero_shot import make, make_true_labels, run_softmax_eval

%load_ext autoreload
%autoreload 2''',
    '''cxr_filepath: str = '../data/chexpert_test.h5'
cxr_true_labels_path: Optional[str] = '../data/groundtruth.csv'
model_dir: str = '../checkpoints/chexzero_weights'
predictions_dir: Path = Path('../predictions')
cache_dir: str = predictions_dir / "cached"

context_length: int = 77

cxr_labels: List[str] = ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Enlarged Cardiomediastinum',
                         'Fracture', 'Lung Lesion', 'Lung Opacity', 'No Finding', 'Pleural Effusion',
                         'Pleural Other', 'Pneumonia', 'Pneumothorax', 'Support Devices']
cxr_pair_template: Tuple[str] = ("{}", "no {}")

model_paths = []
for subdir, dirs, files in os.walk(model_dir):
    for file in files:
        model_paths.append(os.path.join(subdir, file))
print(model_paths)''',
    '''def ensemble_models(model_paths: List[str], cxr_filepath: str, cxr_labels: List[str],
                    cxr_pair_template: Tuple[str], cache_dir: str = None, save_name: str = None):
    predictions = []
    for path in sorted(model_paths):
        model_name = Path(path).stem
        model, loader = make(model_path=path, cxr_filepath=cxr_filepath)
        if cache_dir is not None:
            file_name = f"{model_name}.npy" if save_name is None else f"{save_name}_{model_name}.npy"
            cache_path = Path(cache_dir) / file_name
        if cache_dir is not None and os.path.exists(cache_path):
            print("Loading cached prediction for {}".format(model_name))
            y_pred = np.load(cache_path)
        else:
            print("Inferring model {}".format(path))
            y_pred = run_softmax_eval(model, loader, cxr_labels, cxr_pair_template)
            if cache_dir is not None:
                Path(cache_dir).mkdir(exist_ok=True, parents=True)
                np.save(file=cache_path, arr=y_pred)
        predictions.append(y_pred)
    y_pred_avg = np.mean(predictions, axis=0)
    return predictions, y_pred_avg''',
    '''predictions, y_pred_avg = ensemble_models(
    model_paths=model_paths,
    cxr_filepath=cxr_filepath,
    cxr_labels=cxr_labels,
    cxr_pair_template=cxr_pair_template,
    cache_dir=cache_dir,
)''',
    '''pred_name = "chexpert_preds.npy"
predictions_dir = predictions_dir / pred_name
np.save(file=predictions_dir, arr=y_pred_avg)''',
    '''test_pred = y_pred_avg
test_true = make_true_labels(cxr_true_labels_path=cxr_true_labels_path, cxr_labels=cxr_labels)

cxr_results = evaluate(test_pred, test_true, cxr_labels)

bootstrap_results = bootstrap(test_pred, test_true, cxr_labels)''',
    '''bootstrap_results[1]''',
]
# Appended after the original cells (which stay as they are): what the kernel computed, for the checks.
RESULTS_CELL = '''np.save("test_true.npy", test_true)
cxr_results.to_csv("cxr_results.csv", index=False)
bootstrap_results[1].to_csv("cis.csv")'''


def released_like_checkpoint(path: Path, seed: int) -> None:
    """A ViT-B/32 state dict in the released files' mixed fp16/fp32 layout (random weights)."""
    torch.manual_seed(seed)
    model = CLIP(**MODEL_CONFIGS["vit-b-32"])
    convert_weights(model)
    torch.save(model.state_dict(), path)


def test_the_original_notebook_runs_unchanged(tmp_path, monkeypatch) -> None:
    n = 6
    (tmp_path / "data").mkdir()
    write_h5(tmp_path / "data" / "chexpert_test.h5", n=n)
    y = np.random.default_rng(4).integers(0, 2, (n, len(CHEXPERT_CSV_ORDER)))
    y[0], y[1] = 1, 0
    truth = pd.DataFrame(y, columns=list(CHEXPERT_CSV_ORDER))  # groundtruth.csv's own column order
    truth.insert(0, "Study", [f"CheXpert-v1.0/test/patient{64741 + i}/study1" for i in range(n)])
    truth.to_csv(tmp_path / "data" / "groundtruth.csv", index=False)
    weights = tmp_path / "checkpoints" / "chexzero_weights"
    weights.mkdir(parents=True)
    paths = [weights / "best_64_5e-05_original_22000_0.864.pt", weights / "best_128_0.0002_original_8000_0.857.pt"]
    for seed, path in enumerate(paths):
        released_like_checkpoint(path, seed)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel's '../' is tmp_path here, not the repository

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in ORIGINAL_CELLS + [RESULTS_CELL]])
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()

    labels = list(zs.CHEXPERT_LABELS)
    y_pred = np.load(tmp_path / "predictions" / "chexpert_preds.npy")
    cached = [np.load(tmp_path / "predictions" / "cached" / f"{p.stem}.npy") for p in sorted(paths)]
    np.testing.assert_array_equal(y_pred, np.mean(cached, axis=0))
    # the project's own ensemble (raw batches, device-side transform) scores the same
    _, expected = zs.ensemble_models(paths, tmp_path / "data" / "chexpert_test.h5", labels, ("{}", "no {}"),
                                     pretrained=True, device="cpu")
    np.testing.assert_allclose(y_pred, expected, rtol=1e-5, atol=1e-6)
    test_true = np.load(tmp_path / "notebooks" / "test_true.npy")
    np.testing.assert_array_equal(test_true, truth[labels].to_numpy())  # selected by name, in cxr_labels order
    cis = pd.read_csv(tmp_path / "notebooks" / "cis.csv", index_col=0)
    pd.testing.assert_frame_equal(cis, ev.bootstrap(y_pred, test_true, labels)[1], check_exact=False)
    results = pd.read_csv(tmp_path / "notebooks" / "cxr_results.csv")
    pd.testing.assert_frame_equal(results, ev.evaluate(y_pred, test_true, labels), check_exact=False)
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert "Inferring model ../checkpoints/chexzero_weights/best_128" in str(outputs)
