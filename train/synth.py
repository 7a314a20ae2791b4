"""Synthetic handwritten text lines: random English text rendered with handwriting fonts, then degraded.

Every sample is a pure function of `(seed, index)`, so a dataset is reproducible and can be read
by several workers in any order. Fonts are split by family in `fonts.tsv`: `train` fonts are never
used for `eval` lines.
"""

import csv
import importlib.util
import io
import random
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from htr.errors import HtrError
from htr.page import unrotate

FONTS_TSV = Path(__file__).with_name("fonts.tsv")
WORDS = Path(__file__).with_name("words.txt")
SPLITS = ("train", "eval")
HERSHEY = "hershey:"  # fonts.tsv paths of the stroke fonts that the Hershey-Fonts package carries, e.g. `hershey:cursive`


@dataclass(frozen=True)
class Font:
    package: str
    path: str
    split: str
    licence: str
    capitals: str  # "yes" when the font draws lower case as capitals
    misdrawn: str = ""  # characters the font maps to glyphs of other characters (e.g. "$" drawn as a "b")


def load_fonts(split: str) -> List[Font]:
    """Return the installed fonts of a split; raise with the install command when none is installed."""
    if split not in SPLITS:
        raise HtrError(f"font split must be one of {', '.join(SPLITS)}, got {split!r}")
    rows = [line for line in FONTS_TSV.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    table = csv.DictReader(rows, delimiter="\t", quoting=csv.QUOTE_NONE, restval="")
    fonts = [Font(**{**row, "path": _installed_path(row["path"])}) for row in table]
    chosen = [f for f in fonts if f.split == split and (f.path.startswith(HERSHEY) or Path(f.path).is_file())]
    if not chosen:
        raise HtrError(f"no {split} font is installed; run scripts/install-fonts.sh and pip install '.[export]' (packages listed in {FONTS_TSV})")
    return chosen


def _installed_path(path: str) -> str:
    """Return where a font of fonts.tsv lies: an absolute path as it is (a Debian package's file), a relative one
    inside the Python package it names first (a PyPI font package's file, e.g. `font_intuitive/files/Intuitive.ttf`),
    a Hershey font's name as it is; an empty string when that package is not installed."""
    if path.startswith(HERSHEY):
        return path if importlib.util.find_spec("HersheyFonts") else ""
    if Path(path).is_absolute():
        return path
    module, _, rest = path.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(next(iter(spec.submodule_search_locations))) / rest)


@lru_cache(maxsize=1)
def _words() -> Tuple[str, ...]:
    return tuple(w for w in WORDS.read_text(encoding="utf-8").split() if w)


_NAMES = ("John", "Mary", "Smith", "Stanford", "Lathrop", "Jane", "Elizabeth", "Charles", "O'Brien", "McAllister", "Dr.", "Mrs.", "Mr.")
_MONTHS = ("Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec.")


def random_text(rng: random.Random) -> str:
    """Return one line of random English-like text: words, names, dates, numbers and punctuation, mixed case."""
    words = _words()
    parts = []
    for _ in range(rng.randint(1, 7)):
        kind = rng.random()
        if kind < 0.70:
            word = rng.choice(words)
            style = rng.random()
            word = word.capitalize() if style < 0.25 else word.upper() if style < 0.30 else word
        elif kind < 0.80:
            word = rng.choice(_NAMES)
        elif kind < 0.87:
            word = f"{rng.choice(_MONTHS)} {rng.randint(1, 31)}, {rng.randint(1850, 2030)}" if rng.random() < 0.5 else f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/{rng.randint(0, 99):02d}"
        else:
            word = rng.choice([str(rng.randint(0, 9999)), f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}", f"${rng.randint(1, 500)}", f"{rng.randint(1, 100)}%", f"No. {rng.randint(1, 99)}"])
        if rng.random() < 0.18:
            word += rng.choice([",", ".", ";", ":", "!", "?", "'s"])
        if rng.random() < 0.04:
            word = rng.choice(["(", '"', "'"]) + word + rng.choice([")", '"', "'"])
        parts.append(word)
    return " ".join(parts)


_STRING_CHARS = (string.ascii_lowercase, string.ascii_uppercase, string.digits, ",.;:!?'()\"$%/")
_STRING_WEIGHTS = (0.45, 0.25, 0.2, 0.1)


def random_string(rng: random.Random) -> str:
    """Return a line of random characters in groups of 1-8, lower and upper case, digits and the punctuation of
    `random_text`: text no word list predicts, so that a model must read every letter, capitals and digits included."""
    groups = []
    for _ in range(rng.randint(1, 6)):
        kinds = rng.choices(_STRING_CHARS, weights=_STRING_WEIGHTS, k=rng.randint(1, 8))
        groups.append("".join(rng.choice(kind) for kind in kinds))
    return " ".join(groups)


def _ink(rng: random.Random) -> Tuple[int, int, int]:
    base = rng.choice([(20, 20, 25), (25, 35, 90), (60, 40, 30), (40, 40, 40), (15, 30, 70)])
    return tuple(min(255, c + rng.randint(0, 60)) for c in base)


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=None)
def _lacking(path: str) -> frozenset:
    """Return the printable ASCII characters that a font has no glyph for: an outline font draws them as its .notdef
    glyph (what it draws for U+FFFF, which no font maps), a Hershey stroke font has no entry for them."""
    chars = string.ascii_letters + string.digits + string.punctuation
    if path.startswith(HERSHEY):
        glyphs = _hershey_glyphs(path[len(HERSHEY):])
        return frozenset(c for c in chars if c not in glyphs)
    font = _font(path, 32)

    def drawn(char: str) -> bytes:
        image = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(image).text((16, 16), char, fill=255, font=font)
        return image.tobytes()

    notdef = drawn("\uffff")
    return frozenset(c for c in chars if drawn(c) == notdef)


def _unwritable(font: Font) -> frozenset:
    """Return the characters a font cannot write: those it has no glyph for and those it draws as other characters."""
    return _lacking(font.path) | frozenset(font.misdrawn)


def _written(text: str, font: Font) -> str:
    """Return `text` as the font writes it, so that a line's label is what its image shows: in capitals for a font that
    draws lower case as capitals, and without the characters that the font cannot write (nor the doubled spaces that
    leaves)."""
    text = text.upper() if font.capitals == "yes" else text
    unwritable = _unwritable(font)
    if not unwritable.intersection(text):
        return text
    return " ".join("".join(c for c in text if c not in unwritable).split())


def _laid_out(text: str, width: int, size: int, advance: Callable[[str], float],
              glyph: Callable[[str, float], Tuple[Image.Image, float, float]], rng: random.Random) -> Image.Image:
    """Return a mask `width` wide and three sizes high of `text` laid out one character at a time from a pen that starts
    one size in, each character a little scaled, raised or lowered, turned and spaced its own way, as no hand writes a
    letter twice alike. `advance(char)` is how far the pen moves after a character at its own size; `glyph(char,
    scale)` draws it at that scale and says where its image goes, across from the pen and down from the mask's top."""
    mask = Image.new("L", (width, 3 * size), 0)
    x = float(size)
    for char in text:
        step = advance(char)
        if not char.isspace():
            scale = rng.uniform(0.88, 1.12)
            image, across, down = glyph(char, scale)
            image = image.rotate(rng.uniform(-6, 6), resample=Image.Resampling.BILINEAR, expand=True)
            mask.paste(255, (int(x + across), int(down + rng.uniform(-0.05, 0.05) * size)), image)
            step *= scale
        x += step + rng.uniform(-0.04, 0.06) * size
    return mask.crop(mask.getbbox() or (0, 0, 1, 1))


def _jittered_text(text: str, font: ImageFont.FreeTypeFont, size: int, stroke: int, rng: random.Random) -> Image.Image:
    """Return a mask of `text` in the font, each character drawn its own way (`_laid_out`)."""

    def glyph(char: str, scale: float) -> Tuple[Image.Image, float, float]:
        glyph_font = _font(font.path, max(8, round(size * scale)))
        box = glyph_font.getbbox(char, stroke_width=stroke)
        image = Image.new("L", (box[2] - box[0] + 4, box[3] - box[1] + 4), 0)
        ImageDraw.Draw(image).text((2 - box[0], 2 - box[1]), char, fill=255, font=glyph_font, stroke_width=stroke, stroke_fill=255)
        return image, box[0] * scale - 2, size + box[1] - 2

    return _laid_out(text, int(font.getlength(text) * 1.25) + 2 * size, size, font.getlength, glyph, rng)


def _baseline_glyph(char: str, font_path: str, size: int, stroke: int) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """Return the mask of one character (floats 0-1) and its box relative to the start of its baseline."""
    font = _font(font_path, size)
    box = font.getbbox(char, stroke_width=stroke, anchor="ls")
    glyph = Image.new("L", (max(1, box[2] - box[0]), max(1, box[3] - box[1])), 0)
    ImageDraw.Draw(glyph).text((-box[0], -box[1]), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255, anchor="ls")
    return np.asarray(glyph, dtype=np.float32) / 255.0, box


def _signed_distance(glyph: np.ndarray) -> np.ndarray:
    """Return each pixel centre's distance to the edge of the ink of a mask, negative inside the ink (the edge runs
    between pixels: +-0.5 on either side of it)."""
    from scipy.ndimage import distance_transform_edt

    ink = glyph >= 0.5
    if not ink.any():
        return np.full(glyph.shape, float(sum(glyph.shape)), dtype=np.float32)
    return np.where(ink, 0.5 - distance_transform_edt(ink), distance_transform_edt(~ink) - 0.5).astype(np.float32)


def _blended_glyph(char: str, paths: Sequence[str], shares: Sequence[float], size: int, stroke: int) -> Tuple[Image.Image, Tuple[int, int, int, int]]:
    """Return a character written in a hand between two or more fonts, and its box relative to the baseline: each
    font's glyph is stretched to the box that mixes theirs by `shares` (one per font, summing to 1) and their signed
    distance fields mixed by the same shares; the ink is where the mix lies below the level that leaves as much ink as
    the glyphs have, mixed the same way, so that where the fonts' strokes do not meet, the strokes between them keep
    their weight. A font with a share of 1 gives its own glyph."""
    glyphs = [_baseline_glyph(char, path, size, stroke) for path in paths]
    box = tuple(round(sum(share * own[i] for share, (_, own) in zip(shares, glyphs))) for i in range(4))
    width, height = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    pad = max(2, size // 8)
    field, ink = np.zeros((height + 2 * pad, width + 2 * pad), dtype=np.float32), 0.0
    for (glyph, _), share in zip(glyphs, shares):
        stretched = np.asarray(Image.fromarray((glyph * 255).astype(np.uint8), "L").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        ink += share * float((stretched >= 0.5).sum())
        field += share * _signed_distance(np.pad(stretched, pad))
    keep, padded = round(ink), (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
    if keep == 0:
        return Image.new("L", field.shape[::-1], 0), padded
    ordered = np.partition(field.ravel(), (keep - 1, keep))
    level = (ordered[keep - 1] + ordered[keep]) / 2  # the edge between the last pixel in and the first out
    mask = np.clip(0.5 - (field - level), 0.0, 1.0)  # a pixel-wide soft edge
    return Image.fromarray((mask * 255).astype(np.uint8), "L"), padded


def _blended_text(text: str, paths: Sequence[str], shares: Sequence[float], size: int, stroke: int, rng: random.Random) -> Image.Image:
    """Return a mask of `text` in a hand between fonts (`_blended_glyph`, mixed by `shares`), each character drawn its
    own way (`_laid_out`): fonts and shares give a hand none of the fonts has."""
    fonts = [_font(path, size) for path in paths]

    def advance(char: str) -> float:
        return sum(share * font.getlength(char) for share, font in zip(shares, fonts))

    def glyph(char: str, scale: float) -> Tuple[Image.Image, float, float]:
        image, box = _blended_glyph(char, paths, shares, max(8, round(size * scale)), stroke)
        return image, box[0], 2 * size + box[1]

    return _laid_out(text, int(max(f.getlength(text) for f in fonts) * 1.25) + 2 * size, size, advance, glyph, rng)


@lru_cache(maxsize=16)
def _hershey_glyphs(name: str) -> dict:
    from HersheyFonts import HersheyFonts

    font = HersheyFonts()
    font.load_default_font(name)
    return font.all_glyphs


def _stroke_text(text: str, font_path: str, size: int, rng: random.Random, vary: bool) -> Image.Image:
    """Return a mask of `text` in a Hershey stroke font: each glyph's centre lines, scaled so that cap line to
    descender line is `size` pixels (with `vary` each glyph also scaled, sheared, turned, raised and spaced its own
    way), drawn with a random pen (`_pen`)."""
    glyphs = _hershey_glyphs(font_path[len(HERSHEY):])
    unit = size / 28.0  # Hershey glyphs run from the cap line at -12 units to the descender line at 16
    strokes, x = [], 0.0
    for char in text:
        glyph = glyphs.get(char)
        if glyph is None:  # a line must show all of its label
            raise HtrError(f"{font_path} has no glyph for {char!r}")
        scale, squash, shear, turn, rise = 1.0, 1.0, 0.0, 0.0, 0.0
        if vary:
            scale, squash = rng.uniform(0.88, 1.12), rng.uniform(0.92, 1.08)
            shear, turn, rise = rng.uniform(-0.15, 0.15), np.radians(rng.uniform(-6, 6)), rng.uniform(-0.05, 0.05) * size
        cos, sin = np.cos(turn) * scale * unit, np.sin(turn) * scale * unit
        middle = glyph.char_width / 2.0
        for stroke in glyph.strokes:
            points = []
            for gx, gy in stroke:
                gx, gy = gx - glyph.left_offset - middle + shear * gy, gy * squash
                points.append((x + middle * scale * unit + cos * gx - sin * gy, rise + sin * gx + cos * gy))
            strokes.append(points)
        x += glyph.char_width * scale * unit + (rng.uniform(-0.04, 0.06) * size if vary else 0.0)
    pad = size
    centre = Image.new("1", (int(x) + 2 * pad, 3 * size), 0)
    draw = ImageDraw.Draw(centre)
    for points in strokes:
        draw.line([(px + pad, py + 1.5 * size) for px, py in points], fill=1, width=1)
    mask = _pen(np.asarray(centre, dtype=bool), size, rng)
    return mask.crop(mask.getbbox() or (0, 0, 1, 1))


def _elastic(mask: Image.Image, amplitude: float, cell: float, np_rng: np.random.Generator) -> Image.Image:
    """Return `mask` warped by a random displacement of up to about `amplitude` pixels that changes smoothly over `cell` pixels."""
    h, w = mask.height, mask.width
    grid = (max(2, int(h / cell) + 1), max(2, int(w / cell) + 1))
    fields = [np.asarray(Image.fromarray(np_rng.uniform(-1, 1, grid).astype(np.float32), "F").resize((w, h), Image.Resampling.BICUBIC)) for _ in range(2)]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = np.clip(ys + amplitude * fields[0], 0, h - 1), np.clip(xs + amplitude * fields[1], 0, w - 1)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = ys - y0, xs - x0
    source = np.asarray(mask, dtype=np.float32)
    top = source[y0, x0] * (1 - fx) + source[y0, x1] * fx
    bottom = source[y1, x0] * (1 - fx) + source[y1, x1] * fx
    return Image.fromarray(np.clip(top * (1 - fy) + bottom * fy, 0, 255).astype(np.uint8), "L")


def _stroke_width(mask: Image.Image, rng: random.Random) -> Image.Image:
    """Return `mask` with its strokes thickened or thinned by one or two pixels a side, as a broader or finer pen writes;
    thinning is skipped where it would take away more than half the ink (strokes too fine to lose a pixel)."""
    if rng.random() < 0.5:
        return mask.filter(ImageFilter.MaxFilter(rng.choice((3, 3, 5))))
    thinned = mask.filter(ImageFilter.MinFilter(rng.choice((3, 3, 5))))
    ink = np.asarray(mask, dtype=np.float32).sum()
    return thinned if np.asarray(thinned, dtype=np.float32).sum() >= 0.5 * ink else mask


def _thin(ink: np.ndarray) -> np.ndarray:
    """Return the centre lines of the strokes of a boolean image, one pixel wide (Zhang and Suen's thinning, 1984)."""
    image = np.pad(ink, 1).astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for first_pass in (True, False):
            # the 8 neighbours of each pixel, clockwise from the one above
            p2, p3, p4, p5 = image[:-2, 1:-1], image[:-2, 2:], image[1:-1, 2:], image[2:, 2:]
            p6, p7, p8, p9 = image[2:, 1:-1], image[2:, :-2], image[1:-1, :-2], image[:-2, :-2]
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            neighbours = p2 + p3 + p4 + p5 + p6 + p7 + p8 + p9
            crossings = sum(((a == 0) & (b == 1)).astype(np.uint8) for a, b in zip(ring, ring[1:]))
            if first_pass:
                side = ((p2 * p4 * p6) == 0) & ((p4 * p6 * p8) == 0)
            else:
                side = ((p2 * p4 * p8) == 0) & ((p2 * p6 * p8) == 0)
            remove = (image[1:-1, 1:-1] == 1) & (neighbours >= 2) & (neighbours <= 6) & (crossings == 1) & side
            if remove.any():
                image[1:-1, 1:-1][remove] = 0
                changed = True
    return image[1:-1, 1:-1].astype(bool)


def _repen(mask: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Return `mask` written again with another pen: its strokes thinned to their centre lines and drawn over by `_pen`,
    so one font gives the hands of many pens."""
    return _pen(_thin(np.asarray(mask) >= 128), size, rng)


def _pen(centre: np.ndarray, size: int, rng: random.Random) -> Image.Image:
    """Return a mask of centre lines (a boolean image) drawn with a round pen or a broad nib held at an angle (thick
    and thin strokes by direction), its width in proportion to the writing's `size`."""
    if rng.random() < 0.5:
        radius = max(1.0, rng.uniform(0.015, 0.05) * size)
        reach = int(radius)
        nib = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1) if dy * dy + dx * dx <= radius * radius]
    else:
        half = max(1.5, rng.uniform(0.03, 0.07) * size)
        angle = np.radians(rng.uniform(15, 60))
        nib = sorted({(round(-t * np.sin(angle)) + dy, round(t * np.cos(angle)))
                      for t in np.linspace(-half, half, int(4 * half) + 1) for dy in (0, 1)})
    h, w = centre.shape
    drawn = np.zeros_like(centre)
    for dy, dx in nib:  # dilate the centre lines by the nib's shape
        drawn[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= centre[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return Image.fromarray(drawn.astype(np.uint8) * 255, "L").filter(ImageFilter.GaussianBlur(0.6))


def _padded(mask: Image.Image, pad: int) -> Image.Image:
    padded = Image.new("L", (mask.width + 2 * pad, mask.height + 2 * pad), 0)
    padded.paste(mask, (pad, pad))
    return padded


def render_line(text: str, font_path: str, rng: random.Random, vary: bool = False,
                blend: Optional[Sequence[Tuple[str, float]]] = None) -> Image.Image:
    """Return an RGB image of `text` written in the font (a font file, or `hershey:NAME` for a Hershey stroke font,
    drawn by `_stroke_text`), slanted, rotated, inked, on textured paper.

    With `vary` (training lines), the writing also varies as a hand does: on most lines each
    character is drawn a little differently (`_jittered_text`); on some the font is written again
    with another pen (`_repen`) or its strokes are made broader or finer (`_stroke_width`); and the
    strokes are warped by a smooth random displacement, so that a model learns letters rather than
    a font's exact shapes. `blend` (other font files, each with its share; the line's own font
    has the rest) writes the line in a hand between the fonts (`_blended_text`).
    """
    size = rng.randint(26, 60)
    pad = size // 2
    if font_path.startswith(HERSHEY):
        mask = _padded(_stroke_text(text, font_path, size, rng, vary), pad)
    else:
        font = _font(font_path, size)
        stroke = rng.choice([0, 0, 0, 1]) if size > 34 else 0
        if blend is not None:
            others, shares = zip(*blend)
            mask = _padded(_blended_text(text, (font_path, *others), (1 - sum(shares), *shares), size, stroke, rng), pad)
        elif vary and rng.random() < 0.7:
            mask = _padded(_jittered_text(text, font, size, stroke, rng), pad)
        else:
            left, top, right, bottom = font.getbbox(text)
            mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
            ImageDraw.Draw(mask).text((pad - left, pad - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if vary:
        pen = rng.random()
        if pen < 0.25:
            mask = _repen(mask, size, rng)
        elif pen < 0.5:
            mask = _stroke_width(mask, rng)
    if vary and rng.random() < 0.8:
        mask = _elastic(mask, rng.uniform(0.02, 0.10) * size, size / 2, np.random.default_rng(rng.getrandbits(32)))
    width, height = mask.size

    # Slant (shear) and a small rotation of the writing.
    shear = rng.uniform(-0.35, 0.35)
    mask = mask.transform((width + int(abs(shear) * height), height), Image.Transform.AFFINE,
                          (1, shear, -shear * height if shear > 0 else 0, 0, 1, 0), resample=Image.Resampling.BILINEAR)
    mask = mask.rotate(rng.uniform(-2.5, 2.5), resample=Image.Resampling.BILINEAR, expand=True)
    box = mask.getbbox() or (0, 0, mask.width, mask.height)
    margin_x, margin_y = rng.randint(2, 24), rng.randint(1, 10)
    crop = (box[0] - margin_x, box[1] - margin_y, box[2] + margin_x, box[3] + margin_y)
    if rng.random() < 0.15:  # clip ascenders or descenders as a tight line crop does
        cut = rng.randint(1, max(2, (box[3] - box[1]) // 8))
        crop = (crop[0], crop[1] + cut, crop[2], crop[3]) if rng.random() < 0.5 else (crop[0], crop[1], crop[2], crop[3] - cut)
    mask = mask.crop(crop)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    h, w = mask.height, mask.width

    # Paper: a tint, grain, and lighting that changes across the line.
    paper = np.array([rng.randint(205, 255), rng.randint(200, 250), rng.randint(185, 240)], dtype=np.float32)
    light = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0), w, dtype=np.float32)[None, :, None]
    light = light * np.linspace(rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0), h, dtype=np.float32)[:, None, None]
    page = paper[None, None, :] * light + np_rng.normal(0, rng.uniform(1, 9), size=(h, w, 1)).astype(np.float32)
    if rng.random() < 0.25:  # ruled lines
        rule = np.array([rng.randint(120, 200), rng.randint(140, 210), rng.randint(180, 240)], dtype=np.float32)
        spacing = rng.randint(max(8, h // 2), max(9, h))
        for y in range(rng.randint(0, spacing - 1), h, spacing):
            page[y] = page[y] * 0.4 + rule * 0.6

    # Ink with uneven pressure and fading.
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    fade = rng.uniform(0.55, 1.0) * (1 - np_rng.uniform(0, rng.uniform(0, 0.35), size=(h, w)).astype(np.float32))
    alpha = (alpha * fade)[:, :, None]
    pixels = page * (1 - alpha) + np.array(_ink(rng), dtype=np.float32) * alpha
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.2)))
    if rng.random() < 0.3:
        noisy = np.asarray(image, dtype=np.float32) + np_rng.normal(0, rng.uniform(2, 12), size=(h, w, 1))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rng.randint(25, 90))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


class SyntheticLines:
    """An indexable, endless-ish set of `(image, text)` samples for one font split.

    `vary` (default: for the train split) draws each line's characters and strokes with a hand's
    variation (see `render_line`); evaluation lines are the fonts as they are. `strings` is the
    share of lines that are random characters (`random_string`) instead of words (default: 0.15
    for the train split, none for eval, whose lines stay comparable from run to run). `blends` is
    the share of lines written in a hand between their font and another of the split that draws
    case the same way (`_blended_text`; default: half the train split, none for eval), and `trios`
    the share of those blended from three such fonts instead of two (default: half).
    """

    def __init__(self, split: str = "train", seed: int = 0, size: int = 1_000_000, vary: Optional[bool] = None,
                 strings: Optional[float] = None, blends: Optional[float] = None, trios: float = 0.5):
        self.fonts = load_fonts(split)
        self.split, self.seed, self.size = split, seed, size
        self.vary = split == "train" if vary is None else vary
        self.strings = (0.15 if split == "train" else 0.0) if strings is None else strings
        self.blends = (0.5 if split == "train" else 0.0) if blends is None else blends
        self.trios = trios
        outline = [f for f in self.fonts if not f.path.startswith(HERSHEY)]
        self.partners = {f.path: [p for p in outline if p.capitals == f.capitals and p.path != f.path] for f in outline}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tuple[Image.Image, str]:
        image, text, _ = self.sample(index)
        return image, text

    def sample(self, index: int) -> Tuple[Image.Image, str, Font]:
        """Return line `index`: its image, its text and the font it was written in."""
        rng = random.Random(f"{self.split}:{self.seed}:{index}")
        text = random_text(rng)
        if self.strings and rng.random() < self.strings:
            text = random_string(rng)
        font = rng.choice(self.fonts)
        text = _written(text, font)
        if not text:  # every character was one the font lacks (random characters in a font without some punctuation)
            text = _written(random_text(rng), font)
        blend = None
        if self.blends and font.path in self.partners and rng.random() < self.blends:
            partners = [p for p in self.partners[font.path] if not _unwritable(p).intersection(text)]
            if partners:
                other = rng.choice(partners)
                blend = [(other.path, rng.uniform(0.3, 0.7))]
                thirds = [p for p in partners if p.path != other.path]
                if self.trios and thirds and rng.random() < self.trios:
                    low, high = sorted((rng.random(), rng.random()))  # a point drawn evenly from the triangle of shares,
                    shares = [0.15 + 0.55 * x for x in (low, high - low, 1 - high)]  # each font's at least 0.15
                    blend = [(other.path, shares[1]), (rng.choice(thirds).path, shares[2])]
        return render_line(text, font.path, rng, vary=self.vary, blend=blend), text, font



@dataclass(frozen=True)
class PageSample:
    """A synthetic page: the image, and per line its text and its outline (four corners, page pixels) in reading order."""

    image: Image.Image
    texts: List[str]
    polygons: List[Tuple[Tuple[float, float], ...]]
    skew: float


def render_page(fonts: List[Font], rng: random.Random, lines: Optional[int] = None, max_skew: float = 5.0,
                spacing: Tuple[float, float] = (1.5, 2.3), line_tilt: float = 0.0, columns: int = 1,
                heading: bool = False) -> PageSample:
    """Return a page of handwritten lines in one font: margins, uneven paper, noise, optional ruling, rotated by up to `max_skew` degrees.

    `spacing` is the range of the distance between lines in font sizes; below about 1.3 ascenders
    and descenders of neighbouring lines touch. `line_tilt` turns each line by its own angle, up to
    that many degrees either way, as lines drift on an unruled handwritten page, but never so far
    that its ends come closer to a neighbouring line than 0.2 of the gap between them. `columns` sets
    the lines in that many columns side by side, 2-5 font sizes apart, each with its own number of
    lines; `heading` writes a line across the page above them, 2-3 line spacings higher. Lines come
    in reading order: the heading, then column by column.
    """
    font_choice = rng.choice([f for f in fonts if not f.path.startswith(HERSHEY)])  # outline fonts only
    size = rng.randint(28, 52)
    font = ImageFont.truetype(font_choice.path, size)
    spacing = int(size * rng.uniform(*spacing))
    count = lines or rng.randint(3, 14)
    width = rng.randint(1100, 1700)
    margin_x, margin_y = rng.randint(40, 160), rng.randint(40, 160)
    counts = [count] + [lines or rng.randint(3, 14) for _ in range(columns - 1)]
    gutter = int(size * rng.uniform(2.0, 5.0)) if columns > 1 else 0
    first = margin_y + (int(spacing * rng.uniform(2.0, 3.0)) if heading else 0)  # the first row of the columns
    # each line's place in reading order: (left, top, widest text), a line starting up to 30 pixels right of its left
    room = (width - 2 * margin_x - gutter * (columns - 1)) // columns
    slots = [(margin_x, margin_y, width - 2 * margin_x)] if heading else []
    slots += [(margin_x + c * (room + gutter), first + i * spacing, room - 30 if columns > 1 else room)
              for c in range(columns) for i in range(counts[c])]
    rows = sorted({top for _, top, _ in slots} | {first + max(counts) * spacing})
    height = first + spacing * max(counts) + size + margin_y
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    texts, outlines = [], []
    for slot_x, slot_y, widest in slots:
        text = _written(" ".join(random_text(rng) for _ in range(2)), font_choice)
        while text and font.getbbox(text)[2] > widest:
            text = text.rsplit(" ", 1)[0] if " " in text else text[:-1]
        x = slot_x + rng.randint(0, 30)
        y = slot_y + rng.randint(-size // 10, size // 10)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        corners = ((left, top), (right, top), (right, bottom), (left, bottom))
        tilt = rng.uniform(-line_tilt, line_tilt) if line_tilt else 0.0
        if tilt:  # writers keep lines apart: a line's ends drift by at most 0.4 of the gap to its neighbours
            drift = 0.4 * max(0, spacing - (bottom - top)) / max(1.0, (right - left) / 2.0)
            tilt = float(np.clip(tilt, -np.degrees(np.arctan(drift)), np.degrees(np.arctan(drift))))
        if tilt:
            layer = Image.new("L", mask.size, 0)
            ImageDraw.Draw(layer).text((x, y), text, fill=255, font=font)
            centre = ((left + right) / 2.0, (top + bottom) / 2.0)
            mask.paste(255, mask=layer.rotate(tilt, resample=Image.Resampling.BILINEAR, center=centre))
            corners = tuple(unrotate(cx, cy, -tilt, centre) for cx, cy in corners)  # where rotate(tilt) moves them
        else:
            draw.text((x, y), text, fill=255, font=font)
        texts.append(text)
        outlines.append(corners)
    paper = np.array([rng.randint(215, 255), rng.randint(210, 250), rng.randint(195, 240)], dtype=np.float32)
    light = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), width, dtype=np.float32)[None, :, None]
    light = light * np.linspace(rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0), height, dtype=np.float32)[:, None, None]
    np_rng = np.random.default_rng(rng.getrandbits(32))
    page = paper[None, None, :] * light + np_rng.normal(0, rng.uniform(1, 8), size=(height, width, 1)).astype(np.float32)
    if rng.random() < 0.4:  # ruled paper under the lines
        rule = np.array([150, 170, 215], dtype=np.float32)
        for row in rows:
            y = row + int(size * 1.15)
            if 0 <= y < height:
                page[y] = page[y] * 0.45 + rule * 0.55
    alpha = (np.asarray(mask, dtype=np.float32) / 255.0 * rng.uniform(0.7, 1.0))[:, :, None]
    pixels = page * (1 - alpha) + np.array(_ink(rng), dtype=np.float32) * alpha
    specks = np_rng.random((height, width)) < rng.uniform(0, 0.0004)
    pixels[specks] = 40.0
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    skew = rng.uniform(-max_skew, max_skew)
    image = image.rotate(skew, resample=Image.Resampling.BICUBIC, fillcolor=tuple(int(c) for c in pixels.reshape(-1, 3).mean(axis=0)))
    centre = (width / 2.0, height / 2.0)
    polygons = [tuple(unrotate(x, y, -skew, centre) for x, y in corners) for corners in outlines]  # where rotate(skew) moves them
    return PageSample(image, texts, polygons, skew)


def write_folder(folder: Path, count: int, split: str, seed: int) -> Path:
    """Write `count` synthetic lines as JPEG files with `labels.tsv` and `sources.tsv` (font and licence of each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = SyntheticLines(split, seed=seed)
    with open(folder / "labels.tsv", "w", encoding="utf-8") as labels, open(folder / "sources.tsv", "w", encoding="utf-8") as sources:
        sources.write("path\tfont_package\tfont_file\tfont_licence\n")
        for index in range(count):
            image, text, font = lines.sample(index)
            name = f"{split}-{seed}-{index:04d}.jpg"
            image.save(folder / name, quality=92)
            labels.write(f"{name}\t{text}\n")
            sources.write(f"{name}\t{font.package}\t{Path(font.path).name}\t{font.licence}\n")
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write synthetic handwriting lines with labels.tsv and sources.tsv.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    print(write_folder(arguments.folder, arguments.count, arguments.split, arguments.seed))
