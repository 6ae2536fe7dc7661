"""The networks: SAM with CLIP-guided adapters, CLIP with surgery features, and their builders.

Nothing is imported here, so ``import napari_clipsam.model`` stays light; import the
modules (``clipsam``, ``build``, ``build_sam``, ``clip``, ...) or use the public names of
``napari_clipsam``.
"""
