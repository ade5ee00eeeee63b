"""Encoding: prompt masked, EOS trained, inputs shortened never targets, the template's round
trip, dialogue and free text."""

import pytest
from transformers import AutoTokenizer

from gentune.data.encode import IGNORE, encode_dataset, encode_example, encode_prompt
from gentune.data.records import DataError, Record
from gentune.data.tasks import PromptTemplate, build_template, get_task


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tok_template(request):
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, build_template(get_task("summarization"), tok)


def rec(i="The quick brown fox jumps over the lazy dog.", o="Fox jumps.", row=1):
    return Record(source="d.jsonl", row=row, input=i, output=o)


def test_prompt_masked_target_and_eos_trained(tok_template):
    tok, tpl = tok_template
    # The llama tokenizer has pad == eos: the EOS must still be trained.
    [ex] = encode_example(rec(), tpl, tok, max_length=200)
    prompt_ids, _, _ = encode_prompt(rec(), tpl, tok, max_length=200)
    n = len(prompt_ids)
    assert ex.labels[:n] == [IGNORE] * n
    assert ex.labels[n:] == ex.input_ids[n:]
    assert ex.input_ids[-1] == tok.eos_token_id and ex.labels[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[n:-1]).strip() == "Fox jumps."
    assert ex.labels.count(tok.eos_token_id) == 1


def test_template_round_trip_train_prompt_equals_generation_prompt(tok_template, tmp_path):
    tok, tpl = tok_template
    tpl.save(tmp_path / "template.json")
    loaded = PromptTemplate.load(tmp_path / "template.json")
    assert loaded == tpl
    for r in (rec(), rec("hello world", "Greeting.")):
        [ex] = encode_example(r, tpl, tok, max_length=200)
        ids, text, _ = encode_prompt(
            Record(source="p", row=1, input=r.input), loaded, tok, max_length=200
        )
        first_target = next(i for i, t in enumerate(ex.labels) if t != IGNORE)
        assert ex.input_ids[:first_target] == ids  # token for token
        assert tok.decode(ids, skip_special_tokens=False).endswith(text[-20:])
        train_text = "".join(s.text for s in tpl.segments(r, tok) if not s.trained)
        assert train_text.startswith(text)  # byte for byte


def test_long_input_is_shortened_never_the_target(tok_template):
    tok, tpl = tok_template
    long = rec(" ".join(["the quick brown fox"] * 100), "Fox jumps.")
    exs, report = encode_dataset([long, rec()], tpl, tok, max_length=60)
    assert report.truncated_rows == 1 and report.truncated_tokens > 0
    ex = exs[0]
    assert len(ex.input_ids) <= 60
    n = next(i for i, t in enumerate(ex.labels) if t != IGNORE)
    assert tok.decode(ex.input_ids[n:-1]).strip() == "Fox jumps."


def test_target_that_cannot_fit_is_reported_by_row(tok_template):
    tok, tpl = tok_template
    rows = [rec(row=1), rec(o=" ".join(["fox"] * 200), row=7)]
    with pytest.raises(DataError, match=r"d.jsonl:7"):
        encode_dataset(rows, tpl, tok, max_length=60)
    exs, report = encode_dataset(rows, tpl, tok, max_length=60, skip_long_targets=True)
    assert len(exs) == 1 and report.skipped_too_long == 1 and report.too_long == ["d.jsonl:7"]
    assert "1 rows skipped" in report.summary()


def test_dialogue_trains_every_assistant_turn(tiny_llama, tiny_gpt2):
    msgs = (
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "Good morning."},
        {"role": "user", "content": "The lazy dog?"},
        {"role": "assistant", "content": "Sleeps."},
    )
    for path in (tiny_llama, tiny_gpt2):
        tok = AutoTokenizer.from_pretrained(path)
        tpl = build_template(get_task("dialogue"), tok)
        [ex] = encode_example(Record(source="c", row=1, messages=msgs), tpl, tok, max_length=200)
        spans, cur = [], []
        for t, lab in zip(ex.input_ids, ex.labels):
            if lab != IGNORE:
                cur.append(t)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        assert [tok.decode(s[:-1]).strip() for s in spans] == ["Good morning.", "Sleeps."]
        assert all(s[-1] == tok.eos_token_id for s in spans)
        # user turns are never trained
        trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
        assert "hello" not in trained and "lazy" not in trained
        # the generation prompt for the last turn is the training context before it
        ids, _, _ = encode_prompt(
            Record(source="c", row=1, messages=msgs), tpl, tok, max_length=200
        )
        start = len(ex.input_ids) - len(spans[-1])
        assert ids == ex.input_ids[:start]


def test_text_task_trains_everything_and_splits_long_texts(tiny_gpt2):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tpl = build_template(get_task("text"), tok)
    exs, report = encode_dataset(
        [Record(source="s.txt", row=1, text="the quick brown fox " * 40)], tpl, tok, max_length=50
    )
    assert report.split_rows == 1 and len(exs) > 1
    assert all(len(e.input_ids) <= 50 for e in exs)
    assert all(t != IGNORE for t in exs[0].labels)
