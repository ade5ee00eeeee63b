"""Encoder-decoder models (BART, T5, Marian) and BERT2BERT warm starts under the same
commands: loading by kind, encoding, training, generation."""

import json

import pytest
import torch

from gentune.data.encode import IGNORE, collate, encode_dataset
from gentune.data.records import Record
from gentune.data.tasks import build_template, get_task
from gentune.errors import ModelError
from gentune.models.families import is_seq2seq, template_options
from gentune.models.load import load_model
from gentune.models.loss import token_nll
from gentune.tokenizer import PairTokenizer, source_pad_id, source_tokenizer

from .conftest import PAIRS, build_tiny, tiny_cfg, write_jsonl
from .seq2seq_models import build_seq2seq

FAMILIES = ["bart", "t5", "marian", "bert2bert", "bert2gpt2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{family: model spec} of tiny random models saved once. bert2gpt2: a BERT encoder
    (WordPiece) with a GPT-2 decoder (byte-level BPE), two vocabularies; the decoder pads
    with an id the encoder's vocabulary does not have, so mixing the two up fails."""
    from transformers import AutoTokenizer

    out = {}
    for family in ("bart", "t5", "marian", "bert"):
        out[family] = str(build_seq2seq(tmp_path_factory.mktemp(family), family))
    out["bert2bert"] = "bert2bert:" + out["bert"]
    gpt2 = build_tiny(tmp_path_factory.mktemp("gpt2"), "gpt2")
    dec = AutoTokenizer.from_pretrained(gpt2)
    dec.pad_token = dec.convert_ids_to_tokens(len(dec) - 1)
    dec.save_pretrained(gpt2)
    assert dec.pad_token_id >= len(AutoTokenizer.from_pretrained(out["bert"]))
    out["bert2gpt2"] = f"bert2bert:{out['bert']},{gpt2}"
    return out


def _template(model, tok, task="summarization", **kw):
    return build_template(get_task(task), tok, **kw, **template_options(model))


def _encoded(spec: str, n: int):
    """(model, tokenizer, records, examples) of the first n PAIRS for a model."""
    model, tok, _ = load_model(spec)
    recs = [Record(source="d", row=i, **r) for i, r in enumerate(PAIRS[:n], start=1)]
    exs, _ = encode_dataset(recs, _template(model, tok), tok, max_length=64)
    return model, tok, recs, exs


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_as_an_encoder_decoder(models, family):
    model, tok, _ = load_model(models[family])
    assert is_seq2seq(model)
    assert (
        type(model).__name__
        == {
            "bart": "BartForConditionalGeneration",
            "t5": "T5ForConditionalGeneration",
            "marian": "MarianMTModel",
            "bert2bert": "EncoderDecoderModel",
            "bert2gpt2": "EncoderDecoderModel",
        }[family]
    )


def test_encoder_only_checkpoint_is_refused_with_the_warm_start_hint(models):
    with pytest.raises(ModelError, match=r"encoder-only model \(bert\).*bert2bert:"):
        load_model(models["bert"])


def test_a_checkpoint_of_another_architecture_is_never_loaded_with_random_weights(models, tmp_path):
    """A BART checkpoint whose config claims to be T5: the weights do not match, so loading
    would leave T5's all random; it stops and names them."""
    from transformers import T5Config

    path = tmp_path / "liar"
    import shutil

    shutil.copytree(models["bart"], path)
    config = json.loads((path / "config.json").read_text())
    t5 = T5Config(
        vocab_size=config["vocab_size"], d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
    ).to_dict()
    (path / "config.json").write_text(json.dumps(t5))
    with pytest.raises(ModelError, match=r"weights are not in the checkpoint and would start"):
        load_model(str(path))


@pytest.mark.parametrize("family", FAMILIES)
def test_source_to_encoder_target_to_labels_with_eos(models, family):
    model, tok, recs, exs = _encoded(models[family], 3)
    prefix = "summarize: " if family == "t5" else ""
    for rec, ex in zip(recs, exs, strict=True):
        assert ex.seq2seq and IGNORE not in ex.labels
        source = source_tokenizer(tok).decode(ex.input_ids, skip_special_tokens=True)
        assert source == prefix + rec.input
        assert ex.labels[-1] == tok.eos_token_id
        assert tok.decode(ex.labels, skip_special_tokens=True) == rec.output
    batch = collate(list(exs), source_pad_id(tok))
    assert batch["labels"].shape[1] == max(len(e.labels) for e in exs)
    assert (batch["labels"][batch["labels"] != IGNORE] != tok.pad_token_id).all()
    # the decoder reads the labels shifted right by the model's rule: its start token first
    from gentune.models.families import causal_lm
    from gentune.models.loss import decoder_inputs

    dec = decoder_inputs(causal_lm(model), batch["labels"])
    start = model.config.decoder_start_token_id
    assert (dec[:, 0] == start).all()
    first = exs[0].labels
    assert dec[0, 1 : len(first)].tolist() == first[:-1]


def test_long_source_is_shortened_never_the_target(models):
    model, tok, _ = load_model(models["bart"])
    tpl = _template(model, tok)
    long = Record(source="d", row=1, input="hello world " * 80, output="Short title.")
    exs, report = encode_dataset([long], tpl, tok, max_length=32)
    assert len(exs[0].input_ids) == 32 and exs[0].input_ids[-1] == tok.eos_token_id
    assert report.truncated_rows == 1 and report.truncated_tokens > 0
    assert tok.decode(exs[0].labels, skip_special_tokens=True) == "Short title."
    too_long = Record(source="d", row=2, input="x", output="hello world " * 80)
    from gentune.data.records import DataError

    with pytest.raises(DataError, match=r"d:2"):
        encode_dataset([too_long], tpl, tok, max_length=32)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_the_mean_over_target_tokens(models, family):
    """token_nll equals the model's own seq2seq loss (which averages over labels)."""
    model, tok, _, exs = _encoded(models[family], 4)
    batch = collate(list(exs), source_pad_id(tok))
    model.eval()
    nll, n = token_nll(model, batch)
    assert n == sum(len(e.labels) for e in exs)
    ref = model(**batch).loss
    assert torch.allclose(nll / n, ref, rtol=1e-5)


PROMPTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "0123456789 are digits",
    "Guten Morgen!",
    "title paper abstract about tokens and models",
    "A language model learns",
    "river bank",
    "The lazy dog sleeps.",
    "system user assistant",
]


def _prompt_ids(loaded, template):
    from gentune.data.encode import encode_prompt

    return [
        encode_prompt(
            Record(source="p", row=i, input=p), template, loaded.tokenizer, max_length=64
        )[0]
        for i, p in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_same_at_batch_1_and_8_and_as_a_plain_generate_loop(models, family):
    from gentune.config import Decoding
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference

    loaded = load_for_inference(models[family])
    model, tok = loaded.model, loaded.tokenizer
    ids = _prompt_ids(loaded, _template(model, tok))
    d = Decoding(max_new_tokens=10)
    one = generate(model, tok, ids, d, batch_size=1)
    eight = generate(model, tok, ids, d, batch_size=8)
    assert [g.text for g in one] == [g.text for g in eight]
    assert any(g.text for g in one)  # (the random model does say something)
    plain = []
    for p in ids:
        out = model.generate(
            torch.tensor([p], device=model.device),
            max_new_tokens=10,
            do_sample=False,
            num_beams=1,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        plain.append(tok.decode(out[0, 1:], skip_special_tokens=True).strip())
    assert [g.text for g in one] == plain


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_accumulation_equals_one_big_batch(models, family):
    from .test_train import assert_accumulation_matches

    model, tok, _, exs = _encoded(models[family], 8)
    assert len({len(e.labels) for e in exs}) > 2
    assert_accumulation_matches(model, list(exs), source_pad_id(tok), atol=None)


def _lora_run(tmp_path_factory, model: str, steps: int) -> str:
    """A short LoRA run of `model` on the test pairs."""
    from gentune.training.train import train

    tmp = tmp_path_factory.mktemp("run")
    data = write_jsonl(tmp / "d.jsonl", PAIRS * 3)
    cfg = tiny_cfg(
        model,
        data,
        tmp / "run",
        method="lora",
        lr=1e-2,
        batch_size=4,
        max_steps=steps,
        val_fraction=0.2,
    )
    return str(train(cfg, log=lambda *_: None))


@pytest.fixture(scope="module")
def bart_run(models, tmp_path_factory):
    return _lora_run(tmp_path_factory, models["bart"], 12)


def test_export_loads_with_auto_seq2seq_and_gives_the_same_text(bart_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from gentune.config import Decoding
    from gentune.inference.export import export
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference

    out, auto_class = export(bart_run, tmp_path / "exported")
    assert auto_class == "AutoModelForSeq2SeqLM"
    assert not (out / "adapter_config.json").exists()
    ours = load_for_inference(bart_run)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = _prompt_ids(ours, ours.template)
    want = generate(ours.model, ours.tokenizer, ids, Decoding(max_new_tokens=10))
    for text, g in zip(PROMPTS, want, strict=True):
        x = tok(ours.template.instruction + text, return_tensors="pt")["input_ids"]
        got = model.generate(x, max_new_tokens=10)
        assert tok.decode(got[0], skip_special_tokens=True).strip() == g.text


def test_served_answers_equal_the_cli(bart_run, capsys):
    from fastapi.testclient import TestClient

    from gentune.cli import main
    from gentune.inference.load import load_for_inference
    from gentune.serving.app import create_app

    assert main(["generate", bart_run, PAIRS[0]["input"], "--max-new-tokens", "12"]) == 0
    cli = capsys.readouterr().out.strip()
    with TestClient(create_app(load_for_inference(bart_run))) as c:
        r = c.post("/v1/completions", json={"prompt": PAIRS[0]["input"], "max_tokens": 12})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == cli
        # a chat is flattened into the source ("user: ..."), never a 500
        r = c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
        )
        assert r.status_code == 200


@pytest.fixture(scope="module")
def pair_lora_run(models, tmp_path_factory):
    """A LoRA run of the BERT-encoder + GPT-2-decoder warm start (two tokenizers)."""
    return _lora_run(tmp_path_factory, models["bert2gpt2"], 6)


def test_lora_on_a_warm_start_trains_its_new_cross_attention_in_full(pair_lora_run):
    """Adapters on the pre-trained layers; the cross-attention, which starts random, trained
    in full (an adapter on it would leave it random) and restored with the run."""
    from gentune.config import Decoding
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference

    loaded = load_for_inference(pair_lora_run, merge=False)
    params = dict(loaded.model.named_parameters())
    assert any("encoder" in n and "query.lora_A" in n for n in params)
    assert any("decoder" in n and "c_attn.lora_A" in n for n in params)
    assert not any("crossattention" in n and "lora_" in n for n in params)
    trained = [n for n in params if "crossattention" in n and "modules_to_save" in n]
    assert trained
    changed = [
        n
        for n in trained
        if not torch.equal(
            params[n], params[n.replace("modules_to_save.default", "original_module")]
        )
    ]
    assert len(changed) > len(trained) // 2  # trained, not the random start
    ids = _prompt_ids(loaded, loaded.template)
    texts = []
    for seed in (1, 2):  # the base's random cross-attention differs per load; the run's does not
        torch.manual_seed(seed)
        again = load_for_inference(pair_lora_run)
        texts.append(
            [
                g.text
                for g in generate(again.model, again.tokenizer, ids, Decoding(max_new_tokens=8))
            ]
        )
    assert texts[0] == texts[1]


def test_a_pair_of_tokenizers_keys_the_data_cache_by_both(models):
    from gentune.data.cache import tokenizer_fingerprint

    _, pair, _ = load_model(models["bert2gpt2"])
    _, bert, _ = load_model(models["bert2bert"])
    swapped = PairTokenizer(pair.target_tokenizer, pair.target_tokenizer)
    keys = {tokenizer_fingerprint(t) for t in (pair, swapped, pair.target_tokenizer, bert)}
    assert len(keys) == 4


def test_two_tokenizers_are_saved_and_exported_side_by_side(pair_lora_run, tmp_path):
    """The export: the encoder's tokenizer at the top (what encodes a prompt), the decoder's in
    decoder_tokenizer/ (what decodes the output); the same text as gentune's."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from gentune.config import Decoding
    from gentune.inference.export import export
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference

    ours = load_for_inference(pair_lora_run)
    assert isinstance(ours.tokenizer, PairTokenizer)
    out, auto_class = export(pair_lora_run, tmp_path / "exported")
    assert auto_class == "AutoModelForSeq2SeqLM"
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    enc = AutoTokenizer.from_pretrained(out)
    dec = AutoTokenizer.from_pretrained(out / "decoder_tokenizer")
    assert enc.get_vocab() != dec.get_vocab()
    ids = _prompt_ids(ours, ours.template)
    want = generate(ours.model, ours.tokenizer, ids, Decoding(max_new_tokens=10))
    assert any(g.text for g in want)
    for text, g in zip(PROMPTS, want, strict=True):
        x = enc(ours.template.instruction + text, return_tensors="pt")["input_ids"]
        got = model.generate(x, max_new_tokens=10)
        assert dec.decode(got[0], skip_special_tokens=True).strip() == g.text


def test_packing_is_refused_naming_the_flag(models, tmp_path, capsys):
    from gentune.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    code = main(
        ["train", "--task", "summarization", "--model", models["bart"], "--data", str(data),
         "--out", str(tmp_path / "run"), "--packing", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--packing" in err and "encoder-decoder" in err
    assert "Traceback" not in err


def _digit_rows(n, rng, *, reverse=True):
    rows = []
    for _ in range(n):
        d = [str(rng.randrange(10)) for _ in range(rng.randint(4, 7))]
        rows.append({"input": " ".join(d), "output": " ".join(reversed(d) if reverse else d)})
    return rows


# From scratch (not fine-tuning): a constant learning rate without warm-up and random batches.
# With warm-up, or with batches of rows of one length, these tiny models settle on ignoring
# their input (validation loss stays at ~1.8, the output distribution without the input).
FROM_SCRATCH = ["--method", "full", "--lr", "3e-3", "--batch-size", "32", "--scheduler",
                "constant", "--warmup-ratio", "0", "--no-group-by-length"]  # fmt: skip


def _learned(tmp_path, spec, *, epochs, reverse=True):
    """Exact match of `gentune evaluate` on 200 held-out rows after `gentune train`."""
    import random

    from gentune.cli import main

    rng = random.Random(0)
    files = {}
    for name, n in (("train", 3000), ("val", 100), ("test", 200)):
        files[name] = write_jsonl(tmp_path / f"{name}.jsonl", _digit_rows(n, rng, reverse=reverse))
    run = tmp_path / "run"
    args = ["train", "--task", "summarization", "--model", spec, "--data", str(files["train"]),
            "--val", str(files["val"]), "--out", str(run), "--epochs", str(epochs),
            "--no-progress", *FROM_SCRATCH]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", str(files["test"]), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert len(rows) == 200
    return sum(r["output"].strip() == r["reference"] for r in rows) / len(rows)


@pytest.mark.slow
def test_tiny_bart_learns_to_reverse_digits(tmp_path):
    """~30 s: 10 epochs of 94 steps; 100 % exact match when it was written."""
    model = build_seq2seq(tmp_path / "bart", "bart", size=64, varied=False)
    assert _learned(tmp_path, str(model), epochs=10) >= 0.95


@pytest.mark.slow
def test_tiny_t5_learns_to_reverse_digits_less_well(tmp_path):
    """T5's relative positions (16 buckets) at this size: 88 % exact match when it was written,
    not 95 % (15 epochs gave no more); 76.5 % since the bf16-moments optimizer step runs
    torch's fused AdamW kernel (the same update, rounded in another order: from scratch at lr
    3e-3 this tiny model's outcome moves with the last bits; the elementwise step gave >= 80 %).
    A model that ignores its input or copies it scores near 0."""
    model = build_seq2seq(tmp_path / "t5", "t5", size=64, varied=False)
    assert _learned(tmp_path, str(model), epochs=10) >= 0.7


@pytest.mark.slow
def test_tiny_bert2bert_warm_start_learns_to_copy(tmp_path):
    model = build_seq2seq(tmp_path / "bert", "bert", size=64, varied=False)
    assert _learned(tmp_path, "bert2bert:" + str(model), epochs=2, reverse=False) >= 0.95


@pytest.mark.slow
def test_kill_during_checkpoint_save_then_resume_is_exact(models, tmp_path):
    """As for causal models (tests/test_checkpoint.py): SIGKILL while step 9 is being saved,
    resume, and every step's loss and the final adapter equal an uninterrupted run's."""
    import signal

    from gentune import checkpoint

    from .test_checkpoint import _args, _assert_same, _run

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS * 4)
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, out = _run(_args(models["bart"], data, ref))
    assert code == 0, out
    code, out = _run(_args(models["bart"], data, run), {"GENTUNE_FAULT": "kill-in-save:9"})
    assert code == -signal.SIGKILL, out
    assert checkpoint.latest(run).name == "step-00000006"
    code, out = _run(_args(models["bart"], data, run, "--resume"))
    assert code == 0 and "resumed from" in out, out
    _assert_same(run, ref)


# multilingual models: the tokenizer's code for German and English in each
CODES = {"mbart50": ("de_DE", "en_XX"), "nllb": ("deu_Latn", "eng_Latn")}


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    return {f: str(build_seq2seq(tmp_path_factory.mktemp(f), f)) for f in CODES}


@pytest.mark.parametrize("family", list(CODES))
@pytest.mark.parametrize("by", ["name", "code"])
def test_language_codes_from_names_or_codes(multilingual, family, by):
    """The source starts with its language code, the target's labels too; generation forces
    the target's code first."""
    from gentune.config import Decoding
    from gentune.inference.generate import generation_config
    from gentune.models.families import set_languages

    de, en = CODES[family]
    source, target = ("German", "English") if by == "name" else (de, en)
    model, tok, _ = load_model(multilingual[family])
    set_languages(model, tok, source, target)
    assert (tok.src_lang, tok.tgt_lang) == (de, en)
    tpl = _template(model, tok, "translation", source_lang=source, target_lang=target)
    rec = Record(source="d", row=1, input="guten morgen", output="good morning")
    (ex,), _ = encode_dataset([rec], tpl, tok, max_length=64)
    assert tok.convert_ids_to_tokens(ex.input_ids)[0] == de
    assert tok.convert_ids_to_tokens(ex.labels)[0] == en and ex.labels[-1] == tok.eos_token_id
    assert tok.decode(ex.labels, skip_special_tokens=True) == "good morning"
    config = generation_config(model, tok, Decoding())
    assert config.forced_bos_token_id == tok.convert_tokens_to_ids(en)


@pytest.mark.parametrize("family", list(CODES))
def test_loss_is_the_models_own(multilingual, family):
    """token_nll (its decoder inputs built by gentune where the model has no method for it,
    M2M100/NLLB) equals the loss the model computes from the labels itself."""
    from gentune.models.families import set_languages

    model, tok, _ = load_model(multilingual[family])
    set_languages(model, tok, "German", "English")
    tpl = _template(model, tok, "translation", source_lang="German", target_lang="English")
    recs = [Record(source="d", row=i, **r) for i, r in enumerate(PAIRS[:4], start=1)]
    exs, _ = encode_dataset(recs, tpl, tok, max_length=256)
    batch = collate(list(exs), source_pad_id(tok))
    model.eval()
    nll, n = token_nll(model, batch)
    assert torch.allclose(nll / n, model(**batch).loss, rtol=1e-5)


@pytest.mark.parametrize("family", list(CODES))
def test_unknown_language_is_a_named_error(multilingual, family, capsys, tmp_path):
    from gentune.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    common = ["train", "--task", "translation", "--model", multilingual[family], "--data",
              str(data), "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main([*common, "--source-lang", "Klingon", "--target-lang", "English"]) == 2
    err = capsys.readouterr().err
    assert "--source-lang Klingon" in err and "Traceback" not in err
    first = {"mbart50": "af_ZA, ar_AR", "nllb": "ace_Arab, ace_Latn"}[family]
    assert f"one of its codes ({first}" in err  # (the tokenizer's own codes, named)


@pytest.mark.parametrize("family", list(CODES))
def test_a_run_keeps_its_languages(multilingual, family, tmp_path):
    """Trained with German -> English: the run's tokenizer and its generation keep them."""
    from gentune.config import Decoding, TrainConfig
    from gentune.inference.generate import generate, generation_config
    from gentune.inference.load import load_for_inference
    from gentune.training.train import train

    de, en = CODES[family]
    rows = [{"input": "guten morgen", "output": "good morning"}] * 12
    cfg = TrainConfig(
        task="translation",
        source_lang="German",
        target_lang="English",
        data=str(write_jsonl(tmp_path / "d.jsonl", rows)),
        out=str(tmp_path / "run"),
        model=multilingual[family],
        max_steps=2,
        progress=False,
    )
    run = train(cfg, log=lambda *_: None)
    loaded = load_for_inference(str(run))
    assert (loaded.tokenizer.src_lang, loaded.tokenizer.tgt_lang) == (de, en)
    (ids,) = _prompt_ids(loaded, loaded.template)[:1]
    assert loaded.tokenizer.convert_ids_to_tokens(ids)[0] == de
    config = generation_config(loaded.model, loaded.tokenizer, Decoding(max_new_tokens=3))
    out = loaded.model.generate(
        torch.tensor([ids], device=loaded.model.device), generation_config=config
    )
    assert loaded.tokenizer.convert_ids_to_tokens(out[0, 1:2].tolist()) == [en]  # forced
    # the code is the decoder's, not the text's
    (gen,) = generate(loaded.model, loaded.tokenizer, [ids], Decoding(max_new_tokens=3))
    assert en not in gen.text


@pytest.mark.parametrize("family", ["bart", "t5", "bert2gpt2"])
def test_stream_gives_the_same_text_as_generate(models, family):
    """What `gentune chat` and the server's streaming use."""
    from gentune.config import Decoding
    from gentune.inference.generate import generate, stream
    from gentune.inference.load import load_for_inference

    loaded = load_for_inference(models[family])
    ids = _prompt_ids(loaded, _template(loaded.model, loaded.tokenizer))
    d = Decoding(max_new_tokens=10)
    for p, want in zip(ids[:3], generate(loaded.model, loaded.tokenizer, ids[:3], d), strict=True):
        assert "".join(stream(loaded.model, loaded.tokenizer, p, d)) == want.text


def test_plan_shows_source_and_target(models, tmp_path):
    from gentune.config import TrainConfig
    from gentune.training.plan import plan

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS * 2)
    cfg = TrainConfig(
        task="summarization", data=str(data), out=str(tmp_path / "run"), model=models["t5"]
    )
    text = plan(cfg, measure=False)
    assert "template seq2seq" in text
    assert "tokens per example, source (encoder): p50" in text
    assert "target (decoder, EOS included)" in text
    assert "summarize: " in text and "→ ⟦" in text  # the first example: source, then target
