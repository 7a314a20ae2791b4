"""Reading images and turning them into `pixel_values` exactly as the model's image processor does."""

import math
import warnings
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageNotFoundError
from .manifest import Preprocessing

ImageInput = Union[str, Path, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _describe(image: ImageInput) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"{type(image).__name__} input"


def _from_array(array: np.ndarray) -> Image.Image:
    """Return a PIL image for an `(H, W)`, `(H, W, 1|3|4)` uint8/uint16 or [0, 1] float array."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {array.shape} is not an image: expected (H, W) or (H, W, 1|3|4)")
    if array.dtype == np.uint16:
        array = np.round(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
            raise ImageError("float array images must hold values in [0, 1]")
        array = np.round(np.nan_to_num(array) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"array of dtype {array.dtype} is not supported: use uint8, uint16 or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image: transparency composited on white paper, 16/32-bit grey scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: ImageInput) -> Image.Image:
    """Return the input as an RGB PIL image, EXIF orientation applied.

    Raises `ImageNotFoundError` for a missing path and `ImageError` for anything that is not a
    readable image, naming the input.
    """
    name = _describe(image)
    try:
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.exists():
                raise ImageNotFoundError(f"{path}: no such file")
            if path.is_dir():
                raise ImageError(f"{path}: is a folder, not an image")
            with warnings.catch_warnings():
                # Past Image.MAX_IMAGE_PIXELS PIL only warns; a decompression bomb is refused here.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    image = ImageOps.exif_transpose(opened)
        elif isinstance(image, np.ndarray):
            image = _from_array(image)
        elif isinstance(image, Image.Image):
            image = ImageOps.exif_transpose(image)
        else:
            raise ImageError(f"unsupported image input of type {type(image).__name__}: give a path, a PIL image or a numpy array")
        if image.width < 1 or image.height < 1:
            raise ImageError(f"{name}: image is empty ({image.width}x{image.height})")
        return _to_rgb(image)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image file or an unsupported format") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused, too many pixels ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: cannot be decoded ({e})") from e


def shifted_views(image: Image.Image, count: int, shift: float, spec: Preprocessing) -> List[Image.Image]:
    """Return `count` views of an RGB image for the model: the image itself, then copies moved right by
    `v / count * shift` of its width (v = 1 ... count - 1), already resized to the model's input size.

    The move is by a fraction of a pixel as much as by whole ones: the image's left edge column (the
    paper, in a cropped line) is repeated and the resize reads from a point that far left of the
    image, so a narrow line moves as far, in the model's pixels, as a wide one. `shift` = patch
    width / model width moves the content by about one encoder patch column.
    """
    views, pixels = [image], np.asarray(image)
    for v in range(1, count):
        move = v / count * shift * image.width  # source pixels
        margin = math.ceil(move) + 1
        padded = Image.fromarray(np.pad(pixels, ((0, 0), (margin, 0), (0, 0)), mode="edge"))
        box = (margin - move, 0.0, float(padded.width), float(padded.height))
        views.append(padded.resize((spec.width, spec.height), resample=_RESAMPLE[spec.resample], box=box))
    return views


def preprocess(images: Sequence[Image.Image], spec: Preprocessing) -> np.ndarray:
    """Return `pixel_values: (N, 3, H, W)` float32 for RGB images, as the transformers image processor computes them."""
    out = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    for i, image in enumerate(images):
        if spec.do_resize:
            image = image.resize((spec.width, spec.height), resample=_RESAMPLE[spec.resample])
        elif image.size != (spec.width, spec.height):
            raise ImageError(f"image is {image.width}x{image.height} but this model takes exactly {spec.width}x{spec.height} and does not resize")
        pixels = np.asarray(image)
        if spec.do_rescale:
            pixels = (pixels.astype(np.float64) * spec.rescale_factor).astype(np.float32)
        else:
            pixels = pixels.astype(np.float32)
        if spec.do_normalize:
            pixels = (pixels - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
        out[i] = pixels.transpose(2, 0, 1)
    return out
