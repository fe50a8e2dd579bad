"""What a SOURCE resolved to, told before anything heavy loads (`info SOURCE`).

Reads only what `sources` already read (configs, safetensors headers) plus the file hashes; the
architecture comes from the config or from tensor shapes, never from loading the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sources import FULL_PREFIX, LAYOUTS, ResolvedSource

UNET_LAYOUTS = ("diffusers-pipeline", "diffusers-unet", "cleandift-full", "unet-safetensors")
DINO_LAYOUTS = ("transformers-dinov2", "dinov2-safetensors")


@dataclass
class SourceSummary:
    """The backbone kind ("unet", "dinov2" or "unknown"), its architecture name and the rows
    `info` prints (label, value)."""

    kind: str
    arch: str
    rows: list[tuple[str, str]] = field(default_factory=list)


def _size(resolved: ResolvedSource) -> str:
    total = sum(p.stat().st_size for p in resolved.weight_files)
    return f"{total / 1e6:.1f} MB"


def _unet_arch(resolved: ResolvedSource) -> str:
    from .loading import identify_arch, unet_arch_of_shapes

    config = resolved.config()
    if config is not None and "block_out_channels" in config:
        return identify_arch(config)
    shapes = resolved.shapes
    if resolved.layout == "cleandift-full":
        shapes = {k[len(FULL_PREFIX) :]: v for k, v in shapes.items() if k.startswith(FULL_PREFIX)}
    return unet_arch_of_shapes(shapes) or "unknown (pass --arch)"


def _dino_arch(resolved: ResolvedSource) -> str:
    from .dinov2 import dino_arch_of_config, dino_arch_of_shapes

    if resolved.layout == "transformers-dinov2":
        return dino_arch_of_config(resolved.config() or {})
    return dino_arch_of_shapes(resolved.shapes)


def summarise_source(resolved: ResolvedSource) -> SourceSummary:
    """Kind, architecture and the rows describing a resolved source (hashes included)."""
    if resolved.layout in UNET_LAYOUTS:
        summary = SourceSummary("unet", _unet_arch(resolved))
    elif resolved.layout in DINO_LAYOUTS:
        summary = SourceSummary("dinov2", _dino_arch(resolved))
    else:
        summary = SourceSummary("unknown", "unknown")
    rows = summary.rows
    rows.append(("source", resolved.text))
    if resolved.from_hub:
        wanted = resolved.requested_revision or "main"
        rows.append(("hub repo", f"{resolved.repo_id} @ {resolved.revision} ({wanted})"))
        rows.append(("hub cache", str(resolved.cache_dir)))
    if str(resolved.path) != resolved.text:
        rows.append(("path", str(resolved.path)))
    rows.append(("layout", f"{resolved.layout}: {LAYOUTS.get(resolved.layout, '')}"))
    if summary.kind != "unknown":
        files = ", ".join(p.name for p in resolved.weight_files)
        rows.append(("weights", f"{files} ({_size(resolved)})"))
        rows.append(("sha256", resolved.sha256))
    rows.append(("architecture", f"{summary.arch} ({summary.kind})"))
    return summary


def dino_rows(resolved: ResolvedSource, arch: str) -> list[tuple[str, str]]:
    """Size, parameters and the `dino` tap of a DINOv2 source, from its config on the meta
    device (no weights read)."""
    from .dinov2 import DINO_ARCHS, DINO_TAP, PATCH, build_backbone, default_dino_size

    if resolved.layout == "transformers-dinov2":
        config = resolved.config() or {}
    elif arch in DINO_ARCHS:
        config = DINO_ARCHS[arch].config()
    else:
        return []
    model = build_backbone(config, "meta")
    params = sum(p.numel() for p in model.parameters())
    side = default_dino_size(arch)
    hidden = int(config.get("hidden_size", 768))
    return [
        ("params", f"{params / 1e6:.1f}M ({params:,})"),
        (
            "blocks",
            f"{config.get('num_hidden_layers')} x width {hidden}, "
            f"{config.get('num_attention_heads')} heads, "
            f"{config.get('num_register_tokens', 0) or 0} registers",
        ),
        (
            "tap",
            f"{DINO_TAP}: {hidden} channels, stride {PATCH}, "
            f"{hidden}x{side // PATCH}x{side // PATCH} at {side}x{side} px",
        ),
    ]
