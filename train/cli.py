"""`htr-train`: fine-tune or train a VisionEncoderDecoder model on line images, synthetic lines, or both."""

import sys
from pathlib import Path

import click

from htr.errors import HtrError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--from", "source", help="Start from this checkpoint (hub id or save_pretrained folder).")
@click.option("--config", "config_source", help="Start from scratch with the architecture of this config (hub id or folder; weights random), "
                                               "its image processor and its tokenizer.")
@click.option("--demo", is_flag=True, help="Start from scratch with the demo architecture (ViT 32x384 + 3-layer TrOCR decoder, character tokenizer).")
@click.option("--data", "folders", multiple=True, type=click.Path(exists=True, path_type=Path), help="Folder with line images and labels.tsv; repeatable.")
@click.option("--synthetic", is_flag=True, help="Train on synthetic handwriting lines (train fonts); evaluate on lines in held-out fonts.")
@click.option("--alphabet", help="New character tokenizer: a file holding the alphabet, or the characters themselves. The decoder's embeddings and output layer are re-initialised, the encoder kept.")
@click.option("--input-size", callback=lambda ctx, param, value: _size(value), metavar="HxW",
              help="Train on images resized to H x W pixels. With --from or --config the encoder keeps its grid of patches and "
                   "its patch embedding is resampled to the larger or smaller patches (ViT and DeiT encoders).")
@click.option("--freeze-encoder", is_flag=True, help="Train the decoder only.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True),
              help="Dropout on the hidden states and attention weights of encoder and decoder while training, a regulariser "
                   "against fitting the few hands of a small data set (0.1 is usual). Default: the model's own.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=5e-4, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["cosine", "linear", "constant_with_warmup"]), default="cosine", show_default=True,
              help="After warmup: decay to zero over --steps, or hold (for a long run continued across machines with --from).")
@click.option("--warmup", "warmup_steps", type=click.IntRange(min=0), default=500, show_default=True,
              help="Steps of linear learning-rate warmup (at most a fifth of --steps); a run going on with --from needs few.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Processes that render and prepare lines while the model trains; 0 prepares them in the training process.")
@click.option("--eval-every", type=click.IntRange(min=1), default=500, show_default=True, help="Steps between CER evaluations and checkpoints.")
@click.option("--eval-lines", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--bf16", is_flag=True, help="Mixed precision (bf16 autocast). On CPU it pays only with AVX512-BF16 or AMX; on AVX2-only CPUs it is about 30x slower than fp32.")
@click.option("--ctc", "ctc_weight", type=click.FloatRange(min=0), help="Weight of an auxiliary CTC loss on the encoder output (training only; dropped from the saved model). "
                   "Default: 0.5 with --demo or --config, or when --from holds a CTC head from an earlier run, else 0.")
@click.option("--resume", is_flag=True, help="Go on from the newest checkpoint in OUT_DIR/checkpoints; where there is none (a new machine), "
              "from the weights-only snapshot given with --from (OUT_DIR/latest, or a copy of it) at its step: the learning-rate schedule "
              "and the training lines go on, the optimizer's moments start afresh. Give the same settings as the run.")
@click.option("--stop-at", type=click.IntRange(min=1), metavar="STEP", help="Stop after this step, saving a checkpoint and OUT_DIR/latest, "
              "to go on later with --resume: a stretch longer than a sitting.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out_dir, source, config_source, demo, folders, synthetic, alphabet, input_size, freeze_encoder, dropout, steps, batch_size, learning_rate, lr_schedule, warmup_steps, workers, eval_every, eval_lines, bf16, ctc_weight, resume, stop_at, seed):
    """Train into OUT_DIR; the result is a save_pretrained folder that htr-export takes."""
    from .model import ENGLISH, char_tokenizer, demo_image_processor, demo_model, model_from_config, resize_input, swap_tokenizer, with_dropout
    from htr.evaluate import read_labels

    from .trainer import CTC_HEAD_FILE, LineDataset, TrainSettings, preprocessing_of, train

    try:
        if sum(map(bool, (source, config_source, demo))) != 1:
            raise HtrError("give exactly one of --from MODEL, --config MODEL and --demo")
        if demo:
            tokenizer = char_tokenizer(_alphabet(alphabet) if alphabet else ENGLISH)
            model, image_processor = demo_model(len(tokenizer), *(input_size or ())), demo_image_processor(*(input_size or ()))
        elif config_source:
            model, image_processor, tokenizer = model_from_config(config_source)
        else:
            from htr.export.bundle import load_checkpoint

            checkpoint = load_checkpoint(source)
            model, image_processor, tokenizer = checkpoint.model, checkpoint.image_processor, checkpoint.tokenizer
        if input_size and not demo:
            model = resize_input(model, image_processor, *input_size)
        if dropout is not None:
            model = with_dropout(model, dropout)
        if alphabet and not demo:  # --demo builds its tokenizer from the alphabet above
            tokenizer = char_tokenizer(_alphabet(alphabet))
            swap_tokenizer(model, tokenizer)
        if freeze_encoder:
            for parameter in model.encoder.parameters():
                parameter.requires_grad = False
        model.train()
        pre = preprocessing_of(image_processor)
        labelled = [row for folder in folders for row in read_labels(folder)]
        generator = eval_generator = None
        if synthetic:
            from .synth import SyntheticLines

            # the evaluation lines stay the same whatever --seed draws for training, so that runs going on from each other compare
            generator, eval_generator = SyntheticLines("train", seed=seed), SyntheticLines("eval", seed=0)
        if eval_generator is None and len(labelled) >= 20:
            held = max(1, len(labelled) // 10)
            labelled, held_out = labelled[held:], labelled[:held]
            eval_data = LineDataset(tokenizer, pre, labelled=held_out)
        else:
            eval_data = LineDataset(tokenizer, pre, synthetic=eval_generator, size=eval_lines) if eval_generator else None
        train_data = LineDataset(tokenizer, pre, labelled=labelled, synthetic=generator, size=steps * batch_size)
        if ctc_weight is None:  # a run going on from one trained with CTC keeps it
            ctc_weight = 0.5 if demo or config_source or (source and not alphabet and (Path(source) / CTC_HEAD_FILE).is_file()) else 0.0
        settings = TrainSettings(out_dir=out_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate, lr_schedule=lr_schedule, warmup_steps=warmup_steps, workers=workers,
                                 eval_every=eval_every, save_every=eval_every, eval_lines=eval_lines, bf16=bf16, seed=seed,
                                 ctc_weight=ctc_weight,
                                 source_folder=Path(source) if source and Path(source).is_dir() else None, stop_at=stop_at)
        trainer = train(model, tokenizer, image_processor, train_data, eval_data, settings, resume=resume)
    except HtrError as e:
        click.echo(f"htr-train: {e}", err=True)
        sys.exit(1)
    click.echo(str(out_dir if trainer.state.global_step >= steps else out_dir / "latest"))


def _size(value):
    if value is None:
        return None
    height, x, width = value.lower().partition("x")
    if not (x and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise click.BadParameter(f"{value!r} is not HEIGHTxWIDTH in pixels, such as 64x384")
    return int(height), int(width)


def _alphabet(value: str) -> str:
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    return "".join(sorted(set(text.replace("\n", ""))))
