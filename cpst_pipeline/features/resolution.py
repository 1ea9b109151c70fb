"""The heatmap resolution of a domain, chosen on val among a few candidate settings.

More pixels help only where defects are small next to the image: Kolektor lost val AUROC
at 320-384 px, while 640 px images with 1-3 px defects need tiles near native resolution.
So candidates are proposed from the image size, each is measured on val, and the rule in
``choose_resolution`` keeps the cheap 256 px default unless another is clearly better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.features.tiling import TilingConfig

BASELINE_NAME = "256"


@dataclass(frozen=True)
class ResolutionCandidate:
    """One way to feed a domain's images to the heatmap model: resized whole, or tiled."""

    name: str
    short_side: int | None = None  # the whole image resized to this short side (aspect kept)
    tiling: TilingConfig | None = None  # or cut into tiles after scaling

    def __post_init__(self) -> None:
        if (self.short_side is None) == (self.tiling is None):
            raise ValueError(f"candidate {self.name!r} needs exactly one of short_side and tiling")

    def input_size(self, height: float, width: float, max_aspect: float = ResolutionConfig.max_aspect) -> tuple[int, int] | None:
        """The network input size for a resized candidate; None for a tiled one (tiles have their own)."""
        return None if self.short_side is None else fit_input_size(height, width, self.short_side, max_aspect)


@dataclass(frozen=True)
class ResolutionMeasurement:
    candidate: ResolutionCandidate
    val_image_auroc: float | None  # None when val lacks one of the classes
    seconds_per_image: float  # features + scoring of one val image

    def __post_init__(self) -> None:
        if not self.seconds_per_image > 0:
            raise ValueError(f"{self.candidate.name}: seconds_per_image must be positive, got {self.seconds_per_image}")


@dataclass(frozen=True)
class ResolutionRule:
    # A candidate must beat the baseline's val AUROC by this much to replace it: val holds a
    # handful of defects per domain, so smaller gains are within one image's noise.
    margin: float = 0.02
    # Among candidates that clear the margin, AUROCs this close count as a tie, won by the cheaper.
    tie: float = 0.005


@dataclass(frozen=True)
class ResolutionTrialConfig:
    """When the pipeline tries candidates for a domain (pipeline/heatmap_resolution.py)."""

    # Bank images per candidate (an even sample): enough to rank candidates, far cheaper than the real bank.
    bank_images: int = 64
    # Only for images whose short side is at least this many default short sides.
    min_scale: float = 2.0
    # The tiled candidate scales the image so its short side takes at most this many tiles: the
    # bank's and the backbone's work grow with the tiles (640 px images: 3 x 3 tiles at x1).
    max_tiles_per_side: int = 3

    def tiling(self, short_side: float, tile_size: int) -> TilingConfig:
        """The tiled candidate's tiling for images of this short side: tiles of the default input
        size, overlapping by an eighth of it (32 px at 256: 4 stride-8 patches), never enlarged."""
        overlap = tile_size // 8
        span = self.max_tiles_per_side * tile_size - (self.max_tiles_per_side - 1) * overlap
        return TilingConfig(tile_size=tile_size, min_overlap=overlap, scale=round(min(1.0, span / short_side), 4))


@dataclass(frozen=True)
class ResolutionChoice:
    chosen: ResolutionCandidate
    reason: str
    measurements: tuple[ResolutionMeasurement, ...]


def resolution_candidates(
    height: float, width: float, base_short_side: int = ResolutionConfig.heatmap_short_side, tiling: TilingConfig = TilingConfig()
) -> list[ResolutionCandidate]:
    """The baseline first; 1.5x its short side when the image has those pixels; tiles at
    ``tiling.scale`` when the scaled short side is at least twice the baseline's (below that
    one resize nearly matches the tiles and costs less)."""
    short = min(height, width)
    candidates = [ResolutionCandidate(BASELINE_NAME if base_short_side == 256 else str(base_short_side), short_side=base_short_side)]
    larger = int(round(1.5 * base_short_side / 32)) * 32
    if short >= larger:
        candidates.append(ResolutionCandidate(str(larger), short_side=larger))
    if short * tiling.scale >= 2 * base_short_side:
        candidates.append(ResolutionCandidate(f"tiled x{tiling.scale:g}", tiling=tiling))
    return candidates


def choose_resolution(measurements: Sequence[ResolutionMeasurement], rule: ResolutionRule = ResolutionRule()) -> ResolutionChoice:
    """Keep the first measurement (the baseline) unless another beats its val AUROC by
    ``rule.margin``; among those that do, the best AUROC wins, ties (within ``rule.tie``)
    going to the one with the lower time per image."""
    if not measurements:
        raise ValueError("no resolution measured")
    measurements = tuple(measurements)
    baseline = measurements[0]
    if baseline.val_image_auroc is None:
        return ResolutionChoice(baseline.candidate, "val lacks normal or defective images: baseline kept", measurements)
    better = [m for m in measurements[1:] if m.val_image_auroc is not None and m.val_image_auroc >= baseline.val_image_auroc + rule.margin]
    if not better:
        return ResolutionChoice(baseline.candidate, f"no candidate beats {baseline.candidate.name}'s val AUROC by {rule.margin}", measurements)
    best_auroc = max(m.val_image_auroc for m in better)
    chosen = min((m for m in better if m.val_image_auroc >= best_auroc - rule.tie), key=lambda m: m.seconds_per_image)
    reason = (
        f"val AUROC {chosen.val_image_auroc:.3f} against {baseline.val_image_auroc:.3f} "
        f"at {baseline.candidate.name}, {chosen.seconds_per_image / baseline.seconds_per_image:.1f}x its time per image"
    )
    return ResolutionChoice(chosen.candidate, reason, measurements)
