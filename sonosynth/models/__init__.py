"""Denoising networks conditioned on label maps (spade, concat, joint) and their size presets."""
