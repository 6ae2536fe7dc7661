"""Training data: (image, concept, objects) samples from arrays, layers or folders.

Labels are read as instance labels: each label value is an object (split into its
connected parts), so a label image with one value for every nucleus still gives one object
per nucleus where they do not touch, and one with a value per nucleus keeps touching nuclei
apart. The manual mode trains on one object at a time (docs/training.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..inference.image import to_rgb_uint8

_IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".bmp"}
_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_gt")


@dataclass
class Sample:
    """One training example: an RGB image, one concept, its mask and its objects.

    Attributes:
        image: (H, W, 3) uint8 RGB (see :func:`to_rgb_uint8`).
        mask: (H, W) bool, True where the concept is.
        concept: the text naming what the mask shows.
        source: where the sample came from (file name or layer name), for reports.
        objects: (H, W) int32 objects of the concept, 1..N (0 elsewhere); None: the
            connected components of ``mask`` (see :meth:`object_labels`).
        others: (H, W) bool, True where the image is labelled as another concept (what
            this concept is known not to be), or None where the labels name one concept.
    """

    image: np.ndarray
    mask: np.ndarray
    concept: str
    source: str = ""
    objects: np.ndarray | None = None
    others: np.ndarray | None = None

    def object_labels(self) -> np.ndarray:
        """(H, W) int32 objects 1..N of the concept (0 elsewhere)."""
        if self.objects is None:
            self.objects = instance_objects(self.mask)
        return self.objects


def instance_objects(labels: np.ndarray) -> np.ndarray:
    """Objects 1..N (int32) of a label image: each value's connected parts (8-connected), apart.

    Two touching objects of different values stay two; one value drawn over several
    separate places (semantic labels) becomes one object per place.
    """
    labels = np.asarray(labels)
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3), dtype=bool))
    if count == 0 or labels.dtype == bool:
        return components.astype(np.int32)
    # A component holding several label values is several objects: number (component, value) pairs.
    inside = components > 0
    pairs = np.stack([components[inside], labels[inside].astype(np.int64)])
    _, numbered = np.unique(pairs, axis=1, return_inverse=True)
    objects = np.zeros(labels.shape, dtype=np.int32)
    objects[inside] = numbered.reshape(-1) + 1
    return objects


def label_values(labels, name: str) -> np.ndarray:
    """``labels`` as an integer array, refusing what is not a label image.

    Label images are integer or bool. A float image is taken only when every value is a
    whole number (some writers store labels as floats); other values (a probability map,
    a resampled mask) would become arbitrary classes, so they are refused, naming ``name``.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.integer):
        return labels
    if np.issubdtype(labels.dtype, np.floating):
        whole = np.isfinite(labels) & (labels == np.round(labels)) & (np.abs(labels) < 2**31)
        if whole.all():
            return labels.astype(np.int64)
        bad = labels[~whole].flat[0]
        raise ValueError(
            f"{name}: a label image must hold whole numbers (integer or bool pixels), but this one is "
            f"{labels.dtype} with values such as {float(bad):g}. Save the labels as integers, or threshold a "
            "probability map first."
        )
    raise ValueError(f"{name}: a label image must be integer or bool, not {labels.dtype}.")


def _binary_samples(image, labels, concepts: str | Mapping[int, str], source: str, channel: int | None,
                    labels_name: str | None = None) -> list[Sample]:
    rgb = to_rgb_uint8(image, channel=channel)
    labels = label_values(labels, labels_name or source or "A label image")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(
            f"{source or 'A sample'}: the label image has shape {labels.shape}, the image {rgb.shape[:2]}; "
            "they must have the same height and width."
        )
    if isinstance(concepts, str):
        mask = labels > 0
        return [Sample(rgb, mask, concepts, source, instance_objects(labels))] if mask.any() else []
    samples = []
    for value, concept in sorted(concepts.items()):
        mask = labels == int(value)
        if mask.any():  # one binary sample per class present; its objects are the class's components
            other_values = [other for other, name in concepts.items() if name != concept]
            samples.append(Sample(rgb, mask, concept, source, instance_objects(mask), np.isin(labels, other_values)))
    return samples


def parse_concepts(text: str) -> str | dict[int, str]:
    """Read a concept specification: ``"nucleus"`` (every non-zero label) or
    ``"1=nucleus, 2=mitochondria"`` (label value -> concept).

    Raises:
        ValueError: empty text, a value that is not a positive integer, an empty
            concept, or a value given twice.
    """
    text = text.strip()
    if not text:
        raise ValueError("Name the concept, e.g. 'nucleus', or map label values: '1=nucleus, 2=mitochondria'.")
    if "=" not in text:
        return " ".join(text.split())
    mapping: dict[int, str] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        value, separator, concept = part.partition("=")
        concept = " ".join(concept.split())
        if not separator or not value.strip().isdigit() or int(value) < 1 or not concept:
            raise ValueError(
                f"Cannot read {part.strip()!r}: write label=concept pairs with positive integer labels, "
                "e.g. '1=nucleus, 2=mitochondria'."
            )
        if int(value) in mapping:
            raise ValueError(f"Label {int(value)} is given twice in {text!r}.")
        mapping[int(value)] = concept
    return mapping


class ConceptDataset(Sequence[Sample]):
    """Binary (image, concept, mask) samples built from images and label images."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    @property
    def concepts(self) -> list[str]:
        return sorted({sample.concept for sample in self.samples})

    @classmethod
    def from_arrays(
        cls,
        items: Iterable[tuple[np.ndarray, np.ndarray, str | Mapping[int, str]]],
        channel: int | None = None,
        names: Sequence[str] | None = None,
    ) -> ConceptDataset:
        """Samples from (image, label image, concept) triples, e.g. napari layers' data.

        The concept is a string (every non-zero label is that concept) or a mapping from
        label value to concept (a multi-class label image gives one sample per class
        present). ``names`` name each item in messages and reports (e.g. the labels
        layer's name); by default ``item 0``, ``item 1``...

        Raises:
            ValueError: a label image that is not integer or bool (see :func:`label_values`),
                or of another size than its image.
        """
        samples = []
        for index, (image, labels, concepts) in enumerate(items):
            name = names[index] if names is not None else f"item {index}"
            samples += _binary_samples(image, labels, concepts, name, channel)
        return cls(samples)

    @classmethod
    def from_instance_labels(
        cls,
        items: Iterable[tuple[np.ndarray, Mapping[str, np.ndarray]]],
        names: Sequence[str] | None = None,
        absent: Sequence[str] = (),
    ) -> ConceptDataset:
        """Samples from (image, {concept: instance labels}) pairs, one sample per concept present.

        Each concept's label image holds its objects (one value per object, 0 elsewhere),
        as :func:`napari_clipsam.synthetic.generate_scene` gives them. The image is
        converted once and shared by its samples; each sample's ``others`` are the pixels
        of the image's other concepts.

        Args:
            absent: concepts that, where an image has none of them, give a sample with an
                empty mask: "there is no such thing here" (trained in the text mode only),
                so that a concept typed on an image without it finds nothing.
        """
        samples = []
        for index, (image, by_concept) in enumerate(items):
            name = names[index] if names is not None else f"item {index}"
            rgb = to_rgb_uint8(image)
            masks = {}
            for concept, labels in sorted(by_concept.items()):
                labels = label_values(labels, f"{name} ({concept})")
                if labels.shape != rgb.shape[:2]:
                    raise ValueError(f"{name}: the {concept} labels have shape {labels.shape}, the image "
                                     f"{rgb.shape[:2]}; they must have the same height and width.")
                masks[concept] = (labels > 0, labels)
            labelled = np.zeros(rgb.shape[:2], dtype=bool)
            for mask, _ in masks.values():
                labelled |= mask
            for concept, (mask, labels) in masks.items():
                if mask.any():
                    samples.append(Sample(rgb, mask, concept, name, instance_objects(labels), labelled & ~mask))
            for concept in absent:
                if concept not in masks or not masks[concept][0].any():
                    empty = np.zeros(rgb.shape[:2], dtype=np.int32)
                    samples.append(Sample(rgb, empty > 0, concept, name, empty, labelled))
        return cls(samples)

    @classmethod
    def from_folders(
        cls,
        images: str | os.PathLike,
        labels: str | os.PathLike,
        concepts: str | Mapping[int, str],
        channel: int | None = None,
    ) -> ConceptDataset:
        """Samples from a folder of images and a folder of label images with matching names.

        A label file matches an image by name, optionally with a suffix such as
        ``_labels`` or ``_mask`` (``cell1.tif`` and ``cell1_labels.tif``). A label file that
        is not integer or bool is refused, naming it (see :func:`label_values`).
        """
        from .._io import read_image

        images, labels = Path(images), Path(labels)
        for folder in (images, labels):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a folder.")
        label_files = {}
        for path in sorted(labels.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                stem = path.stem
                for suffix in _LABEL_SUFFIXES:
                    if stem.endswith(suffix):
                        stem = stem[: -len(suffix)]
                        break
                label_files[stem] = path
        samples, unmatched = [], []
        for path in sorted(images.iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            match = label_files.get(path.stem)
            if match is None:
                unmatched.append(path.name)
                continue
            samples += _binary_samples(read_image(path), read_image(match), concepts, path.name, channel,
                                       labels_name=str(match))
        if not samples:
            raise ValueError(
                f"No image in {images} has a matching, non-empty label image in {labels}"
                + (f" (unmatched: {', '.join(unmatched[:5])})" if unmatched else "")
                + "."
            )
        return cls(samples)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[ConceptDataset, ConceptDataset]:
        """Split per concept; each concept with at least two samples gets one or more for validation."""
        rng = np.random.default_rng(seed)
        train, val = [], []
        for concept in self.concepts:
            members = [s for s in self.samples if s.concept == concept]
            order = rng.permutation(len(members))
            count = int(round(len(members) * val_fraction))
            if val_fraction > 0 and len(members) >= 2:
                count = min(max(count, 1), len(members) - 1)
            else:
                count = 0
            val += [members[i] for i in order[:count]]
            train += [members[i] for i in order[count:]]
        return ConceptDataset(train), ConceptDataset(val)
