"""A Stable Diffusion folder with random weights, for tests, benchmarks and trying the commands without weights.

Nothing can be downloaded on our machines, so the real SD 1.5 weights are never here. `tiny` is small enough
to train in seconds (tests); `sd15` has Stable Diffusion 1.5's architecture (860 M-parameter UNet, the
VAE, a CLIP ViT-L/14-sized text encoder) for measuring speed and memory. Both write the diffusers layout
a real download has (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/). The tokenizer
is character-level (its vocabulary is written here): prompts work, their tokens are not CLIP's.
Images from such a folder are noise until trained; it is no substitute for pretrained weights.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=16,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                     attention_head_dim=2, norm_num_groups=4),
        "vae": dict(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1, sample_size=32),
        "text": dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=32),
        "max_length": 32,
    },
    "sd15": {  # runwayml/stable-diffusion-v1-5's configs
        "unet": dict(sample_size=64, cross_attention_dim=768),
        "vae": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512),
        "text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"),
        "max_length": 77,
    },
}


def write_random_base(folder: str | Path, preset: str = "tiny", prediction_type: str = "epsilon",
                      seed: int = 0) -> Path:
    """Write a random-weight Stable Diffusion folder; `prediction_type="v_prediction"` gives SD 2.x's schedule."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    spec = PRESETS[preset]
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **spec["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **spec["text"]))
    with tempfile.TemporaryDirectory() as vocabulary:
        vocab, merges = Path(vocabulary) / "vocab.json", Path(vocabulary) / "merges.txt"
        chars = list(string.ascii_lowercase + string.digits + ",.-_")
        tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
        vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        merges.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=spec["max_length"])
        scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type=prediction_type, num_train_timesteps=1000, steps_offset=1,
                                  clip_sample=False)
        StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)
        for source in (vocab, merges):  # SD 1.5's tokenizer layout, beside transformers' tokenizer.json
            (folder / "tokenizer" / source.name).write_bytes(source.read_bytes())
    return folder
