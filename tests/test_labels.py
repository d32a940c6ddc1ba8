"""labels.py is the one home of the label names and prompts: its two orders are one list, the old
names still import from where they were, and the copies kept elsewhere on purpose agree with it."""
import ast
import json

import eval as ev
import phantom
import preprocess_train_data
import run_train
import run_zero_shot
import train
import zero_shot as zs
from conftest import ROOT
from labels import (
    ABNORMAL_PROMPTS,
    CHEXPERT_CSV_ORDER,
    CHEXPERT_EVAL_ORDER,
    COMPETITION_LABELS,
    NEGATION_PREFIXES,
    NORMAL_LABELS,
    NORMAL_PROMPTS,
    PADCHEST_CSV,
    PAIR_TEMPLATE,
)


def test_the_evaluation_order_is_the_csv_order_sorted():
    assert len(set(CHEXPERT_CSV_ORDER)) == len(CHEXPERT_CSV_ORDER) == 14
    assert CHEXPERT_EVAL_ORDER == sorted(CHEXPERT_EVAL_ORDER) and set(CHEXPERT_EVAL_ORDER) == set(CHEXPERT_CSV_ORDER)
    assert CHEXPERT_CSV_ORDER[0] == "No Finding" and CHEXPERT_CSV_ORDER[-1] == "Support Devices"
    assert set(COMPETITION_LABELS) < set(CHEXPERT_CSV_ORDER) and len(COMPETITION_LABELS) == 5


def test_the_old_names_are_the_same_objects_with_the_same_types():
    """Code that imported a constant from its old module gets labels.py's, as a list or tuple as before."""
    assert zs.CHEXPERT_LABELS is CHEXPERT_EVAL_ORDER and isinstance(zs.CHEXPERT_LABELS, list)
    assert zs.PAIR_TEMPLATE is PAIR_TEMPLATE and PAIR_TEMPLATE == ("{}", "no {}")
    assert (zs.NORMAL_LABELS, zs.NORMAL_PROMPTS, zs.ABNORMAL_PROMPTS, zs.NEGATION_PREFIXES) == (
        NORMAL_LABELS, NORMAL_PROMPTS, ABNORMAL_PROMPTS, NEGATION_PREFIXES)
    assert ev.COMPETITION_LABELS is COMPETITION_LABELS is train.COMPETITION_LABELS
    assert isinstance(COMPETITION_LABELS, list)
    assert preprocess_train_data.CHEXPERT_LABELS is CHEXPERT_CSV_ORDER and isinstance(CHEXPERT_CSV_ORDER, tuple)
    assert preprocess_train_data.PADCHEST_CSV is PADCHEST_CSV


def test_the_default_prompts_of_the_clis_are_the_original_pair():
    assert run_train.parse_args([]).val_pair_template == list(PAIR_TEMPLATE)
    given = ["--cxr_filepath", "test.h5", "--labels_path", "test.csv"]
    assert run_zero_shot.parse_args(given).pair_template == list(PAIR_TEMPLATE)


def test_the_phantom_writes_the_names_the_pipeline_reads():
    """phantom/ spells the datasets' names itself (it stands in for them); they are labels.py's."""
    assert phantom.CHEXPERT_ORDER == list(CHEXPERT_CSV_ORDER)       # CheXpert's CSV columns
    assert phantom.LABELS == CHEXPERT_EVAL_ORDER                    # MIMIC's -chexpert.csv.gz columns
    assert phantom.COMPETITION == COMPETITION_LABELS
    assert phantom.PADCHEST_CSV == PADCHEST_CSV


def test_the_notebook_types_the_same_labels_and_prompts():
    """notebooks/zero_shot.ipynb keeps the original notebook's typed cxr_labels and cxr_pair_template."""
    cells = json.loads((ROOT / "notebooks" / "zero_shot.ipynb").read_text())["cells"]
    values = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    if node.targets[0].id in ("cxr_labels", "cxr_pair_template"):
                        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values == {"cxr_labels": CHEXPERT_EVAL_ORDER, "cxr_pair_template": PAIR_TEMPLATE}
