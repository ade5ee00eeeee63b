"""gentune chat: a multi-turn session streamed with the run's template."""


def test_chat_session(tiny_llama):
    from gentune.inference.chat import chat

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
