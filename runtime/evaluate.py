"""Accuracy of a bundle on labelled lines: character and word error rates, and how two bundles agree."""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import HtrError, ImageError
from .images import load_image


def read_labels(source: Path) -> List[Tuple[str, str]]:
    """Return `(image path, text)` pairs from `labels.tsv` (`path<TAB>text`, paths relative to its folder).

    `source` is the folder holding `labels.tsv` or the file itself.
    """
    source = Path(source)
    tsv = source / "labels.tsv" if source.is_dir() else source
    if not tsv.is_file():
        raise HtrError(f"{tsv}: no labels.tsv (one line per image: relative path, a tab, the transcription)")
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = [(str(tsv.parent / r[0]), r[1]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 2]
    if not rows:
        raise HtrError(f"{tsv}: holds no `path<TAB>text` lines")
    return rows


def edit_distance(hyp: Sequence, ref: Sequence) -> int:
    """Return the Levenshtein distance between two sequences (characters or words)."""
    row = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        prev, row[0] = row[0], i
        for j, r in enumerate(ref, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (h != r))
    return row[-1]


def character_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Return the summed character edit distance over the summed reference length."""
    errors = sum(edit_distance(h, r) for h, r in zip(predictions, references))
    return errors / max(sum(len(r) for r in references), 1)


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Return the summed word edit distance (whitespace-split) over the summed reference word count."""
    errors = sum(edit_distance(h.split(), r.split()) for h, r in zip(predictions, references))
    return errors / max(sum(len(r.split()) for r in references), 1)


@dataclass(frozen=True)
class Evaluation:
    """One bundle on one labelled set: the texts it read (None where the image could not be read) and its error rates."""

    texts: List[Optional[str]]
    cer: float
    wer: float
    seconds: float


def evaluate(recognizer, rows: Sequence[Tuple[str, str]], beams: Optional[int] = None, batch_size: int = 8, progress=None,
             options=None) -> Evaluation:
    """Read every labelled line with `recognizer`; unreadable images count as empty output and are reported by `progress`."""
    import time

    texts: List[Optional[str]] = [None] * len(rows)
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        chunk = list(range(start, min(start + batch_size, len(rows))))
        images, kept = [], []
        for i in chunk:
            try:
                images.append(load_image(rows[i][0]))
                kept.append(i)
            except ImageError as e:
                if progress:
                    progress(error=str(e))
        if images:
            for i, result in zip(kept, recognizer.recognize(images, beams=beams, batch_size=batch_size, options=options)):
                texts[i] = result.text
        if progress:
            progress(done=len(chunk))
    seconds = time.perf_counter() - started
    predictions = [t or "" for t in texts]
    references = [r[1] for r in rows]
    return Evaluation(texts, character_error_rate(predictions, references), word_error_rate(predictions, references), seconds)


def agreement(first: Evaluation, second: Evaluation) -> float:
    """Return the share of lines both read to identical text."""
    pairs = [(a, b) for a, b in zip(first.texts, second.texts) if a is not None and b is not None]
    return sum(a == b for a, b in pairs) / max(len(pairs), 1)


def cer_difference_interval(first: Evaluation, second: Evaluation, references: Sequence[str], level: float = 0.95,
                            rounds: int = 2000, seed: int = 0) -> Tuple[float, float]:
    """Return a `level` interval, in points, for `second`'s CER minus `first`'s on lines like these.

    A paired bootstrap over lines: each round draws as many lines as there are, with replacement, and
    takes the difference of the two CERs on that same draw. When the interval holds 0, these lines do
    not show a difference between the two bundles; unreadable images count as empty output, as in the CERs.
    """
    lengths = np.array([len(r) for r in references], dtype=np.int64)
    errors = [np.array([edit_distance(t or "", r) for t, r in zip(e.texts, references)], dtype=np.int64) for e in (first, second)]
    draws = np.random.default_rng(seed).integers(0, len(references), size=(rounds, len(references)))
    differences = 100 * (errors[1][draws].sum(1) - errors[0][draws].sum(1)) / np.maximum(lengths[draws].sum(1), 1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def _polygon_masks(polygons, size, scale: float) -> List[np.ndarray]:
    from PIL import Image, ImageDraw

    width, height = max(1, int(size[0] * scale)), max(1, int(size[1] * scale))
    masks = []
    for polygon in polygons:
        canvas = Image.new("1", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([(x * scale, y * scale) for x, y in polygon], fill=1)
        masks.append(np.asarray(canvas, dtype=bool))
    return masks


def line_detection_scores(predicted, truth, size, threshold: float = 0.5, scale: float = 0.25) -> dict:
    """Match predicted line outlines to true ones (polygons in page pixels) one-to-one at IoU >= `threshold`.

    Returns precision, recall, the matches (predicted index -> true index) and whether the matched
    lines come in the true reading order.
    """
    pred_masks, true_masks = _polygon_masks(predicted, size, scale), _polygon_masks(truth, size, scale)
    pairs = []
    for i, p in enumerate(pred_masks):
        for j, t in enumerate(true_masks):
            union = np.logical_or(p, t).sum()
            iou = np.logical_and(p, t).sum() / union if union else 0.0
            if iou >= threshold:
                pairs.append((iou, i, j))
    matches, used = {}, set()
    for iou, i, j in sorted(pairs, reverse=True):
        if i not in matches and j not in used:
            matches[i] = j
            used.add(j)
    order = [matches[i] for i in sorted(matches)]
    return {
        "precision": len(matches) / len(predicted) if predicted else 1.0,
        "recall": len(matches) / len(truth) if truth else 1.0,
        "matches": matches,
        "in_order": order == sorted(order),
    }
