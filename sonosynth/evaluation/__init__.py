"""Metrics, downstream experiments, image-quality measures and reports."""
