"""The original CheXzero's public API, as researchers' notebooks call it.

Every callable that Appendix S of the shared spec (chexzero_spec.md) lists imports from the module
of the same name and takes the original's parameter names first, in the original's order, each
usable by position or by keyword. Then each is called with the original's keyword names on small
inputs, and what comes back is checked against what the original's function does.
"""
import importlib
import inspect

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import clip
import data_process
import eval as ev
import model
import simple_tokenizer
import zero_shot
from conftest import SMALL
from model import CLIP

# Appendix S: the original's public callables and their parameter names, in order.
ORIGINAL_SIGNATURES = {
    "zero_shot.CXRTestDataset": ("img_path", "transform"),
    "zero_shot.load_clip": ("model_path", "pretrained", "context_length"),
    "zero_shot.zeroshot_classifier": ("classnames", "templates", "model", "context_length"),
    "zero_shot.predict": ("loader", "model", "zeroshot_weights", "softmax_eval", "verbose"),
    "zero_shot.run_single_prediction": ("cxr_labels", "template", "model", "loader", "softmax_eval",
                                        "context_length"),
    "zero_shot.process_alt_labels": ("alt_labels_dict", "cxr_labels"),
    "zero_shot.run_softmax_eval": ("model", "loader", "eval_labels", "pair_template", "context_length"),
    "zero_shot.run_experiment": ("model", "cxr_labels", "cxr_templates", "loader", "y_true", "alt_labels_dict",
                                 "softmax_eval", "context_length", "use_bootstrap"),
    "zero_shot.make_true_labels": ("cxr_true_labels_path", "cxr_labels", "cutlabels"),
    "zero_shot.make": ("model_path", "cxr_filepath", "pretrained", "context_length"),
    "zero_shot.ensemble_models": ("model_paths", "cxr_filepath", "cxr_labels", "cxr_pair_template", "cache_dir",
                                  "save_name"),
    "zero_shot.run_zero_shot": ("cxr_labels", "cxr_templates", "model_path", "cxr_filepath", "final_label_path",
                                "alt_labels_dict", "softmax_eval", "context_length", "pretrained", "use_bootstrap",
                                "cutlabels"),
    "zero_shot.run_cxr_zero_shot": ("model_path", "context_length", "pretrained"),
    "zero_shot.validation_zero_shot": ("model_path", "context_length", "pretrained"),
    "eval.compute_mean": ("stats", "is_df"),
    "eval.accuracy": ("output", "target", "topk"),
    "eval.sigmoid": ("x",),
    "eval.plot_roc": ("y_pred", "y_true", "roc_name", "plot"),
    "eval.choose_operating_point": ("fpr", "tpr", "thresholds"),
    "eval.plot_pr": ("y_pred", "y_true", "pr_name", "plot"),
    "eval.evaluate": ("y_pred", "y_true", "cxr_labels", "roc_name", "pr_name", "label_idx_map"),
    "eval.compute_cis": ("data", "confidence_level"),
    "eval.bootstrap": ("y_pred", "y_true", "cxr_labels", "n_samples", "label_idx_map"),
    "train.CXRDataset": ("img_path", "txt_path", "column", "size", "transform"),
    "train.load_data": ("cxr_filepath", "txt_filepath", "batch_size", "column", "pretrained", "verbose"),
    "train.load_clip": ("model_path", "pretrained", "context_length"),
    "train.preprocess_text": ("texts", "model"),
    "train.make": ("config", "cxr_filepath", "txt_filepath", "model_path"),
    "train.train_main": ("cxr_filepath", "txt_filepath", "hyperparams", "output_path", "model_path", "pretrained"),
    "data_process.load_data": ("filepath",),
    "data_process.get_cxr_paths_list": ("filepath",),
    "data_process.preprocess": ("img", "desired_size"),
    "data_process.img_to_hdf5": ("cxr_paths", "out_filepath", "resolution"),
    "data_process.get_files": ("directory",),
    "data_process.get_cxr_path_csv": ("out_filepath", "directory"),
    "data_process.section_start": ("lines", "section"),
    "data_process.section_end": ("lines", "section_start"),
    "data_process.getIndexOfLast": ("l", "element"),
    "data_process.write_report_csv": ("cxr_paths", "txt_folder", "out_path"),
    "clip.available_models": (),
    "clip.load": ("name", "device", "jit"),
    "clip.tokenize": ("texts", "context_length"),
    "model.Bottleneck": ("inplanes", "planes", "stride"),
    "model.AttentionPool2d": ("spacial_dim", "embed_dim", "num_heads", "output_dim"),
    "model.ModifiedResNet": ("layers", "output_dim", "heads", "input_resolution", "width"),
    "model.ResidualAttentionBlock": ("d_model", "n_head", "attn_mask"),
    "model.Transformer": ("width", "layers", "heads", "attn_mask"),
    "model.VisualTransformer": ("input_resolution", "patch_size", "width", "layers", "heads", "output_dim"),
    "model.CLIP": ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                   "context_length", "vocab_size", "transformer_width", "transformer_heads", "transformer_layers"),
    "model.convert_weights": ("model",),
    "model.build_model": ("state_dict",),
    "simple_tokenizer.default_bpe": (),
    "simple_tokenizer.bytes_to_unicode": (),
    "simple_tokenizer.get_pairs": ("word",),
    "simple_tokenizer.basic_clean": ("text",),
    "simple_tokenizer.whitespace_clean": ("text",),
    "simple_tokenizer.SimpleTokenizer": ("bpe_path",),
}

LABELS = ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion"]
N = 8


@pytest.mark.parametrize("qualified", sorted(ORIGINAL_SIGNATURES))
def test_every_original_callable_takes_the_original_names_in_order(qualified: str) -> None:
    module_name, name = qualified.split(".")
    parameters = list(inspect.signature(getattr(importlib.import_module(module_name), name)).parameters.values())
    original = ORIGINAL_SIGNATURES[qualified]
    assert [p.name for p in parameters[:len(original)]] == list(original)
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters[:len(original)])
    # anything the project added comes after them and has a default, so the original's calls still bind
    assert all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in parameters[len(original):])


# --------------------------------------------------------------------------- model.py, clip.py
def test_model_classes_with_the_original_keywords() -> None:
    torch.manual_seed(0)
    causal = torch.full((7, 7), float("-inf")).triu_(1)
    block = model.ResidualAttentionBlock(d_model=64, n_head=2, attn_mask=causal)
    stack = model.Transformer(width=64, layers=2, heads=2, attn_mask=causal)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        changed = x.clone()
        changed[:, 4:] += 1.0  # with the causal mask the first 4 positions cannot see the change
        for net in (block, stack):
            torch.testing.assert_close(net(x)[:, :4], net(changed)[:, :4])
    assert model.VisualTransformer is model.VisionTransformer
    vit = model.VisualTransformer(input_resolution=32, patch_size=8, width=64, layers=1, heads=2, output_dim=16)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    resnet = model.ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, input_resolution=64, width=16)
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, 16)
    assert model.Bottleneck(inplanes=16, planes=8, stride=2)(torch.randn(1, 16, 8, 8)).shape == (1, 32, 4, 4)
    pool = model.AttentionPool2d(spacial_dim=4, embed_dim=32, num_heads=4, output_dim=8)
    assert pool(torch.randn(2, 32, 4, 4)).shape == (2, 8)

    net = CLIP(**SMALL).eval()
    rebuilt = model.build_model(state_dict=net.state_dict())
    model.convert_weights(model=net)
    assert net.visual.proj.dtype == torch.float16 and net.positional_embedding.dtype == torch.float32
    assert not rebuilt.training and rebuilt.visual.proj.dtype == torch.float32


def test_clip_and_tokenizer_with_the_original_keywords(tmp_path) -> None:
    assert clip.available_models() == ["RN50", "RN101", "RN50x4", "ViT-B/32"]
    tokens = clip.tokenize(texts=["Pleural Effusion", "no Pleural Effusion"], context_length=77)
    assert tokens[0, :6].tolist() == [49406, 926, 33948, 1490, 9364, 49407] and tokens.shape == (2, 77)
    torch.manual_seed(1)
    path = tmp_path / "small.pt"
    torch.save(CLIP(**SMALL).state_dict(), path)
    loaded, transform = clip.load(name=str(path), device="cpu", jit=False)
    assert not loaded.training and loaded.visual.input_resolution == 32 and callable(transform)

    tokenizer = simple_tokenizer.SimpleTokenizer(bpe_path=simple_tokenizer.default_bpe())
    assert tokenizer.encode("Atelectasis") == [992, 944, 6538, 533]
    assert len(simple_tokenizer.bytes_to_unicode()) == 256
    assert simple_tokenizer.get_pairs(word=("a", "b", "c")) == {("a", "b"), ("b", "c")}
    assert simple_tokenizer.basic_clean(text="  &amp;lt;x&amp;gt; ") == "<x>"
    assert simple_tokenizer.whitespace_clean(text=" a \n\t b ") == "a b"


# --------------------------------------------------------------------------- eval.py
def test_eval_with_the_original_keywords() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, (60, len(LABELS)))
    y_true[0], y_true[1] = 1, 0
    y_pred = np.clip(0.5 + 0.1 * rng.standard_normal(y_true.shape) + 0.1 * y_true, 0, 1)
    aurocs = ev.evaluate(y_pred=y_pred, y_true=y_true, cxr_labels=LABELS, roc_name="ROC", pr_name="PR",
                         label_idx_map=None)
    fpr, tpr, thresholds, roc_auc = ev.plot_roc(y_pred=y_pred[:, 0], y_true=y_true[:, 0], roc_name="ROC", plot=False)
    assert aurocs.iloc[0, 0] == roc_auc
    sens, spec = ev.choose_operating_point(fpr=fpr, tpr=tpr, thresholds=thresholds)
    assert max(tpr - fpr) == pytest.approx(sens + spec - 1)
    precision, recall, _ = ev.plot_pr(y_pred=y_pred[:, 0], y_true=y_true[:, 0], pr_name="PR", plot=False)
    assert precision[-1] == 1 and recall[-1] == 0
    boot, cis = ev.bootstrap(y_pred=y_pred, y_true=y_true, cxr_labels=LABELS, n_samples=50, label_idx_map=None)
    pd.testing.assert_frame_equal(ev.compute_cis(data=boot, confidence_level=0.05), cis)
    assert ev.compute_mean(stats={"Atelectasis": [0.6], "Cardiomegaly": [0.7], "Consolidation": [0.8],
                                  "Edema": [0.9], "Pleural Effusion": [1.0]}, is_df=False) == pytest.approx(0.8)
    assert ev.sigmoid(x=0.0) == 0.5
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert ev.accuracy(output=scores, target=torch.tensor([[2], [0]]), topk=(1, 2)) == [1.0, 2.0]


# --------------------------------------------------------------------------- data_process.py
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 FINDINGS:  Heart size is normal.

 IMPRESSION:
 No acute cardiopulmonary process.
 Small left pleural effusion.

 RECOMMENDATION(S):  Follow-up radiograph.
"""


def test_report_helpers_with_the_original_keywords() -> None:
    lines = REPORT.splitlines()
    start = data_process.section_start(lines=lines, section=" IMPRESSION")
    end = data_process.section_end(lines=lines, section_start=start)
    assert lines[start] == " IMPRESSION:" and lines[end].startswith(" RECOMMENDATION(S):")
    assert " ".join(" ".join(lines[start:end]).split()) == ("IMPRESSION: No acute cardiopulmonary process. "
                                                             "Small left pleural effusion.")
    findings = data_process.section_start(lines, " FINDINGS")
    assert data_process.section_end(lines, findings) == start  # the next header ends it
    assert data_process.section_start(lines) == start          # " IMPRESSION" is the default
    assert data_process.section_start(lines, " COMPARISON") == -1
    assert data_process.section_end(lines, -1) == -1
    assert data_process.section_end(lines[:start + 3], start) == start + 3  # no header after: the end
    tokens = REPORT.split()
    assert data_process.getIndexOfLast(l=tokens + ["IMPRESSION:"], element="IMPRESSION:") == len(tokens)
    assert data_process.getIndexOfLast(["a", "b", "a", "c"], "a") == 2
    with pytest.raises(ValueError):
        data_process.getIndexOfLast(l=tokens, element="CONCLUSION:")


def test_preprocessing_with_the_original_keywords(tmp_path) -> None:
    study = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    study.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        cv2.imwrite(str(study / f"{name}.jpg"), rng.integers(0, 256, (120, 90), dtype=np.uint8))
    reports = tmp_path / "reports" / "p10" / "p10000032"
    reports.mkdir(parents=True)
    (reports / "s50414267.txt").write_text(REPORT)

    data_process.get_cxr_path_csv(out_filepath=str(tmp_path / "paths.csv"), directory=str(tmp_path / "files"))
    assert data_process.load_data(filepath=str(tmp_path / "paths.csv")).columns.tolist() == ["Path"]
    paths = data_process.get_cxr_paths_list(filepath=str(tmp_path / "paths.csv"))
    assert list(paths) == data_process.get_files(directory=str(tmp_path / "files")) and len(paths) == 2
    square = data_process.preprocess(img=Image.fromarray(np.full((120, 90), 200, np.uint8)), desired_size=32)
    assert square.size == (32, 32) and np.asarray(square)[:, 0].max() == 0  # padded left and right
    data_process.img_to_hdf5(cxr_paths=list(paths), out_filepath=str(tmp_path / "cxr.h5"), resolution=32,
                             num_workers=1)
    with h5py.File(tmp_path / "cxr.h5") as f:
        assert f["cxr"].shape == (2, 32, 32)
    data_process.write_report_csv(cxr_paths=list(paths), txt_folder=str(tmp_path / "reports") + "/",
                                  out_path=str(tmp_path / "reports.csv"))
    impressions = pd.read_csv(tmp_path / "reports.csv")["impression"].tolist()
    assert impressions == ["No acute cardiopulmonary process. Small left pleural effusion."] * 2


# --------------------------------------------------------------------------- zero_shot.py
@pytest.fixture
def zero_shot_files(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "cxr.h5", "w") as f:
        f.create_dataset("cxr", data=rng.integers(0, 256, (N, 320, 320)).astype(np.uint8))
    y = rng.integers(0, 2, (N, len(LABELS)))
    y[0], y[1] = 1, 0
    table = pd.DataFrame(y, columns=LABELS)
    table.insert(0, "Study", [f"study{i}" for i in range(N)])
    table.to_csv(tmp_path / "gt.csv", index=False)
    female = np.arange(N) % 2
    pd.DataFrame({"Path": [f"view{i}.jpg" for i in range(N)], "Female": female, "Male": 1 - female}).to_csv(
        tmp_path / "sex.csv", index=False)
    models = tmp_path / "models"
    models.mkdir()
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save(CLIP(**SMALL).state_dict(), models / f"small_{seed}.pt")
    return {"h5": str(tmp_path / "cxr.h5"), "labels": str(tmp_path / "gt.csv"), "sex": str(tmp_path / "sex.csv"),
            "models": sorted(str(p) for p in models.glob("*.pt")), "cache": str(tmp_path / "cache"),
            "y_true": y}


def test_zero_shot_pipeline_with_the_original_keywords(zero_shot_files) -> None:
    f = zero_shot_files
    y_true = zero_shot.make_true_labels(cxr_true_labels_path=f["labels"], cxr_labels=LABELS, cutlabels=True)
    np.testing.assert_array_equal(y_true, f["y_true"])
    assert not zero_shot.load_clip(model_path=f["models"][0], pretrained=None, context_length=77).training
    net, loader = zero_shot.make(model_path=f["models"][0], cxr_filepath=f["h5"], pretrained=None, context_length=77)
    dataset = zero_shot.CXRTestDataset(img_path=f["h5"], transform=clip.cxr_transform(32))
    assert len(dataset) == N and dataset[0]["img"].shape == (3, 32, 32)

    weights = zero_shot.zeroshot_classifier(classnames=LABELS, templates=["{}"], model=net, context_length=77)
    logits = zero_shot.predict(loader=loader, model=net, zeroshot_weights=weights, softmax_eval=True, verbose=0)
    single = zero_shot.run_single_prediction(cxr_labels=LABELS, template="{}", model=net, loader=loader,
                                             softmax_eval=True, context_length=77)
    np.testing.assert_allclose(single, logits, rtol=1e-6)
    pair = zero_shot.run_softmax_eval(model=net, loader=loader, eval_labels=LABELS, pair_template=("{}", "no {}"),
                                      context_length=77)
    negative = zero_shot.run_single_prediction(LABELS, "no {}", net, loader)
    np.testing.assert_allclose(pair, np.exp(logits) / (np.exp(logits) + np.exp(negative)), rtol=1e-5)

    alt_labels, idx_map = zero_shot.process_alt_labels(alt_labels_dict={"Edema": ["pulmonary edema"]},
                                                       cxr_labels=LABELS)
    assert alt_labels == ["Edema", "pulmonary edema"] and idx_map == {"Edema": 2, "pulmonary edema": 2}
    results, y_pred = zero_shot.run_experiment(model=net, cxr_labels=LABELS, cxr_templates=[("{}", "no {}")],
                                               loader=loader, y_true=y_true, alt_labels_dict=None, softmax_eval=True,
                                               context_length=77, use_bootstrap=False)
    np.testing.assert_allclose(y_pred, pair, rtol=1e-6)
    pd.testing.assert_frame_equal(results[0], ev.evaluate(pair, y_true, LABELS))

    predictions, mean = zero_shot.ensemble_models(model_paths=f["models"], cxr_filepath=f["h5"], cxr_labels=LABELS,
                                                  cxr_pair_template=("{}", "no {}"), cache_dir=f["cache"],
                                                  save_name="test")
    np.testing.assert_allclose(predictions[0], pair, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, np.mean(predictions, axis=0))
    results, _ = zero_shot.run_zero_shot(cxr_labels=LABELS, cxr_templates=[("{}", "no {}")],
                                         model_path=f["models"][0], cxr_filepath=f["h5"],
                                         final_label_path=f["labels"], alt_labels_dict=None, softmax_eval=True,
                                         context_length=77, pretrained=None, use_bootstrap=False, cutlabels=True)
    pd.testing.assert_frame_equal(results[0], ev.evaluate(pair, y_true, LABELS))


def test_validation_zero_shot_runs_the_sex_task(zero_shot_files) -> None:
    f = zero_shot_files
    labels, (boot, cis) = zero_shot.validation_zero_shot(model_path=f["models"][0], context_length=77,
                                                         pretrained=None, cxr_filepath=f["h5"],
                                                         final_label_path=f["sex"])
    assert labels == ["Female", "Male"] and list(cis.columns) == ["Female_auc", "Male_auc"] and len(boot) == 1000
    # the bootstrapped AUROCs of the prompt "the patient's sex is {}" scored without a negative prompt,
    # against the label columns after the first
    net, loader = zero_shot.make(f["models"][0], f["h5"], pretrained=None)
    weights = zero_shot.zeroshot_classifier(labels, ["the patient's sex is {}"], net)
    y_pred = zero_shot.predict(loader, net, weights, softmax_eval=False)
    y_true = pd.read_csv(f["sex"]).iloc[:, 1:].to_numpy()
    pd.testing.assert_frame_equal(cis, ev.bootstrap(y_pred, y_true, labels)[1])


def test_the_original_notebooks_true_labels_call(zero_shot_files) -> None:
    """The researcher's cell of the issue: make_true_labels(cxr_true_labels_path=..., cxr_labels=...)."""
    cxr_true_labels_path = zero_shot_files["labels"]
    cxr_labels = LABELS[::-1]  # columns are selected by name, in the order asked
    test_true = zero_shot.make_true_labels(cxr_true_labels_path=cxr_true_labels_path, cxr_labels=cxr_labels)
    np.testing.assert_array_equal(test_true, zero_shot_files["y_true"][:, ::-1])
    assert test_true.dtype.kind == "i"
