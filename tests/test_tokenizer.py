"""CLIP BPE: the spec's Appendix A vectors and lossless round trips on real report text."""
import hashlib
import re
import tarfile
from pathlib import Path

import pytest
import torch

import clip
from simple_tokenizer import SimpleTokenizer, default_bpe

APPENDIX_A = {
    "Atelectasis": [49406, 992, 944, 6538, 533, 49407],
    "no Atelectasis": [49406, 871, 992, 944, 6538, 533, 49407],
    "Cardiomegaly": [49406, 6211, 3693, 2001, 344, 49407],
    "Consolidation": [49406, 41111, 49407],
    "Edema": [49406, 29632, 1226, 49407],
    "Enlarged Cardiomediastinum": [49406, 38136, 3480, 6211, 3693, 570, 1761, 512, 1008, 49407],
    "Fracture": [49406, 28995, 49407],
    "Lung Lesion": [49406, 16271, 534, 1015, 49407],
    "Lung Opacity": [49406, 16271, 676, 7511, 49407],
    "No Finding": [49406, 871, 6002, 49407],
    "no No Finding": [49406, 871, 871, 6002, 49407],
    "Pleural Effusion": [49406, 926, 33948, 1490, 9364, 49407],
    "Pleural Other": [49406, 926, 33948, 1010, 49407],
    "Pneumonia": [49406, 42906, 49407],
    "Pneumothorax": [49406, 28714, 617, 4130, 9203, 49407],
    "Support Devices": [49406, 1425, 9067, 49407],
    " ": [49406, 49407],
}


@pytest.fixture(scope="module")
def tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def test_vocab_file_is_clips() -> None:
    digest = hashlib.sha256(Path(default_bpe()).read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def test_vocabulary_size(tokenizer: SimpleTokenizer) -> None:
    assert len(tokenizer.encoder) == 49408
    assert (tokenizer.sot, tokenizer.eot) == (49406, 49407)


@pytest.mark.parametrize("text,ids", APPENDIX_A.items())
def test_appendix_a_vectors(text: str, ids: list[int]) -> None:
    row = clip.tokenize(text)[0]
    assert row[: len(ids)].tolist() == ids
    assert int(row[len(ids):].abs().sum()) == 0


def test_negative_prompt_is_no_plus_label(tokenizer: SimpleTokenizer) -> None:
    for label, ids in APPENDIX_A.items():
        if label.strip():
            assert [49406, 871] + ids[1:] == [49406, 871] + tokenizer.encode(label) + [49407]


def test_cleaning_rules(tokenizer: SimpleTokenizer) -> None:
    # double HTML unescape, whitespace collapse and lower-casing all map to the same ids
    assert tokenizer.encode("Pleural   &amp;amp;\n Effusion") == tokenizer.encode("pleural & effusion")
    assert tokenizer.encode("CARDIOMEGALY") == tokenizer.encode("cardiomegaly")
    # digits are single tokens
    assert len(tokenizer.encode("2024")) == 4


def iu_report_texts(limit: int = 300) -> list[str]:
    """FINDINGS/IMPRESSION text of real Indiana University reports shipped by torchxrayvision."""
    import phantom  # finds torchxrayvision's data without importing it (its import shadows our model.py)
    tgz = phantom.torchxrayvision_data() / "NLMCXR_reports.tgz"
    texts = []
    with tarfile.open(tgz) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode("utf-8")
            texts += re.findall(r'Label="(?:FINDINGS|IMPRESSION)">([^<]+)<', xml)
            if len(texts) >= limit:
                break
    return texts


def test_round_trip_on_real_reports(tokenizer: SimpleTokenizer) -> None:
    texts = iu_report_texts()
    assert len(texts) >= 300
    # BPE keeps every byte but not the spacing: decode puts a space after each word piece
    # that ends a pre-token ("effusion." -> "effusion ."), so compare without whitespace.
    for text in texts:
        decoded = tokenizer.decode(tokenizer.encode(text))
        assert "".join(decoded.split()) == "".join(text.lower().split())


def test_round_trip_non_ascii(tokenizer: SimpleTokenizer) -> None:
    text = "derrame pleural izquierdo · 12 mm ± 3, café"
    decoded = tokenizer.decode(tokenizer.encode(text))
    assert decoded.strip() == "derrame pleural izquierdo · 1 2 mm ± 3 , café"
    assert "".join(decoded.split()) == "".join(text.split())


def test_too_long_text_raises_or_truncates() -> None:
    long_text = "small left pleural effusion " * 40
    with pytest.raises(RuntimeError, match="small left pleural effusion"):
        clip.tokenize(long_text)
    row = clip.tokenize(long_text, truncate=True)[0]
    assert row.shape == (77,) and row[0] == 49406 and row[-1] == 49407
    assert row.dtype == torch.long
