"""Batched generation: greedy the same at any batch size and as plain model.generate, the
shared-prefix cache, streaming, decoding options."""

import pytest
import torch

from gentune.config import ConfigError, Decoding
from gentune.data.encode import encode_prompt
from gentune.data.records import Record
from gentune.data.tasks import build_template, get_task
from gentune.inference.generate import eos_ids, generate, shared_prefix, stream
from gentune.inference.load import load_for_inference

PROMPTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "A language model",
    "Guten Morgen!",
    "title paper abstract about tokens",
    "0123",
    "system user assistant roles and more words here to be long",
    "The lazy dog",
    "Summarize",
    "river bank",
]


def _prompts(path, task="summarization"):
    loaded = load_for_inference(path)
    tpl = build_template(get_task(task), loaded.tokenizer)
    ids = [
        encode_prompt(Record(source="p", row=i, input=p), tpl, loaded.tokenizer, max_length=200)[0]
        for i, p in enumerate(PROMPTS)
    ]
    return loaded, tpl, ids


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_greedy_is_identical_at_batch_size_1_and_8(request, fixture):
    loaded, _, ids = _prompts(request.getfixturevalue(fixture))
    d = Decoding(max_new_tokens=12)
    one = generate(loaded.model, loaded.tokenizer, ids, d, batch_size=1)
    eight = generate(loaded.model, loaded.tokenizer, ids, d, batch_size=8)
    assert [g.text for g in one] == [g.text for g in eight]
    assert [g.new_tokens for g in one] == [g.new_tokens for g in eight]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_shared_prefix_cache_gives_the_same_greedy_text_as_plain_generate(request, fixture):
    """The prefix computed once ([prefix][padding][own tokens] over its cache) against the
    usual one-prompt-at-a-time `model.generate` without padding or shared cache."""
    loaded, _, ids = _prompts(request.getfixturevalue(fixture))
    model, tok = loaded.model, loaded.tokenizer
    assert shared_prefix(ids) >= 4  # the template's head is common to all prompts
    d = Decoding(max_new_tokens=12)
    stop = eos_ids(model, tok)
    plain = []
    for p in ids:
        x = torch.tensor([p], device=model.device)
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=stop,
            pad_token_id=stop[0],
        )
        plain.append(out[0, len(p) :].tolist())
    for bs in (1, 3, 8):
        shared = generate(model, tok, ids, d, batch_size=bs, share_prefix=True)
        for got, new in zip(shared, plain, strict=True):
            cut = next((k + 1 for k, t in enumerate(new) if t in stop), len(new))
            assert got.new_tokens == cut
            assert (
                got.text
                == tok.decode(
                    [t for t in new[:cut] if t not in stop], skip_special_tokens=True
                ).strip()
            )
    unshared = generate(model, tok, ids, d, batch_size=8, share_prefix=False)
    assert [g.text for g in unshared] == [g.text for g in shared]


def test_shared_prefix_length():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # every prompt keeps a token of its own
    assert shared_prefix([[7, 2], [1, 2]]) == 0
    assert shared_prefix([[5, 6, 7]]) == 2
    assert shared_prefix([]) == 0


def test_stream_gives_the_same_text_as_generate(tiny_llama):
    loaded, _, ids = _prompts(tiny_llama)
    d = Decoding(max_new_tokens=12)
    for prompt in ids[:3]:
        want = generate(loaded.model, loaded.tokenizer, [prompt], d)[0].text
        assert "".join(stream(loaded.model, loaded.tokenizer, prompt, d)) == want


def test_decoding_options(tiny_llama):
    loaded, _, ids = _prompts(tiny_llama)
    m, tok = loaded.model, loaded.tokenizer
    s1 = generate(
        m,
        tok,
        ids[:3],
        Decoding(
            max_new_tokens=8,
            do_sample=True,
            temperature=1.5,
            top_k=50,
            top_p=0.9,
            min_p=0.01,
            seed=3,
        ),
    )
    s2 = generate(
        m,
        tok,
        ids[:3],
        Decoding(
            max_new_tokens=8,
            do_sample=True,
            temperature=1.5,
            top_k=50,
            top_p=0.9,
            min_p=0.01,
            seed=3,
        ),
    )
    assert [g.text for g in s1] == [g.text for g in s2]  # seeded
    beams = generate(
        m,
        tok,
        ids[:2],
        Decoding(max_new_tokens=6, num_beams=3, num_return_sequences=3, length_penalty=0.5),
    )
    best = generate(m, tok, ids[:2], Decoding(max_new_tokens=6, num_beams=3, length_penalty=0.5))
    # grouped by prompt, best first: each prompt's first return is the one-return beam search
    assert [beams[0].text, beams[3].text] == [g.text for g in best]
    rep = generate(
        m, tok, ids[:2], Decoding(max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2)
    )
    plain = generate(m, tok, ids[:2], Decoding(max_new_tokens=10))
    assert [g.text for g in rep] != [g.text for g in plain]  # the penalties change the output
    with pytest.raises(ConfigError, match="num_return_sequences"):
        Decoding(num_return_sequences=2)


def test_stop_strings_cut_the_text(loaded):
    """On the tiny trained run (it answers "Fox jumps dog."): generation ends before a stop
    string, which is not part of the text, and counts as finished."""
    from gentune.data.encode import encode_prompt
    from gentune.data.tasks import prompt_record

    from .conftest import PAIRS

    tpl = loaded.template
    ids, _, _ = encode_prompt(
        prompt_record(tpl, PAIRS[0]["input"]), tpl, loaded.tokenizer, max_length=200
    )
    full = generate(loaded.model, loaded.tokenizer, [ids], Decoding(max_new_tokens=12))[0]
    assert full.text == "Fox jumps dog."
    cut = generate(
        loaded.model, loaded.tokenizer, [ids], Decoding(max_new_tokens=12, stop=("jumps",))
    )[0]
    assert cut.text == "Fox" and cut.finished
