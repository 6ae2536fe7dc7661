"""Everything that imports Qt or napari: the dock widgets, their job runner and settings.

Modules here import no torch at module level, so opening a dock widget never blocks
napari on the heavy model stack; the model code is imported in worker threads.
"""
