"""Generated microscopy-like scenes with ground truth, for training and measuring offline."""

from .scenes import (
    DEMO_CONCEPTS,
    SCENE_KINDS,
    Scene,
    class_map,
    generate_scene,
    generate_scenes,
)
from .shapes import touching_fraction

__all__ = [
    "DEMO_CONCEPTS",
    "SCENE_KINDS",
    "Scene",
    "class_map",
    "generate_scene",
    "generate_scenes",
    "touching_fraction",
]
