"""Batched generation: token ids in, text out. No printing, no files.

The CLI, the evaluator and (later) the server call `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Decoding


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int  # tokens generated, EOS included
    finished: bool  # True when the model emitted EOS (rather than hitting max_new_tokens)


def eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], decoding: Decoding = Decoding(), *,
             batch_size: int = 8, progress=None) -> list[Generation]:
    """Generate for each prompt (token ids); outputs come back in the prompts' order.

    Prompts are sorted by length and left-padded per batch, so little compute goes to padding.
    `progress`, if given, is called with the number of prompts finished after each batch.
    """
    from transformers import GenerationConfig

    stop = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = GenerationConfig(
        max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
        temperature=decoding.temperature if decoding.do_sample else None,
        top_p=decoding.top_p if decoding.do_sample else None,
        top_k=decoding.top_k if decoding.do_sample else None,
        num_beams=decoding.num_beams, repetition_penalty=decoding.repetition_penalty,
        eos_token_id=stop, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    if decoding.do_sample:
        torch.manual_seed(decoding.seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=config)
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            finished = False
            for k, t in enumerate(new):
                if t in stop:
                    new, finished = new[: k + 1], True
                    break
            text = tokenizer.decode([t for t in new if t not in stop], skip_special_tokens=True)
            results[i] = Generation(text=text.strip(), new_tokens=len(new), finished=finished)
        if progress is not None:
            progress(len(idx))
    return results  # type: ignore[return-value]
