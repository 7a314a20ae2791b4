"""Whole pages: find the text lines of a page image (numpy and Pillow only) and keep them in reading order.

The steps, each a small function:

1. `ink_map`: grey levels divided by a smooth estimate of the paper (so uneven lighting and
   shadows drop out), as ink darkness in [0, 1];
2. `binarize`: Otsu's threshold on that map, with a floor so that a blank page finds no ink,
   and a 3x3 opening that removes noise specks;
3. `estimate_skew`: the angle (within +-MAX_SKEW degrees) whose horizontal ink profile is sharpest;
4. `find_regions`: the deskewed page cut into text regions (columns, and blocks above or below
   them) at blank gutters and breaks measured in line spacings (read from the rows' ink
   profile's autocorrelation): a recursive XY cut;
5. `find_bands`: in each region, the rows' ink profile, smoothed at the scale of the line
   spacing, split at its valleys into line bands;
6. `follow_line`: each band's line is followed strip by strip, since handwritten lines drift, each
   with its own slope, leaving out strips where only a neighbour's edge is in reach; the ink along
   it is trimmed (`_trim`: the ink connected to its middle, not specks or neighbours' ends), and
   its outline (a parallelogram along the line's slope) is mapped back to the page as `polygon`,
   with its axis-aligned `box`;
7. `_uncovered`: the ink that no line's cut holds goes through steps 5 and 6 again, since two
   lines sloping towards each other can share one band, of which step 6 follows one; what it
   finds with at least LEFTOVER_SHARE of the region's most inked line's ink is a line too.

Reading order: regions as the cuts give them (columns left to right, blocks top to bottom), and
each region's lines top to bottom. A region is a column only where a blank gutter runs from its top
to its bottom, so a table or form read this way comes column by column.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

MAX_SKEW = 6.0  # degrees searched either way
ANALYSIS_SIDE = 1600  # pages are analysed at most this many pixels on their long side
MIN_INK = 0.2  # ink darker than paper by less than this is paper (blank pages and lighting gradients find nothing)
LINE_MARGIN_Y = 0.15  # a line is cut with this share of its ink height above and below ...
LINE_MARGIN_X = 0.4  # ... and this share left and right (line images in training sets keep some paper)
MAX_INK_SHARE = 0.3  # a page more inked than this is noise or a photograph, not writing: no lines are found
VALLEY_SHARE = 0.5  # two lines need a valley in the row profile below this share of the lower peak
RULE_SHARE = 0.5  # rows or columns inked over more than this share are rules, borders or edges, not writing
MIN_GUTTER = 0.75  # blank columns at least this many line spacings wide, top to bottom of a block, part text columns
MIN_PIECE_SHARE = 0.02  # ink apart from a line by more than its height, holding less than this share of it, is not part of it
MIN_BREAK = 1.0  # blank rows at least this many line spacings high part blocks (a heading over columns)


@dataclass(frozen=True)
class LineRegion:
    """One text line on the page: its axis-aligned box (left, top, right, bottom) and its outline (top-left, top-right,
    bottom-right, bottom-left: a parallelogram along the line, rotated with the page), in page pixels; `region`
    numbers the text region (column or block) it belongs to, in reading order."""

    box: Tuple[int, int, int, int]
    polygon: Tuple[Tuple[int, int], ...]
    region: int = 0


@dataclass(frozen=True)
class Layout:
    """The lines of a page in reading order, the rotation (degrees, counter-clockwise) that made it upright, and its size."""

    lines: List[LineRegion]
    skew: float
    size: Tuple[int, int]
    deskewed: Image.Image  # the page rotated upright at full resolution: line crops are cut from it


def ink_map(gray: np.ndarray) -> np.ndarray:
    """Return ink darkness in [0, 1]: 1 - grey / local paper brightness."""
    h, w = gray.shape
    small = Image.fromarray(gray.astype(np.uint8)).resize((max(1, w // 16), max(1, h // 16)), Image.Resampling.BOX)
    paper = small.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1.5)).resize((w, h), Image.Resampling.BILINEAR)
    paper = np.maximum(np.asarray(paper, dtype=np.float32), 1.0)
    return np.clip(1.0 - gray / paper, 0.0, 1.0)


def otsu(values: np.ndarray) -> float:
    """Return Otsu's threshold of values in [0, 1]."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    weights = np.cumsum(hist).astype(np.float64)
    means = np.cumsum(hist * edges[:-1])
    total, total_mean = weights[-1], means[-1]
    between = (total_mean * weights - means * total) ** 2 / np.maximum(weights * (total - weights), 1e-9)
    return float(edges[int(np.argmax(between[:-1]))])


def binarize(ink: np.ndarray) -> np.ndarray:
    """Return a boolean ink mask: above Otsu's threshold and MIN_INK, isolated specks and 1-pixel rules removed by a 3x3
    median, and rows or columns inked almost across the page (rules, borders, page edges) cleared."""
    threshold = max(otsu(ink), MIN_INK)
    raw = ink > threshold
    if raw.mean() > MAX_INK_SHARE:  # noise or a photograph: nothing here reads as lines of writing
        return np.zeros_like(raw)
    mask = Image.fromarray((raw * 255).astype(np.uint8))
    mask = np.array(mask.filter(ImageFilter.MedianFilter(3))) > 0
    mask[mask.mean(axis=1) > RULE_SHARE, :] = False
    mask[:, mask.mean(axis=0) > RULE_SHARE] = False
    return mask


def _rotate(mask: np.ndarray, angle: float) -> np.ndarray:
    image = Image.fromarray((mask * 255).astype(np.uint8))
    return np.asarray(image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)) > 127


def estimate_skew(mask: np.ndarray) -> float:
    """Return the rotation (degrees) that makes the rows' ink profile sharpest: coarse 0.5 degree steps, then 0.1."""
    def sharpness(angle: float) -> float:
        profile = _rotate(mask, angle).sum(axis=1).astype(np.float64)
        return float(np.sum(np.diff(profile) ** 2))

    best = max(np.arange(-MAX_SKEW, MAX_SKEW + 1e-6, 0.5), key=sharpness)
    return float(max(np.arange(best - 0.4, best + 0.41, 0.1), key=sharpness))


def _smooth(profile: np.ndarray, width: float) -> np.ndarray:
    width = max(1, int(width))
    kernel = np.ones(width) / width
    return np.convolve(profile, kernel, mode="same")


def line_spacing(profile: np.ndarray) -> Optional[float]:
    """Return the distance between text lines read from the profile's autocorrelation, or None if it shows none."""
    centred = profile - profile.mean()
    if not np.any(centred):
        return None
    corr = np.correlate(centred, centred, mode="full")[len(centred) - 1 :]
    corr /= corr[0]
    # past the first lag where the correlation turns negative: its first strong peak (not a multiple of the spacing)
    negative = np.nonzero(corr < 0)[0]
    if negative.size == 0:
        return None
    start = negative[0]
    # lines are usually less than 6 line heights apart; a few lines far apart (a letter's date, greeting
    # and signature, or a page of which only some lines are written) are looked for beyond
    for upper in (min(len(corr), start * 6), len(corr)):
        window = corr[start:upper]
        peaks = [i for i in range(1, len(window) - 1) if window[i] >= window[i - 1] and window[i] >= window[i + 1] and window[i] > 0.05]
        if peaks:
            strongest = max(window[i] for i in peaks)
            return float(start + next(i for i in peaks if window[i] >= 0.6 * strongest))
    return None


def _blank_runs(profile: np.ndarray, least: float) -> List[Tuple[int, int]]:
    """Return the (start, end) runs of a profile's near-empty entries at least `least` long, between its first and last ink."""
    blank = profile <= 0.01 * profile.max()  # a speck or a stray descender tip does not fill a gap
    edges = np.diff(np.concatenate([[0], blank.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [(int(a), int(b)) for a, b in zip(starts, ends) if a > 0 and b < len(profile) and b - a >= least]


Region = Tuple[int, int, int, int]  # top, bottom, left, right


def _ink_height(block: np.ndarray) -> int:
    rows = np.nonzero(block.any(axis=1))[0]
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def _columns(block: np.ndarray, spacing: float) -> List[Tuple[int, int]]:
    """Return the gutters between the text columns of a block (column ranges), none if it is one column.

    Every column must be taller than one line (1.5 spacings): a piece no taller sits in its line's
    gap between words (however wide: a drifting line's last word), or is a speck or a page edge,
    and joins its neighbour across the narrower of its gutters.
    """
    gutters = _blank_runs(block.sum(axis=0), MIN_GUTTER * spacing)
    while gutters:
        edges = [0] + [(a + b) // 2 for a, b in gutters] + [block.shape[1]]
        short = next((k for k in range(len(edges) - 1) if _ink_height(block[:, edges[k] : edges[k + 1]]) <= 1.5 * spacing), None)
        if short is None:
            break
        sides = [k for k in (short - 1, short) if 0 <= k < len(gutters)]  # the gutters left and right of piece `short`
        del gutters[min(sides, key=lambda k: gutters[k][1] - gutters[k][0])]
    return gutters


def find_regions(mask: np.ndarray, spacing: float) -> List[Region]:
    """Return the text regions of an upright ink mask in reading order, cutting at gutters and breaks (`spacing`: between lines)."""
    return _cut(mask, (0, mask.shape[0], 0, mask.shape[1]), spacing)


def _cut(mask: np.ndarray, region: Region, spacing: float) -> List[Region]:
    top, bottom, left, right = region
    block = mask[top:bottom, left:right]
    rows, columns = np.nonzero(block.any(axis=1))[0], np.nonzero(block.any(axis=0))[0]
    if rows.size == 0:
        return []
    top, bottom, left, right = top + int(rows[0]), top + int(rows[-1]) + 1, left + int(columns[0]), left + int(columns[-1]) + 1
    block = mask[top:bottom, left:right]
    gutters = _columns(block, spacing)
    if gutters:  # columns, left to right
        edges = [left] + [left + (a + b) // 2 for a, b in gutters] + [right]
        return [found for a, b in zip(edges, edges[1:]) for found in _cut(mask, (top, bottom, a, b), spacing)]
    breaks = _blank_runs(block.sum(axis=1), MIN_BREAK * spacing)
    if breaks:  # blocks, top to bottom; worth keeping apart only where one of them holds columns
        edges = [top] + [top + (a + b) // 2 for a, b in breaks] + [bottom]
        blocks = [_cut(mask, (a, b, left, right), spacing) for a, b in zip(edges, edges[1:])]
        if any(len(found) > 1 for found in blocks):
            return [found for regions in blocks for found in regions]
    return [(top, bottom, left, right)]


def find_bands(mask: np.ndarray, spacing: Optional[float] = None) -> List[Tuple[int, int]]:
    """Return (top, bottom) row ranges of the text lines of an upright ink mask (`spacing` between lines: read from it if not given)."""
    profile = mask.sum(axis=1).astype(np.float64)
    if profile.max() <= 0:
        return []
    if spacing is None:
        spacing = line_spacing(_smooth(profile, 3))
    inked = np.nonzero(profile > 0)[0]
    if spacing is None:  # one line, or no regular lines: one band around all ink
        return [(int(inked[0]), int(inked[-1]) + 1)]
    smooth = _smooth(profile, spacing / 3)
    # line centres: local maxima of the smoothed profile above `level`, at least half a spacing apart; the level is
    # low, since a short line ("Yours," or a signature) holds a small share of a long line's ink
    level = 0.05 * smooth.max()
    peaks = []
    for y in np.argsort(-smooth):
        if smooth[y] < level:
            break
        if all(abs(y - p) >= 0.55 * spacing for p in peaks):
            peaks.append(int(y))
    peaks.sort()
    # neighbouring peaks without a clear valley between them are one line (ascenders over a word's body)
    merged = [peaks[0]] if peaks else []
    for peak in peaks[1:]:
        valley = smooth[merged[-1] : peak + 1].min()
        if valley > VALLEY_SHARE * min(smooth[merged[-1]], smooth[peak]):
            if smooth[peak] > smooth[merged[-1]]:
                merged[-1] = peak
            continue
        merged.append(peak)
    peaks = merged
    bands = []
    for i, peak in enumerate(peaks):
        top = peaks[i - 1] + int(np.argmin(smooth[peaks[i - 1] : peak + 1])) if i else max(0, int(peak - spacing))
        bottom = peak + int(np.argmin(smooth[peak : peaks[i + 1] + 1])) if i + 1 < len(peaks) else min(len(profile), int(peak + spacing))
        bands.append((top, bottom))
    return bands


def _trim(band: np.ndarray, core: Tuple[int, int], span: Tuple[int, int]) -> Optional[Tuple[int, int, int, int]]:
    """Return the (left, top, right, bottom) of the line's ink in a band (rows from its top), ignoring rows with almost none.

    The line reaches left and right only as far as ink in its `core` rows within columns `span`, and up and down only as
    far as inked rows run on from the core without a blank row: the ends of neighbouring lines that
    enter the band above or below the core do not widen it, nor do they heighten it where paper
    parts them from the line.
    """
    ink = np.zeros(band.shape[1], dtype=np.int64)
    ink[span[0] : span[1]] = band[core[0] : core[1], span[0] : span[1]].sum(axis=0)
    columns = np.nonzero(ink > 0)[0]
    if columns.size == 0:
        return None
    # pieces of it apart by more than the band's height (far wider than a gap between words) holding next to none
    # of its ink are specks left on the paper, or torn off another line by straightening: not the line's ends
    pieces = np.split(columns, np.nonzero(np.diff(columns) > band.shape[0])[0] + 1)
    kept = [piece for piece in pieces if ink[piece].sum() >= MIN_PIECE_SHARE * ink.sum()]
    if not kept:  # ink scattered in specks, none of them a line
        return None
    columns = np.concatenate(kept)
    # a row needs a few ink pixels per 1000 columns of the page
    inked = band[:, columns[0] : columns[-1] + 1].sum(axis=1) > max(1, 0.002 * band.shape[1])
    if not inked[core[0] : core[1]].any():
        return None
    blank = np.nonzero(~inked)[0]
    top = int(blank[blank < core[0]].max()) + 1 if np.any(blank < core[0]) else 0
    bottom = int(blank[blank >= core[1]].min()) if np.any(blank >= core[1]) else len(inked)
    rows = np.nonzero(inked[top:bottom])[0] + top
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


MAX_LINE_TILT = 6.0  # degrees a line may slope against the page's rows once the page is upright
FOLLOW_PASSES = 3  # fits of a line's slope, each on the ink near the previous fit
LEFTOVER_SHARE = 0.1  # ink outside every line's cut is a line of its own if it holds this share of the most inked line's ink
FOLLOW_TOLERANCE = 0.5  # a strip's ink centred further than this share of the window's half-height off the fit is another line's


def _reach(top: int, bottom: int) -> float:
    """Return a quarter of a band's height: rows this close to a line's middle are its body, where neighbouring lines never reach."""
    return max(2.0, (bottom - top) / 4.0)


def follow_line(mask: np.ndarray, top: int, bottom: int) -> Tuple[float, float, float, Tuple[int, int]]:
    """Return `(slope, pivot, middle, span)` of the text line in band `[top, bottom)` of an upright mask: its middle runs
    through row `middle` at column `pivot` with `slope` rows per column, and it lies within columns `span` (start, end).

    Handwritten lines drift, each with its own slope, so their ends leave the band that the page's
    row profile gives, and the ends of neighbouring lines enter it. The ink's mean row is taken in
    vertical strips about two band-heights wide, within a quarter band-height of the line's middle
    (first the band's densest row, then the last fit), which keeps neighbouring lines out, and a
    straight line is fitted to those means, weighted by their ink. From the second fit on, a strip
    whose mean is off the last fit by more than FOLLOW_TOLERANCE of that quarter holds the edge of
    another line (past this line's end, a neighbour sloping the other way) and is left out, of the
    fit and of the span.
    """
    height, width = mask.shape
    strip = max(8, int(2 * (bottom - top)))
    reach = _reach(top, bottom)
    rows = np.arange(height, dtype=np.float64)
    limit = np.tan(np.deg2rad(MAX_LINE_TILT))
    profile = _smooth(mask[top:bottom].sum(axis=1).astype(np.float64), reach)
    slope, pivot, middle = 0.0, width / 2.0, float(top + int(np.argmax(profile)))
    span = (0, width)
    for number in range(FOLLOW_PASSES):
        starts, xs, ys, weights = [], [], [], []
        for start in range(0, width, strip):
            block = mask[:, start : start + strip]
            centre_x = start + block.shape[1] / 2.0
            expected = middle + slope * (centre_x - pivot)
            low, high = max(0, int(expected - reach)), min(height, int(np.ceil(expected + reach)))
            counts = block[low:high].sum(axis=1).astype(np.float64)
            if counts.sum() < 1:
                continue
            mean = float((rows[low:high] * counts).sum() / counts.sum())
            if number and abs(mean - expected) > FOLLOW_TOLERANCE * reach:
                continue
            starts.append(start)
            xs.append(centre_x)
            ys.append(mean)
            weights.append(counts.sum())
        if not xs:
            break
        span = (starts[0], min(width, starts[-1] + strip))
        x, y, w = np.array(xs), np.array(ys), np.array(weights)
        pivot, middle = float((x * w).sum() / w.sum()), float((y * w).sum() / w.sum())
        spread = ((x - pivot) ** 2 * w).sum()
        slope = float(np.clip(((x - pivot) * (y - middle) * w).sum() / spread, -limit, limit)) if spread > 0 else 0.0
    return slope, pivot, middle, span


def _straighten(mask: np.ndarray, top: int, bottom: int, slope: float, pivot: float) -> np.ndarray:
    """Return band `[top, bottom)` sheared along `slope` about column `pivot` (row y of column x is top + y + slope * (x - pivot)), False off the mask."""
    height, width = mask.shape
    columns = np.arange(width)
    rows = np.round(slope * (columns - pivot)).astype(np.int64)[None, :] + np.arange(top, bottom)[:, None]
    inside = (rows >= 0) & (rows < height)
    return np.where(inside, mask[np.clip(rows, 0, height - 1), columns[None, :]], False)


@dataclass(frozen=True)
class _Line:
    """A line found in an upright region: its ink's box `(left, top, right, bottom)` in band `top`'s rows sheared
    along `slope` about column `pivot` (as `_straighten` gives them), and how much ink that box holds."""

    top: int
    slope: float
    pivot: float
    box: Tuple[int, int, int, int]
    ink: int

    def margins(self) -> Tuple[float, float]:
        height = self.box[3] - self.box[1]
        return LINE_MARGIN_Y * height, LINE_MARGIN_X * height

    def row_at(self, x: float) -> float:
        """Return the row of the line's middle at column x."""
        return self.top + (self.box[1] + self.box[3]) / 2.0 + self.slope * (x - self.pivot)


def _lines_in(part: np.ndarray, spacing: Optional[float], min_height: float) -> List[_Line]:
    """Return the lines of an upright region's ink mask, top to bottom (each band's line, followed and trimmed)."""
    found = []
    for top, bottom in find_bands(part, spacing):
        slope, pivot, middle, span = follow_line(part, top, bottom)
        reach = _reach(top, bottom)
        core = (max(0, int(middle - reach) - top), max(1, int(np.ceil(middle + reach)) - top))
        band = _straighten(part, top, bottom, slope, pivot)
        box = _trim(band, core, span)
        if box is None or box[3] - box[1] < min_height / 2 or box[2] - box[0] < min_height:
            continue
        found.append(_Line(top, slope, pivot, box, int(band[box[1] : box[3], box[0] : box[2]].sum())))
    return found


def _uncovered(part: np.ndarray, lines: List[_Line]) -> np.ndarray:
    """Return the ink of `part` outside every line's cut (its box with its margins, along its slope)."""
    height, width = part.shape
    left = part.copy()
    columns = np.arange(width)
    for line in lines:
        pad_y, pad_x = line.margins()
        start, end = max(0, int(line.box[0] - pad_x)), min(width, int(np.ceil(line.box[2] + pad_x)))
        shift = np.round(line.slope * (columns[start:end] - line.pivot)).astype(np.int64)
        low = np.clip(line.top + int(line.box[1] - pad_y) + shift, 0, height)
        high = np.clip(line.top + int(np.ceil(line.box[3] + pad_y)) + shift, 0, height)
        for column, a, b in zip(columns[start:end], low, high):
            left[a:b, column] = False
    return left


def analyse(image: Image.Image) -> Layout:
    """Return the text lines of an RGB page image, in reading order."""
    width, height = image.size
    scale = min(1.0, ANALYSIS_SIDE / max(width, height))
    small = image.convert("L")
    if scale < 1.0:
        small = small.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    mask = binarize(ink_map(np.asarray(small, dtype=np.float32)))
    skew = estimate_skew(mask) if mask.any() else 0.0
    upright = _rotate(mask, skew)
    lines = []
    min_height = max(4, 0.004 * max(upright.shape))
    spacing = line_spacing(_smooth(upright.sum(axis=1).astype(np.float64), 3)) if mask.any() else None
    regions = find_regions(upright, spacing) if spacing else []
    if len(regions) < 2:  # one block of text: the whole page
        regions = [(0, upright.shape[0], 0, upright.shape[1])]
    for number, (region_top, region_bottom, region_left, region_right) in enumerate(regions):
        part = upright[region_top:region_bottom, region_left:region_right]
        found = _lines_in(part, spacing, min_height)
        if found:
            # two lines sloping towards each other can share one band, whose line is then one of them: the other
            # is ink that no line's cut holds, found again on its own (a stray mark holds too little ink to count)
            most = max(line.ink for line in found)
            found += [line for line in _lines_in(_uncovered(part, found), spacing, min_height) if line.ink >= LEFTOVER_SHARE * most]
            found.sort(key=lambda line: line.row_at(part.shape[1] / 2.0))
        for line in found:
            pad_y, pad_x = line.margins()
            (left, above), (right, below) = (line.box[0] - pad_x, line.box[1] - pad_y), (line.box[2] + pad_x, line.box[3] + pad_y)
            outline = [(region_left + x, region_top + line.top + y + line.slope * (x - line.pivot))
                       for x, y in ((left, above), (right, above), (right, below), (left, below))]
            lines.append(_on_page(outline, scale, skew, (width, height), number))
    deskewed = image.rotate(skew, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)) if skew else image
    return Layout(lines, skew, (width, height), deskewed)


def _on_page(outline: List[Tuple[float, float]], scale: float, skew: float, size: Tuple[int, int], region: int) -> LineRegion:
    """Return the line of text region `region` whose outline, in the upright analysis image, is `outline`, in the page's own pixels."""
    width, height = size
    centre = (width / 2.0, height / 2.0)
    corners = [unrotate(x / scale, y / scale, skew, centre) for x, y in outline]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return LineRegion(
        box=(max(0, int(min(xs))), max(0, int(min(ys))), min(width, int(np.ceil(max(xs)))), min(height, int(np.ceil(max(ys))))),
        polygon=tuple((int(round(x)), int(round(y))) for x, y in corners),
        region=region,
    )


def unrotate(x: float, y: float, angle: float, centre: Tuple[float, float]) -> Tuple[float, float]:
    """Map a point of the page rotated by `angle` (PIL's counter-clockwise rotate) back to the original page."""
    theta = np.deg2rad(angle)
    dx, dy = x - centre[0], y - centre[1]
    return centre[0] + dx * np.cos(theta) - dy * np.sin(theta), centre[1] + dx * np.sin(theta) + dy * np.cos(theta)


def crop_lines(layout: Layout) -> List[Image.Image]:
    """Return each line's image, cut from the upright page and, where the line slopes, sheared level."""
    centre = (layout.size[0] / 2.0, layout.size[1] / 2.0)
    crops = []
    for line in layout.lines:
        # the outline is the line's upright outline rotated onto the page: rotate it back to cut it upright
        (x0, y0), (x1, y1), _, (_, y3) = [unrotate(x, y, -layout.skew, centre) for x, y in line.polygon]
        width, height = max(1, round(x1 - x0)), max(1, round(y3 - y0))
        slope = (y1 - y0) / max(x1 - x0, 1.0)
        if abs(slope * width) < 1.0:  # level to within a pixel: a plain cut
            crops.append(layout.deskewed.crop((int(x0), int(y0), int(x0) + width, int(y0) + height)))
        else:
            crops.append(layout.deskewed.transform((width, height), Image.Transform.AFFINE, (1, 0, x0, slope, 1, y0),
                                                   resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)))
    return crops


LINE_HEIGHT = 150  # `--layout auto`: an image less high than this (pixels) is a line, too small to hold several
LINE_ASPECT = 8  # ... and so is one at least this many times wider than high (a page or paragraph rarely is)


def is_line_shaped(image: Image.Image) -> bool:
    """Return whether an image is a line by its size alone (`--layout auto` then skips finding lines)."""
    return image.height < LINE_HEIGHT or image.width >= LINE_ASPECT * image.height
