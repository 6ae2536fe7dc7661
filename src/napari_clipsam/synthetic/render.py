"""Turning painted objects into a fluorescence-like image: profiles, optics, camera.

Intensities are relative fluorophore densities (about 0..1.3); `to_uint8` adds the
background, the point-spread blur and the noise, then scales to the uint8 range. Plain
numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shapes import InstancePainter

# Width, in rho, of the darker line where two touching objects meet.
_CONTACT_WIDTH = 0.2


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W) float32 gaussian-smoothed white noise (correlation length `sigma` px), std 1."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / (noise.std() + np.float32(1e-6))


def blob_intensity(
    painter: InstancePainter,
    keep: np.ndarray,
    brightness: np.ndarray,
    edge: float,
    contact_dip: float,
) -> np.ndarray:
    """(H, W) float32 intensity of the painter's kept objects, each at its own brightness.

    A plateau with a soft rim (`edge`: the fraction of 1 - rho^2 over which it rises),
    darker by `contact_dip` (0..1) along the line where two objects touch.
    `keep` and `brightness` are indexed by the painter's labels (0 unused).
    """
    labels = painter.labels
    mask = keep[labels]
    rho = painter.rho[mask]
    profile = np.sqrt(np.clip((1.0 - rho * rho) / edge, 0.0, 1.0))
    closeness = (painter.second[mask] - rho) / _CONTACT_WIDTH
    profile *= 1.0 - contact_dip * np.exp(-closeness * closeness)
    intensity = np.zeros(labels.shape, dtype=np.float32)
    intensity[mask] = brightness[labels[mask]] * profile
    return intensity


def spot_intensity(painter: InstancePainter, keep: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """(H, W) float32 gaussian puncta: peak `brightness[label]`, 1/e^2 at the disc's rim."""
    labels = painter.labels
    mask = keep[labels]
    rho = painter.rho[mask]
    intensity = np.zeros(labels.shape, dtype=np.float32)
    intensity[mask] = brightness[labels[mask]] * np.exp(-2.0 * rho * rho)
    return intensity


def membrane_intensity(
    boundary_distance: np.ndarray, cells: np.ndarray, half_width: float, brightness: np.ndarray
) -> np.ndarray:
    """(H, W) float32 cell outlines: peak on the boundary, fading to 0 at `half_width` + 0.8 px.

    `boundary_distance` (H, W) px from the nearest cell boundary; `cells` (H, W) int cell
    of each pixel; `brightness` indexed by cell.
    """
    reach = half_width + 0.8
    falloff = np.clip(1.0 - (boundary_distance / reach) ** 2, 0.0, 1.0).astype(np.float32)
    return brightness[cells] * falloff


def to_uint8(
    rng: np.random.Generator, fluorophore: np.ndarray, background: np.ndarray | float
) -> np.ndarray:
    """(H, W) uint8 camera image of `fluorophore` (H, W) over `background` (relative units).

    Uneven illumination, autofluorescence haze, gaussian point-spread blur, photon (Poisson)
    and read (gaussian) noise at levels drawn per image, then a percentile stretch.
    """
    rows, columns = fluorophore.shape
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    tilt_y, tilt_x = rng.uniform(-0.3, 0.3, size=2)
    curvature = rng.uniform(0.0, 0.3)
    illumination = 1.0 + tilt_y * y + tilt_x * x - curvature * (x * x + y * y)

    # Haze: a few long waves; cheaper than filtering a noise image with a wide kernel.
    haze = np.zeros((rows, columns), dtype=np.float32)
    for _ in range(3):
        frequency_y, frequency_x = rng.uniform(-4.0, 4.0, size=2)
        phase = rng.uniform(0.0, 2 * np.pi)
        haze += np.cos(frequency_y * y + frequency_x * x + phase) / 3
    level = rng.uniform(0.03, 0.2)
    autofluorescence = level * (1.0 + rng.uniform(0.0, 0.5) * haze) + background

    sigma = rng.uniform(0.7, 1.6)
    blurred = ndimage.gaussian_filter(fluorophore, sigma) + autofluorescence
    expected = np.clip(blurred * illumination, 0.0, None)

    photons = np.exp(rng.uniform(np.log(15.0), np.log(600.0)))  # at intensity 1
    counts = rng.poisson(expected * photons).astype(np.float32) / np.float32(photons)
    counts += rng.normal(0.0, rng.uniform(0.003, 0.03), size=counts.shape).astype(np.float32)

    low, high = np.percentile(counts, [rng.uniform(0.1, 2.0), rng.uniform(99.3, 99.95)])
    scaled = (counts - low) * np.float32(255.0 / max(high - low, 1e-6))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
