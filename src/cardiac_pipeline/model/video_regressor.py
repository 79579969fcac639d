"""EchoNet-Dynamic style baseline: an R(2+1)D-18 video network regressing LVEF directly.

Ouyang et al. (Nature 2020) trained torchvision's R(2+1)D-18 end to end with a single-output
linear head whose bias starts at the mean training EF. Here it is trained from random
initialisation (no network access, so no Kinetics weights) and plugs into the generic loop
in ``train.py``: ``model(clips)`` takes uint8 ``[B, T, C, H, W]`` clips (C = 1 grey or 3) and
returns the same ``CardiacCLIPOutput`` as CardiacCLIP, with ``logits=None`` (no prompt head)
and uniform frame ``attention`` (the 3-D convolutions have no per-frame weights).

Pixels stay uint8 until they are on the device; conversion to float, the /255 scaling and
the mean/std normalisation happen inside ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.video import r2plus1d_18

from cardiac_pipeline.model.cardiac_clip import CardiacCLIPOutput
from cardiac_pipeline.model.losses import ef_l1

# EchoNet-Dynamic pixel statistics (its training-set mean/std, ~32.7 and ~50 on 0-255),
# on the 0-1 scale; pass the statistics of your own training set where they differ.
ECHONET_PIXEL_MEAN: tuple[float, float, float] = (0.128, 0.128, 0.129)
ECHONET_PIXEL_STD: tuple[float, float, float] = (0.196, 0.196, 0.197)
# EchoNet-Dynamic starts the regression bias at 55.6 (its mean training EF), so early
# gradients shape the features instead of moving the output from 0 to the EF range.
TYPICAL_EF: float = 55.6
PARAM_GROUP_NAME = "image_tower"


class EchoNetVideoRegressor(nn.Module):
    """R(2+1)D-18 (random init) + ``Linear(512, 1)`` EF head; input [B, T, C, H, W] uint8.

    ``mean``/``std`` are per-channel pixel statistics on the 0-1 scale (1 or 3 values).
    ``initial_ef`` is the starting value of the head's bias. ``pretrained=True`` is refused:
    the Kinetics-400 weights would have to be downloaded, and this project never does.
    """

    embedding_dim: int = 512

    def __init__(
        self,
        mean: Sequence[float] = ECHONET_PIXEL_MEAN,
        std: Sequence[float] = ECHONET_PIXEL_STD,
        pretrained: bool = False,
        initial_ef: float = TYPICAL_EF,
    ) -> None:
        super().__init__()
        if pretrained:
            raise ValueError(
                "EchoNetVideoRegressor(pretrained=True): pretrained R(2+1)D-18 weights would "
                "have to be downloaded from the torchvision model hub, and this project has no "
                "network access; use pretrained=False (random initialisation)"
            )
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(
                f"mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}"
            )
        if any(float(s) <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {tuple(std)}")
        net = r2plus1d_18(weights=None)
        in_features = net.fc.in_features
        net.fc = nn.Linear(in_features, 1)
        with torch.no_grad():
            net.fc.bias.fill_(float(initial_ef))
        self.video_net = net
        self.embedding_dim = in_features
        # channel axis 1 of [B, C, T, H, W]; non-persistent so checkpoints hold weights only
        shape = (1, len(mean), 1, 1, 1)
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False
        )

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 (0-255) or float (0-1) [B, T, C, H, W] -> normalised float [B, 3, T, H, W]."""
        if clips.ndim != 5:
            raise ValueError(f"clips must be [B, T, C, H, W], got shape {tuple(clips.shape)}")
        channels = clips.shape[2]
        if channels not in (1, 3):
            raise ValueError(f"clips have {channels} channels; expected 1 (grey) or 3")
        x = clips.permute(0, 2, 1, 3, 4).to(self.pixel_mean.dtype)
        if not clips.is_floating_point():
            x = x / 255.0
        x = (x - self.pixel_mean) / self.pixel_std
        if x.shape[1] == 1:  # grey video and grey statistics: the stem wants 3 channels
            x = x.expand(-1, 3, -1, -1, -1)
        return x.contiguous()

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        """The globally pooled 512-d clip feature (before the EF head)."""
        net = self.video_net
        x = self.normalize(clips)
        x = net.stem(x)
        x = net.layer1(x)
        x = net.layer2(x)
        x = net.layer3(x)
        x = net.layer4(x)
        return torch.flatten(net.avgpool(x), 1)

    def forward(self, clips: torch.Tensor) -> CardiacCLIPOutput:
        batch, frames = clips.shape[0], clips.shape[1]
        embedding = self.embed(clips)
        ef = self.video_net.fc(embedding).squeeze(-1)
        attention = torch.full(
            (batch, frames), 1.0 / frames, dtype=embedding.dtype, device=embedding.device
        )
        return CardiacCLIPOutput(ef=ef, logits=None, attention=attention, video_embedding=embedding)


def l1_loss(
    output: CardiacCLIPOutput, ef_target: torch.Tensor, **_loss_weights: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean absolute EF error and its detached parts {"l1", "total"}.

    The loss weights the generic loop passes (``w_ce``, ``w_kl``, ``w_l1``) are ignored:
    the regressor has one loss term, and scaling it would only rescale the learning rate.
    """
    l1 = ef_l1(output.ef, ef_target.to(output.ef.device))
    return l1, {"l1": l1.detach(), "total": l1.detach()}


def regressor_param_groups(
    model: EchoNetVideoRegressor, lrs: Mapping[str, float], weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """One optimizer group, named ``image_tower`` (lr ``lrs["image_tower"]``), for every
    trainable parameter, so the CardiacCLIP learning-rate config drives the baseline too."""
    if PARAM_GROUP_NAME not in lrs:
        raise ValueError(
            f"lrs has no learning rate for parameter group '{PARAM_GROUP_NAME}' (got {sorted(lrs)})"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return []
    return [
        {
            "name": PARAM_GROUP_NAME,
            "params": params,
            "lr": float(lrs[PARAM_GROUP_NAME]),
            "weight_decay": weight_decay,
        }
    ]
