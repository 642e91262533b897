"""Segmentation networks (MONAI) used to prove synthetic data helps."""
