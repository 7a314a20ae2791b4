"""Image loading and preprocessing: parity with transformers' image processors, and clear errors."""

import io

import numpy as np
import pytest
from PIL import Image

from htr.errors import ImageError, ImageNotFoundError
from htr.images import load_image, preprocess, shifted_views
from htr.manifest import Preprocessing


def spec(height=384, width=384, resample="bilinear", **kw) -> Preprocessing:
    values = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    values.update(kw)
    return Preprocessing(height=height, width=width, resample=resample, **values)


def random_image(mode: str, size=(131, 47), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "1"])
@pytest.mark.parametrize(
    "processor, resample, size",
    [("ViTImageProcessor", "bilinear", (384, 384)), ("DeiTImageProcessor", "bicubic", (384, 384)), ("ViTImageProcessor", "bicubic", (32, 256))],
)
def test_matches_transformers_processor(mode, processor, resample, size):
    transformers = pytest.importorskip("transformers")
    from PIL import Image as PILImage

    codes = {"bilinear": PILImage.Resampling.BILINEAR, "bicubic": PILImage.Resampling.BICUBIC}
    height, width = size
    hf = getattr(transformers, processor)(size={"height": height, "width": width}, resample=codes[resample], image_mean=[0.5] * 3, image_std=[0.5] * 3, do_center_crop=False)
    image = random_image(mode, seed=len(mode))
    expected = hf(images=image.convert("RGB"), return_tensors="np").pixel_values
    ours = preprocess([load_image(image)], spec(height, width, resample))
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)  # black, fully transparent ...
    rgba[:, :5] = (0, 0, 0, 255)  # ... except an opaque black stripe
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (10, 20, 3)
    assert (out[:, :5] == 0).all() and (out[:, 5:] == 255).all()


def test_palette_with_transparency_and_la():
    image = Image.new("P", (8, 4), 0)
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.info["transparency"] = 0
    assert (np.asarray(load_image(image)) == 255).all()
    assert (np.asarray(load_image(Image.new("LA", (5, 5), (0, 0)))) == 255).all()


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    out = np.asarray(load_image(path))
    assert out[0, :, 0].tolist() == [0, 100, 255]
    assert np.asarray(load_image(values))[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 10), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (10, 40)


@pytest.mark.parametrize(
    "array, shape",
    [
        (np.zeros((5, 7), np.uint8), (5, 7, 3)),
        (np.zeros((5, 7, 1), np.uint8), (5, 7, 3)),
        (np.zeros((5, 7, 4), np.uint8), (5, 7, 3)),
        (np.ones((5, 7, 3), np.float32), (5, 7, 3)),
    ],
)
def test_numpy_inputs(array, shape):
    assert np.asarray(load_image(array)).shape == shape


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((5, 7, 2), np.uint8), "not an image"),
        (np.zeros((5,), np.uint8), "not an image"),
        (np.full((5, 7), 2.0), r"\[0, 1\]"),
        (np.zeros((5, 7), np.int64), "dtype int64"),
        (12, "unsupported image input"),
    ],
)
def test_bad_in_memory_inputs(bad, message):
    with pytest.raises(ImageError, match=message):
        load_image(bad)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ImageNotFoundError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt: not an image file"):
        load_image(text)
    buffer = io.BytesIO()
    random_image("RGB").save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ImageError, match="truncated.png: cannot be decoded"):
        load_image(truncated)
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.new("L", (40, 40)).save(path)  # past the limit, below PIL's own error at twice the limit
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(path)


def test_no_resize_requires_exact_size():
    with pytest.raises(ImageError, match="takes exactly 16x8"):
        preprocess([Image.new("RGB", (10, 10))], spec(8, 16, do_resize=False))


@pytest.mark.parametrize("width", [60, 200, 1500])
def test_shifted_views_move_the_content_by_fractions_of_a_column(width):
    """A dark bar in a light line: view v of 3 moves it right by v/3 of an 8-pixel column in the model's pixels,
    however wide the image, and view 0 is the image itself."""
    line = np.full((40, width, 3), 230, dtype=np.uint8)
    line[:, width // 3 : width // 3 + max(2, width // 30)] = 20
    image = Image.fromarray(line)
    model = spec(height=32, width=384)
    views = shifted_views(image, 3, 8 / 384, model)
    assert len(views) == 3 and views[0] is image
    paper = 230 / 255 * 2 - 1
    darkness = [np.clip(paper - preprocess([view], model)[0, 0].mean(axis=0), 0, None) for view in views]
    centres = [float((d * np.arange(384)).sum() / d.sum()) for d in darkness]
    squeeze = [width / (width + v / 3 * 8 / 384 * width) for v in range(3)]  # the margin widens the image a little
    for v in (1, 2):
        expected = v / 3 * 8 * squeeze[v] + centres[0] * (squeeze[v] - 1.0)
        assert centres[v] - centres[0] == pytest.approx(expected, abs=0.15)
