"""Options shared by several commands: one definition each, so a word means the same everywhere.

`--steps` in `sample`, `generate` and `edit` is the number of denoising steps; `--source` is the
dataset masks are taken from; `--mask-source` says which kind of masks (train, deform, shape).
"""

from __future__ import annotations

import typer

from sonosynth.devices import DEVICE_HELP

DEVICE = typer.Option("auto", "--device", help=DEVICE_HELP)
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output folder.")
SEGMENTER_BATCH_SIZE = typer.Option(8, "--batch-size", help="Training images per step of the U-Net (nnU-Net plans "
                                    "its own batch).")
MIN_STEPS = typer.Option(0, "--min-steps", help="No early stop before this many training steps (a small, noisy "
                         "validation set can peak at its first check by luck).")
AUTO_SPLIT = typer.Option(False, "--auto-split", help="A real dataset without train/val/test splits: accept an "
                          "automatic subject-wise split (recorded) instead of stopping (better: `sonosynth data "
                          "split` once).")
DOWNSTREAM_ARMS = typer.Option(
    "auto", "--arms",
    help="Comma separated among real, real+classical, real+synthetic, real+synthetic+classical, synthetic, "
    "real+pseudo-labels(+classical), real+synthetic+pseudo-labels(+classical) (auto: all the data allows: no "
    "synthetic arms without synthetic data, pseudo-labels ones only with --unannotated; no +classical arms with "
    "--net nnunet).",
)
UNANNOTATED = typer.Option("", "--unannotated", metavar="N", help="Give each cell the scans of N more pool subjects "
                           "(or 'all') without their masks: the generator learns from them, and the *pseudo-labels "
                           "arms self-train on them (the baseline; docs/evaluation.md).")
SEED = typer.Option(0, "--seed", help="Seed of all randomness: the same seed gives the same output on one device.")
BATCH_SIZE = typer.Option(8, "--batch-size", help="Images per forward pass (does not change the images).")
SAMPLE_STEPS = typer.Option(25, "--steps", help="Denoising steps.")
GUIDANCE = typer.Option(None, "--guidance", help="Classifier-free guidance scale (1 = none; default: the run's own, "
                        "1.5 for sonosynth models, the fine-tune's for Stable Diffusion runs).")
ANOMALY = typer.Option(
    None, "--anomaly", metavar="NAME[+NAME]", help="Edit each mask's lesion (label 1) into a malignant-looking one: "
    "spiculated, angular, microlobulated, taller-than-wide, joined by + (docs/synthesis.md)."
)
PROMPT = typer.Option(None, "--prompt", help="Stable Diffusion runs: this text instead of the run's prompt template.")
SCHEDULER = typer.Option(None, "--scheduler", help="Sampler: dpm++, dpm++sde, unipc, ddim or ddpm; euler, dpm++ or "
                         "unipc for a flow run (default: saved).")
SPLIT = typer.Option("auto", "--split",
                     help="Masks from this split: auto (train when there are splits, else all), train, val, test, all.")
OUTPUT_SIZE = typer.Option("cropped", "--output-size",
                           help="cropped (model scale, no padding), source (each source pair's size) or square.")

# Training: `--max-steps` is the training cap, `--net-size` a network size preset, `--learning-rate` the
# (peak) learning rate, in `train`, `segment train` and `evaluate downstream` alike.
MIXED_PRECISION = typer.Option(None, "--mixed-precision",
                               help="auto (bf16, or fp16, on a GPU; none on a CPU), no, fp16 or bf16.")
NET_SIZES = "tiny, small, deep (128-256 px on a CPU) or base"


def segmenter_net() -> typer.models.OptionInfo:
    return typer.Option(
        "unet", "--net",
        help="Segmenter: unet (a MONAI U-Net of --net-size), nnunet (nnU-Net v2 2d with its own training recipe; "
        "pip install 'sonosynth\\[nnunet]') or sam (Segment Anything from --weights, mask decoder fine-tuned).",
    )


def sam_weights() -> typer.models.OptionInfo:
    return typer.Option(None, "--weights", help="--net sam: a local Segment Anything folder (transformers format).")


def sam_box() -> typer.models.OptionInfo:
    return typer.Option(
        "unet", "--sam-box",
        help="--net sam: test-time box prompts from the run's U-Net (unet, fair) or the reference mask (reference).",
    )


def segmenter_choice(net: str, net_size: str, weights: object, sam_box: str) -> dict[str, object]:
    """The `SegmentationConfig` fields that `--net`, `--net-size`, `--weights` and `--sam-box` set."""
    return {"net": net, "net_size": net_size, "weights": None if weights is None else str(weights), "sam_box": sam_box}


def synthetic_schedule() -> typer.models.OptionInfo:
    return typer.Option("mix", "--synthetic-schedule",
                        help="How synthetic pairs are used: mix (in every batch, --synthetic-ratio) or pretrain "
                        "(train on them alone first, then fine-tune on the real pairs).")


def max_steps(default: int | None, help: str) -> typer.models.OptionInfo:
    return typer.Option(default, "--max-steps", help=help)


def net_size(default: str | None, help: str = f"Network size preset: {NET_SIZES}.") -> typer.models.OptionInfo:
    return typer.Option(default, "--net-size", help=help)


def learning_rate(default: float | None, help: str = "Learning rate.") -> typer.models.OptionInfo:
    return typer.Option(default, "--learning-rate", help=help)


def old_spelling(name: str, new: str) -> typer.models.OptionInfo:
    """A hidden option that keeps an old flag working for one release (CHANGELOG lists them), saying so in one
    line on stderr when used."""
    def note(value: object) -> object:
        if value is not None:
            typer.echo(f"note: {name} is the old spelling of {new}, which it will give way to in the next release",
                       err=True)
        return value

    return typer.Option(None, name, hidden=True, help=f"Old spelling of {new}.", callback=note)


def name_list(text: str | None) -> list[str] | None:
    """A comma-separated option's names, stripped (an empty name kept: e.g. the pairs without a split), or None."""
    return [name.strip() for name in text.split(",")] if text else None


def int_list(text: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of non-negative integers (`3,4`), or None when the option was not given."""
    if text is None:
        return None
    from sonosynth.errors import SonosynthError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdigit() for t in items):
        raise SonosynthError(f"{flag} {text}: expected non-negative integers, comma separated (e.g. 3,4)")
    return [int(t) for t in items]


def either(new: object, old: object) -> object:
    """The value given with the old spelling when there is one, else the new option's."""
    return new if old is None else old
