"""htr: TrOCR-style handwriting recognition with ONNX Runtime, without PyTorch."""

from .errors import BundleError, BundleNotFoundError, HtrError, ImageError, ImageNotFoundError, OptionsError
from .recognizer import GenerationOptions, Page, PageLine, Recognition, Recognizer

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "BundleNotFoundError",
    "GenerationOptions",
    "HtrError",
    "ImageError",
    "ImageNotFoundError",
    "OptionsError",
    "Page",
    "PageLine",
    "Recognition",
    "Recognizer",
]
