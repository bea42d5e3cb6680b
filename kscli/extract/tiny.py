"""tiny-random: a small random 3D-conv net for tests and the demo (registered on import)."""

from __future__ import annotations

import torch
from torch import nn

from kscli.errors import KscliError
from kscli.extract.backbone_base import HALF, TINY_RANDOM_WEIGHTS, Backbone, BackboneSpec, register_backbone


class TinyRandomBackbone(Backbone):
    """Three random conv3d+ReLU layers, then global average and max pooling concatenated.

    Weights come from a generator seeded with ``seed``, so every creation gives the same net.
    Not trained: the features only keep colour / spatial / temporal statistics of the input.
    """

    def __init__(self, spec: BackboneSpec, seed: int = 0):
        super().__init__(spec)
        c = spec.feature_dim // 2
        self.convs = nn.ModuleList(
            [
                nn.Conv3d(3, 16, kernel_size=(3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)),
                nn.Conv3d(16, 32, kernel_size=3, stride=(2, 2, 2), padding=1),
                nn.Conv3d(32, c, kernel_size=3, stride=(1, 2, 2), padding=1),
            ]
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 2, 1, 3, 4)  # (B, 3, T, S, S)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)


_TINY = dict(num_frames=8, size=64, feature_dim=128)


@register_backbone(
    "tiny-random",
    description="RANDOM untrained 3D-conv net (8x64x64 -> 128), fixed seed: for tests and the demo only, not a real backbone",
    kind="video",
    default_weights=None,
    hf_class="",
    mean=HALF,
    std=HALF,
    weights_label=TINY_RANDOM_WEIGHTS,
    **_TINY,
)
def _tiny_random(weights: str | None = None, *, num_frames: int | None = None, size: int | None = None, seed: int = 0) -> Backbone:
    if weights not in (None, "", "random", TINY_RANDOM_WEIGHTS):
        raise KscliError(
            f"backbone 'tiny-random' has no weights to load (got --weights {weights!r}); it is a fixed random net, drop --weights"
        )
    frames = int(num_frames) if num_frames else _TINY["num_frames"]
    sz = int(size) if size else _TINY["size"]
    if frames < 1 or sz < 8:
        raise KscliError(f"backbone 'tiny-random': needs num_frames >= 1 and size >= 8, got {frames} and {sz}")
    spec = BackboneSpec(
        name="tiny-random",
        kind="video",
        num_frames=frames,
        size=sz,
        feature_dim=_TINY["feature_dim"],
        mean=HALF,
        std=HALF,
        weights=TINY_RANDOM_WEIGHTS,
        hf_class="",
        pooling="conv3d x3 + relu, global mean and max concatenated",
    )
    return TinyRandomBackbone(spec, seed=seed)
