"""`gentune export RUN --out DIR`: a plain transformers model directory.

A LoRA adapter is merged into the base weights; the directory holds safetensors weights, the
tokenizer with the chat template used in training, and a generation config whose EOS and pad are
the ones gentune trained and generated with. `AutoModelForCausalLM.from_pretrained(DIR)` (an
encoder-decoder: `AutoModelForSeq2SeqLM`) and greedy `generate` then give the same text as
`gentune generate RUN`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from gentune.errors import RunError, UsageError
from gentune.inference.generate import eos_ids
from gentune.inference.load import load_for_inference
from gentune.lock import locked
from gentune.models.families import is_seq2seq
from gentune.rundir import interrupted, run_state


def export(run: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write RUN as a plain transformers directory at OUT (LoRA merged, the trained template
    and generation settings); returns OUT and the transformers auto class that loads it."""
    run, out = Path(run), Path(out)
    state = run_state(run)
    if state == "interrupted":
        raise interrupted(run)
    if state is None:
        raise RunError(
            f"{run}: not a gentune run directory (no manifest.json); give the --out "
            "of a finished `gentune train`"
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a directory")
    if (
        out.resolve() == run.resolve()
        or run.resolve() in out.resolve().parents
        or out.resolve() in run.resolve().parents
    ):
        raise UsageError(
            f"--out {out}: inside or around the run {run}; export to a directory of its own"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / "gentune_export.json").exists():
        raise UsageError(
            f"--out {out}: the directory is not empty and holds no gentune "
            "export; choose a new or empty directory"
        )
    with locked(out, path=out.parent / f".{out.name}.gentune.lock"):
        return _write_export(run, out)


def _write_export(run: Path, out: Path) -> tuple[Path, str]:
    """The export written beside OUT, then renamed into place (a reader never sees half)."""
    loaded = load_for_inference(str(run), merge=True)
    model, tokenizer, template = loaded.model, loaded.tokenizer, loaded.template
    assert template is not None, "a complete run always has its template"
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
        (tmp / "gentune_export.json").write_text(
            json.dumps(
                {
                    "run": str(run.resolve()),
                    "task": template.task,
                    "style": template.style,
                    "base_model": (loaded.manifest or {}).get("base_model"),
                },
                indent=2,
            )
            + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, "AutoModelForSeq2SeqLM" if is_seq2seq(model) else "AutoModelForCausalLM"
