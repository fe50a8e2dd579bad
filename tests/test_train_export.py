"""A trained student goes through `export` and ONNX Runtime with its learned timestep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from train_helpers import make_image_folder, tiny_trainer

from cleandift_deploy.cli import main
from cleandift_deploy.manifest import Manifest, sidecar_path

pytestmark = pytest.mark.usefixtures("single_thread")


def test_exported_student_matches_the_trained_one_in_onnx_runtime(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images", 4, seed=0)
    trainer = tiny_trainer(data, tmp_path / "run", steps=3, lr=1e-2, taps=("us6",))
    files = trainer.run().student
    learned = trainer.distiller.timestep.detach()
    onnx_path = tmp_path / "student.onnx"
    main(
        [
            "export",
            str(files.full),
            "-o",
            str(onnx_path),
            "--taps",
            "us6",
            "--no-vae",
            "--prompt-input",
            "--no-agreement",
        ]
    )
    manifest = Manifest.load(sidecar_path(onnx_path))
    assert manifest.timestep == pytest.approx(float(learned), abs=1e-4)
    assert manifest.timestep != 261.0

    latents = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 77, 32)
    with torch.no_grad():
        expected = trainer.distiller.student(latents, context, learned)["us6"].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"latents": latents.numpy(), "encoder_hidden_states": context.numpy()}
    (got,) = session.run(["us6"], feeds)
    cosine = float(np.dot(got.ravel(), expected.ravel()))
    cosine /= float(np.linalg.norm(got) * np.linalg.norm(expected))
    assert cosine > 1 - 1e-6
    assert float(np.abs(got - expected).max()) < 1e-4
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 1e-5
