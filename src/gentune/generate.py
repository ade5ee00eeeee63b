"""Batched generation: token ids in, text out. No printing, no files.

The CLI, the evaluator, the exporter's check and the server all call `generate` (or `stream`,
its one-prompt streaming twin, which yields the same text piece by piece).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .config import Decoding


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int  # tokens generated (EOS included)
    finished: bool  # True when the model stopped by itself (EOS or a stop string)


def eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def generation_config(model, tokenizer, decoding: Decoding):
    """The transformers GenerationConfig for our decoding settings (nothing inherited from the
    model's own generation_config, so a checkpoint's sampling defaults never leak in)."""
    from transformers import GenerationConfig

    stop = eos_ids(model, tokenizer)
    sample = decoding.do_sample
    return GenerationConfig(
        max_new_tokens=decoding.max_new_tokens, do_sample=sample,
        temperature=decoding.temperature if sample else None,
        top_p=decoding.top_p if sample else None,
        top_k=decoding.top_k if sample else None,
        min_p=decoding.min_p if sample and decoding.min_p else None,
        num_beams=decoding.num_beams, length_penalty=decoding.length_penalty,
        repetition_penalty=decoding.repetition_penalty,
        no_repeat_ngram_size=decoding.no_repeat_ngram_size or None,
        num_return_sequences=decoding.num_return_sequences,
        stop_strings=list(decoding.stop) or None,
        eos_token_id=stop, pad_token_id=_pad(tokenizer, stop),
        bos_token_id=tokenizer.bos_token_id,
    )


def _pad(tokenizer, stop: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]


def _finish(new: list[int], tokenizer, stop: list[int], decoding: Decoding) -> Generation:
    """Cut at the first EOS and at the first stop string; decode."""
    finished = False
    for k, t in enumerate(new):
        if t in stop:
            new, finished = new[: k + 1], True
            break
    text = tokenizer.decode([t for t in new if t not in stop], skip_special_tokens=True)
    cuts = [text.find(s) for s in decoding.stop if s and text.find(s) >= 0]
    if cuts:
        text, finished = text[: min(cuts)], True
    return Generation(text=text.strip(), new_tokens=len(new), finished=finished)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], decoding: Decoding = Decoding(), *,
             batch_size: int = 8, progress: Callable[[int], None] | None = None
             ) -> list[Generation]:
    """Generate for each prompt (token ids). Returns len(prompts) × num_return_sequences
    generations, grouped by prompt, in the prompts' order.

    Prompts are sorted by length and left-padded per batch, so little compute goes to padding;
    the KV cache is used. `progress`, if given, is called with the prompts done per batch.
    """
    config = generation_config(model, tokenizer, decoding)
    stop = eos_ids(model, tokenizer)
    pad = _pad(tokenizer, stop)
    device = next(model.parameters()).device
    n = decoding.num_return_sequences
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[Generation] | None] = [None] * len(prompts)
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
                             generation_config=config,
                             tokenizer=tokenizer if decoding.stop else None)
        for row, i in enumerate(idx):
            results[i] = [_finish(out[row * n + k, width:].tolist(), tokenizer, stop, decoding)
                          for k in range(n)]
        if progress is not None:
            progress(len(idx))
    return [g for group in results for g in group]  # type: ignore[union-attr]


def stream(model, tokenizer, prompt: list[int], decoding: Decoding = Decoding()
           ) -> Iterator[str]:
    """Yield the text of one generation piece by piece as it is produced (greedy output equals
    `generate`'s). Runs the generation in a background thread."""
    import threading

    from transformers import TextIteratorStreamer

    if decoding.num_beams > 1 or decoding.num_return_sequences > 1:
        yield generate(model, tokenizer, [prompt], decoding, batch_size=1)[0].text
        return
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    config = generation_config(model, tokenizer, decoding)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)

    def run():
        with torch.no_grad():
            if decoding.do_sample:
                torch.manual_seed(decoding.seed)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           generation_config=config, streamer=streamer,
                           tokenizer=tokenizer if decoding.stop else None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        cut = min((text.find(s) for s in decoding.stop if s and s in text), default=-1)
        if cut >= 0:  # a stop string: emit what precedes it, then end
            yield piece[: max(0, len(piece) - (len(text) - cut))]
            break
        yield piece
    thread.join()
