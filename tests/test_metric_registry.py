"""The metric registry's contract, over every registered metric and output (tiny real inputs)."""

from __future__ import annotations

import warnings

import pytest
import torch

from bench.core.config import DataSpec
from bench.data import load_images
from bench.metrics import METRICS, OUTPUTS, FIDSampleSizeWarning, ModelContext, compute_metrics
from bench.metrics.registry import always_outputs, maker_of


@pytest.mark.parametrize("key", OUTPUTS.names())
def test_every_output_describes_itself(key: str) -> None:
    out = OUTPUTS.get(key)
    assert out.key == key and out.label and format(1.2345, out.fmt)
    assert out.higher_is_better in (True, False, None)
    assert out.spread is None or out.spread in OUTPUTS
    assert maker_of(key) is not None or key in always_outputs()


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_computes_its_declared_outputs(name: str, request) -> None:
    """Each entry's compute, on 80 real digits against the test split (its own set as the
    generated images where it takes images), returns exactly its declared output keys. Metrics
    in a foundation model's feature space (fd_dinov2, cmmd) run on 12 digits against 12 others
    through random-weight files of the smallest DINOv2 / CLIP (a ViT forward is costly on a CPU)."""
    metric = METRICS.get(name)
    data = load_images(DataSpec(dataset="digits"), "test")
    images, labels = data.images[:80], data.labels[:80]
    if metric.needs_model:
        from bench.diffusion import Diffusion

        class Zero(torch.nn.Module):
            def forward(self, x, t, y=None):
                return torch.zeros_like(x)

        class Identity:  # a codec whose latents are the images themselves
            def encode(self, x):
                return x

        codec = Identity() if metric.needs_space == "latent" else None
        ctx = ModelContext(Diffusion("cosine", 20), Zero(), codec, images[:4], None, "cpu", 0)
        values = metric.compute(ctx)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FIDSampleSizeWarning)
            kw: dict = {"reference": "digits:test"}
            if metric.feature_space:
                from conftest import FOUNDATION_MODELS

                images, kw = images[:12], {"reference": data.images[12:24], "feature_models": FOUNDATION_MODELS,
                                           "feature_weights": request.getfixturevalue("foundation_weights")}
            values = compute_metrics(images, extractor="domain:digits", metrics=[name],
                                     labels=labels if metric.needs_labels else None, kid_subset_size=40,
                                     progress=False, **kw)
    assert set(values) == set(metric.keys)
    assert all(isinstance(v, float) and v == v for v in values.values())
    if name == "class_accuracy":  # real digits with their true labels: the classifier agrees
        assert values["class_accuracy"] > 0.9
    if name == "fid":
        assert metric.min_samples(64) == 65
