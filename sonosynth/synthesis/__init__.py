"""Synthetic dataset generation: mask sources, region editing, two-stage sampling, fidelity filter."""
