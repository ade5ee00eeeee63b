"""The second embedded model, Gemma-3-270M base (`gemma3-270m`): converted from its assembled
GGUF, no chat template (the plain template), LoRA lowers its loss and it learns to stop."""

import json

import pytest

from gentune.rundir import read_log

from .test_integration import assert_stops_with_eos, lora_on_titles

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    return lora_on_titles(tmp_path_factory.mktemp("gemma"), model="gemma3-270m", eval_generate=0)


def test_gemma3_loads_with_the_plain_template_and_lora_lowers_its_loss(gemma_run):
    from gentune.models.registry import EMBEDDED, is_converted

    run, _ = gemma_run
    assert "gemma3-270m" in EMBEDDED and is_converted("gemma3-270m")
    assert json.loads((run / "template.json").read_text())["style"] == "plain"
    losses = [float(r["loss"]) for r in read_log(run)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses


def test_gemma3_stops_with_eos_after_training(gemma_run):
    assert_stops_with_eos(*gemma_run)
