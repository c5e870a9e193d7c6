"""CLIP score with a tiny, randomly initialised open_clip model built here (no download)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kakusan.errors import UserError
from lightning_modules.callbacks.metrics import CLIPScoreCallback
from lightning_modules.metrics.clip_score import CLIPScore, load_clip

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
PROMPTS = ["a handwritten digit seven", "a photo of a cat", "zero", "two ones"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def _images(n: int, size: int = 32) -> torch.Tensor:
    u8 = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1))
    return u8.float() / 127.5 - 1   # exactly on the uint8 grid, so a PNG/PIL path sees the same pixels


def test_clip_score_matches_an_independent_computation(tiny_clip):
    import open_clip

    scorer = load_clip(str(tiny_clip))
    images = _images(4)
    ours = scorer.per_pair(images, PROMPTS)

    # independent: open_clip's own model loader, PIL transform and tokenizer
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_clip}")
    pil = [Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for x in images]
    with torch.no_grad():
        e_img = model.encode_image(torch.stack([preprocess(p) for p in pil]))
        e_txt = model.encode_text(tokenizer(PROMPTS))
    cos = F.cosine_similarity(e_img, e_txt, dim=-1)
    expected = 100 * cos.clamp(min=0)
    torch.testing.assert_close(ours, expected, atol=1e-3, rtol=1e-4)
    assert scorer.score(images, PROMPTS) == pytest.approx(float(expected.mean()), abs=1e-3)

    metric = CLIPScore(scorer)
    metric.update(images[:1], PROMPTS[:1])
    metric.update(images[1:], PROMPTS[1:])
    assert float(metric.compute()) == pytest.approx(float(expected.mean()), abs=1e-3)


def test_clip_score_takes_grey_and_other_sizes(tiny_clip):
    scorer = load_clip(f"local-dir:{tiny_clip}")
    grey = _images(2, 28)[:, :1]
    s = scorer.per_pair(grey, PROMPTS[:2])
    assert s.shape == (2,) and torch.all((s >= 0) & (s <= 100))
    np.testing.assert_allclose(s, scorer.per_pair(grey.repeat(1, 3, 1, 1), PROMPTS[:2]), atol=1e-5)
    with pytest.raises(UserError, match="prompts"):
        scorer.per_pair(grey, PROMPTS)


def test_clip_without_weights_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("KAKUSAN_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"ViT-B-32/laion2b_s34b_b79k.*clip/ViT-B-32/laion2b_s34b_b79k"):
        load_clip("ViT-B-32", "laion2b_s34b_b79k", allow_download=True)   # tests never download
    cb = CLIPScoreCallback(model="ViT-B-32", pretrained="laion2b_s34b_b79k", prompts=PROMPTS)
    with pytest.raises(UserError, match="not available locally"):
        cb.setup(None, None, "fit")   # before training starts
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no weights"):
        load_clip(str(tmp_path / "empty"))
