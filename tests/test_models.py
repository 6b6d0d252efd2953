"""Backbones: every registered preset builds, runs and validates sizes; conditioning works.

Large presets are exercised on the ``meta`` device (shape inference, no memory, no compute), so
the contract tests follow the registry without costing time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.core.registry import UnknownChoiceError
from bench.models import MODELS, DiTConfig, UNetConfig, build_model, count_parameters, validate_model
from bench.models.embeddings import num_groups, sincos_pos_embed_2d, timestep_embedding
from bench.models.unet import AttnBlock

PRESETS = MODELS.names()
REAL_FORWARD_MAX_PARAMS = 200_000_000  # above this only shapes are inferred (meta device)




def _size(name: str) -> int:
    """A small image size the preset divides."""
    return max(8, MODELS.meta(name)["divisor"])


def _meta_build(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kw)


def _randomize_zero_params(model: nn.Module) -> nn.Module:
    """Fresh models start with zeroed output layers (DDPM / adaLN-Zero); give them weights."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def test_registry_has_required_presets():
    assert {"unet-tiny", "unet-small", "unet-cifar", "dit-tiny", "dit-s-2", "dit-b-2"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_metadata(name):
    """Every preset's metadata is what its config says (whatever its family), and it builds."""
    meta, cfg = MODELS.meta(name), MODELS.get(name)
    assert meta["kind"] == cfg.kind and meta["divisor"] == cfg.divisor and meta["divisor_reason"]
    assert all(meta[k] == v for k, v in cfg.size_meta().items())
    assert any(meta[k] == cfg.divisor for k in cfg.size_meta())  # the divisor is one of its sizes
    assert isinstance(_meta_build(name, in_channels=3, image_size=_size(name)), nn.Module)


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize("num_classes", [None, 10])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_output_shape(name, channels, num_classes, learned_variance):
    size = _size(name)
    model = _meta_build(
        name,
        in_channels=channels,
        image_size=size,
        num_classes=num_classes,
        learned_variance=learned_variance,
    )
    assert model.num_classes == num_classes
    x = torch.empty(2, channels, size, size, device="meta")
    t = torch.zeros(2, dtype=torch.long, device="meta")
    y = None if num_classes is None else torch.tensor([0, num_classes], device="meta")
    out = model(x, t, y)
    assert out.shape == (2, channels * (2 if learned_variance else 1), size, size)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_real_forward(name):
    if count_parameters(_meta_build(name, in_channels=3, image_size=8)) > REAL_FORWARD_MAX_PARAMS:
        pytest.skip(f"{name} is large: covered by the meta-device shape tests")
    size = _size(name)
    torch.manual_seed(0)
    model = _randomize_zero_params(
        build_model(name, in_channels=3, image_size=size, num_classes=10, learned_variance=True)
    )
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size), torch.tensor([7]), torch.tensor([3]))
    assert out.shape == (1, 6, size, size)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_unet_cifar_has_ddpm_parameter_count():
    # Ho et al. 2020, appendix B: 35.7M parameters for the CIFAR-10 model
    n = count_parameters(_meta_build("unet-cifar", in_channels=3, image_size=32))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n


@pytest.mark.parametrize("name, published", [("dit-s-2", 33.0e6), ("dit-b-2", 130.5e6)])
def test_dit_parameter_counts_match_paper(name, published):
    # Peebles & Xie 2023, table 4: ImageNet 256 latents (4 x 32 x 32), 1000 classes, learned sigma
    model = _meta_build(name, in_channels=4, image_size=32, num_classes=1000, learned_variance=True)
    n = count_parameters(model) + model.pos_embed.numel()  # DiT stores its fixed pos-embed as a parameter
    assert abs(n - published) / published < 0.01, n


@pytest.mark.parametrize(
    "name, size, expected",
    [
        ("unet-cifar", 32, {16, 4}),  # DDPM: attention at 16x16 (plus the middle block at 4x4)
        ("unet-cifar", 64, {32, 8}),
        ("unet-small", 16, {4}),
        ("unet-tiny", 8, {4}),
    ],
)
def test_unet_attention_resolutions_are_relative(name, size, expected):
    model = _meta_build(name, in_channels=3, image_size=size)
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, AttnBlock):
            m.register_forward_hook(lambda mod, inp, out: seen.add(inp[0].shape[-1]))
    model(torch.empty(1, 3, size, size, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    assert seen == expected


@pytest.mark.parametrize("name", ["unet-tiny", "dit-tiny"])
def test_class_conditioning_and_null_label(name):
    torch.manual_seed(0)
    model = _randomize_zero_params(build_model(name, in_channels=1, image_size=8, num_classes=10))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        a = model(x, t, torch.tensor([1, 1]))
        b = model(x, t, torch.tensor([2, 2]))
        null = model(x, t, torch.tensor([10, 10]))  # label num_classes = no class
        none = model(x, t, None)
    assert not torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, null, atol=1e-5)
    torch.testing.assert_close(null, none)


@pytest.mark.parametrize("name", ["unet-tiny", "dit-tiny"])
def test_output_depends_on_timestep(name):
    torch.manual_seed(0)
    model = _randomize_zero_params(build_model(name, in_channels=1, image_size=8))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        early, late = model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500]))
        per_sample = model(x, torch.tensor([0, 500]))
    assert not torch.allclose(early, late, atol=1e-5)
    torch.testing.assert_close(per_sample[0], early[0])
    torch.testing.assert_close(per_sample[1], late[1])


@pytest.mark.parametrize("name", ["unet-tiny", "dit-tiny"])
def test_unconditional_model_rejects_labels(name):
    model = build_model(name, in_channels=1, image_size=8)
    assert model.num_classes is None
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_dropout_override():
    keep = _meta_build("unet-cifar", in_channels=3, image_size=32)
    over = _meta_build("unet-cifar", in_channels=3, image_size=32, dropout=0.3)
    assert {m.p for m in keep.modules() if isinstance(m, nn.Dropout)} == {0.1}
    assert {m.p for m in over.modules() if isinstance(m, nn.Dropout)} == {0.3}


def test_dit_runs_at_other_grid_sizes_and_shares_weights():
    torch.manual_seed(0)
    small = build_model("dit-tiny", in_channels=1, image_size=8)
    big = build_model("dit-tiny", in_channels=1, image_size=16)
    big.load_state_dict(small.state_dict())  # the fixed pos-embed is not part of the weights
    assert small(torch.randn(2, 1, 12, 16), torch.tensor([1, 2])).shape == (2, 1, 12, 16)


def test_sincos_pos_embed_matches_mae_formula():
    def mae_1d(dim, pos):  # He et al. 2022 reference implementation (numpy)
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gw, dim = 2, 3, 16
    grid = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    expected = np.concatenate([mae_1d(dim // 2, grid[0]), mae_1d(dim // 2, grid[1])], axis=1)
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, gh, gw).numpy(), expected, atol=1e-6)


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0].item() == pytest.approx(math.cos(3.0)) and emb[1, 4].item() == pytest.approx(
        math.sin(3.0)
    )


@pytest.mark.parametrize("channels, groups", [(32, 32), (64, 32), (16, 16), (48, 24), (3, 3), (96, 32)])
def test_group_count_divides_channels(channels, groups):
    assert num_groups(channels) == groups


@pytest.mark.parametrize("name", PRESETS)
def test_validate_model_accepts_divisible_and_rejects_others(name, monkeypatch):
    d = MODELS.meta(name)["divisor"]
    boom = pytest.fail  # validation must not build a network
    monkeypatch.setattr(UNetConfig, "build", lambda *a, **k: boom("built"))
    monkeypatch.setattr(DiTConfig, "build", lambda *a, **k: boom("built"))
    validate_model(name, 3, 4 * d)
    with pytest.raises(BenchError) as err:
        validate_model(name, 3, 4 * d + 1, where="study.yaml: model.backbone")
    msg = str(err.value)
    assert "study.yaml: model.backbone" in msg and f"divisible by {d}" in msg and str(4 * d + 1) in msg
    assert f"data.image_size: {4 * d} or {5 * d}" in msg


def test_validate_model_unknown_preset_suggests():
    with pytest.raises(UnknownChoiceError) as err:
        validate_model("unet-tiyn", 1, 8)
    assert isinstance(err.value, BenchError)
    msg = str(err.value)
    assert "model.backbone" in msg and "Did you mean 'unet-tiny'" in msg and "dit-b-2" in msg


@pytest.mark.parametrize("channels, size", [(0, 8), (1, 0), (1, 8.0), (True, 8)])
def test_validate_model_rejects_bad_numbers(channels, size):
    with pytest.raises(BenchError, match="positive integer"):
        validate_model("unet-tiny", channels, size)


def test_build_model_validates_size_and_classes():
    with pytest.raises(BenchError, match="divisible by 8"):
        build_model("unet-cifar", 3, 28)
    with pytest.raises(BenchError, match="num_classes"):
        build_model("unet-tiny", 1, 8, num_classes=0)
