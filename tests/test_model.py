"""DGL model: golden parity with the reference implementation, parameter counts, batching, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgl_deploy import DGLError
from dgl_deploy.model.model import create_model
from dgl_deploy.model.reference import import_reference
from dgl_deploy.model.tokenizer import Tokenizer, tokenizer_for
from tests.conftest import golden_case


@pytest.mark.parametrize("latent", ["linear", "transformer"])
def test_golden_parity(latent: str) -> None:
    pth, cfg, npz = golden_case(latent)
    model = import_reference(pth, frames=cfg["frames"], max_words=cfg["max_words"]).eval()
    data = np.load(npz)
    assert model.config.latent == cfg["shared_latent_space"]
    assert model.config.prompt_layers == cfg["prompt_layers"]
    assert model.config.text_prompts == cfg["text_prompts"]
    assert model.embed_dim == cfg["embed_dim"] and model.image_size == cfg["image_size"]
    with torch.no_grad():
        text = model.encode_text_features(torch.from_numpy(data["text_ids"]))
        video = model.encode_video_features(torch.from_numpy(data["video"]))
    np.testing.assert_allclose(text.numpy(), data["text_embedding"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(video.numpy(), data["video_embedding"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("latent,expected", [("linear", 0.83e6), ("transformer", 9.6e6)])
def test_vit_b32_trainable_counts(latent: str, expected: float) -> None:
    model = create_model("ViT-B-32", pretrained=None, latent=latent)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(not n.startswith("clip.") for n in trainable), "only prompt parameters may be trainable"
    assert set(trainable) == set(model.prompt_parameters())
    assert abs(sum(trainable.values()) - expected) / expected < 0.01


def test_towers_are_shared_not_copied(tiny_model) -> None:
    clip_params = {id(p) for p in tiny_model.clip.parameters()}
    others = [p for n, p in tiny_model.named_parameters() if not n.startswith("clip.")]
    assert not clip_params & {id(p) for p in others}
    assert sum(p.numel() for p in tiny_model.parameters()) == sum(p.numel() for p in tiny_model.clip.parameters()) + \
        sum(p.numel() for p in others)


def _videos(model, batch: int) -> torch.Tensor:
    cfg = model.config
    return torch.randn(batch, cfg.frames, 3, model.image_size, model.image_size)


def test_video_embedding_independent_of_batch(tiny_model) -> None:
    videos = _videos(tiny_model, 8)
    with torch.no_grad():
        together = tiny_model.encode_video(videos)
        alone = torch.cat([tiny_model.encode_video(v[None]) for v in videos])
        reordered = tiny_model.encode_video(videos.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(together, reordered, atol=1e-5, rtol=0)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(8))


def test_frame_order_matters_for_transformer_latent(tiny_model) -> None:
    """Per-frame prompts make the embedding order-aware (the linear latent uses one prompt for all frames)."""
    video = _videos(tiny_model, 1)
    with torch.no_grad():
        forward, backward = tiny_model.encode_video(video), tiny_model.encode_video(video.flip(1))
    assert (forward - backward).abs().max() > 1e-4


def test_text_padding_and_postfix_prompts_do_not_change_output(tiny_model) -> None:
    """EOT pooling under the causal mask: padding after EOT (and the postfix prompts there) has no effect."""
    tok = tokenizer_for(tiny_model)
    ids = tok(["a red circle moves left", "a dog"])
    with torch.no_grad():
        full = tiny_model.encode_text(ids)
        short = tiny_model.encode_text(ids[:, :8])
    torch.testing.assert_close(full, short, atol=1e-5, rtol=0)


def test_token_order_matters(tiny_model) -> None:
    tok = tokenizer_for(tiny_model)
    with torch.no_grad():
        a, b = tiny_model.encode_text(tok(["red moves left", "left moves red"]))
    assert (a - b).abs().max() > 1e-4


def test_tokenizer_layout() -> None:
    tok = Tokenizer(max_words=6)
    ids = tok(["a b c d e f g h", "hi"])
    assert ids.shape == (2, 6) and ids.dtype == torch.int64
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407  # truncation keeps EOT
    assert ids[1].tolist()[:3] == [49406, ids[1, 1].item(), 49407] and ids[1, 3:].eq(0).all()
    with pytest.raises(DGLError, match="vocabulary"):
        Tokenizer(max_words=8, vocab_size=1000)


def test_logits_use_frozen_scale() -> None:
    """Spec section 4: logits = exp(logit_scale) * cosine, CLIP's logit scale frozen. A fresh backbone starts at
    CLIP's ln(1 / 0.07); set to ln(100), the logits of hand-made unit vectors are 100 x their cosines worked out by
    hand, and the scale gets no gradient and is none of the parameters training optimises."""
    model = create_model("dgl-tiny", pretrained=None)
    scale = model.clip.logit_scale
    assert scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        scale.fill_(math.log(100))
    text = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], requires_grad=True)
    video = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.6, 0.8]])
    cosines = torch.tensor([[1.0, 0.0, 0.8, 0.0], [0.6, 0.8, 0.96, 0.48]])  # 0.6*0.8 + 0.8*0.6; 0.8*0.6
    logits = model.logits(text, video)
    torch.testing.assert_close(logits, 100 * cosines)
    logits.sum().backward()
    assert text.grad is not None and scale.grad is None and not scale.requires_grad
    assert all(p is not scale for p in model.prompt_parameters().values())


def test_only_prompts_get_gradients(tiny_model) -> None:
    tok = tokenizer_for(tiny_model)
    text, video = tiny_model(tok(["a", "b"]), _videos(tiny_model, 2))
    tiny_model.logits(text, video).sum().backward()
    assert all(p.grad is None for p in tiny_model.clip.parameters())
    assert all(p.grad is not None for p in tiny_model.prompt_parameters().values())
    tiny_model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("shape,match", [
    ((1, 3, 3, 32, 32), "video frames"),  # wrong frame count
    ((1, 4, 3, 64, 64), "video frames"),  # wrong image size
    ((1, 4, 32, 32, 3), "video frames"),  # channels last
])
def test_bad_video_inputs(tiny_model, shape, match) -> None:
    with pytest.raises(DGLError, match=match):
        tiny_model.encode_video(torch.zeros(shape))


def test_bad_text_inputs(tiny_model) -> None:
    with pytest.raises(DGLError, match="max_words"):
        tiny_model.encode_text(torch.ones(1, tiny_model.config.max_words + 1, dtype=torch.long))
    with pytest.raises(DGLError, match="integer"):
        tiny_model.encode_text(torch.ones(1, 4))


def test_unsupported_backbones_rejected() -> None:
    with pytest.raises(DGLError, match="not supported"):
        create_model("RN50", pretrained=None)
    with pytest.raises(DGLError, match="unknown CLIP model"):
        create_model("no-such-model", pretrained=None)


def test_bad_config_rejected() -> None:
    with pytest.raises(DGLError, match="prompt_layers"):
        create_model("dgl-tiny", pretrained=None, prompt_layers=5)
    with pytest.raises(DGLError, match="latent"):
        create_model("dgl-tiny", pretrained=None, latent="mlp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda(tiny_model, dtype) -> None:
    model = tiny_model.cuda()
    videos = _videos(model, 2).cuda()
    with torch.no_grad():
        ref = model.encode_video(videos)
        with torch.autocast("cuda", dtype=dtype):
            low = model.encode_video(videos)
    assert torch.nn.functional.cosine_similarity(ref, low.float()).min() > 0.99
    tiny_model.cpu()
