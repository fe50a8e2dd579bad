"""The image side: VAE posterior mean, image -> features composition, prompt embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_helpers import tiny_text_pipeline
from transformers import CLIPTextModel, CLIPTokenizer

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models import (
    FeatureUNet,
    ImageFeatureModel,
    VAEEncoder,
    encode_prompt,
    load_vae,
    prompt_embedding,
)


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    torch.manual_seed(11)
    return load_vae(None, "tiny", random_init=True)


def test_vae_encoder_is_the_scaled_posterior_mean(vae) -> None:
    image = torch.rand(2, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(image).latent_dist.mean * vae.config.scaling_factor
        got = VAEEncoder(vae)(image)
    assert got.shape == (2, 4, 8, 16)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_image_model_composes_encoder_and_unet(vae, tiny) -> None:
    image = torch.rand(3, 3, 128, 64) * 2 - 1
    prompt = torch.randn(1, 77, 32)
    encoder, features = VAEEncoder(vae), FeatureUNet(tiny.unet, taps=("us3", "us6"))
    model = ImageFeatureModel(encoder, features, prompt)
    with torch.no_grad():
        expected = features(encoder(image), prompt)
        baked = model(image)
        given = ImageFeatureModel(encoder, features)(image, prompt)
    for tap in ("us3", "us6"):
        torch.testing.assert_close(baked[tap], expected[tap], atol=0, rtol=0)
        torch.testing.assert_close(given[tap], expected[tap], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (1, 3, 500, 375),
            r"image size 500x375 \(HxW\) is not a multiple of 64: use 448x320 or 512x384",
        ),
        ((1, 4, 64, 64), "image has 4 channels; the model expects 3"),
        ((3, 64, 64), r"must be a \[B,3,H,W\] batch"),
    ],
)
def test_bad_images_fail_in_one_line(vae, tiny, shape, message) -> None:
    model = ImageFeatureModel(VAEEncoder(vae), FeatureUNet(tiny.unet), torch.randn(1, 77, 32))
    with pytest.raises(CleanDiftError, match=message):
        model(torch.rand(shape))


def test_prompt_embedding_from_a_local_text_encoder(tmp_path: Path) -> None:
    tiny_text_pipeline(tmp_path)
    cat = encode_prompt(tmp_path, "a photo of a cat")
    assert cat.shape == (1, 77, 32)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    ids = tokenizer(
        "a photo of a cat", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    encoder = CLIPTextModel.from_pretrained(str(tmp_path / "text_encoder")).eval()
    with torch.no_grad():
        torch.testing.assert_close(cat, encoder(ids)[0], atol=0, rtol=0)
    dog = prompt_embedding(tmp_path, "tiny", "a photo of a dog")
    assert (dog - cat).abs().max() > 1e-3
    torch.testing.assert_close(prompt_embedding(tmp_path, "tiny", "a photo of a cat"), cat)


def test_prompt_without_text_encoder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="--prompt-input"):
        prompt_embedding(tmp_path, "tiny", "a cat")
    random = prompt_embedding(None, "sd21", random_init=True)
    assert random.shape == (1, 77, 1024) and random.std() > 0.5
