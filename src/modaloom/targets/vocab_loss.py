"""Cross-entropy over a vocabulary projection, computed a chunk of rows at a time with its gradients.

A masked or causal LM's head makes a (rows x vocabulary) logits matrix; the usual path keeps it, its fp32
log-probabilities and, at the start of the backward pass, two gradients of that size alive at once: the
largest part of a small model's training peak (4 x 250 masked rows x 21,128 classes x 4 bytes = 85 MB for a
tiny BERT at batch 32 x 128). Here each chunk's logits are made, turned into the loss, the accuracy count and
the gradient with respect to the logits (softmax minus target, in the logits' buffer), and that gradient is multiplied
out into the gradients of the rows, the weight and the bias at once; the backward pass only scales them.
Same arithmetic as ``F.cross_entropy(F.linear(h, weight, bias), labels)`` (mean over the rows whose label is
not IGNORE, optional label smoothing), the same matmuls in number, no logits kept.
"""

from __future__ import annotations

from typing import Any

import torch

from modaloom.batch import IGNORE_INDEX

CHUNK_BYTES = {"cpu": 4 * 2**20}  # fp32 logits of one chunk, by device type
OTHER_CHUNK_BYTES = 64 * 2**20  # accelerators: larger matmuls, fewer kernel launches


def chunk_rows(vocab_size: int, device_type: str = "cpu") -> int:
    """Rows per chunk so that one chunk's fp32 logits take about ``CHUNK_BYTES`` of ``device_type``."""
    return max(1, CHUNK_BYTES.get(device_type, OTHER_CHUNK_BYTES) // (4 * vocab_size))


class _ChunkedVocabCrossEntropy(torch.autograd.Function):
    """(loss, correct rows, counted rows) of the projected rows; gradients made in the forward pass."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                smoothing: float, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        valid = labels != IGNORE_INDEX
        count = valid.sum()
        # F.cross_entropy's mean: 0/0 = nan when every label is ignored
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 at least, as the loss computes
        scale = 1.0 / count.to(acc)
        total = torch.zeros((), dtype=acc, device=h.device)
        correct = torch.zeros((), dtype=torch.long, device=h.device)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        grad_b = torch.zeros_like(bias) if want_b and bias is not None else None
        vocab = weight.shape[0]
        for start in range(0, h.shape[0], rows):
            h_c, y_c, v_c = h[start:start + rows], labels[start:start + rows], valid[start:start + rows]
            logits = (torch.addmm(bias, h_c, weight.t()) if bias is not None else h_c @ weight.t()).to(acc)
            target = y_c.clamp(min=0).unsqueeze(1)
            picked = logits.gather(1, target).squeeze(1)
            mean = logits.mean(dim=1) if smoothing else None
            top, best = logits.max(dim=1)
            correct += ((best == y_c) & v_c).sum()
            grad = logits.sub_(top.unsqueeze(1)).exp_()  # from here the buffer holds exp(logits - max)
            sums = grad.sum(dim=1)
            lse = top + sums.log()
            nll = lse - picked
            if mean is not None:
                nll = (1.0 - smoothing) * nll + smoothing * (lse - mean)
            total += (nll * v_c).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            row_weight = v_c * scale  # d(mean loss) / d(row loss)
            grad.mul_((row_weight / sums).unsqueeze(1))  # softmax, weighted
            if smoothing:
                grad.sub_((row_weight * (smoothing / vocab)).unsqueeze(1))
            grad.scatter_add_(1, target, ((smoothing - 1.0) * row_weight).unsqueeze(1).to(grad.dtype))
            grad = grad.to(h.dtype)
            if grad_h is not None:
                torch.mm(grad, weight, out=grad_h[start:start + rows])
            if grad_w is not None:
                grad_w.addmm_(grad.t(), h_c)
            if grad_b is not None:
                grad_b += grad.sum(dim=0)
        ctx.grads = [grad_h, grad_w, grad_b]  # buffers of this call only: scaled in place, handed over once
        ctx.mark_non_differentiable(correct, count)
        return total * scale, correct, count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the chunked vocabulary loss hands its gradients over once: a second backward pass "
                               "through it (retain_graph) needs the full logits (set chunked_loss = False on the "
                               "target)")
        grad_h, grad_w, grad_b = (None if g is None else g.mul_(grad_loss) for g in grads)
        return grad_h, grad_w, grad_b, None, None, None


def vocab_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                        label_smoothing: float = 0.0, rows: int | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(F.linear(h, weight, bias).float(), labels, label_smoothing=...)`` without keeping the
    logits: (mean loss over rows whose label is not IGNORE, rows predicted right, rows counted).

    ``h`` is (rows, features), ``weight`` (vocabulary, features); ``rows`` per chunk defaults to about
    ``CHUNK_BYTES`` of logits (4 MiB on CPU, 64 MiB elsewhere). Differentiable in ``h``, ``weight`` and ``bias``.
    """
    if h.dim() != 2 or labels.shape != h.shape[:1]:
        raise ValueError(f"vocab_cross_entropy takes (rows, features) and (rows,) labels, got {tuple(h.shape)} "
                         f"and {tuple(labels.shape)}")
    return _ChunkedVocabCrossEntropy.apply(h, weight, bias, labels, float(label_smoothing),
                                           rows or chunk_rows(weight.shape[0], h.device.type))
