"""The bundle manifest: the contract between `htr-export` and the runtime.

`manifest.json` names every file of the bundle with its sha256, the exact inputs and outputs of each
graph, how the decoder's KV cache is fed back, the special token ids, the preprocessing and the
generation defaults. The runtime reads all of this from here and guesses nothing.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .errors import BundleError, BundleNotFoundError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("encoder", "cross_attention", "decoder")
DEFAULT_BUNDLE = Path(__file__).with_name("models") / "default"  # shipped inside the package, where an install has one
RESAMPLE_NAMES = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (ints or symbolic names)."""

    name: str
    dtype: str
    shape: Tuple[Union[int, str], ...]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle and its exact interface."""

    file: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class CacheLink:
    """Feeds `source` (an output of a previous run) into the decoder input `input`."""

    input: str
    source: str


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the encoder's `pixel_values`, as the model's image processor does it."""

    height: int
    width: int
    resample: str
    do_resize: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


@dataclass(frozen=True)
class SpecialTokens:
    decoder_start: int
    eos: Tuple[int, ...]
    pad: int


@dataclass(frozen=True)
class GenerationDefaults:
    """Decoding settings used when the caller gives none."""

    num_beams: int
    max_length: int
    min_length: int
    length_penalty: float
    early_stopping: Union[bool, str]
    no_repeat_ngram_size: int


@dataclass(frozen=True)
class CtcSpec:
    """The bundle's optional CTC head graph (see `htr.ctc`), its blank and skipped ids, and its default weight."""

    graph: GraphSpec
    blank: int
    skip: Tuple[int, ...]
    weight: float


@dataclass(frozen=True)
class ViewSpec:
    """How many shifted views of each line the runtime reads by default, and the encoder's patch width in model
    pixels that the shifts divide (None in bundles exported before views existed: only 1 view then)."""

    count: int = 1
    patch_width: Optional[int] = None


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked `manifest.json`; `raw` keeps the whole document for reporting."""

    root: Path
    graphs: Dict[str, GraphSpec]
    self_cache: Tuple[CacheLink, ...]
    cross_cache: Tuple[CacheLink, ...]
    decoder_heads: int
    decoder_head_dim: int
    special_tokens: SpecialTokens
    preprocessing: Preprocessing
    tokenizer_file: str
    clean_up_tokenization_spaces: bool
    generation: GenerationDefaults
    raw: Dict[str, Any]
    ctc: Optional[CtcSpec] = None  # None: the bundle has no CTC head
    views: ViewSpec = ViewSpec()

    def path(self, name: str) -> Path:
        return self.root / name


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks so large graphs do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Reader:
    """Reads typed values out of the manifest, naming the full key in every error."""

    def __init__(self, where: Path):
        self.where = where

    def get(self, node: Dict[str, Any], key: str, kind, path: str):
        if not isinstance(node, dict) or key not in node:
            raise BundleError(f"{self.where}: missing key '{path}{key}'")
        value = node[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise BundleError(f"{self.where}: '{path}{key}' should be {names}, found {value!r}")
        return value

    def tensors(self, node, key, path) -> Tuple[TensorSpec, ...]:
        specs = []
        for i, item in enumerate(self.get(node, key, list, path)):
            at = f"{path}{key}[{i}]."
            shape = tuple(self.get(item, "shape", list, at))
            specs.append(TensorSpec(self.get(item, "name", str, at), self.get(item, "dtype", str, at), shape))
        return tuple(specs)

    def links(self, node, key, path) -> Tuple[CacheLink, ...]:
        items = self.get(node, key, list, path)
        return tuple(
            CacheLink(self.get(x, "input", str, f"{path}{key}[{i}]."), self.get(x, "source", str, f"{path}{key}[{i}]."))
            for i, x in enumerate(items)
        )


def _check_cache_links(where: Path, graphs: Dict[str, GraphSpec], self_cache, cross_cache) -> None:
    """Raise BundleError unless the cache links feed exactly the decoder's inputs after its token ids."""
    decoder, cross = graphs["decoder"], graphs["cross_attention"]
    fed = [link.input for link in self_cache + cross_cache]
    if sorted(fed) != sorted(decoder.input_names()[1:]):
        raise BundleError(f"{where}: decoder_cache feeds {sorted(fed)}, but the decoder's inputs after the token ids are {sorted(decoder.input_names()[1:])}")
    for links, graph, name in ((self_cache, decoder, "decoder"), (cross_cache, cross, "cross_attention")):
        for link in links:
            if link.source not in graph.output_names():
                raise BundleError(f"{where}: decoder_cache source {link.source} is not an output of the {name} graph")


def default_bundle() -> Optional[Path]:
    """Return the bundle shipped inside the package (`htr/models/default`), or None when this install has none."""
    return DEFAULT_BUNDLE if (DEFAULT_BUNDLE / MANIFEST_NAME).is_file() else None


def load_manifest(bundle_dir: Union[str, Path], verify_files: bool = True) -> Manifest:
    """Return the checked manifest of a bundle folder.

    Raises `BundleNotFoundError` when the folder, the manifest or a listed file is absent, and
    `BundleError` when the manifest is malformed, of another schema version, or a file's sha256
    differs from the one recorded.
    """
    root = Path(bundle_dir)
    where = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleNotFoundError(f"model bundle not found: {root} is not a folder")
    if not where.is_file():
        raise BundleNotFoundError(f"{root} is not an htr bundle: it has no {MANIFEST_NAME}")
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where}: cannot be read as JSON ({e})") from e
    r = _Reader(where)
    version = r.get(raw, "schema_version", int, "")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{where}: schema version {version} is not supported by this htr (it reads version "
            f"{SCHEMA_VERSION}); re-export the model with a matching htr-export or upgrade htr"
        )

    files = r.get(raw, "files", dict, "")
    if verify_files:
        for name in files:
            expected = r.get(files[name], "sha256", str, f"files.{name}.")
            path = root / name
            if not path.is_file():
                raise BundleNotFoundError(f"{root}: bundle file {name} is missing")
            found = sha256_of(path)
            if found != expected:
                raise BundleError(
                    f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {found[:12]}…); "
                    "the bundle is damaged or was modified, copy or export it again"
                )

    graphs_node = r.get(raw, "graphs", dict, "")
    graphs = {}
    for name in GRAPH_NAMES:
        node = r.get(graphs_node, name, dict, "graphs.")
        path = f"graphs.{name}."
        graphs[name] = GraphSpec(r.get(node, "file", str, path), r.tensors(node, "inputs", path), r.tensors(node, "outputs", path))
        if graphs[name].file not in files:
            raise BundleError(f"{where}: graph file {graphs[name].file} is not listed under 'files'")

    cache = r.get(raw, "decoder_cache", dict, "")
    arch = r.get(raw, "architecture", dict, "")
    tokens = r.get(raw, "special_tokens", dict, "")
    pre = r.get(raw, "preprocessing", dict, "")
    tok = r.get(raw, "tokenizer", dict, "")
    gen = r.get(raw, "generation", dict, "")

    resample = r.get(pre, "resample", str, "preprocessing.")
    if resample not in RESAMPLE_NAMES:
        raise BundleError(f"{where}: preprocessing.resample is {resample!r}, expected one of {', '.join(RESAMPLE_NAMES)}")
    early = r.get(gen, "early_stopping", (bool, str), "generation.")
    if early not in (True, False, "never"):
        raise BundleError(f"{where}: generation.early_stopping is {early!r}, expected true, false or \"never\"")
    tokenizer_file = r.get(tok, "file", str, "tokenizer.")
    if tokenizer_file not in files:
        raise BundleError(f"{where}: tokenizer file {tokenizer_file} is not listed under 'files'")

    ctc = None
    if "ctc" in raw:
        node = r.get(raw, "ctc", dict, "")
        graph = GraphSpec(r.get(node, "file", str, "ctc."), r.tensors(node, "inputs", "ctc."), r.tensors(node, "outputs", "ctc."))
        ctc = CtcSpec(graph, r.get(node, "blank", int, "ctc."), tuple(r.get(node, "skip", list, "ctc.")), r.get(node, "weight", float, "ctc."))
        if graph.file not in files:
            raise BundleError(f"{where}: CTC head file {graph.file} is not listed under 'files'")
        out = graph.outputs
        if len(graph.inputs) != 1 or len(out) != 1 or not out[0].shape or not isinstance(out[0].shape[-1], int):
            raise BundleError(f"{where}: the CTC head graph should take one input and give one output ending in a fixed vocabulary size")
        if not 0.0 <= ctc.weight <= 1.0:
            raise BundleError(f"{where}: ctc.weight is {ctc.weight}, expected a number from 0 to 1")

    views = ViewSpec()
    if "views" in raw:
        node = r.get(raw, "views", dict, "")
        views = ViewSpec(r.get(node, "count", int, "views."), r.get(node, "patch_width", int, "views."))
        if views.count < 1:
            raise BundleError(f"{where}: views.count is {views.count}, expected 1 or more")
        if not 1 <= views.patch_width <= r.get(pre, "width", int, "preprocessing."):
            raise BundleError(f"{where}: views.patch_width is {views.patch_width}, expected from 1 to the model's input width")

    self_cache = r.links(cache, "self", "decoder_cache.")
    cross_cache = r.links(cache, "cross", "decoder_cache.")
    _check_cache_links(where, graphs, self_cache, cross_cache)

    return Manifest(
        root=root,
        graphs=graphs,
        self_cache=self_cache,
        cross_cache=cross_cache,
        decoder_heads=r.get(arch, "decoder_heads", int, "architecture."),
        decoder_head_dim=r.get(arch, "decoder_head_dim", int, "architecture."),
        special_tokens=SpecialTokens(
            decoder_start=r.get(tokens, "decoder_start", int, "special_tokens."),
            eos=tuple(r.get(tokens, "eos", list, "special_tokens.")),
            pad=r.get(tokens, "pad", int, "special_tokens."),
        ),
        preprocessing=Preprocessing(
            height=r.get(pre, "height", int, "preprocessing."),
            width=r.get(pre, "width", int, "preprocessing."),
            resample=resample,
            do_resize=r.get(pre, "do_resize", bool, "preprocessing."),
            do_rescale=r.get(pre, "do_rescale", bool, "preprocessing."),
            rescale_factor=r.get(pre, "rescale_factor", float, "preprocessing."),
            do_normalize=r.get(pre, "do_normalize", bool, "preprocessing."),
            mean=tuple(r.get(pre, "mean", list, "preprocessing.")),
            std=tuple(r.get(pre, "std", list, "preprocessing.")),
        ),
        tokenizer_file=tokenizer_file,
        clean_up_tokenization_spaces=r.get(tok, "clean_up_tokenization_spaces", bool, "tokenizer."),
        generation=GenerationDefaults(
            num_beams=r.get(gen, "num_beams", int, "generation."),
            max_length=r.get(gen, "max_length", int, "generation."),
            min_length=r.get(gen, "min_length", int, "generation."),
            length_penalty=r.get(gen, "length_penalty", float, "generation."),
            early_stopping=early,
            no_repeat_ngram_size=r.get(gen, "no_repeat_ngram_size", int, "generation."),
        ),
        raw=raw,
        ctc=ctc,
        views=views,
    )
