"""Several processes on CPU (gloo): data parallel and FSDP2 with the same global batch as 1
process follow the same loss curve; checkpoints resume on another number of processes after a
SIGKILL mid-training or mid-save; two single-process "nodes" joined by c10d rendezvous; a
process that dies or hangs ends the run with one line; DeepSpeed and FSDP1 are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gentune import checkpoint
from gentune.rundir import read_log

from .conftest import _data

pytestmark = pytest.mark.slow  # subprocesses / a browser

ROOT = Path(__file__).resolve().parent.parent


def _args(model, data, out, *extra, method="lora"):
    return [
        "-m",
        "gentune",
        "train",
        "--task",
        "summarization",
        "--method",
        method,
        "--data",
        str(data),
        "--model",
        model,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--lr",
        "5e-3",
        "--max-steps",
        "8",
        "--lora-dropout",
        "0",
        "--eval-every",
        "4",
        "--eval-generate",
        "0",
        "--save-every",
        "4",
        "--no-progress",
        "--no-tensorboard",
        # the equality of 2 processes and 1 is a property of the arithmetic in fp32; bf16
        # autocast rounds differently for micro-batches of other shapes
        "--precision",
        "fp32",
        # and of one optimizer: FSDP's keeps fp32 moments, where --moments auto would keep a
        # one-process full run's in bf16 (recipe.choose_moments)
        "--moments",
        "fp32",
        *extra,
    ]


ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
TWO = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _train(launcher, model, data, out, *extra, method="lora", env=None, code=0):
    proc = subprocess.run(
        [sys.executable, *launcher, *_args(model, data, out, *extra, method=method)],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _same_curve(a, b, rel=1e-4, steps=None):
    la, lb = read_log(a), read_log(b)
    assert len(la) == len(lb) == 8
    for x, y in list(zip(la, lb))[-(steps or 8) :]:
        assert x["target_tokens"] == y["target_tokens"]
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), rel=rel)
        assert float(x["grad_norm"]) == pytest.approx(float(y["grad_norm"]), rel=rel)


TIMING = ("elapsed_s", "tokens_per_s", "target_tokens_per_s", "peak_memory_mb")


def _weights(run):
    name = "adapter_model" if (run / "model" / "adapter_config.json").exists() else "model"
    return load_file(run / "model" / f"{name}.safetensors")


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)


def test_two_processes_follow_the_one_process_loss_curve(tiny_llama, tmp_path):
    data = _data(tmp_path, n=48)
    _train([], tiny_llama, data, tmp_path / "one")
    out = _train(
        TWO,
        tiny_llama,
        data,
        tmp_path / "two",
    )
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert a["target_tokens"] == b["target_tokens"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-3)
    wa = load_file(tmp_path / "one" / "model" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["stats"]["processes"] == 2
    # logs and checkpoints came from one process only
    assert out.count("saved run to") == 1
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "step-00000004",
        "step-00000008",
    ]


def test_ddp_with_bf16_moments_keeps_them_and_follows_one_process(tiny_llama, tmp_path):
    """Several processes without --fsdp take `--moments auto`'s CPU choice, bf16 moments: each
    replica rounds them with the same random bits (a function of seed, tensor, step and
    position), so two processes keep bf16 moments in their checkpoint and follow the
    one-process run to the rounding of their all-reduced gradients."""
    data = _data(tmp_path, n=48)
    _train([], tiny_llama, data, tmp_path / "one", "--moments", "bf16", method="full")
    out = _train(TWO, tiny_llama, data, tmp_path / "two", "--moments", "bf16", method="full")
    assert "AdamW moments bf16" in out
    shards = {}
    for f in (tmp_path / "two" / "checkpoints" / "step-00000008" / "shards").glob("*"):
        shards |= load_file(f)
    moments = {v.dtype for k, v in shards.items() if k.endswith(("exp_avg", "exp_avg_sq"))}
    assert moments == {torch.bfloat16}
    _same_curve(tmp_path / "one", tmp_path / "two", rel=1e-3)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-2, atol=1e-4)


@pytest.fixture(scope="module")
def single(tiny_llama, tmp_path_factory):
    """{method: an uninterrupted 1-process run}, and the data."""
    tmp = tmp_path_factory.mktemp("single")
    data = _data(tmp, n=48)
    runs = {}
    for method in ("full", "lora"):
        _train([], tiny_llama, data, tmp / method, method=method)
        runs[method] = tmp / method
    return data, runs


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_two_processes_equal_one(tiny_llama, single, tmp_path, method):
    """FSDP2 over 2 processes, same global batch (two micro-batches a step, so gradient sync
    is off for the first): the 1-process losses, gradient norms and final weights."""
    data, one = single
    out = _train(TWO, tiny_llama, data, tmp_path / "fsdp", "--fsdp", method=method)
    assert "FSDP2 over 2 processes: 2 layers sharded" in out
    _same_curve(one[method], tmp_path / "fsdp")
    _same_weights(one[method], tmp_path / "fsdp")
    # each process wrote its own shards of every checkpoint
    shards = sorted(
        p.name for p in (tmp_path / "fsdp" / "checkpoints" / "step-00000008" / "shards").iterdir()
    )
    assert len(shards) == 2 and all(n.endswith(".safetensors") for n in shards)


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, single, tmp_path_factory):
    """{kind: an uninterrupted 2-process run} (full fine-tuning), DDP and FSDP."""
    data, _ = single
    tmp = tmp_path_factory.mktemp("two")
    for kind, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        _train(TWO, tiny_llama, data, tmp / kind, *extra, method="full")
    return {kind: tmp / kind for kind in ("ddp", "fsdp")}


@pytest.mark.parametrize(
    "kind,fault", [("fsdp", "kill-after:5"), ("fsdp", "kill-in-save:8"), ("ddp", "kill-after:5")]
)
def test_sigkill_then_resume_on_two_and_on_one_process(
    tiny_llama, single, uninterrupted, tmp_path, kind, fault
):
    """A 2-process run killed mid-training or mid-save resumes from its last complete
    checkpoint (step 4) with 2 processes — bit for bit the uninterrupted 2-process run — and
    with 1: every step after it is the uninterrupted run's (to float rounding)."""
    import shutil

    data, one = single
    ref = uninterrupted[kind]
    extra = ["--fsdp"] if kind == "fsdp" else []
    run = tmp_path / "run"
    _train(TWO, tiny_llama, data, run, *extra, method="full", env={"GENTUNE_FAULT": fault},
           code=1)  # fmt: skip
    assert checkpoint.latest(run).name == "step-00000004"
    shutil.copytree(run, tmp_path / "again")
    for launcher, where in ((TWO, run), ([], tmp_path / "again")):
        out = _train(launcher, tiny_llama, data, where, *extra, "--resume", method="full")
        assert "resumed from" in out and "(step 4)" in out
        _same_curve(one["full"], where, rel=1e-5)
        _same_weights(one["full"], where)

    # on the same number of processes: exactly the uninterrupted run
    def untimed(r):
        return [{k: v for k, v in row.items() if k not in TIMING} for row in read_log(r)]

    assert untimed(run) == untimed(ref)
    a, b = _weights(run), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_resume_from_one_process_on_two(tiny_llama, single, tmp_path, kind):
    """A 1-process run killed after step 5 continues on 2 processes (DDP, or FSDP2 reading its
    unsharded checkpoint in slices): the 1-process run's steps."""
    data, one = single
    run = tmp_path / "run"
    _train([], tiny_llama, data, run, method="full", env={"GENTUNE_FAULT": "kill-after:5"},
           code=-9)  # fmt: skip
    extra = ["--fsdp"] if kind == "fsdp" else []
    out = _train(TWO, tiny_llama, data, run, *extra, "--resume", method="full")
    assert "(step 4)" in out and ("FSDP2 over 2 processes" in out) == (kind == "fsdp")
    _same_curve(one["full"], run, rel=1e-5)
    _same_weights(one["full"], run)
    assert json.loads((run / "manifest.json").read_text())["stats"]["processes"] == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(model, data, out, *extra, faults=("", ""), grace=None):
    """Two 'nodes' of one process each, joined by c10d rendezvous on 127.0.0.1: [(exit code,
    output)]. With `grace`, once one node has ended the other gets that many seconds, then
    every process of both (launchers and their workers, which torchrun starts in sessions of
    their own) is killed: a process that hangs by itself is not its launcher's to end."""
    import tempfile
    import time

    import psutil

    port = _free_port()
    procs, logs = [], []
    for node in range(2):
        launcher = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                    "--rdzv-id", "gentune-test", "--max-restarts", "0"]  # fmt: skip
        log = tempfile.TemporaryFile("w+")  # a file, not a pipe: no read waits for a worker
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, *launcher, *_args(model, data, out, *extra, method="full")],
                env={**ENV, **({"GENTUNE_FAULT": faults[node]} if faults[node] else {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.time() + 600
    family: dict[int, psutil.Process] = {}  # every launcher's descendant seen, by pid
    ended = False
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        for p in procs:
            try:
                family.update({c.pid: c for c in psutil.Process(p.pid).children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        if grace is not None and not ended and any(p.poll() is not None for p in procs):
            ended = True  # one node is done: the other gets `grace` seconds from now
            deadline = min(deadline, time.time() + grace)
        time.sleep(0.5)
    for child in family.values():  # what is left: a hung worker, its launcher
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
    done = []
    for p, log in zip(procs, logs, strict=True):
        code = p.wait(timeout=60)
        log.seek(0)
        done.append((code, log.read()))
        log.close()
    return done


def test_two_nodes_by_c10d_rendezvous_equal_two_workers_of_one(tiny_llama, single, tmp_path):
    data, _ = single
    _train(TWO, tiny_llama, data, tmp_path / "workers", method="full")
    done = _nodes(tiny_llama, data, tmp_path / "nodes")
    assert [code for code, _ in done] == [0, 0], done[0][1][-2000:] + done[1][1][-2000:]
    # one process (rank 0) wrote the logs and the run directory
    assert sum(out.count("saved run to") for _, out in done) == 1
    _same_curve(tmp_path / "workers", tmp_path / "nodes", rel=1e-6)
    _same_weights(tmp_path / "workers", tmp_path / "nodes")


@pytest.mark.parametrize("fault", ["kill-after:3@1", "hang-after:3@1"])
def test_a_process_that_dies_or_hangs_ends_the_run_with_one_line(
    tiny_llama, single, tmp_path, fault
):
    """Rank 1 is SIGKILLed (or stops answering) after step 3: rank 0 stops with a line naming
    what happened (after --dist-timeout when nothing closes the connection) instead of waiting
    for ever, and its launcher ends."""
    import time

    data, _ = single
    start = time.time()
    done = _nodes(tiny_llama, data, tmp_path / "run", "--dist-timeout", "20",
                  faults=(fault, fault), grace=30)  # fmt: skip
    assert time.time() - start < 300
    said = [out for _, out in done if "another process of this run stopped" in out]
    assert len(said) == 1, "".join(out[-2000:] for _, out in done)
    assert "process 0: another process of this run stopped or did not answer within " \
           "--dist-timeout 20 s" in said[0]  # fmt: skip
    assert "Traceback" not in said[0].split("another process of this run")[0].splitlines()[-1]
    assert all(code != 0 for code, _ in done)
    if fault.startswith("hang"):  # nothing closed the connection: the timeout ended it
        assert time.time() - start > 20


@pytest.mark.parametrize(
    "env,says",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed, which gentune does not support"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "set fsdp_version: 2"),
    ],
)
def test_deepspeed_and_fsdp1_are_refused_naming_fsdp2(
    tiny_llama, tmp_path, monkeypatch, capsys, env, says
):
    from gentune.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(_args(tiny_llama, _data(tmp_path), tmp_path / "run")[2:])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "FSDP2" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_fsdp_validation_generates_and_keeps_the_best_checkpoint(tiny_llama, single, tmp_path):
    """Generation with a sharded model needs every process in each forward pass: all of them
    generate the same rows (and stop at the same batch); the best checkpoint is loaded back
    from its shards and gathered into the run's model."""
    data, _ = single
    out = _train(TWO, tiny_llama, data, tmp_path / "run", "--fsdp", "--eval-generate", "4",
                 "--metric", "rougeL")  # fmt: skip
    assert out.count("rougeL") >= 2 and "saved run to" in out
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    best = manifest["stats"]["best_checkpoint"]
    saved = checkpoint.saved_weights(tmp_path / "run" / best)
    final = _weights(tmp_path / "run")
    assert saved and all(torch.equal(final[k.replace(".default", "")], v) for k, v in saved.items())


def _accelerate_config(example: str, path: Path, **changes) -> Path:
    """One of examples/accelerate/*.yaml, for this machine: CPUs, 2 processes, 127.0.0.1."""
    import yaml

    config = yaml.safe_load((ROOT / "examples" / "accelerate" / example).read_text())
    config.update(use_cpu=True, num_processes=2, **changes)
    path.write_text(yaml.safe_dump(config))
    return path


def test_accelerate_fsdp2_configs_on_one_machine_and_on_two_nodes(tiny_llama, single, tmp_path):
    """The shipped accelerate configs, run as CPU processes: FSDP2 on one machine, and over two
    single-process 'nodes' (machine_rank 0 and 1 on 127.0.0.1): the 1-process loss curve."""
    data, one = single
    config = _accelerate_config("fsdp2.yaml", tmp_path / "one-machine.yaml")
    launch = ["-m", "accelerate.commands.launch", "--config_file", str(config)]
    out = _train(launch, tiny_llama, data, tmp_path / "one-machine", method="full")
    assert "FSDP2 over 2 processes" in out
    _same_curve(one["full"], tmp_path / "one-machine")
    port = _free_port()
    procs = []
    for rank in range(2):
        config = _accelerate_config(
            "fsdp2-nodes.yaml",
            tmp_path / f"node{rank}.yaml",
            machine_rank=rank,
            main_process_ip="127.0.0.1",
            main_process_port=port,
        )
        launch = ["-m", "accelerate.commands.launch", "--config_file", str(config)]
        args = _args(tiny_llama, data, tmp_path / "nodes", method="full")
        procs.append(
            subprocess.Popen(
                [sys.executable, *launch, *args],
                env=ENV,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    done = [(p.wait(timeout=600), p.stdout.read()) for p in procs]
    assert [code for code, _ in done] == [0, 0], done[0][1][-2000:] + done[1][1][-2000:]
    text = "".join(out for _, out in done)
    assert text.count("saved run to") == 1 and "FSDP2 over 2 processes" in text
    _same_curve(one["full"], tmp_path / "nodes")


def test_fsdp_shards_an_encoder_decoder_too(single, tmp_path):
    """A tiny T5 (encoder and decoder blocks sharded one by one): 2 FSDP processes give the
    1-process loss curve."""
    from .seq2seq_models import build_seq2seq

    data, _ = single
    t5 = str(build_seq2seq(tmp_path / "t5", "t5", varied=False))
    _train([], t5, data, tmp_path / "one", method="full")
    out = _train(TWO, t5, data, tmp_path / "two", "--fsdp", method="full")
    assert "FSDP2 over 2 processes: 4 layers sharded" in out
    _same_curve(tmp_path / "one", tmp_path / "two")
