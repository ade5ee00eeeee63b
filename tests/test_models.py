"""Models: resolving names, directories and hub ids; the offline message; the loss over target positions."""

import pytest
import torch

from gentune.data.encode import collate
from gentune.models.loss import token_nll

from .conftest import _examples


def test_unknown_model_offline_message():
    from gentune.errors import ModelError
    from gentune.models.load import load_model

    with pytest.raises(ModelError, match="smollm2-135m.*local model directory"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelError, match="no such directory"):
        load_model("./missing/model/dir")


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_selective_logits_equal_full_logits(request, fixture):
    model, tok, exs = _examples(request.getfixturevalue(fixture))
    batch = collate(exs, tok.pad_token_id)
    nll, n = token_nll(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-4)


def test_every_family_is_named_by_a_transformers_model_type():
    """The table is keyed by config.model_type: a misspelt key (it was "m2m100" for
    "m2m_100") silently gives that family no quirks at all."""
    from transformers import CONFIG_MAPPING

    from gentune.models.families import FAMILIES

    assert [k for k in FAMILIES if k not in CONFIG_MAPPING] == []


def test_loading_on_a_gpu_keeps_attention_off_cudnn(monkeypatch, tiny_llama):
    """cuDNN attention builds a plan for every new shape (seconds per new batch length or
    decoding step on an H200): a model loaded where there is a GPU turns it off."""
    from gentune.models.load import load_model

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        load_model(tiny_llama)
        assert torch.backends.cuda.cudnn_sdp_enabled()  # a CPU leaves the setting alone
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        load_model(tiny_llama)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
