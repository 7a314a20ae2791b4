"""Checking a bundle against the PyTorch model it came from: same tokens as `generate`, same encoder states."""

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from htr import GenerationOptions, Recognizer
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


PATH_TOLERANCE = 1e-3  # log-probabilities along PyTorch's own tokens; float noise is ~1e-5
CTC_TOLERANCE = 1e-3  # CTC log-probabilities, against PyTorch with the head's weights rounded to float16 as the bundle holds them


def path_logprob_diff(recognizer, model, images, pixels, sequences) -> np.ndarray:
    """Return, per image, the largest |log-prob difference| between the bundle and PyTorch along PyTorch's tokens."""
    import torch

    from htr.search import log_softmax

    with torch.no_grad():
        expected = torch.log_softmax(model(pixel_values=pixels, decoder_input_ids=sequences[:, :-1]).logits, dim=-1).numpy()
    step = recognizer._start_decoder(images)
    tokens = sequences.numpy()
    rows = np.arange(tokens.shape[0])
    worst = np.zeros(tokens.shape[0])
    for i in range(tokens.shape[1] - 1):
        ours = log_softmax(step(tokens[:, : i + 1], rows))
        diff = np.abs(np.nan_to_num(ours - expected[:, i], posinf=0, neginf=0))
        worst = np.maximum(worst, diff.max(axis=1))
    return worst


def ctc_log_probs(checkpoint: Checkpoint, hidden) -> np.ndarray:
    """Return PyTorch's CTC log-probabilities `(N, steps, vocab)` for encoder states `hidden`, as htr-train computes them."""
    import torch

    from htr.train.trainer import CTC_UPSAMPLE, attach_ctc_head
    from htr.train.trainer import ctc_log_probs as torch_ctc_log_probs

    head = checkpoint.ctc_head
    holder = torch.nn.Module()
    holder.config = checkpoint.model.config
    attach_ctc_head(holder, head["bias"].shape[0] // CTC_UPSAMPLE)
    holder.ctc_head.load_state_dict({k: torch.from_numpy(v.astype(np.float16).astype(np.float32)) for k, v in head.items()})
    with torch.no_grad():
        return torch_ctc_log_probs(holder.ctc_head, hidden).numpy()


def verify_bundle(checkpoint: Checkpoint, bundle_dir: Path, images: Sequence, log=print) -> dict:
    """Run the bundle and the PyTorch model on the same images; return a report with `ok` set.

    The bundle passes when its tokens are identical to `generate` with the bundle's default
    settings (one view and no CTC head, which `generate` does not have) and, where both have a CTC
    head, its CTC log-probabilities match PyTorch's within `CTC_TOLERANCE`. Where tokens differ,
    both are run teacher-forced along PyTorch's tokens: if their log-probabilities agree within
    `PATH_TOLERANCE` the graphs are faithful and the difference is a near-tie that float noise
    decided (common in untrained, random-weight models); it is reported as such and does not fail
    the check.
    """
    import torch

    recognizer = Recognizer(bundle_dir)
    manifest = recognizer.manifest.raw
    rgb = [load_image(image) for image in images]
    ours = recognizer.recognize(rgb, batch_size=len(rgb), options=GenerationOptions(ctc_weight=0.0, views=1))
    pixels = checkpoint.image_processor(images=rgb, return_tensors="pt").pixel_values
    with torch.no_grad():
        out = checkpoint.model.generate(pixels, **generate_kwargs(manifest["generation"]), return_dict_in_generate=True)
        hidden_t = checkpoint.model.encoder(pixel_values=pixels).last_hidden_state
    hidden = hidden_t.numpy()
    theirs = torch_tokens(out.sequences, manifest["special_tokens"]["eos"])
    texts = checkpoint.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    ours_hidden = recognizer.encode(rgb)
    encoder_diff = float(np.abs(ours_hidden - hidden).max())
    ctc_diff = 0.0
    compare_ctc = recognizer.has_ctc_head and checkpoint.ctc_head is not None
    if compare_ctc:
        ctc_diff = float(np.abs(recognizer._ctc.log_probs(ours_hidden) - ctc_log_probs(checkpoint, hidden_t)).max())
    same = [list(rec.tokens) == ref and rec.text == text for rec, ref, text in zip(ours, theirs, texts)]
    path_diff = [0.0] * len(rgb)
    if not all(same):
        path_diff = path_logprob_diff(recognizer, checkpoint.model, rgb, pixels, out.sequences).tolist()
    near_ties = sum(not s and d <= PATH_TOLERANCE for s, d in zip(same, path_diff))
    report = {
        "images": len(rgb),
        "identical": sum(same),
        "near_ties": near_ties,
        "max_path_logprob_diff": max(path_diff),
        "encoder_max_abs_diff": encoder_diff,
        "settings": {k: manifest["generation"][k] for k in ("num_beams", "max_length")},
        "ok": sum(same) + near_ties == len(rgb) and encoder_diff <= 1e-3 and ctc_diff <= CTC_TOLERANCE,
    }
    if compare_ctc:
        report["ctc_max_abs_diff"] = ctc_diff
    log(f"verification against PyTorch generate (beams {report['settings']['num_beams']}, max_length {report['settings']['max_length']}):")
    for i, (rec, ref, text) in enumerate(zip(ours, theirs, texts)):
        mark = "same" if same[i] else "near-tie" if path_diff[i] <= PATH_TOLERANCE else "DIFFERENT"
        extra = "" if same[i] else f"  (log-probs along PyTorch's tokens differ by {path_diff[i]:.1e})"
        log(f"  image {i}: {mark:9} {len(ref):3} tokens  htr={rec.text[:40]!r}  torch={text[:40]!r}{extra}")
    log(f"  {sum(same)}/{len(rgb)} identical, {near_ties} near-ties; encoder states max |diff| {encoder_diff:.2e}"
        + (f"; CTC log-probs max |diff| {ctc_diff:.2e}" if compare_ctc else ""))
    return report


def verification_images(folder: Optional[Path], count: int) -> List:
    """Return up to `count` images from `folder`, or synthetic lines when no folder is given."""
    if folder is None:
        return sample_lines(count)
    from .bundle import list_images

    return [str(p) for p in list_images(folder)[:count]]
