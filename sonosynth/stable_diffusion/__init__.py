"""Stable Diffusion from a local folder: ControlNet on label maps, LoRA, text prompts (`sonosynth train --base`)."""
