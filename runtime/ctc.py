"""Hybrid CTC/attention beam search: the decoder's beam, steered by the model's CTC head.

A model trained with htr-train's auxiliary CTC loss has a second reader: a linear head over each
column of encoder patches, giving a few CTC steps per column. It reads the whole line at once,
without the decoder's left-to-right guesses, so it catches letters the decoder drops, doubles or
makes up. Every candidate of transformers' beam search is then scored by

    (1 - weight) * decoder log-probability + weight * CTC prefix log-probability

(both summed over the sequence so far; at eos the CTC term is the whole sequence's likelihood), as
hybrid CTC/attention recognisers do (Watanabe et al., 2017): `CtcCandidates` gives
`htr.search.beam_search` its candidates. With weight 0 it is transformers' beam search exactly.
"""

from typing import Tuple

import numpy as np

from .manifest import CtcSpec
from .search import SearchSettings, n_candidates, top_k


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


class CtcPrefixScorer:
    """CTC prefix scores for beam search, vectorised over rows and time (hybrid CTC/attention decoding).

    The prefix score of a token sequence g is log P(the CTC reading starts with g): summed over every
    alignment whose collapsed labels begin with g. Each running beam keeps the forward variables of
    its prefix, `r[..., 0]` (the last step emitted g's last label) and `r[..., 1]` (a blank after it),
    and extending g by c is a cumulative log-sum-exp over time (no loop over the steps).
    """

    def __init__(self, head: CtcHead, log_probs: np.ndarray):
        self.head = head
        self.log_probs = np.asarray(log_probs, dtype=np.float64)  # (images, steps, vocab)
        self._blank_sums = np.cumsum(self.log_probs[:, :, head.blank], axis=1)  # (images, steps)

    def initial(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the state of the empty prefix for each of `images`: forward variables `(rows, steps, 2)`,
        prefix scores `(rows,)` (log 1) and last labels `(rows,)` (-1: none)."""
        r = np.full((images.size, self.log_probs.shape[1], 2), -np.inf)
        r[:, :, 1] = self._blank_sums[images]
        return r, np.zeros(images.size), np.full(images.size, -1, dtype=np.int64)

    def _emissions(self, images: np.ndarray, r: np.ndarray, last: np.ndarray, tokens: np.ndarray):
        """Return, for each row's prefix and each of its candidate labels `tokens: (rows, k)`, the label's
        log-probability at each step `y: (rows, k, steps)` and the prefix's mass from which it may be emitted
        next, `phi: (rows, k, steps)` (a repeated label needs a blank between)."""
        rows, k = tokens.shape
        steps = r.shape[1]
        y = np.take_along_axis(self.log_probs[images], np.broadcast_to(tokens[:, None, :], (rows, steps, k)), axis=2).transpose(0, 2, 1)
        phi = np.where((tokens == last[:, None])[:, :, None], r[:, None, :, 1], np.logaddexp(r[:, None, :, 0], r[:, None, :, 1]))
        start = np.where((last < 0)[:, None], y[:, :, 0], -np.inf)  # only the empty prefix may emit a label at step 0
        return y, phi, start

    def scores(self, images: np.ndarray, r: np.ndarray, last: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Return the prefix scores `(rows, k)` of each row's prefix (forward variables `r`, last label `last`)
        extended by each of its `tokens: (rows, k)`, all labels the head reads (not blank, not skipped)."""
        y, phi, start = self._emissions(images, r, last, tokens)
        return np.logaddexp(start, np.logaddexp.reduce(phi[:, :, :-1] + y[:, :, 1:], axis=2))

    def advance(self, images: np.ndarray, r: np.ndarray, last: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Return the forward variables `(rows, steps, 2)` of each row's prefix extended by its label `tokens: (rows,)`.

        The recursions r_t = logaddexp(r_{t-1}, in_t) + y_t are unrolled into cumulative sums and one
        cumulative log-sum-exp over the steps each, so no Python loop runs over time.
        """
        y, phi, start = (a[:, 0] for a in self._emissions(images, r, last, tokens[:, None]))
        label_sums = np.cumsum(y, axis=1)
        u = np.concatenate([(start - label_sums[:, 0])[:, None], phi[:, :-1] - label_sums[:, :-1]], axis=1)
        r_label = label_sums + np.logaddexp.accumulate(u, axis=1)
        blank_sums = self._blank_sums[images]
        v = np.concatenate([np.full((tokens.size, 1), -np.inf), r_label[:, :-1] - blank_sums[:, :-1]], axis=1)
        r_blank = blank_sums + np.logaddexp.accumulate(v, axis=1)
        return np.stack([r_label, r_blank], axis=2)

    @staticmethod
    def final(r: np.ndarray) -> np.ndarray:
        """Return log P(the CTC reading is exactly the prefix) for forward variables `(rows, steps, 2)`."""
        return np.logaddexp(r[:, -1, 0], r[:, -1, 1])


class CtcCandidates:
    """Beam search candidates scored `(1 - weight) * decoder + weight * CTC prefix` (`htr.search.CandidateScorer`).

    Each running beam's `n_candidates(settings)` likeliest next tokens (the decoder's; enough that
    weight 0 is transformers' search exactly) are scored by the CTC head too, as the change in its
    prefix score; eos scores the whole sequence. Tokens the head cannot read (other special tokens,
    ids past its vocabulary) are not taken: left free, they would let the search dodge the head.
    The search keeps the CTC state of the beams that go on through `keep`.
    """

    def __init__(self, scorer: CtcPrefixScorer, weight: float, settings: SearchSettings, n_images: int):
        head = scorer.head
        self.scorer, self.weight, self.beams, self.k = scorer, weight, settings.num_beams, n_candidates(settings)
        self.eos, self.unread, self.vocab = settings.eos, set(head.skip) | {head.blank}, head.vocab
        self.stand_in = next(t for t in range(head.vocab) if t not in self.unread)  # any label the head reads
        self._kinds = np.zeros(0, dtype=np.int8)  # per decoder token: 0 the head cannot read it, 1 it reads it, 2 eos
        r, psi, last = scorer.initial(np.repeat(np.arange(n_images), self.beams))
        self.r = r.reshape(n_images, self.beams, *r.shape[1:])
        self.psi, self.last = psi.reshape(n_images, self.beams), last.reshape(n_images, self.beams)

    def candidates(self, active: np.ndarray, logprobs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        n_act, beams, vocab = logprobs.shape
        tokens = top_k(logprobs.reshape(-1, vocab), self.k)  # (rows, k)
        decoder = np.take_along_axis(logprobs.reshape(-1, vocab), tokens, axis=1).astype(np.float64)
        if self._kinds.size != vocab:
            self._kinds = np.array([2 if t in self.eos else int(t < self.vocab and t not in self.unread) for t in range(vocab)], dtype=np.int8)
        kinds = self._kinds[tokens]
        ends, self._read = kinds == 2, kinds == 1
        self._tokens, self._images = tokens, np.repeat(active, beams)
        self._r, self._last = self.r[active].reshape(-1, *self.r.shape[2:]), self.last[active].reshape(-1)
        psi = self.psi[active].reshape(-1)
        extended = self.scorer.scores(self._images, self._r, self._last, np.where(self._read, tokens, self.stand_in))
        self._psi = np.where(ends, self.scorer.final(self._r)[:, None], np.where(self._read, extended, -np.inf))
        gains = (1.0 - self.weight) * decoder
        if self.weight > 0.0:  # an impossible extension (-inf) stays impossible, even of an impossible prefix
            gains = gains + self.weight * np.where(np.isneginf(self._psi), -np.inf, self._psi - np.where(np.isneginf(psi), 0.0, psi)[:, None])
        return tokens.reshape(n_act, beams, self.k), gains.reshape(n_act, beams, self.k)

    def keep(self, active: np.ndarray, chosen: np.ndarray) -> None:
        rows = (np.arange(active.size)[:, None] * self.beams + chosen // self.k).reshape(-1)  # the parent beams' rows
        slots = (chosen % self.k).reshape(-1)
        read = self._read[rows, slots]
        token = np.where(read, self._tokens[rows, slots], self.stand_in)  # beams that stopped or cannot go on: any label
        shape = (active.size, self.beams)
        self.r[active] = self.scorer.advance(self._images[rows], self._r[rows], self._last[rows], token).reshape(*shape, *self.r.shape[2:])
        self.psi[active] = self._psi[rows, slots].reshape(shape)
        self.last[active] = token.reshape(shape)
