"""The training loss: cross-entropy per ensemble member, and its gradient for the explicit
backward pass (training, the step probes and the tests use the same two functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def member_losses(logits: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy (fused log-softmax) per member, summed or averaged over the batch: (K,)."""
    k, b, c = logits.shape
    per_example = F.cross_entropy(logits.reshape(k * b, c), y.reshape(k * b), reduction="none")
    per_example = per_example.view(k, b)
    return per_example.sum(1) if reduction == "sum" else per_example.mean(1)


def loss_and_grad(logits: torch.Tensor, y: torch.Tensor, reduction: str) -> tuple:
    """Per-member cross-entropy (K,) and its gradient dL/dlogits = softmax - onehot (K, B, C),
    divided by B for the mean reduction."""
    logp = torch.log_softmax(logits, -1)
    target = y.unsqueeze(-1)  # (K, B, 1)
    losses = -logp.gather(-1, target).sum((1, 2))
    minus_one = torch.tensor(-1.0, dtype=logp.dtype, device=logp.device).expand(target.shape)
    grad = logp.exp_().scatter_add_(-1, target, minus_one)
    if reduction == "mean":
        b = logits.shape[1]
        return losses / b, grad.div_(b)
    return losses, grad
