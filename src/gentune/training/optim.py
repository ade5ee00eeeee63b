"""The optimizer: AdamW over fp32 master weights (torch's fused kernel), or over bf16 weights
with stochastically rounded updates — half the memory of weights, gradients and moments.

Why bf16 weights need stochastic rounding: bf16 keeps 8 bits of mantissa, so an update smaller
than about 1/256 of a weight rounds back to the weight itself and is lost (at lr 1e-4 most
are). Rounding up with the probability of the remainder keeps every update in expectation
(Zamirai et al., "Revisiting BFloat16 Training", 2020; torchao's `_AdamW(bf16_stochastic_round)`
does the same). The moments are kept in bf16 rounded to nearest, as torchao does; all the
arithmetic is fp32. torchao's optimizer compiles one kernel per tensor shape (12 s on the first
step here) and then takes 0.9 s a step for SmolLM2-135M on 2 cores; this one runs eagerly in
blocks that stay in cache, and draws its random bits from a counter hash instead of torch's
sequential generator (0.58 s for 135M numbers): 0.3 s a step (bench/results/memory.md).

The random bits are a function of (seed, tensor, step, position), so a resumed run rounds
exactly as an uninterrupted one, with no generator state to save.

Not the default (`--master-weights bf16` asks for it): the peak RSS falls 30 % on ACLSum titles,
but quality fell on the dev rows (de-en BLEU -1.27), because the whole model then runs in bf16
— residual stream, norms, gradients; exact (Kahan-compensated) updates scored the same as
stochastic ones (bench/results/defaults.md).
"""

from __future__ import annotations

import torch

BLOCK = 1 << 18  # elements per block: a block's fp32 temporaries (1 MiB each) stay in cache
_MASK64 = (1 << 64) - 1


def weights_line(master: str) -> str:
    """What a run keeps in which precision, for training's log and `plan`."""
    if master == "bf16":
        return "weights, gradients and AdamW moments in bf16 (updates rounded stochastically)"
    return "master weights and optimizer in fp32"


def adamw(params: list, *, master: str = "fp32", seed: int = 0, **kw) -> torch.optim.Optimizer:
    """AdamW for `params`: master "bf16" → `StochasticAdamW` (bf16 weights rounded
    stochastically); else torch's, fused where torch has the kernel (CPU and CUDA): one pass
    over each tensor instead of a dozen, about 4x faster steps on a CPU."""
    if master == "bf16":
        return StochasticAdamW(params, seed=seed, **kw)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, **kw)


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit key from a counter."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


def random_bits(n: int, key: int, device=None) -> torch.Tensor:
    """n uniform 16-bit integers (int32) for a 64-bit key: murmur3's 32-bit finaliser over
    position + key, computed elementwise (parallel, unlike a sequential generator)."""
    h = torch.arange(n, dtype=torch.int32, device=device).add_(_signed32(key))
    h.bitwise_xor_(_signed32(key >> 32))
    h.bitwise_xor_((h >> 16).bitwise_and_(0xFFFF)).mul_(_signed32(0x85EBCA6B))
    h.bitwise_xor_((h >> 13).bitwise_and_(0x7FFFF)).mul_(_signed32(0xC2B2AE35))
    return h.bitwise_xor_((h >> 16).bitwise_and_(0xFFFF)).bitwise_and_(0xFFFF)


def round_to_bf16(x: torch.Tensor, key: int) -> torch.Tensor:
    """x (fp32) rounded to bf16 stochastically: up with the probability of the dropped low 16
    bits' share, so E[result] = x. Modifies x's bits in place."""
    bits = x.view(torch.int32)
    bits.add_(random_bits(bits.numel(), key, x.device).view(bits.shape))
    return bits.bitwise_and_(-65536).view(torch.float32).bfloat16()  # exact: low bits are 0


class StochasticAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments) for bf16 parameters, whose
    updates are rounded stochastically; fp32 parameters (e.g. LoRA adapters kept in fp32) are
    updated in fp32. State: step, exp_avg and exp_avg_sq (in the parameter's dtype)."""

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, seed: int = 0
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.seed = seed

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0  # the parameter's place over all groups: part of its random key
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = int(state["step"])
                key = _mix((self.seed << 40) ^ (index << 24) ^ t)
                self._update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], t, key, group)
        return loss

    @staticmethod
    def _update(p, grad, exp_avg, exp_avg_sq, t: int, key: int, group: dict) -> None:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        decay = 1 - lr * group["weight_decay"]
        step_size = lr / (1 - beta1**t)
        root_bc2 = (1 - beta2**t) ** 0.5
        flat = [x.view(-1) for x in (p, grad, exp_avg, exp_avg_sq)]
        for block, start in enumerate(range(0, p.numel(), BLOCK)):
            w, g, m, v = (x[start : start + BLOCK] for x in flat)
            g32 = g.float()
            m32 = m.float().lerp_(g32, 1 - beta1)
            v32 = v.float().mul_(beta2).addcmul_(g32, g32, value=1 - beta2)
            m.copy_(m32)
            v.copy_(v32)
            w32 = w.float().mul_(decay) if decay != 1 else w.float()
            w32.addcdiv_(m32, v32.sqrt().div_(root_bc2).add_(group["eps"]), value=-step_size)
            if w.dtype == torch.bfloat16:
                w.copy_(round_to_bf16(w32, _mix(key + block)))
            else:
                w.copy_(w32)
