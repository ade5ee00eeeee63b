"""Gradient × input: how much each source token moved the log-probability of an output, per
model. The gradient of log p(output | source) with respect to the source's input embeddings,
times the embeddings, summed over the hidden dimension; its magnitude per source token,
normalised to sum 1 over the row (Shrikumar et al.; Simonyan et al.)."""

from __future__ import annotations

import numpy as np
import torch

from gentune.data.encode import IGNORE, Example, collate
from gentune.models.families import causal_lm, is_seq2seq
from gentune.models.loss import decoder_inputs


def attribution(model, examples: list[Example], pad_id: int) -> list[np.ndarray]:
    """Per example: the share of the output's log-probability gradient × input on each source
    token (the prompt's tokens of a causal model, the encoder's of an encoder-decoder). One
    forward and one backward pass per example; the model's parameters get no gradients."""
    was = model.training
    model.eval()
    embed = causal_lm(model).get_input_embeddings()
    device = next(model.parameters()).device
    out = []
    with torch.enable_grad():
        for ex in examples:
            batch = {k: v.to(device) for k, v in collate([ex], pad_id).items()}
            emb = embed(batch["input_ids"]).detach().requires_grad_(True)  # (1, T, H)
            logp = _target_logp(model, batch, emb)
            (grad,) = torch.autograd.grad(logp, emb)
            score = (grad * emb).sum(-1).abs()[0].float().detach()  # (T,)
            n = len(ex.input_ids) if ex.seq2seq else sum(1 for t in ex.labels if t == IGNORE)
            score = score[:n]
            total = float(score.sum())
            out.append((score / total if total > 0 else score).detach().cpu().numpy())
    model.train(was)
    return out


def _target_logp(model, batch: dict, emb: torch.Tensor) -> torch.Tensor:
    """Σ log p of the target tokens, the source given as embeddings."""
    labels = batch["labels"]
    if is_seq2seq(model):
        logits = model(
            inputs_embeds=emb,
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_inputs(causal_lm(model), labels),
            use_cache=False,
        ).logits
    else:
        logits = model(inputs_embeds=emb, attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = labels[:, 1:]
    mask = labels != IGNORE
    logp = torch.log_softmax(logits[mask].float(), dim=-1)
    return logp.gather(1, labels[mask][:, None]).sum()
