"""Sample images that work offline, and the npe2 sample-data commands for them.

Plain numpy/scipy: importing this module imports neither Qt nor napari.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .synthetic.scenes import generate_scene
from .synthetic.shapes import ellipse_field

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def synthetic_nuclei(
    shape: tuple[int, int] = (512, 512),
    n_nuclei: int = 40,
    seed: int = 0,
    radius_range: tuple[float, float] = (10.0, 18.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-microscopy-like image of nuclei and its ground-truth labels.

    Nuclei are non-overlapping ellipses with chromatin-like texture, blurred by a
    point-spread function, on an unevenly lit background, with photon (Poisson)
    and camera read (gaussian) noise. The same arguments always give the same
    arrays.

    Args:
        shape: (rows, columns) in pixels.
        n_nuclei: how many nuclei to place; fewer when they do not fit without
            touching (only for small shapes; the defaults always place all 40).
        seed: seed of the random generator.
        radius_range: smallest and largest semi-major axis in pixels.

    Returns:
        image: (rows, columns) uint16 camera counts (offset 100).
        labels: (rows, columns) int32; 0 is background, nuclei are 1..N in
            placement order, one connected ellipse each, at least 2 px apart.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (rows, columns), got {shape!r}")
    rows, columns = (int(size) for size in shape)
    rng = np.random.default_rng(seed)
    labels = np.zeros((rows, columns), dtype=np.int32)
    brightness = np.zeros((rows, columns), dtype=np.float64)
    smallest, largest = radius_range
    gap = 2.0

    placed = 0
    for _attempt in range(200 * max(n_nuclei, 1)):
        if placed == n_nuclei:
            break
        semi_major = rng.uniform(smallest, largest)
        semi_minor = semi_major * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0.0, np.pi)
        margin = semi_major + gap
        if rows <= 2 * margin or columns <= 2 * margin:
            continue
        center = (rng.uniform(margin, rows - margin), rng.uniform(margin, columns - margin))
        window, padded = _ellipse(center, semi_major + gap, semi_minor + gap, angle, labels.shape)
        if labels[window][padded].any():
            continue
        window, inside = _ellipse(center, semi_major, semi_minor, angle, labels.shape)
        placed += 1
        labels[window][inside] = placed
        brightness[window][inside] = rng.uniform(0.55, 1.0)

    # Chromatin: smooth random texture that modulates each nucleus by about 20 %.
    texture = ndimage.gaussian_filter(rng.standard_normal((rows, columns)), sigma=1.5)
    texture /= texture.std() + 1e-12
    fluorophore = brightness * np.clip(1.0 + 0.2 * texture, 0.3, None)
    fluorophore = ndimage.gaussian_filter(fluorophore, sigma=1.5)  # optics

    # Uneven illumination (a tilted, slightly curved field) and autofluorescence.
    y = np.linspace(-1.0, 1.0, rows)[:, None]
    x = np.linspace(-1.0, 1.0, columns)[None, :]
    tilt_y, tilt_x = rng.uniform(-0.25, 0.25, size=2)
    illumination = 1.0 + tilt_y * y + tilt_x * x - 0.15 * (x**2 + y**2)
    haze = ndimage.gaussian_filter(
        rng.standard_normal((rows, columns)), sigma=min(rows, columns) / 16
    )
    autofluorescence = 0.06 + 0.015 * haze / (haze.std() + 1e-12)
    expected = (fluorophore + np.clip(autofluorescence, 0.02, None)) * illumination

    photons_at_peak = 400.0
    counts = rng.poisson(np.clip(expected, 0.0, None) * photons_at_peak).astype(np.float64)
    counts += 100.0 + rng.normal(0.0, 3.0, size=counts.shape)  # camera offset, read noise
    image = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels


def _ellipse(
    center: tuple[float, float],
    semi_major: float,
    semi_minor: float,
    angle: float,
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The filled ellipse as (window into an image of `shape`, boolean mask of the window)."""
    # The generated scenes' ellipse geometry; the centre is always inside, so never None.
    window, rho = ellipse_field(center, semi_major, semi_minor, angle, shape)
    return window, rho <= 1.0


def _cell() -> np.ndarray:
    from skimage import data

    return data.cell()


def _coins() -> np.ndarray:
    from skimage import data

    return data.coins()


def _nuclei() -> np.ndarray:
    return synthetic_nuclei()[0]


# The demo scene: a generated tissue (cell membranes, nuclei, spots) like the demo model's
# training data. Seed 1 has all three concepts.
DEMO_SCENE = {"seed": 1, "size": 256, "kind": "tissue"}


def _demo() -> np.ndarray:
    return generate_scene(**DEMO_SCENE).image


# Name -> 2D image; the CLI's --sample choices. All work offline.
SAMPLE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "nuclei": _nuclei,
    "cell": _cell,
    "coins": _coins,
    "demo": _demo,
}


def sample_image(name: str) -> np.ndarray:
    """The 2D sample image called `name` (one of ``SAMPLE_IMAGES``)."""
    try:
        make = SAMPLE_IMAGES[name]
    except KeyError:
        raise ValueError(
            f"unknown sample {name!r}; choose one of {sorted(SAMPLE_IMAGES)}"
        ) from None
    return make()


# npe2 sample-data commands (napari.yaml): lists of layer data tuples.


def make_cell_sample() -> list[LayerDataTuple]:
    """scikit-image's `cell`: 660x550 uint8 bright-field image of a cell."""
    return [(_cell(), {"name": "cell"}, "image")]


def make_coins_sample() -> list[LayerDataTuple]:
    """scikit-image's `coins`: 303x384 uint8 image of coins."""
    return [(_coins(), {"name": "coins"}, "image")]


def make_nuclei_sample() -> list[LayerDataTuple]:
    """Synthetic nuclei (512x512 uint16) with their ground-truth labels."""
    image, labels = synthetic_nuclei()
    return [
        (image, {"name": "synthetic nuclei", "colormap": "gray"}, "image"),
        (labels, {"name": "synthetic nuclei ground truth"}, "labels"),
    ]


def make_demo_sample() -> list[LayerDataTuple]:
    """A generated tissue scene (256x256 uint8, the demo model's pixel scale) with a ground-truth
    labels layer per concept."""
    scene = generate_scene(**DEMO_SCENE)
    layers: list[LayerDataTuple] = [(scene.image, {"name": "demo scene", "colormap": "gray"}, "image")]
    for concept, instances in scene.labels.items():
        layers.append((instances, {"name": f"{concept} ground truth"}, "labels"))
    return layers
