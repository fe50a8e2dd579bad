"""Triton Inference Server model configuration (`config.pbtxt`) from an artifact and its manifest.

Input and output names, types and shapes come from the ONNX graph itself (for an engine: the ONNX
file it was built from, named in its manifest, or else the manifest's taps); the batch range,
the preferred batch sizes, warm-up shapes and CUDA-graph shapes come from the manifest's profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CleanDiftError
from ..manifest import Manifest, read_onnx_header
from .pbtxt import Enum, to_pbtxt

ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 10: "TYPE_FP16", 16: "TYPE_BF16"}
"""ONNX TensorProto element types -> Triton data types."""
MANIFEST_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it: dims without the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class RepoOptions:
    """What `triton-repo` asks for beyond the artifacts themselves."""

    max_batch: int | None = None
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = 100
    instances: int = 1
    kind: str = "gpu"
    cuda_graphs: bool = False


def onnx_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph (its weights are not read); dynamic dims are -1."""
    graph = read_onnx_header(path).graph
    initialisers = {t.name for t in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        if tensor.elem_type not in ONNX_TYPES:
            raise CleanDiftError(f"{path}: {value.name} has a type Triton configs do not cover")
        return TensorSpec(value.name, ONNX_TYPES[tensor.elem_type], dims[1:])

    inputs = [spec(v) for v in graph.input if v.name not in initialisers]
    return inputs, [spec(v) for v in graph.output]


def manifest_signature(manifest: Manifest) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as the manifest describes them (engines without their ONNX beside)."""
    if manifest.prompt_input:
        raise CleanDiftError(
            "this engine takes a prompt input whose shape only its ONNX file records: keep the "
            f"ONNX file it was built from ({manifest.build.get('onnx', 'named in its manifest')}) "
            "beside the engine"
        )
    channels = 3 if manifest.input.name == "image" else 4
    spatial = _spatial_dims(manifest, 1)
    inputs = [
        TensorSpec(
            manifest.input.name,
            MANIFEST_TYPES.get(manifest.input.dtype, "TYPE_FP32"),
            (channels, *spatial),
        )
    ]
    outputs = [
        TensorSpec(tap.name, "TYPE_FP32", (tap.channels, *_spatial_dims(manifest, tap.stride)))
        for tap in manifest.taps
    ]
    return inputs, outputs


def _spatial_dims(manifest: Manifest, stride: int) -> tuple[int, int]:
    scale = stride if manifest.input.name == "image" else max(stride // 8, 1)
    return tuple(  # type: ignore[return-value]
        r.min // scale if r.min == r.max else -1 for r in (manifest.height, manifest.width)
    )


def batch_settings(manifest: Manifest, options: RepoOptions) -> tuple[int, tuple[int, ...]]:
    """`max_batch_size` and the preferred batch sizes, checked against the engine's profile."""
    if manifest.batch.min > 1:
        raise CleanDiftError(
            f"the model's smallest batch is {manifest.batch.min}, but Triton sends batches from 1: "
            "re-export with --batch 1:OPT:MAX"
        )
    largest = options.max_batch or manifest.batch.max
    if not 1 <= largest <= manifest.batch.max:
        raise CleanDiftError(
            f"--max-batch {largest} is outside the model's batch range 1..{manifest.batch.max}"
        )
    preferred = options.preferred_batch or ((largest,) if largest > 1 else ())
    wrong = [b for b in preferred if not 1 <= b <= largest]
    if wrong:
        raise CleanDiftError(f"--preferred-batch {wrong} must lie within 1..{largest}")
    return largest, tuple(sorted(set(preferred)))


def batching_note(manifest: Manifest, options: RepoOptions) -> str | None:
    """Why a model gets no dynamic batching: with `max_batch_size` 1 it would only make each
    request wait the queue delay for a partner it can never have (None when batching is on)."""
    largest = options.max_batch or manifest.batch.max
    if largest > 1:
        return None
    why = "--max-batch 1" if options.max_batch else f"the model's largest batch is {largest}"
    return (
        f"{why}, so dynamic batching is left out (it would only delay each request): "
        "re-export with --batch 1:OPT:MAX (MAX > 1) to batch requests"
    )


def opt_input_dims(spec: TensorSpec, manifest: Manifest) -> list[int]:
    """A concrete shape for one input at the profile's optimum size (warm-up, CUDA graphs)."""
    if spec.name == manifest.input.name:
        scale = 1 if manifest.input.name == "image" else 8
        size = (manifest.height.opt // scale, manifest.width.opt // scale)
        return [spec.dims[0], *size]
    return [d if d > 0 else 1 for d in spec.dims]


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": Enum(spec.data_type), "dims": list(spec.dims)}


def _warmup(inputs: Sequence[TensorSpec], manifest: Manifest) -> list[dict[str, Any]]:
    values = [
        {
            "key": s.name,
            "value": {
                "data_type": Enum(s.data_type),
                "dims": opt_input_dims(s, manifest),
                "random_data": True,
            },
        }
        for s in inputs
    ]
    return [{"name": "random_inputs_at_opt_size", "batch_size": 1, "inputs": values}]


def _cuda_graphs(
    inputs: Sequence[TensorSpec], manifest: Manifest, batches: Sequence[int]
) -> dict[str, Any]:
    specs = [
        {
            "batch_size": batch,
            "input": [
                {"key": s.name, "value": {"dim": opt_input_dims(s, manifest)}} for s in inputs
            ],
        }
        for batch in batches
    ]
    return {"cuda": {"graphs": True, "graph_spec": specs}}


def model_config(
    name: str,
    manifest: Manifest,
    signature: tuple[list[TensorSpec], list[TensorSpec]],
    options: RepoOptions,
    plans: dict[str, str] | None = None,
) -> str:
    """The `config.pbtxt` text of one model: ONNX Runtime, or TensorRT when `plans` is given
    (compute capability -> plan file name; "" for a plan without a known capability)."""
    inputs, outputs = signature
    largest, preferred = batch_settings(manifest, options)
    tensorrt = plans is not None
    batching: dict[str, Any] = {"max_queue_delay_microseconds": options.queue_delay_us}
    if preferred:
        batching["preferred_batch_size"] = list(preferred)
    fields: dict[str, Any] = {
        "name": name,
        "backend": "tensorrt" if tensorrt else "onnxruntime",
        "max_batch_size": largest,
        "input": [_tensor(s) for s in inputs],
        "output": [_tensor(s) for s in outputs],
        "instance_group": [
            {
                "count": options.instances,
                "kind": Enum("KIND_GPU" if tensorrt or options.kind == "gpu" else "KIND_CPU"),
            }
        ],
        "model_warmup": _warmup(inputs, manifest),
    }
    if largest > 1:
        fields["dynamic_batching"] = batching
    if tensorrt:
        assert plans is not None
        by_cc = {cc: file for cc, file in plans.items() if cc}
        fields["default_model_filename"] = plans.get("", None)
        fields["cc_model_filenames"] = [{"key": k, "value": v} for k, v in sorted(by_cc.items())]
        if options.cuda_graphs:
            fields["optimization"] = _cuda_graphs(inputs, manifest, preferred or (1,))
    return to_pbtxt(fields)


def parse_config(text: str) -> Any:
    """Parse `config.pbtxt` text with Triton's own schema (tritonclient's `ModelConfig`)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise CleanDiftError(
            'Triton\'s config schema comes with tritonclient: pip install "cleandift-deploy[serve]"'
        ) from None
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise CleanDiftError(f"config.pbtxt does not follow Triton's schema ({err})") from None
    return config
