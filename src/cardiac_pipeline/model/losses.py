"""CardiacCLIP training loss: CE over LVEF bins + text-to-video KL + L1 on EF (weights 1/1/1).

KL direction. For each prompt k present in the batch, over the batch's B videos:
    p_k = softmax_b(logits[b, k])                     (the model's video distribution)
    q_k = softmax_b(sharpness * [bin(b) == k])         (target, sharpness 10)
    KL_k = KL(q_k || p_k) = sum_b q_k[b] * (log q_k[b] - log p_k[b])
and the term is the mean of KL_k over the prompts present. method.md writes
"KL(softmax of logits || target)" in PyTorch's argument order (``KLDivLoss(log p, q)``, as
the reference code calls it); mathematically that is KL(target || model), computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cardiac_pipeline.model.cardiac_clip import CardiacCLIPOutput
from cardiac_pipeline.model.prompts import BIN_EDGES, ef_to_bin


def bin_cross_entropy(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the prompt logits [B, K] against the EF bins [B]."""
    return F.cross_entropy(logits.float(), bins)


def text_to_video_kl(
    logits: torch.Tensor, bins: torch.Tensor, sharpness: float = 10.0
) -> torch.Tensor:
    """Mean over the prompts present in the batch of KL(target_k || softmax over videos of logits[:, k])."""
    num_prompts = logits.shape[1]
    membership = F.one_hot(bins, num_prompts).t().float()  # [K, B]
    present = membership.sum(dim=1) > 0
    log_p = F.log_softmax(logits.float().t(), dim=1)  # over videos
    log_q = F.log_softmax(sharpness * membership, dim=1)
    kl_per_prompt = (log_q.exp() * (log_q - log_p)).sum(dim=1)  # [K]
    return kl_per_prompt[present].mean()


def ef_l1(ef_pred: torch.Tensor, ef_target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in EF percentage points."""
    return (ef_pred.float() - ef_target.float()).abs().mean()


def cardiac_clip_loss(
    output: CardiacCLIPOutput,
    ef_target: torch.Tensor,
    *,
    w_ce: float = 1.0,
    w_kl: float = 1.0,
    w_l1: float = 1.0,
    kl_sharpness: float = 10.0,
    bin_edges: Sequence[float] = BIN_EDGES,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its detached parts {"ce", "kl", "l1", "total"}.

    With the linear head (``output.logits is None``) the loss is ``w_l1 * L1`` only.
    """
    ef_target = ef_target.to(output.ef.device)
    l1 = ef_l1(output.ef, ef_target)
    if output.logits is None:
        total = w_l1 * l1
        return total, {"l1": l1.detach(), "total": total.detach()}
    bins = ef_to_bin(ef_target, bin_edges)
    ce = bin_cross_entropy(output.logits, bins)
    kl = text_to_video_kl(output.logits, bins, kl_sharpness)
    total = w_ce * ce + w_kl * kl + w_l1 * l1
    return total, {"ce": ce.detach(), "kl": kl.detach(), "l1": l1.detach(), "total": total.detach()}
