"""`gentune export RUN --out DIR`: a plain transformers model directory.

A LoRA adapter is merged into the base weights; the directory holds safetensors weights, the
tokenizer with the chat template used in training, and a generation config whose EOS and pad are
the ones gentune trained and generated with. `AutoModelForCausalLM.from_pretrained(DIR)` and
greedy `generate` then give the same text as `gentune generate RUN`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .generate import eos_ids
from .models import ModelError
from .runs import is_run, load_for_inference


def export(run: str | Path, out: str | Path) -> Path:
    run, out = Path(run), Path(out)
    if not is_run(run):
        raise ModelError(f"{run}: not a gentune run directory (no manifest.json/template.json)")
    loaded = load_for_inference(str(run), merge=True)
    model, tokenizer, template = loaded.model, loaded.tokenizer, loaded.template
    if template.style == "chat":
        tokenizer.chat_template = template.chat_template  # the template trained with
    gen = model.generation_config
    gen.eos_token_id = eos_ids(model, tokenizer)
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False
    for key in ("temperature", "top_p", "top_k"):  # greedy by default, as gentune generates
        setattr(gen, key, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        template.save(tmp / "gentune_template.json")
        (tmp / "gentune_export.json").write_text(json.dumps({
            "run": str(run.resolve()), "task": template.task, "style": template.style,
            "base_model": (loaded.manifest or {}).get("base_model"),
        }, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
