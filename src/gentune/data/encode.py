"""Tokenization, label masking, truncation and batching.

The rules (the traps this module exists to avoid):
- labels are -100 on every context token; only target tokens carry loss;
- every target ends with the EOS *id*, appended explicitly and trained, so a tokenizer whose
  pad token equals EOS still learns to stop (labels never come from comparing ids with pad);
- too long: the input is shortened, never the target; a row whose target alone cannot fit is
  reported by file and row, never dropped silently; counts go into a report.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from gentune.data.records import DataError, Record
from gentune.data.tasks import PromptTemplate, Segment

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]  # the whole row; an encoder-decoder's source
    labels: list[int]  # IGNORE on context tokens; an encoder-decoder's target tokens
    where: str  # "file:row", for messages
    lengths: tuple[int, ...] | None = None  # packed rows: the lengths of the examples in it
    seq2seq: bool = False  # labels are the decoder's sequence, not aligned with input_ids

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    @property
    def size(self) -> int:
        """Tokens the model reads: the row, or source and target together."""
        return len(self.input_ids) + (len(self.labels) if self.seq2seq else 0)

    @property
    def prompted(self) -> bool:
        """Whether a context comes before the target (its first label is masked; always for an
        encoder-decoder, whose context is the source)."""
        return self.seq2seq or (bool(self.labels) and self.labels[0] == IGNORE)


class Examples(Sequence[Example]):
    """Encoded examples with their sizes at hand, so that batches are planned without reading
    the rows: in memory (`ExampleList`), in the memory-mapped data cache
    (`cache.CachedExamples`), or packed from either (`PackedExamples`)."""

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per example (`Example.size`)."""
        return np.array([e.size for e in self], dtype=np.int64)

    @cached_property
    def n_targets(self) -> np.ndarray:
        """Trained tokens per example."""
        return np.array([e.n_targets for e in self], dtype=np.int64)

    @cached_property
    def prompted(self) -> np.ndarray:
        """Whether each example starts with a context (its first label is masked)."""
        return np.array([e.prompted for e in self], dtype=bool)

    def take(self, indices) -> list[Example]:
        """The examples at `indices`, in that order."""
        return [self[int(i)] for i in indices]


class ExampleList(Examples):
    """Examples held in memory."""

    def __init__(self, items=()):
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


@dataclass
class EncodeReport:
    """What encoding did to the rows: nothing here is silent."""

    rows: int = 0
    examples: int = 0
    truncated_rows: int = 0  # rows whose input was shortened to fit
    truncated_tokens: int = 0  # input tokens removed in all
    split_rows: int = 0  # text rows split into several windows
    too_long: list[str] = field(default_factory=list)  # rows whose target cannot fit
    skipped_too_long: int = 0

    def summary(self) -> str:
        parts = [
            f"{self.rows} rows -> {self.examples} examples",
            f"{self.truncated_rows} rows had their input shortened "
            f"({self.truncated_tokens} tokens removed; targets are never cut)",
        ]
        if self.split_rows:
            parts.append(f"{self.split_rows} long texts split into windows")
        if self.skipped_too_long:
            parts.append(
                f"{self.skipped_too_long} rows skipped: target longer than --max-length "
                f"({', '.join(self.too_long[:5])}{' ...' if len(self.too_long) > 5 else ''})"
            )
        return "; ".join(parts)


def _tokens(
    tokenizer, segments: list[Segment], eos_id: int, eos: str
) -> tuple[list[int], list[int]]:
    """Tokenize segments one by one; the same code builds training rows and prompts."""
    ids: list[int] = []
    labels: list[int] = []
    for i, seg in enumerate(segments):
        text = seg.text
        if seg.trained and text.endswith(eos):
            text = text[: -len(eos)]
        piece = tokenizer(text, add_special_tokens=(i == 0))["input_ids"] if text else []
        if i == 0 and not text and getattr(tokenizer, "bos_token_id", None) is not None:
            piece = tokenizer("", add_special_tokens=True)["input_ids"]
        if seg.trained:
            piece = list(piece) + [eos_id]
            labels.extend(piece)
        else:
            labels.extend([IGNORE] * len(piece))
        ids.extend(piece)
    return ids, labels


def _render(method, record: Record, tokenizer) -> list[Segment]:
    """The template's segments for a record; a template that cannot render it (a chat template
    that raises, say) names the row."""
    try:
        return method(record, tokenizer)
    except DataError as e:
        if str(e).startswith(record.where):
            raise
        raise DataError(f"{record.where}: {e}") from None
    except Exception as e:  # noqa: BLE001 — jinja2 errors of the model's own chat template
        if type(e).__module__.split(".")[0] != "jinja2":
            raise
        raise DataError(
            f"{record.where}: the model's chat template refuses this conversation: "
            f"{e} (use --skip-invalid to drop such rows, or --template plain)"
        ) from None


def _shorten(record: Record, n_tokens: int, tokenizer) -> Record | None:
    """The record with its input shortened by about n_tokens (from the end); None if impossible."""
    from dataclasses import replace

    if record.input is not None and record.text is None:
        toks = tokenizer(record.input, add_special_tokens=False)["input_ids"]
        keep = len(toks) - n_tokens
        if keep <= 0:
            return None
        return replace(record, input=tokenizer.decode(toks[:keep]))
    if record.messages is not None:
        msgs = list(record.messages)
        # drop the oldest non-system turn pair; keep the system message and the last turns
        first = 1 if msgs[0]["role"] == "system" else 0
        last_user = max(i for i, m in enumerate(msgs) if m["role"] != "assistant")
        if first >= last_user:  # a single user turn left: shorten its text
            m = msgs[last_user]
            toks = tokenizer(m["content"], add_special_tokens=False)["input_ids"]
            keep = len(toks) - n_tokens
            if keep <= 0:
                return None
            msgs[last_user] = {**m, "content": tokenizer.decode(toks[:keep])}
        else:
            del msgs[first : first + 2 if msgs[first + 1]["role"] == "assistant" else first + 1]
        return replace(record, messages=tuple(msgs))
    return None


def encode_example(
    record: Record,
    template: PromptTemplate,
    tokenizer,
    *,
    max_length: int,
    report: EncodeReport | None = None,
) -> list[Example]:
    """One record → one example (or several windows for a long plain text).

    Raises DataError naming the row when the target alone cannot fit in max_length.
    """
    report = report if report is not None else EncodeReport()
    eos_id = tokenizer.convert_tokens_to_ids(template.eos_token)
    report.rows += 1
    if template.style == "seq2seq":
        return [_encode_seq2seq(record, template, tokenizer, max_length, eos_id, report)]
    if record.text is not None:  # free text: long texts become consecutive windows
        ids, labels = _tokens(
            tokenizer, _render(template.segments, record, tokenizer), eos_id, template.eos_token
        )
        if len(ids) <= max_length:
            out = [Example(ids, labels, record.where)]
        else:
            report.split_rows += 1
            out = [
                Example(ids[i : i + max_length], labels[i : i + max_length], record.where)
                for i in range(0, len(ids), max_length)
            ]
            out = [e for e in out if e.n_targets > 1] or out[:1]
        report.examples += len(out)
        return out
    current = record
    for _ in range(8):  # shortening re-tokenizes, so converge in a few rounds
        segs = _render(template.segments, current, tokenizer)
        while segs and not segs[-1].trained:  # trailing context carries no loss
            segs.pop()
        ids, labels = _tokens(tokenizer, segs, eos_id, template.eos_token)
        excess = len(ids) - max_length
        if excess <= 0:
            break
        shorter = _shorten(current, excess + 2, tokenizer)
        if shorter is None:
            n_target = sum(1 for t in labels if t != IGNORE)
            report.too_long.append(record.where)
            raise DataError(
                f"{record.where}: the target needs {n_target} tokens and does not fit in "
                f"--max-length {max_length} with its prompt; raise --max-length or pass "
                "--skip-long-targets to drop such rows (they are counted and listed)"
            )
        current = shorter
    else:
        raise DataError(
            f"{record.where}: could not shorten the input to fit --max-length "
            f"{max_length}; raise --max-length"
        )
    if current is not record:
        report.truncated_rows += 1
        report.truncated_tokens += _count(tokenizer, record) - _count(tokenizer, current)
    example = Example(ids, labels, record.where)
    assert example.n_targets > 0, "every example carries at least its EOS as target"
    report.examples += 1
    return [example]


def _source_ids(record: Record, template: PromptTemplate, tokenizer, max_length: int):
    """(an encoder-decoder's source ids, within max_length with the tokenizer's own special
    tokens kept, and the tokens cut from its end)."""
    text = _render(template.prompt_segments, record, tokenizer)[0].text
    full = tokenizer(text)["input_ids"]
    if len(full) <= max_length:
        return full, 0
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    return ids, len(full) - len(ids)


def _encode_seq2seq(
    record: Record, template: PromptTemplate, tokenizer, max_length: int, eos_id: int, report
) -> Example:
    """Source → encoder (shortened to max_length), target → decoder labels as the tokenizer
    makes targets (a multilingual one puts the target language's code first), ending with
    EOS; the decoder's inputs are these shifted by the model's own rule."""
    ids, cut = _source_ids(record, template, tokenizer, max_length)
    target = template.reference(record) or ""
    labels = list(tokenizer(text_target=target)["input_ids"])
    if not labels or labels[-1] != eos_id:
        labels.append(eos_id)
    if len(labels) > max_length:
        report.too_long.append(record.where)
        raise DataError(
            f"{record.where}: the target needs {len(labels)} tokens, more than the decoder's "
            f"--max-length {max_length}; raise --max-length or pass --skip-long-targets to "
            "drop such rows (they are counted and listed)"
        )
    if cut:
        report.truncated_rows += 1
        report.truncated_tokens += cut
    report.examples += 1
    return Example(ids, labels, record.where, seq2seq=True)


def _count(tokenizer, record: Record) -> int:
    if record.input is not None:
        return len(tokenizer(record.input, add_special_tokens=False)["input_ids"])
    return sum(
        len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
        for m in record.messages or ()
    )


def encode_dataset(
    records: list[Record],
    template: PromptTemplate,
    tokenizer,
    *,
    max_length: int,
    skip_long_targets: bool = False,
) -> tuple[ExampleList, EncodeReport]:
    """Encode every record; long targets raise unless skip_long_targets (then counted)."""
    report = EncodeReport()
    examples: list[Example] = []
    problems: list[str] = []
    for rec in records:
        try:
            examples.extend(
                encode_example(rec, template, tokenizer, max_length=max_length, report=report)
            )
        except DataError:
            if rec.where not in report.too_long:
                raise
            if skip_long_targets:
                report.skipped_too_long += 1
            else:
                problems.append(rec.where)
    if problems:
        raise too_long_error(problems, max_length)
    return ExampleList(examples), report


def too_long_error(rows: list[str], max_length: int) -> DataError:
    """The error for rows whose target does not fit, naming them (the first ten)."""
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return DataError(
        f"{len(rows)} rows have targets that do not fit in --max-length {max_length} "
        f"with their prompt: {', '.join(rows[:10])}{more}; raise --max-length or pass "
        "--skip-long-targets to drop them (they are counted and listed)"
    )


def encode_prompt(
    record: Record, template: PromptTemplate, tokenizer, *, max_length: int
) -> tuple[list[int], str, bool]:
    """Token ids of the generation prompt, its text, and whether the input was shortened.

    Uses the same segment tokenization as training, so the ids are those trained on.
    """
    if template.style == "seq2seq":
        ids, cut = _source_ids(record, template, tokenizer, max_length)
        return ids, _render(template.prompt_segments, record, tokenizer)[0].text, bool(cut)
    eos_id = tokenizer.convert_tokens_to_ids(template.eos_token)
    current, shortened = record, False
    for _ in range(8):
        segs = _render(template.prompt_segments, current, tokenizer)
        ids, _ = _tokens(tokenizer, segs, eos_id, template.eos_token)
        if len(ids) <= max_length:
            return ids, "".join(s.text for s in segs), shortened
        nxt = _shorten(current, len(ids) - max_length + 2, tokenizer)
        if nxt is None:
            break
        current, shortened = nxt, True
    raise DataError(
        f"{record.where}: the prompt does not fit in the model's context "
        f"({max_length} tokens left for it); shorten the input or lower "
        "--max-new-tokens"
    )


def with_length_limit(
    template: PromptTemplate, max_length: int, examples: Examples
) -> PromptTemplate:
    """The template carrying training's lengths, so inference follows them: max_length and the
    median target length shorten inputs by the same rule (`PromptTemplate.prompt_limit`), the
    99th percentile of the target lengths caps new tokens (`PromptTemplate.new_tokens_cap`).
    Targets are those of examples that have a prompt (free text has none)."""
    import math
    from dataclasses import replace

    targets = sorted(examples.n_targets[examples.prompted].tolist())
    return replace(
        template,
        max_length=max_length,
        target_tokens=targets[len(targets) // 2] if targets else None,
        target_p99=targets[math.ceil(0.99 * len(targets)) - 1] if targets else None,
    )


# ---- batching ------------------------------------------------------------------------------
def length_grouped_batches(
    examples: Examples,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group: bool = True,
) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), in a seeded order; only
    the lengths are read, the rows when a batch is collated. group=False: random batches (a
    model trained from scratch can settle on ignoring its input when every batch holds rows of
    one length: a tiny BART learning to reverse digits does)."""
    lengths = examples.lengths.tolist()
    idx = list(range(len(lengths)))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(idx)
    mega = batch_size * 16  # sort within windows so the order stays random across them
    batches = []
    for i in range(0, len(idx), mega):
        window = idx[i : i + mega]
        if group:
            window = sorted(window, key=lambda j: -lengths[j])
        batches += [window[k : k + batch_size] for k in range(0, len(window), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids (B, T), attention_mask (B, T), labels (B, T); for an
    encoder-decoder labels (B, T') padded with IGNORE on their own."""
    if examples[0].seq2seq:
        batch = collate([Example(e.input_ids, e.input_ids, e.where) for e in examples], pad_id)
        width = max(len(e.labels) for e in examples)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
        return {**batch, "labels": labels}
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_examples(examples: Examples, max_length: int) -> PackedExamples:
    """Pack examples into rows of at most max_length tokens (first-fit decreasing), planned
    from the lengths; a packed row is built when it is read.

    Each example keeps its own positions (restarting at 0) and attends only to itself; the
    first label of every example is masked so no example is predicted from its neighbour.
    """
    lengths = examples.lengths.tolist()
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    return PackedExamples(examples, bins)


class PackedExamples(Examples):
    """Rows of several examples each (`pack_examples`), built from their members on access."""

    def __init__(self, examples: Examples, bins: list[list[int]]):
        self.examples, self.bins = examples, bins
        lengths, targets = examples.lengths, examples.n_targets - ~examples.prompted
        self.lengths = np.array([lengths[b].sum() for b in bins], dtype=np.int64)
        self.n_targets = np.array([targets[b].sum() for b in bins], dtype=np.int64)
        self.prompted = np.ones(len(bins), dtype=bool)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i):  # type: ignore[override]
        members = self.examples.take(self.bins[i])
        ids: list[int] = []
        labels: list[int] = []
        for ex in members:
            ids += ex.input_ids
            labels += [IGNORE] + ex.labels[1:]  # (the first label is never predicted anyway)
        return Example(
            ids,
            labels,
            ",".join(ex.where for ex in members),
            tuple(len(ex.input_ids) for ex in members),
        )


def collate_packed(rows: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows: input_ids (B, T), labels (B, T), position_ids (B, T) restarting at every
    example (and at the padding), no attention_mask: transformers builds the block-diagonal
    causal mask from the position restarts, so packed examples cannot attend to each other."""
    batch = collate(rows, pad_id)
    del batch["attention_mask"]  # positions carry the example boundaries instead
    width = batch["input_ids"].shape[1]
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        positions[i, :n] = torch.cat([torch.arange(length) for length in (r.lengths or (n,))])
        positions[i, n:] = torch.arange(width - n)  # padding is a segment of its own
    batch["position_ids"] = positions
    return batch


def collate_for(packing: bool):
    """The collate function for packed or plain rows."""
    return collate_packed if packing else collate
