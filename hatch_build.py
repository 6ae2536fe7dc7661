"""Build hook: ship the top-level npe2 manifest inside the package.

The entry point ``napari_clipsam:napari.yaml`` makes npe2 look for the file in
the directory the ``napari_clipsam`` package is imported from. The single
source of truth is ``napari.yaml`` at the repository root, so:

* a normal wheel force-includes it as ``napari_clipsam/napari.yaml``;
* an editable install imports the package from ``src/``, so the hook copies
  the file to ``src/napari_clipsam/napari.yaml`` (git-ignored, like
  ``_version.py``). Re-run the editable install after editing the manifest;
  ``tests/test_package.py`` fails while the two differ.

A copy rather than a symlink: symlinks turn into plain text files in git
checkouts on Windows and break the package there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MANIFEST = "napari.yaml"
PACKAGE_DIR = Path("src", "napari_clipsam")


class ManifestHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        source = root / MANIFEST
        in_package = root / PACKAGE_DIR / MANIFEST
        if version == "editable":
            if source.is_file() and (
                not in_package.is_file()
                or in_package.read_bytes() != source.read_bytes()
            ):
                shutil.copyfile(source, in_package)
            if not in_package.is_file():
                raise FileNotFoundError(f"no npe2 manifest at {source}")
            return
        if not source.is_file():
            raise FileNotFoundError(f"no npe2 manifest at {source}")
        build_data["force_include"][str(source)] = f"napari_clipsam/{MANIFEST}"
