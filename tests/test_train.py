"""htr-train: character tokenizers, CER, and short end-to-end runs (loss falls, checkpoint loads, export works)."""

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("torch")
from htr import Recognizer  # noqa: E402
from htr.errors import HtrError  # noqa: E402
from htr.text import TextDecoder  # noqa: E402
from htr.train.model import ENGLISH, char_tokenizer  # noqa: E402
from htr.evaluate import character_error_rate, read_labels  # noqa: E402

GREEK = "αβγδεζηθικλμνξοπρστυφχψω "
GLYPH_FONTS = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/klee/KleeOne-Regular.ttf"]


@pytest.mark.parametrize(
    "hyp, ref, cer",
    [("abc", "abc", 0.0), ("abd", "abc", 1 / 3), ("", "abcd", 1.0), ("abcd", "", 4.0), ("kitten", "sitting", 3 / 7)],
)
def test_character_error_rate(hyp, ref, cer):
    assert character_error_rate([hyp], [ref]) == pytest.approx(cer)


def test_char_tokenizer_round_trip_and_runtime_decode(tmp_path):
    tokenizer = char_tokenizer(ENGLISH)
    texts = ["Dear Sir, 22 March 1905!", "  two  spaces ", "(50%) $3.50 #7 'quoted'"]
    ids = [tokenizer(t).input_ids for t in texts]
    assert all(i[-1] == tokenizer.eos_token_id for i in ids)
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == texts
    tokenizer.save_pretrained(tmp_path)
    assert TextDecoder(tmp_path / "tokenizer.json", False).decode(ids) == texts
    assert tokenizer.decode(tokenizer("é").input_ids, skip_special_tokens=True) == ""  # unknown: <unk>, skipped


def test_read_labels_errors(tmp_path):
    with pytest.raises(HtrError, match="no labels.tsv"):
        read_labels(tmp_path)
    (tmp_path / "labels.tsv").write_text("only-a-path\n")
    with pytest.raises(HtrError, match="holds no"):
        read_labels(tmp_path)


def _line_folder(folder: Path, texts, font_path: str) -> Path:
    folder.mkdir(parents=True)
    font = ImageFont.truetype(font_path, 22)
    with open(folder / "labels.tsv", "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            image = Image.new("RGB", (260, 36), "white")
            ImageDraw.Draw(image).text((6, 5), text, fill="black", font=font)
            image.save(folder / f"{i}.png")
            f.write(f"{i}.png\t{text}\n")
    return folder


def _greek_font() -> str:
    for path in GLYPH_FONTS:
        if Path(path).is_file() and ImageFont.truetype(path, 20).getbbox("αβγ")[2] > 10:
            return path
    pytest.skip("no font with Greek glyphs installed (DejaVu Sans or Klee One)")


def _losses(out_dir: Path):
    states = sorted((out_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    history = json.loads(states[-1].read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def test_new_alphabet_end_to_end(tmp_path, exported):
    """Swap in a Greek character tokenizer, train a few steps (loss falls), export, read Greek back."""
    from htr.export.bundle import export_bundle, load_checkpoint
    from htr.train.cli import main

    folder, _ = exported("vit-roberta")
    font = _greek_font()
    texts = ["αβγ δεζ", "ηθι κλμ", "νξο πρσ", "τυφ χψω"] * 2
    data = _line_folder(tmp_path / "greek", texts, font)
    out = tmp_path / "trained"
    result = CliRunner().invoke(main, [str(out), "--from", str(folder), "--data", str(data), "--alphabet", GREEK,
                                       "--steps", "60", "--batch-size", "8", "--lr", "3e-3", "--eval-every", "60"])
    assert result.exit_code == 0, result.output
    losses = _losses(out)
    assert losses[-1] < 0.7 * losses[0]
    manifest = export_bundle(load_checkpoint(str(out)), tmp_path / "bundle", log=lambda m: None)
    assert manifest["tokenizer"]["vocab_size"] == 4 + len(set(GREEK))
    results = Recognizer(tmp_path / "bundle").recognize([str(data / "0.png"), str(data / "1.png")], max_length=12)
    assert all(r.text and set(r.text) <= set(GREEK) for r in results)


def test_demo_architecture_trains_on_synthetic_lines(tmp_path):
    from htr.train.cli import main
    from htr.train.synth import load_fonts

    try:
        load_fonts("train")
    except HtrError as e:
        pytest.skip(str(e))
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, [str(out), "--demo", "--synthetic", "--steps", "12", "--batch-size", "4", "--eval-every", "12", "--eval-lines", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    resumed = CliRunner().invoke(main, [str(out), "--demo", "--synthetic", "--steps", "14", "--batch-size", "4", "--eval-every", "12", "--eval-lines", "4", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as saved:
        assert not [k for k in saved.keys() if k.startswith("ctc_head")]  # the CTC head is training-only
    latest = json.loads((out / "latest" / "training_state.json").read_text())
    assert latest["global_step"] == 14 and (out / "latest" / "preprocessor_config.json").is_file()
    losses = _losses(out)
    assert losses and all(math.isfinite(x) for x in losses) and json.loads((out / "config.json").read_text())["encoder"]["image_size"] == [32, 384]
    # going on from it keeps the CTC loss without being told, on taller lines too (the same grid of patches)
    more = CliRunner().invoke(main, [str(tmp_path / "more"), "--from", str(out), "--synthetic", "--steps", "2", "--batch-size", "4",
                                     "--eval-every", "2", "--eval-lines", "4", "--input-size", "64x384", "--dropout", "0.1"])
    assert more.exit_code == 0, more.output
    assert "CTC head goes on" in more.stderr and (tmp_path / "more" / "ctc_head.safetensors").is_file()
    config = json.loads((tmp_path / "more" / "config.json").read_text())
    encoder = config["encoder"]
    assert encoder["image_size"] == [64, 384] and encoder["patch_size"] == [64, 8]
    assert encoder["hidden_dropout_prob"] == encoder["attention_probs_dropout_prob"] == 0.1
    assert config["decoder"]["dropout"] == config["decoder"]["attention_dropout"] == 0.1
    assert json.loads((tmp_path / "more" / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 384}
    bad = CliRunner().invoke(main, [str(tmp_path / "bad"), "--from", str(out), "--synthetic", "--input-size", "64"])
    assert bad.exit_code == 2 and "'64' is not HEIGHTxWIDTH" in bad.output


def _learning_rates(out_dir: Path) -> dict:
    state = json.loads((out_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    return {h["step"]: h["learning_rate"] for h in state["log_history"] if "learning_rate" in h}


def test_a_stretch_stopped_goes_on_from_its_weights_alone_on_another_machine(tmp_path):
    """--stop-at leaves RUN/latest; --resume --from a copy of it, with no checkpoint (the machine gone), goes on at its step of the
    stretch's learning-rate schedule, and refuses a snapshot of another stretch."""
    import torch
    from transformers import get_scheduler

    from htr.train.cli import main
    from htr.train.synth import load_fonts

    try:
        load_fonts("train")
    except HtrError as e:
        pytest.skip(str(e))
    common = ["--synthetic", "--steps", "4", "--batch-size", "2", "--eval-every", "2", "--eval-lines", "2", "--lr", "1e-3", "--warmup", "0"]
    first = CliRunner().invoke(main, [str(tmp_path / "first"), "--demo", *common, "--stop-at", "2"])
    assert first.exit_code == 0, first.output
    assert "stopped at step 2 of 4" in first.stderr and not (tmp_path / "first" / "model.safetensors").exists()
    snapshot = tmp_path / "kept"  # all that is left of the first machine: its weights-only snapshot, committed somewhere
    (tmp_path / "first" / "latest").rename(snapshot)
    assert json.loads((snapshot / "training_state.json").read_text())["global_step"] == 2
    on = CliRunner().invoke(main, [str(tmp_path / "second"), "--from", str(snapshot), *common, "--resume"])
    assert on.exit_code == 0, on.output
    assert "going on from step 2 of 4" in on.stderr and (tmp_path / "second" / "model.safetensors").is_file()
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=4)
    at_one_go = {}
    for step in range(1, 5):  # the trainer logs the rate each step trained with
        at_one_go[step] = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
    assert _learning_rates(tmp_path / "second") == pytest.approx({3: at_one_go[3], 4: at_one_go[4]}, rel=1e-9)
    assert at_one_go[3] != at_one_go[1]  # a schedule started again would have read differently

    other = CliRunner().invoke(main, [str(tmp_path / "other"), "--from", str(snapshot), *common[:2], "6", *common[3:], "--resume"])
    assert other.exit_code == 1 and "steps 4 there, 6 here" in other.stderr
    nothing = CliRunner().invoke(main, [str(tmp_path / "nothing"), "--demo", *common, "--resume"])
    assert nothing.exit_code == 1 and "give that folder with --from" in nothing.stderr


@pytest.mark.parametrize("size, patch", [((16, 32), [16, 8]), ((12, 32), [12, 8])])
def test_resize_input_reads_a_resized_line_as_the_model_read_the_original(size, patch):
    """The patch embedding is resampled by the pseudo-inverse of the resize: made taller, a model with one row of patches
    (as the demo model) reads the resized image exactly as it read the original; other weights are kept."""
    import torch

    from htr.train.model import demo_image_processor, resize_input
    from tiny import Variant, build_model

    model = build_model(Variant(image_size=(8, 32)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    processor = demo_image_processor(8, 32)
    image = torch.rand(2, 3, 8, 32)
    with torch.no_grad():
        read = model.encoder(image).last_hidden_state
        resized = resize_input(model, processor, *size).eval()
        again = resized.encoder(torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)).last_hidden_state
    torch.testing.assert_close(again, read, atol=1e-4, rtol=1e-4)
    assert resized.config.encoder.image_size == list(size) and resized.config.encoder.patch_size == patch
    assert processor.size == {"height": size[0], "width": size[1]}
    kept = resized.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in before.items() if "patch_embeddings.projection.weight" not in k)


def test_resize_input_refuses_patches_of_fractional_pixels():
    from htr.train.model import demo_image_processor, resize_input
    from tiny import Variant, build_model

    with pytest.raises(HtrError, match="a 8x8 patch would not scale to whole pixels"):
        resize_input(build_model(Variant()), demo_image_processor(32, 32), 34, 32)


def test_with_dropout_drops_only_while_training():
    import torch

    from htr.train.model import with_dropout
    from tiny import Variant, build_model

    model = build_model(Variant()).eval()
    dropping = with_dropout(model, 0.2).eval()
    assert model.config.encoder.hidden_dropout_prob == 0.0  # the model it copies is untouched
    assert dropping.config.encoder.attention_probs_dropout_prob == dropping.config.decoder.attention_dropout == 0.2
    image, ids = torch.rand(2, 3, 32, 32), torch.tensor([[2, 5, 6], [2, 7, 8]])
    with torch.no_grad():
        read = model(pixel_values=image, decoder_input_ids=ids).logits
        torch.testing.assert_close(dropping(pixel_values=image, decoder_input_ids=ids).logits, read, atol=0, rtol=0)
        dropping.train()
        assert not torch.allclose(dropping.encoder(image).last_hidden_state, model.encoder(image).last_hidden_state)


def test_with_dropout_refuses_a_model_it_cannot_set(monkeypatch):
    from htr.train import model as models
    from tiny import Variant, build_model

    monkeypatch.setattr(models, "DROPOUT_FIELDS", ("no_such_dropout",))
    with pytest.raises(HtrError, match="cannot set dropout in a 'vit' model: its config has none of no_such_dropout"):
        models.with_dropout(build_model(Variant()), 0.1)


def test_train_needs_exactly_one_start(tmp_path):
    from htr.train.cli import main

    result = CliRunner().invoke(main, [str(tmp_path / "x"), "--synthetic"])
    assert result.exit_code == 1 and "exactly one of --from" in result.stderr
    both = CliRunner().invoke(main, [str(tmp_path / "x"), "--demo", "--config", str(tmp_path)])
    assert both.exit_code == 1 and "exactly one of --from" in both.stderr
    empty = CliRunner().invoke(main, [str(tmp_path / "x"), "--config", str(tmp_path), "--synthetic"])
    assert empty.exit_code == 1 and f"cannot load the config, image processor and tokenizer of {tmp_path}" in empty.stderr


def test_config_trains_its_architecture_from_scratch(tmp_path, exported):
    """--config builds the architecture a config describes with fresh weights, and trains it with that folder's processor."""
    import torch
    from transformers import VisionEncoderDecoderModel

    from htr.train.cli import main
    from htr.train.model import model_from_config
    from tiny import TROCR

    folder, _ = exported("vit-roberta")
    model, image_processor, tokenizer = model_from_config(str(folder))
    saved = VisionEncoderDecoderModel.from_pretrained(folder).state_dict()
    fresh = model.state_dict()
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in saved.items()}
    assert not torch.equal(fresh["encoder.embeddings.patch_embeddings.projection.weight"], saved["encoder.embeddings.patch_embeddings.projection.weight"])
    data = _line_folder(tmp_path / "lines", ["one two", "three", "four five", "six"] * 2, _greek_font())
    out = tmp_path / "scratch"
    result = CliRunner().invoke(main, [str(out), "--config", str(folder), "--data", str(data), "--alphabet", "onetwhrfivsx ",  # the tiny model's vocabulary is smaller than its tokenizer's
                                       "--steps", "4", "--batch-size", "4", "--eval-every", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["encoder"] == json.loads((folder / "config.json").read_text())["encoder"]
    assert (out / "ctc_head.safetensors").is_file()  # from scratch: the auxiliary CTC loss is on by default
    real, processor, _ = model_from_config(str(TROCR / "trocr-small-handwritten"))  # the real trocr-small architecture
    assert real.config.encoder.model_type == "deit" and processor.size == {"height": 384, "width": 384}
    assert real.config.decoder.vocab_size == 64044 and real.config.decoder.d_model == 256


def test_ctc_head_reads_patch_columns_left_to_right():
    """The CTC steps come from the patch columns in order; the CLS token is not one of them."""
    import torch

    from htr.train.model import demo_model
    from htr.train.trainer import CTC_UPSAMPLE, attach_ctc_head, ctc_loss

    model = demo_model(10)
    attach_ctc_head(model, 10)
    rows, cols = model.ctc_head.grid
    assert (rows, cols) == (1, 48)
    size = model.config.encoder.hidden_size
    hidden = torch.zeros(1, 1 + rows * cols, size)
    hidden[0, 0] = 100.0  # CLS: must not reach the head
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.zero_()
        model.ctc_head.weight[CTC_UPSAMPLE * 10 - 1, 0] = 1.0  # the last step's last class reads feature 0
        hidden[0, 1:, 0] = torch.arange(cols, dtype=torch.float32)  # column index as feature 0
        captured = {}
        model.ctc_head.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        loss = ctc_loss(model.ctc_head, hidden, torch.tensor([[5, 6, 2]]), blank=1, ignore={0, 1, 2, 3})
    assert torch.isfinite(loss)
    assert captured["out"].shape == (1, cols, CTC_UPSAMPLE * 10)
    assert captured["out"][0, :, -1].tolist() == list(range(cols))


def test_ctc_head_is_saved_beside_the_weights_and_taken_up_again(tmp_path):
    """A run going on with --from keeps its CTC head; a new vocabulary gets a fresh one; the model's weights never hold it."""
    import torch
    from safetensors import safe_open

    from htr.train.model import ENGLISH, char_tokenizer, demo_image_processor, demo_model
    from htr.train.trainer import CTC_HEAD_FILE, attach_ctc_head, save_weights_only

    tokenizer = char_tokenizer(ENGLISH)
    model = demo_model(len(tokenizer))
    assert not attach_ctc_head(model, len(tokenizer), tmp_path)  # nothing saved yet
    save_weights_only(model, tokenizer, demo_image_processor(), tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        assert not [k for k in saved.keys() if k.startswith("ctc_head")]
    again = demo_model(len(tokenizer))
    assert attach_ctc_head(again, len(tokenizer), tmp_path)
    assert torch.equal(again.ctc_head.weight, model.ctc_head.weight) and torch.equal(again.ctc_head.bias, model.ctc_head.bias)
    other = demo_model(12)
    assert not attach_ctc_head(other, 12, tmp_path) and (tmp_path / CTC_HEAD_FILE).is_file()


def test_training_loss_scores_each_position_against_its_own_label():
    """htr-train's loss is the cross-entropy of logits[t] against labels[t] (transformers 4.50-4.57 shift the labels twice)."""
    import torch

    from htr.train.model import demo_model
    from htr.train.trainer import use_unshifted_loss

    torch.manual_seed(0)
    model = demo_model(12).eval()
    pixels, labels = torch.randn(2, 3, 32, 384), torch.randint(4, 12, (2, 7))
    labels[1, 5:] = -100
    use_unshifted_loss(model)
    with torch.no_grad():
        output = model(pixel_values=pixels, labels=labels)
    expected = torch.nn.functional.cross_entropy(output.logits.reshape(-1, 12), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(output.loss, expected, atol=1e-6)
    shifted = torch.nn.functional.cross_entropy(output.logits[:, :-1].reshape(-1, 12), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert not torch.allclose(output.loss, shifted, atol=1e-3)


@pytest.mark.parametrize(
    "cpuinfo, fast",
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n", False),
        ("flags\t\t: avx2 avx512f avx512bw avx512_vnni\n", False),  # AVX-512 without BF16: emulated, slow
        ("flags\t\t: avx2 avx512f avx512_bf16\n", True),
        ("flags\t\t: avx2 amx_bf16 amx_tile amx_int8\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd bf16\n", None),  # Arm: no x86 flags line to read
        (None, None),  # no /proc/cpuinfo
    ],
)
def test_cpu_has_fast_bf16_reads_the_cpu_flags(tmp_path, cpuinfo, fast):
    from htr.train.trainer import cpu_has_fast_bf16

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_has_fast_bf16(path) is fast


def test_average_takes_the_mean_of_the_weights_and_the_ctc_head(tmp_path):
    """htr-average: every weight (model and CTC head) is the mean of the sources'; the folder loads like any checkpoint."""
    import torch
    from safetensors.torch import load_file

    from htr.export.bundle import load_checkpoint
    from htr.train.average import main
    from htr.train.model import ENGLISH, char_tokenizer, demo_image_processor, demo_model
    from htr.train.trainer import CTC_HEAD_FILE, attach_ctc_head, save_weights_only

    tokenizer = char_tokenizer(ENGLISH)
    sources = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = demo_model(len(tokenizer))
        attach_ctc_head(model, len(tokenizer))
        folder = tmp_path / f"run-{seed}"
        save_weights_only(model, tokenizer, demo_image_processor(), folder)
        sources.append(folder)
    result = CliRunner().invoke(main, [str(tmp_path / "mean"), *map(str, sources)])
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", CTC_HEAD_FILE):
        states = [load_file(str(source / name)) for source in sources]
        mean = load_file(str(tmp_path / "mean" / name))
        assert set(mean) == set(states[0])
        for key, value in mean.items():
            assert torch.allclose(value, sum(state[key] for state in states) / 3, atol=1e-7), key
    assert json.loads((tmp_path / "mean" / "averaged_from.json").read_text())["sources"] == [str(s) for s in sources]
    checkpoint = load_checkpoint(str(tmp_path / "mean"))
    assert len(checkpoint.tokenizer) == len(tokenizer)
    again = CliRunner().invoke(main, [str(tmp_path / "mean"), *map(str, sources)])
    assert again.exit_code == 1 and "exists and is not empty" in again.output
    other = tmp_path / "other"
    save_weights_only(demo_model(12), char_tokenizer("abcdefghi"), demo_image_processor(), other)
    mixed = CliRunner().invoke(main, [str(tmp_path / "mixed"), str(sources[0]), str(other)])
    assert mixed.exit_code == 1 and "another config.json" in mixed.output and not (tmp_path / "mixed").exists()
    alone = CliRunner().invoke(main, [str(tmp_path / "alone"), str(sources[0])])
    assert alone.exit_code == 1 and "at least two checkpoints" in alone.output
