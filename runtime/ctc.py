"""Rescoring the beam's finished hypotheses with the model's CTC head: joint attention/CTC scoring.

A model trained with htr-train's auxiliary CTC loss has a second reader: a linear head over each
column of encoder patches, giving a few CTC steps per column. Its alignment-free view of the
line catches what the decoder's beam gets wrong (a letter dropped or doubled), so the recognizer
can pick among the beam's finished hypotheses by

    (1 - weight) * decoder log-probability + weight * CTC log-likelihood

(both summed over the sequence), as hybrid CTC/attention recognisers do. With weight 0, or one
beam, the result is exactly `generate`'s.
"""

from typing import List, Optional, Sequence

import numpy as np

from .manifest import CtcSpec
from .search import Hypothesis


class CtcHead:
    """The bundle's CTC head graph: encoder states `(N, tokens, hidden)` -> CTC log-probabilities `(N, steps, vocab)`.

    It runs in ONNX Runtime beside the other graphs (numpy's BLAS threads would fight ONNX
    Runtime's for the cores, doubling the time of a line on two cores).
    """

    def __init__(self, session, spec: CtcSpec):
        self._session = session
        self._input = spec.graph.inputs[0].name
        self._output = spec.graph.outputs[0].name
        self.blank = spec.blank
        self.skip = frozenset(spec.skip)
        self.vocab = int(spec.graph.outputs[0].shape[-1])

    def log_probs(self, hidden: np.ndarray) -> np.ndarray:
        """Return `(N, steps, vocab)` CTC log-probabilities for encoder states `(N, tokens, hidden)`."""
        return self._session.run([self._output], {self._input: np.asarray(hidden, dtype=np.float32)})[0]

    def labels(self, tokens: Sequence[int]) -> Optional[List[int]]:
        """Return the tokens the CTC head reads: `tokens` without the special ids it never saw in training;
        None where one is past the head's vocabulary (a decoder may have more ids than its tokenizer)."""
        labels = [int(t) for t in tokens if int(t) not in self.skip]
        return None if any(t >= self.vocab for t in labels) else labels


def sequence_log_likelihoods(log_probs: np.ndarray, labels: Sequence[Sequence[int]], blank: int) -> np.ndarray:
    """Return log P(labels[i] | log_probs[i]) under CTC, summed over all alignments (the forward algorithm).

    `log_probs: (n, steps, vocab)`; a label sequence that cannot fit in `steps` gets -inf. Equals
    `-torch.nn.functional.ctc_loss(..., reduction="none")`.
    """
    n, steps, _ = log_probs.shape
    width = 2 * max((len(seq) for seq in labels), default=0) + 1
    # Extended labels: blank, l1, blank, l2, ..., blank; rows padded with blanks past their end.
    ext = np.full((n, width), blank, dtype=np.int64)
    for i, seq in enumerate(labels):
        ext[i, 1 : 2 * len(seq) : 2] = seq
    # A skip over the blank between two labels is allowed only when they differ.
    skip = np.zeros((n, width), dtype=bool)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    emit = np.take_along_axis(log_probs, np.broadcast_to(ext[:, None, :], (n, steps, width)), axis=2)  # (n, steps, width)

    alpha = np.full((n, width), -np.inf)
    alpha[:, :2] = emit[:, 0, :2]
    for t in range(1, steps):
        stay = alpha
        step = np.concatenate([np.full((n, 1), -np.inf), alpha[:, :-1]], axis=1)
        jump = np.where(skip, np.concatenate([np.full((n, 2), -np.inf), alpha[:, :-2]], axis=1), -np.inf)
        alpha = np.logaddexp(np.logaddexp(stay, step), jump) + emit[:, t]
    ends = np.array([2 * len(seq) for seq in labels], dtype=np.int64)
    last = np.take_along_axis(alpha, ends[:, None], axis=1)[:, 0]
    before = np.where(ends > 0, np.take_along_axis(alpha, np.maximum(ends - 1, 0)[:, None], axis=1)[:, 0], -np.inf)
    return np.logaddexp(last, before)


def rescore(head: CtcHead, log_probs: np.ndarray, n_best: Sequence[Sequence[Hypothesis]], weight: float,
            length_penalty: float) -> List[Hypothesis]:
    """Return, for each image, the hypothesis of its n-best list with the best joint score.

    `log_probs[i]` are image i's CTC log-probabilities; each hypothesis' decoder log-probability is
    recovered from its length-normalised score (`score * len(tokens) ** length_penalty`). The
    hypothesis returned keeps its decoder score, so scores mean the same with or without CTC.
    """
    rows = [(i, h) for i, hyps in enumerate(n_best) for h in hyps]
    if not rows:
        return []
    labels = [head.labels(h.tokens) for _, h in rows]
    ctc = sequence_log_likelihoods(log_probs[[i for i, _ in rows]], [seq or [] for seq in labels], head.blank)
    ctc[[k for k, seq in enumerate(labels) if seq is None]] = -np.inf  # the head cannot read them
    decoder = np.array([h.score * float(len(h.tokens)) ** length_penalty for _, h in rows])
    joint = (1.0 - weight) * decoder + weight * ctc
    best: List[Hypothesis] = []
    start = 0
    for hyps in n_best:
        end = start + len(hyps)
        best.append(hyps[int(np.argmax(joint[start:end]))])
        start = end
    return best
