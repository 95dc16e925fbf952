"""CLIPScore parity with torchmetrics, on one tiny random CLIP saved locally (transformers layout)."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.multimodal.clip_score import _clip_score_update
from torchmetrics.multimodal.clip_score import CLIPScore

from cofe_bench import CLIPScorer
from cofe_bench.standins import save_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    # seed 4: this random CLIP scores the test faces positively (~45), so the clamped mean below is not trivially 0
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), seed=4)


class _TensorFeatures(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_tokenizer_matches_open_clip(clip_dir):
    import open_clip

    scorer = CLIPScorer.from_pretrained(clip_dir)
    text = "A woman with curly hair turns her head and smiles at the camera."
    ids = scorer.processor.tokenizer(text)["input_ids"]
    ref = open_clip.get_tokenizer("ViT-B-32")([text])[0]
    assert ids == ref[: len(ids)].tolist()


def test_parity_with_torchmetrics(clip_dir, faces):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    frames = list(faces.values())[:4]
    prompt = "a person looking at the camera"
    ours, truncated = scorer.score(frames, prompt)
    assert not truncated and ours.shape == (4,)

    # torchmetrics takes the same model and processor through its callable hook (by name it only accepts "openai/..."
    # hub ids). torchmetrics 1.9 expects get_*_features to return tensors, transformers 5 returns output objects
    # whose pooler_output is the projected embedding: a two-method adapter bridges that, nothing else changes.
    model = _TensorFeatures(scorer.model)

    def loader():
        return model, scorer.processor

    imgs = [torch.from_numpy(f).permute(2, 0, 1) for f in frames]  # (3, H, W) uint8
    ref, n = _clip_score_update(imgs, [prompt] * 4, model, scorer.processor)
    assert n == 4
    np.testing.assert_allclose(ours, ref.double().numpy(), rtol=1e-5, atol=1e-4)
    metric = CLIPScore(model_name_or_path=loader)
    metric.update(imgs, [prompt] * 4)
    # torchmetrics clamps the mean at 0 (Hessel et al.'s max(cos, 0)); ConsisID averages unclamped scores.
    assert ours.mean() > 10
    assert float(metric.compute()) == pytest.approx(max(float(ours.mean()), 0.0), abs=1e-4)


def test_long_prompt_is_truncated_with_warning(clip_dir, faces):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    prompt = " ".join(["a smiling woman walks through a sunny park"] * 12)
    with pytest.warns(UserWarning, match=r"truncated to 77"):
        scores, truncated = scorer.score([faces["p0"]], prompt)
    assert truncated and np.isfinite(scores).all()


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        CLIPScorer.from_pretrained(tmp_path)
