"""ONNX graphs of a VisionEncoderDecoder model: optimum exports them, we split and describe them.

The bundle holds three graphs and every weight once:

- `encoder.onnx`: `pixel_values -> last_hidden_state` (optimum's encoder as is);
- `cross_attention.onnx`: `encoder_hidden_states -> present.{i}.encoder.{key,value}`, the
  cross-attention keys and values of each decoder layer, computed once per image;
- `decoder.onnx`: optimum's decoder-with-past, one token per call. Fed an empty self-attention
  cache it also serves the first step, so optimum's no-past decoder (which repeats every decoder
  weight) is not kept.
"""

from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.utils import Extractor

from htr.errors import HtrError

ENCODER_STATES = "encoder_hidden_states"


class ExportError(HtrError):
    """The model cannot be exported as an htr bundle."""


def export_with_optimum(model, work_dir: Path) -> Dict[str, onnx.ModelProto]:
    """Return optimum's `encoder`, `decoder` and `decoder_with_past` graphs of a loaded model."""
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(
        model,
        work_dir,
        task="image-to-text-with-past",
        no_post_process=True,
        do_validation=False,
    )
    names = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"}
    missing = [f for f in names.values() if not (work_dir / f).is_file()]
    if missing:
        raise ExportError(f"optimum did not produce {', '.join(missing)}; is this a VisionEncoderDecoder model with a text decoder?")
    return {key: onnx.load(str(work_dir / f)) for key, f in names.items()}


def _constant_value(graph: onnx.GraphProto, name: str):
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def cross_attention_graph(decoder: onnx.ModelProto) -> onnx.ModelProto:
    """Return the part of optimum's no-past decoder that maps the encoder states to the cross-attention cache.

    The traced reshapes read the batch size from the decoder's hidden states; pointing those
    `Shape` nodes at the encoder states (same batch size) leaves a graph that needs only the
    encoder states and holds only the cross-attention key/value projections.
    """
    graph = decoder.graph
    outputs = [o.name for o in graph.output if ".encoder." in o.name]
    if not outputs:
        raise ExportError("optimum's decoder has no present.*.encoder.* outputs; cannot build the cross-attention graph")
    users: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def reads_batch_size_only(shape_node: onnx.NodeProto) -> bool:
        if any(a.name in ("start", "end") for a in shape_node.attribute):
            return False
        for user in users.get(shape_node.output[0], []):
            axis = next((a.i for a in user.attribute if a.name == "axis"), 0)
            index = _constant_value(graph, user.input[1]) if user.op_type == "Gather" else None
            if user.op_type != "Gather" or axis != 0 or index is None or np.ndim(index) != 0 or int(index) != 0:
                return False
        return True

    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] != ENCODER_STATES and reads_batch_size_only(node):
            node.input[0] = ENCODER_STATES
    try:
        cross = Extractor(decoder).extract_model([ENCODER_STATES], outputs)
        onnx.checker.check_model(cross)
    except Exception as e:
        raise ExportError(f"could not separate the cross-attention projections from the decoder graph: {e}") from e
    return cross


def ctc_head_graph(weight: np.ndarray, bias: np.ndarray, rows: int, columns: int, upsample: int) -> onnx.ModelProto:
    """Return htr-train's CTC head as a graph: `last_hidden_state (N, tokens, hidden)` -> `ctc_log_probs (N, steps, vocab)`.

    The patch tokens (the last `rows * columns`, after CLS) are grouped by column, each column's rows
    side by side, and the linear head `weight (upsample * vocab, rows * hidden)` gives `upsample`
    steps of vocabulary logits per column, as `htr.train.trainer.ctc_log_probs` computes them.
    Weights are kept in float16 and cast to float32 when the graph runs.
    """
    from onnx import TensorProto, helper

    vocab, hidden = weight.shape[0] // upsample, weight.shape[1] // rows
    constants = {
        "starts": np.array([-rows * columns], dtype=np.int64),
        "ends": np.array([np.iinfo(np.int64).max], dtype=np.int64),
        "axes": np.array([1], dtype=np.int64),
        "grid": np.array([0, rows, columns, hidden], dtype=np.int64),
        "by_column": np.array([0, columns, rows * hidden], dtype=np.int64),
        "by_step": np.array([0, columns * upsample, vocab], dtype=np.int64),
        "weight_t16": np.ascontiguousarray(weight.T).astype(np.float16),
        "bias16": bias.astype(np.float16),
    }
    nodes = [
        helper.make_node("Slice", ["last_hidden_state", "starts", "ends", "axes"], ["patches"]),
        helper.make_node("Reshape", ["patches", "grid"], ["grid_patches"]),
        helper.make_node("Transpose", ["grid_patches"], ["column_patches"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["column_patches", "by_column"], ["column_features"]),
        helper.make_node("Cast", ["weight_t16"], ["weight_t"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["bias16"], ["bias"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["column_features", "weight_t"], ["column_logits"]),
        helper.make_node("Add", ["column_logits", "bias"], ["biased_logits"]),
        helper.make_node("Reshape", ["biased_logits", "by_step"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["ctc_log_probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "ctc_head",
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "encoder_sequence_length", hidden])],
        [helper.make_tensor_value_info("ctc_log_probs", TensorProto.FLOAT, ["batch_size", columns * upsample, vocab])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="htr-export")
    model.ir_version = 8  # as the other graphs: onnxruntime 1.17 and later read it
    onnx.checker.check_model(model)
    return model


def tensor_specs(values) -> List[dict]:
    """Return the manifest description of graph inputs or outputs: name, dtype and shape."""
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor_type.shape.dim]
        specs.append({"name": value.name, "dtype": dtype, "shape": shape})
    return specs


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Return the bytes of all weights a graph holds."""
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def save_graph(model: onnx.ModelProto, path: Path) -> List[Path]:
    """Save a graph, its weights beside it in `<name>.data` when the file would pass protobuf's 2 GB limit."""
    if model.ByteSize() < 1_900_000_000:
        onnx.save(model, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    return [path, data]
