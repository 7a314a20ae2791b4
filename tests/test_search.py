"""The search alone: numpy greedy and beam search driven by PyTorch logits, against transformers' generate."""

import numpy as np
import pytest

from htr.search import SearchSettings, ban_early_eos, ban_repeated_ngrams, beam_search, greedy_search, log_softmax, top_k

torch = pytest.importorskip("torch")


def settings(**overrides) -> SearchSettings:
    values = dict(
        num_beams=1, max_length=12, min_length=0, length_penalty=1.0, early_stopping=False,
        no_repeat_ngram_size=0, decoder_start=2, eos=(2,), pad=1,
    )
    values.update(overrides)
    return SearchSettings(**values)


@pytest.mark.parametrize(
    "tokens, size, banned",
    [
        ([[2, 5, 6, 5]], 2, {(0, 6)}),  # "5 6" seen, last token 5 -> 6 banned
        ([[2, 5, 6, 7]], 2, set()),
        ([[2, 5, 5, 5]], 2, {(0, 5)}),
        ([[2, 5, 6, 5, 6]], 3, {(0, 5)}),  # "5 6 5" seen, last two "5 6" -> 5 banned
        ([[2, 5, 6]], 1, {(0, 2), (0, 5), (0, 6)}),  # unigrams: every token seen
        ([[2, 5]], 3, set()),  # too short for a trigram
        ([[2, 5, 6, 5], [2, 7, 7, 7]], 2, {(0, 6), (1, 7)}),
    ],
)
def test_ban_repeated_ngrams(tokens, size, banned):
    scores = np.zeros((len(tokens), 10), dtype=np.float32)
    ban_repeated_ngrams(scores, np.array(tokens), size)
    assert set(zip(*np.nonzero(np.isinf(scores)))) == banned


def test_ban_early_eos_only_below_min_length():
    scores = np.zeros((2, 5), dtype=np.float32)
    ban_early_eos(scores, 3, settings(min_length=4, eos=(2, 4)))
    assert np.isinf(scores[:, [2, 4]]).all() and not np.isinf(scores[:, [0, 1, 3]]).any()
    scores = np.zeros((2, 5), dtype=np.float32)
    ban_early_eos(scores, 4, settings(min_length=4))
    assert not np.isinf(scores).any()


def test_top_k_is_sorted_and_complete():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5, 0.3], [5, 4, 3, 2, 1]], dtype=np.float32)
    assert top_k(scores, 3).tolist() == [[1, 3, 4], [0, 1, 2]]
    assert top_k(scores, 5)[0, :4].tolist() == [1, 3, 4, 0]


def test_log_softmax_matches_torch():
    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 4
    expected = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    np.testing.assert_allclose(log_softmax(logits), expected, atol=1e-6)


class TorchStep:
    """A step function that runs the PyTorch decoder on whole prefixes, no cache: the reference logits."""

    def __init__(self, model, hidden):
        self.model, self.hidden = model, hidden
        self.row_image = np.arange(hidden.shape[0])
        self.calls = 0

    def __call__(self, tokens, parents):
        self.calls += 1
        self.row_image = self.row_image[parents]
        with torch.no_grad():
            out = self.model.decoder(
                input_ids=torch.from_numpy(tokens), encoder_hidden_states=self.hidden[torch.from_numpy(self.row_image)]
            )
        return out.logits[:, -1, :].numpy()


@pytest.fixture(scope="module")
def reference():
    """A decisive tiny model, three images and their encoder states."""
    from tiny import Variant, build_model

    model = build_model(Variant(vocab=48, eos_boost=2.5, seed=3))
    pixels = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        hidden = model.encoder(pixel_values=pixels).last_hidden_state
    return model, pixels, hidden


def generate(model, pixels, s: SearchSettings):
    with torch.no_grad():
        return model.generate(
            pixels, num_beams=s.num_beams, max_length=s.max_length, min_length=s.min_length,
            length_penalty=s.length_penalty, early_stopping=s.early_stopping,
            no_repeat_ngram_size=s.no_repeat_ngram_size, do_sample=False,
            output_scores=True, return_dict_in_generate=True,
        )


def expected_tokens(sequences, eos=2):
    rows = []
    for row in sequences.tolist():
        row = row[1:]
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


CASES = [
    dict(num_beams=1),
    dict(num_beams=1, no_repeat_ngram_size=2, min_length=5),
    dict(num_beams=2),
    dict(num_beams=3, length_penalty=0.6, early_stopping=True),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never"),
    dict(num_beams=4, length_penalty=-0.5, early_stopping="never"),
    dict(num_beams=5, length_penalty=1.3, early_stopping=False),
    dict(num_beams=4, no_repeat_ngram_size=2),
    dict(num_beams=3, no_repeat_ngram_size=3, min_length=6, early_stopping=True),
    dict(num_beams=4, max_length=30, length_penalty=0.0),
    dict(num_beams=2, max_length=3),
]


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
def test_search_reproduces_generate(reference, case):
    model, pixels, hidden = reference
    s = settings(**case)
    out = generate(model, pixels, s)
    search = greedy_search if s.num_beams == 1 else beam_search
    ours = search(TorchStep(model, hidden), hidden.shape[0], s)
    assert [h.tokens.tolist() for h in ours] == expected_tokens(out.sequences)
    if s.num_beams > 1:
        np.testing.assert_allclose([h.score for h in ours], out.sequences_scores.numpy(), rtol=1e-5, atol=1e-6)


def test_outputs_end_at_varied_lengths(reference):
    """The reference model must exercise finishing beams, or the early-stopping cases test nothing."""
    model, pixels, hidden = reference
    s = settings(num_beams=4, max_length=30)
    lengths = {len(h.tokens) for h in beam_search(TorchStep(model, hidden), 3, s)}
    assert len(lengths) > 1 and min(lengths) < 29


def test_greedy_score_is_length_normalised_logprob(reference):
    model, pixels, hidden = reference
    s = settings(num_beams=1, length_penalty=1.0)
    out = generate(model, pixels, s)
    ours = greedy_search(TorchStep(model, hidden), 3, s)
    transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).numpy()
    for i, h in enumerate(ours):
        n = len(h.tokens)
        assert h.score == pytest.approx(transition[i, :n].sum() / n, rel=1e-5)


def test_finished_images_stop_costing_steps(reference):
    """Once every image is done the search stops calling the model."""
    model, pixels, hidden = reference
    s = settings(num_beams=3, max_length=60)
    step = TorchStep(model, hidden)
    results = beam_search(step, 3, s)
    assert step.calls < s.max_length - 1
    assert step.calls >= max(len(h.tokens) for h in results)
