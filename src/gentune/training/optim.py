"""The optimizer: AdamW over fp32 master weights (torch's fused kernel, or `StochasticAdamW`
with its moments in bf16: the default for full fine-tuning on a CPU, recipe.choose_moments),
or over bf16 weights with stochastically rounded updates — half the memory of weights,
gradients and moments.

Why bf16 weights need stochastic rounding: bf16 keeps 8 bits of mantissa, so an update smaller
than about 1/256 of a weight rounds back to the weight itself and is lost (at lr 1e-4 most
are). Rounding up with the probability of the remainder keeps every update in expectation
(Zamirai et al., "Revisiting BFloat16 Training", 2020; torchao's `_AdamW(bf16_stochastic_round)`
does the same). The moments are kept in bf16 too: the first rounded to nearest (as torchao
does), the second stochastically (see `StochasticAdamW`); all the arithmetic is fp32.
torchao's optimizer compiles one kernel per tensor shape (12 s on the first step here) and then
takes 0.9 s a step for SmolLM2-135M on 2 cores; this one runs eagerly in blocks that stay in
cache (fp32 weights: torch's fused AdamW kernel on each block's fp32 copies of the moments)
and draws its random bits from a hashed table XOR a per-block key instead of torch's
sequential generator (0.58 s for 135M numbers): 0.39 s a step with bf16 weights, 0.17 s with
fp32 weights and bf16 moments, against 0.08 s for torch's fused fp32 AdamW.

The random bits are a function of (seed, tensor, step, position), so a resumed run rounds
exactly as an uninterrupted one, with no generator state to save.

bf16 weights are not the default (`--master-weights bf16` asks for them): the peak RSS falls 30 % on ACLSum titles,
but quality fell on the dev rows (de-en BLEU -1.27), because the whole model then runs in bf16
— residual stream, norms, gradients; exact (Kahan-compensated) updates scored the same as
stochastic ones (bench/results/defaults.md).
"""

from __future__ import annotations

import torch
from torch.optim.adamw import adamw as _torch_adamw

BLOCK = 1 << 18  # elements per block: a block's fp32 temporaries (1 MiB each) stay in cache
_MASK64 = (1 << 64) - 1
_V_KEY = 0x5BD1E995  # exp_avg_sq's rounding draws other bits than the weights'
_TABLE_KEY = 0x2545F4914F6CDD1D  # random_bits' table: a constant, so runs and resumes agree
_TABLES: dict = {}  # device -> that table


def moments_dtype(master: str, moments: str) -> torch.dtype:
    """AdamW's moments' dtype: `moments` as asked; "auto" keeps them in the weights' dtype."""
    if moments == "auto":
        moments = master
    return torch.bfloat16 if moments == "bf16" else torch.float32


def weights_line(master: str, moments: str = "auto") -> str:
    """What a run keeps in which precision, for training's log and `plan`."""
    if master == "bf16":
        return "weights, gradients and AdamW moments in bf16 (updates rounded stochastically)"
    if moments_dtype(master, moments) == torch.bfloat16:
        return "master weights fp32, AdamW moments bf16 (the second rounded stochastically)"
    return "master weights and optimizer in fp32"


def adamw(
    params: list, *, master: str = "fp32", moments: str = "auto", seed: int = 0, **kw
) -> torch.optim.Optimizer:
    """AdamW for `params`: bf16 master weights or bf16 moments → `StochasticAdamW`; else
    torch's, fused where torch has the kernel (CPU and CUDA): one pass over each tensor instead
    of a dozen, about 4x faster steps on a CPU."""
    state = moments_dtype(master, moments)
    if master == "bf16" or state == torch.bfloat16:
        return StochasticAdamW(params, seed=seed, moments=state, **kw)
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
    """n uniform 16-bit integers (int32) for a 64-bit key. Up to BLOCK of them (a block of the
    optimizer): a fixed table of hashed bits XOR the key's own 16 hashed bits — one pass, where
    hashing every position costs eight; at each position the bits are a bijection of the key's,
    so they are uniform and independent from one key (step) to the next. More: `hashed_bits`."""
    if n > BLOCK:
        return hashed_bits(n, key, device)
    table = _TABLES.get(device)
    if table is None:
        table = _TABLES.setdefault(device, hashed_bits(BLOCK, _TABLE_KEY, device))
    return table[:n].bitwise_xor(_mix(key) & 0xFFFF)


def hashed_bits(n: int, key: int, device=None) -> torch.Tensor:
    """n uniform 16-bit integers (int32) for a 64-bit key: murmur3's 32-bit finaliser over
    position + key, computed elementwise (parallel, unlike a sequential generator)."""
    h = torch.arange(n, dtype=torch.int32, device=device).add_(_signed32(key))
    h.bitwise_xor_(_signed32(key >> 32))
    h.bitwise_xor_((h >> 16).bitwise_and_(0xFFFF)).mul_(_signed32(0x85EBCA6B))
    h.bitwise_xor_((h >> 13).bitwise_and_(0x7FFFF)).mul_(_signed32(0xC2B2AE35))
    return h.bitwise_xor_((h >> 16).bitwise_and_(0xFFFF)).bitwise_and_(0xFFFF)


def round_to_bf16(x: torch.Tensor, key: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (fp32) rounded to bf16 stochastically: up with the probability of the dropped low 16
    bits' share, so E[result] = x; into `out` where given. Modifies x's bits in place."""
    bits = x.view(torch.int32)
    bits.add_(random_bits(bits.numel(), key, x.device).view(bits.shape))
    rounded = bits.bitwise_and_(-65536).view(torch.float32)  # exact in bf16: low bits are 0
    return rounded.bfloat16() if out is None else out.copy_(rounded)


class StochasticAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments) for bf16 parameters, whose
    updates are rounded stochastically; fp32 parameters (fp32 master weights, LoRA adapters)
    are updated in fp32. State: step, exp_avg and exp_avg_sq, in `moments` (None: the
    parameter's dtype).

    bf16 moments: exp_avg moves by (1 - beta1) = 10 % of itself a step, far above bf16's
    resolution, and is rounded to nearest; exp_avg_sq moves by 0.1 % (beta2 = 0.999), below
    it — rounded to nearest it could never decay — so it is rounded stochastically."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        *,
        seed: int = 0,
        moments: torch.dtype | None = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.seed = seed
        self.moments = moments

    def load_state_dict(self, state_dict) -> None:
        """torch's loader casts the moments to their parameter's dtype (fp32 master weights:
        fp32); they go back to this optimizer's (bf16 → fp32 → bf16 is exact), or a resumed
        run would keep fp32 moments and part from the uninterrupted one."""
        super().load_state_dict(state_dict)
        if self.moments is not None:
            for state in self.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key] = state[key].to(self.moments)

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
                    dtype = self.moments or p.dtype
                    state["exp_avg"] = torch.zeros_like(p, dtype=dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype)
                state["step"] += 1
                t = int(state["step"])
                key = _mix((self.seed << 40) ^ (index << 24) ^ t)
                self._update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], t, key, group)
        return loss

    @staticmethod
    def _update(p, grad, exp_avg, exp_avg_sq, t: int, key: int, group: dict) -> None:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        fused = (  # torch's fused kernel: CPU and CUDA
            p.dtype == grad.dtype == torch.float32 and p.device.type in ("cpu", "cuda")
        )
        count = torch.tensor(float(t - 1), device=p.device)  # the fused step counts it up to t
        flat = [x.view(-1) for x in (p, grad, exp_avg, exp_avg_sq)]
        for block, start in enumerate(range(0, p.numel(), BLOCK)):
            w, g, m, v = (x[start : start + BLOCK] for x in flat)
            m32, v32 = m.float(), v.float()  # (the moments themselves where they are fp32)
            if fused:  # fp32 weights: torch's fused AdamW on the block, one pass
                count.fill_(t - 1)
                _torch_adamw(
                    [w], [g], [m32], [v32], [], [count], fused=True, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=lr, weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=False,
                )  # fmt: skip
            else:
                _bf16_weights_block(w, g, m32, v32, t, _mix(key + block), group)
            if m32.data_ptr() != m.data_ptr():
                m.copy_(m32)  # rounded to nearest
            if v.dtype == torch.bfloat16:
                round_to_bf16(v32, _mix(key + block) ^ _V_KEY, out=v)
            elif v32.data_ptr() != v.data_ptr():
                v.copy_(v32)


def _bf16_weights_block(w, g, m32, v32, t: int, key: int, group: dict) -> None:
    """AdamW on a block of bf16 weights in fp32 arithmetic (m32, v32 updated in place), the
    new weights rounded stochastically into w."""
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])
    g32 = g.float()
    m32.lerp_(g32, 1 - beta1)
    v32.mul_(beta2).addcmul_(g32, g32, value=1 - beta2)
    denom = v32.sqrt().div_((1 - beta2**t) ** 0.5).add_(group["eps"])
    decay = 1 - lr * group["weight_decay"]
    w32 = w.float().mul_(decay) if decay != 1 else w.float()
    w32.addcdiv_(m32, denom, value=-lr / (1 - beta1**t))
    round_to_bf16(w32, key, out=w)
