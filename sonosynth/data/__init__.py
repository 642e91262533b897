"""The data layer: one dataset layout, importers, exporters, validation, torch datasets."""

from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter, Record, Sample
from sonosynth.data.imageio import read_image, read_label_map, write_png

__all__ = [
    "Dataset",
    "DatasetInfo",
    "DatasetWriter",
    "Record",
    "Sample",
    "read_image",
    "read_label_map",
    "write_png",
]
