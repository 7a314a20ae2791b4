"""The synthetic line generator: reproducible under a seed, varied, and split by font family."""

import numpy as np
import pytest

from htr.errors import HtrError

synth = pytest.importorskip("htr.train.synth")


def text_alphabet():
    """Every character that the line texts (`random_text`, `random_string`) can hold."""
    return set("".join(synth._words()) + "".join(synth._NAMES + synth._MONTHS) + "".join(synth._STRING_CHARS) + "0123456789 -")


def fonts_or_skip(split):
    try:
        return synth.load_fonts(split)
    except HtrError as e:
        pytest.skip(str(e))


def test_same_seed_same_lines_other_seed_other_lines():
    fonts_or_skip("train")
    a, b, c = synth.SyntheticLines("train", seed=1), synth.SyntheticLines("train", seed=1), synth.SyntheticLines("train", seed=2)
    for i in (0, 5, 17):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert ta == tb and ia.tobytes() == ib.tobytes()
    assert [a[i][1] for i in range(10)] != [c[i][1] for i in range(10)]


def test_font_split_is_by_family_and_respected():
    train, evaluation = fonts_or_skip("train"), fonts_or_skip("eval")
    assert not {f.package for f in train} & {f.package for f in evaluation}
    lines = synth.SyntheticLines("eval", seed=0)
    assert {f.path for f in lines.fonts} == {f.path for f in evaluation}
    with pytest.raises(HtrError, match="font split"):
        synth.load_fonts("test")


def test_fonts_from_pypi_packages_are_found_inside_them():
    # A relative path in fonts.tsv lies inside the Python package it names first (PyPI font packages).
    assert synth._installed_path("/usr/share/fonts/x.ttf") == "/usr/share/fonts/x.ttf"
    assert synth.Path(synth._installed_path("htr/models/default/manifest.json")).is_file()
    assert synth._installed_path("no_such_font_package/files/X.ttf") == ""
    pypi = [f for f in fonts_or_skip("train") if f.package.startswith("pypi:")]
    if not pypi:
        pytest.skip("the PyPI font packages of train/fonts.tsv are not installed (pip install '.[export]')")
    assert all(synth.Path(f.path).is_file() and f.path.endswith(".ttf") for f in pypi if not f.path.startswith(synth.HERSHEY))


def test_texts_mix_words_numbers_punctuation_and_case():
    import random

    texts = [synth.random_text(random.Random(i)) for i in range(300)]
    joined = "".join(texts)
    assert any(c.isdigit() for c in joined) and any(c.isupper() for c in joined) and any(c.islower() for c in joined)
    assert set(",.;:!?'/$%") <= set(joined)
    assert len(set(texts)) > 290 and max(len(t) for t in texts) < 120


def _glyph(font, ch):
    from PIL import Image, ImageDraw

    image = Image.new("L", (120, 120), 0)
    ImageDraw.Draw(image).text((20, 20), ch, fill=255, font=font)
    return np.asarray(image.crop(image.getbbox()).resize((24, 24)), np.float32) / 255


def test_capitals_column_matches_the_glyphs():
    """Fonts marked `capitals` draw lower case like upper case; their lines are labelled in capitals."""
    from PIL import ImageFont

    fonts = fonts_or_skip("train") + fonts_or_skip("eval")
    for font in (f for f in fonts if not f.path.startswith(synth.HERSHEY)):
        face = ImageFont.truetype(font.path, 60)
        distance = np.mean([np.abs(_glyph(face, c) - _glyph(face, c.upper())).mean() for c in "abdegr"])
        assert (distance < 0.2) == (font.capitals == "yes"), font.path
    lines = synth.SyntheticLines("train", seed=3)
    for i in range(40):
        image, text = lines[i]
        assert image.mode == "RGB" and image.height >= 10 and image.width > image.height


def test_training_lines_vary_the_hand_and_evaluation_lines_do_not():
    fonts_or_skip("train")
    varied, plain = synth.SyntheticLines("train", seed=4), synth.SyntheticLines("train", seed=4, vary=False)
    assert varied.vary and not plain.vary and not synth.SyntheticLines("eval", seed=4).vary
    pairs = [(varied[i], plain[i]) for i in range(12)]
    assert all(v[1] == p[1] for v, p in pairs)  # the same text ...
    assert sum(v[0].tobytes() != p[0].tobytes() for v, p in pairs) >= 6  # ... written differently on most lines
    again = synth.SyntheticLines("train", seed=4)
    assert all(again[i][0].tobytes() == pairs[i][0][0].tobytes() for i in range(12))


def test_training_text_has_random_strings_and_evaluation_text_does_not():
    import random

    strings = [synth.random_string(random.Random(i)) for i in range(300)]
    joined = "".join(strings)
    assert set(joined) <= set(synth.string.ascii_letters + synth.string.digits + ",.;:!?'()\"$%/ ")
    assert sum(c.isupper() for c in joined) > 0.15 * len(joined.replace(" ", ""))  # capitals far more often than in words
    fonts_or_skip("train")
    fonts_or_skip("eval")
    assert synth.SyntheticLines("train").strings > 0 and synth.SyntheticLines("eval").strings == 0
    words = set(synth._words())
    texts = [synth.SyntheticLines("train", seed=2, strings=1.0).sample(i)[1] for i in range(20)]
    assert sum(any(w in words for w in t.split()) for t in texts) < 5  # random letters rarely make a listed word


def test_stroke_width_thickens_or_thins_but_never_erases():
    import random

    from PIL import Image, ImageDraw

    mask = Image.new("L", (200, 60), 0)
    ImageDraw.Draw(mask).line((10, 30, 190, 30), fill=255, width=6)
    hairline = Image.new("L", (200, 60), 0)
    ImageDraw.Draw(hairline).line((10, 30, 190, 30), fill=255, width=1)
    inks = {int(np.asarray(synth._stroke_width(mask, random.Random(i))).sum()) for i in range(20)}
    ink = int(np.asarray(mask).sum())
    assert min(inks) < ink < max(inks)
    assert all(np.asarray(synth._stroke_width(hairline, random.Random(i))).sum() >= np.asarray(hairline).sum() for i in range(20))


def test_thinning_keeps_one_pixel_centre_lines_and_repen_redraws_them():
    import random

    from PIL import Image, ImageDraw

    mask = Image.new("L", (200, 80), 0)
    ImageDraw.Draw(mask).line((20, 40, 180, 40), fill=255, width=9)
    ImageDraw.Draw(mask).line((100, 10, 100, 70), fill=255, width=7)
    centre = synth._thin(np.asarray(mask) >= 128)
    assert centre[40, 30:170].all() and centre[15:65, 100].all()  # the cross's two strokes survive as lines ...
    assert centre.sum() < 0.25 * (np.asarray(mask) >= 128).sum()  # ... one pixel wide
    assert not (centre & ~(np.asarray(mask) >= 128)).any()
    for seed in range(6):  # a round pen or a broad nib: ink along the same cross, none far from it
        drawn = np.asarray(synth._repen(mask, 60, random.Random(seed))) >= 128
        assert drawn[40, 30:170].mean() > 0.9 and drawn[15:65, 100].mean() > 0.9
        assert not drawn[:, :10].any() and not drawn[:5].any()


def hershey_or_skip():
    hershey = [f for f in fonts_or_skip("train") if f.path.startswith(synth.HERSHEY)]
    if not hershey:
        pytest.skip("Hershey-Fonts is not installed (pip install '.[export]')")
    return hershey


def test_hershey_stroke_fonts_write_every_character_of_the_texts_with_a_pen():
    import random

    hershey = hershey_or_skip()
    assert {f.path for f in hershey} == {"hershey:cursive", "hershey:scriptc", "hershey:scripts", "hershey:futural"}
    assert synth._installed_path("hershey:cursive") == "hershey:cursive"
    alphabet = text_alphabet()
    for font in hershey:
        assert alphabet <= set(synth._hershey_glyphs(font.path[len(synth.HERSHEY):])), font.path
        short = synth._stroke_text("ab", font.path, 40, random.Random(0), vary=True)
        long = synth._stroke_text("ab cd 12%", font.path, 40, random.Random(0), vary=True)
        assert short.height > 10 and long.width > 3 * short.width  # about as wide as the text is long
        again = synth._stroke_text("ab cd 12%", font.path, 40, random.Random(0), vary=True)
        assert long.tobytes() == again.tobytes()
    with pytest.raises(HtrError, match="no glyph for 'é'"):
        synth._stroke_text("café", "hershey:cursive", 40, random.Random(0), vary=False)
    lines = synth.SyntheticLines("train", seed=5)
    assert any(f.path.startswith(synth.HERSHEY) for _, _, f in map(lines.sample, range(100)))


def test_a_font_that_lacks_characters_writes_lines_without_them():
    """A line's label is what its image shows: characters that its font has no glyph for are left out of the text."""
    import string

    fonts = fonts_or_skip("train")
    for font in fonts_or_skip("eval"):  # the held-out lines stay what they were
        assert not synth._lacking(font.path) & text_alphabet(), font.path
    tomson = [f for f in fonts if f.path.endswith("TomsonTalks.ttf")]
    if not tomson:
        pytest.skip("fonts-tomsontalks is not installed (scripts/install-fonts.sh)")
    lacking = synth._lacking(tomson[0].path)
    assert set('"$()') <= lacking and not lacking & set(string.ascii_uppercase + string.digits + ".,;:!?'%/")
    assert synth._written('"$5" (Test) a', tomson[0]) == "5 TEST A"
    assert synth._written("Full stop.", tomson[0]) == "FULL STOP."
    lines = synth.SyntheticLines("train", seed=9, strings=1.0)
    lines.fonts = tomson
    for i in range(12):
        image, text, font = lines.sample(i)
        assert text and text == text.upper() and not lacking & set(text), text


def test_a_font_that_misdraws_characters_writes_lines_without_them(tmp_path, monkeypatch):
    """Characters in a font's `misdrawn` column (drawn as glyphs of other characters) are left out of its lines, as
    lacking ones are, and the column is read as written, quotes included."""
    breip = fonts_or_skip("eval")[0]
    table = tmp_path / "fonts.tsv"
    table.write_text("# a comment\npackage\tpath\tsplit\tlicence\tcapitals\tmisdrawn\n"
                     f"p\t{breip.path}\ttrain\tOFL-1.1\tno\t\"#$&|\n"
                     f"q\t{breip.path}\ttrain\tOFL-1.1\tno\n", encoding="utf-8")
    monkeypatch.setattr(synth, "FONTS_TSV", table)
    misdrawing, plain = synth.load_fonts("train")
    assert misdrawing.misdrawn == '"#$&|' and plain.misdrawn == ""
    assert synth._written('Pay "$5" & #2 | now', misdrawing) == "Pay 5 2 now"
    assert synth._written('Pay "$5" & #2 | now', plain) == 'Pay "$5" & #2 | now'
    lines = synth.SyntheticLines("train", seed=3, strings=1.0)
    assert lines.partners[plain.path] == []  # the two rows are one file: neither blends with itself
    written = [lines.sample(i)[1:] for i in range(20)]
    assert all(text and not set(text) & set(font.misdrawn) for text, font in written)
    assert {font.misdrawn for _, font in written} == {misdrawing.misdrawn, ""}
    assert any(set(text) & set(misdrawing.misdrawn) for text, font in written if not font.misdrawn)


def test_evaluation_lines_stay_what_earlier_measurements_were_taken_on():
    """Held-out CERs in models/demo/README.md compare across versions only while the eval split's texts and fonts hold."""
    fonts_or_skip("eval")
    lines = synth.SyntheticLines("eval", seed=7)
    assert [(t, synth.Path(f.path).name) for _, t, f in map(lines.sample, range(3))] == [
        ("long 13/9/67 heard: pictures! stamps? ink", "Breip.ttf"), ("month", "Breip.ttf"), ("autumn", "Kristi.ttf")]


def assert_blends_lie_between(paths, spread):
    """With all the share on one font a blend is that font's own glyph; with the shares `spread`, its ink lies between
    the fonts'."""
    for char in "aR7":
        own = [synth._baseline_glyph(char, path, 48, 0) for path in paths]
        for i, (glyph, box) in enumerate(own):
            mask, blended_box = synth._blended_glyph(char, paths, [float(j == i) for j in range(len(paths))], 48, 0)
            blended = np.asarray(mask) >= 128
            pad = box[0] - blended_box[0]
            inside = blended[pad:pad + glyph.shape[0], pad:pad + glyph.shape[1]]
            assert blended.sum() == inside.sum()  # no ink outside the font's own box
            agree = (inside == (glyph >= 0.5)).mean()
            assert agree > 0.98, (char, i, agree)
        mask, _ = synth._blended_glyph(char, paths, spread, 48, 0)
        inks = [float((g >= 0.5).sum()) for g, _ in own]
        assert min(inks) - 2 <= (np.asarray(mask) >= 128).sum() <= max(inks) + 2


def test_blended_hands_lie_between_their_two_fonts():
    """A blend at weight 0 or 1 is one of its fonts; in between it is a shape of its own with ink between theirs."""
    # Two hands whose glyphs have boxes alike, so that stretching either to the box between keeps about its ink.
    fonts = {synth.Path(f.path).name: f.path for f in fonts_or_skip("train")}
    if not {"dkg.ttf", "Z003-MediumItalic.otf"} <= set(fonts):
        pytest.skip("fonts-dkg-handwriting and fonts-urw-base35 are not installed (scripts/install-fonts.sh)")
    pytest.importorskip("scipy")
    assert_blends_lie_between((fonts["dkg.ttf"], fonts["Z003-MediumItalic.otf"]), (0.5, 0.5))
    lines, plain = synth.SyntheticLines("train", seed=6, blends=1.0), synth.SyntheticLines("train", seed=6, blends=0.0)
    assert synth.SyntheticLines("train").blends > 0 and synth.SyntheticLines("eval").blends == 0
    trios = synth.SyntheticLines("train", seed=6, blends=1.0, trios=1.0)
    for i in range(6):
        image, text, _ = lines.sample(i)
        assert image.mode == "RGB" and image.width > image.height
        assert text == plain.sample(i)[1] == trios.sample(i)[1]  # the blend is drawn after the text: it changes how a line is written, not what


def test_three_font_blends_lie_between_their_fonts():
    """A blend of three fonts with all the share on one is that font; with the shares spread, its ink lies between theirs."""
    fonts = {synth.Path(f.path).name: f.path for f in fonts_or_skip("train")}
    if not {"dkg.ttf", "Z003-MediumItalic.otf", "DancingScript-Regular.otf"} <= set(fonts):
        pytest.skip("fonts-dkg-handwriting, fonts-urw-base35 and fonts-dancingscript are not installed (scripts/install-fonts.sh)")
    pytest.importorskip("scipy")
    paths = (fonts["dkg.ttf"], fonts["Z003-MediumItalic.otf"], fonts["DancingScript-Regular.otf"])
    assert_blends_lie_between(paths, (0.3, 0.3, 0.4))
