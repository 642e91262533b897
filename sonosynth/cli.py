"""The `sonosynth` command. Each command group lives in sonosynth/commands/ and calls the API.

User errors (SonosynthError) and the machine's (OSError: a full disk, a file-size limit, no
permission) print one line `error: ...` and exit 1; a usage error (unknown option, missing argument)
exits 2; Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from sonosynth.commands import data as data_commands
from sonosynth.errors import SonosynthError

app = typer.Typer(
    name="sonosynth",
    help="Synthetic ultrasound images paired with segmentation masks, from mask-guided diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

data_commands.register(app)

# Further command groups register themselves here as they land (kept import-light:
# each module imports torch/diffusers inside its command functions).
for _module_name in (
    "sonosynth.commands.phantom",
    "sonosynth.commands.train",
    "sonosynth.commands.autoencoder",
    "sonosynth.commands.diffusion",
    "sonosynth.commands.synthesis",
    "sonosynth.commands.segmentation",
    "sonosynth.commands.classification",
    "sonosynth.commands.evaluation",
    "sonosynth.commands.demo",
    "sonosynth.commands.app",
):
    try:
        _module = __import__(_module_name, fromlist=["register"])
    except ModuleNotFoundError as _exc:
        if _exc.name != _module_name:
            raise
        continue
    _module.register(app)


INTERRUPTED = "interrupted: nothing half-written was left behind; run again to resume"


def main() -> None:
    try:
        app()
    except SonosynthError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except MemoryError:
        typer.echo("error: not enough memory for this request (ask for smaller images, fewer pairs or a smaller "
                   "batch); nothing half-written was left behind", err=True)
        sys.exit(1)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc} (nothing half-written was left behind)", err=True)
        sys.exit(1)
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C into a silent exit 130
            typer.echo(INTERRUPTED, err=True)
        raise
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
