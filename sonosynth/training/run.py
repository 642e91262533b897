"""The run folder of `sonosynth train`: the one place that knows its layout.

```
RUN/
  config.yaml     the TrainConfig it was trained with (for `--resume` and provenance)
  model/          the diffusers pipeline: model_index.json (image size, training step, class
                  attributes with their value lists), unet/, scheduler/. Everything generation
                  needs: copied alone to another machine it generates the same images.
                  A Stable Diffusion run (`--base`) holds only what it trained instead: base.json
                  (the base folder, its config hash, kind, prompt template, class values),
                  controlnet/ and/or pytorch_lora_weights.safetensors.
  checkpoints/    step-NNNNNN/ in safetensors + JSON, for exact resume
  samples/        step-NNNNNN.png grids (mask | generated | real)
  loss.csv        step, loss, lr
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sonosynth.errors import SonosynthError

CONFIG_YAML = "config.yaml"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
LOSS_CSV = "loss.csv"
MODEL_INDEX = "model_index.json"
BASE_JSON = "base.json"  # a Stable Diffusion run's model/: the base it needs (sonosynth.stable_diffusion)

# The pipeline class that loads each kind of model folder, by the file that marks the kind, named as a string and
# imported on use, as diffusers resolves a folder's `_class_name` (and its auto-pipelines their mappings): the
# sampling engine then needs no import of the families built on it.
PIPELINE_CLASSES = {
    BASE_JSON: "sonosynth.stable_diffusion.pipeline.PromptedMaskPipeline",
    MODEL_INDEX: "sonosynth.diffusion.pipeline.MaskToUltrasoundPipeline",
}


def _child(name: str) -> property:
    return property(lambda self: self.root / name, doc=f"RUN/{name}")


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (nothing is read or created by building it)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    config_yaml = _child(CONFIG_YAML)
    model = _child(MODEL_DIR)
    checkpoints = _child(CHECKPOINTS_DIR)
    samples = _child(SAMPLES_DIR)
    loss_csv = _child(LOSS_CSV)

    @property
    def has_model(self) -> bool:
        """Training finished: the pipeline was saved."""
        return is_model_folder(self.model)

    @property
    def has_checkpoints(self) -> bool:
        """Training started: there is something to `--resume` from."""
        return self.checkpoints.is_dir()


def is_model_folder(path: Path) -> bool:
    """A saved pipeline: sonosynth's own, or a Stable Diffusion run's trained parts."""
    return (path / MODEL_INDEX).is_file() or (path / BASE_JSON).is_file()


def model_folder(path: str | Path) -> Path:
    """The saved pipeline folder for `path`, which is either that folder or a run folder holding it."""
    path = Path(path)
    if is_model_folder(path):
        return path
    if RunFolder(path).has_model:
        return RunFolder(path).model
    if path.exists():
        raise SonosynthError(f"{path}: no {MODEL_INDEX} or {BASE_JSON} here or in {MODEL_DIR}/ (not a model or run)")
    raise SonosynthError(f"{path}: model folder not found")


def pipeline_class(folder: Path) -> type:
    """The pipeline class that loads the model folder `folder` (see `PIPELINE_CLASSES`)."""
    import importlib

    for marker, name in PIPELINE_CLASSES.items():
        if (folder / marker).is_file():
            module, _, attribute = name.rpartition(".")
            return getattr(importlib.import_module(module), attribute)
    raise SonosynthError(f"{folder}: no {MODEL_INDEX} or {BASE_JSON} (not a model folder)")


def legacy_class_values(path: str | Path, cardinalities: list[int]) -> dict[str, list[str]]:
    """Class attributes and value lists of a model saved before they were stored with it: the names from
    RUN/config.yaml, the values from the training dataset it names (which must still be where it was)."""
    import yaml

    from sonosynth.data.format import Dataset

    if not cardinalities:
        return {}
    path = Path(path)
    folder = RunFolder(path.parent if is_model_folder(path) else path)
    where = f"{path}: the model has {len(cardinalities)} class attributes but does not store their values"
    if not folder.config_yaml.is_file():
        raise SonosynthError(f"{where}, and there is no {folder.config_yaml} to read them from; retrain, or pass "
                             "the run folder")
    try:
        config = yaml.safe_load(folder.config_yaml.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SonosynthError(f"{folder.config_yaml}: invalid YAML ({exc})") from None
    names = [str(a) for a in config.get("class_attributes") or []]
    if len(names) != len(cardinalities):
        raise SonosynthError(f"{folder.config_yaml}: names {names} but the model has {len(cardinalities)} class "
                             "attributes")
    try:
        categorical = Dataset.open(config.get("dataset") or "").info.categorical_attributes
    except SonosynthError as exc:
        raise SonosynthError(f"{where}, and its training dataset cannot be read ({exc}); retrain") from None
    return {name: list(categorical.get(name, [])) for name in names}
