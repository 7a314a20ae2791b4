"""Fine-tuning and training VisionEncoderDecoder models with transformers' Seq2SeqTrainer."""

import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from htr.errors import HtrError
from htr.evaluate import character_error_rate
from htr.images import load_image, preprocess
from htr.manifest import Preprocessing


@dataclass(frozen=True)
class TrainSettings:
    out_dir: Path
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 5e-4
    warmup_steps: int = 500
    eval_every: int = 500
    eval_lines: int = 200
    save_every: int = 500
    bf16: bool = False
    seed: int = 0
    ctc_weight: float = 0.0
    lr_schedule: str = "cosine"
    workers: int = 1  # DataLoader processes that render and prepare lines while the model trains (0: in the training process)
    source_folder: Optional[Path] = None  # the --from folder: its CTC_HEAD_FILE starts the CTC head; with resume, its weights may go on
    stop_at: Optional[int] = None  # stop after this step (saving a checkpoint), to go on later with resume

    def stretch(self) -> dict:
        """The settings that fix the learning-rate schedule and the order of the training lines: a run goes on (resume) only with the same."""
        return {"steps": self.steps, "batch_size": self.batch_size, "learning_rate": self.learning_rate, "lr_schedule": self.lr_schedule,
                "warmup_steps": self.warmup_steps, "seed": self.seed}


def preprocessing_of(image_processor) -> Preprocessing:
    """Return the runtime's description of a ViT-style image processor, used to prepare training images identically."""
    from htr.export.bundle import preprocessing_spec

    spec = preprocessing_spec(image_processor)
    return Preprocessing(**{k: v for k, v in spec.items() if k != "image_processor"})


class LineDataset:
    """`(image, text)` sources mixed by index: labelled folders first, then synthetic lines."""

    def __init__(self, tokenizer, preprocessing: Preprocessing, labelled: Sequence[Tuple[str, str]] = (), synthetic=None, size: Optional[int] = None):
        self.tokenizer, self.preprocessing = tokenizer, preprocessing
        self.labelled, self.synthetic = list(labelled), synthetic
        if not self.labelled and synthetic is None:
            raise HtrError("no training data: give a labelled folder, synthetic lines, or both")
        self.size = size or (len(self.labelled) + (len(synthetic) if synthetic is not None and not self.labelled else 0))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        use_labelled = self.labelled and (self.synthetic is None or index % 2 == 0)
        if use_labelled:
            path, text = self.labelled[index % len(self.labelled)]
            image = load_image(path)
        else:
            image, text = self.synthetic[index]
        pixels = preprocess([load_image(image)], self.preprocessing)[0]
        labels = self.tokenizer(text, truncation=True, max_length=self.tokenizer.model_max_length).input_ids
        return {"pixel_values": pixels, "labels": labels}


def collate(samples: List[dict]) -> dict:
    import torch

    longest = max(len(s["labels"]) for s in samples)
    labels = np.full((len(samples), longest), -100, dtype=np.int64)
    for i, s in enumerate(samples):
        labels[i, : len(s["labels"])] = s["labels"]
    return {"pixel_values": torch.from_numpy(np.stack([s["pixel_values"] for s in samples])), "labels": torch.from_numpy(labels)}


def train(model, tokenizer, image_processor, train_data: LineDataset, eval_data: Optional[LineDataset], settings: TrainSettings, resume: bool = False):
    """Train with Seq2SeqTrainer; save a `save_pretrained` folder (model, processor, tokenizer) in `settings.out_dir`.

    With `resume`, go on from the newest checkpoint in `settings.out_dir / "checkpoints"`; where there is none (the run's
    machine is gone), from the weights-only snapshot in `settings.source_folder` (RUN/latest, or a copy of it), at the step
    its TRAINING_STATE_FILE names. With `settings.stop_at`, stop after that step and leave the run to go on: then nothing is
    saved in `settings.out_dir` itself. Returns the trainer.
    """
    from transformers import Seq2SeqTrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    random.seed(settings.seed)
    if settings.bf16 and not _cuda() and cpu_has_fast_bf16() is False:
        print("htr-train: this CPU has neither AVX512-BF16 nor AMX, so --bf16 is far slower than fp32 here "
              "(about 30x on an AVX2-only CPU); leave it out", file=sys.stderr)
    args = Seq2SeqTrainingArguments(
        output_dir=str(settings.out_dir / "checkpoints"),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=min(settings.warmup_steps, settings.steps // 5),
        lr_scheduler_type=settings.lr_schedule,
        weight_decay=0.01,
        logging_steps=max(1, min(50, settings.steps // 10)),
        eval_strategy="steps" if eval_data is not None else "no",
        eval_steps=settings.eval_every,
        save_strategy="steps",
        save_steps=settings.save_every,
        save_total_limit=2,
        predict_with_generate=True,
        generation_max_length=96,
        generation_num_beams=1,
        bf16=settings.bf16,
        seed=settings.seed,
        dataloader_num_workers=settings.workers,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=not _cuda(),
    )

    def metrics(prediction):
        predicted = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        labels = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        texts = tokenizer.batch_decode(predicted, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return {"cer": character_error_rate(texts, refs)}

    use_unshifted_loss(model)
    trainer_class = _trainer_class()
    if settings.ctc_weight > 0:
        if attach_ctc_head(model, len(tokenizer), settings.source_folder):
            print(f"htr-train: the CTC head goes on from {settings.source_folder / CTC_HEAD_FILE}", file=sys.stderr)
        trainer_class = _ctc_trainer(trainer_class, settings.ctc_weight, blank=tokenizer.pad_token_id, ignore=set(tokenizer.all_special_ids))
    checkpoint = None
    if resume:
        checkpoints = Path(args.output_dir)
        checkpoint = get_last_checkpoint(checkpoints) if checkpoints.is_dir() else None
        if checkpoint is None:
            checkpoint = _checkpoint_from_snapshot(model, settings, args)
    callbacks = [_latest_callback(settings.out_dir / "latest", tokenizer, image_processor, settings.stretch())]
    if settings.stop_at is not None:
        callbacks.append(_stop_callback(settings.stop_at))
    trainer = trainer_class(
        model=model, args=args, train_dataset=train_data, eval_dataset=eval_data, data_collator=collate, processing_class=tokenizer,
        compute_metrics=metrics if eval_data is not None else None, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.state.global_step < settings.steps:
        print(f"htr-train: stopped at step {trainer.state.global_step} of {settings.steps}; {settings.out_dir / 'latest'} holds its weights. "
              "Go on with the same command and --resume (on another machine, with --from a copy of that folder)", file=sys.stderr)
        return trainer
    save_weights_only(model, tokenizer, image_processor, settings.out_dir)
    if hasattr(model, "ctc_head"):
        del model.ctc_head  # training only: the exported model is the plain VisionEncoderDecoder
    return trainer


def decoder_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100, **kwargs):
    """Cross-entropy of each position's logits against the label at the same position (mean over the labelled positions,
    or their sum over `num_items_in_batch` when the Trainer counts them across accumulated batches)."""
    import torch

    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab_size), labels.reshape(-1).to(logits.device),
                                             ignore_index=ignore_index, reduction="mean" if num_items_in_batch is None else "sum")
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def use_unshifted_loss(model) -> None:
    """Make `model(pixel_values, labels=...)` score each position's logits against the label at that position.

    The decoder's inputs are already the labels shifted right, but transformers 4.50 to 4.57 give
    VisionEncoderDecoderModel the causal-LM loss, which shifts the labels once more: trained with
    it, a model learns to predict the token after next, and fine-tuning ruins a trained TrOCR
    (huggingface/transformers#40111, fixed upstream by #40863). Versions whose model has no
    settable loss function compute the right loss themselves and are left alone.
    """
    attribute = getattr(type(model), "loss_function", None)
    if isinstance(attribute, property) and attribute.fset is not None:
        model.loss_function = decoder_loss


CTC_UPSAMPLE = 2  # CTC steps per encoder column: lines hold more characters than a 32x384 image has patch columns
CTC_HEAD_FILE = "ctc_head.safetensors"  # training only, beside the model: a run going on with --from keeps its CTC head
TRAINING_STATE_FILE = "training_state.json"  # beside RUN/latest's weights: the step they hold and the evaluations so far


def _patch_grid(encoder_config) -> Tuple[int, int]:
    from htr.export.bundle import image_and_patch_size

    (height, width), (patch_h, patch_w) = image_and_patch_size(encoder_config)
    return height // patch_h, width // patch_w


def attach_ctc_head(model, vocab_size: int, saved_in: Optional[Path] = None) -> bool:
    """Give `model` a training-only `ctc_head`: each patch column's features (all rows) -> CTC_UPSAMPLE steps of vocabulary logits.

    An auxiliary CTC loss on the encoder output aligns the encoder with the text early, which gets
    from-scratch training off the unigram plateau sooner. The head is kept out of the model's
    weights (htr-export never sees it) but saved beside them as CTC_HEAD_FILE; when `saved_in`
    holds one of the same shape, the head starts from it. Returns whether it did.
    """
    import torch

    rows, columns = _patch_grid(model.config.encoder)
    model.ctc_head = torch.nn.Linear(rows * model.config.encoder.hidden_size, CTC_UPSAMPLE * vocab_size)
    model.ctc_head.grid = (rows, columns)
    saved = Path(saved_in) / CTC_HEAD_FILE if saved_in else None
    if saved is None or not saved.is_file():
        return False
    from safetensors.torch import load_file

    state = load_file(str(saved))
    if any(state.get(k) is None or state[k].shape != v.shape for k, v in model.ctc_head.state_dict().items()):
        return False  # another vocabulary or patch grid: a fresh head
    model.ctc_head.load_state_dict(state)
    return True


def ctc_log_probs(head, hidden):
    """CTC log-probabilities (B, cols * CTC_UPSAMPLE, vocab) of the encoder's last hidden state (B, extra + rows*cols, H)."""
    rows, cols = head.grid
    batch, _, size = hidden.shape
    patches = hidden[:, -rows * cols :]  # the patch tokens come last, after CLS (and DeiT's distillation token)
    columns = patches.reshape(batch, rows, cols, size).permute(0, 2, 1, 3).reshape(batch, cols, rows * size)
    logits = head(columns).reshape(batch, cols * CTC_UPSAMPLE, -1)
    return logits.float().log_softmax(-1)


def ctc_loss(head, hidden, labels, blank: int, ignore: set):
    """CTC loss of the encoder's last hidden state (B, extra + rows*cols, H) against the decoder labels."""
    import torch

    batch = hidden.shape[0]
    log_probs = ctc_log_probs(head, hidden).transpose(0, 1)
    targets = [[t for t in row.tolist() if t >= 0 and t not in ignore] for row in labels]
    lengths = torch.tensor([len(t) for t in targets])
    flat = torch.tensor([t for row in targets for t in row], dtype=torch.long)
    steps = torch.full((batch,), log_probs.shape[0], dtype=torch.long)
    return torch.nn.functional.ctc_loss(log_probs, flat, steps, lengths, blank=blank, zero_infinity=True)


def _trainer_class():
    from transformers import Seq2SeqTrainer, TrainerState
    from transformers.trainer import SCHEDULER_NAME, TRAINER_STATE_NAME

    class Trainer(Seq2SeqTrainer):
        """Seq2SeqTrainer that, going on from a checkpoint without a scheduler state (one made from a weights-only
        snapshot), moves the learning-rate schedule to the checkpoint's step instead of starting it again."""

        def _load_optimizer_and_scheduler(self, checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None or (Path(checkpoint) / SCHEDULER_NAME).is_file():
                return
            step = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME)).global_step
            self.lr_scheduler.last_epoch = step - 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "step() before optimizer.step()": this moves the schedule, it trains nothing
                self.lr_scheduler.step()

    return Trainer


def _checkpoint_from_snapshot(model, settings: TrainSettings, args) -> str:
    """Write a checkpoint that the trainer goes on from, holding `model`'s weights (the snapshot's, loaded with --from) at the
    step the snapshot's TRAINING_STATE_FILE names, after checking that it is a step of the same stretch. It holds no
    optimizer state: AdamW's moments start afresh, while the learning-rate schedule and the training lines go on."""
    import json

    from transformers import TrainerControl, TrainerState
    from transformers.trainer import TRAINER_STATE_NAME

    checkpoints, snapshot = Path(args.output_dir), settings.source_folder
    if snapshot is None:
        raise HtrError(f"--resume: {checkpoints} holds no checkpoint; to go on from a weights-only snapshot of the run "
                       "(RUN/latest, or a copy of it), give that folder with --from")
    try:
        saved = json.loads((snapshot / TRAINING_STATE_FILE).read_text())
        step, stretch = int(saved["global_step"]), saved.get("stretch")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HtrError(f"--resume: {checkpoints} holds no checkpoint, and {snapshot / TRAINING_STATE_FILE} cannot say which step "
                       f"of a run {snapshot} holds ({e}); leave out --resume to start a new stretch from it") from e
    if stretch is None:
        raise HtrError(f"--resume: {snapshot / TRAINING_STATE_FILE} does not record the settings of its stretch (written by an "
                       "older htr-train); leave out --resume to start a new stretch from it")
    if stretch != settings.stretch():
        differ = ", ".join(f"{k} {stretch.get(k)} there, {v} here" for k, v in settings.stretch().items() if stretch.get(k) != v)
        raise HtrError(f"--resume: {snapshot} holds step {step} of a stretch with other settings ({differ}); give the same "
                       "settings, or leave out --resume to start a new stretch from it")
    if not 0 < step < settings.steps:
        raise HtrError(f"--resume: {snapshot} holds step {step} of {settings.steps}: nothing to go on with; leave out --resume "
                       "to start a new stretch from it")
    folder = checkpoints / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, state_dict=model.state_dict())  # as the trainer saves checkpoints: the CTC head among the weights
    TrainerState(global_step=step, max_steps=settings.steps, logging_steps=args.logging_steps, eval_steps=args.eval_steps,
                 save_steps=args.save_steps, train_batch_size=settings.batch_size, num_train_epochs=1,
                 log_history=saved.get("evaluations", []), stateful_callbacks=[TrainerControl()]).save_to_json(str(folder / TRAINER_STATE_NAME))
    print(f"htr-train: going on from step {step} of {settings.steps} with the weights in {snapshot} (no optimizer state there: "
          "AdamW's moments start afresh)", file=sys.stderr)
    return str(folder)


def _ctc_trainer(base, weight: float, blank: int, ignore: set):
    class CtcTrainer(base):
        """Seq2SeqTrainer whose training loss adds `weight` x CTC loss on the encoder output."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            loss = outputs.loss
            if model.training:
                loss = loss + weight * ctc_loss(model.ctc_head, outputs.encoder_last_hidden_state, inputs["labels"], blank, ignore)
            return (loss, outputs) if return_outputs else loss

    return CtcTrainer


def save_weights_only(model, tokenizer, image_processor, folder: Path) -> None:
    """Save a plain `save_pretrained` folder (no optimizer, no training-only heads) that `--from` and htr-export take."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ctc_head.")}
    model.save_pretrained(folder, state_dict=state)
    if hasattr(model, "ctc_head"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.ctc_head.state_dict().items()}, str(Path(folder) / CTC_HEAD_FILE))
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)


def _latest_callback(folder: Path, tokenizer, image_processor, stretch: dict):
    """A callback that refreshes `folder` with weights-only at every checkpoint, plus the step, the evaluation history and
    the `stretch` settings (TrainSettings.stretch), so that a run can go on from the folder alone."""
    import json

    from transformers import TrainerCallback

    class Latest(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if model is not None and state.is_world_process_zero:
                save_weights_only(model, tokenizer, image_processor, folder)
                history = [h for h in state.log_history if "eval_cer" in h]
                (folder / TRAINING_STATE_FILE).write_text(json.dumps({"global_step": state.global_step, "stretch": stretch, "evaluations": history}, indent=1))

    return Latest()


def _stop_callback(step: int):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_save = control.should_training_stop = True

    return Stop()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[bool]:
    """Return whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), or None where its flags cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None
