"""Exported bundles read through the htr runtime give the same tokens as transformers' generate."""

import numpy as np
import pytest

from conftest import VARIANTS, line_images
from htr import GenerationOptions, Recognizer
from htr.images import load_image

torch = pytest.importorskip("torch")


def reference(folder, images, **kwargs):
    """Tokens (start token and padding removed), scores and texts from PyTorch generate."""
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pixels = processor(images=[load_image(i) for i in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model.generate(pixels, do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs)
    tokens = []
    for row in out.sequences.tolist():
        row = row[1:]
        tokens.append(row[: row.index(2) + 1] if 2 in row else row)
    scores = out.sequences_scores.numpy() if kwargs.get("num_beams", 1) > 1 else None
    return tokens, scores, tokenizer.batch_decode(out.sequences, skip_special_tokens=True), model, pixels


SETTINGS = [
    dict(num_beams=1, max_length=20),
    dict(num_beams=2, max_length=20, length_penalty=0.7),
    dict(num_beams=3, max_length=24, early_stopping=True, length_penalty=1.5),
    dict(num_beams=4, max_length=20, early_stopping="never", length_penalty=2.0),
    dict(num_beams=5, max_length=16, no_repeat_ngram_size=2),
    dict(num_beams=4, max_length=20, min_length=8, no_repeat_ngram_size=3),
]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_tokens_and_text_equal_generate(exported, variant, kwargs):
    folder, bundle = exported(variant)
    images = line_images(4, seed=sorted(VARIANTS).index(variant))  # fixed: str hashes change per process
    tokens, scores, texts, _, _ = reference(folder, images, **kwargs)
    options = GenerationOptions(**{k: v for k, v in kwargs.items()})
    results = Recognizer(bundle).recognize(images, options=options)
    assert [list(r.tokens) for r in results] == tokens
    assert [r.text for r in results] == texts
    if scores is not None:
        np.testing.assert_allclose([r.score for r in results], scores, rtol=1e-4, atol=1e-5)


def test_models_are_exercised(exported):
    """The parity cases only prove something if outputs differ between images and end at varied lengths."""
    folder, bundle = exported("vit-roberta")
    results = Recognizer(bundle).recognize(line_images(6, seed=5), beams=4, max_length=24)
    assert len({r.tokens for r in results}) > 1
    assert len({len(r.tokens) for r in results}) > 1


@pytest.mark.parametrize("variant", ["vit-roberta", "deit-xlmr"])
def test_batched_equals_one_at_a_time(exported, variant):
    _, bundle = exported(variant)
    recognizer = Recognizer(bundle)
    images = line_images(7, seed=11)
    for beams in (1, 3):
        together = recognizer.recognize(images, beams=beams, batch_size=5, max_length=20)
        alone = [recognizer.recognize([image], beams=beams, max_length=20)[0] for image in images]
        assert [r.tokens for r in together] == [r.tokens for r in alone]
        np.testing.assert_allclose([r.score for r in together], [r.score for r in alone], rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_encoder_states_match_pytorch(exported, variant):
    folder, bundle = exported(variant)
    images = line_images(3, seed=2)
    _, _, _, model, pixels = reference(folder, images, num_beams=1, max_length=2)
    with torch.no_grad():
        expected = model.encoder(pixel_values=pixels).last_hidden_state.numpy()
    ours = Recognizer(bundle).encode(images, batch_size=2)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_decoder_logits_match_pytorch(exported):
    """First-step and later logits of the ONNX decoder, fed through its KV cache, equal PyTorch's."""
    folder, bundle = exported("deit-xlmr")
    images = line_images(2, seed=4)
    _, _, _, model, pixels = reference(folder, images, num_beams=1, max_length=2)
    step = Recognizer(bundle)._start_decoder(images)
    prefix = np.random.default_rng(0).integers(3, 64044, size=(2, 7))
    prefix[:, 0] = 2
    with torch.no_grad():
        expected = model(pixel_values=pixels, decoder_input_ids=torch.from_numpy(prefix)).logits.numpy()
    for i in range(prefix.shape[1]):
        np.testing.assert_allclose(step(prefix[:, : i + 1], np.arange(2)), expected[:, i], atol=1e-4)


def test_real_trocr_small_architecture(tmp_path):
    """The real trocr-small architecture and tokenizer (random weights, output layer scaled to be decisive)."""
    from tiny import TROCR, real_architecture

    if not TROCR.is_dir():
        pytest.skip(f"needs the shared TrOCR configs at {TROCR}")
    from transformers import VisionEncoderDecoderModel

    from htr.export.bundle import export_bundle, load_checkpoint

    folder = real_architecture("trocr-small-handwritten", tmp_path / "checkpoint")
    model = VisionEncoderDecoderModel.from_pretrained(folder)
    with torch.no_grad():
        model.decoder.output_projection.weight *= 8
    model.save_pretrained(folder)
    manifest = export_bundle(load_checkpoint(str(folder)), tmp_path / "bundle", log=lambda m: None)
    assert manifest["architecture"]["encoder_tokens"] == 578 and manifest["architecture"]["vocab_size"] == 64044
    assert manifest["preprocessing"]["resample"] == "bicubic"
    images = line_images(2, seed=9, size=(64, 400))
    recognizer = Recognizer(tmp_path / "bundle")
    for kwargs in (dict(num_beams=1, max_length=10), dict(num_beams=3, max_length=8, length_penalty=1.4)):
        tokens, _, texts, _, _ = reference(folder, images, **kwargs)
        results = recognizer.recognize(images, options=GenerationOptions(**kwargs))
        assert [list(r.tokens) for r in results] == tokens
        assert [r.text for r in results] == texts


def test_checkpoint_generation_settings_become_the_defaults(tmp_path):
    """A checkpoint that sets its own search: htr's defaults reproduce a bare `generate(pixels)`."""
    from tiny import TROCR, Variant, save_checkpoint

    if not TROCR.is_dir():
        pytest.skip(f"needs the shared TrOCR tokenizers at {TROCR}")
    from htr.export.bundle import export_bundle, load_checkpoint

    own = dict(num_beams=3, max_length=18, length_penalty=1.7, early_stopping=True, no_repeat_ngram_size=2, repetition_penalty=1.3)
    folder = save_checkpoint(Variant(seed=5), tmp_path / "checkpoint", generation=own)
    messages = []
    manifest = export_bundle(load_checkpoint(str(folder)), tmp_path / "bundle", log=messages.append)
    generation = manifest["generation"]
    assert {k: generation[k] for k in own if k != "repetition_penalty"} == {k: v for k, v in own.items() if k != "repetition_penalty"}
    assert "repetition_penalty" in generation["ignored_from_checkpoint"]
    assert any("repetition_penalty" in m for m in messages)
    images = line_images(3, seed=8)
    tokens, _, _, _, _ = reference(folder, images, repetition_penalty=1.0)
    assert [list(r.tokens) for r in Recognizer(tmp_path / "bundle").recognize(images)] == tokens


def test_unset_generation_settings_get_htr_defaults(exported):
    _, bundle = exported("vit-roberta")
    defaults = Recognizer(bundle).defaults
    assert (defaults.num_beams, defaults.max_length, defaults.early_stopping) == (4, 128, False)


def test_max_new_tokens_counts_generated_tokens_only(exported):
    folder, bundle = exported("vit-roberta")
    images = line_images(2, seed=3)
    tokens, _, _, _, _ = reference(folder, images, num_beams=2, max_new_tokens=6)
    results = Recognizer(bundle).recognize(images, options=GenerationOptions(num_beams=2, max_new_tokens=6))
    assert [list(r.tokens) for r in results] == tokens and max(len(t) for t in tokens) <= 6


def test_verification_catches_a_bundle_that_differs(exported):
    """The exporter's check must fail when the bundle does not reproduce the PyTorch model."""
    from htr.export.bundle import load_checkpoint
    from htr.export.verify import sample_lines, verify_bundle

    own, bundle = exported("vit-roberta")
    assert verify_bundle(load_checkpoint(str(own)), bundle, sample_lines(2), log=lambda m: None)["ok"] is True
    from transformers import VisionEncoderDecoderModel

    checkpoint = load_checkpoint(str(own))
    tampered = VisionEncoderDecoderModel.from_pretrained(own).eval()
    with torch.no_grad():
        tampered.decoder.output_projection.weight.mul_(-1)  # every choice changes
    report = verify_bundle(type(checkpoint)(checkpoint.source, tampered, checkpoint.image_processor, checkpoint.tokenizer), bundle, sample_lines(2), log=lambda m: None)
    assert report["ok"] is False


def test_verification_tells_near_ties_from_real_differences(exported):
    """Teacher-forced log-probs along PyTorch's tokens: equal for the bundle's own model, far apart for another."""
    from transformers import VisionEncoderDecoderModel

    from htr.export.verify import PATH_TOLERANCE, path_logprob_diff

    folder, bundle = exported("vit-roberta")
    images = [load_image(i) for i in line_images(2, seed=6)]
    tokens, _, _, model, pixels = reference(folder, images, num_beams=1, max_length=10)
    sequences = torch.tensor([[2] + t + [1] * (max(map(len, tokens)) - len(t)) for t in tokens])
    recognizer = Recognizer(bundle)
    assert path_logprob_diff(recognizer, model, images, pixels, sequences).max() < PATH_TOLERANCE / 10
    other = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    with torch.no_grad():
        other.decoder.output_projection.weight.mul_(1.01)
    assert path_logprob_diff(recognizer, other, images, pixels, sequences).min() > PATH_TOLERANCE
