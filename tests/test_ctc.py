"""Hybrid CTC/attention beam search: CTC prefix scores against PyTorch's CTC, the search against a plain reference."""

import json

import numpy as np
import pytest

from conftest import line_images
from htr import BundleError, GenerationOptions, OptionsError, Recognizer
from htr.images import load_image
from tiny import TROCR, Variant, needs_shared, save_checkpoint

torch = pytest.importorskip("torch")

# Wide enough for 64 CTC steps (32 patch columns, 2 steps each), and sequences that end early enough to fit in them.
CTC_VARIANT = Variant(image_size=(16, 256), eos_boost=3.5, seed=4)
WEIGHT = 0.6


def torch_ctc(log_probs: np.ndarray, labels, blank: int) -> np.ndarray:
    """-ctc_loss per row, PyTorch's forward algorithm."""
    lp = torch.from_numpy(log_probs).transpose(0, 1)
    flat = torch.tensor([t for seq in labels for t in seq], dtype=torch.long)
    steps = torch.full((len(labels),), lp.shape[0], dtype=torch.long)
    lengths = torch.tensor([len(seq) for seq in labels], dtype=torch.long)
    return -torch.nn.functional.ctc_loss(lp.double(), flat, steps, lengths, blank=blank, reduction="none").numpy()


def prefix_scorer(log_probs, blank=0):
    from htr.ctc import CtcPrefixScorer

    class Head:
        pass

    head = Head()
    head.blank = blank
    return CtcPrefixScorer(head, log_probs)


def random_log_probs(shape, seed=0):
    logits = 3 * np.random.default_rng(seed).normal(size=shape)
    return renormalised(logits)  # float64: the probabilities sum to 1 exactly enough


def test_prefix_scores_share_out_the_prefix():
    """P(prefix g) = P(exactly g) + sum over labels c of P(prefix g + c): checked for the empty prefix and longer ones."""
    log_probs = random_log_probs((2, 12, 7))
    scorer = prefix_scorer(log_probs)
    images = np.array([0, 1])
    r, psi, last = scorer.initial(images)
    labels = np.tile(np.arange(1, 7), (2, 1))
    for token in (3, 3, 5):  # a repeat on the way
        extended = scorer.scores(images, r, last, labels)
        np.testing.assert_allclose(np.logaddexp(np.logaddexp.reduce(extended, axis=1), scorer.final(r)), psi, atol=1e-12)
        psi = extended[:, token - 1]
        r, last = scorer.advance(images, r, last, np.full(2, token)), np.full(2, token)


def test_whole_sequence_scores_match_torch_ctc_loss():
    log_probs = random_log_probs((8, 15, 9), seed=1)
    labels = [[1, 2, 3], [2, 2], [], [4] * 8, [4] * 9, [1, 2, 1, 2, 1, 2, 1], [8], [5, 6, 5, 5, 7, 1, 2, 3]]
    expected = torch_ctc(log_probs, labels, blank=0)  # [4] * 9 needs 17 steps: impossible, -inf
    scorer = prefix_scorer(log_probs)
    ours = []
    for i, seq in enumerate(labels):
        image = np.array([i])
        r, _, last = scorer.initial(image)
        for token in seq:
            r, last = scorer.advance(image, r, last, np.array([token])), np.array([token])
        ours.append(scorer.final(r)[0])
    assert np.isneginf(ours[4]) and np.isinf(expected[4])
    np.testing.assert_allclose(np.delete(ours, 4), np.delete(expected, 4), rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def ctc_bundle(tmp_path_factory):
    """A tiny checkpoint with a random, decisive CTC head beside it, and its bundle; returns (folder, bundle)."""
    if not TROCR.is_dir():
        pytest.skip(f"needs the shared TrOCR tokenizers at {TROCR} (absent on a fresh clone)")
    from safetensors.torch import save_file

    from htr.export.bundle import export_bundle, load_checkpoint
    from htr.train.trainer import CTC_HEAD_FILE, attach_ctc_head

    root = tmp_path_factory.mktemp("ctc")
    folder = save_checkpoint(CTC_VARIANT, root / "checkpoint")
    holder = torch.nn.Module()
    holder.config = load_checkpoint(str(folder)).model.config
    torch.manual_seed(5)
    attach_ctc_head(holder, CTC_VARIANT.vocab)
    with torch.no_grad():
        holder.ctc_head.weight.mul_(40.0)  # decisive enough to overrule the decoder now and then
        holder.ctc_head.bias[1 :: CTC_VARIANT.vocab] += 60.0  # more blanks (pad, 1): some lines end before max_length
    save_file({k: v.contiguous() for k, v in holder.ctc_head.state_dict().items()}, str(folder / CTC_HEAD_FILE))
    export_bundle(load_checkpoint(str(folder)), root / "bundle", log=lambda m: None, ctc_weight=WEIGHT)
    return folder, root / "bundle"


def reference_joint_search(model, pixels, log_probs, special, weight, beams=4, max_length=40, eos=2, blank=1, views=1):
    """The same search written plainly, one image and one hypothesis at a time, with PyTorch's decoder (no cache) and
    CTC prefix scores by the textbook forward recursion: transformers' beam search on the joint score.

    With `views`, `pixels` holds that many rows per image and the decoder's log-probabilities are their mean,
    renormalised (`log_probs` are already the CTC head's, averaged so)."""

    def forward(lp, labels):  # textbook CTC forward variables; returns (alpha at the last step, fresh entries into the last label)
        ext = [blank]
        for label in labels:
            ext += [label, blank]
        alpha = np.full(len(ext), -np.inf)
        alpha[0] = lp[0, blank]
        if labels:
            alpha[1] = lp[0, ext[1]]
        fresh = alpha[1] if len(labels) == 1 else -np.inf
        end = 2 * len(labels) - 1
        for t in range(1, lp.shape[0]):
            prev = alpha.copy()
            for s in range(len(ext)):
                into = prev[s - 1] if s >= 1 else -np.inf
                if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                    into = np.logaddexp(into, prev[s - 2])
                if s == end:
                    fresh = np.logaddexp(fresh, into + lp[t, ext[s]])
                alpha[s] = np.logaddexp(prev[s], into) + lp[t, ext[s]]
        return alpha, fresh

    def prefix_score(lp, labels):  # log P(the CTC reading starts with labels)
        return forward(lp, labels)[1] if labels else 0.0

    def whole_score(lp, labels):  # log P(the CTC reading is labels)
        alpha = forward(lp, labels)[0]
        return np.logaddexp.reduce(alpha[-2:]) if labels else alpha[0]

    results = []
    for i in range(pixels.shape[0] // views):
        lp = log_probs[i]
        with torch.no_grad():
            hidden = model.encoder(pixel_values=pixels[i * views : (i + 1) * views]).last_hidden_state
        running = [([2], 0.0 if b == 0 else -1e9, 0.0, 0.0) for b in range(beams)]  # tokens, joint, decoder, CTC prefix
        finished = []  # (joint / length ** 1, decoder / length, tokens)
        cur_len = 1
        while True:
            candidates = []
            for b, (seq, joint, dec, psi) in enumerate(running):
                with torch.no_grad():
                    logits = model.decoder(input_ids=torch.tensor([seq] * views), encoder_hidden_states=hidden).logits[:, -1]
                step = torch.log_softmax(logits.float(), dim=-1).numpy().astype(np.float64)
                step = step[0] if views == 1 else renormalised(step.mean(axis=0))
                for c in sorted(range(step.size), key=lambda c: -step[c])[: 2 * beams]:
                    labels = [t for t in seq[1:] if t not in special]
                    if c == eos:
                        new_psi = whole_score(lp, labels)
                    elif c in special:
                        new_psi = -np.inf  # the head cannot read it: not taken
                    else:
                        new_psi = prefix_score(lp, labels + [c])
                    if weight == 0.0:  # no CTC at all: transformers' beam search
                        gain = step[c]
                    else:
                        gain = -np.inf if new_psi == -np.inf else (1 - weight) * step[c] + weight * (new_psi - psi)
                    candidates.append((joint + gain, seq + [c], dec + step[c], new_psi))
            candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * beams]
            running = []
            for rank, (joint, seq, dec, psi) in enumerate(candidates):
                if seq[-1] == eos or cur_len + 1 >= max_length:
                    if rank < beams:
                        finished.append((joint / cur_len, dec / cur_len, seq[1:]))
                elif len(running) < beams:
                    running.append((seq, joint, dec, psi))
            finished = sorted(finished, key=lambda f: -f[0])[:beams]
            cur_len += 1
            worst = finished[-1][0] if len(finished) == beams else -np.inf
            if not running or running[0][1] / (cur_len - 1) <= worst:
                break
        results.append(finished[0])
    return results


def renormalised(log_probs: np.ndarray) -> np.ndarray:
    return log_probs - np.logaddexp.reduce(log_probs, axis=-1, keepdims=True)


def bundle_inputs(folder, images, views=1, preprocessing=None):
    """PyTorch's model, pixels and CTC log-probabilities (as htr-export's verification computes them, the head's
    weights rounded to float16 as the bundle holds them) and the special token ids.

    With `views` (and the bundle's `preprocessing`), the pixels are the image processor's of each image's shifted
    views (`views` rows per image), and the CTC log-probabilities their mean, renormalised."""
    from htr.export.bundle import load_checkpoint
    from htr.export.verify import ctc_log_probs
    from htr.images import shifted_views

    checkpoint = load_checkpoint(str(folder))
    model = checkpoint.model
    rgb = [load_image(i) for i in images]
    if views > 1:
        shift = model.config.encoder.patch_size / preprocessing.width
        rgb = [view for image in rgb for view in shifted_views(image, views, shift, preprocessing)]
    pixels = checkpoint.image_processor(images=rgb, return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden = model.encoder(pixel_values=pixels).last_hidden_state
    log_probs = ctc_log_probs(checkpoint, hidden).astype(np.float64)
    if views > 1:
        log_probs = renormalised(log_probs.reshape(len(images), views, *log_probs.shape[1:]).mean(axis=1))
    return model, pixels, log_probs, set(checkpoint.tokenizer.all_special_ids)


@needs_shared
def test_joint_search_matches_the_plain_reference(ctc_bundle):
    folder, bundle = ctc_bundle
    images = line_images(8, seed=8, size=(20, 200))
    model, pixels, log_probs, special = bundle_inputs(folder, images)
    expected = reference_joint_search(model, pixels, log_probs, special, WEIGHT, max_length=16)
    recognizer = Recognizer(bundle)
    ours = recognizer.recognize(images, options=GenerationOptions(num_beams=4, max_length=16))
    plain = recognizer.recognize(images, options=GenerationOptions(num_beams=4, max_length=16, ctc_weight=0.0))
    assert sum(a.tokens != b.tokens for a, b in zip(ours, plain)) >= 2, "the CTC head never changes the result: this test would prove nothing"
    assert [list(r.tokens) for r in ours] == [e[2] for e in expected]
    np.testing.assert_allclose([r.score for r in ours], [e[1] for e in expected], rtol=1e-4, atol=1e-5)  # the decoder's own score
    assert {r.tokens[-1] == 2 for r in ours} == {True, False}  # lines ended by eos, and lines cut at max_length


@needs_shared
@pytest.mark.parametrize("weight", [WEIGHT, 0.0])
def test_shifted_views_match_the_plain_reference(ctc_bundle, weight):
    folder, bundle = ctc_bundle
    images = line_images(6, seed=9, size=(20, 200))
    recognizer = Recognizer(bundle)
    model, pixels, log_probs, special = bundle_inputs(folder, images, views=3, preprocessing=recognizer.manifest.preprocessing)
    expected = reference_joint_search(model, pixels, log_probs, special, weight, max_length=16, views=3)
    ours = recognizer.recognize(images, options=GenerationOptions(num_beams=4, max_length=16, ctc_weight=weight, views=3))
    one = recognizer.recognize(images, options=GenerationOptions(num_beams=4, max_length=16, ctc_weight=weight))
    assert sum(a.tokens != b.tokens for a, b in zip(ours, one)) >= 1, "the views never change the result: this test would prove nothing"
    assert [list(r.tokens) for r in ours] == [e[2] for e in expected]
    np.testing.assert_allclose([r.score for r in ours], [e[1] for e in expected], rtol=1e-4, atol=1e-5)


@needs_shared
def test_greedy_search_over_shifted_views_takes_the_likeliest_mean(ctc_bundle):
    folder, bundle = ctc_bundle
    images = line_images(4, seed=9, size=(20, 200))
    recognizer = Recognizer(bundle)
    model, pixels, _, _ = bundle_inputs(folder, images, views=2, preprocessing=recognizer.manifest.preprocessing)
    ours = recognizer.recognize(images, options=GenerationOptions(num_beams=1, max_length=12, views=2))
    for i, result in enumerate(ours):
        with torch.no_grad():
            hidden = model.encoder(pixel_values=pixels[2 * i : 2 * i + 2]).last_hidden_state
        seq = [2]
        while len(seq) < 12 and (len(seq) == 1 or seq[-1] != 2):
            with torch.no_grad():
                logits = model.decoder(input_ids=torch.tensor([seq] * 2), encoder_hidden_states=hidden).logits[:, -1]
            seq.append(int(torch.log_softmax(logits, dim=-1).mean(dim=0).argmax()))
        assert list(result.tokens) == seq[1:]


@needs_shared
def test_joint_search_with_weight_zero_is_generate(ctc_bundle):
    from htr.ctc import CtcCandidates, CtcPrefixScorer
    from htr.search import beam_search

    folder, bundle = ctc_bundle
    images = line_images(10, seed=8, size=(20, 200))
    model, pixels, _, _ = bundle_inputs(folder, images)
    with torch.no_grad():
        out = model.generate(pixels, num_beams=4, max_length=40, do_sample=False, output_scores=True, return_dict_in_generate=True)
    expected = [row[: row.index(2) + 1] if 2 in row else row for row in (full[1:] for full in out.sequences.tolist())]
    recognizer = Recognizer(bundle)
    hidden = recognizer.encode(images)
    scorer = CtcPrefixScorer(recognizer._ctc, recognizer._ctc.log_probs(hidden))
    settings = recognizer._settings(GenerationOptions(num_beams=4, max_length=40)).search
    ours = beam_search(recognizer._start_decoder(images, hidden), len(images), settings, CtcCandidates(scorer, 0.0, settings, len(images)))
    assert [h.tokens.tolist() for h in ours] == expected
    np.testing.assert_allclose([h.score for h in ours], out.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)


@needs_shared
def test_export_records_and_verifies_the_head(ctc_bundle):
    from htr.export.bundle import load_checkpoint
    from htr.export.verify import CTC_TOLERANCE, sample_lines, verify_bundle

    folder, bundle = ctc_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["ctc"]["weight"] == WEIGHT and manifest["ctc"]["blank"] == 1
    assert manifest["ctc"]["outputs"][0]["shape"][1:] == [64, CTC_VARIANT.vocab]  # 32 patch columns, 2 steps each
    report = verify_bundle(load_checkpoint(str(folder)), bundle, sample_lines(2), log=lambda m: None)
    assert report["ok"] and report["ctc_max_abs_diff"] <= CTC_TOLERANCE


@needs_shared
def test_a_head_that_does_not_fit_is_refused(tmp_path):
    from safetensors.torch import save_file

    from htr.export.bundle import load_checkpoint
    from htr.export.graphs import ExportError
    from htr.train.trainer import CTC_HEAD_FILE

    folder = save_checkpoint(CTC_VARIANT, tmp_path / "checkpoint")
    save_file({"weight": torch.zeros(10, 32), "bias": torch.zeros(10)}, str(folder / CTC_HEAD_FILE))
    with pytest.raises(ExportError, match="CTC head of shape"):
        load_checkpoint(str(folder))


@needs_shared
def test_ctc_weight_needs_a_head(exported):
    _, bundle = exported("vit-roberta")
    recognizer = Recognizer(bundle)
    assert not recognizer.has_ctc_head
    settings = recognizer.check_options(GenerationOptions(ctc_weight=0.0, views=2))
    assert (settings.ctc_weight, settings.views, settings.num_beams) == (0.0, 2, recognizer.defaults.num_beams)
    with pytest.raises(OptionsError, match="has no CTC head"):
        recognizer.check_options(GenerationOptions(ctc_weight=0.3))
    with pytest.raises(OptionsError, match="has no CTC head"):
        recognizer.recognize(line_images(1), options=GenerationOptions(ctc_weight=0.3))


@needs_shared
def test_ctc_weight_outside_0_to_1_is_refused(ctc_bundle):
    with pytest.raises(OptionsError, match="ctc_weight must be from 0 to 1"):
        Recognizer(ctc_bundle[1]).recognize(line_images(1), options=GenerationOptions(ctc_weight=1.5))


@needs_shared
def test_views_below_1_are_refused(ctc_bundle):
    with pytest.raises(OptionsError, match="views must be at least 1, got 0"):
        Recognizer(ctc_bundle[1]).check_options(GenerationOptions(views=0))


@needs_shared
def test_a_damaged_ctc_section_is_named(ctc_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(ctc_bundle[1], bundle)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["ctc"]["weight"] = 2.0
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="ctc.weight is 2.0"):
        Recognizer(bundle)
