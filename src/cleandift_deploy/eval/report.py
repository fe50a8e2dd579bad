"""What `eval pck` writes: results.json, predictions.jsonl, results.md and match pictures.

predictions.jsonl holds every prediction and threshold in original target pixels, so anyone can
recompute every number of results.json from it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_text_atomic
from .draw import draw_matches
from .pck import alpha_key
from .protocol import PairSample
from .scoring import Evaluation

PICTURES = 5
PICTURE_ALPHA = 0.1


def results_document(
    evaluation: Evaluation,
    header: dict[str, Any],
    model: dict[str, Any],
    alphas: Sequence[float],
) -> dict[str, Any]:
    """results.json's content: the run's header, the model's description and the PCK table."""
    return {
        **header,
        "pairs": len(evaluation.samples),
        "points": int(sum(len(s.distances) for s in evaluation.scores)),
        "category_pairs": dict(Counter(s.category for s in evaluation.samples)),
        "model": model,
        "tap": model.get("tap"),
        "mode": model.get("mode"),
        "alphas": [alpha_key(a) for a in alphas],
        "pck": evaluation.pck,
    }


def prediction_lines(evaluation: Evaluation, alphas: Sequence[float]) -> str:
    """One JSON line per pair: id, category, predicted and true points, every threshold."""
    lines = []
    for sample, predicted, score in zip(
        evaluation.samples, evaluation.predictions, evaluation.scores, strict=True
    ):
        record: dict[str, Any] = {
            "pair": sample.pair_id,
            "category": sample.category,
            "predicted": predicted.tolist(),
            "truth": sample.target_points.tolist(),
        }
        for alpha in alphas:
            record[f"threshold_{alpha_key(alpha)}"] = alpha * score.length
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def markdown_table(document: dict[str, Any]) -> str:
    """results.md: a per-category table of PCK (per image / per point, in %) at every alpha."""
    alphas = document["alphas"]
    pck = document["pck"]
    head = " | ".join(f"@{a} img / pt" for a in alphas)
    lines = [
        f"# PCK on {document['dataset']} ({document['split']}): {document['pairs']} pairs, "
        f"{document['points']} points, threshold = alpha x {document['convention']}",
        "",
        f"Model: `{json.dumps(document['model'], sort_keys=True)}`",
        "",
        f"| category | pairs | {head} |",
        "|---|---:|" + "---:|" * len(alphas),
    ]
    categories = pck[alphas[0]]["per_category"]
    counts = document.get("category_pairs", {})
    rows = [(c, counts.get(c, ""), [pck[a]["per_category"][c] for a in alphas]) for c in categories]
    rows.append(("**all (per pair / point)**", document["pairs"], [pck[a] for a in alphas]))
    rows.append(("**mean over categories**", "", [pck[a]["category_mean"] for a in alphas]))
    rows.append(("**pair-weighted categories**", "", [pck[a]["pair_weighted"] for a in alphas]))
    for name, count, values in rows:
        cells = " | ".join(
            f"{100 * v['per_image']:.2f} / {100 * v['per_point']:.2f}" for v in values
        )
        lines.append(f"| {name} | {count} | {cells} |")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, document: dict[str, Any], evaluation: Evaluation, alphas: Sequence[float]
) -> None:
    """results.json, predictions.jsonl and results.md in `out`, each written atomically."""
    write_text_atomic(out / "results.json", json.dumps(document, indent=2) + "\n")
    write_text_atomic(out / "predictions.jsonl", prediction_lines(evaluation, alphas))
    write_text_atomic(out / "results.md", markdown_table(document))


def ranked_pairs(evaluation: Evaluation) -> list[int]:
    """Pair indices from best to worst: PCK@0.1 per pair, then mean relative error."""

    def key(index: int) -> tuple[float, float]:
        score = evaluation.scores[index]
        if not len(score.distances):
            return (0.0, np.inf)
        relative = score.distances / max(score.length, 1e-9)
        return (-float((relative <= PICTURE_ALPHA).mean()), float(relative.mean()))

    return sorted(range(len(evaluation.samples)), key=key)


def picture_title(
    label: str, rank: int, sample: PairSample, correct: np.ndarray, tolerance: float
) -> list[str]:
    """The two title lines of a best/worst picture: which pair, its score, what is where."""
    share = f"{int(correct.sum())} of {len(correct)} points"
    percent = f"{100 * correct.mean():.0f}%" if len(correct) else "-"
    return [
        f"{label} pair {rank} of {PICTURES}: {sample.pair_id} ({sample.category}), "
        f"PCK@{PICTURE_ALPHA}: {share} correct ({percent})",
        f"left: source {Path(sample.source_path).name}, right: target "
        f"{Path(sample.target_path).name}; tolerance {tolerance:.1f} px "
        f"({PICTURE_ALPHA} x the pair's PCK reference length)",
    ]


def draw_extremes(out: Path, evaluation: Evaluation) -> list[Path]:
    """Pictures of the five best and five worst pairs (green: within alpha 0.1, red: not; a
    wrong match's true point dashed in yellow), each with a title, its score and a legend."""
    ranked = ranked_pairs(evaluation)
    chosen = [("best", r + 1, i) for r, i in enumerate(ranked[:PICTURES])]
    chosen += [("worst", r + 1, i) for r, i in enumerate(ranked[::-1][:PICTURES])]
    written = []
    for label, rank, index in chosen:
        sample, score = evaluation.samples[index], evaluation.scores[index]
        tolerance = PICTURE_ALPHA * score.length
        correct = score.distances <= tolerance
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", sample.pair_id)
        path = out / "pictures" / f"{label}_{rank}_{name}.png"
        with Image.open(sample.source_path) as source, Image.open(sample.target_path) as target:
            draw_matches(
                source,
                target,
                sample.source_points,
                evaluation.predictions[index],
                path,
                correct,
                title=picture_title(label, rank, sample, correct, tolerance),
                truth=sample.target_points,
                tolerance=tolerance,
            )
        written.append(path)
    return written
