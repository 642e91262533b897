"""`sonosynth data phantom`: write a simulated dataset (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from sonosynth.commands import options as opt
from sonosynth.commands.data import data_app


def phantom(
    out: Path = typer.Argument(..., help="Output dataset folder (must not exist unless --overwrite)."),
    domain: str = typer.Option("fetal-head", "--domain", help="fetal-head | cardiac | breast"),
    n: int = typer.Option(100, "--n", help="Number of image/mask pairs."),
    size: str = typer.Option("256", "--size", help="Image size: S (square) or WIDTHxHEIGHT, e.g. 96x64."),
    seed: int = typer.Option(0, "--seed", help="Case i is reproducible from (seed, i) alone."),
    pixel_size_mm: float = typer.Option(
        None, "--pixel-size-mm", help="Fetal head: fixed pixel size (default: per case)."
    ),
    config: Path = typer.Option(
        None, "--config", help="YAML/JSON PhantomConfig (acoustic settings, tissue overrides)."
    ),
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Simulate ultrasound image/mask pairs (fetal head, apical 4-chamber heart, breast lesion)."""
    from sonosynth.errors import SonosynthError
    from sonosynth.files import prepare_output, require_space
    from sonosynth.phantom.cases import check_domain, parse_size
    from sonosynth.phantom.dataset import write_phantom_dataset
    from sonosynth.progress import progress_bar

    check_domain(domain)
    parsed = parse_size(size)
    if n < 1:
        raise SonosynthError(f"--n must be at least 1, got {n}")
    if seed < 0:
        raise SonosynthError(f"--seed must not be negative, got {seed}")
    prepare_output(out, overwrite)
    require_space(Path(out), n * 3 * parsed[0] * parsed[1], f"{n} pairs of {parsed[1]} x {parsed[0]} pixels")
    phantom_config = _load_config(config) if config is not None else None
    with progress_bar(total=n, desc=f"phantom {domain}", unit="img") as bar:
        path = write_phantom_dataset(
            out,
            domain,
            n,
            parsed,
            seed,
            overwrite=overwrite,
            pixel_size_mm=pixel_size_mm,
            config=phantom_config,
            progress=bar.update,
        )
    typer.echo(f"wrote {n} {domain} phantom pairs to {path}")


def _load_config(path: Path):
    from sonosynth.errors import SonosynthError
    from sonosynth.phantom.cases import PhantomConfig
    from sonosynth.settings import read_yaml_mapping

    if not path.is_file():
        raise SonosynthError(f"{path}: phantom config not found")
    data = read_yaml_mapping(path, "phantom config")
    try:
        return PhantomConfig.from_dict(data)
    except SonosynthError as exc:
        raise SonosynthError(f"{path}: {exc}") from None


def register(app: typer.Typer) -> None:
    data_app.command("phantom")(phantom)
