"""Generation, evaluation with --compare and its report, export, chat."""

import json
from html.parser import HTMLParser

import pytest
import torch

from gentune.config import ConfigError, Decoding, TrainConfig
from gentune.data import Record
from gentune.encode import encode_prompt
from gentune.generate import eos_ids, generate, shared_prefix, stream
from gentune.runs import load_for_inference
from gentune.tasks import build_template, get_task
from gentune.train import train

from .conftest import PAIRS, write_jsonl

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
        x = torch.tensor([p])
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
    assert len(beams) == 6
    rep = generate(
        m, tok, ids[:2], Decoding(max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2)
    )
    assert len(rep) == 2
    full = generate(m, tok, ids[:1], Decoding(max_new_tokens=12))[0].text
    if len(full) > 3:
        stop = full[2:4]
        cut = generate(m, tok, ids[:1], Decoding(max_new_tokens=12, stop=(stop,)))[0]
        assert cut.finished and stop not in cut.text and full.startswith(cut.text)
    with pytest.raises(ConfigError, match="num_return_sequences"):
        Decoding(num_return_sequences=2)


@pytest.fixture(scope="module")
def lora_run(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    data = write_jsonl(tmp / "d.jsonl", PAIRS * 2)
    cfg = TrainConfig(
        task="summarization",
        data=str(data),
        out=str(tmp / "run"),
        model=tiny_llama,
        max_steps=4,
        batch_size=4,
        lr=5e-3,
        progress=False,
        tensorboard=False,
        eval_generate=2,
    )
    return train(cfg, log=lambda *_: None), data


def test_export_round_trip_gives_identical_greedy_text(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gentune.export import export

    run, _ = lora_run
    out = export(run, tmp_path / "exported")
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    ours = load_for_inference(str(run))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.eos_token_id in (
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    for text in PROMPTS[:4]:
        rec = Record(source="p", row=1, input=text)
        ids, _, _ = encode_prompt(rec, ours.template, ours.tokenizer, max_length=200)
        want = generate(ours.model, ours.tokenizer, [ids], Decoding(max_new_tokens=10))[0].text
        # a plain transformers user: the exported chat template, then greedy generate
        msgs = [{"role": "user", "content": f"{ours.template.instruction}\n\n{text}"}]
        plain_ids = tok.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert list(plain_ids) == ids
        gen = model.generate(torch.tensor([plain_ids]), max_new_tokens=10)
        got = tok.decode(gen[0, len(plain_ids) :], skip_special_tokens=True).strip()
        assert got == want
    # gentune itself serves the exported directory with the same template
    again = load_for_inference(str(out))
    assert again.template == ours.template


def test_evaluate_compare_writes_report(lora_run, tiny_llama, tmp_path):
    from gentune.evaluate import evaluate

    run, data = lora_run
    result = evaluate(
        str(run),
        str(data),
        tmp_path / "e",
        compare=tiny_llama,
        bootstrap=200,
        progress=False,
        decoding_overrides={"max_new_tokens": 6},
    )
    comp = json.loads((tmp_path / "e" / "comparison.json").read_text())
    names = [m["metric"] for m in comp["metrics"]]
    assert names[:4] == ["rougeL", "rouge1", "rouge2", "rougeLsum"]
    rl = comp["metrics"][0]
    assert rl["ci"][0] <= rl["difference"] <= rl["ci"][1]
    assert (tmp_path / "e" / "base" / "predictions.jsonl").exists()
    assert result["rougeL"] == rl["tuned"]

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.images, self.samples, self.h2, self.links = 0, [], 0, [], []
            self._in_h2 = False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.tables += tag == "table"
            if tag == "img":
                self.images.append(a.get("src", ""))
            if tag == "tr" and a.get("class") == "sample":
                self.samples += 1
            if tag in ("link", "script") and a.get("src"):
                self.links.append(a["src"])
            self._in_h2 = tag == "h2"

        def handle_data(self, data):
            if self._in_h2:
                self.h2.append(data)
                self._in_h2 = False

    p = Parser()
    p.feed((tmp_path / "e" / "report.html").read_text())
    assert p.tables >= 4  # metrics + samples, wins, losses
    assert len(p.images) == 2 and all(s.startswith("data:image/png;base64,") for s in p.images)
    assert {
        "Metrics",
        "Training curves",
        "Lengths",
        "Samples",
        "Biggest wins",
        "Biggest losses",
    } <= set(p.h2)
    assert p.samples >= 5 + 3 + 3 - 6  # (small data: wins and losses may overlap samples)
    assert not p.links  # nothing loaded from the network


def test_metrics_per_task_against_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    from gentune.metrics import distinct, text_metrics

    preds = ["the cat sat. it was happy.", "a quick brown fox", "hello there"]
    refs = ["the cat is on the mat. it purrs.", "the quick brown fox jumps", "general kenobi"]
    m = text_metrics(preds, refs)
    assert m["ter"] == sacrebleu.corpus_ter(preds, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    want = (
        100
        * sum(
            scorer.score(r.replace(". ", ".\n"), p.replace(". ", ".\n"))["rougeLsum"].fmeasure
            for p, r in zip(preds, refs)
        )
        / 3
    )
    assert m["rougeLsum"] == pytest.approx(want)
    assert distinct(["a a b", "a b"], 1) == pytest.approx(100 * 2 / 5)
    assert distinct(["a a b", "a b"], 2) == pytest.approx(100 * 2 / 3)


def test_bootstrap_is_seeded():
    from gentune.metrics import paired_bootstrap

    base = ["a b c", "d e f", "g h i", "x y"]
    tuned = ["a b c", "d e", "g h i j", "x y z"]
    refs = ["a b c d", "d e f", "g h i j", "x y z"]
    a = paired_bootstrap("bleu", base, tuned, refs, samples=100, seed=1)
    b = paired_bootstrap("bleu", base, tuned, refs, samples=100, seed=1)
    assert a == b and a["ci"][0] <= a["ci"][1]


def test_chat_session(tiny_llama):
    from gentune.chat import chat

    said = iter(["hello", "/reset", "The lazy dog?", "/exit"])
    out = []
    history = chat(
        tiny_llama,
        decoding_overrides={"max_new_tokens": 5},
        read=lambda _: next(said),
        write=out.append,
    )
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "The lazy dog?"
    assert "(conversation reset)\n" in out


def test_incomplete_run_and_long_prompts(tiny_llama, lora_run, tmp_path):
    from gentune.errors import RunError
    from gentune.evaluate import evaluate

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    with pytest.raises(RunError, match="missing keys gentune_run, method, task, base_model"):
        load_for_inference(str(broken))
    data = write_jsonl(
        tmp_path / "long.jsonl",
        [{"input": "word " * 400, "output": "w"}, {"input": "short", "output": "s"}],
    )
    result = evaluate(
        tiny_llama,
        str(data),
        tmp_path / "e",
        task="summarization",
        progress=False,
        decoding_overrides={"max_new_tokens": 4},
    )
    assert result["meta"]["prompts_shortened"] == 1  # context 256: reported and counted
