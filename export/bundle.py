"""`htr-export`: a Hugging Face VisionEncoderDecoder checkpoint to a self-describing htr bundle.

A chain of plain functions, each producing one artifact: load the checkpoint, export the graphs
with optimum, split off the cross-attention graph, write the tokenizer and the manifest, then
verify the bundle through the htr runtime against PyTorch's `generate`.
"""

import json
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from htr.manifest import MANIFEST_NAME, RESAMPLE_NAMES, SCHEMA_VERSION, sha256_of

from .graphs import ExportError, cross_attention_graph, ctc_head_graph, export_with_optimum, initializer_bytes, save_graph, tensor_specs

# Used where the checkpoint sets nothing. transformers falls back to greedy with max_length 20,
# which cuts ordinary lines short; TrOCR reads best with a few beams.
DEFAULT_GENERATION = {
    "num_beams": 4,
    "max_length": 128,
    "min_length": 0,
    "length_penalty": 1.0,
    "early_stopping": False,
    "no_repeat_ngram_size": 0,
}
# The CTC head's share of the joint score that steers beam search (`htr.ctc`), where the checkpoint
# has htr-train's CTC head. Chosen on the demo model's held-out lines of seeds 11 and 13 (2000 lines,
# 4 beams, fp32): 0.3 read best (10.8%), 0.2 and 0.4 0.1-0.25 points worse, 0.5 0.5-0.7 worse.
DEFAULT_CTC_WEIGHT = 0.3
CTC_FILE = "ctc_head.onnx"
# Generation settings that change `generate`'s output but that the htr runtime does not implement.
_UNSUPPORTED_NEUTRAL = {
    "do_sample": False,
    "repetition_penalty": 1.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "encoder_no_repeat_ngram_size": 0,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "remove_invalid_values": False,
    "renormalize_logits": False,
    "num_return_sequences": 1,
}


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the PyTorch model, its image processor and its (fast) tokenizer."""

    source: str
    model: object
    image_processor: object
    tokenizer: object
    ctc_head: Optional[dict] = None  # htr-train's CTC head as numpy arrays (weight, bias), where the folder has one


def load_checkpoint(source: str) -> Checkpoint:
    """Return the model, image processor and tokenizer of a hub id or a `save_pretrained` folder."""
    from transformers import VisionEncoderDecoderModel

    try:
        model = VisionEncoderDecoderModel.from_pretrained(source).eval()
        image_processor, tokenizer = load_processors(source)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot load {source} as a VisionEncoderDecoder checkpoint with its processor: {e}") from e
    return Checkpoint(source, model, image_processor, tokenizer, load_ctc_head(source, model, len(tokenizer)))


def load_ctc_head(source: str, model, vocab_size: int) -> Optional[dict]:
    """Return the weight and bias of the CTC head htr-train saves beside a checkpoint folder's weights, or None.

    Raises ExportError where the head does not fit the model (another vocabulary or patch grid).
    """
    from htr.train.trainer import CTC_HEAD_FILE, CTC_UPSAMPLE

    path = Path(source) / CTC_HEAD_FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    state = load_file(str(path))
    weight, bias = state.get("weight"), state.get("bias")
    (height, _), (patch_h, _) = image_and_patch_size(model.config.encoder)
    features = (height // patch_h) * model.config.encoder.hidden_size
    # htr-train sizes the head to the tokenizer; the decoder's vocabulary may be larger (trocr-small: 64044 for 64002 ids).
    fits = [(CTC_UPSAMPLE * v, features) for v in sorted({vocab_size, model.config.decoder.vocab_size})]
    if weight is None or bias is None or tuple(weight.shape) not in fits or bias.shape != weight.shape[:1]:
        found = None if weight is None else tuple(weight.shape)
        raise ExportError(f"{path}: a CTC head of shape {' or '.join(map(str, fits))} fits this model, found {found}; "
                          "move the file away to export without it")
    return {"weight": weight, "bias": bias}


def ctc_spec(checkpoint: Checkpoint, out_dir: Path, weight: float) -> dict:
    """Write the CTC head graph into the bundle; return its manifest section."""
    from htr.train.trainer import CTC_UPSAMPLE

    head = checkpoint.ctc_head
    (height, width), (patch_h, patch_w) = image_and_patch_size(checkpoint.model.config.encoder)
    model = ctc_head_graph(head["weight"], head["bias"], height // patch_h, width // patch_w, CTC_UPSAMPLE)
    save_graph(model, out_dir / CTC_FILE)
    return {
        "file": CTC_FILE,
        "inputs": tensor_specs(model.graph.input),
        "outputs": tensor_specs(model.graph.output),
        "blank": int(checkpoint.tokenizer.pad_token_id),
        "skip": sorted(int(i) for i in checkpoint.tokenizer.all_special_ids),
        "weight": float(weight),
    }


def load_processors(source: str):
    """Return the image processor (the PIL one, whose resize htr reproduces) and the fast tokenizer (whose
    tokenizer.json a bundle carries) of a hub id or folder. Raises OSError or ValueError where either is missing,
    ExportError where the tokenizer has no fast form."""
    from transformers import AutoImageProcessor, AutoTokenizer

    image_processor = AutoImageProcessor.from_pretrained(source, use_fast=False)
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{source}: the tokenizer could not be converted to a fast tokenizer (install sentencepiece and protobuf)")
    return image_processor, tokenizer


def preprocessing_spec(image_processor) -> dict:
    """Return the manifest's preprocessing section for a ViT/DeiT-style image processor, or raise ExportError."""
    name = type(image_processor).__name__
    if getattr(image_processor, "do_center_crop", False):
        raise ExportError(f"{name} center-crops; htr reproduces resize, rescale and normalise only")
    size = image_processor.size
    if not (isinstance(size, dict) and "height" in size and "width" in size):
        raise ExportError(f"{name}.size is {size!r}; htr needs a fixed height and width")
    resample = int(getattr(image_processor, "resample", 2))
    from PIL import Image

    names = {int(getattr(Image.Resampling, n.upper())): n for n in RESAMPLE_NAMES}
    channels = len(image_processor.image_mean) if image_processor.do_normalize else 3
    if channels != 3:
        raise ExportError(f"{name} normalises {channels} channels; htr feeds RGB images")
    return {
        "image_processor": name,
        "height": int(size["height"]),
        "width": int(size["width"]),
        "resample": names[resample],
        "do_resize": bool(image_processor.do_resize),
        "do_rescale": bool(getattr(image_processor, "do_rescale", True)),
        "rescale_factor": float(getattr(image_processor, "rescale_factor", 1 / 255)),
        "do_normalize": bool(image_processor.do_normalize),
        "mean": [float(x) for x in image_processor.image_mean],
        "std": [float(x) for x in image_processor.image_std],
    }


def generation_spec(model) -> dict:
    """Return the generation defaults: the checkpoint's own settings where it sets them, ours elsewhere."""
    from transformers import GenerationConfig

    config = model.generation_config
    set_keys = set(config.to_diff_dict()) - {"transformers_version", "_from_model_config"}
    spec = {key: getattr(config, key) if key in set_keys else value for key, value in DEFAULT_GENERATION.items()}
    if "max_new_tokens" in set_keys and config.max_new_tokens is not None:
        spec["max_length"] = config.max_new_tokens + 1
    if "min_new_tokens" in set_keys and config.min_new_tokens:
        spec["min_length"] = max(spec["min_length"], config.min_new_tokens + 1)
    defaults = GenerationConfig()
    ignored = {k: getattr(config, k) for k in _UNSUPPORTED_NEUTRAL if getattr(config, k, None) != getattr(defaults, k, None)}
    spec["set_by_checkpoint"] = sorted(set_keys & (set(DEFAULT_GENERATION) | {"max_new_tokens", "min_new_tokens"}))
    spec["ignored_from_checkpoint"] = {k: repr(v) for k, v in ignored.items()}
    return spec


def special_tokens_spec(model) -> dict:
    """Return decoder start, eos and pad ids as `generate` resolves them."""
    config = model.generation_config
    start = config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id if model.config.decoder_start_token_id is not None else config.bos_token_id
    eos = config.eos_token_id if config.eos_token_id is not None else model.config.decoder.eos_token_id
    if start is None or eos is None:
        raise ExportError("the checkpoint sets no decoder_start_token_id or eos_token_id; set them in its generation_config.json")
    eos = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad = config.pad_token_id if config.pad_token_id is not None else eos[0]
    return {"decoder_start": int(start), "eos": eos, "pad": int(pad), "bos": config.bos_token_id}


def tokenizer_spec(tokenizer, out_dir: Path) -> dict:
    """Write `tokenizer.json` and return the manifest's tokenizer section."""
    from transformers import PreTrainedTokenizerBase

    if type(tokenizer).clean_up_tokenization is not PreTrainedTokenizerBase.clean_up_tokenization:
        raise ExportError(f"{type(tokenizer).__name__} overrides clean_up_tokenization; htr reproduces only the standard one")
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)  # compact: 2 MB less for XLM-R
    return {
        "file": "tokenizer.json",
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
    }


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("htr", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def write_graphs(checkpoint: Checkpoint, out_dir: Path, log: Callable[[str], None]) -> Dict[str, dict]:
    """Export the three graphs into `out_dir`; return each graph's manifest section and file list."""
    with tempfile.TemporaryDirectory(prefix="htr-export-") as work:
        log("exporting ONNX graphs with optimum")
        optimum_graphs = export_with_optimum(checkpoint.model, Path(work))
    log("splitting the cross-attention projections out of the decoder")
    graphs = {
        "encoder": optimum_graphs["encoder"],
        "cross_attention": cross_attention_graph(optimum_graphs["decoder"]),
        "decoder": optimum_graphs["decoder_with_past"],
    }
    sections = {}
    for name, graph in graphs.items():
        files = save_graph(graph, out_dir / f"{name}.onnx")
        sections[name] = {
            "file": files[0].name,
            "data_files": [f.name for f in files[1:]],
            "weight_bytes": initializer_bytes(graph),
            "inputs": tensor_specs(graph.graph.input),
            "outputs": tensor_specs(graph.graph.output),
        }
    return sections


def cache_links(sections: Dict[str, dict]) -> dict:
    """Return which decoder input is fed from which output: its own `present.*` or the cross-attention graph's."""
    decoder_inputs = [t["name"] for t in sections["decoder"]["inputs"]]
    decoder_outputs = {t["name"] for t in sections["decoder"]["outputs"]}
    cross_outputs = {t["name"] for t in sections["cross_attention"]["outputs"]}
    links = {"self": [], "cross": []}
    for name in decoder_inputs[1:]:
        source = name.replace("past_key_values.", "present.", 1)
        if source in decoder_outputs:
            links["self"].append({"input": name, "source": source})
        elif source in cross_outputs:
            links["cross"].append({"input": name, "source": source})
        else:
            raise ExportError(f"decoder input {name} has no matching present.* output to feed it")
    if decoder_inputs[0] != "input_ids" or [t["name"] for t in sections["decoder"]["outputs"]][0] != "logits":
        raise ExportError("the decoder graph should take input_ids first and give logits first")
    return links


def image_and_patch_size(encoder_config) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Return a ViT-style encoder's `(height, width)` of image and of patch; configs give either as one int or a pair."""
    def pair(value):
        return (value, value) if isinstance(value, int) else tuple(value)

    return pair(encoder_config.image_size), pair(encoder_config.patch_size)


def architecture_spec(model) -> dict:
    """Return the counts the runtime and readers of the manifest need."""
    encoder, decoder = model.config.encoder, model.config.decoder
    d_model = decoder.d_model if hasattr(decoder, "d_model") else decoder.hidden_size
    heads = decoder.decoder_attention_heads if hasattr(decoder, "decoder_attention_heads") else decoder.num_attention_heads
    (height, width), (patch_h, patch_w) = image_and_patch_size(encoder)
    extra_tokens = 2 if encoder.model_type == "deit" else 1
    return {
        "encoder_type": encoder.model_type,
        "encoder_hidden_size": int(encoder.hidden_size),
        "encoder_layers": int(encoder.num_hidden_layers),
        "encoder_tokens": int((height // patch_h) * (width // patch_w) + extra_tokens),
        "decoder_type": decoder.model_type,
        "decoder_layers": int(getattr(decoder, "decoder_layers", getattr(decoder, "num_hidden_layers", 0))),
        "decoder_heads": int(heads),
        "decoder_head_dim": int(d_model // heads),
        "decoder_hidden_size": int(d_model),
        "vocab_size": int(decoder.vocab_size),
        "parameters": int(model.num_parameters()),
    }


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Record every file of the bundle with its sha256 and write `manifest.json`."""
    files = {}
    for path in sorted(out_dir.iterdir()):
        if path.name != MANIFEST_NAME and path.is_file():
            files[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    manifest["files"] = files
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def export_bundle(checkpoint: Checkpoint, out_dir: Path, log: Callable[[str], None] = print, ctc_weight: float = DEFAULT_CTC_WEIGHT,
                  views: int = 1) -> dict:
    """Write the bundle of a loaded checkpoint into `out_dir` (created, must be empty); return its manifest.

    A checkpoint with a CTC head takes it along, with `ctc_weight` as the runtime's default weight.
    `views` is how many shifted copies of each line the runtime reads by default (`htr.GenerationOptions.views`).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; choose a new folder")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": {"model": checkpoint.source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "architecture": architecture_spec(checkpoint.model),
        "special_tokens": special_tokens_spec(checkpoint.model),
        "preprocessing": preprocessing_spec(checkpoint.image_processor),
        "generation": generation_spec(checkpoint.model),
        "views": {"count": int(views), "patch_width": int(image_and_patch_size(checkpoint.model.config.encoder)[1][1])},
        "precision": "fp32",
        "versions": _versions(),
    }
    for key, value in manifest["generation"]["ignored_from_checkpoint"].items():
        log(f"ignored: the checkpoint sets {key}={value}, which the htr runtime does not implement")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest["tokenizer"] = tokenizer_spec(checkpoint.tokenizer, out_dir)
    manifest["graphs"] = write_graphs(checkpoint, out_dir, log)
    manifest["decoder_cache"] = cache_links(manifest["graphs"])
    if checkpoint.ctc_head is not None:
        manifest["ctc"] = ctc_spec(checkpoint, out_dir, ctc_weight)
        log(f"the CTC head goes along: the runtime weighs its reading in beam search with weight {ctc_weight}")
    write_manifest(out_dir, manifest)
    return manifest


def record_in_manifest(out_dir: Path, key: str, report: Optional[dict]) -> None:
    """Add a report (verification, accuracy) under `key` to an existing bundle's manifest."""
    path = Path(out_dir) / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest[key] = report
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def list_images(folder: Path) -> List[Path]:
    from htr.images import IMAGE_SUFFIXES

    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
