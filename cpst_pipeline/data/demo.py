"""A small synthetic inspection dataset in the generic layout, for demos and end-to-end tests.

Three procedurally generated surfaces with subtle defects and pixel masks. Every image is drawn
from its own random generator seeded by (seed, domain, image number), so the output is
byte-identical across runs and independent of generation order.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter, gaussian_filter1d, uniform_filter1d

from cpst_pipeline.io_utils import write_bytes_atomic, write_json_atomic

GENERATOR_VERSION = 2
DOMAINS = ("brushed_metal", "woven_grid", "speckled_tile")
DEFECT_TYPES = ("scratch", "spot", "crack", "missing_texture")
NORMAL_SHARE = 0.7
COMPLETE_MARKER = ".complete"
# The small-defect variant: the demo's surfaces at 640 px with its line and spot defects only
# (missing_texture spans 24-48 px), so defects are 1-3 px wide where a 256 px resize leaves < 1.
SMALL_DEFECT_SIZE = 640
SMALL_DEFECT_TYPES = ("scratch", "spot", "crack")
SMALL_DEFECT_CONTRAST = 0.5

Texture = Callable[[np.random.Generator, int, int], np.ndarray]
Defect = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def generate_demo_dataset(
    root: Path,
    seed: int = 0,
    images_per_domain: int = 100,
    size: int = 256,
    defect_types: tuple[str, ...] = DEFECT_TYPES,
    defect_contrast: float = 1.0,
) -> Path:
    """Write the dataset under ``root`` (generic layout) unless a matching one is already complete.

    ``defect_types`` are dealt in turn to the defective images; ``defect_contrast`` scales how far
    each defect moves the surface (1.0: the demo's own contrast).
    """
    if images_per_domain < 1 or size < 32:
        raise ValueError(
            f"demo dataset needs images_per_domain >= 1 and size >= 32, got {images_per_domain} and {size}"
        )
    unknown = sorted(set(defect_types) - set(DEFECT_TYPES))
    if not defect_types or unknown or defect_contrast <= 0:
        raise ValueError(
            f"defect_types must be a non-empty subset of {DEFECT_TYPES} and defect_contrast > 0, "
            f"got {defect_types} and {defect_contrast}"
        )
    root = Path(root)
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "images_per_domain": images_per_domain,
        "size": size,
    }
    # Recorded only when set, so the default demo's marker (and a user's existing copy) stays valid.
    if tuple(defect_types) != DEFECT_TYPES:
        params["defect_types"] = list(defect_types)
    if defect_contrast != 1.0:
        params["defect_contrast"] = defect_contrast
    marker = root / COMPLETE_MARKER
    if _read_marker(marker) == params:
        return root
    marker.unlink(missing_ok=True)  # an interrupted regeneration must not look complete
    jobs = [
        (domain_number, image_number, defect)
        for domain_number in range(len(DOMAINS))
        for image_number, defect in enumerate(_defect_plan(images_per_domain, defect_types))
    ]

    def write(job: tuple[int, int, str | None]) -> list[Path]:
        return _write_image(root, seed, size, defect_contrast, *job)

    # PNG encoding and most numpy work release the GIL, so two threads use both cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        written = {path for paths in pool.map(write, jobs) for path in paths}
    _remove_stale_images(root, written)
    write_json_atomic(marker, params)
    return root


def generate_small_defect_dataset(root: Path, seed: int = 0, images_per_domain: int = 60) -> Path:
    """The 640 px small-defect variant of the demo (see SMALL_DEFECT_*), for resolution benchmarks."""
    return generate_demo_dataset(
        root, seed, images_per_domain, SMALL_DEFECT_SIZE, SMALL_DEFECT_TYPES, SMALL_DEFECT_CONTRAST
    )


def _write_image(
    root: Path, seed: int, size: int, defect_contrast: float, domain_number: int, image_number: int, defect: str | None
) -> list[Path]:
    """Render one image (and its mask) from its own generator and write it; returns the paths written."""
    domain = DOMAINS[domain_number]
    rng = np.random.default_rng([seed, domain_number, image_number])
    image, mask = _render(domain, defect, rng, size, defect_contrast)
    stem = f"{domain}_{image_number:03d}"
    paths = [_write_png(root / domain / (defect or "good") / f"{stem}.png", image)]
    if defect is not None:
        mask_path = root / domain / "masks" / defect / f"{stem}.png"
        paths.append(_write_png(mask_path, mask.astype(np.uint8) * 255))
    return paths


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _defect_plan(images_per_domain: int, defect_types: tuple[str, ...]) -> list[str | None]:
    """None for each normal image, then the defect types in turn for the defective ones."""
    normals = round(images_per_domain * NORMAL_SHARE)
    defects = [defect_types[i % len(defect_types)] for i in range(images_per_domain - normals)]
    return [None] * normals + defects


def _write_png(path: Path, pixels: np.ndarray) -> Path:
    buffer = io.BytesIO()
    # Low compression: these noisy textures barely compress, and speed matters more here.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return write_bytes_atomic(path, buffer.getvalue())


def _remove_stale_images(root: Path, written: set[Path]) -> None:
    # A previous run with other parameters may have left images this run did not produce.
    for domain in DOMAINS:
        for path in (root / domain).rglob("*.png"):
            if path not in written:
                path.unlink()


def _render(
    domain: str, defect: str | None, rng: np.random.Generator, size: int, defect_contrast: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W) uint8 greyscale image, like most inspection cameras give, and its bool defect mask."""
    height = 2 * size if domain == "woven_grid" else size  # one tall domain exercises aspect handling
    surface = _TEXTURES[domain](rng, height, size)
    if defect is None:
        mask = np.zeros(surface.shape, dtype=bool)
    elif defect_contrast == 1.0:
        mask = _DEFECTS[defect](surface, rng)  # drawn in place: the default demo's exact bytes
    else:
        clean = surface.copy()
        mask = _DEFECTS[defect](surface, rng)
        surface[:] = clean + defect_contrast * (surface - clean)
    surface += _illumination(rng, height, size) + 2.5 * _noise(rng, height, size)
    return np.clip(np.round(surface), 0, 255).astype(np.uint8), mask


def _unit(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: lets each texture set its own contrast explicitly."""
    return (values - values.mean()) / (values.std() + 1e-9)


# ---------------------------------------------------------------- textures


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # float32 halves the memory traffic of every filter pass; 8-bit output needs no more.
    return rng.standard_normal((height, width), dtype=np.float32)


def _brushed_metal(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Noise smeared along x gives the long horizontal polishing streaks (two box passes: a cheap
    # near-Gaussian blur even over this length).
    streaks = _noise(rng, height, width)
    for _ in range(2):
        streaks = uniform_filter1d(streaks, 51, axis=1, mode="wrap")
    streaks = _unit(gaussian_filter1d(streaks, 0.7, axis=0))
    grain = _unit(gaussian_filter(_noise(rng, height, width), sigma=(0.5, 3.0)))
    return 150.0 + 14.0 * streaks + 4.0 * grain


def _woven_grid(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    period = rng.uniform(15.0, 17.0)
    x = (np.arange(width) + rng.uniform(0, period)) / period
    y = (np.arange(height) + rng.uniform(0, period)) / period
    # Brightness across a thread: 0 at its edges, 1 along its middle.
    across_x, across_y = np.sqrt(np.sin(np.pi * (x % 1.0))), np.sqrt(np.sin(np.pi * (y % 1.0)))
    over = (np.floor(x)[None, :] + np.floor(y)[:, None]) % 2 == 0
    # Where the horizontal thread lies on top its profile runs across y, elsewhere the vertical one's.
    weave = np.where(over, across_y[:, None], across_x[None, :])
    fibres = _unit(gaussian_filter(_noise(rng, height, width), sigma=0.8))
    return 95.0 + 85.0 * weave + 5.0 * fibres


def _speckled_tile(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    cloud = _unit(gaussian_filter(_noise(rng, height, width), sigma=3.0))
    speckles = np.zeros((height, width), dtype=np.float32)
    count = int(height * width * 0.012)
    rows, columns = rng.integers(0, height, count), rng.integers(0, width, count)
    speckles[rows, columns] = rng.choice([-1.0, 1.0], count) * rng.uniform(80.0, 160.0, count)
    return 145.0 + 10.0 * cloud + gaussian_filter(speckles, sigma=0.8)


def _illumination(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random brightness offset and linear gradient, so no two normal images are alike."""
    slope_x, slope_y = rng.uniform(-15.0, 15.0, 2)
    ramp_x = slope_x * (np.arange(width, dtype=np.float32) / width - 0.5)
    ramp_y = slope_y * (np.arange(height, dtype=np.float32) / height - 0.5)
    return rng.normal(0.0, 5.0) + ramp_x[None, :] + ramp_y[:, None]


_TEXTURES: dict[str, Texture] = {
    "brushed_metal": _brushed_metal,
    "woven_grid": _woven_grid,
    "speckled_tile": _speckled_tile,
}


# ---------------------------------------------------------------- defects
# Each draws its defect into ``surface`` in place and returns the defect's mask. Contrast is kept
# clearly above the texture's own variation but areas small, so finding them takes a working
# detector, yet a person sees them.


def _random_point(rng: np.random.Generator, shape: tuple[int, ...], margin: float = 0.12) -> np.ndarray:
    height, width = shape
    return np.array([rng.uniform(margin, 1 - margin) * width, rng.uniform(margin, 1 - margin) * height])


def _drawn(shape: tuple[int, ...], draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _add_soft(surface: np.ndarray, mask: np.ndarray, delta: float, softness: float) -> None:
    # Blurred edges look like a real mark rather than a pasted stamp.
    surface += delta * gaussian_filter(mask.astype(np.float32), softness)


def _random_sign(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]))


def _scratch(surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = _random_point(rng, surface.shape)
    length = rng.uniform(0.15, 0.35) * min(surface.shape)
    angle = rng.uniform(0, np.pi)
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    ends = [tuple(centre - half), tuple(centre + half)]
    width = int(rng.integers(1, 4))
    mask = _drawn(surface.shape, lambda draw: draw.line(ends, fill=255, width=width))
    _add_soft(surface, mask, _random_sign(rng) * rng.uniform(45.0, 65.0), softness=0.6)
    return mask


def _spot(surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y = _random_point(rng, surface.shape)
    rx, ry = rng.uniform(3.0, 8.0, 2)
    mask = _drawn(surface.shape, lambda draw: draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255))
    blob = gaussian_filter(mask.astype(np.float32), 1.5)
    surface += _random_sign(rng) * rng.uniform(45.0, 65.0) * blob / blob.max()
    return mask


def _crack(surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    steps = int(rng.integers(5, 10))
    headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.6, steps))
    moves = rng.uniform(6.0, 14.0, (steps, 1)) * np.column_stack([np.cos(headings), np.sin(headings)])
    start = _random_point(rng, surface.shape, margin=0.25)
    points = start + np.vstack([[0.0, 0.0], np.cumsum(moves, axis=0)])
    width = int(rng.integers(1, 3))
    polyline = [tuple(point) for point in points]
    mask = _drawn(surface.shape, lambda draw: draw.line(polyline, fill=255, width=width, joint="curve"))
    _add_soft(surface, mask, -rng.uniform(60.0, 80.0), softness=0.5)  # cracks are dark gaps
    return mask


def _missing_texture(surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y = _random_point(rng, surface.shape)
    rx, ry = rng.uniform(12.0, 24.0, 2)
    mask = _drawn(surface.shape, lambda draw: draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255))
    # The pattern is worn flat: its local average remains, its structure is gone.
    flattened = gaussian_filter(surface, 6.0)
    blend = gaussian_filter(mask.astype(np.float32), 2.0)
    surface[:] = surface * (1 - blend) + flattened * blend
    return mask


_DEFECTS: dict[str, Defect] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "missing_texture": _missing_texture,
}
