"""int8 and fp16 bundles made from an fp32 bundle.

Static int8 is calibrated on real activations: the fp32 bundle reads the calibration lines with
the htr runtime, and every input that each graph receives on the way (pixels, encoder states,
token ids with the KV cache at every length) is recorded and fed to ONNX Runtime's calibrator.
The recorded decoder steps are a uniform sample (reservoir) under a memory budget, since each
step carries the whole cross-attention cache.
"""

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import onnx

from htr.manifest import MANIFEST_NAME, load_manifest

from .bundle import write_manifest
from .graphs import ExportError, initializer_bytes, save_graph

MODES = ("static", "dynamic", "fp16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeSettings:
    """How to quantize; the defaults are the ones measured best (see benchmarks/README.md)."""

    mode: str = "static"
    method: str = "minmax"
    activations: str = "u8"  # u8 (asymmetric) or s8 (symmetric)
    op_types: tuple = ("MatMul", "Gather")
    per_channel: bool = True
    quantized_outputs: bool = False  # False: MatMul outputs stay float (DQ-MatMul fuses to MatMulIntegerToFloat)
    preprocess: bool = False  # run onnxruntime's quant_pre_process (shape inference, graph optimisation) first
    fuse_bias: bool = True  # fold bias Adds into the int8 MatMuls (see fuse_quantized_bias)
    float_lm_head: bool = False  # keep the output projection (hidden -> vocabulary logits) in float
    budget_bytes: int = 1_500_000_000  # recorded inputs kept per graph
    max_steps: int = 512  # recorded decoder steps kept


class _Recorder:
    """Stands in for an ONNX Runtime session: runs it and keeps a uniform sample of the feeds it got."""

    def __init__(self, session, limit: int, budget_bytes: int, seed: int):
        self._session, self._limit, self._budget = session, limit, budget_bytes
        self._rng = random.Random(seed)
        self.seen = 0
        self.kept: List[Dict[str, np.ndarray]] = []

    def run(self, outputs, feeds):
        self.seen += 1
        size = sum(v.nbytes for v in feeds.values())
        capacity = max(1, min(self._limit, self._budget // max(size, 1)))
        slot = len(self.kept) if len(self.kept) < capacity else self._rng.randrange(self.seen)
        if slot < capacity:
            copy = {k: np.array(v) for k, v in feeds.items()}
            if slot == len(self.kept):
                self.kept.append(copy)
            elif slot < len(self.kept):
                self.kept[slot] = copy
        return self._session.run(outputs, feeds)


def record_inputs(bundle_dir: Path, images: Sequence, settings: QuantizeSettings, log: Callable[[str], None]) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """Run the fp32 bundle over `images` (greedy) and return a sample of each graph's real inputs."""
    from htr import GenerationOptions, Recognizer

    recognizer = Recognizer(bundle_dir)
    recorders = {name: _Recorder(session, settings.max_steps, settings.budget_bytes, seed=i) for i, (name, session) in enumerate(recognizer._sessions.items())}
    recognizer._sessions = recorders
    for start in range(0, len(images), 8):
        recognizer.recognize(images[start : start + 8], beams=1, batch_size=8, options=GenerationOptions(views=1))
    for name, recorder in recorders.items():
        log(f"  {name}: {recorder.seen} runs recorded, {len(recorder.kept)} kept for calibration")
    return {name: recorder.kept for name, recorder in recorders.items()}


def _reader(feeds: List[Dict[str, np.ndarray]]):
    """Return a calibration reader over the recorded feeds. For `set_range` its items are groups of feeds with the same
    shapes: onnxruntime's histogram calibrators (entropy, percentile) stack each tensor over what one collection ran."""
    from onnxruntime.quantization import CalibrationDataReader

    groups: Dict[tuple, List[Dict[str, np.ndarray]]] = {}
    for feed in feeds:
        groups.setdefault(tuple((name, value.shape) for name, value in sorted(feed.items())), []).append(feed)
    ordered = list(groups.values())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(ordered))

        def __len__(self):
            return len(ordered)

        def set_range(self, start_index: int, end_index: int):
            self._items: Iterator = iter([feed for group in ordered[start_index:end_index] for feed in group])

        def get_next(self):
            return next(self._items, None)

        def rewind(self):
            self.set_range(0, len(ordered))

    return Reader()


def activation_products(model: onnx.ModelProto) -> List[str]:
    """Return the MatMul nodes whose second input is not a weight: the attention products (QK^T, attention x V).

    Quantizing them statically costs a QuantizeLinear over the whole KV cache at every step (and
    the cross-attention keys are the largest tensors of a decoder step), for little gain.
    """
    weights = {t.name for t in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]


def fuse_quantized_bias(path: Path) -> int:
    """Rewrite a static QDQ graph as ONNX Runtime runs it, with each bias `Add` folded into its int8 MatMul; return how many.

    ONNX Runtime turns DequantizeLinear -> MatMul into `MatMulIntegerToFloat` when it loads the
    graph, but leaves the bias `Add` after it as a node of its own, where dynamic int8's fused
    kernel adds the bias itself. Saving the graph at the `extended` optimisation level (portable
    across CPUs: no layout-specific rewrites) and moving the bias into the kernel's bias input
    removes about 50 nodes from each decoder step. The result uses ONNX Runtime's contrib ops.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    graph = model.graph
    vectors = {t.name for t in graph.initializer if len(t.dims) == 1}
    users: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    folded = []
    for node in graph.node:
        if node.op_type != "MatMulIntegerToFloat" or (len(node.input) > 6 and node.input[6]):
            continue
        after = users.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add" or node.output[0] in {o.name for o in graph.output}:
            continue
        add = after[0]
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if bias not in vectors:
            continue
        while len(node.input) < 7:
            node.input.append("")
        node.input[6] = bias
        node.output[0] = add.output[0]
        folded.append(add)
    for add in folded:
        graph.node.remove(add)
    save_graph(model, path)
    return len(folded)


def lm_head(model: onnx.ModelProto) -> List[str]:
    """Return the MatMul that makes the `logits` output (directly or through a bias Add), if the graph has one."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type in ("Add", "Reshape", "Cast"):
        node = next((producers[i] for i in node.input if i in producers), None)
    return [node.name] if node is not None and node.op_type == "MatMul" else []


def quantize_graph(source: Path, target: Path, feeds: Optional[List[Dict[str, np.ndarray]]], settings: QuantizeSettings) -> None:
    """Write the int8 (QDQ static or dynamic) or fp16 version of the graph `source` to `target`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if settings.mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        save_graph(model, target)
        return
    extra = {"MatMulConstBOnly": True}  # the attention products (two activations) stay in float
    if settings.mode == "dynamic":
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                         weight_type=QuantType.QInt8, extra_options=extra)
        return
    if not feeds:
        raise ExportError(f"no calibration inputs were recorded for {source.name}")
    if settings.preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = target.with_name(target.stem + ".prepared.onnx")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        source = prepared
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[settings.method]
    symmetric = settings.activations == "s8"
    extra.update(ActivationSymmetric=symmetric, WeightSymmetric=True)
    if not settings.quantized_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    # No CalibMaxIntermediateOutputs: onnxruntime (1.32) drops, not merges, what it collected each time it reaches that
    # many runs, so ranges came from the last few feeds only (and none when their count was a multiple). MinMax keeps
    # only each tensor's reduced min and max per run, which is small.
    if settings.method != "minmax":
        # histograms are collected one group of same-shaped feeds at a time and merged ("strided" collection works for
        # every calibrator despite its name); all at once, onnxruntime would stack tensors of different shapes
        extra["CalibStridedMinMax"] = 1
    try:
        quantize_static(
            str(source), str(target), _reader(feeds), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(settings.op_types),
            nodes_to_exclude=_float_nodes(onnx.load(str(source), load_external_data=False), settings),
            per_channel=settings.per_channel, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra,
        )
    except ValueError as e:
        if settings.method == "minmax":
            raise
        raise ExportError(f"{settings.method} calibration failed on {source.name} ({e}); use --calibration-method minmax") from e
    if settings.fuse_bias:
        fuse_quantized_bias(target)


def _float_nodes(model: onnx.ModelProto, settings: QuantizeSettings) -> List[str]:
    return activation_products(model) + (lm_head(model) if settings.float_lm_head else [])


def quantize_bundle(fp32_dir: Path, out_dir: Path, settings: QuantizeSettings, calibration_images: Sequence = (), log: Callable[[str], None] = print) -> dict:
    """Write a quantized copy of the fp32 bundle `fp32_dir` into `out_dir`; return its manifest."""
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    if settings.mode not in MODES:
        raise ExportError(f"unknown quantization {settings.mode!r}: use one of {', '.join(MODES)}")
    manifest = json.loads((fp32_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    load_manifest(fp32_dir)  # checks every file before we build on it
    feeds: Dict[str, list] = {}
    if settings.mode == "static":
        if not calibration_images:
            raise ExportError("static int8 needs calibration images")
        log(f"recording real inputs on {len(calibration_images)} calibration lines")
        feeds = record_inputs(fp32_dir, calibration_images, settings, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_as_is = {manifest["ctc"]["file"]} if "ctc" in manifest else set()  # the small CTC head, float16 weights already
    for path in fp32_dir.iterdir():
        if path.is_file() and (path.suffix not in (".onnx", ".data") or path.name in kept_as_is) and path.name != MANIFEST_NAME:
            shutil.copy2(path, out_dir / path.name)
    with tempfile.TemporaryDirectory(prefix="htr-quantize-") as work:
        for name, section in manifest["graphs"].items():
            log(f"quantizing {name} ({settings.mode})")
            target = out_dir / section["file"]
            quantize_graph(fp32_dir / section["file"], Path(work) / section["file"], feeds.get(name), settings)
            model = onnx.load(str(Path(work) / section["file"]))
            files = save_graph(model, target)
            section["data_files"] = [f.name for f in files[1:]]
            section["weight_bytes"] = initializer_bytes(model)
    manifest["precision"] = "fp16" if settings.mode == "fp16" else f"int8-{settings.mode}"
    manifest["quantization"] = {**asdict(settings), "op_types": list(settings.op_types), "calibration_lines": len(calibration_images) if settings.mode == "static" else 0}
    manifest.pop("verification", None)
    write_manifest(out_dir, manifest)
    return manifest


UNTRAINED_CER = 0.5  # above this fp32 CER the model does not read the lines, and int8's effect cannot be judged


def evaluation_rows(folder: Optional[Path], count: int = 100) -> List[tuple]:
    """Return `(image, text)` rows for judging int8: `folder`'s labels.tsv, else synthetic lines in the held-out fonts."""
    from htr.evaluate import read_labels

    if folder is not None:
        return read_labels(folder)[:count]
    from htr.train.synth import SyntheticLines

    lines = SyntheticLines("eval", seed=4242)
    return [lines[i] for i in range(count)]


def compare_accuracy(fp32_dir: Path, quantized_dir: Path, rows: Sequence[tuple], log: Callable[[str], None]) -> dict:
    """Return CER of both bundles on `rows`, the increase in points, the share of identical lines and whether it can be judged."""
    from htr import Recognizer
    from htr.evaluate import agreement, cer_difference_interval, evaluate

    fp32 = evaluate(Recognizer(fp32_dir), rows)
    quantized = evaluate(Recognizer(quantized_dir), rows)
    report = {
        "lines": len(rows),
        "fp32_cer": fp32.cer,
        "quantized_cer": quantized.cer,
        "cer_increase_points": 100 * (quantized.cer - fp32.cer),
        "cer_increase_interval_points": cer_difference_interval(fp32, quantized, [r[1] for r in rows]),
        "identical_share": agreement(fp32, quantized),
        "judged": fp32.cer <= UNTRAINED_CER,
    }
    log(f"accuracy on {len(rows)} held-out lines: fp32 CER {100 * fp32.cer:.2f}%, quantized CER {100 * quantized.cer:.2f}% "
        f"({report['cer_increase_points']:+.2f} points, 95% interval {report['cer_increase_interval_points'][0]:+.2f} to "
        f"{report['cer_increase_interval_points'][1]:+.2f}), identical text on {100 * report['identical_share']:.1f}% of lines")
    if not report["judged"]:
        log(f"the fp32 model itself does not read these lines (CER above {100 * UNTRAINED_CER:.0f}%): it is untrained or trained "
            "for other lines, so what quantization costs in accuracy cannot be judged here; pass --eval-data with lines it reads")
    return report

