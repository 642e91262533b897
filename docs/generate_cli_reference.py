"""Write docs/cli.md from the `sonosynth` command itself, so the reference cannot drift from the code.

Uses typer's own Markdown generator (`typer sonosynth.cli utils docs`, shipped with the typer
package) and adds a header saying how the file was made. `make docs` runs this script;
tests/test_docs.py regenerates the text and fails when the committed file differs.

    python docs/generate_cli_reference.py            # rewrite docs/cli.md
    python docs/generate_cli_reference.py --check    # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_MD = REPO / "docs" / "cli.md"
REGENERATE = "make docs"
HEADER = (
    "<!-- Generated from the CLI by `make docs` (docs/generate_cli_reference.py, typer {typer_version}'s doc "
    "generator). Do not edit by hand: tests/test_docs.py fails when this file differs from the CLI. -->\n\n"
)


def typer_version() -> str:
    """The layout of the generated Markdown depends on typer's version, so the header records it."""
    from importlib.metadata import version

    return version("typer")


def render_cli_reference() -> str:
    """The Markdown reference of every `sonosynth` command, as typer renders it."""
    command = [sys.executable, "-W", "ignore", "-m", "typer", "sonosynth.cli", "utils", "docs",
               "--name", "sonosynth", "--title", "CLI reference: `sonosynth`"]
    # A fixed terminal description so nothing in the output depends on who runs it.
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"typer's doc generator failed:\n{done.stderr}")
    return HEADER.format(typer_version=typer_version()) + done.stdout.strip() + "\n"


def main(argv: list[str]) -> int:
    text = render_cli_reference()
    if "--check" in argv:
        if CLI_MD.is_file() and CLI_MD.read_text() == text:
            return 0
        print(f"{CLI_MD.relative_to(REPO)} is stale; regenerate it with `{REGENERATE}`", file=sys.stderr)
        return 1
    CLI_MD.write_text(text)
    print(f"wrote {CLI_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
