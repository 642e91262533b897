"""Diffusion training (accelerate), schedulers and the MaskToUltrasoundPipeline."""
