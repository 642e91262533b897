"""Readers that turn published datasets into the sonosynth layout.

Each importer is `import_<format>(src, out, *, overwrite=False, **options) -> ImportSummary` and
builds the output atomically (nothing appears at OUT unless the whole import succeeds).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from sonosynth.data.importers.pairing import ImportSummary
from sonosynth.errors import DataError
from sonosynth.files import prepare_output

# format -> module; loaded on demand so that one importer's optional dependency (SimpleITK for
# CAMUS) never stands in the way of the others.
FORMATS = {
    "hc18": "sonosynth.data.importers.hc18",
    "busi": "sonosynth.data.importers.busi",
    "camus": "sonosynth.data.importers.camus",
    "folder": "sonosynth.data.importers.folder",
    "nnunet": "sonosynth.data.importers.nnunet",
}


def import_dataset(format: str, src: str | Path, out: str | Path, **options: Any) -> ImportSummary:
    """Import SRC in the given format into a new dataset folder OUT."""
    if format not in FORMATS:
        raise DataError(f"unknown import format '{format}' (choose from {', '.join(FORMATS)})")
    # The output guard before any reading: OUT may not be SRC, lie inside it or hold it (nor the --csv file).
    prepare_output(out, bool(options.get("overwrite")), inputs=[src, options.get("csv_path")])
    module = import_module(FORMATS[format])
    return getattr(module, f"import_{format}")(src, out, **options)


__all__ = ["FORMATS", "ImportSummary", "import_dataset"]
