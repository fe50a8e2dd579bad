"""`probe train`, `probe eval`, `probe make-synthetic` and `eval knn`.

A probe trains on one tap of a model (an artifact in any backend, or PyTorch via `--source` /
`--arch --random-init`), reading features from the feature cache; `probe eval` runs either a probe
file on those features or an exported graph with the probe inside (`export --head`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ..errors import CleanDiftError
from .options import image_size_option, output_option, source_option

if TYPE_CHECKING:
    from ..eval.dense_samples import DenseSample
    from ..runtime.extractor import FeatureExtractor

console = Console(stderr=True)
DATASETS = ("nyu", "voc")
HEADS = {"depth": ("bins", "regression"), "segmentation": ("linear", "bn-linear")}


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where features come from: an artifact, or a PyTorch model source."""
    decorators = [
        click.option("--model", type=click.Path(path_type=Path), help="Artifact (.onnx/.engine)."),
        click.option("--backend", default="auto", show_default=True, help="Runtime backend."),
        source_option("--source", help="Model source (PyTorch)"),
        click.option("--arch", default=None, help="Architecture for --source / --random-init."),
        click.option("--random-init", is_flag=True, help="Random weights (with --arch)."),
        click.option("--seed", type=int, default=0, show_default=True, help="--random-init seed."),
        image_size_option("Model input size (squashed):"),
        click.option("--prompt", default=None, help="Prompt for --source [A photo of a room]."),
        click.option("--cache", type=click.Path(path_type=Path), help="Feature cache folder."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def open_features(taps: tuple[str, ...] | None, options: dict[str, Any]) -> FeatureExtractor:
    """The extractor for `taps` (None: all of an artifact's) from `--model` or `--source`."""
    from ..eval.probes import PROBE_PROMPT
    from ..runtime.extractor import FeatureExtractor
    from ..runtime.torch_reference import ReferenceSpec

    size = options["image_size"]
    if options["model"] is not None:
        return FeatureExtractor.load(
            options["model"], backend=options["backend"], taps=taps, image_size=size,
            resize="squash",
        )  # fmt: skip
    if options["source"] is None and not options["random_init"]:
        raise CleanDiftError("give --model ARTIFACT, or --source SOURCE / --arch A --random-init")
    prompt = PROBE_PROMPT if options["prompt"] is None else options["prompt"]
    return FeatureExtractor.from_source(
        options["source"],
        arch=options["arch"],
        random_init=options["random_init"],
        seed=options["seed"],
        spec=ReferenceSpec(taps=taps or ("us6",), prompt=prompt),
        image_size=size,
        resize="squash",
    )


def load_dense(data: Path, dataset: str, split: str, limit: int | None) -> list[DenseSample]:
    """NYUv2 (.mat or folder) or VOC samples of one split."""
    if dataset == "nyu":
        from ..eval.nyu import load_nyu

        return load_nyu(data, split, limit)
    from ..eval.voc import load_voc

    return load_voc(data, split, limit)


@contextmanager
def bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields `update(done, total)`."""
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@click.group("probe")
def probe_group() -> None:
    """Dense prediction probes (depth, segmentation) on frozen features."""


@probe_group.command("make-synthetic")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", "train_count", type=int, default=24, show_default=True)
@click.option("--test", "test_count", type=int, default=8, show_default=True)
@click.option(
    "--image-size",
    "--size",
    "size",
    type=int,
    default=128,
    show_default=True,
    help="Image side (px).",
)
@click.option("--seed", type=int, default=0, show_default=True)
def make_synthetic(out: Path, train_count: int, test_count: int, size: int, seed: int) -> None:
    """Known-truth NYU-folder, VOC and ImageFolder sets from scikit-image's photographs."""
    from ..eval.probe_synthetic import SyntheticCounts, make_probe_synthetic

    folders = make_probe_synthetic(out, SyntheticCounts(train_count, test_count, size), seed)
    for name, folder in folders.items():
        click.echo(f"wrote {folder} ({name})")


@probe_group.command("train")
@click.option("--task", type=click.Choice(list(HEADS)), required=True)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Data set root.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Default: nyu (depth), voc.")
@click.option("--split", default="train", show_default=True)
@click.option("--limit", type=int, default=None, help="At most N images.")
@output_option()
@click.option("--tap", default="us6", show_default=True)
@click.option("--head", default=None, help="bins|regression (depth), linear|bn-linear.")
@click.option("--classes", type=int, default=21, show_default=True, help="Segmentation classes.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--warmup-epochs", type=float, default=1.5, show_default=True)
@click.option("--flips", is_flag=True, help="Also train on mirrored images (cached too).")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@model_options
def train_command(**args: Any) -> None:
    """Train a probe on cached features of one tap (probe3d's protocol by default)."""
    from ..eval.cache import FeatureCache
    from ..eval.probes import CachedFeatures, probe_record, train_on_cache
    from ..train.distributed import session
    from ..train.probes import ProbeTrainSettings
    from ..train.progress import training_progress

    task = args["task"]
    dataset = args["dataset"] or ("nyu" if task == "depth" else "voc")
    head = args["head"] or HEADS[task][0]
    if head not in HEADS[task]:
        raise CleanDiftError(f"--head {head}: a {task} probe is {' or '.join(HEADS[task])}")
    samples = load_dense(args["data"], dataset, args["split"], args["limit"])
    extractor = open_features((args["tap"],), args)
    source = CachedFeatures(
        extractor, args["tap"], FeatureCache(args["cache"] or args["out"] / "feature-cache")
    )
    classes = 256 if head == "bins" else 1 if head == "regression" else args["classes"]
    info = probe_record(source, task, head, classes)
    settings = ProbeTrainSettings(
        epochs=args["epochs"],
        batch_size=args["batch_size"],
        lr=args["lr"],
        weight_decay=args["weight_decay"],
        warmup_epochs=args["warmup_epochs"],
    )
    steps = settings.epochs * -(-len(samples) * (2 if args["flips"] else 1) // settings.batch_size)
    # under torchrun every rank trains its share of each batch (the head on the CPU, gloo)
    with session("cpu") as world:
        if not world.main:
            train_on_cache(
                source, samples, info, settings, args["out"], flips=args["flips"],
                resume=args["resume"], world=world,
            )  # fmt: skip
            return
        with bar("caching features") as on_cache, training_progress(0, steps, console) as on_step:
            result = train_on_cache(
                source, samples, info, settings, args["out"], flips=args["flips"],
                resume=args["resume"], on_cache=on_cache, on_step=on_step, world=world,
            )  # fmt: skip
    console.print(
        f"wrote {result.files['probe']} ({task}, {head}, tap {args['tap']}); "
        f"{source.cache.extractions} extractions; loss {result.history[0]:.4f} -> "
        f"{result.history[-1]:.4f} over {len(result.history)} steps"
    )


@probe_group.command("eval")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Data set root.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Default: by the probe's task.")
@click.option("--split", default=None, help="Default: test (nyu), val (voc).")
@click.option("--limit", type=int, default=None, help="At most N images.")
@output_option()
@click.option("--probe", type=click.Path(path_type=Path), help="Probe file (with features).")
@click.option("--eigen-crop", is_flag=True, help="NYUv2: score inside the Eigen crop only.")
@click.option("--pictures", type=int, default=8, show_default=True, help="Pictures to draw.")
@model_options
def eval_command(**args: Any) -> None:
    """Evaluate a probe file on features, or an exported graph with the probe inside."""
    from ..eval.probes import evaluate_dense

    predictor, describe = _predictor(args)
    task = predictor.info.task
    dataset = args["dataset"] or ("nyu" if task == "depth" else "voc")
    split = args["split"] or ("test" if dataset == "nyu" else "val")
    samples = load_dense(args["data"], dataset, split, args["limit"])
    describe.update({"dataset": dataset, "data": str(args["data"]), "split": split})
    with bar(f"evaluating {task}") as on_progress:
        result = evaluate_dense(
            predictor, samples, args["out"], describe=describe, eigen_crop=args["eigen_crop"],
            pictures=args["pictures"], on_progress=on_progress,
        )  # fmt: skip
    metrics = result.document["metrics"]
    if task == "depth":
        aware, invariant = metrics["scale_aware"], metrics["scale_invariant"]
        line = (
            f"RMSE {aware['rmse']:.4f} m, AbsRel {aware['abs_rel']:.4f}, d1 {aware['d1']:.4f} "
            f"(scale-invariant RMSE {invariant['rmse']:.4f})"
        )
    else:
        line = f"mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}"
    console.print(f"{len(samples)} images: {line}; wrote {args['out'] / 'results.json'}")


def _predictor(args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from ..eval.cache import FeatureCache
    from ..eval.probes import CachedFeatures, GraphPredictor, ProbePredictor, check_squash
    from ..models.probe_heads import load_probe

    if args["probe"] is None:
        if args["model"] is None:
            raise CleanDiftError("give --probe PROBE (with --model/--source) or --model GRAPH")
        extractor = open_features(None, args)
        record = extractor.manifest.build.get("probe")
        if not record:
            raise CleanDiftError(
                f"{args['model']} has no probe inside: export it with --head, or pass --probe"
            )
        from ..models.probe_heads import ProbeInfo

        predictor: Any = GraphPredictor(extractor, ProbeInfo(**record["info"]))
        probe_desc = {"sha256": record["sha256"], "path": record["path"], "inside_graph": True}
    else:
        probe = load_probe(args["probe"])
        extractor = open_features((probe.info.tap,), args)
        cache = FeatureCache(args["cache"] or args["out"] / "feature-cache")
        predictor = ProbePredictor(CachedFeatures(extractor, probe.info.tap, cache), probe)
        probe_desc = {"sha256": probe.sha256, "path": str(probe.path), "inside_graph": False}
    check_squash(extractor)
    describe = {
        "probe": probe_desc,
        "model": None if args["model"] is None else str(args["model"]),
        "backend": extractor.backend_name,
        "manifest_sha256": extractor.manifest_sha256,
        "manifest": json.loads(extractor.manifest.to_json()),
        "image_size": list(extractor.image_size),
    }
    return predictor, describe


@click.command("knn")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="ROOT/{train,val}.")
@output_option()
@click.option("--taps", default=None, help="Comma-separated taps (default: all of the model's).")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--limit", type=int, default=None, help="At most N images per class and split.")
@model_options
def knn_command(**args: Any) -> None:
    """kNN classification (k=10, cosine, pooled taps): top-1/top-5, weighted and majority."""
    import torch

    from ..atomic import write_text_atomic
    from ..eval.cache import FeatureCache
    from ..eval.imagefolder import class_names, load_split
    from ..eval.knn import knn_markdown, knn_results, pooled_features

    names = class_names(args["data"])
    train = load_split(args["data"], "train", names, args["limit"])
    val = load_split(args["data"], "val", names, args["limit"])
    taps = None if args["taps"] is None else tuple(t for t in args["taps"].split(",") if t)
    if taps is None and args["model"] is None:
        taps = ("mid", "us3", "us6", "us9")
    extractor = open_features(taps, {**args, "prompt": args["prompt"] or ""})
    cache = FeatureCache(args["cache"] or args["out"] / "feature-cache")
    with bar("train features") as on_train:
        train_features = pooled_features(extractor, train, cache, on_train)
    with bar("val features") as on_val:
        val_features = pooled_features(extractor, val, cache, on_val)
    train_labels = torch.tensor([item.label for item in train])
    val_labels = torch.tensor([item.label for item in val])
    results = knn_results(train_features, train_labels, val_features, val_labels, names, args["k"])
    document = {
        "k": args["k"],
        "pooling": "global average, L2-normalised",
        "temperature": 0.07,
        "classes": names,
        "train_images": len(train),
        "val_images": len(val),
        "model": None if args["model"] is None else str(args["model"]),
        "backend": extractor.backend_name,
        "manifest_sha256": extractor.manifest_sha256,
        "extractions": cache.extractions,
        "taps": results,
    }
    write_text_atomic(args["out"] / "results.json", json.dumps(document, indent=2) + "\n")
    write_text_atomic(args["out"] / "results.md", knn_markdown(results))
    console.print(knn_markdown(results))


COMMANDS: list[click.Command] = [probe_group]
EVAL_SUBCOMMANDS: list[click.Command] = [knn_command]
