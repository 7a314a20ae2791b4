"""Hybrid CTC/attention beam search: the decoder's beam, steered by the model's CTC head.

A model trained with htr-train's auxiliary CTC loss has a second reader: a linear head over each
column of encoder patches, giving a few CTC steps per column. It reads the whole line at once,
without the decoder's left-to-right guesses, so it catches letters the decoder drops, doubles or
makes up. `joint_beam_search` scores every candidate of transformers' beam search by

    (1 - weight) * decoder log-probability + weight * CTC prefix log-probability

(both summed over the sequence so far; at eos the CTC term is the whole sequence's likelihood), as
hybrid CTC/attention recognisers do (Watanabe et al., 2017). With weight 0 it is transformers'
beam search exactly; the recognizer then runs `htr.search.beam_search` itself.
"""

from typing import List, Tuple

import numpy as np

from .manifest import CtcSpec
from .search import _MASK, Hypothesis, SearchSettings, StepFn, ban_early_eos, ban_repeated_ngrams, log_softmax, top_k


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


def joint_beam_search(step: StepFn, n_images: int, settings: SearchSettings, scorer: CtcPrefixScorer,
                      weight: float) -> List[Hypothesis]:
    """Beam search on `(1 - weight) * decoder + weight * CTC prefix` log-probabilities; return each image's best.

    It is transformers' beam search (`htr.search.beam_search`) with the score of every
    candidate changed: each running beam's `2 * num_beams` most likely next tokens (the decoder's)
    are scored by the CTC head too, as the change in its prefix score; eos scores the whole
    sequence. Tokens the head cannot read (other special tokens, ids past its vocabulary) are not
    taken: left free, they would let the search dodge the head. The finished set,
    length normalisation and stopping are transformers', on the joint score; a hypothesis keeps the
    decoder's own length-normalised score. With weight 0 the result is `generate`'s.
    """
    head = scorer.head
    beams, max_len, penalty = settings.num_beams, settings.max_length, settings.length_penalty
    eos = np.asarray(settings.eos)
    n_keep = max(2, 1 + eos.size) * beams
    top_beams_only = np.arange(n_keep) < beams
    skipped = np.asarray(sorted(head.skip), dtype=np.int64)
    stand_in = next(t for t in range(head.vocab) if t != head.blank and t not in head.skip)  # any label the head reads

    run_seq = np.full((n_images, beams, max_len), settings.pad, dtype=np.int64)
    run_seq[:, :, 0] = settings.decoder_start
    run_score = np.zeros((n_images, beams))  # joint
    run_score[:, 1:] = _MASK
    run_dec = np.zeros((n_images, beams))  # the decoder's log-probability alone
    r, psi, last = scorer.initial(np.repeat(np.arange(n_images), beams))
    run_r = r.reshape(n_images, beams, *r.shape[1:])
    run_psi, run_last = psi.reshape(n_images, beams), last.reshape(n_images, beams)
    fin_seq = run_seq.copy()
    fin_score = np.full((n_images, beams), _MASK, dtype=np.float64)
    fin_dec = np.zeros((n_images, beams))
    fin_done = np.zeros((n_images, beams), dtype=bool)
    fin_len = np.ones((n_images, beams), dtype=np.int64)

    results: List[Hypothesis] = [None] * n_images  # type: ignore[list-item]
    active = np.arange(n_images)
    parents = np.arange(n_images)
    cur_len = 1
    while active.size:
        first = cur_len == 1
        n_act = active.size
        prefix = run_seq[active, 0, :cur_len] if first else run_seq[active, :, :cur_len].reshape(-1, cur_len)
        logprobs = log_softmax(np.asarray(step(prefix, parents), dtype=np.float32))
        ban_repeated_ngrams(logprobs, prefix, settings.no_repeat_ngram_size)
        ban_early_eos(logprobs, cur_len, settings)
        vocab = logprobs.shape[-1]
        logprobs = logprobs.reshape(n_act, 1 if first else beams, vocab)
        if first:
            logprobs = np.repeat(logprobs, beams, axis=1)

        # Each beam's likeliest next tokens, scored by the CTC head as well.
        tokens = top_k(logprobs.reshape(-1, vocab), n_keep).reshape(n_act, beams, n_keep)
        dec_step = np.take_along_axis(logprobs, tokens, axis=2).astype(np.float64)
        flat = tokens.reshape(-1, n_keep)
        ends = np.isin(flat, eos)
        read = ~ends & ~np.isin(flat, skipped) & (flat != head.blank) & (flat < head.vocab)
        r_rows = run_r[active].reshape(-1, *run_r.shape[2:])
        psi_rows, last_rows = run_psi[active].reshape(-1), run_last[active].reshape(-1)
        images = np.repeat(active, beams)
        new_psi = scorer.scores(images, r_rows, last_rows, np.where(read, flat, stand_in))
        new_psi = np.where(ends, scorer.final(r_rows)[:, None], np.where(read, new_psi, -np.inf))
        gain = (1.0 - weight) * dec_step
        if weight > 0.0:  # an impossible extension (-inf) stays impossible, even of an impossible prefix
            ctc_gain = np.where(np.isneginf(new_psi), -np.inf, new_psi - np.where(np.isneginf(psi_rows), 0.0, psi_rows)[:, None])
            gain = gain + weight * ctc_gain.reshape(n_act, beams, n_keep)
        total = (run_score[active][:, :, None] + gain).reshape(n_act, -1)

        cand = top_k(total, n_keep)
        cand_score = np.take_along_axis(total, cand, axis=1)
        cand_beam, cand_slot = cand // n_keep, cand % n_keep
        cand_token = tokens.reshape(n_act, -1)[np.arange(n_act)[:, None], cand]
        cand_dec = run_dec[active[:, None], cand_beam] + dec_step.reshape(n_act, -1)[np.arange(n_act)[:, None], cand]
        cand_seq = run_seq[active[:, None], cand_beam]
        cand_seq[:, :, cur_len] = cand_token
        cand_flat = (np.arange(n_act)[:, None] * beams + cand_beam) * n_keep + cand_slot  # into the (rows * n_keep) arrays
        if first:
            cand_row = np.broadcast_to(np.arange(n_act)[:, None], cand.shape)
        else:
            cand_row = cand_beam + (np.arange(n_act) * beams)[:, None]
        stops = np.isin(cand_token, eos) | (cur_len + 1 >= max_len)

        run_cand = cand_score + stops * _MASK
        nxt = top_k(run_cand, beams)
        run_seq[active] = np.take_along_axis(cand_seq, nxt[:, :, None], axis=1)
        run_score[active] = np.take_along_axis(run_cand, nxt, axis=1)
        run_dec[active] = np.take_along_axis(cand_dec, nxt, axis=1)
        # The CTC state of the beams that go on: their parent's, advanced by the label they read.
        chosen = np.take_along_axis(cand_flat, nxt, axis=1).reshape(-1)
        parent, token = chosen // n_keep, flat.reshape(-1)[chosen]
        token = np.where(read.reshape(-1)[chosen], token, stand_in)  # stopped or impossible beams: any label will do
        run_r[active] = scorer.advance(images[parent], r_rows[parent], last_rows[parent], token).reshape(run_r[active].shape)
        run_psi[active] = new_psi.reshape(-1)[chosen].reshape(n_act, beams)
        run_last[active] = token.reshape(n_act, beams)
        next_rows = np.take_along_axis(cand_row, nxt, axis=1)

        just_done = stops & top_beams_only
        norm = float(cur_len) ** penalty
        done_score = cand_score / norm + (~just_done) * _MASK
        merged_score = np.concatenate([fin_score[active], done_score], axis=1)
        pick = top_k(merged_score, beams)
        fin_score[active] = np.take_along_axis(merged_score, pick, axis=1)
        fin_dec[active] = np.take_along_axis(np.concatenate([fin_dec[active], cand_dec / norm], axis=1), pick, axis=1)
        fin_seq[active] = np.take_along_axis(np.concatenate([fin_seq[active], cand_seq], axis=1), pick[:, :, None], axis=1)
        fin_done[active] = np.take_along_axis(np.concatenate([fin_done[active], just_done], axis=1), pick, axis=1)
        lens = np.concatenate([fin_len[active], np.full(cand.shape, cur_len + 1)], axis=1)
        fin_len[active] = np.take_along_axis(lens, pick, axis=1)
        cur_len += 1

        if settings.early_stopping == "never" and penalty > 0.0:
            best_length = max_len - 1
        else:
            best_length = cur_len - 1
        best_running = run_score[active, :1] / float(best_length) ** penalty
        worst_done = np.where(fin_done[active], fin_score[active].min(axis=1, keepdims=True), _MASK)
        improvable = (best_running > worst_done).any(axis=1)
        finished = ~improvable | stops.all(axis=1)
        if settings.early_stopping is True:
            finished |= fin_done[active].all(axis=1)

        for i in active[finished]:
            results[i] = Hypothesis(fin_seq[i, 0, 1 : fin_len[i, 0]].copy(), float(fin_dec[i, 0]))
        parents = next_rows[~finished].reshape(-1)
        active = active[~finished]
    return results
