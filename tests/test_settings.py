"""The one config convention (`sonosynth.settings.Config`): strict, nested, YAML round trip, atomic save."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import yaml

import sonosynth
from sonosynth.errors import SonosynthError
from sonosynth.settings import Config


def all_configs() -> list[type[Config]]:
    for module in pkgutil.walk_packages(sonosynth.__path__, "sonosynth."):
        if not module.name.startswith("sonosynth.commands") and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, todo = [], list(Config.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


CONFIGS = all_configs()


def test_every_config_dataclass_follows_the_convention():
    names = {c.__name__ for c in CONFIGS}
    assert {"TrainConfig", "ModelConfig", "AugmentConfig", "SegmentationConfig",
            "GeneratorRecipe", "GenerateConfig", "DeformConfig", "DownstreamConfig"} <= names


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_round_trip_through_yaml(cls, tmp_path):
    try:
        config = cls()
    except TypeError:
        pytest.skip(f"{cls.__name__} has required fields")
    path = tmp_path / "config.yaml"
    config.save(path)
    assert not list(tmp_path.glob("*.part"))  # written through a temporary file, renamed
    assert cls.from_yaml(path) == config
    assert cls.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_unknown_keys_nested_configs_and_tuples(tmp_path):
    from sonosynth.augment import AugmentConfig
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.segmentation.common import SegmentationConfig

    config = TrainConfig.from_dict({"model": {"kind": "concat", "size": "tiny"},
                                    "augment": {"preset": "gentle", "flip_prob": 0.5}})
    assert config.model.kind == "concat" and config.augment.flip_prob == 0.5
    with pytest.raises(SonosynthError, match=r"^run.yaml: model: unknown model config fields \['depth'\]$"):
        TrainConfig.from_dict({"model": {"depth": 3}}, origin="run.yaml")
    segmenter = SegmentationConfig.from_dict({"classical": {"rotate_deg": [-3, 3]}})
    assert segmenter.classical == AugmentConfig(rotate_deg=(-3, 3))
    with pytest.raises(SonosynthError, match=r"^s.yaml: .*size 30 does not suit"):  # validated on construction
        SegmentationConfig.from_dict({"size": 30, "net": "tiny"}, origin="s.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(SonosynthError, match="bad.yaml: a training config must be a YAML mapping"):
        TrainConfig.from_yaml(bad)
