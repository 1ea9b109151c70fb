"""What indexing accepts: the limits an image must meet and the file types it knows.

Every image format Pillow can read is either supported or, by name, quarantined as an
unsupported format; nothing with an image suffix is passed over silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from cpst_pipeline.data.images import too_large_reason

# Formats read as single still frames, the way cameras on a line write them.
SUPPORTED_FORMATS = frozenset({"BMP", "JPEG", "PNG", "TIFF", "WEBP"})

# Pillow's suffix -> format table, limited to the formats it can open (some it only writes).
PILLOW_READABLE_SUFFIXES: dict[str, str] = {
    suffix: name for suffix, name in Image.registered_extensions().items() if name in Image.OPEN
}
IMAGE_SUFFIXES = frozenset(s for s, name in PILLOW_READABLE_SUFFIXES.items() if name in SUPPORTED_FORMATS)

# Files that travel with datasets and are fine to pass over: notes, licences, lists, OS metadata.
SIDECAR_SUFFIXES = frozenset({".txt", ".md", ".rst", ".csv", ".json", ".yaml", ".yml", ".ini", ".db", ".pdf", ".html"})


@dataclass(frozen=True)
class IndexRules:
    """Limits of a usable image; an image that breaks one is quarantined with that rule as reason."""

    min_short_side: int = 32  # a smaller image carries no texture at the embedding's resolution
    max_pixels: int = 64_000_000  # refused before decoding; Pillow's own bomb guard is at 89 MP
    blank_max_std: float = 2.0  # pixel standard deviation (0-255) at or below which a frame is blank
    allow_symlinks_outside_root: bool = False

    def __post_init__(self) -> None:
        if self.min_short_side < 1 or self.max_pixels < 1 or self.blank_max_std < 0:
            raise ValueError(f"index rules need min_short_side >= 1, max_pixels >= 1, blank_max_std >= 0; got {self}")

    def problem(self, width: int, height: int, pixel_std: float) -> str | None:
        """The quarantine reason of an image that decodes but breaks a limit, else None."""
        if width * height > self.max_pixels:  # a probe cached under a larger limit
            return too_large_reason(width, height, self.max_pixels)
        if min(width, height) < self.min_short_side:
            return f"image too small: {width}x{height}, short side below min_short_side {self.min_short_side}"
        if pixel_std <= self.blank_max_std:
            return f"blank image: pixel standard deviation {pixel_std:.2f} <= blank_max_std {self.blank_max_std:g}"
        return None


def unsupported_format(suffix: str) -> str | None:
    """Pillow's name for a format it reads but indexing does not support, else None."""
    name = PILLOW_READABLE_SUFFIXES.get(suffix.lower())
    return None if name is None or name in SUPPORTED_FORMATS else name
