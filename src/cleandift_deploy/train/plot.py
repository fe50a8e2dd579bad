"""The loss curve of a run as a PNG: one line per tap and their sum, against the step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_path


def plot_losses(
    history: torch.Tensor, taps: Sequence[str], path: Path, ylabel: str = "-cosine similarity"
) -> Path:
    """Draw `history [steps, taps]` (by default negative cosine similarity) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = torch.arange(1, history.shape[0] + 1).numpy()
    figure, (per_tap, total) = plt.subplots(1, 2, figsize=(11, 4))
    for column, tap in enumerate(taps):
        per_tap.plot(steps, history[:, column].numpy(), label=tap, linewidth=1)
    per_tap.set(xlabel="step", ylabel=ylabel, title="loss per tap")
    per_tap.legend(fontsize="small", ncol=2)
    total.plot(steps, history.sum(dim=1).numpy(), color="black", linewidth=1)
    total.set(xlabel="step", ylabel="sum over taps", title="total loss")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path
