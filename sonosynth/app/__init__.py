"""`sonosynth app`: a local browser app to draw or edit masks, generate, edit scans and review datasets."""

import os

# Nothing leaves the machine: Gradio's usage analytics (and its version check) stay off unless asked for.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
