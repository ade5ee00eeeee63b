"""What did fine-tuning cost the base model's general ability? Measured without a hub.

- General-text perplexity of base and tuned on a seeded sample of passages from the
  `chitchat-dataset` package (7,168 open-domain chats from BYU's Chit-Chat Challenge, MIT
  licence; each passage one chat's turns, one per line) or from a file given with
  --general-text, and the mean KL(tuned ‖ base) of the next-token distributions over the same
  tokens (*drift*): both models teacher-forced over the same tokens in one pass each.
- Weights: per module ‖ΔW‖_F / ‖W‖_F, and *intruder dimensions* (Shuttleworth et al., 2024,
  arXiv 2410.21228): of the tuned matrix's `INTRUDER_K` largest singular directions (left
  singular vectors), those whose cosine similarity to every singular direction of the base
  matrix is below `INTRUDER_EPS` — new dominant directions, which that paper links to
  forgetting (LoRA shows them; full fine-tuning much less). For a LoRA run the adapter is merged
  first, so both kinds are measured the same way.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from gentune.errors import UsageError
from gentune.metrics import bootstrap_mean_diff
from gentune.models.families import is_seq2seq
from gentune.tokenizer import source_pad_id
from gentune.trust.compare import compare_rows, output_example

INTRUDER_K = 10  # tuned singular directions examined per matrix
INTRUDER_EPS = 0.5  # a direction is new below this cosine similarity to every base direction
MAX_SVD_DIM = 8192  # matrices with a larger side (embeddings, output heads) get no SVD
PASSAGE_TOKENS = 128


def general_passages(path: str | None, n: int, seed: int) -> tuple[list[str], str]:
    """`n` passages of general text (seeded sample) and where they came from."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--general-text {path}: no such file")
        lines = p.read_text(errors="replace").splitlines()
        if p.suffix == ".jsonl":
            lines = [str(json.loads(x).get("text", "")) for x in lines if x.strip()]
        texts = [x for x in lines if x.strip()]
        source = str(p)
    else:
        from importlib.resources import files

        try:
            raw = (files("chitchat_dataset") / "dataset.json").read_text()
        except ModuleNotFoundError as e:
            raise UsageError(
                "the forgetting check reads general text from the chitchat-dataset package: "
                "pip install --no-deps chitchat-dataset (./dev setup does), or give "
                "--general-text FILE"
            ) from e
        chats = json.loads(raw)
        texts = [
            "\n".join(m["text"] for turn in chats[k]["messages"] for m in turn)
            for k in sorted(chats)
        ]
        source = "chitchat-dataset (MIT)"
    if not texts:
        raise UsageError(f"{source}: no general text to measure forgetting on")
    rng = random.Random(seed)
    return rng.sample(texts, min(n, len(texts))), source


def general_examples(passages: list[str], tokenizer, seq2seq: bool):
    """Each passage teacher-forced: a decoder-only model predicts every token after the first;
    an encoder-decoder reads the first half of the words and predicts the second."""
    examples = []
    for k, text in enumerate(passages):
        if seq2seq:
            w = text.split()
            src = tokenizer(" ".join(w[: len(w) // 2]), add_special_tokens=True).input_ids
            tgt = tokenizer(" ".join(w[len(w) // 2 :]), add_special_tokens=False).input_ids
            ex = output_example(src[:PASSAGE_TOKENS], tgt[:PASSAGE_TOKENS], f"general:{k}", True)
        else:
            ids = tokenizer(text, add_special_tokens=True).input_ids[:PASSAGE_TOKENS]
            ex = output_example(ids[:1], ids[1:], f"general:{k}", False)
        if ex.n_targets:
            examples.append(ex)
    return examples


def drift(
    tuned,
    base,
    tokenizer,
    passages: list[str],
    *,
    batch_size: int,
    samples: int,
    seed: int,
    progress: bool = False,
):
    """General-text perplexity of both models, the per-passage NLL difference with its
    interval, and the mean KL(tuned ‖ base) per token."""
    examples = general_examples(passages, tokenizer, is_seq2seq(tuned))
    from tqdm.auto import tqdm

    with tqdm(total=len(examples), desc="general text", disable=not progress) as bar:
        rows = compare_rows(
            tuned,
            base,
            examples,
            source_pad_id(tokenizer),
            batch_size=batch_size,
            progress=bar.update,
        )
    lt = np.concatenate([r.logp_tuned for r in rows])
    lb = np.concatenate([r.logp_base for r in rows])
    kl = np.concatenate([r.kl for r in rows])
    nll = bootstrap_mean_diff(
        [-r.logp_base.mean() for r in rows],
        [-r.logp_tuned.mean() for r in rows],
        samples=samples,
        seed=seed,
    )
    return {
        "passages": len(rows),
        "tokens": int(lt.size),
        "perplexity_base": float(math.exp(-lb.mean())),
        "perplexity_tuned": float(math.exp(-lt.mean())),
        "nll_per_token_difference": nll,
        "kl_mean": float(kl.mean()),
    }


@torch.no_grad()
def weight_change(tuned, base, *, progress: bool = False) -> dict:
    """Per matrix ‖ΔW‖/‖W‖ and intruder dimensions; totals, by module kind, the most changed."""
    base_params = dict(base.named_parameters())
    modules = []
    from tqdm.auto import tqdm

    named = list(tuned.named_parameters())
    for name, w in tqdm(named, desc="weights", disable=not progress, dynamic_ncols=True):
        b = base_params.get(name)
        if b is None or b.shape != w.shape or w.dim() != 2:
            continue
        wt, wb = w.detach().float().cpu(), b.detach().float().cpu()
        delta = float(torch.linalg.norm(wt - wb) / max(float(torch.linalg.norm(wb)), 1e-12))
        entry = {"module": name, "relative_change": delta, "intruders": None}
        if delta > 0 and max(wt.shape) <= MAX_SVD_DIM:
            entry["intruders"] = intruders(wt, wb)
        elif delta == 0:
            entry["intruders"] = 0
        modules.append(entry)
    kinds: dict[str, list[dict]] = defaultdict(list)
    for m in modules:
        kinds[m["module"].rsplit(".", 1)[0].rsplit(".", 1)[-1]].append(m)
    examined = [m for m in modules if m["intruders"] is not None]
    return {
        "matrices": len(modules),
        "changed": sum(m["relative_change"] > 0 for m in modules),
        "relative_change_mean": float(np.mean([m["relative_change"] for m in modules]))
        if modules
        else 0.0,
        "intruders_total": sum(m["intruders"] for m in examined),
        "matrices_with_intruders": sum(m["intruders"] > 0 for m in examined),
        "matrices_examined": len(examined),
        "by_kind": {
            k: {
                "matrices": len(v),
                "relative_change_mean": float(np.mean([m["relative_change"] for m in v])),
                "intruders": sum(m["intruders"] or 0 for m in v),
            }
            for k, v in sorted(kinds.items())
        },
        "most_changed": sorted(modules, key=lambda m: -m["relative_change"])[:10],
        "k": INTRUDER_K,
        "epsilon": INTRUDER_EPS,
    }


def intruders(tuned: torch.Tensor, base: torch.Tensor) -> int:
    """How many of the tuned matrix's top-k left singular vectors have cosine similarity below
    epsilon to every left singular vector of the base matrix."""
    ut = torch.linalg.svd(tuned, full_matrices=False).U[:, :INTRUDER_K]
    ub = torch.linalg.svd(base, full_matrices=False).U
    best = (ut.T @ ub).abs().max(dim=1).values  # unit vectors: |dot| is the cosine
    return int((best < INTRUDER_EPS).sum())
