"""Segment Anything as a segmenter, on a tiny random SamConfig saved to a temporary folder (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import ellipse_pair, letterboxed_pairs, write_toy_dataset
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.errors import SonosynthError
from sonosynth.segmentation.common import SegmentationConfig, save_segmenter
from sonosynth.segmentation.predict import load_segmenter, predict_masks
from sonosynth.segmentation.sam import bounding_box, jittered
from sonosynth.segmentation.train import train_segmenter

pytest.importorskip("transformers", reason="SAM tests need transformers (pip install 'sonosynth[sam]')")

LABELS = {"0": "background", "1": "head"}


def write_tiny_sam(folder: Path, seed: int = 0) -> Path:
    """A random SAM (~80K parameters, 64 px input) and its processor, as `save_pretrained` writes them."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, mlp_dim=64, global_attn_indexes=[1], window_size=4,
                             num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=32)
    torch.manual_seed(seed)
    model = SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                               mask_decoder_config=decoder.to_dict()))
    model.save_pretrained(folder)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})).save_pretrained(
        folder)
    return folder


def test_boxes_and_their_jitter_stay_valid():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[5:10, 8:20] = True
    assert bounding_box(mask).tolist() == [8, 5, 20, 10]
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        x0, y0, x1, y1 = jittered(bounding_box(mask), 3.0, 32, generator).tolist()
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        assert abs(x0 - 8) <= 3 and abs(y1 - 10) <= 3
    assert jittered(bounding_box(mask), 0.0, 32, generator).tolist() == [8, 5, 20, 10]


def test_sam_needs_local_weights(tmp_path):
    with pytest.raises(SonosynthError, match="--net sam needs --weights"):
        SegmentationConfig(net="sam")
    config = SegmentationConfig(size=32, net="sam", weights=str(tmp_path), labels=LABELS, max_steps=1)
    with pytest.raises(SonosynthError, match="not a Segment Anything folder"):
        train_segmenter(config, letterboxed_pairs(2, 0), letterboxed_pairs(2, 1), progress=False)


@pytest.mark.slow
def test_sam_decoder_trains_and_only_it_changes(tmp_path):
    from transformers import SamModel

    weights = write_tiny_sam(tmp_path / "sam")
    config = SegmentationConfig(size=32, net="sam", net_size="tiny", weights=str(weights), labels=LABELS,
                                max_steps=4, val_every=2, batch_size=2)
    result = train_segmenter(config, letterboxed_pairs(4, 0), letterboxed_pairs(2, 1), letterboxed_pairs(3, 2),
                             progress=False)
    base = SamModel.from_pretrained(weights)
    trained = result.sam.model.state_dict()
    changed = {k for k, v in base.state_dict().items() if not torch.equal(v, trained[k])}
    assert changed and all(k.startswith("mask_decoder.") for k in changed)  # encoders frozen
    assert result.details["box_unet"]["steps"] >= 1 and result.history[-1]["val_dice"] >= 0

    rng = np.random.default_rng(7)
    image, mask = ellipse_pair(rng, 48, 64)
    (fair,) = predict_masks(result.segmenter(), [image])
    assert fair.shape == (48, 64) and fair.dtype == np.uint8
    run = save_segmenter(tmp_path / "seg", result)
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "sam_base.json", "box_unet", "config.yaml"}
    assert (run / "model.safetensors").stat().st_size < sum(p.numel() * 4 for p in base.parameters())  # decoder only
    loaded = load_segmenter(run)
    np.testing.assert_array_equal(predict_masks(loaded, [image])[0], fair)

    # the reference protocol prompts with the true box; the saved run says which base it needs
    reference = SegmentationConfig(**{**config.to_dict(), "sam_box": "reference"})
    oracle = load_segmenter(run)
    oracle.config = reference
    (boxed,) = predict_masks(oracle, [image], references=[mask])
    assert boxed.shape == (48, 64)
    assert json.loads((run / "sam_base.json").read_text())["weights"] == str(weights.resolve())
    other = json.loads((weights / "config.json").read_text())
    other["mask_decoder_config"]["iou_head_depth"] = 4  # another base at the same path
    (weights / "config.json").write_text(json.dumps(other))
    with pytest.raises(SonosynthError, match="not the Segment Anything base"):
        load_segmenter(run)


@pytest.mark.slow
def test_downstream_with_sam_labels_the_box_protocol(tmp_path):
    weights = write_tiny_sam(tmp_path / "sam")
    real = write_toy_dataset(tmp_path / "real", n=16, seed=3)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "downstream", "--auto-split", "--real", str(real),
                                 "--out", str(tmp_path / "report"),
                                 "--k", "2", "--seeds", "1", "--net", "sam", "--weights", str(weights),
                                 "--sam-box", "reference", "--net-size", "tiny", "--size", "32", "--max-steps", "2",
                                 "--val-every", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "report" / "cells").glob("*.json")) == ["k2__real__seed0.json"]
    assert "boxes from the reference masks" in (tmp_path / "report" / "results.md").read_text()
