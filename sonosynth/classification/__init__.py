"""Image classifiers (MONAI networks, from scratch): the classification arm of the protocol (issue 38).

`classifier.py` holds the config, the data (`LabeledImages`: letterboxed images and a class from a categorical
attribute), training with early stopping on validation balanced accuracy, and saving/loading in safetensors;
the metrics (balanced accuracy, macro AUC, per-class recall) are in `sonosynth.metrics`.
"""
