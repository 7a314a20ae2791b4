"""`htr-average`: the mean of the weights of several checkpoints of one training run.

Checkpoints taken along one run (each stretch going on `--from` the last) lie in one basin of the
loss; their mean can lie lower in it than any of them, as in stochastic weight averaging
(Izmailov et al., 2018) and the checkpoint averaging of machine translation. It costs no training.
"""

import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import click

from htr.errors import HtrError

from .trainer import CTC_HEAD_FILE, TRAINING_STATE_FILE

WEIGHT_FILES = ("model.safetensors", CTC_HEAD_FILE)  # the second only where every source has it
RECORD_FILE = "averaged_from.json"


def average_checkpoints(sources: Sequence[Path], out_dir: Path) -> Path:
    """Write to `out_dir` a save_pretrained folder whose weights are the element-wise mean of those of `sources`.

    The sources must share one config (architecture and vocabulary): the folders of one run. The
    other files (config, image processor, tokenizer) come from the last source; `RECORD_FILE` names
    the sources. Weights that are not floating point (none in a VisionEncoderDecoder) must agree.
    """
    from safetensors.torch import load_file, save_file

    if len(sources) < 2:
        raise HtrError(f"give at least two checkpoints to average (got {len(sources)})")
    configs = {}
    for source in sources:
        config = source / "config.json"
        if not config.is_file():
            raise HtrError(f"{source} is not a save_pretrained folder: it has no config.json")
        configs[source] = json.loads(config.read_text())
    first = sources[0]
    for source in sources[1:]:
        if configs[source] != configs[first]:
            raise HtrError(f"{source} has another config.json than {first}: only checkpoints of one architecture and vocabulary average")
    names = [name for name in WEIGHT_FILES if all((source / name).is_file() for source in sources)]
    if WEIGHT_FILES[0] not in names:
        missing = [str(source) for source in sources if not (source / WEIGHT_FILES[0]).is_file()]
        raise HtrError(f"no {WEIGHT_FILES[0]} in {', '.join(missing)} (htr-average reads safetensors weights only)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise HtrError(f"{out_dir} exists and is not empty; choose a new folder")
    averaged: Dict[str, dict] = {name: _mean([load_file(str(source / name)) for source in sources], sources, name) for name in names}
    out_dir.mkdir(parents=True, exist_ok=True)
    last = sources[-1]
    for item in last.iterdir():  # config, image processor and tokenizer files; not the last run's training record
        if item.is_file() and item.name not in WEIGHT_FILES and item.name not in (TRAINING_STATE_FILE, RECORD_FILE, "README.md"):
            shutil.copy2(item, out_dir / item.name)
    for name, state in averaged.items():
        save_file(state, str(out_dir / name), metadata={"format": "pt"})
    (out_dir / RECORD_FILE).write_text(json.dumps({"sources": [str(source) for source in sources], "weights": "equal"}, indent=1) + "\n")
    return out_dir


def _mean(states: List[dict], sources: Sequence[Path], name: str) -> dict:
    import torch

    keys = set(states[0])
    for source, state in zip(sources[1:], states[1:]):
        if set(state) != keys:
            raise HtrError(f"{source / name} holds other tensors than {sources[0] / name}: {sorted(keys ^ set(state))[:5]}")
    mean = {}
    for key in sorted(keys):
        tensors = [state[key] for state in states]
        for source, tensor in zip(sources[1:], tensors[1:]):
            if tensor.shape != tensors[0].shape:
                raise HtrError(f"{key} in {source / name} has shape {tuple(tensor.shape)}, in {sources[0] / name} {tuple(tensors[0].shape)}")
        if tensors[0].is_floating_point():
            mean[key] = (torch.stack([t.double() for t in tensors]).mean(0)).to(tensors[0].dtype).contiguous()
        elif all(torch.equal(t, tensors[0]) for t in tensors[1:]):
            mean[key] = tensors[0].contiguous()
        else:
            raise HtrError(f"{key} in {name} is not floating point and differs between the checkpoints; it cannot be averaged")
    return mean


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def main(out_dir, checkpoints):
    """Average the weights of CHECKPOINTS (save_pretrained folders of one run) into OUT_DIR.

    OUT_DIR takes the config, image processor and tokenizer of the last checkpoint; htr-export and
    htr-train --from take it like any checkpoint. Judge it with htr-eval against the checkpoints.
    """
    try:
        click.echo(str(average_checkpoints(list(checkpoints), out_dir)))
    except HtrError as e:
        click.echo(f"htr-average: {e}", err=True)
        sys.exit(1)
