"""A read page as PAGE XML (the 2019-07-15 schema of the HTR community) and as an overlay picture."""

import math
import time
from typing import Optional
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, ImageDraw, ImageFont

PAGE_NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"


def _points(polygon) -> str:
    return " ".join(f"{max(0, int(x))},{max(0, int(y))}" for x, y in polygon)


def _box(polygons, width: int, height: int):
    """Return the corners of the box around polygons, within the page."""
    xs, ys = [x for polygon in polygons for x, _ in polygon], [y for polygon in polygons for _, y in polygon]
    left, top, right, bottom = max(0, min(xs)), max(0, min(ys)), min(width, max(xs)), min(height, max(ys))
    return (left, top), (right, top), (right, bottom), (left, bottom)


def _regions(page) -> dict:
    """Return the page's lines by region number, in reading order, each as (index on the page, line)."""
    regions = {}
    for i, line in enumerate(page.lines):
        regions.setdefault(line.region, []).append((i, line))
    return regions


def page_xml(page, image_name: str) -> str:
    """Return `page` as a PAGE XML document: a text region per column or block, in reading order, holding its lines in order."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    order, blocks = [], []
    for index, (number, members) in enumerate(_regions(page).items()):
        order.append(f'<RegionRefIndexed index="{index}" regionRef="r{number}"/>')
        lines = []
        for i, line in members:
            confidence = min(1.0, max(0.0, math.exp(line.score)))
            lines.append(
                f'      <TextLine id="l{i}">\n'
                f'        <Coords points="{_points(line.polygon)}"/>\n'
                f'        <TextEquiv conf="{confidence:.4f}"><Unicode>{escape(line.text)}</Unicode></TextEquiv>\n'
                f"      </TextLine>\n"
            )
        text = "\n".join(line.text for _, line in members)
        blocks.append(
            f'    <TextRegion id="r{number}" type="paragraph">\n'
            f'      <Coords points="{_points(_box([line.polygon for _, line in members], page.width, page.height))}"/>\n'
            + "".join(lines)
            + f"      <TextEquiv><Unicode>{escape(text)}</Unicode></TextEquiv>\n    </TextRegion>\n"
        )
    reading = f'    <ReadingOrder><OrderedGroup id="ro0">{"".join(order)}</OrderedGroup></ReadingOrder>\n' if order else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<PcGts xmlns="{PAGE_NAMESPACE}">\n'
        f"  <Metadata><Creator>htr</Creator><Created>{now}</Created><LastChange>{now}</LastChange></Metadata>\n"
        f"  <Page imageFilename={quoteattr(image_name)} imageWidth=\"{page.width}\" imageHeight=\"{page.height}\">\n"
        + reading
        + "".join(blocks)
        + "  </Page>\n</PcGts>\n"
    )


def draw_overlay(image: Image.Image, page, font_size: Optional[int] = None) -> Image.Image:
    """Return a copy of the page with each line's outline drawn and its recognised text written above it, and where the
    page has several text regions (columns, blocks), a box around each."""
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    regions = _regions(page)
    if len(regions) > 1:
        for members in regions.values():
            thickness = max(2, (members[0][1].box[3] - members[0][1].box[1]) // 15)
            draw.polygon(_box([line.polygon for _, line in members], picture.width, picture.height), outline=(30, 90, 220), width=thickness)
    for i, line in enumerate(page.lines):
        height = max(10, line.box[3] - line.box[1])
        font = ImageFont.load_default(size=font_size or max(10, int(height * 0.45)))
        draw.polygon(list(line.polygon), outline=(220, 30, 30), width=max(1, height // 25))
        label = f"{i + 1}: {line.text}"
        x, y = line.box[0], max(0, line.box[1] - int(height * 0.5))
        box = draw.textbbox((x, y), label, font=font)
        draw.rectangle(box, fill=(255, 255, 225))
        draw.text((x, y), label, fill=(20, 20, 160), font=font)
    return picture
