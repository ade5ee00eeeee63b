"""gentune export: a plain transformers directory that gives gentune's text."""

import torch

from gentune.config import Decoding
from gentune.data.encode import encode_prompt
from gentune.data.records import Record
from gentune.inference.generate import generate
from gentune.inference.load import load_for_inference

from .test_generate import PROMPTS


def test_export_round_trip_gives_identical_greedy_text(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gentune.inference.export import export

    run, _ = lora_run
    assert (run / "model" / "adapter_config.json").exists()  # a LoRA run: export merges it
    out, _ = export(run, tmp_path / "exported")
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
        gen = model.generate(torch.tensor([plain_ids], device=model.device), max_new_tokens=10)
        got = tok.decode(gen[0, len(plain_ids) :], skip_special_tokens=True).strip()
        assert got == want
    # gentune itself serves the exported directory with the same template
    again = load_for_inference(str(out))
    assert again.template == ours.template
