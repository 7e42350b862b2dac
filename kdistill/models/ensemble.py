"""An ensemble teacher: several fine-tuned models answering as one.

The members' class probabilities are averaged, and the ensemble returns the log of that mean
(``log mean_m softmax(z_m)``), so ``softmax`` of its output is the mean probability and every
consumer (calibration, the cached teacher table, the kd loss at any temperature) reads it like any
model's logits. Probabilities rather than logits are averaged because logits have no common
scale across architectures: a member with large logits would outvote the others, while a
probability is bounded, so one overconfident member cannot dominate, and the mean of calibrated
members stays close to calibrated (Lakshminarayanan et al., 2017).

An ensemble checkpoint holds every member's weights (``members.<k>.``) and each member's
architecture, so it loads like any checkpoint with nothing else at hand."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.errors import ConfigError

ENSEMBLE = "ensemble"  # the architecture name in model.json
MEMBER_ROLE = "member"  # a member's role in its model.json and results.json row (the ensemble's: teacher)


class Ensemble(nn.Module):
    """``images [B, C, S, S] -> log of the members' mean class probability [B, K]``."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least two members, not {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(member(images), dim=1) for member in self.members])  # [M, B, K]
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))

    def get_classifier(self) -> nn.Module:
        # find_head asks for this: methods that read "the" head's input have no single one here.
        raise ConfigError("an ensemble teacher has no single classifier head (methods that read the "
                          "teacher's embedding or features need one teacher)")


def ensemble_architecture(num_classes: int, input_size: int, in_channels: int, members: list[dict]) -> dict:
    """The ``architecture`` entry of an ensemble's model.json: each member's own entry inside."""
    return {"name": ENSEMBLE, "args": {"num_classes": num_classes, "input_size": input_size,
                                       "in_channels": in_channels, "members": members}}


def model_label(architecture: dict) -> str:
    """The name a report gives a model: its architecture, or for an ensemble its members'."""
    if architecture["name"] != ENSEMBLE:
        return architecture["name"]
    return "ensemble: " + " + ".join(member["name"] for member in architecture["args"]["members"])
