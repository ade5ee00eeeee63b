"""The loss over target tokens: Σ nll and the count, for causal and encoder-decoder models
alike; corpus perplexity's sums."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from gentune.data.encode import collate
from gentune.models.families import causal_lm, family, is_seq2seq, is_sharded


def decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """The decoder's inputs for labels by the model's own rule: its method where it has one
    (T5, BART, EncoderDecoderModel); else, as M2M100/NLLB's forward does with labels, the
    labels shifted right behind the decoder start token, IGNORE read as padding."""
    if hasattr(model, "prepare_decoder_input_ids_from_labels"):
        return model.prepare_decoder_input_ids_from_labels(labels=labels)
    shifted = labels.new_empty(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = model.config.decoder_start_token_id
    return shifted.masked_fill(shifted == -100, model.config.pad_token_id)


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, V), labels (N,)) at a batch's target positions, rows in order (row-major):
    the prediction of each target token. An encoder-decoder reads the source and the target
    shifted right by the model's own rule; a causal model predicts token t at position t-1.

    Where the family allows, the vocabulary projection runs only at target positions, so long
    prompts cost no logits: hidden (B, T, H) → selected (N, H) → logits (N, V).
    """
    if is_seq2seq(model):
        labels = batch["labels"]
        mask = labels != -100
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_inputs(causal_lm(model), labels),
            use_cache=False,
        ).logits
        return logits[mask], labels[mask]
    labels = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
    mask = labels != -100
    lm = causal_lm(model)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),
        "position_ids": batch.get("position_ids"),  # packed rows: positions, no mask
        "use_cache": False,
    }  # (a cache would also switch off packed-sequence masking)
    if family(lm).selective_logits and not is_sharded(model):  # (FSDP gathers at the root)
        hidden = lm.base_model(**inputs).last_hidden_state  # (B, T, H)
        return lm.get_output_embeddings()(hidden[:, :-1][mask]), labels[mask]  # (N, V)
    return model(**inputs).logits[:, :-1][mask], labels[mask]


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(Σ negative log-likelihood over target tokens, number of target tokens) for a batch."""
    logits, labels = target_logits(model, batch)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    return nll, int(labels.numel())


@torch.no_grad()
def corpus_nll(
    model, examples, pad_id: int, batch_size: int, autocast=nullcontext
) -> tuple[float, int]:
    """(Σ nll, Σ target tokens) over examples, in length-sorted batches, in eval mode, each
    forward inside `autocast()` (training's validation: the training forward's precision).
    Perplexity is exp of their ratio — never a mean of per-batch means."""

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = np.argsort(examples.lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        batch = collate(examples.take(order[i : i + batch_size]), pad_id)
        with autocast():  # (a context per batch: its cast weights are freed after each)
            nll, n = token_nll(model, {k: v.to(device) for k, v in batch.items()})
        total += float(nll)
        count += n
    model.train(was_training)
    return total, count


class TargetLoss(torch.nn.Module):
    """Wraps the model so that the distributed wrapper's forward computes Σ nll over targets
    (the vocabulary projection runs at target positions only)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return token_nll(self.model, batch)
