"""Token ids to text, identical to `processor.batch_decode(ids, skip_special_tokens=True)`, without transformers.

The bundle carries the fast tokenizer's `tokenizer.json`; the `tokenizers` library decodes it the
way transformers' fast tokenizers do, and transformers' optional clean-up of spaces before
punctuation is applied on top when the tokenizer asked for it.
"""

from pathlib import Path
from typing import List, Sequence

from tokenizers import Tokenizer

from .errors import BundleError

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order.
_CLEAN_UPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """Return text with the spaces before punctuation and English contractions removed."""
    for old, new in _CLEAN_UPS:
        text = text.replace(old, new)
    return text


class TextDecoder:
    """Decodes generated token ids with the bundle's tokenizer."""

    def __init__(self, tokenizer_file: Path, clean_up_spaces: bool):
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise BundleError(f"{tokenizer_file}: cannot be loaded as a tokenizer ({e})") from e
        self._clean_up = clean_up_spaces

    def decode(self, sequences: Sequence[Sequence[int]]) -> List[str]:
        """Return the text of each id sequence, special tokens skipped; ids the tokenizer lacks are dropped."""
        texts = self._tokenizer.decode_batch([list(map(int, s)) for s in sequences], skip_special_tokens=True)
        return [clean_up_tokenization(t) for t in texts] if self._clean_up else texts
