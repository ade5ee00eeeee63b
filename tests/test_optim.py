"""bf16 master weights (--master-weights bf16) and bf16 moments (--moments bf16): StochasticAdamW is AdamW (exactly, on fp32),
keeps updates that plain bf16 AdamW loses, is deterministic and resumes exactly; a bf16 run
learns as fast as fp32's, saves bf16 weights and resumes bit for bit."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from gentune.config import TrainConfig
from gentune.errors import ConfigError
from gentune.training.optim import StochasticAdamW, adamw, random_bits, round_to_bf16

from .conftest import _data
from .test_checkpoint import _args, _curve, _run


def _steps(opt, param, grads):
    for g in grads:
        param.grad = g.clone()
        opt.step()


def test_on_fp32_weights_it_is_torch_adamw_exactly():
    """fp32 weights (and moments) go through torch's fused kernel, block by block: the same
    numbers as torch's fused AdamW, which gentune uses where the moments are fp32."""
    torch.manual_seed(0)
    start = torch.randn(300, 70)
    grads = [torch.randn_like(start) for _ in range(6)]
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    _steps(torch.optim.AdamW([a], lr=3e-3, weight_decay=0.1, fused=True), a, grads)
    _steps(StochasticAdamW([b], lr=3e-3, weight_decay=0.1), b, grads)
    assert torch.equal(a, b)
    assert torch.equal(b.grad, grads[-1])  # the gradient is read, not changed


def test_bf16_updates_below_its_precision_are_kept_in_expectation():
    """bf16 has 8 mantissa bits: -1e-4 steps on weights of 1.0 round back to 1.0 with plain
    AdamW (every update lost); stochastic rounding moves the mean by the updates' sum."""
    n = 1 << 18
    plain = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    rounded = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    ones = [torch.ones(n, dtype=torch.bfloat16)] * 20
    _steps(torch.optim.AdamW([plain], lr=1e-4), plain, ones)
    _steps(StochasticAdamW([rounded], lr=1e-4), rounded, ones)
    assert torch.equal(plain, torch.ones_like(plain))
    assert rounded.dtype == torch.bfloat16
    assert abs(rounded.float().mean().item() - (1 - 20 * 1e-4)) < 2e-5
    assert len(rounded.unique()) > 1  # rounded up or down, element by element


def test_stochastic_rounding_is_unbiased_and_on_the_bf16_grid():
    x = torch.full((1 << 20,), 1.0 + 2**-10)  # a quarter of the way to the next bf16 (1+2**-7)
    y = round_to_bf16(x.clone(), key=7)
    assert set(y.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs((y.float() == 1.0 + 2**-7).float().mean().item() - 0.125) < 0.002
    bits = random_bits(1 << 20, key=3).float() / 65536
    assert abs(bits.mean().item() - 0.5) < 0.002 and abs(bits.std().item() - 0.2887) < 0.002
    assert not torch.equal(random_bits(1000, 1), random_bits(1000, 2))


def test_it_is_deterministic_by_seed_and_resumes_exactly_from_its_state():
    torch.manual_seed(1)
    start = (torch.randn(64, 64) * 0.05).bfloat16()
    grads = [(torch.randn(64, 64) * 1e-2).bfloat16() for _ in range(6)]

    def run(seed, grads, state=None, weights=start):
        p = torch.nn.Parameter(weights.clone())
        opt = StochasticAdamW([p], lr=1e-4, seed=seed)
        if state:
            opt.load_state_dict(state)
        _steps(opt, p, grads)
        return p, opt

    whole, _ = run(0, grads)
    assert torch.equal(whole, run(0, grads)[0])
    assert not torch.equal(whole, run(1, grads)[0])
    half, opt = run(0, grads[:3])
    resumed, _ = run(0, grads[3:], state=opt.state_dict(), weights=half.detach())
    assert torch.equal(whole, resumed)


def test_the_table_bits_are_uniform_at_each_position_from_one_step_to_the_next():
    """The optimizer's blocks draw a fixed table XOR a key's bits: one position over 4096 keys
    (steps) must be as uniform as 4096 draws, and no two positions move in step."""
    draws = torch.stack([random_bits(64, key) for key in range(4096)]).float() / 65536  # (4096, 64)
    assert (draws.mean(0) - 0.5).abs().max() < 0.03
    assert (draws.std(0) - 0.2887).abs().max() < 0.02
    assert len({tuple(c.tolist()) for c in draws.T}) == 64  # positions differ


def test_bf16_moments_with_fp32_weights_track_adamw_and_let_the_second_moment_decay():
    torch.manual_seed(0)
    start = torch.randn(512, 512)
    grads = [torch.randn_like(start) * 1e-2 for _ in range(30)]
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    _steps(torch.optim.AdamW([a], lr=1e-3, weight_decay=0.1), a, grads)
    opt = adamw([b], moments="bf16", lr=1e-3, weight_decay=0.1)
    _steps(opt, b, grads)
    state = opt.state[b]
    assert b.dtype == torch.float32 and state["exp_avg"].dtype == torch.bfloat16
    assert state["exp_avg_sq"].dtype == torch.bfloat16
    moved = (a - start).abs().mean()  # 30 updates of ~1e-3
    assert (a - b).abs().mean() < 0.02 * moved  # the same path, to bf16's moment precision
    # after the gradients stop, exp_avg_sq decays by beta2 a step; rounded to nearest, a 0.1 %
    # decay is below bf16's resolution and it would never move
    before = state["exp_avg_sq"].float().mean().item()
    _steps(opt, b, [torch.zeros_like(start)] * 200)
    after = state["exp_avg_sq"].float().mean().item()
    assert abs(after / before - 0.999**200) < 0.01, (after / before, 0.999**200)


def test_the_optimizer_follows_the_master_weights_and_moments():
    one = [torch.nn.Parameter(torch.ones(2))]
    assert isinstance(adamw(one, master="bf16"), StochasticAdamW)
    assert isinstance(adamw(one, moments="bf16"), StochasticAdamW)
    assert type(adamw(one)) is torch.optim.AdamW and adamw(one).defaults["fused"]
    assert type(adamw(one, moments="fp32")) is torch.optim.AdamW


def test_bf16_master_weights_with_fsdp_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="master_weights=bf16 with --fsdp"):
        TrainConfig(task="summarization", data="d.jsonl", out="o", master_weights="bf16", fsdp=True)
    with pytest.raises(ConfigError, match="moments=bf16 with --fsdp"):
        TrainConfig(task="summarization", data="d.jsonl", out="o", moments="bf16", fsdp=True)


def _full_bf16(model, data, out, *extra):
    return _args(model, data, out, "--method", "full", "--master-weights", "bf16", *extra)


@pytest.mark.slow
def test_a_bf16_run_trains_saves_bf16_and_resumes_bit_for_bit(tiny_llama, tmp_path):
    data = _data(tmp_path)
    code, out = _run(_full_bf16(tiny_llama, data, tmp_path / "ref"))
    assert code == 0, out
    assert "weights, gradients and AdamW moments in bf16" in out
    curve = _curve(tmp_path / "ref")
    code, out = _run(_full_bf16(tiny_llama, data, tmp_path / "fp32", "--master-weights", "fp32"))
    assert code == 0, out
    fp32 = [float(r["loss"]) for r in _curve(tmp_path / "fp32")]
    bf16 = [float(r["loss"]) for r in curve]
    assert bf16[-1] < 0.7 * bf16[0]  # it learns, as fast as with fp32 master weights
    assert all(abs(a - b) < 0.01 * a for a, b in zip(fp32, bf16, strict=True))
    weights = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    run = tmp_path / "run"
    code, out = _run(_full_bf16(tiny_llama, data, run), {"GENTUNE_FAULT": "kill-after:17"})
    assert code == -signal.SIGKILL, out
    code, out = _run(_full_bf16(tiny_llama, data, run, "--resume", "--master-weights", "fp32"))
    assert code != 0 and "master_weights" in out.strip().splitlines()[-1], out  # (settings)
    code, out = _run(_full_bf16(tiny_llama, data, run, "--resume"))
    assert code == 0 and "resumed from" in out, out
    assert _curve(run) == curve
    resumed = load_file(run / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


@pytest.mark.slow
def test_a_default_full_run_on_a_cpu_keeps_bf16_moments_and_resumes_bit_for_bit(
    tiny_llama, tmp_path
):
    """The default (recipe.choose_moments): fp32 weights, AdamW's moments in bf16 — in the
    checkpoint too — and a run killed mid-way resumes to the uninterrupted one's weights."""
    data = _data(tmp_path)
    full = ("--method", "full")
    code, out = _run(_args(tiny_llama, data, tmp_path / "ref", *full))
    assert code == 0 and "master weights fp32, AdamW moments bf16" in out, out
    shards = {}
    for file in sorted((tmp_path / "ref" / "checkpoints").glob("step-*/shards/*.safetensors")):
        shards |= load_file(file)
    moments = {k: v.dtype for k, v in shards.items() if k.endswith(("exp_avg", "exp_avg_sq"))}
    weights = {v.dtype for k, v in shards.items() if k.startswith("model.")}
    assert moments and set(moments.values()) == {torch.bfloat16} and weights == {torch.float32}
    run = tmp_path / "run"
    code, out = _run(_args(tiny_llama, data, run, *full), {"GENTUNE_FAULT": "kill-after:17"})
    assert code == -signal.SIGKILL, out
    code, out = _run(_args(tiny_llama, data, run, *full, "--resume"))
    assert code == 0 and "resumed from" in out, out
    assert _curve(run) == _curve(tmp_path / "ref")
    ref = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    resumed = load_file(run / "model" / "model.safetensors")
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)


def test_a_resume_in_other_moments_is_warned_about_and_old_checkpoints_read_as_their_weights(
    tmp_path,
):
    """`--moments auto` may decide otherwise on another machine (a GPU) or version: the resume
    says so, as for precision; a checkpoint written before moments were recorded had them as
    its master weights (fp32: AdamW's own)."""
    from gentune import checkpoint
    from gentune.training.train import _state

    lines: list[str] = []
    cfg = TrainConfig(task="summarization", data="d.jsonl", out="o", moments="bf16")
    cases = (({"moments": "bf16"}, False), ({"moments": "fp32"}, True), ({}, True))
    for i, (saved, warned) in enumerate(cases):
        ckpt = tmp_path / f"step-{i}"
        ckpt.mkdir()
        (ckpt / "state.json").write_text(json.dumps({"step": 3, "precision": "bf16", **saved}))
        lines.clear()
        state = _state(ckpt, {}, "bf16", cfg, lines.append)
        assert state.moments == "bf16" and state.step == 3
        assert bool(lines) == warned, (saved, lines)
        if warned:
            assert "give --moments fp32 to keep them" in lines[0]
    new = _state(None, {}, "bf16", cfg, lines.append)
    assert new.moments == "bf16" and isinstance(new, checkpoint.State)
