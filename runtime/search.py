"""Greedy and beam search in numpy, reproducing transformers' `generate` token for token.

The search never sees a model. It calls `step(tokens, parents) -> logits` where

- `tokens: (rows, cur_len) int64` are the sequences so far, decoder start token first;
- `parents: (rows,) int64` give, for each row, the row of the previous call it extends (on the
  first call, the image it belongs to), so that a KV cache can be reordered to match;
- `logits: (rows, vocab)` score the next token of each row.

Beam search follows transformers' vectorised `_beam_search` (4.5x): keep the best
`max(2, 1 + n_eos) * num_beams` continuations of each image, let the best `num_beams` of those that
did not stop run on, and merge those that stopped into the image's finished set, scored by
`sum_logprobs / generated_len ** length_penalty`. An image leaves the batch as soon as its result
can no longer change, so it costs no further decode steps.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Tuple, Union

import numpy as np

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_MASK = np.float32(-1.0e9)  # what transformers adds to scores that must not win


@dataclass(frozen=True)
class SearchSettings:
    """Fully resolved decoding settings; lengths count the decoder start token, as transformers does."""

    num_beams: int
    max_length: int
    min_length: int
    length_penalty: float
    early_stopping: Union[bool, str]
    no_repeat_ngram_size: int
    decoder_start: int
    eos: Tuple[int, ...]
    pad: int


@dataclass(frozen=True)
class Hypothesis:
    """A finished sequence: the generated ids after the start token (eos included when emitted)."""

    tokens: np.ndarray
    score: float


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Return `log_softmax` over the last axis of `(rows, vocab)` float32 logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def ban_repeated_ngrams(scores: np.ndarray, tokens: np.ndarray, size: int) -> None:
    """Set to -inf, in place, every token that would repeat an n-gram of `tokens: (rows, cur_len)`."""
    rows, cur_len = tokens.shape
    if size <= 0 or cur_len < size:
        return
    windows = np.lib.stride_tricks.sliding_window_view(tokens, size, axis=1)  # (rows, n_grams, size)
    prefix = tokens[:, cur_len - size + 1 :]
    row, gram = np.nonzero((windows[:, :, :-1] == prefix[:, None, :]).all(axis=2))
    scores[row, windows[row, gram, -1]] = -np.inf


def ban_early_eos(scores: np.ndarray, cur_len: int, settings: SearchSettings) -> None:
    """Set eos to -inf, in place, while the sequences are shorter than `min_length`."""
    if cur_len < settings.min_length:
        scores[:, list(settings.eos)] = -np.inf


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the column indices of the `k` largest entries of each row of `(rows, n)`, best first."""
    if k < scores.shape[1]:
        cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _normaliser(length: int, penalty: float) -> np.float32:
    return np.float32(length**penalty)


def greedy_search(step: StepFn, n_images: int, settings: SearchSettings) -> List[Hypothesis]:
    """Return the greedy continuation of each image, as `generate(num_beams=1)` picks it.

    The score is the same length-normalised log-probability beam search reports.
    """
    max_len = settings.max_length
    tokens = np.full((n_images, max_len), settings.pad, dtype=np.int64)
    tokens[:, 0] = settings.decoder_start
    sums = np.zeros(n_images, dtype=np.float32)
    eos = np.asarray(settings.eos)
    active = np.arange(n_images)
    parents = np.arange(n_images)
    results: List[Hypothesis] = [None] * n_images  # type: ignore[list-item]
    cur_len = 1
    while active.size:
        prefix = tokens[active, :cur_len]
        scores = np.array(step(prefix, parents), dtype=np.float32)
        ban_repeated_ngrams(scores, prefix, settings.no_repeat_ngram_size)
        ban_early_eos(scores, cur_len, settings)
        chosen = scores.argmax(axis=-1)
        sums[active] += log_softmax(scores)[np.arange(active.size), chosen]
        tokens[active, cur_len] = chosen
        cur_len += 1
        stopped = np.isin(chosen, eos) | (cur_len >= max_len)
        norm = _normaliser(cur_len - 1, settings.length_penalty)
        for i in active[stopped]:
            results[i] = Hypothesis(tokens[i, 1:cur_len].copy(), float(sums[i] / norm))
        parents = np.flatnonzero(~stopped)
        active = active[~stopped]
    return results


class CandidateScorer(Protocol):
    """Scores the candidates of beam search in place of the decoder's log-probabilities (`htr.ctc`)."""

    def candidates(self, active: np.ndarray, logprobs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return, for the running beams of images `active` and their decoder log-probabilities
        `(n_act, beams, vocab)`, the tokens each beam may take `(n_act, beams, k)` and what each adds to
        the beam's score `(n_act, beams, k)`."""

    def keep(self, active: np.ndarray, chosen: np.ndarray) -> None:
        """Note the beams that go on: `chosen: (n_act, beams)` indexes each image's candidates (`beam * k + slot`)."""


def n_candidates(settings: SearchSettings) -> int:
    """How many continuations of each image beam search keeps at each step, as transformers does."""
    return max(2, 1 + len(settings.eos)) * settings.num_beams


def beam_search(step: StepFn, n_images: int, settings: SearchSettings, scorer: Optional[CandidateScorer] = None) -> List[Hypothesis]:
    """Return the best beam of each image, as `generate(num_beams=k)` picks it, with its sequence score.

    With a `scorer`, the candidates and their scores are the scorer's (the rest is the same search);
    the score returned is still the decoder's own length-normalised log-probability.
    """
    beams, max_len, penalty = settings.num_beams, settings.max_length, settings.length_penalty
    eos = np.asarray(settings.eos)
    n_keep = n_candidates(settings)
    top_beams_only = np.arange(n_keep) < beams
    dtype = np.float32 if scorer is None else np.float64  # float32 sums, as transformers adds them

    # Running beams: all start from the decoder start token; only beam 0 counts at first.
    run_seq = np.full((n_images, beams, max_len), settings.pad, dtype=np.int64)
    run_seq[:, :, 0] = settings.decoder_start
    run_score = np.zeros((n_images, beams), dtype=dtype)
    run_score[:, 1:] = _MASK
    run_dec = np.zeros((n_images, beams), dtype=np.float32)  # with a scorer: the decoder's log-probability alone
    # Finished hypotheses, best first once any exist.
    fin_seq = run_seq.copy()
    fin_score = np.full((n_images, beams), _MASK, dtype=dtype)
    fin_dec = np.zeros((n_images, beams), dtype=np.float32)
    fin_done = np.zeros((n_images, beams), dtype=bool)
    fin_len = np.ones((n_images, beams), dtype=np.int64)

    results: List[Hypothesis] = [None] * n_images  # type: ignore[list-item]
    active = np.arange(n_images)
    parents = np.arange(n_images)
    cur_len = 1
    while active.size:
        first = cur_len == 1
        n_act = active.size
        # The beams of an image are identical before the first step: decode one row per image.
        prefix = run_seq[active, 0, :cur_len] if first else run_seq[active, :, :cur_len].reshape(-1, cur_len)
        logprobs = log_softmax(np.asarray(step(prefix, parents), dtype=np.float32))
        ban_repeated_ngrams(logprobs, prefix, settings.no_repeat_ngram_size)
        ban_early_eos(logprobs, cur_len, settings)
        vocab = logprobs.shape[-1]
        logprobs = logprobs.reshape(n_act, 1 if first else beams, vocab)
        if first:
            logprobs = np.repeat(logprobs, beams, axis=1)
        tokens, gains = (None, logprobs) if scorer is None else scorer.candidates(active, logprobs)
        per_beam = gains.shape[2]
        total = (gains + run_score[active][:, :, None]).reshape(n_act, -1)

        # Best continuations over all beams of each image.
        cand = top_k(total, n_keep)
        cand_score = np.take_along_axis(total, cand, axis=1)
        image_rows = np.arange(n_act)[:, None]
        cand_beam = cand // per_beam
        if scorer is None:
            cand_token = cand % per_beam
        else:
            cand_token = tokens.reshape(n_act, -1)[image_rows, cand]
            cand_dec = run_dec[active[:, None], cand_beam] + logprobs[image_rows, cand_beam, cand_token]
        cand_seq = run_seq[active[:, None], cand_beam]
        cand_seq[:, :, cur_len] = cand_token
        if first:
            cand_row = np.broadcast_to(np.arange(n_act)[:, None], cand.shape)
        else:
            cand_row = cand_beam + (np.arange(n_act) * beams)[:, None]
        stops = np.isin(cand_token, eos) | (cur_len + 1 >= max_len)

        # Beams that go on: the best candidates that did not stop.
        run_cand = cand_score + stops.astype(np.float32) * _MASK
        nxt = top_k(run_cand, beams)
        run_seq[active] = np.take_along_axis(cand_seq, nxt[:, :, None], axis=1)
        run_score[active] = np.take_along_axis(run_cand, nxt, axis=1)
        next_rows = np.take_along_axis(cand_row, nxt, axis=1)
        if scorer is not None:
            run_dec[active] = np.take_along_axis(cand_dec, nxt, axis=1)
            scorer.keep(active, np.take_along_axis(cand, nxt, axis=1))

        # Candidates that stopped among the top `beams` join the finished set if good enough.
        just_done = stops & top_beams_only
        done_score = cand_score / _normaliser(cur_len, penalty)
        done_score = done_score + (~just_done).astype(np.float32) * _MASK
        merged_score = np.concatenate([fin_score[active], done_score], axis=1)
        pick = top_k(merged_score, beams)
        fin_score[active] = np.take_along_axis(merged_score, pick, axis=1)
        if scorer is not None:
            fin_dec[active] = np.take_along_axis(np.concatenate([fin_dec[active], cand_dec / _normaliser(cur_len, penalty)], axis=1), pick, axis=1)
        fin_seq[active] = np.take_along_axis(np.concatenate([fin_seq[active], cand_seq], axis=1), pick[:, :, None], axis=1)
        fin_done[active] = np.take_along_axis(np.concatenate([fin_done[active], just_done], axis=1), pick, axis=1)
        lens = np.concatenate([fin_len[active], np.full(cand.shape, cur_len + 1)], axis=1)
        fin_len[active] = np.take_along_axis(lens, pick, axis=1)
        cur_len += 1

        # Can the running beams still beat the worst finished one? (transformers' heuristic)
        if settings.early_stopping == "never" and penalty > 0.0:
            best_length = max_len - 1
        else:
            best_length = cur_len - 1
        best_running = run_score[active, :1] / _normaliser(best_length, penalty)
        worst_done = np.where(fin_done[active], fin_score[active].min(axis=1, keepdims=True), _MASK)
        improvable = (best_running > worst_done).any(axis=1)
        finished = ~improvable | stops.all(axis=1)
        if settings.early_stopping is True:
            finished |= fin_done[active].all(axis=1)

        for i in active[finished]:
            results[i] = Hypothesis(fin_seq[i, 0, 1 : fin_len[i, 0]].copy(), float((fin_score if scorer is None else fin_dec)[i, 0]))
        parents = next_rows[~finished].reshape(-1)
        active = active[~finished]
    return results
