"""The OpenAI request bodies: limits and unsupported options (400), malformed or hostile values (422/400 naming the field, never 500), the prompt-token limit, decoding options passed through."""

from __future__ import annotations

import json

import pytest

from .serving import AUTH, PROMPT, client, sse_events


def test_decoding_options_pass_through(loaded):
    with client(loaded) as c:
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT, "max_tokens": 2})
        ch = r.json()["choices"][0]
        assert ch["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 2
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT, "stop": ["jumps"]})
        assert r.json()["choices"][0]["text"] == "Fox"
        r = c.post(
            "/v1/completions",
            headers=AUTH,
            json={"prompt": PROMPT, "stop": "jumps", "stream": True},
        )
        events = sse_events(r.text)
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Fox"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        r = c.post(
            "/v1/completions",
            headers=AUTH,  # untemplated: the text as it is
            json={"prompt": PROMPT, "raw": True, "max_tokens": 3},
        )
        assert r.json()["usage"]["prompt_tokens"] == len(loaded.tokenizer(PROMPT)["input_ids"])
        sampled = {"prompt": PROMPT, "temperature": 1.5, "seed": 3, "n": 3, "max_tokens": 8}
        a = c.post("/v1/completions", headers=AUTH, json=sampled).json()["choices"]
        b = c.post("/v1/completions", headers=AUTH, json=sampled).json()["choices"]
        assert len(a) == 3 and [x["text"] for x in a] == [x["text"] for x in b]  # seeded
        beams = c.post(
            "/v1/completions", headers=AUTH, json={"prompt": PROMPT, "num_beams": 3, "n": 2}
        ).json()
        one = c.post(
            "/v1/completions", headers=AUTH, json={"prompt": PROMPT, "num_beams": 3}
        ).json()
        assert [x["index"] for x in beams["choices"]] == [0, 1]
        assert beams["choices"][0]["text"] == one["choices"][0]["text"]  # the best beam first
        models = c.get("/v1/models", headers=AUTH).json()
        name = models["data"][0]["id"]
        assert (
            c.post("/v1/completions", headers=AUTH, json={"prompt": "x", "model": name}).status_code
            == 200
        )


def test_400_limits_and_unsupported(loaded):
    with client(loaded, max_tokens_limit=64) as c:

        def post(path, **body):
            return c.post(path, headers=AUTH, json=body)

        r = post("/v1/completions", prompt="hi", max_tokens=65)
        assert r.status_code == 400 and "max-tokens-limit" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "max_tokens"
        msgs = [{"role": "user", "content": "the lazy dog " * 40}]  # ~ 235 of 256 tokens
        r = post("/v1/chat/completions", messages=msgs, max_tokens=60)
        assert r.status_code == 400
        assert "context of 256 tokens" in r.json()["error"]["message"]
        r = post("/v1/chat/completions", messages=[{"role": "user", "content": "dog " * 400}])
        # past the run's training length: shortened as `gentune generate` shortens it, counted
        assert r.status_code == 200 and r.json()["gentune"]["prompts_shortened"] == 1
        assert post("/v1/chat/completions", messages=msgs).status_code == 200  # shrunk default
        assert post("/v1/completions", prompt="hi", presence_penalty=0.5).status_code == 400
        assert post("/v1/completions", prompt="hi", logprobs=3).status_code == 400
        assert post("/v1/completions", prompt="hi", n=2).status_code == 400  # greedy twice
        assert (
            post("/v1/completions", prompt="hi", n=2, temperature=0.7, stream=True).status_code
            == 400
        )
        assert post("/v1/completions", prompt="hi", echo=True).status_code == 400
        r = post("/v1/completions", prompt="hi", model="gpt-4")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = post(
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        )
        assert r.status_code == 400


def test_422_malformed_json_and_fields(loaded):
    with client(loaded) as c:

        def raw(path, data):
            return c.post(path, headers={**AUTH, "Content-Type": "application/json"}, content=data)

        r = raw("/v1/chat/completions", b'{"messages": [')
        assert r.status_code == 422 and "malformed JSON" in r.json()["error"]["message"]
        cases = [
            ("/v1/chat/completions", {}),  # messages missing
            ("/v1/chat/completions", {"messages": []}),
            ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}),
            ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
            ("/v1/chat/completions", {"messages": "hello"}),
            ("/v1/completions", {"prompt": "x", "max_tokens": "many"}),
            ("/v1/completions", {"prompt": "x", "max_tokens": 0}),
            ("/v1/completions", {"prompt": "x", "temperature": -1}),
            ("/v1/completions", {"prompt": "x", "top_p": 0}),
            ("/v1/completions", {"prompt": "x", "max_tokenz": 5}),  # a typo is not ignored
            ("/v1/completions", {"prompt": 5}),
        ]
        for path, body in cases:
            r = c.post(path, headers=AUTH, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokenz": 5})
        assert "max_tokenz: unknown field" in r.json()["error"]["message"]
        r = raw("/v1/completions", b"[1, 2]")
        assert r.status_code == 422
        assert c.get("/health").json()["status"] == "ok"  # still up


def test_messages_the_template_refuses_are_a_400(loaded):
    from dataclasses import replace

    from .conftest import CHATML

    strict = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('conversations start with the user') }}{% endif %}" + CHATML
    )
    picky = replace(loaded, template=replace(loaded.template, chat_template=strict))
    with client(picky) as c:
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                ]
            },
        )
        assert r.status_code == 400
        assert "conversations start with the user" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert r.status_code == 200


# ---- client input never gets a 500 --------------------------------------------------------
CHAT = [{"role": "user", "content": "hello world"}]


HOSTILE = [  # (route, body, status, field the answer must name)
    ("/v1/completions", {"prompt": PROMPT, "temperature": 1e-300}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 1e-9}, 400, "temperature"),
    ("/v1/completions", {"prompt": PROMPT, "seed": 2**64}, 422, "seed"),
    ("/v1/completions", {"prompt": PROMPT, "seed": -(2**70)}, 422, "seed"),
    ("/v1/completions", {"prompt": "\ud800 lone surrogate"}, 422, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "bad \udfff"]}, 422, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "stop": ["\ud83d"]}, 422, "stop"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x\udc00"}]},
        422,
        "messages",
    ),
    ("/v1/completions", {"prompt": PROMPT, "model": "\ud800"}, 422, "model"),
    ("/v1/completions", {"prompt": PROMPT, "user": "\ud800"}, 422, "user"),
    (
        "/v1/completions",
        {"prompt": PROMPT, "length_penalty": 1e308, "num_beams": 2},
        422,
        "length_penalty",
    ),
    (
        "/v1/completions",
        {"prompt": PROMPT, "repetition_penalty": 1e-300},
        422,
        "repetition_penalty",
    ),
    ("/v1/completions", {"prompt": PROMPT, "top_k": 2**80}, 422, "top_k"),
    (
        "/v1/completions",
        {"prompt": PROMPT, "no_repeat_ngram_size": 2**70},
        422,
        "no_repeat_ngram_size",
    ),
    ("/v1/completions", {"prompt": PROMPT, "stop": "x" * 10_000}, 400, "stop"),
    ("/v1/completions", {"prompt": [], "max_tokens": 3}, 422, "prompt"),
    ("/v1/completions", {"prompt": "", "raw": True, "max_tokens": 3}, 422, "prompt"),
    ("/v1/completions", {"prompt": [" ", ""], "raw": True, "max_tokens": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 2**70}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "n": 2, "num_beams": 2, "top_p": 1e-300}, 200, None),
]


@pytest.mark.parametrize("route,body,status,field", HOSTILE)
def test_hostile_values_are_4xx_naming_the_field(loaded, route, body, status, field):
    with client(loaded) as c:
        r = c.post(
            route,
            headers={**AUTH, "content-type": "application/json"},
            content=json.dumps(body).encode(),
        )
        assert r.status_code == status, r.text
        if field:
            err = r.json()["error"]
            assert field in f"{err['param']} {err['message']}", r.text


@pytest.mark.parametrize(
    "raw,status",
    [
        (b'{"prompt": "x", "temperature": NaN}', 422),
        (b'{"prompt": "x", "length_penalty": Infinity}', 422),
        (b'{"prompt": "x", "top_p": -Infinity}', 422),
        (b'{"prompt": "caf\xe9"}', 400),
    ],
)
def test_non_finite_numbers_and_bad_bytes_are_4xx(loaded, raw, status):
    with client(loaded) as c:
        r = c.post(
            "/v1/completions", headers={**AUTH, "content-type": "application/json"}, content=raw
        )
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]


def test_prompt_tokens_per_request_are_bounded(loaded):
    one = len(loaded.tokenizer(PROMPT)["input_ids"])
    with client(loaded, max_prompt_tokens=8 * one) as c:
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": [PROMPT] * 8, "max_tokens": 2})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "prompt" and "--max-prompt-tokens" in err["message"]
        assert f"limit of {8 * one}" in err["message"]
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": [PROMPT] * 2, "max_tokens": 2})
        assert r.status_code == 200, r.text
    with client(loaded, max_prompt_tokens=2 * one) as c:
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"messages": [{"role": "user", "content": PROMPT * 3}], "max_tokens": 2},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
