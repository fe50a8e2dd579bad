"""Probe heads on frozen diffusion features: depth (CleanDIFT's exact head) and segmentation.

Facts read in CompVis/cleandift `src/depth.py` and `configs/sd21_depth_prober.yaml`: the depth
probe is one `Conv2d(1280, 256, 1)` on tap us6; 256 bins, uniform ("UD") from 0.1 to 10 m;
"linear" normalisation `p = (relu(logit) + 0.1) / sum_k (relu(logit_k) + 0.1)`; depth =
`sum_k p_k * bin_k`. The regression variant (`classify=False`) is `relu(conv(x)) + min_depth`.
SigLoss (AdaBins / DINOv2): over pixels with gt > 0, `g = log(pred + 1e-3) - log(gt + 1e-3)`,
loss = `sqrt(Var(g) + 0.15 * mean(g)^2)` with torch's unbiased variance, over the whole batch.
The released `cleandift_sd21_depth_probe.safetensors` holds the conv's `weight` [256,1280,1,1]
and `bias` [256] and nothing else; it loads here as is (defaults: depth, us6, UD, linear).

Segmentation: a linear 1x1 conv on a tap, optionally after BatchNorm (DINOv2's BNHead); logits are
bilinearly upsampled to the label size. Every head is plain convolutions and element-wise ops, so
the same module is traced into the exported graph (`ProbeGraph`, models/probe_graph.py).

Files: safetensors with the head's tensors under their module names and, as metadata, a JSON
`probe` record (task, tap, channels, classes, bins, norm, what the features came from).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_path
from ..errors import CleanDiftError
from .checkpoints import read_aligned, sha256_of

PROBE_FORMAT = "cleandift-deploy-probe/1"
TASKS = ("depth", "segmentation")
BIN_STRATEGIES = ("UD", "SID")
NORMS = ("linear", "softmax", "sigmoid")
DEPTH_HEADS = ("bins", "regression")
SEGMENTATION_HEADS = ("linear", "bn-linear")
LINEAR_NORM_EPS = 0.1
SIGLOSS_EPS = 1e-3
SIGLOSS_LAMBDA = 0.15
IGNORE_INDEX = 255
DEPTH_OUTPUT = "depth"
LOGITS_OUTPUT = "logits"


@dataclass
class ProbeInfo:
    """What a probe computes and on which features (stored as the file's metadata)."""

    task: str = "depth"
    tap: str = "us6"
    channels: int = 1280
    head: str = "bins"
    """depth: "bins" (CleanDIFT) or "regression"; segmentation: "linear" or "bn-linear"."""
    classes: int = 256
    """Output channels of the conv: bins for depth-bins, 1 for regression, K for segmentation."""
    min_depth: float = 0.1
    max_depth: float = 10.0
    bins: str = "UD"
    norm: str = "linear"
    image_size: list[int] = field(default_factory=lambda: [768, 768])
    features: dict[str, Any] = field(default_factory=dict)
    """Where the training features came from: manifest hash, backend, source (provenance)."""
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """The graph output name: `depth` [B,1,H,W] metres or `logits` [B,K,H,W]."""
        return DEPTH_OUTPUT if self.task == "depth" else LOGITS_OUTPUT

    @property
    def output_channels(self) -> int:
        """Channels of the map the head returns (1 for depth)."""
        return 1 if self.task == "depth" else self.classes

    def check(self) -> None:
        """One-line errors for a record no head can be built from."""
        if self.task not in TASKS:
            raise CleanDiftError(f"unknown probe task {self.task!r}: use {' or '.join(TASKS)}")
        heads = DEPTH_HEADS if self.task == "depth" else SEGMENTATION_HEADS
        if self.head not in heads:
            raise CleanDiftError(
                f"unknown {self.task} head {self.head!r}: use {' or '.join(heads)}"
            )
        if self.task == "depth":
            if self.bins not in BIN_STRATEGIES:
                raise CleanDiftError(f"unknown bins {self.bins!r}: use UD or SID")
            if self.norm not in NORMS:
                raise CleanDiftError(f"unknown norm {self.norm!r}: use {', '.join(NORMS)}")
            if not 0 < self.min_depth < self.max_depth:
                raise CleanDiftError(
                    f"depth range {self.min_depth}..{self.max_depth} m: need 0 < min < max"
                )
        if self.channels < 1 or self.classes < 1:
            raise CleanDiftError(f"probe channels {self.channels} / classes {self.classes} < 1")


def depth_bins(info: ProbeInfo) -> torch.Tensor:
    """Bin centres in metres: uniform ("UD", CleanDIFT's) or log-spaced ("SID").

    CleanDIFT's SID calls `torch.logspace(min, max)`, i.e. 10^0.1 .. 10^10 m (a quirk); here SID
    is log-spaced between min and max depth, which is what the name means.
    """
    if info.bins == "UD":
        return torch.linspace(info.min_depth, info.max_depth, info.classes)
    return torch.logspace(math.log10(info.min_depth), math.log10(info.max_depth), info.classes)


class DepthProbe(nn.Module):
    """`[B,C,h,w]` features -> `[B,1,h,w]` depth in metres (CleanDIFT's DepthPred.depth_pred)."""

    bins: torch.Tensor

    def __init__(self, info: ProbeInfo) -> None:
        super().__init__()
        info.check()
        self.info = info
        classes = info.classes if info.head == "bins" else 1
        self.conv = nn.Conv2d(info.channels, classes, kernel_size=1)
        self.register_buffer("bins", depth_bins(info).view(1, -1, 1, 1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Depth per feature cell."""
        logit = self.conv(features)
        if self.info.head == "regression":
            return torch.relu(logit) + self.info.min_depth
        if self.info.norm == "linear":
            weights = torch.relu(logit) + LINEAR_NORM_EPS
            weights = weights / weights.sum(dim=1, keepdim=True)
        elif self.info.norm == "softmax":
            weights = torch.softmax(logit, dim=1)
        else:
            weights = torch.sigmoid(logit)
            weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights * self.bins.to(weights.dtype)).sum(dim=1, keepdim=True)


class SegmentationProbe(nn.Module):
    """`[B,C,h,w]` features -> `[B,K,h,w]` class logits (linear, or BatchNorm then linear)."""

    def __init__(self, info: ProbeInfo) -> None:
        super().__init__()
        info.check()
        self.info = info
        self.bn = nn.BatchNorm2d(info.channels) if info.head == "bn-linear" else None
        self.conv = nn.Conv2d(info.channels, info.classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits per feature cell."""
        if self.bn is not None:
            features = self.bn(features)
        return self.conv(features)


Probe = DepthProbe | SegmentationProbe


def build_probe(info: ProbeInfo) -> Probe:
    """A fresh head for `info` (PyTorch's default conv initialisation)."""
    info.check()
    return DepthProbe(info) if info.task == "depth" else SegmentationProbe(info)


def upsample(prediction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear to `size` (align_corners=False), as CleanDIFT's notebook and DINOv2's heads."""
    return F.interpolate(prediction, size=size, mode="bilinear", align_corners=False)


class ProbeOnFeatures(nn.Module):
    """Head + bilinear upsampling to a given size: what the exported graph appends to a tap."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The map at `size` (depth in metres or logits)."""
        return upsample(self.probe(features), size)


def sig_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    warm_up: bool = False,
    eps: float = SIGLOSS_EPS,
    lam: float = SIGLOSS_LAMBDA,
) -> torch.Tensor:
    """CleanDIFT's SigLoss over all pixels of the batch with target > 0 (unbiased variance);
    `warm_up`: `sqrt(0.15 mean(g)^2)`, its first-iterations variant."""
    valid = target > 0
    if not bool(valid.any()):
        raise CleanDiftError("a training batch has no valid depth (all ground truth <= 0)")
    g = torch.log(prediction[valid] + eps) - torch.log(target[valid] + eps)
    if warm_up:
        return torch.sqrt(lam * g.mean() ** 2)
    return torch.sqrt(torch.var(g) + lam * g.mean() ** 2)


def depth_loss(
    prediction: torch.Tensor, target: torch.Tensor, warm_up: bool = False
) -> torch.Tensor:
    """SigLoss with the target bilinearly resized to the prediction's grid (CleanDIFT's forward).

    Pixels are valid where the resized target is > 0, as in the reference."""
    resized = F.interpolate(target, prediction.shape[-2:], mode="bilinear", align_corners=False)
    return sig_loss(prediction, resized, warm_up)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits upsampled to the label size, ignoring 255."""
    up = upsample(logits, (labels.shape[-2], labels.shape[-1]))
    return F.cross_entropy(up, labels.long(), ignore_index=IGNORE_INDEX)


@dataclass
class ProbeFile:
    """A loaded probe, its record and the file's sha256 (recorded in manifests and results)."""

    probe: Probe
    info: ProbeInfo
    sha256: str
    path: Path | None = None


def save_probe(path: Path, probe: Probe, info: ProbeInfo) -> str:
    """Write the head's tensors and its record atomically; returns the file's sha256."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in probe.state_dict().items()}
    metadata = {"format": PROBE_FORMAT, "probe": json.dumps(asdict(info), sort_keys=True)}
    with atomic_path(Path(path)) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return sha256_of([Path(path)])


def _cleandift_info(tensors: dict[str, torch.Tensor], path: Path) -> ProbeInfo:
    """The record of a file in CleanDIFT's layout (conv `weight` [K,C,1,1], `bias` [K])."""
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or set(tensors) != {"weight", "bias"}:
        raise CleanDiftError(
            f"{path}: not a probe (keys {', '.join(sorted(tensors)) or 'none'}; "
            "expected a cleandift-deploy probe or CleanDIFT's weight + bias)"
        )
    if weight.ndim != 4 or weight.shape[2:] != (1, 1) or bias.shape != (weight.shape[0],):
        raise CleanDiftError(
            f"{path}: weight {list(weight.shape)} / bias {list(bias.shape)} is not a 1x1 conv "
            "head ([K,C,1,1] and [K])"
        )
    classes, channels = int(weight.shape[0]), int(weight.shape[1])
    head = "regression" if classes == 1 else "bins"
    return ProbeInfo(task="depth", tap="us6", channels=channels, head=head, classes=classes)


def _rename_cleandift(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"conv.{k}": v for k, v in tensors.items()}


def load_probe(path: Path, tap: str | None = None) -> ProbeFile:
    """Read a probe file: ours (with its record) or CleanDIFT's released layout (depth, us6,
    256 UD bins 0.1-10 m, linear norm; `tap` overrides the tap)."""
    path = Path(path)
    if not path.is_file():
        raise CleanDiftError(f"no probe at {path}: train one with `probe train` first")
    try:
        tensors, metadata = read_aligned(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read the probe {path} ({err})") from None
    if metadata.get("format") == PROBE_FORMAT:
        try:
            info = ProbeInfo(**json.loads(metadata["probe"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CleanDiftError(f"{path}: malformed probe record ({err})") from None
    else:
        info = _cleandift_info(tensors, path)
        tensors = _rename_cleandift(tensors)
    if tap is not None:
        info.tap = tap
    probe = build_probe(info)
    _load_checked(probe, tensors, path)
    return ProbeFile(probe.eval(), info, sha256_of([path]), path.resolve())


def _load_checked(probe: Probe, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = probe.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CleanDiftError(
            f"{path}: probe tensors do not match its record (missing {missing}, extra {extra})"
        )
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise CleanDiftError(
                f"{path}: {key} has shape {list(tensors[key].shape)}, the record says "
                f"{list(value.shape)}"
            )
    probe.load_state_dict({k: v.clone() for k, v in tensors.items()})


def check_channels(info: ProbeInfo, channels: int, where: str) -> None:
    """Refuse a probe whose input channels differ from the tap's, naming both numbers."""
    if info.channels != channels:
        raise CleanDiftError(
            f"the probe takes {info.channels} channels but tap {info.tap} of {where} has "
            f"{channels}: train the probe on this model's tap"
        )


def check_classes(info: ProbeInfo, classes: int, where: str) -> None:
    """Refuse a segmentation probe whose class count differs from the data set's."""
    if info.task == "segmentation" and info.classes != classes:
        raise CleanDiftError(
            f"the probe predicts {info.classes} classes but {where} has {classes}: "
            "train a probe for this data set"
        )


def probe_record(probe_file: ProbeFile) -> dict[str, Any]:
    """What a manifest says about a probe inside a graph: file, sha256 and the record."""
    return {
        "path": None if probe_file.path is None else str(probe_file.path),
        "sha256": probe_file.sha256,
        "info": asdict(probe_file.info),
    }


def probe_of_manifest(build: dict[str, Any], path: Path | None = None) -> ProbeFile | None:
    """Reload the probe a manifest's `build` record names (or `path`), checking its sha256;
    None for an artifact without a probe."""
    record = build.get("probe")
    if not record:
        return None
    where = Path(path or record["path"] or "")
    if not where.is_file():
        raise CleanDiftError(
            f"the probe {record['path']} the model was exported with is not on this machine: "
            "put it back at that path to rebuild the PyTorch reference"
        )
    loaded = load_probe(where, tap=record["info"]["tap"])
    if loaded.sha256 != record["sha256"]:
        raise CleanDiftError(
            f"{where} is not the probe the model was exported with (sha256 "
            f"{loaded.sha256[:12]} vs {record['sha256'][:12]}): give the original probe file"
        )
    return loaded
