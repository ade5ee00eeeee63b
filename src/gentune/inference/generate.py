"""Batched generation: token ids in, text out. No printing, no files.

The CLI, the evaluator, the exporter's check and the server all call `generate` (or `stream`,
its one-prompt streaming twin, which yields the same text piece by piece).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from gentune.config import Decoding
from gentune.data.encode import encode_prompt
from gentune.data.records import Record
from gentune.data.tasks import PromptTemplate, get_task
from gentune.models.families import causal_lm, forced_bos, is_seq2seq
from gentune.models.load import context_length
from gentune.tokenizer import source_pad_id


def default_decoding(template: PromptTemplate, **overrides) -> Decoding:
    """The defaults for a template — greedy or sampling by task, new tokens capped from the
    run's training targets (`PromptTemplate.new_tokens_cap`) — then `overrides` not None."""
    from dataclasses import replace

    task = get_task(template.task)
    cap, _ = template.new_tokens_cap()
    base = Decoding(max_new_tokens=cap, do_sample=task.do_sample)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int  # tokens generated (EOS included)
    finished: bool  # True when the model stopped by itself (EOS or a stop string)
    tokens: tuple[int, ...] = ()  # the new token ids (EOS included), as generated


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a generation: the tokenizer's EOS and the model's generation
    EOS ids."""
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
        max_new_tokens=decoding.max_new_tokens,
        do_sample=sample,
        temperature=decoding.temperature if sample else None,
        top_p=decoding.top_p if sample else None,
        top_k=decoding.top_k if sample else None,
        min_p=decoding.min_p if sample and decoding.min_p else None,
        num_beams=decoding.num_beams,
        length_penalty=decoding.length_penalty,
        repetition_penalty=decoding.repetition_penalty,
        no_repeat_ngram_size=decoding.no_repeat_ngram_size or None,
        num_return_sequences=decoding.num_return_sequences,
        stop_strings=list(decoding.stop) or None,
        eos_token_id=stop,
        pad_token_id=_pad(tokenizer, stop),
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=_decoder_start(model),
        forced_bos_token_id=forced_bos(tokenizer) if is_seq2seq(model) else None,
    )


def _decoder_start(model) -> int | None:
    """The token an encoder-decoder's output starts from (None for a decoder-only model)."""
    if not is_seq2seq(model):
        return None
    gen = getattr(model, "generation_config", None)
    start = getattr(gen, "decoder_start_token_id", None)
    return start if start is not None else causal_lm(model).config.decoder_start_token_id


def _pad(tokenizer, stop: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]


def _finish(
    new: list[int], tokenizer, stop: list[int], decoding: Decoding, *, cut: int | None = None
) -> Generation:
    """Cut at the first EOS and at the first stop string (and at `cut` tokens, where the
    generation was stopped from outside); decode."""
    finished = False
    if cut is not None:
        new = new[:cut]
    for k, t in enumerate(new):
        if t in stop:
            new, finished = new[: k + 1], True
            break
    text = tokenizer.decode([t for t in new if t not in stop], skip_special_tokens=True)
    cuts = [text.find(s) for s in decoding.stop if s and text.find(s) >= 0]
    if cuts:
        text, finished = text[: min(cuts)], True
    return Generation(text.strip(), new_tokens=len(new), finished=finished, tokens=tuple(new))


def encode_prompts(
    records: list[Record],
    template: PromptTemplate,
    tokenizer,
    model,
    max_new_tokens: int,
    *,
    context: int | None = None,
) -> list[tuple[list[int], str, bool]]:
    """Each record's generation prompt (ids, text, whether the input was shortened) by
    inference's one rule, `template.prompt_limit`: an input is shortened as training
    shortened it, within the model's context less `max_new_tokens`. The server gives a
    `context` of its own (no limit: a prompt too long for the model is the request's 400)."""
    room = template.prompt_limit(context or context_length(model), max_new_tokens)
    return [encode_prompt(r, template, tokenizer, max_length=room) for r in records]


def greedy_texts(model, tokenizer, template: PromptTemplate, records, batch_size: int) -> list[str]:
    """Greedy outputs for records with the run's own prompt and decoding (validation's)."""
    decoding = default_decoding(template, do_sample=False)
    encoded = encode_prompts(records, template, tokenizer, model, decoding.max_new_tokens)
    prompts = [ids for ids, _, _ in encoded]
    return [g.text for g in generate(model, tokenizer, prompts, decoding, batch_size=batch_size)]


def shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving every prompt at least one token of
    its own (the chat template's system turn and the task instruction, typically)."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _can_share_prefix(model, decoding: Decoding) -> bool:
    """Prefix sharing feeds a batch as [prefix][padding][own tokens] over a precomputed cache;
    positions come from the attention mask, so that equals each prompt unpadded. Not for beams
    or several sequences per prompt (the cache would need expanding) nor sliding-window models
    (the padding in the middle would count against the window)."""
    cfg = getattr(model, "config", None)
    return (
        decoding.num_beams == 1
        and decoding.num_return_sequences == 1
        and not getattr(cfg, "sliding_window", None)
        and not getattr(cfg, "is_encoder_decoder", False)
    )


def _cache_kwarg(model) -> str:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    params = inspect.signature(base.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def _prefix_cache(model, prefix: list[int], device) -> tuple[int, Any]:
    """(prefix length, its KV cache) for a shared prefix of at least 4 tokens, else (0, None)."""
    if len(prefix) < 4:
        return 0, None
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    return len(prefix), out["cache"] if "cache" in out else out["past_key_values"]


def _padded(prompts: list[list[int]], shared: int, pad: int, *, left: bool):
    """(ids, attention mask) of a batch, (B, T): the shared prefix first, then each prompt's own
    tokens; the padding between them (left) or last (an encoder's positions count from its
    first token)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    ids[:, :shared] = torch.tensor(prompts[0][:shared], dtype=torch.long)
    mask[:, :shared] = 1
    for row, prompt in enumerate(prompts):
        own = prompt[shared:]
        at = width - len(own) if left else 0
        ids[row, at : at + len(own)] = torch.tensor(own, dtype=torch.long)
        mask[row, at : at + len(own)] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    decoding: Decoding = Decoding(),
    *,
    batch_size: int = 8,
    share_prefix: bool = True,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> list[Generation]:
    """Generate for each prompt (token ids). Returns len(prompts) × num_return_sequences
    generations, grouped by prompt, in the prompts' order.

    Prompts are sorted by length and left-padded per batch, so little compute goes to padding;
    the KV cache is used. The prefix all prompts share (system turn, instruction) is computed
    once and its cache reused by every batch (`share_prefix`). `progress`, if given, is called
    with the prompts done per batch. `should_stop(i)`, checked after every token, ends prompt
    i's generation early (a server's deadline or a client gone); its text is what was made.
    """
    import copy

    config = generation_config(model, tokenizer, decoding)
    stop = eos_ids(model, tokenizer)
    seq2seq = is_seq2seq(model)
    pad = source_pad_id(tokenizer) if seq2seq else _pad(tokenizer, stop)  # pads the inputs
    device = next(model.parameters()).device
    n = decoding.num_return_sequences
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[Generation] | None] = [None] * len(prompts)
    shared = shared_prefix(prompts) if share_prefix and _can_share_prefix(model, decoding) else 0
    shared, prefix_cache = _prefix_cache(model, prompts[0][:shared], device)
    if decoding.do_sample:
        torch.manual_seed(decoding.seed)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _padded([prompts[i] for i in idx], shared, pad, left=not seq2seq)
        width = ids.shape[1]
        extra = {}
        cut: dict[int, int] = {}  # row -> new tokens made when should_stop turned true
        # where the new tokens start: after the prompt, or (encoder-decoder) the decoder's start
        start = 1 if seq2seq else width
        if should_stop is not None:
            extra["stopping_criteria"] = _criteria(partial(_flags, should_stop, idx), cut, start)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(idx))
            extra[_cache_kwarg(model)] = cache
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            tokenizer=tokenizer if decoding.stop else None,
            **extra,
        )
        for row, i in enumerate(idx):
            results[i] = [
                _finish(
                    out[row * n + k, start:].tolist(), tokenizer, stop, decoding, cut=cut.get(row)
                )
                for k in range(n)
            ]
        if progress is not None:
            progress(len(idx))
    return [g for group in results for g in group]  # type: ignore[union-attr]


def _flags(should_stop: Callable[[int], bool], rows: list[int]) -> list[bool]:
    return [should_stop(i) for i in rows]


def _criteria(flags: Callable[[], list[bool]], cut: dict[int, int] | None = None, width: int = 0):
    """A stopping criterion from per-prompt flags (expanded over beams / return sequences).
    `cut` records, per prompt row, how many new tokens there were when its flag turned true
    (what follows is padding, not the model's)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Flags(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            values = flags()
            if cut is not None:
                for row, flag in enumerate(values):
                    if flag:
                        cut.setdefault(row, input_ids.shape[1] - width)
            f = torch.tensor(values, dtype=torch.bool, device=input_ids.device)
            return f.repeat_interleave(input_ids.shape[0] // len(f))

    return StoppingCriteriaList([Flags()])


def _visible(streamer, stops: list[str], closed) -> Iterator[str]:
    """The streamer's pieces as generate() would show the text: leading whitespace dropped,
    trailing whitespace held back until more follows, cut before a stop string (then `closed`
    is set, which ends the generation)."""
    text, sent = "", 0  # the text so far, and how much of it was yielded
    for piece in streamer:
        text += piece
        if not sent:
            text = text.lstrip()
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:  # a stop string: emit what precedes it, then end
            end = len(text[:cut].rstrip())
            if end > sent:
                yield text[sent:end]
            sent = len(text)
            closed.set()
            break
        # hold back an ending that may grow into a stop string, and whitespace before it
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        end = max(sent, len(text[: len(text) - hold].rstrip()))
        yield text[sent:end]  # possibly "": one piece per token, so a consumer can leave
        sent = end
    rest = text[sent:].rstrip()
    if rest:  # the generation ended: what was held back (bar whitespace) is plain text
        yield rest


def stream(
    model,
    tokenizer,
    prompt: list[int],
    decoding: Decoding = Decoding(),
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[str, None, Generation | None]:
    """Yield the text of one generation piece by piece as it is produced (greedy output equals
    `generate`'s). Runs the generation in a background thread, which ends early when
    `should_stop()` turns true or when the caller closes the iterator. The iterator's return
    value (StopIteration.value) is the whole `Generation`. The pieces join to exactly
    `generate`'s text (stripped, cut before a stop string); a piece may be empty (the streamer
    holds back a word until it is complete; trailing whitespace and an ending that may grow
    into a stop string wait here)."""
    import threading

    from transformers import TextIteratorStreamer

    if decoding.num_beams > 1 or decoding.num_return_sequences > 1:
        stop_one = (lambda i: should_stop()) if should_stop else None
        gen = generate(model, tokenizer, [prompt], decoding, batch_size=1, should_stop=stop_one)[0]
        yield gen.text
        return gen
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    config = generation_config(model, tokenizer, decoding)
    stop = eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    closed = threading.Event()
    done: list = []

    def run():
        try:
            with torch.no_grad():
                if decoding.do_sample:
                    torch.manual_seed(decoding.seed)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    generation_config=config,
                    streamer=streamer,
                    tokenizer=tokenizer if decoding.stop else None,
                    stopping_criteria=_criteria(
                        lambda: [closed.is_set() or bool(should_stop and should_stop())]
                    ),
                )
            start = 1 if is_seq2seq(model) else len(prompt)  # (an encoder-decoder's start token)
            done.append(_finish(out[0, start:].tolist(), tokenizer, stop, decoding))
        except BaseException as e:  # re-raised in the caller's thread
            done.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from _visible(streamer, [s for s in decoding.stop if s], closed)
    finally:
        closed.set()  # the caller left early (or we are done): stop the generation thread
        thread.join()
    if done and isinstance(done[0], BaseException):
        raise done[0]
    return done[0] if done else None
