"""Patch features (for PatchCore) and image embeddings (for the gate) from one backbone."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cpst_pipeline.data.images import as_rgb
from cpst_pipeline.features.backbone import BackboneConfig, create_feature_network, normalisation
from cpst_pipeline.features.preprocess import resize_image, to_batch


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FeatureExtractor:
    """Runs the backbone and turns its stage outputs into locally aware patch features."""

    def __init__(self, config: BackboneConfig, device: str = "auto"):
        self.config = config
        self.device = resolve_device(device)
        self.network = create_feature_network(config).to(self.device, memory_format=torch.channels_last)
        self.mean, self.std = normalisation(self.network)
        self.feature_dim = sum(self.network.feature_info.channels())

    def batch(self, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """(H, W) grey or (H, W, 3) RGB uint8 images -> one input tensor; grey is resized while it is
        still one channel (a third of the work, the same pixels)."""
        resized = [as_rgb(resize_image(image, size)) for image in images]
        return to_batch(resized, self.mean, self.std).to(self.device)

    @torch.inference_mode()
    def patch_features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) features on the finest stage's grid (stride 8 for Lite0).

        Each stage is averaged over a 3x3 neighbourhood (PatchCore's locally aware
        features), coarser stages are upsampled to the finest grid, then concatenated.
        """
        maps = self.network(batch)
        grid = maps[0].shape[-2:]
        aggregated = []
        for feature_map in maps:
            pooled = F.avg_pool2d(feature_map, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            if pooled.shape[-2:] != grid:
                pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
            aggregated.append(pooled)
        return torch.cat(aggregated, dim=1).permute(0, 2, 3, 1).float()

    def stored_patch_features(self, batch: torch.Tensor) -> np.ndarray:
        """``patch_features`` as numpy float16, the precision the feature store keeps (half the
        disk and memory; nearest-neighbour distances barely move). The bank, the calibration, the
        resolution trial and the server all score patches at this precision, so they agree."""
        return self.patch_features(batch).half().cpu().numpy()

    @torch.inference_mode()
    def image_embedding(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 2D): mean and max of the patch features; the max keeps small defects visible."""
        patches = self.patch_features(batch).flatten(1, 2)
        return torch.cat([patches.mean(dim=1), patches.amax(dim=1)], dim=1)
