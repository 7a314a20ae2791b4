"""Token ids to text without transformers, identical to the real TrOCR tokenizers' batch_decode."""

import random

import pytest

from htr.text import TextDecoder, clean_up_tokenization
from tiny import TROCR, needs_shared

WORDS = [
    "Dear", "Sir", "Madam", "received", "letter", "March", "22nd", "1905", "Mrs.", "Stanford", "don't", "I'm",
    "we've", "they're", "it's", "o'clock", "naïve", "café", "Zürich", "Ångström", "façade", "smörgåsbord",
    "Ελληνικά", "Русский", "日本語", "한국어", "עברית", "العربية", "emoji🙂", "£5", "€10", "$3.50", "50%", "#7",
    "a+b=c", "x*y", "(note)", "[sic]", "{x}", "<tag>", "e-mail", "well—known", "«quote»", "“curly”", "‘single’",
    "...", "?!", ",", ";", ":", "/", "\\", "|", "~", "^", "_", "`", "'", '"', "&", "@", "½", "°C", "№", "§",
]
SEPARATORS = [" ", "  ", " ", "\t", "\n", "", " , ", " . ", " ? "]


def strings(count: int = 300):
    rng = random.Random(1905)
    out = ["", " ", "Hello world", " leading space", "trailing space ", "double  space", "x ' y", "He didn 't go", "A . B , C ! D ?"]
    while len(out) < count:
        parts = [rng.choice(WORDS) + rng.choice(SEPARATORS) for _ in range(rng.randint(1, 9))]
        out.append("".join(parts))
    return out


def test_clean_up_matches_transformers():
    transformers = pytest.importorskip("transformers")
    for text in strings():
        assert clean_up_tokenization(text) == transformers.PreTrainedTokenizerBase.clean_up_tokenization(text)


@needs_shared
@pytest.mark.parametrize("name", ["trocr-base-handwritten", "trocr-small-handwritten"])
@pytest.mark.parametrize("clean_up", [False, True])
def test_decode_matches_batch_decode(tmp_path, name, clean_up):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TROCR / name, use_fast=True)
    tokenizer.clean_up_tokenization_spaces = clean_up
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    decoder = TextDecoder(tmp_path / "tokenizer.json", clean_up)
    rng = random.Random(7)
    sequences = []
    for text in strings():
        ids = tokenizer(text).input_ids
        # What a model may emit besides text: pad/eos mid-sequence, <unk>, <mask>, ids past the tokenizer.
        extra = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id, len(tokenizer) + 3]
        if rng.random() < 0.3:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(extra))
        sequences.append(ids)
    assert decoder.decode(sequences) == tokenizer.batch_decode(sequences, skip_special_tokens=True)


@needs_shared
def test_roundtrip_of_plain_text(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TROCR / "trocr-base-handwritten", use_fast=True)
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    decoder = TextDecoder(tmp_path / "tokenizer.json", False)
    texts = ["Dear Sir, I'm here.", "café Zürich 1905 — naïve", "Ελληνικά Русский 日本語"]
    assert decoder.decode([tokenizer(t).input_ids for t in texts]) == texts
