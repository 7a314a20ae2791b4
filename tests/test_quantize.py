"""Quantized bundles (static int8 on recorded inputs, dynamic int8, fp16), the accuracy gate, and htr-eval."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import line_images
from htr import Recognizer
from htr.cli import EXIT_BAD_INPUT, EXIT_USAGE, eval_main
from htr.evaluate import Evaluation, cer_difference_interval, character_error_rate, edit_distance, read_labels, word_error_rate

pytest.importorskip("onnxruntime.quantization")


def _op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lines")
    paths = []
    for i, array in enumerate(line_images(6, seed=5)):
        paths.append(folder / f"{i}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def test_error_rates():
    assert edit_distance("kitten", "sitting") == 3
    assert word_error_rate(["the cat sat"], ["the cat sat down"]) == pytest.approx(1 / 4)
    assert word_error_rate(["a b"], ["a c"]) == pytest.approx(1 / 2)
    assert character_error_rate(["ab", "c"], ["abc", "c"]) == pytest.approx(1 / 4)


def test_recorded_calibration_inputs_are_real_steps(exported, lines):
    """The decoder's calibration feeds are the runtime's own: token ids with the cache at several lengths."""
    from htr.export.quantize import QuantizeSettings, record_inputs

    bundle = exported("vit-roberta")[1]
    feeds = record_inputs(bundle, [str(p) for p in lines], QuantizeSettings(max_steps=1000), log=lambda m: None)
    assert {f["pixel_values"].shape[0] for f in feeds["encoder"]} == {6}
    cache_lengths = {v.shape[2] for f in feeds["decoder"] for k, v in f.items() if ".decoder." in k}
    assert 0 in cache_lengths and len(cache_lengths) > 3
    reference = Recognizer(bundle).encode([str(p) for p in lines])
    np.testing.assert_allclose(feeds["cross_attention"][0]["encoder_hidden_states"], reference, atol=1e-6)


def test_reservoir_keeps_a_bounded_uniform_sample():
    from htr.export.quantize import _Recorder

    class Session:
        def run(self, outputs, feeds):
            return []

    recorder = _Recorder(Session(), limit=10, budget_bytes=10**9, seed=0)
    for i in range(1000):
        recorder.run([], {"x": np.array([i])})
    kept = sorted(int(f["x"][0]) for f in recorder.kept)
    assert len(kept) == 10 and recorder.seen == 1000 and kept[-1] > 500  # not just the first ten


@pytest.mark.parametrize("mode, expected_ops", [("static", {"QuantizeLinear", "DequantizeLinear"}), ("dynamic", {"DynamicQuantizeLinear"}), ("fp16", {"Cast"})])
def test_quantized_bundles_load_run_and_shrink(exported, lines, tmp_path, mode, expected_ops):
    from htr.export.quantize import QuantizeSettings, quantize_bundle

    _, fp32 = exported("vit-roberta")
    manifest = quantize_bundle(fp32, tmp_path / mode, QuantizeSettings(mode=mode), [str(p) for p in lines], log=lambda m: None)
    assert manifest["precision"] == ("fp16" if mode == "fp16" else f"int8-{mode}")
    for name in ("encoder", "decoder"):
        assert expected_ops <= _op_types(tmp_path / mode / f"{name}.onnx"), name
    fp32_weights = sum(json.loads((fp32 / "manifest.json").read_text())["graphs"][g]["weight_bytes"] for g in ("encoder", "decoder"))
    weights = sum(manifest["graphs"][g]["weight_bytes"] for g in ("encoder", "decoder"))
    assert weights < (0.6 if mode == "fp16" else 0.4) * fp32_weights
    results = Recognizer(tmp_path / mode).recognize([str(p) for p in lines[:2]], beams=2, max_length=10)
    assert all(isinstance(r.text, str) and len(r.tokens) <= 9 for r in results)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_inputs_of_every_shape(exported, lines, tmp_path, method):
    """Entropy and percentile calibration see the recorded runs (decoder caches of every length) and set their own ranges."""
    from htr.export.quantize import QuantizeSettings, quantize_bundle

    _, fp32 = exported("vit-roberta")
    images = [str(p) for p in lines]
    quantize_bundle(fp32, tmp_path / "minmax", QuantizeSettings(), images, log=lambda m: None)
    quantize_bundle(fp32, tmp_path / method, QuantizeSettings(method=method), images, log=lambda m: None)

    def scales(folder):
        graph = onnx.load(str(folder / "decoder.onnx")).graph
        constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        return {n.input[0]: float(constants[n.input[1]]) for n in graph.node
                if n.op_type == "QuantizeLinear" and n.input[1] in constants and constants[n.input[1]].size == 1}

    found, minmax = scales(tmp_path / method), scales(tmp_path / "minmax")
    assert found.keys() == minmax.keys() and len(found) > 10
    assert all(found[k] <= minmax[k] * 1.01 for k in found), {k: (found[k], minmax[k]) for k in found}  # within min and max
    if method == "entropy":  # (the 99.999th percentile of so few values is their maximum)
        assert sum(found[k] < minmax[k] * 0.99 for k in found) > len(found) // 4  # clipped where the histogram says so
    results = Recognizer(tmp_path / method).recognize(images[:2], beams=2, max_length=10)
    assert all(isinstance(r.text, str) for r in results)


def _labelled(folder, paths, texts):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.tsv").write_text("".join(f"{p}\t{t}\n" for p, t in zip(paths, texts)), encoding="utf-8")
    return folder


def test_htr_eval_one_and_two_bundles(exported, lines, tmp_path):
    bundle = exported("vit-roberta")[1]
    read = [r.text for r in Recognizer(bundle).recognize([str(p) for p in lines[:3]], max_length=12)]
    references = read[:2] + [read[2] + "xyz"]
    data = _labelled(tmp_path / "data", lines[:3], references)
    assert read_labels(data)[0] == (str(lines[0]), references[0])

    result = CliRunner().invoke(eval_main, [str(bundle), str(data), "--format", "json", "--jsonl", str(tmp_path / "rows.jsonl")], env={"HTR_THREADS": "1"})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["lines"] == 3
    assert {k: summary["bundles"][0][k] for k in ("beams", "ctc_weight", "views")} == {"beams": 4, "ctc_weight": 0.0, "views": 1}
    # htr-eval reads with the bundle's default length; the references came from max_length 12, so compare through its own rows.
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    texts = [r["texts"][0] for r in rows]
    assert summary["bundles"][0]["cer"] == pytest.approx(character_error_rate(texts, references))

    two = CliRunner().invoke(eval_main, [str(bundle), str(bundle), str(data), "--beams", "2", "--views", "2"])
    assert two.exit_code == 0, two.output
    assert two.stdout.count("| 2, 0, 2 |") == 2  # the settings each bundle was read with
    assert "CER +0.00 points (95% interval +0.00 to +0.00, paired bootstrap over lines); identical text on 100.0% of lines" in two.stdout


def test_cer_difference_interval_is_a_paired_bootstrap_over_lines():
    references = ["abcdefghij"] * 40
    first = Evaluation(list(references), 0.0, 0.0, 1.0)
    # One error more on every line: every draw of lines shows the same +10 points.
    worse = Evaluation(["abcdefghiX"] * 40, 0.1, 0.1, 1.0)
    assert cer_difference_interval(first, worse, references) == pytest.approx((10.0, 10.0))
    # One error more on half the lines and one fewer on the other half: no difference these lines can show.
    mixed_first = Evaluation(["abcdefghiX"] * 20 + list(references[:20]), 0.05, 0.05, 1.0)
    mixed_second = Evaluation(list(references[:20]) + ["abcdefghiX"] * 20, 0.05, 0.05, 1.0)
    low, high = cer_difference_interval(mixed_first, mixed_second, references)
    assert low < -1.0 and high > 1.0
    # An unreadable image (None) counts as empty output, as in the CER itself.
    unread = Evaluation([None] + list(references[1:]), 0.025, 0.025, 1.0)
    assert cer_difference_interval(first, unread, references)[1] > 0


def test_htr_eval_without_bundle_measures_the_shipped_one(exported, lines, tmp_path, monkeypatch):
    import htr.manifest

    bundle = exported("vit-roberta")[1]
    data = _labelled(tmp_path / "data", lines[:2], ["a", "b"])
    monkeypatch.setattr(htr.manifest, "DEFAULT_BUNDLE", bundle)
    result = CliRunner().invoke(eval_main, [str(data), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bundles"][0]["bundle"] == str(bundle)
    monkeypatch.setattr(htr.manifest, "DEFAULT_BUNDLE", tmp_path / "none")
    result = CliRunner().invoke(eval_main, [str(data)])
    assert result.exit_code == EXIT_USAGE and "no default bundle" in result.stderr


def test_htr_eval_bad_inputs(exported, lines, tmp_path):
    bundle = exported("vit-roberta")[1]
    (tmp_path / "broken.png").write_text("not a png")
    data = _labelled(tmp_path / "data", [lines[0], tmp_path / "broken.png"], ["a", "b"])
    result = CliRunner().invoke(eval_main, [str(bundle), str(data)])
    assert result.exit_code == EXIT_BAD_INPUT and "broken.png" in result.stderr and "| " in result.stdout
    missing = CliRunner().invoke(eval_main, [str(bundle), str(tmp_path / "nowhere")])
    assert missing.exit_code == EXIT_USAGE and "labels.tsv" in missing.stderr
    alone = CliRunner().invoke(eval_main, [str(bundle)])
    assert alone.exit_code == EXIT_USAGE


def test_export_int8_records_accuracy_and_says_when_it_cannot_judge(exported, lines, tmp_path):
    from htr.export.cli import main

    folder, _ = exported("vit-roberta")
    data = _labelled(tmp_path / "eval", lines, ["Dear Sir, a line it cannot read"] * len(lines))
    result = CliRunner().invoke(main, [str(folder), str(tmp_path / "int8"), "--int8", "--calibration", str(lines[0].parent), "--eval-data", str(data),
                                       "--eval-lines", "2", "--verify", "1"])
    assert result.exit_code == 0, result.output
    assert "cannot be judged" in result.stderr and "accuracy on 2 held-out lines" in result.stderr
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["precision"] == "int8-static" and manifest["accuracy"]["judged"] is False and manifest["accuracy"]["lines"] == 2
    low, high = manifest["accuracy"]["cer_increase_interval_points"]
    assert low <= manifest["accuracy"]["cer_increase_points"] <= high
    assert manifest["quantization"]["calibration_lines"] == len(lines)


def test_export_refuses_an_int8_bundle_that_loses_accuracy(exported, lines, tmp_path, monkeypatch):
    """The gate: a judged comparison above --max-cer-increase removes the bundle and exits 5, unless --keep-anyway."""
    import htr.export.quantize as quantize
    from htr.export.cli import EXIT_ACCURACY, main

    folder, _ = exported("vit-roberta")
    data = _labelled(tmp_path / "eval", lines, ["x"] * len(lines))
    worse = {"lines": 6, "fp32_cer": 0.02, "quantized_cer": 0.05, "cer_increase_points": 3.0, "identical_share": 0.5, "judged": True}
    monkeypatch.setattr(quantize, "compare_accuracy", lambda *a, **k: dict(worse))
    args = [str(folder), "--quantize", "dynamic", "--eval-data", str(data), "--verify", "0"]
    refused = CliRunner().invoke(main, [args[0], str(tmp_path / "q")] + args[1:])
    assert refused.exit_code == EXIT_ACCURACY and "3.00 points above fp32" in refused.stderr
    assert not (tmp_path / "q").exists()
    kept = CliRunner().invoke(main, [args[0], str(tmp_path / "kept")] + args[1:] + ["--keep-anyway"])
    assert kept.exit_code == 0 and json.loads((tmp_path / "kept" / "manifest.json").read_text())["accuracy"]["cer_increase_points"] == 3.0


def test_export_says_when_too_few_lines_show_int8_within_the_allowance(exported, lines, tmp_path, monkeypatch):
    """A pass on the point estimate whose interval reaches past --max-cer-increase keeps the bundle and says how many lines would show it."""
    import htr.export.quantize as quantize
    from htr.export.cli import main

    folder, _ = exported("vit-roberta")
    data = _labelled(tmp_path / "eval", lines, ["x"] * len(lines))
    args = ["--quantize", "dynamic", "--eval-data", str(data), "--verify", "0"]
    for name, interval, note in [("wide", [-0.6, 1.4], "about 278 lines"), ("narrow", [-0.1, 0.9], None)]:
        report = {"lines": 100, "fp32_cer": 0.1, "quantized_cer": 0.104, "cer_increase_points": 0.4,
                  "cer_increase_interval_points": interval, "identical_share": 0.8, "judged": True}
        monkeypatch.setattr(quantize, "compare_accuracy", lambda *a, report=report, **k: dict(report))
        result = CliRunner().invoke(main, [str(folder), str(tmp_path / name)] + args)
        assert result.exit_code == 0 and (tmp_path / name / "manifest.json").is_file()
        if note:
            assert "interval of the increase reaches +1.40 points" in result.stderr and note in result.stderr
        else:
            assert "interval of the increase" not in result.stderr


def test_float_lm_head_keeps_the_output_projection_float(exported, lines, tmp_path):
    from htr.export.quantize import QuantizeSettings, lm_head, quantize_bundle

    _, fp32 = exported("vit-roberta")
    head = lm_head(onnx.load(str(fp32 / "decoder.onnx")))
    assert len(head) == 1
    quantize_bundle(fp32, tmp_path / "q", QuantizeSettings(float_lm_head=True, fuse_bias=False), [str(p) for p in lines], log=lambda m: None)
    nodes = {n.name: n for n in onnx.load(str(tmp_path / "q" / "decoder.onnx")).graph.node}
    weight = nodes[head[0]].input[1]
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] == weight for n in nodes.values())


def test_bias_fusion_keeps_the_numbers(exported, lines, tmp_path):
    """Folding bias Adds into the int8 MatMuls changes node count, not results."""
    from htr.export.quantize import QuantizeSettings, quantize_bundle

    _, fp32 = exported("vit-roberta")
    images = [str(p) for p in lines]
    for name, fuse in (("fused", True), ("unfused", False)):
        quantize_bundle(fp32, tmp_path / name, QuantizeSettings(fuse_bias=fuse), images, log=lambda m: None)
    fused = onnx.load(str(tmp_path / "fused" / "decoder.onnx"))
    with_bias = [n for n in fused.graph.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) > 6 and n.input[6]]
    assert with_bias and len(fused.graph.node) < len(onnx.load(str(tmp_path / "unfused" / "decoder.onnx")).graph.node)
    a, b = Recognizer(tmp_path / "fused"), Recognizer(tmp_path / "unfused")
    np.testing.assert_allclose(a.encode(images), b.encode(images), atol=1e-4)
    tokens = np.full((len(images), 1), a.manifest.special_tokens.decoder_start, dtype=np.int64)
    rows = np.arange(len(images))
    np.testing.assert_allclose(a._start_decoder(images)(tokens, rows), b._start_decoder(images)(tokens, rows), atol=1e-4)
    assert [r.tokens for r in a.recognize(images, max_length=10)] == [r.tokens for r in b.recognize(images, max_length=10)]


def test_export_int8_with_an_empty_calibration_folder_says_so(exported, tmp_path):
    from htr.export.cli import main

    folder, _ = exported("vit-roberta")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, [str(folder), str(tmp_path / "int8"), "--int8", "--calibration", str(tmp_path / "empty"), "--verify", "0"])
    assert result.exit_code == 1 and "no calibration images found" in result.stderr and "Traceback" not in result.output
