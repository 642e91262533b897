from pathlib import Path

import torch

from sonosynth.data.format import Dataset
from sonosynth.data.torch_dataset import LetterboxedPairs
from sonosynth.data.transforms import letterbox_mask, unletterbox


def test_letterbox_keeps_aspect_and_pads_black(toy_dataset: Path):
    pairs = LetterboxedPairs(Dataset.open(toy_dataset), size=32, class_attributes=["view"])
    item = pairs[0]
    assert item["image"].shape == (1, 32, 32) and item["label"].shape == (32, 32)
    # 48x64 -> 24x32 inside 32x32: rows 0-3 and 28-31 are padding.
    assert torch.all(item["image"][0, :4] == -1.0) and torch.all(item["label"][:4] == 0)
    assert item["image"][0, 4:28].min() >= -1.0 and item["image"].max() <= 1.0
    assert set(item["label"].unique().tolist()) <= {0, 1}
    assert item["classes"].tolist() == [0]


def test_unletterbox_inverts_mask_geometry():
    mask = torch.zeros(30, 60, dtype=torch.long)
    mask[10:20, 20:40] = 1
    boxed = letterbox_mask(mask, 120)
    back = unletterbox(boxed, 30, 60, mode="nearest").long()
    assert torch.equal(back, mask)
