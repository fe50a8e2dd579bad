"""Shared set-up for the training tests: generated image folders and tiny random-teacher runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cleandift_deploy.models import load_vae, random_unet
from cleandift_deploy.train.conditioning import Conditioning
from cleandift_deploy.train.data import ImageFolder
from cleandift_deploy.train.loop import Trainer, TrainInputs, TrainSettings
from cleandift_deploy.train.noising import noise_scheduler

TEST_TAPS = ("us3", "us6")
"""Two taps at different depths keep the tiny runs fast while exercising more than one head."""


def blob_image(rng: np.random.Generator, height: int = 80, width: int = 96) -> Image.Image:
    """A random smooth image: a few coloured Gaussian blobs over a gradient (not pure noise)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = np.stack([xs / width, ys / height, np.full_like(xs, 0.5)], axis=-1)
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(6, 20)
        weight = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2))[..., None]
        canvas = canvas * (1 - weight) + rng.uniform(0, 1, 3) * weight
    return Image.fromarray((canvas * 255).clip(0, 255).astype(np.uint8))


def make_image_folder(
    folder: Path, count: int, seed: int, captions: bool = False, suffix: str = ".png"
) -> Path:
    """Write `count` generated images (and caption files) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        blob_image(rng).save(folder / f"img{index:03d}{suffix}")
        if captions:
            caption = {"caption": f"a photo number {index}"}
            (folder / f"img{index:03d}.json").write_text(json.dumps(caption))
    return folder


def tiny_inputs(data_dir: Path, seed: int = 1) -> TrainInputs:
    """A random tiny teacher, its random VAE and prompt, and the images of `data_dir`."""
    teacher = random_unet("tiny", seed=seed)
    return TrainInputs(
        teacher,
        load_vae(None, "tiny", random_init=True),
        Conditioning(None, "tiny", random_init=True),
        noise_scheduler(None),
        ImageFolder(data_dir, 64),
    )


def tiny_settings(**overrides: object) -> TrainSettings:
    """Test settings: lr 1e-3 (the recipe's 1e-5 does not move a tiny random model in a few
    dozen steps), no warm-up, batch 2, two taps."""
    values: dict[str, object] = {
        "taps": TEST_TAPS,
        "steps": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "warmup": 0,
        "save_every": 1000,
        "seed": 3,
    }
    values.update(overrides)
    return TrainSettings(**values)  # type: ignore[arg-type]


def tiny_trainer(data_dir: Path, out: Path, resume: bool = False, **overrides: object) -> Trainer:
    """A trainer over a tiny random teacher (same weights for the same seed)."""
    return Trainer(tiny_inputs(data_dir), tiny_settings(**overrides), out, resume=resume)


def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared 2-core machine, oversubscribed oneDNN threads spin
    and make the tiny runs 10-20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _byte_vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def make_tiny_pipeline(root: Path) -> Path:
    """A diffusers-style pipeline folder with random tiny weights: unet/, vae/, and a CLIP
    text_encoder/ + tokenizer/ (byte-level vocabulary, no merges), all safetensors."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cleandift_deploy.models import get_arch

    random_unet("tiny", seed=1).unet.save_pretrained(root / "unet")
    load_vae(None, "tiny", random_init=True).save_pretrained(root / "vae")
    vocab = _byte_vocab()
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(
        str(root / "tokenizer")
    )
    end = vocab["<|endoftext|>"]
    config = CLIPTextConfig(
        **{**get_arch("tiny").text_encoder, "vocab_size": len(vocab)},
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=end,
        pad_token_id=end,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        CLIPTextModel(config).save_pretrained(str(root / "text_encoder"))
    return root
