"""Pictures of a run: the loss curve (PNG). matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path


def loss_curve_png(history: list[dict], path: str | Path) -> Path | None:
    """Training loss per step, validation loss where measured, learning rate on a second axis."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [float(r["loss"]) for r in history], label="train loss", lw=1.2)
    val = [(int(r["step"]), float(r["val_loss"])) for r in history
           if r.get("val_loss") not in (None, "")]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nll per target token)")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [float(r["lr"]) for r in history], color="grey", alpha=0.4, lw=1,
               label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
