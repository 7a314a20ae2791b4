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
