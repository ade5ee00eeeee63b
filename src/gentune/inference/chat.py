"""`gentune chat`: an interactive multi-turn session, streamed, with the template of the run."""

from __future__ import annotations

import sys

from gentune.data.records import Record
from gentune.data.tasks import chat_template_for
from gentune.inference.generate import default_decoding, encode_prompts, stream
from gentune.inference.load import load_for_inference
from gentune.models.families import template_options

HELP = "type a message; /reset starts over, /exit (or Ctrl-D) leaves"


def chat(
    spec: str,
    *,
    decoding_overrides: dict | None = None,
    system: str | None = None,
    precision: str = "fp32",
    quantize: str | None = None,
    read=input,
    write=sys.stdout.write,
) -> list[dict]:
    """Run the session until /exit or end of input; returns the conversation."""
    loaded = load_for_inference(spec, precision=precision, quantize=quantize)
    template = chat_template_for(
        loaded.template, loaded.tokenizer, **template_options(loaded.model)
    )
    decoding = default_decoding(template, **(decoding_overrides or {}))
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    write(f"gentune chat with {spec} ({HELP})\n")
    while True:
        try:
            text = read("you> ")
        except EOFError:
            write("\n")
            return history
        if text.strip() in ("/exit", "/quit"):
            return history
        if text.strip() == "/reset":
            history = history[:1] if system else []
            write("(conversation reset)\n")
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        record = Record(source="<chat>", row=len(history), messages=tuple(history))
        [(ids, _, shortened)] = encode_prompts(
            [record], template, loaded.tokenizer, loaded.model, decoding.max_new_tokens
        )
        if shortened:
            write("(the oldest turns no longer fit the context and were left out)\n")
        write("model> ")
        reply = ""
        for piece in stream(loaded.model, loaded.tokenizer, ids, decoding):
            reply += piece
            write(piece)
            if hasattr(sys.stdout, "flush"):
                sys.stdout.flush()
        write("\n")
        history.append({"role": "assistant", "content": reply})
