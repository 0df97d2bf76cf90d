"""The shared backbone: a timm ResNet configured as Atari-PB's (GroupNorm, 4 input frames, no max-pool).

As in the released Atari-PB code (src/models/layers.py, src/models/backbones/resnet.py): GroupNorm with 4
groups and no affine parameters, and PyTorch's default convolution initialisation (timm's kaiming init and
its zero-initialised last norm of each block are undone), so a freshly built resnet50 is the released
`random` baseline's network: 23,458,048 parameters.

84x84 input -> 7x7 stride-2 stem (42x42) -> four stages (42, 21, 11, 6) -> spatial features, no pooling:
resnet50 gives 2048 x 6 x 6. Input is uint8 frame stacks, scaled to [0, 1] inside the module, so a user
needs nothing from this package to feed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import timm
import torch
from timm.layers import GroupNorm
from timm.models.resnet import make_blocks
from torch import nn

from atari_pb.errors import UsageError


@dataclass(frozen=True)
class BackbonePreset:
    timm_name: str  # the timm entry point; the fields below override its defaults
    layers: tuple[int, ...]
    channels: tuple[int, ...]
    stem_width: int  # channels of the 7x7 stem convolution


PRESETS: dict[str, BackbonePreset] = {
    # Atari-PB's benchmark backbone: bottleneck blocks 3-4-6-3
    "resnet50": BackbonePreset("resnet50", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet18": BackbonePreset("resnet18", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    # a few tens of thousands of parameters, an 8-channel stem: CPU tests and the demo
    "tiny": BackbonePreset("resnet18", (1, 1, 1, 1), (8, 16, 32, 64), 8),
}
NATURE = "nature"  # the DQN Nature CNN (below): the released Far-OOD data generator's backbone
PRESET_NAMES = (*PRESETS, NATURE)
NORM_GROUPS = 4  # Atari-PB's GroupNorm


class NatureCNN(nn.Module):
    """The DQN Nature CNN as the released Atari-PB code builds it (src/models/backbones/nature.py: three
    ReLU convolutions 32x8x8/4, 64x4x4/2, 64x3x3/1, PyTorch's default init, no norm): (B, F, 84, 84) floats ->
    (B, 64, 7, 7). The released Far-OOD data came from a Rainbow agent on this backbone
    (configs/model/distributional_nature.yaml)."""

    num_features = 64

    def __init__(self, in_frames: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_frames, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Backbone(nn.Module):
    """uint8 (B, F, 84, 84) frame stacks -> float (B, C, 6, 6) features (7x7 for the Nature CNN)."""

    def __init__(self, preset: str = "resnet50", in_frames: int = 4):
        super().__init__()
        if preset not in PRESET_NAMES:
            raise UsageError(f"unknown backbone preset {preset!r}; valid presets: {', '.join(PRESET_NAMES)}")
        self.preset = preset
        self.in_frames = in_frames
        if preset == NATURE:
            self.body = NatureCNN(in_frames)
            self.out_channels: int = NatureCNN.num_features
            return
        p = PRESETS[preset]
        norm = partial(GroupNorm, num_groups=NORM_GROUPS, affine=False)
        self.body = timm.create_model(
            p.timm_name,
            pretrained=False,
            in_chans=in_frames,
            num_classes=0,
            global_pool="",
            layers=p.layers,
            channels=p.channels,
            norm_layer=norm,
        )
        if p.stem_width != self.body.conv1.out_channels:
            _set_stem_width(self.body, p, in_frames, norm)
        self.body.maxpool = nn.Identity()  # keeps 84x84 inputs at 6x6 after the last stage
        for module in self.body.modules():  # PyTorch's default init, as the released backbone
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.reset_parameters()
        self.out_channels: int = self.body.num_features

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().div_(255.0) if obs.dtype == torch.uint8 else obs
        return self.body.forward_features(x)

    def out_shape(self, size: int = 84) -> tuple[int, int, int]:
        """(C, H, W) of the features for size x size inputs."""
        with torch.no_grad():
            return tuple(self(torch.zeros(1, self.in_frames, size, size, dtype=torch.uint8)).shape[1:])


def _set_stem_width(body: nn.Module, p: BackbonePreset, in_frames: int, norm) -> None:
    """timm's classic 7x7 stem is 64 channels wide whatever `stem_width` says (it only sizes deep stems), so
    a narrow preset would spend most of its compute there: rebuild the stem and the first stage for
    `p.stem_width` input channels."""
    body.conv1 = nn.Conv2d(in_frames, p.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = norm(p.stem_width)
    blocks = (type(body.layer1[0]),) * len(p.layers)
    stages, _ = make_blocks(
        blocks, p.channels, p.layers, p.stem_width, norm_layer=norm
    )  # the stages timm builds
    body.layer1 = stages[0][1]  # the only one whose input width changed
