"""Checking a bundle against the PyTorch model it came from: same tokens as `generate`, same encoder states."""

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from htr import Recognizer
from htr.images import load_image

from .bundle import _UNSUPPORTED_NEUTRAL, Checkpoint


def sample_lines(count: int = 4) -> List["Image.Image"]:  # noqa: F821
    """Return `count` synthetic text-line images drawn with Pillow's own font, for checks that need any line."""
    from PIL import Image, ImageDraw, ImageFont

    texts = ["Dear Sir, I received", "your letter of March 22", "and the 3 parcels.", "Yours truly, J. Smith", "Meeting at 10:30 am?"]
    font = ImageFont.load_default(size=28)
    images = []
    for i in range(count):
        text = texts[i % len(texts)]
        image = Image.new("RGB", (420, 56), (250, 248, 240))
        ImageDraw.Draw(image).text((12 + 3 * i, 10), text, fill=(20, 20, 60), font=font)
        images.append(image)
    return images


def generate_kwargs(generation: dict) -> dict:
    """Return the `generate` keyword arguments that match a bundle's generation settings."""
    kwargs = dict(_UNSUPPORTED_NEUTRAL)
    kwargs.update({k: generation[k] for k in ("num_beams", "max_length", "min_length", "length_penalty", "early_stopping", "no_repeat_ngram_size")})
    kwargs.update(max_new_tokens=None, min_new_tokens=None)
    return kwargs


def torch_tokens(sequences, eos: Sequence[int]) -> List[List[int]]:
    """Return each generated sequence without its start token and without the padding after eos."""
    rows = []
    for row in sequences.tolist():
        row = row[1:]
        ends = [i for i, t in enumerate(row) if t in eos]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def verify_bundle(checkpoint: Checkpoint, bundle_dir: Path, images: Sequence, log=print) -> dict:
    """Run the bundle and the PyTorch model on the same images; return a report with `ok` set.

    Tokens must be identical to `generate` with the bundle's default settings.
    """
    import torch

    recognizer = Recognizer(bundle_dir)
    manifest = recognizer.manifest.raw
    rgb = [load_image(image) for image in images]
    ours = recognizer.recognize(rgb, batch_size=len(rgb))
    pixels = checkpoint.image_processor(images=rgb, return_tensors="pt").pixel_values
    with torch.no_grad():
        out = checkpoint.model.generate(
            pixels, **generate_kwargs(manifest["generation"]), output_scores=True, return_dict_in_generate=True
        )
        hidden = checkpoint.model.encoder(pixel_values=pixels).last_hidden_state.numpy()
    theirs = torch_tokens(out.sequences, manifest["special_tokens"]["eos"])
    texts = checkpoint.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    encoder_diff = float(np.abs(recognizer.encode(rgb) - hidden).max())
    rows = []
    for i, (rec, ref, text) in enumerate(zip(ours, theirs, texts)):
        rows.append({"image": i, "tokens_equal": list(rec.tokens) == ref, "text_equal": rec.text == text, "htr": rec.text, "torch": text, "length": len(ref)})
    matches = sum(r["tokens_equal"] and r["text_equal"] for r in rows)
    report = {
        "images": len(rows),
        "identical": matches,
        "encoder_max_abs_diff": encoder_diff,
        "settings": {k: manifest["generation"][k] for k in ("num_beams", "max_length")},
        "ok": matches == len(rows),
    }
    log(f"verification against PyTorch generate (beams {report['settings']['num_beams']}, max_length {report['settings']['max_length']}):")
    for r in rows:
        mark = "same" if r["tokens_equal"] and r["text_equal"] else "DIFFERENT"
        log(f"  image {r['image']}: {mark:9} {r['length']:3} tokens  htr={r['htr'][:40]!r}  torch={r['torch'][:40]!r}")
    log(f"  {matches}/{len(rows)} identical; encoder states max |diff| {encoder_diff:.2e}")
    return report


def verification_images(folder: Optional[Path], count: int) -> List:
    """Return up to `count` images from `folder`, or synthetic lines when no folder is given."""
    if folder is None:
        return sample_lines(count)
    from .bundle import list_images

    return [str(p) for p in list_images(folder)[:count]]
