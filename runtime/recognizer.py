"""`htr.Recognizer`: the object that owns the ONNX sessions and reads handwriting with them."""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort

from .ctc import CtcCandidates, CtcHead, CtcPrefixScorer
from .errors import BundleError, BundleNotFoundError, OptionsError
from .images import ImageInput, load_image, preprocess, shifted_views
from .manifest import GraphSpec, Manifest, default_bundle, load_manifest
from .search import SearchSettings, beam_search, greedy_search, log_softmax
from .text import TextDecoder

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclass(frozen=True)
class Recognition:
    """What was read from one image: the text, its sequence score and the generated token ids."""

    text: str
    score: float
    tokens: Tuple[int, ...]


@dataclass(frozen=True)
class PageLine:
    """One line of a page: where it is (axis-aligned box and rotated outline, page pixels), what was read, and the
    text region (column or block, numbered in reading order) it belongs to."""

    box: Tuple[int, int, int, int]
    polygon: Tuple[Tuple[int, int], ...]
    text: str
    score: float
    tokens: Tuple[int, ...]
    region: int = 0


@dataclass(frozen=True)
class Page:
    """A page read line by line, in reading order; `rotation` is what made the page upright (degrees, counter-clockwise)."""

    width: int
    height: int
    rotation: float
    lines: List[PageLine]

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings as in transformers' `generate`; `None` takes the bundle's default.

    Lengths count the decoder start token, as transformers' `max_length`/`min_length` do;
    `max_new_tokens` counts generated tokens only and wins over `max_length`. `ctc_weight` is not a
    transformers setting: with 2 or more beams and a bundle that has a CTC head, the beam search
    weighs the head's reading with it (`htr.ctc`); 0 gives exactly `generate`'s result.

    `views` is not a transformers setting either: each line is read as that many copies, the v-th
    moved right by v/views of an encoder patch column (`htr.images.shifted_views`), and the search
    takes the mean of their log-probabilities at each step, decoder and CTC head alike. Where a
    letter falls across the patch grid then matters less, at up to `views` times the time a line;
    1 reads the line as the model does, as `generate` does.
    """

    num_beams: Optional[int] = None
    max_length: Optional[int] = None
    max_new_tokens: Optional[int] = None
    min_length: Optional[int] = None
    length_penalty: Optional[float] = None
    early_stopping: Optional[Union[bool, str]] = None
    no_repeat_ngram_size: Optional[int] = None
    ctc_weight: Optional[float] = None
    views: Optional[int] = None


@dataclass(frozen=True)
class _Decoding:
    """Resolved settings: the search's, the CTC weight (0: none) and the number of views."""

    search: SearchSettings
    ctc_weight: float
    views: int


def _check_graph(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
    """Raise `BundleError` unless the session's inputs and outputs are exactly those of the manifest."""
    for kind, found_args, expected in (
        ("inputs", session.get_inputs(), spec.inputs),
        ("outputs", session.get_outputs(), spec.outputs),
    ):
        found = [(a.name, _ORT_TYPES.get(a.type, a.type)) for a in found_args]
        wanted = [(t.name, t.dtype) for t in expected]
        if found != wanted:
            missing = [f"{n} ({d})" for n, d in wanted if (n, d) not in found]
            extra = [f"{n} ({d})" for n, d in found if (n, d) not in wanted]
            raise BundleError(
                f"{path}: graph {kind} do not match manifest.json; expected but not found: "
                f"{', '.join(missing) or 'none'}; found but not expected: {', '.join(extra) or 'none'}"
                + ("" if missing or extra else "; same names in another order")
            )


def _session(manifest: Manifest, spec: GraphSpec, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    """Return an ONNX Runtime session of one graph of the bundle, checked against the manifest."""
    path = manifest.path(spec.file)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=PROVIDERS[provider])
    except Exception as e:  # onnxruntime raises its own untyped errors for unreadable graphs
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({e})") from e
    _check_graph(session, spec, path)
    return session


class _CachedDecoder:
    """The decoder graph run one token at a time, its KV cache kept and reordered between calls."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, cross: Dict[str, np.ndarray], n_images: int):
        spec = manifest.graphs["decoder"]
        self._session = session
        self._ids_name = spec.inputs[0].name
        self._ids_dtype = np.dtype(spec.inputs[0].dtype)
        self._outputs = list(spec.output_names())
        self._self_links = manifest.self_cache
        dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self._cross_by_image = {link.input: cross[link.source] for link in manifest.cross_cache}
        self._cross = self._cross_by_image
        self._row_image = np.arange(n_images)
        empty = (n_images, manifest.decoder_heads, 0, manifest.decoder_head_dim)
        self._cache = {link.input: np.zeros(empty, dtype=dtypes[link.input]) for link in self._self_links}

    def __call__(self, tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
        """Return `(rows, vocab)` logits for the next token of each row of `tokens: (rows, cur_len)`."""
        if parents.size != self._row_image.size or np.any(parents != np.arange(parents.size)):
            self._cache = {k: v[parents] for k, v in self._cache.items()}
            row_image = self._row_image[parents]
            if row_image.size != self._row_image.size or np.any(row_image != self._row_image):
                self._cross = {k: v[row_image] for k, v in self._cross_by_image.items()}
            self._row_image = row_image
        feeds = {self._ids_name: np.ascontiguousarray(tokens[:, -1:], dtype=self._ids_dtype)}
        feeds.update(self._cross)
        feeds.update(self._cache)
        outputs = dict(zip(self._outputs, self._session.run(self._outputs, feeds)))
        self._cache = {link.input: outputs[link.source] for link in self._self_links}
        return outputs[self._outputs[0]][:, -1, :]


class _ViewMean:
    """A decoder step over `views` copies of each image: row r of the search runs as decoder rows
    r * views ... r * views + views - 1, and the step returns the mean of their log-probabilities."""

    def __init__(self, decoder: _CachedDecoder, views: int):
        self._decoder, self._views = decoder, views
        self._offsets = np.arange(views)

    def __call__(self, tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
        rows = (parents[:, None] * self._views + self._offsets).reshape(-1)
        logprobs = log_softmax(self._decoder(np.repeat(tokens, self._views, axis=0), rows))
        return logprobs.reshape(tokens.shape[0], self._views, -1).mean(axis=1)


class Recognizer:
    """Reads handwritten text lines with an htr bundle, torch-free.

    Parameters
    ----------
    bundle:
        Folder written by `htr-export`; None takes the bundle shipped with htr, where this install has one.
    provider:
        "cpu" (default) or "cuda" (needs the onnxruntime-gpu package).
    threads:
        Threads for each ONNX Runtime session; `None` lets ONNX Runtime choose.
    """

    def __init__(self, bundle: Union[str, Path, None] = None, provider: str = "cpu", threads: Optional[int] = None):
        if provider not in PROVIDERS:
            raise OptionsError(f"provider {provider!r} is not known: use one of {', '.join(PROVIDERS)}")
        if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OptionsError(
                "provider 'cuda' asked for, but this onnxruntime has no CUDA support: "
                "pip install onnxruntime-gpu (and uninstall onnxruntime), or use provider 'cpu'"
            )
        if threads is not None and threads < 1:
            raise OptionsError(f"threads must be at least 1, got {threads}")
        if bundle is None:
            bundle = default_bundle()
            if bundle is None:
                raise BundleNotFoundError("no bundle given and this install ships none: pass the folder written by htr-export")
        self.manifest = load_manifest(bundle)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._sessions = {name: _session(self.manifest, spec, options, provider) for name, spec in self.manifest.graphs.items()}
        ctc = self.manifest.ctc
        self._ctc: Optional[CtcHead] = None if ctc is None else CtcHead(_session(self.manifest, ctc.graph, options, provider), ctc)
        self._text = TextDecoder(self.manifest.path(self.manifest.tokenizer_file), self.manifest.clean_up_tokenization_spaces)
        gen = self.manifest.generation
        self.defaults = GenerationOptions(
            num_beams=gen.num_beams,
            max_length=gen.max_length,
            min_length=gen.min_length,
            length_penalty=gen.length_penalty,
            early_stopping=gen.early_stopping,
            no_repeat_ngram_size=gen.no_repeat_ngram_size,
            ctc_weight=ctc.weight if ctc is not None else 0.0,
            views=self.manifest.views.count,
        )

    def _settings(self, options: GenerationOptions) -> _Decoding:
        """Return the decoding settings for `options` over the bundle defaults, checked."""
        merged = self._merged(options)
        max_length = merged.max_length if merged.max_new_tokens is None else merged.max_new_tokens + 1
        tokens = self.manifest.special_tokens
        checks = (
            (merged.num_beams >= 1, f"beams must be at least 1, got {merged.num_beams}"),
            (max_length >= 2, f"max_length must be at least 2 (the start token and one more), got {max_length}"),
            (merged.min_length >= 0, f"min_length must be at least 0, got {merged.min_length}"),
            (merged.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size must be at least 0, got {merged.no_repeat_ngram_size}"),
            (merged.early_stopping in (True, False, "never"), f"early_stopping must be True, False or 'never', got {merged.early_stopping!r}"),
            (0.0 <= merged.ctc_weight <= 1.0, f"ctc_weight must be from 0 to 1, got {merged.ctc_weight}"),
            (merged.ctc_weight == 0.0 or self._ctc is not None,
             f"ctc_weight {merged.ctc_weight} asked for, but the bundle {self.manifest.root} has no CTC head: use ctc_weight 0"),
            (merged.views >= 1, f"views must be at least 1, got {merged.views}"),
            (merged.views == 1 or self.manifest.views.patch_width is not None,
             f"views {merged.views} asked for, but the bundle {self.manifest.root} does not record its encoder's patch width: "
             "use views 1, or export the bundle again with this htr-export"),
        )
        for ok, message in checks:
            if not ok:
                raise OptionsError(message)
        search = SearchSettings(
            num_beams=merged.num_beams,
            max_length=max_length,
            min_length=merged.min_length,
            length_penalty=float(merged.length_penalty),
            early_stopping=merged.early_stopping,
            no_repeat_ngram_size=merged.no_repeat_ngram_size,
            decoder_start=tokens.decoder_start,
            eos=tokens.eos,
            pad=tokens.pad,
        )
        return _Decoding(search, float(merged.ctc_weight), int(merged.views))

    def _merged(self, options: GenerationOptions) -> GenerationOptions:
        return replace(self.defaults, **{k: v for k, v in vars(options).items() if v is not None})

    def check_options(self, options: GenerationOptions) -> GenerationOptions:
        """Return the settings `options` resolve to over the bundle's defaults (every field set); raise
        `OptionsError` naming what is wrong when they do not suit this bundle (say, a CTC weight and no
        CTC head), before any image is read."""
        self._settings(options)
        return self._merged(options)

    @property
    def has_ctc_head(self) -> bool:
        """Whether the bundle carries a CTC head, for `GenerationOptions.ctc_weight`."""
        return self._ctc is not None

    def _encode_pixels(self, images: Sequence[ImageInput], views: int = 1) -> np.ndarray:
        """Return the encoder states of the images, `views` rows per image (`GenerationOptions.views`)."""
        loaded = [load_image(image) for image in images]
        if views > 1:
            shift = self.manifest.views.patch_width / self.manifest.preprocessing.width
            loaded = [view for image in loaded for view in shifted_views(image, views, shift, self.manifest.preprocessing)]
        pixels = preprocess(loaded, self.manifest.preprocessing)
        spec = self.manifest.graphs["encoder"]
        pixels = pixels.astype(spec.inputs[0].dtype, copy=False)
        return self._sessions["encoder"].run([spec.outputs[0].name], {spec.inputs[0].name: pixels})[0]

    def encode(self, images: Sequence[ImageInput], batch_size: int = 8) -> np.ndarray:
        """Return the encoder's last hidden states, float32 `(N, tokens, hidden)`, for visual features."""
        images = _as_list(images)
        _check_batch_size(batch_size)
        parts = [self._encode_pixels(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        if not parts:
            arch = self.manifest.raw.get("architecture", {})
            return np.zeros((0, arch.get("encoder_tokens", 0), arch.get("encoder_hidden_size", 0)), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def recognize(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        beams: Optional[int] = None,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        options: Optional[GenerationOptions] = None,
    ) -> List[Recognition]:
        """Return one `Recognition` per image, in input order.

        `beams` and `max_length` override `options`, which override the bundle's defaults.
        Images are paths, PIL images or numpy arrays; a bad one raises `ImageError` naming it.
        """
        images = _as_list(images)
        _check_batch_size(batch_size)
        overrides = {}
        if beams is not None:
            overrides["num_beams"] = beams
        if max_length is not None:
            overrides.update(max_length=max_length, max_new_tokens=None)
        options = replace(options or GenerationOptions(), **overrides)
        decoding = self._settings(options)
        results: List[Recognition] = []
        for start in range(0, len(images), batch_size):
            results.extend(self._recognize_batch(images[start : start + batch_size], decoding))
        return results

    def read_page(self, image: ImageInput, beams: Optional[int] = None, batch_size: int = 8, max_length: Optional[int] = None,
                  options: Optional[GenerationOptions] = None, layout=None) -> Page:
        """Find the text lines of a page image and read them; returns a `Page` with the lines in reading order.

        `layout` is a `htr.page.Layout` already found for this image (by `htr.page.analyse`), to skip finding it again.
        """
        from .page import analyse, crop_lines

        picture = load_image(image)
        layout = layout or analyse(picture)
        crops = crop_lines(layout)
        results = self.recognize(crops, beams=beams, batch_size=batch_size, max_length=max_length, options=options) if crops else []
        lines = [PageLine(found.box, found.polygon, r.text, r.score, r.tokens, found.region)
                 for found, r in zip(layout.lines, results)]
        return Page(picture.width, picture.height, layout.skew, lines)

    def _start_decoder(self, images: Sequence[ImageInput], hidden: Optional[np.ndarray] = None) -> _CachedDecoder:
        """Return a decoder step function for these images (one row per row of `hidden`, where given), their encoder
        and cross-attention work done."""
        if hidden is None:
            hidden = self._encode_pixels(images)
        spec = self.manifest.graphs["cross_attention"]
        outputs = spec.output_names()
        cross = dict(zip(outputs, self._sessions["cross_attention"].run(list(outputs), {spec.inputs[0].name: hidden})))
        return _CachedDecoder(self._sessions["decoder"], self.manifest, cross, hidden.shape[0])

    def _recognize_batch(self, images: Sequence[ImageInput], decoding: _Decoding) -> List[Recognition]:
        settings, views = decoding.search, decoding.views
        hidden = self._encode_pixels(images, views)
        decoder = self._start_decoder(images, hidden)
        if views > 1:
            decoder = _ViewMean(decoder, views)
        if settings.num_beams == 1:
            hypotheses = greedy_search(decoder, len(images), settings)
        elif decoding.ctc_weight > 0.0:
            ctc = self._ctc.log_probs(hidden)
            if views > 1:
                ctc = log_softmax(ctc.reshape(len(images), views, *ctc.shape[1:]).mean(axis=1))
            scorer = CtcPrefixScorer(self._ctc, ctc)
            hypotheses = beam_search(decoder, len(images), settings, CtcCandidates(scorer, decoding.ctc_weight, settings, len(images)))
        else:
            hypotheses = beam_search(decoder, len(images), settings)
        texts = self._text.decode([h.tokens for h in hypotheses])
        return [Recognition(text, h.score, tuple(int(t) for t in h.tokens)) for text, h in zip(texts, hypotheses)]


def _as_list(images) -> list:
    if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "getpixel"):
        return [images]
    return list(images)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise OptionsError(f"batch_size must be at least 1, got {batch_size}")
