"""Kills anywhere (see tests/kill_harness.py): every writing command SIGKILLed at random
moments; after each kill nothing half-written is taken as complete, and the rerun (or
--resume) ends with the uninterrupted run's outputs. A modest count here; more by hand."""

import pytest

from .kill_harness import commands, exercise

KILLS = {"train": 2, "train-2proc": 1, "distill-labels": 2, "export": 2, "evaluate": 2}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KILLS))
def test_kills_leave_nothing_half_written_and_reruns_match(name, tiny_llama, trained_run, tmp_path):
    [cmd] = commands(tiny_llama, trained_run, tmp_path, {name})
    tally = exercise(cmd, KILLS[name], tmp_path, seed=1, log=lambda *_: None)
    assert tally.corrupt == [] and tally.differ == []
    assert tally.kills + tally.finished_first == KILLS[name]
