"""The loss terms against values computed by hand with plain math, and the EF -> bin rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiac_pipeline.model.cardiac_clip import CardiacCLIPOutput
from cardiac_pipeline.model.losses import cardiac_clip_loss, text_to_video_kl
from cardiac_pipeline.model.prompts import ef_to_bin

E = math.e


def output(logits: list[list[float]] | None, ef: list[float]) -> CardiacCLIPOutput:
    b = len(ef)
    return CardiacCLIPOutput(
        ef=torch.tensor(ef),
        logits=None if logits is None else torch.tensor(logits),
        attention=torch.full((b, 3), 1 / 3),
        video_embedding=torch.zeros(b, 4),
    )


def kl(q: list[float], p: list[float]) -> float:
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))


# Two videos, EF 20 (bin 0) and 60 (bin 3); prompt logits picked by hand.
LOGITS = [[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]]
TARGET = [20.0, 60.0]
PRED = [25.0, 50.0]
CE = (-math.log(E**2 / (E**2 + 4)) - math.log(E / (E + 4))) / 2
# prompt 0: logits over videos (2, 0); target softmax(10 * (1, 0))
P0 = [E**2 / (E**2 + 1), 1 / (E**2 + 1)]
Q0 = [E**10 / (E**10 + 1), 1 / (E**10 + 1)]
# prompt 3: logits over videos (0, 1); target softmax(10 * (0, 1))
P3 = [1 / (1 + E), E / (1 + E)]
Q3 = [1 / (E**10 + 1), E**10 / (E**10 + 1)]
KL = (kl(Q0, P0) + kl(Q3, P3)) / 2  # prompts 1, 2, 4 are absent and do not count
L1 = (5.0 + 10.0) / 2


def test_each_part_and_the_weighted_total() -> None:
    total, parts = cardiac_clip_loss(
        output(LOGITS, PRED), torch.tensor(TARGET), w_ce=2.0, w_kl=0.5, w_l1=0.1
    )
    assert float(parts["ce"]) == pytest.approx(CE, rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(KL, rel=1e-5)
    assert float(parts["l1"]) == pytest.approx(L1, rel=1e-6)
    assert float(total.detach()) == pytest.approx(2.0 * CE + 0.5 * KL + 0.1 * L1, rel=1e-5)
    assert float(parts["total"]) == pytest.approx(float(total.detach()))


def test_kl_is_target_to_model_direction() -> None:
    reverse = (kl(P0, Q0) + kl(P3, Q3)) / 2
    assert abs(reverse - KL) > 0.1  # the two directions are far apart for these numbers
    value = float(text_to_video_kl(torch.tensor(LOGITS), torch.tensor([0, 3])))
    assert value == pytest.approx(KL, rel=1e-5)


def test_kl_with_one_prompt_present_targets_uniform() -> None:
    logits = [[0.0, 3.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]]
    p = [E**3 / (E**3 + E), E / (E**3 + E)]
    value = float(text_to_video_kl(torch.tensor(logits), torch.tensor([1, 1])))
    assert value == pytest.approx(kl([0.5, 0.5], p), rel=1e-5)


def test_kl_is_zero_when_the_model_matches_the_target() -> None:
    logits = torch.zeros(2, 5)
    logits[:, 0] = torch.tensor([10.0, 0.0])
    logits[:, 4] = torch.tensor([0.0, 10.0])
    assert float(text_to_video_kl(logits, torch.tensor([0, 4]))) == pytest.approx(0.0, abs=1e-6)


def test_linear_head_is_l1_only() -> None:
    total, parts = cardiac_clip_loss(output(None, PRED), torch.tensor(TARGET), w_l1=2.0)
    assert set(parts) == {"l1", "total"}
    assert float(total) == pytest.approx(2.0 * L1)


def test_loss_gradient_reaches_the_logits() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    ef = (logits.softmax(-1) * torch.tensor([15.0, 37.0, 50.0, 62.0, 85.0])).sum(-1)
    out = CardiacCLIPOutput(
        ef=ef, logits=logits, attention=torch.ones(2, 1), video_embedding=torch.zeros(2, 4)
    )
    cardiac_clip_loss(out, torch.tensor(TARGET))[0].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("ef", "expected"),
    [
        (0.0, 0),
        (29.99, 0),
        (30.0, 1),
        (44.99, 1),
        (45.0, 2),
        (54.99, 2),
        (55.0, 3),
        (70.0, 3),
        (70.01, 4),
        (100.0, 4),
    ],
)
def test_ef_to_bin_follows_the_prompt_ranges(ef: float, expected: int) -> None:
    assert ef_to_bin(ef) == expected
    assert int(ef_to_bin(torch.tensor([ef]))[0]) == expected
    assert int(ef_to_bin(np.array([ef]))[0]) == expected


def test_ef_to_bin_keeps_the_container_kind() -> None:
    bins = ef_to_bin(torch.tensor([[10.0, 50.0], [60.0, 80.0]]))
    assert bins.dtype == torch.long and bins.tolist() == [[0, 2], [3, 4]]
    assert isinstance(ef_to_bin(42.0), int)
    assert ef_to_bin(np.array([31.0, 46.0])).tolist() == [1, 2]  # reference floor rule: 1, 2 too
    assert ef_to_bin(30.5) == 1  # reference (floor(EF) <= 30 -> 0) would say 0
