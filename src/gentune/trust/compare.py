"""The same tokens under the fine-tuned and the base model: one teacher-forced pass of each
over every row, reduced at once to per-token numbers (no (N, V) distribution is kept).

A position is *unshifted* where the tuned model's token is the base model's first choice too,
*marginal* where it is the base's second or third, *shifted* beyond (URIAL / AlignTDS: 5-8 %
of an aligned model's positions are shifted, mostly style and format tokens early on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gentune.data.encode import IGNORE, Example, collate
from gentune.models.loss import target_logits

UNSHIFTED, MARGINAL, SHIFTED = "unshifted", "marginal", "shifted"
TOP = 5  # alternatives kept per position and model


def shift_class(rank: int) -> str:
    """unshifted (the base's first choice), marginal (its 2nd or 3rd), shifted (beyond)."""
    return UNSHIFTED if rank == 1 else MARGINAL if rank <= 3 else SHIFTED


@dataclass
class RowTokens:
    """Per-token numbers of one row's target tokens (arrays of length n)."""

    where: str
    tokens: np.ndarray  # (n,) the token ids scored
    logp_tuned: np.ndarray  # (n,) log p of the token under the tuned model
    logp_base: np.ndarray  # (n,) ... under the base model
    base_rank: np.ndarray  # (n,) the token's rank under the base model (1 = its first choice)
    kl: np.ndarray  # (n,) KL(tuned || base) of the next-token distributions, in nats
    entropy_tuned: np.ndarray  # (n,) nats
    entropy_base: np.ndarray  # (n,)
    top_tuned: list[list[tuple[int, float]]]  # per position: (token id, probability) x TOP
    top_base: list[list[tuple[int, float]]]

    @property
    def delta(self) -> np.ndarray:
        """Δ log-prob (tuned − base) of each token."""
        return self.logp_tuned - self.logp_base

    @property
    def classes(self) -> list[str]:
        return [shift_class(int(r)) for r in self.base_rank]


def token_stats(tuned: torch.Tensor, base: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per-position numbers from logits (N, V) of each model and the target tokens (N,)."""
    lt = torch.log_softmax(tuned.float(), dim=-1)  # (N, V)
    lb = torch.log_softmax(base.float(), dim=-1)
    at = targets[:, None]
    logp_t, logp_b = lt.gather(1, at)[:, 0], lb.gather(1, at)[:, 0]  # (N,)
    pt, pb = lt.exp(), lb.exp()
    rank = 1 + (lb > logp_b[:, None]).sum(-1)  # ties count in the token's favour
    top_t, top_b = lt.topk(min(TOP, lt.shape[-1]), dim=-1), lb.topk(min(TOP, lb.shape[-1]), dim=-1)
    return {
        "logp_tuned": logp_t,
        "logp_base": logp_b,
        "base_rank": rank,
        "kl": (pt * (lt - lb)).sum(-1).clamp_min(0.0),
        "entropy_tuned": -(pt * lt).sum(-1),
        "entropy_base": -(pb * lb).sum(-1),
        "top_tuned": (top_t.indices, top_t.values.exp()),
        "top_base": (top_b.indices, top_b.values.exp()),
    }


def output_example(
    prompt: Sequence[int], output: Sequence[int], where: str, seq2seq: bool
) -> Example:
    """The example that teacher-forces `output` after `prompt` (an encoder-decoder: the prompt is
    the source, the output the target)."""
    if seq2seq:
        return Example(list(prompt), list(output), where, seq2seq=True)
    return Example(list(prompt) + list(output), [IGNORE] * len(prompt) + list(output), where)


@torch.no_grad()
def compare_rows(
    tuned, base, examples: list[Example], pad_id: int, *, batch_size: int = 8, progress=None
) -> list[RowTokens]:
    """Both models over the same examples (length-sorted batches, eval mode): the per-token
    numbers of every example's target tokens, in the examples' order. `progress(n)` is called
    with the rows done per batch."""
    out: list[RowTokens | None] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: examples[i].size)
    was = tuned.training, base.training
    tuned.eval(), base.eval()
    for start in range(0, len(order), batch_size):
        idx = [i for i in order[start : start + batch_size] if examples[i].n_targets]
        for i in order[start : start + batch_size]:
            if not examples[i].n_targets:
                out[i] = _row(examples[i].where, {}, 0, 0)
        if not idx:
            continue
        batch = collate([examples[i] for i in idx], pad_id)
        lt, labels = target_logits(tuned, _on(batch, tuned))
        lb, _ = target_logits(base, _on(batch, base))
        stats = token_stats(lt, lb.to(lt.device), labels)
        at = 0
        for i in idx:
            n = examples[i].n_targets
            out[i] = _row(examples[i].where, {**stats, "tokens": labels}, at, at + n)
            at += n
        if progress is not None:
            progress(len(idx))
    tuned.train(was[0]), base.train(was[1])
    return [r for r in out if r is not None]


def _on(batch: dict, model) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _row(where: str, stats: dict, a: int, b: int) -> RowTokens:
    def arr(key):
        return stats[key][a:b].float().cpu().numpy() if key in stats else np.zeros(0)

    def top(key):
        if key not in stats:
            return []
        ids, probs = stats[key]
        return [
            list(zip(ids[k].tolist(), [round(p, 5) for p in probs[k].tolist()], strict=True))
            for k in range(a, b)
        ]

    return RowTokens(
        where=where,
        tokens=stats["tokens"][a:b].cpu().numpy() if "tokens" in stats else np.zeros(0, int),
        logp_tuned=arr("logp_tuned"),
        logp_base=arr("logp_base"),
        base_rank=stats["base_rank"][a:b].cpu().numpy() if stats else np.zeros(0, int),
        kl=arr("kl"),
        entropy_tuned=arr("entropy_tuned"),
        entropy_base=arr("entropy_base"),
        top_tuned=top("top_tuned"),
        top_base=top("top_base"),
    )
