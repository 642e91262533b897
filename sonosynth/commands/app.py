"""`sonosynth app RUN`: the browser app (pip install 'sonosynth[app]'), served on this machine only by default."""

from __future__ import annotations

from pathlib import Path

import typer

from sonosynth.commands import options as opt
from sonosynth.errors import SonosynthError


def app_command(
    run: Path = typer.Argument(..., help="Run folder written by `sonosynth train` (or its model/ folder)."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset to take masks and scans from."),
    segmenter: Path | None = typer.Option(None, "--segmenter", help="Segmenter run (`segment train`) for Dice."),
    review: Path | None = typer.Option(None, "--review", help="Generated dataset to open in the Review tab."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
    device: str = opt.DEVICE,
) -> None:
    """Draw or edit a mask and generate, edit a real scan (RePaint), review a synthetic dataset, in a browser."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SonosynthError("the app needs Gradio: pip install 'sonosynth[app]'") from None
    from sonosynth.app.session import AppSession
    from sonosynth.app.ui import serve
    from sonosynth.data.format import Dataset
    from sonosynth.data.validate import require_valid

    session = AppSession(run, dataset, segmenter, device=device)
    if review is not None:
        require_valid(Dataset.open(review), "pairs to review")
    typer.echo(f"sonosynth app on http://{host}:{port} (Ctrl-C stops it)")
    serve(session, review, host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("app", no_args_is_help=True)(app_command)
