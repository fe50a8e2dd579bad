"""Pictures of a run: the loss curve and the mixing weights as a layer x timestep heat map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ...atomic import atomic_path
from ...models.taps import RESNET_TAP_NAMES


def plot_mixing_weights(weights: torch.Tensor, timesteps: Sequence[float], path: Path) -> Path:
    """Draw softmaxed mixing weights `[T, L]` as layers (rows) x timesteps (columns), as in the
    paper's figure, and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = weights.detach().float().T.numpy()
    figure, axis = plt.subplots(figsize=(max(3.5, 0.55 * len(timesteps) + 2.5), 5))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    axis.set_yticks(range(values.shape[0]), RESNET_TAP_NAMES[: values.shape[0]])
    axis.set_xticks(range(len(timesteps)), [f"{t:g}" for t in timesteps], rotation=45)
    axis.set(xlabel="UNet timestep", ylabel="layer (up_blocks[i].resnets[j])")
    axis.set_title("mixing weights (softmax)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path


def plot_loss(history: Sequence[float], path: Path) -> Path:
    """Draw the per-step CLIP loss and its running mean over 50 steps; write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = torch.tensor(list(history), dtype=torch.float64)
    steps = torch.arange(1, len(losses) + 1)
    window = min(50, max(len(losses), 1))
    smooth = torch.cumsum(losses, 0)
    smooth = (smooth - torch.cat([torch.zeros(window), smooth[:-window]])) / torch.clamp(
        steps, max=window
    )
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps.numpy(), losses.numpy(), linewidth=0.6, alpha=0.5, label="per step")
    axis.plot(steps.numpy(), smooth.numpy(), linewidth=1.5, label=f"mean of {window}")
    axis.set(xlabel="step", ylabel="symmetric CLIP loss (tau 0.07)", title="hyperfeature training")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path
