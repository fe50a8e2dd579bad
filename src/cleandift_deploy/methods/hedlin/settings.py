"""Hedlin et al.'s settings, with the values read from the reference code.

Reference: ubc-vision/LDM_correspondences@97e3246 ("Unsupervised Semantic Correspondence Using
Stable Diffusion", NeurIPS 2023): `eval/eval.py` argument defaults, `utils/optimize.py`
(`validate_epoch`), `utils/optimize_token.py` (`optimize_prompt`, `run_image_with_tokens_cropped`,
`crop_image`, `gaussian_circle`, `upscale_to_img_size`) and `utils/ptp_utils.py`
(`register_attention_control`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import CleanDiftError

LayerRef = tuple[int, int]
"""`(i, j)`: the cross-attention of `up_blocks[i].attentions[j]` (its first transformer block)."""

REFERENCE_SIZE = 512
"""The reference's frame: every image is `Resize((512, 512))`; crops are resized back to 512 and
attention maps are upsampled to 512 (`upsample_res=512`)."""

REFERENCE_LAYERS: tuple[LayerRef, ...] = ((1, 0), (1, 1), (1, 2), (2, 0))
"""`--layers 5 6 7 8` of the reference: its attention store keeps cross-attention maps with at
most 32^2 queries, in the order down (32, 32, 16, 16), mid (8), up (16, 16, 16, 32, 32, 32), so
indices 5..8 are up_blocks[1].attentions[0..2] (16x16 at 512 px) and up_blocks[2].attentions[0]
(32x32). Named by block here, so the same choice applies to any SD config (the tiny test model
has them at 2x2 and 4x4)."""

NOISE_KINDS = ("uniform", "gaussian")
HEAD_CHOICES = ("reference", "all")


@dataclass(frozen=True)
class HedlinSettings:
    """Every knob of the method; the defaults are the reference's (`eval/eval.py`)."""

    size: int = REFERENCE_SIZE
    """Side of the square frame images are squashed to, crops are resized to and maps are
    upsampled to (reference 512)."""
    inits: int = 5
    """Independent prompt embeddings per keypoint (`num_opt_iterations=5`), each all 77 token
    vectors drawn from N(0, 1) (`init_random_noise`: `randn(1, 77, 768)`)."""
    steps: int = 129
    """Adam steps per embedding (`num_steps=129`)."""
    lr: float = 0.0023755632081200314
    """Adam learning rate (`learning_rate`)."""
    crop_percent: float = 93.16549294381423
    """Crop side as a percentage of the frame (`crop_percent`): int(512 * 0.9317) = 477 px."""
    crop_margin: float = 0.15
    """The keypoint stays at least int(side * 0.15) px inside the crop (`crop_image` margin)."""
    sigma: float = 27.97853316316864
    """Std of the Gaussian target in pixels of a 512 frame (`sigma`); scaled by size / 512."""
    optimise_timestep: int = 140
    """Noise level while optimising: `noise_level=-8` indexes the 50-step DDIM timesteps
    980, 960, ..., 0 (scaled_linear 0.00085-0.012, leading spacing), so t = 140."""
    readout_timestep: int = 40
    """Noise level on the target: `scheduler.timesteps[-3]`, hard-coded in the readout: t = 40."""
    readout_crops: int = 20
    """Crops per embedding on the target (`num_iterations=20`): four anchored at the corners,
    then around the running argmax."""
    layers: tuple[LayerRef, ...] = REFERENCE_LAYERS
    token: int = 1
    """Token whose attention is read (`[..., 1]` in `upscale_to_img_size`)."""
    heads: str = "reference"
    """"reference": the second half of each sample's heads (4-7 of SD1.x's 8), as the reference
    ends up keeping: its prompt-to-prompt controller stores `attn[h // 2:]` assuming a CFG batch
    [uncond, cond], but it runs without CFG at batch 1, so the slice drops heads 0-3 of the one
    sample. "all": every head (what a no-CFG batch would keep had the split been meant)."""
    noise: str = "uniform"
    """The reference draws `torch.rand_like` (uniform [0, 1)) noise; "gaussian" is the textbook
    choice."""
    batch: int = 0
    """Embeddings per UNet batch: 0 = every keypoint's every init at once; 1 = one at a time, as
    the reference loops (same results for the same seed)."""
    early_stop: int = 0
    """Stop optimising an embedding once the argmax of its attention map (in frame pixels) has
    moved less than `early_stop_px` for this many consecutive steps; 0 = off (the reference)."""
    early_stop_px: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive(self, ("size", "inits", "steps", "readout_crops"))
        if not 0 < self.crop_percent <= 100:
            raise CleanDiftError(f"crop_percent must be in (0, 100]; got {self.crop_percent}")
        if self.noise not in NOISE_KINDS:
            raise CleanDiftError(f"noise must be {' or '.join(NOISE_KINDS)}; got {self.noise}")
        if self.heads not in HEAD_CHOICES:
            raise CleanDiftError(f"heads must be {' or '.join(HEAD_CHOICES)}; got {self.heads}")
        if self.batch < 0:
            raise CleanDiftError(f"batch must be 0 (all at once) or more; got {self.batch}")
        if not self.layers:
            raise CleanDiftError("layers is empty: give at least one up-block attention, e.g. 1.0")

    @property
    def sigma_px(self) -> float:
        """The Gaussian's std in pixels of this frame."""
        return self.sigma * self.size / REFERENCE_SIZE

    @property
    def crop_side(self) -> int:
        """Side of every crop in frame pixels (`int(size * crop_percent / 100)`)."""
        return max(1, int(self.size * self.crop_percent / 100))


def _check_positive(settings: HedlinSettings, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(settings, name)
        if value < 1:
            raise CleanDiftError(f"{name} must be at least 1; got {value}")


def parse_layers(text: str) -> tuple[LayerRef, ...]:
    """`"1.0,1.1,1.2,2.0"` -> ((1, 0), (1, 1), (1, 2), (2, 0))."""
    try:
        refs = tuple(
            (int(b), int(a)) for b, a in (item.split(".") for item in text.split(",") if item)
        )
    except ValueError:
        raise CleanDiftError(
            f"cannot read layers {text!r}: write up-block.attention pairs, e.g. 1.0,1.1,1.2,2.0"
        ) from None
    return refs


def _convert(name: str, field_type: Any, text: str) -> Any:
    if name == "layers":
        return parse_layers(text)
    kind = {"int": int, "float": float, "str": str}[str(field_type)]
    try:
        return kind(text)
    except ValueError:
        raise CleanDiftError(f"setting {name} needs a {field_type}; got {text!r}") from None


def settings_from_strings(
    values: Mapping[str, str], defaults: HedlinSettings | None = None
) -> HedlinSettings:
    """Settings from `--set KEY=VALUE` strings on top of `defaults`; unknown keys are refused."""
    defaults = defaults or HedlinSettings()
    fields = {f.name: f.type for f in dataclasses.fields(HedlinSettings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CleanDiftError(
            f"unknown hedlin setting {', '.join(unknown)}: use {', '.join(sorted(fields))}"
        )
    changes = {name: _convert(name, fields[name], text) for name, text in values.items()}
    return dataclasses.replace(defaults, **changes)
