"""The documentation cannot drift: the CLI reference is regenerated and compared, the README's Python
blocks run against a tiny model, every `sonosynth ...` command the README shows parses with the real
CLI, and every relative link resolves."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from factories import ellipse_pair

from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_image
from sonosynth.errors import SonosynthError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_HEAD = """# sonosynth

```bash
make demo   # creates .venv, installs everything (CPU torch 2.13.0), runs `sonosynth demo --out demo-out`
make test   # creates .venv, installs everything, runs ruff and the test suite
```
"""


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_cli_reference", DOCS / "generate_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.S | re.M)


def shown_commands(markdown: str) -> list[str]:
    """Every `sonosynth ...` command in the bash blocks and in inline code spans, continuations joined."""
    commands = []
    for block in code_blocks(markdown, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            # a command line, or one shown in a comment after "NAME: "; comments and "(...)" notes cut off
            # (a quoted argument such as a regex may hold '#' and '(')
            found = re.search(r"(?:^|: )(sonosynth (?:'[^']*'|\"[^\"]*\"|[^#('\"])+)", line)
            if found:
                commands.append(found.group(1).strip())
    commands += [span for span in re.findall(r"`([^`\n]+)`", markdown) if span.startswith("sonosynth ")]
    return commands


# ---- CLI reference ------------------------------------------------------------------------------------


def test_cli_reference_matches_the_cli():
    generator = load_generator()
    committed = generator.CLI_MD.read_text()
    recorded = re.search(r"typer ([\w.+-]+)'s doc generator", committed)
    if recorded and recorded.group(1) != generator.typer_version():
        pytest.skip(f"docs/cli.md was generated with typer {recorded.group(1)}, this is typer "
                    f"{generator.typer_version()}: the Markdown layout differs between versions")
    assert generator.render_cli_reference() == committed, (
        f"docs/cli.md differs from the CLI; regenerate it with `{generator.REGENERATE}` and commit it")


def test_cli_reference_names_every_command():
    """Guards the comparison above against a generator that silently renders nothing."""
    from sonosynth.cli import app

    text = (DOCS / "cli.md").read_text()
    root = typer.main.get_command(app)
    for name in root.list_commands(typer.Context(root)):
        assert f"## `sonosynth {name}`" in text, f"docs/cli.md lacks `sonosynth {name}`; run `make docs`"


# ---- README -------------------------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands():
    assert README.read_text().startswith(README_HEAD)


def command_problem(line: str) -> str | None:
    """Why `line` (a shown `sonosynth ...` command) would not parse: unknown (sub)command or option."""
    from sonosynth.cli import app

    words = shlex.split(line.replace("$", ""))[1:]
    if words and words[0].isupper():  # a placeholder such as `sonosynth COMMAND --help`
        return None
    command = typer.main.get_command(app)
    while hasattr(command, "list_commands") and words and not words[0].startswith("-"):  # a group
        sub = command.get_command(typer.Context(command), words[0])
        if sub is None:
            return f"no command '{words[0]}'"
        command, words = sub, words[1:]
    if hasattr(command, "list_commands") and "--help" not in words:
        return "names a command group, not a command"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in known]
    return f"{unknown[0]} is not an option of this command" if unknown else None


def test_command_checker_catches_mistakes():
    assert command_problem("sonosynth data split data/x --val 0.2") is None
    assert "--frobnicate" in command_problem("sonosynth data split data/x --frobnicate 1")
    assert "'nonsense'" in command_problem("sonosynth data nonsense data/x")
    assert "group" in command_problem("sonosynth segment")


def test_readme_commands_parse_with_the_real_cli():
    """Each shown command names an existing (sub)command and only options that command has."""
    commands = shown_commands(README.read_text())
    assert len(commands) >= 12, commands
    problems = [f"`{line}`: {problem}" for line in commands if (problem := command_problem(line))]
    assert not problems, "README commands that the CLI would reject:\n" + "\n".join(problems)


def write_tiny_run(run: Path, size: int = 32) -> Path:
    """An untrained tiny model saved as `sonosynth train` saves a run (enough to run the README's code)."""
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.schedulers import make_scheduler
    from sonosynth.models.configs import ModelConfig
    from sonosynth.models.denoiser import build_model

    torch.manual_seed(0)
    unet = build_model(ModelConfig(kind="spade", size="tiny", num_labels=2))
    pipe = MaskToUltrasoundPipeline(unet=unet, scheduler=make_scheduler("dpm++", prediction_type="v_prediction"),
                                    sample_size=size)
    pipe.save_pretrained(str(run / "model"))
    (run / "config.yaml").write_text(yaml.safe_dump({"size": size, "class_attributes": []}))
    return run


def write_split_dataset(out: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    info = DatasetInfo(name="hc18-like", labels={"0": "background", "1": "head"})
    with DatasetWriter(out, info) as writer:
        for i in range(n):
            image, mask = ellipse_pair(rng, 36, 52)
            writer.add(f"case_{i}", image, mask, subject=f"s{i}", split="test" if i < 4 else "train", spacing_mm=0.2)
    return out


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = code_blocks(README.read_text(), "python")
    assert len(blocks) == 2, "README: expected the pipeline snippet and the generate_dataset snippet"
    assert len(blocks[0].strip().splitlines()) <= 12, "README: the Python API snippet should stay about ten lines"
    write_tiny_run(tmp_path / "runs" / "hc18")
    write_split_dataset(tmp_path / "data" / "hc18")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest on shared cores
    try:
        for block in blocks:
            # The shown step counts make good images; 2 steps exercise the same code quickly.
            fast = block.replace("num_inference_steps=25", "num_inference_steps=2").replace("steps=25", "steps=2")
            fast = fast.replace("n=8,", "n=2,")
            assert fast != block, "README: the step count to shorten in the test has changed"
            exec(compile(fast, "README.md", "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
    images = [read_image(tmp_path / f"synthetic_{i}.png") for i in range(4)]
    assert all(image.shape == (32, 32) and image.dtype == np.uint8 for image in images)
    assert all(image.std() > 0 for image in images)
    assert not np.array_equal(images[0], images[1]), "one seed per image should give different images"
    synthetic = Dataset.open(tmp_path / "synthetic" / "hc18-api")
    assert len(synthetic) == 2
    assert {r.extra["mask_source"] for r in synthetic.records} == {"deform"}


def test_results_section_is_marked_and_honest():
    text = README.read_text()
    section = text.split("<!-- results:hc18 -->")[1].split("<!-- /results:hc18 -->")[0]
    measured = [DOCS / "results" / "hc18" / name for name in ("results.md", "README.md")]
    if any(path.is_file() for path in measured):
        assert "sonosynth" in section, "README results: include the command that produced the table"
    else:
        assert not re.search(r"\d\.\d{2}", section), "README results: numbers, none measured in docs/results/hc18/"


# ---- links --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_relative_links_resolve(page):
    path = REPO / page
    text = path.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    assert targets, f"{page}: no links found"
    for target in targets:
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{page}: link to {target} does not resolve"


def test_docs_index_links_every_page():
    index = (DOCS / "index.md").read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not link {page.name}; add it to the map"


# ---- README picture -----------------------------------------------------------------------------------


def test_overview_rows_pair_each_generated_image_with_its_real_source(tmp_path):
    spec = importlib.util.spec_from_file_location("make_overview", DOCS / "make_overview.py")
    overview = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overview)
    real = write_split_dataset(tmp_path / "real", n=4)
    info = DatasetInfo(name="synth", labels={"0": "background", "1": "head"})
    with DatasetWriter(tmp_path / "synth", info) as writer:
        for i, (source, mask_source) in enumerate([("case_2", "deform"), ("case_1", "train"), ("case_3", "train")]):
            image, mask = np.full((36, 52), 10 * (i + 1), np.uint8), (Dataset.open(real)[int(source[-1])].mask)
            writer.add(f"synth_{i}", image, mask, extra={"mask_source": mask_source, "source_id": source})
    rows = overview.rows_from_synthetic(tmp_path / "synth", real, n=2)
    real_images = {s.id: s.image for s in Dataset.open(real)}
    assert [row[1][0, 0, 0] for row in rows] == [20, 30]  # the deform pair is skipped
    assert np.array_equal(rows[0][2][..., 0], real_images["case_1"])
    assert np.array_equal(rows[1][2][..., 0], real_images["case_3"])
    picture = overview.compose(rows, ["mask", "generated", "real"], height=40)
    assert picture.shape[0] == 18 + 2 * 40 + 4 and picture.shape[2] == 3
    with pytest.raises(SonosynthError, match="fewer than 3"):
        overview.rows_from_synthetic(tmp_path / "synth", real, n=3)


def _commands(command, path=()):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_option_is_described_and_its_brackets_survive_the_help() -> None:
    """Each visible option has help text, and a `[...]` in it (pip extras) is shown, not eaten as markup."""
    import re

    import typer
    from typer.testing import CliRunner

    from sonosynth.cli import app

    undescribed, eaten = [], []
    for name, command in _commands(typer.main.get_command(app)):
        options = [p for p in command.params if getattr(p, "param_type_name", "") == "option" and not p.hidden]
        undescribed += [f"{name} {p.opts[0]}" for p in options if not (p.help or "").strip()]
        bracketed = [m for p in options for m in re.findall(r"\w+\\?\[\w+\]", p.help or "")]
        if bracketed:
            shown = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "400"}).output
            eaten += [f"{name}: {b}" for b in bracketed if b.replace("\\", "") not in shown]
    assert not undescribed, undescribed
    assert not eaten, eaten


def test_options_show_readable_metavars() -> None:
    """A repeatable option says what one value looks like (`--attr NAME=VALUE`), not a Python type."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    python_types = re.findall(r"`(--[\w-]+) <(?:list|dict|tuple)\[", text)
    assert not python_types, python_types
