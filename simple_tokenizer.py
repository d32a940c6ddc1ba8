"""CLIP's byte-level BPE tokenizer, as CheXzero uses it.

Text is cleaned (ftfy, HTML unescaped twice, whitespace collapsed, lower-cased), split with
CLIP's regex, mapped byte-by-byte to printable unicode symbols and merged with the 48,894 BPE
merges of ``bpe_simple_vocab_16e6.txt.gz``. The vocabulary has 49,408 entries:
256 byte symbols, 256 end-of-word byte symbols, one symbol per merge, then
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import regex as re

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# Number of merges CLIP keeps from the merges file (vocabulary size 49,408).
N_MERGES = 49152 - 256 - 2


def default_bpe() -> str:
    """The merges file shipped next to this module (resolved relative to the file, not the cwd)."""
    return str(Path(__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz")


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (the GPT-2 table).

    Printable latin-1 bytes map to themselves; the others are shifted above 255 so that
    BPE never sees whitespace or control characters.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    # Insertion order matters: the vocabulary lists symbols in this order.
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    """All adjacent symbol pairs of a word."""
    return set(zip(word[:-1], word[1:]))


def basic_clean(text: str) -> str:
    """Fix mojibake with ftfy and undo (possibly double) HTML escaping."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapse every whitespace run to one space."""
    return re.sub(r"\s+", " ", text).strip()


class SimpleTokenizer:
    """Encode text to CLIP token ids and back."""

    def __init__(self, bpe_path: str | None = None) -> None:
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(bpe_path or default_bpe(), "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        self.pat = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    @property
    def sot(self) -> int:
        return self.encoder[SOT_TOKEN]

    @property
    def eot(self) -> int:
        return self.encoder[EOT_TOKEN]

    def bpe(self, token: str) -> str:
        """Merge the symbols of one pre-token greedily by merge rank; results are cached."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT."""
        ids: list[int] = []
        text = whitespace_clean(basic_clean(text)).lower()
        for piece in re.findall(self.pat, text):
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(symbols).split(" "))
        return ids

    def decode(self, tokens: list[int]) -> str:
        """Text of ``tokens``; end-of-word markers become spaces."""
        text = "".join(self.decoder[t] for t in tokens)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")
