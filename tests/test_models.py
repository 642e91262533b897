"""The conditional denoiser: shapes per kind, conditioning, CFG null values, joint decode, save/load."""

from __future__ import annotations

import pytest
import torch
from factories import randomize

from sonosynth.diffusion.data import drop_conditions, training_inputs
from sonosynth.errors import SonosynthError
from sonosynth.models import SIZE_PRESETS, ModelConfig, build_model
from sonosynth.models.denoiser import ConditionalDenoiser

SIDE = 16


def make_batch(batch: int = 2, num_labels: int = 3, attributes: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fov = torch.zeros(batch, 1, SIDE, SIDE)
    fov[..., 2:-2, 2:-2] = 1
    return {
        "image": torch.rand(batch, 1, SIDE, SIDE, generator=g) * 2 - 1,
        "label": torch.randint(0, num_labels, (batch, SIDE, SIDE), generator=g),
        "fov": fov,
        "classes": torch.zeros(batch, attributes, dtype=torch.long),
    }


@pytest.mark.parametrize("kind", ["spade", "concat", "joint"])
def test_shapes_per_kind(kind: str) -> None:
    model = build_model(ModelConfig(kind=kind, size="tiny", num_labels=3))
    x0, condition, class_labels = training_inputs(model, make_batch())
    expected_channels = 1 + (3 if kind == "joint" else 0)
    assert model.sample_channels == expected_channels
    assert x0.shape == (2, expected_channels, SIDE, SIDE)
    assert condition is not None and condition.shape == (2, (0 if kind == "joint" else 3) + 1, SIDE, SIDE)
    assert class_labels is None
    out = model(x0, torch.tensor([3, 900]), condition, class_labels)
    assert out.shape == x0.shape
    assert sum(p.numel() for p in model.parameters()) < 100_000


@pytest.mark.parametrize("block", ["light", "monai"])
def test_spade_blocks_condition_the_decoder(block: str) -> None:
    from monai.networks.blocks import SPADE

    from sonosynth.models.denoiser import LightSPADE

    model = randomize(build_model(ModelConfig(kind="spade", size="tiny", num_labels=3, spade_block=block)))
    expected = LightSPADE if block == "light" else SPADE
    norms = [m for m in model.modules() if isinstance(m, (LightSPADE, SPADE))]
    assert norms and all(isinstance(m, expected) for m in norms)
    x0, condition, _ = training_inputs(model, make_batch())
    flipped = model.make_condition((make_batch()["label"] + 1) % 3, fov=make_batch()["fov"])
    with torch.no_grad():
        assert not torch.allclose(model(x0, 10, condition), model(x0, 10, flipped))


def test_sampling_computes_the_condition_terms_once_per_condition() -> None:
    from sonosynth.models.denoiser import LightSPADE

    model = randomize(build_model(ModelConfig(kind="spade", size="tiny", num_labels=3)))
    calls = []
    for norm in (m for m in model.modules() if isinstance(m, LightSPADE)):
        norm.gamma_beta.register_forward_hook(lambda *_: calls.append(1))
    x0, condition, _ = training_inputs(model, make_batch())
    with torch.no_grad():
        first = model(x0, 10, condition)
        per_call = len(calls)
        second = model(x0 * 0.5, 20, condition)  # the next step of a loop: the same condition tensor
        assert len(calls) == per_call  # scale and shift kept from the first step
        assert torch.equal(second, model(x0 * 0.5, 20, condition.clone()))  # as computed afresh
        assert len(calls) == 2 * per_call and not torch.equal(first, second)
    model(x0, 10, condition)  # with gradients (training): always computed
    model(x0, 10, condition)
    assert len(calls) == 4 * per_call


def test_joint_targets_and_decode_round_trip() -> None:
    model = build_model(ModelConfig(kind="joint", size="tiny", num_labels=3))
    batch = make_batch()
    x0, _, _ = training_inputs(model, batch)
    assert x0[:, 1:].min() == -1.0 and x0[:, 1:].max() == 1.0
    image, mask = model.decode(x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
    assert image.shape == (2, 1, SIDE, SIDE) and image.min() >= -1 and image.max() <= 1
    assert mask is not None and torch.equal(model.decode(x0)[1], batch["label"])


def test_non_joint_decode_has_no_mask() -> None:
    model = build_model(ModelConfig(kind="spade", size="tiny"))
    image, mask = model.decode(torch.full((1, 1, 4, 4), 3.0))
    assert mask is None and torch.all(image == 1.0)


def test_coord_channels_and_no_fov() -> None:
    model = build_model(ModelConfig(kind="concat", size="tiny", num_labels=2, fov_channel=False, coord_channels=True))
    _, condition, _ = training_inputs(model, make_batch(num_labels=2))
    assert condition is not None and condition.shape[1] == 2 + 2
    assert condition[0, 2, 0, 0] == -1.0 and condition[0, 2, -1, 0] == 1.0  # depth runs down the rows
    joint = build_model(ModelConfig(kind="joint", size="tiny", fov_channel=False))
    assert training_inputs(joint, make_batch(num_labels=2))[1] is None


def test_null_condition_drops_labels_keeps_fov() -> None:
    model = build_model(ModelConfig(kind="spade", size="tiny", num_labels=3))
    _, condition, _ = training_inputs(model, make_batch())
    null = model.null_condition(condition)
    assert torch.all(null[:, :3] == 0)
    assert torch.equal(null[:, 3:], condition[:, 3:])
    dropped, _ = drop_conditions(model, condition, None, drop_prob=0.999999, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped, null)
    kept, _ = drop_conditions(model, condition, None, drop_prob=0.0)
    assert torch.equal(kept, condition)


def test_class_conditioning_changes_output_and_unknown_is_null() -> None:
    model = randomize(build_model(ModelConfig(kind="spade", size="tiny", num_labels=3, class_cardinalities=[2, 3])))
    batch = make_batch(attributes=2)
    batch["classes"] = torch.tensor([[0, 2], [-1, -1]])
    x0, condition, class_labels = training_inputs(model, batch)
    assert class_labels.tolist() == [[0, 2], [2, 3]]  # -1 -> each attribute's null index
    t = torch.tensor([500, 500])
    with torch.no_grad():
        a = model(x0, t, condition, torch.tensor([[0, 0], [0, 0]]))
        b = model(x0, t, condition, torch.tensor([[1, 0], [1, 0]]))
        unknown = model(x0, t, condition, torch.tensor([[-1, -1], [-1, -1]]))
        missing = model(x0, t, condition, None)
    assert not torch.allclose(a, b)
    assert torch.equal(unknown, missing)
    _, dropped = drop_conditions(model, condition, class_labels, 0.999999, torch.Generator().manual_seed(0))
    assert dropped.tolist() == [[2, 3], [2, 3]]


def test_batch_without_classes_is_rejected_for_class_model() -> None:
    model = build_model(ModelConfig(kind="concat", size="tiny", class_cardinalities=[2]))
    with pytest.raises(ValueError, match="class attributes"):
        training_inputs(model, make_batch(num_labels=2, attributes=0))


def test_mask_changes_output() -> None:
    model = randomize(build_model(ModelConfig(kind="spade", size="tiny", num_labels=3)))
    x0, condition, _ = training_inputs(model, make_batch())
    with torch.no_grad():
        with_mask = model(x0, torch.tensor([10, 10]), condition)
        without = model(x0, torch.tensor([10, 10]), model.null_condition(condition))
    assert not torch.allclose(with_mask, without)


def test_label_values_out_of_range_raise() -> None:
    model = build_model(ModelConfig(kind="spade", size="tiny", num_labels=2))
    with pytest.raises(ValueError, match="label values"):
        model.one_hot(torch.full((1, 4, 4), 2))


def test_config_presets_round_trip_and_errors() -> None:
    config = ModelConfig(kind="concat", size="small", num_labels=4, class_cardinalities=[3])
    assert config.channels == SIZE_PRESETS["small"]["channels"]
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig(size="small", channels=[16, 32]).channels == [16, 32]
    bad_configs = (
        {"kind": "gan"},
        {"size": "huge"},
        {"num_labels": 1},
        {"channels": [10, 16], "size": "tiny"},
        {"spade_block": "fancy"},
    )
    for bad in bad_configs:
        with pytest.raises(SonosynthError):
            ModelConfig(**bad)
    with pytest.raises(SonosynthError, match="unknown model config"):
        ModelConfig.from_dict({"kind": "spade", "depth": 3})


def test_save_load_round_trip(tmp_path) -> None:
    config = ModelConfig(kind="spade", size="tiny", num_labels=3, class_cardinalities=[2])
    model = randomize(build_model(config))
    model.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ConditionalDenoiser.from_pretrained(tmp_path / "unet").eval()
    assert loaded.model_config == config
    x0, condition, _ = training_inputs(model, make_batch(attributes=1))
    classes = torch.tensor([[1], [0]])
    with torch.no_grad():
        assert torch.equal(model(x0, torch.tensor([7, 7]), condition, classes), loaded(x0, 7, condition, classes))


def test_medium_is_small_at_twice_the_width_and_the_cli_offers_every_preset() -> None:
    from sonosynth.commands.train import ModelSize

    small, medium = SIZE_PRESETS["small"], SIZE_PRESETS["medium"]
    assert medium["channels"] == [2 * c for c in small["channels"]]
    assert {k: v for k, v in medium.items() if k not in ("channels", "spade_intermediate_channels")} == {
        k: v for k, v in small.items() if k not in ("channels", "spade_intermediate_channels")}
    model = build_model(ModelConfig(kind="spade", size="medium"))
    out = model(torch.randn(1, 1, 16, 16), 5, torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 1, 16, 16)
    assert [size.value for size in ModelSize] == list(SIZE_PRESETS)
