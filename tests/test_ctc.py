"""Joint attention/CTC rescoring: the numpy CTC matches PyTorch's, and the recognizer picks what a PyTorch reference picks."""

import json

import numpy as np
import pytest

from conftest import line_images
from htr import BundleError, GenerationOptions, OptionsError, Recognizer
from htr.ctc import sequence_log_likelihoods
from htr.images import load_image
from htr.search import log_softmax
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


def test_sequence_log_likelihoods_match_torch():
    rng = np.random.default_rng(0)
    log_probs = log_softmax((3 * rng.normal(size=(8, 15, 9))).astype(np.float32)).astype(np.float64)
    labels = [
        [1, 2, 3],
        [2, 2],  # a repeat needs a blank between
        [],  # blanks only
        [4] * 8,  # 8 repeats and 7 blanks: exactly 15 steps, one alignment
        [4] * 9,  # 17 steps needed: impossible
        [1, 2, 1, 2, 1, 2, 1],
        [8],
        [5, 6, 5, 5, 7, 1, 2, 3],
    ]
    ours = sequence_log_likelihoods(log_probs, labels, blank=0)
    expected = torch_ctc(log_probs, labels, blank=0)
    assert np.isneginf(ours[4]) and np.isinf(expected[4])
    finite = np.isfinite(expected)
    assert finite.sum() == len(labels) - 1
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def ctc_bundle(tmp_path_factory):
    """A tiny checkpoint with a random, decisive CTC head beside it, and its bundle; returns (folder, bundle, head)."""
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
    save_file({k: v.contiguous() for k, v in holder.ctc_head.state_dict().items()}, str(folder / CTC_HEAD_FILE))
    export_bundle(load_checkpoint(str(folder)), root / "bundle", log=lambda m: None, ctc_weight=WEIGHT)
    return folder, root / "bundle", holder.ctc_head


def pytorch_joint_choice(folder, head, images, weight: float, beams: int = 4, max_length: int = 40):
    """The reference: generate's n-best, each scored (1 - weight) x decoder log-prob + weight x PyTorch's CTC."""
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    from htr.train.trainer import ctc_log_probs

    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    special = set(AutoTokenizer.from_pretrained(folder).all_special_ids)
    pixels = processor(images=[load_image(i) for i in images], return_tensors="pt").pixel_values
    rounded = torch.nn.Linear(head.in_features, head.out_features)
    rounded.grid = head.grid
    with torch.no_grad():
        rounded.load_state_dict({k: v.half().float() for k, v in head.state_dict().items()})  # as the bundle stores it
        out = model.generate(pixels, num_beams=beams, num_return_sequences=beams, max_length=max_length, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        log_probs = ctc_log_probs(rounded, model.encoder(pixel_values=pixels).last_hidden_state).numpy().astype(np.float64)
    chosen, top = [], []
    for i in range(len(images)):
        rows = []
        for k in range(beams):
            seq = out.sequences[i * beams + k].tolist()[1:]
            seq = seq[: seq.index(2) + 1] if 2 in seq else seq
            decoder = out.sequences_scores[i * beams + k].item() * len(seq)
            labels = [t for t in seq if t not in special]
            ctc = torch_ctc(log_probs[i : i + 1], [labels], blank=1)[0] if weight else 0.0
            rows.append((seq, (1 - weight) * decoder + weight * ctc))
        top.append(rows[0][0])
        chosen.append(max(rows, key=lambda r: r[1])[0])  # the first of equal scores, as numpy's argmax
    return chosen, top


@needs_shared
def test_rescoring_picks_what_pytorch_picks(ctc_bundle):
    folder, bundle, head = ctc_bundle
    images = line_images(12, seed=8, size=(20, 200))
    chosen, top = pytorch_joint_choice(folder, head, images, WEIGHT)
    assert sum(c != t for c, t in zip(chosen, top)) >= 2, "the CTC head never overrules the beam: this test would prove nothing"
    results = Recognizer(bundle).recognize(images, options=GenerationOptions(num_beams=4, max_length=40))
    assert [list(r.tokens) for r in results] == chosen


@needs_shared
def test_weight_zero_is_exactly_generate(ctc_bundle):
    folder, bundle, head = ctc_bundle
    images = line_images(12, seed=8, size=(20, 200))
    _, top = pytorch_joint_choice(folder, head, images, 0.0)
    results = Recognizer(bundle).recognize(images, options=GenerationOptions(num_beams=4, max_length=40, ctc_weight=0.0))
    assert [list(r.tokens) for r in results] == top


@needs_shared
def test_export_records_and_verifies_the_head(ctc_bundle):
    from htr.export.bundle import load_checkpoint
    from htr.export.verify import CTC_TOLERANCE, sample_lines, verify_bundle

    folder, bundle, head = ctc_bundle
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
    with pytest.raises(OptionsError, match="has no CTC head"):
        recognizer.recognize(line_images(1), options=GenerationOptions(ctc_weight=0.3))


@needs_shared
def test_ctc_weight_outside_0_to_1_is_refused(ctc_bundle):
    with pytest.raises(OptionsError, match="ctc_weight must be from 0 to 1"):
        Recognizer(ctc_bundle[1]).recognize(line_images(1), options=GenerationOptions(ctc_weight=1.5))


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
