"""The KL autoencoder: it learns, its measured scale gives unit-variance latents, files round-trip."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict

import pytest
import torch

from bench.core.config import VAESpec
from bench.core.errors import BenchError
from bench.models import LatentCodec, build_vae, fit_vae, load_pretrained_vae, validate_vae

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
N_FIT = 1500  # digits used for fitting; the remaining 297 are never seen by the VAE
SPEC = VAESpec(factor=2, latent_channels=4, base_channels=8, steps=200, batch_size=64, lr=2e-3, seed=0)




@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = load_digits().images  # [1797, 8, 8], values 0..16
    return torch.from_numpy(images * 255.0 / 16.0).round().to(torch.uint8)[:, None]


@pytest.fixture(scope="module")
def codec(digits) -> LatentCodec:
    return fit_vae(digits[:N_FIT], SPEC, progress=False)


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def _mse(codec: LatentCodec, x: torch.Tensor) -> float:
    return (codec.decode(codec.encode(x)) - x).pow(2).mean().item()


def test_fit_reconstructs_better_than_untrained(codec, digits):
    unseen = _unit(digits[N_FIT:])
    torch.manual_seed(SPEC.seed)
    untrained = LatentCodec(build_vae(1, SPEC.factor, SPEC.latent_channels, SPEC.base_channels), 1.0)
    trained_mse, untrained_mse = _mse(codec, unseen), _mse(untrained, unseen)
    assert trained_mse < 0.25 * untrained_mse, (trained_mse, untrained_mse)
    assert trained_mse < 0.1  # [-1, 1] units: a PSNR above 16 dB


def test_metrics_are_measured_on_held_out_images(codec):
    m = codec.metrics
    assert m["holdout_images"] == 150  # 10% of the 1500 fitted digits
    assert 0 < m["recon_mse"] < 0.1
    assert m["recon_psnr"] == pytest.approx(10 * math.log10(4 / m["recon_mse"]))
    assert codec.scale_factor == pytest.approx(1 / m["latent_std"])
    assert codec.spec == asdict(SPEC)


def test_scale_factor_gives_unit_std_latents_on_unseen_data(codec, digits):
    z = codec.encode(_unit(digits[N_FIT:]))
    assert z.shape == (len(digits) - N_FIT, 4, 4, 4)
    assert abs(z.std().item() - 1.0) < 0.1
    assert codec.scale_factor != pytest.approx(1.0, abs=0.1)  # the measurement did something


def test_latent_shape_and_decode_range(codec):
    assert codec.latent_shape(1, 8) == (4, 4, 4)
    assert codec.latent_shape(1, 32) == (4, 16, 16)
    x = codec.decode(3 * torch.randn(2, 4, 4, 4))
    assert x.shape == (2, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(BenchError, match="encodes 1-channel images but the data has 3"):
        codec.latent_shape(3, 8)
    with pytest.raises(BenchError, match="not divisible"):
        codec.latent_shape(1, 9)


def test_save_load_roundtrip_is_exact(codec, digits, tmp_path):
    path = tmp_path / "vae.pt"
    codec.save(path)
    loaded = LatentCodec.load(path)
    assert loaded.scale_factor == codec.scale_factor
    assert loaded.metrics == codec.metrics and loaded.spec == codec.spec
    x = _unit(digits[:16])
    z = codec.encode(x)
    assert torch.equal(loaded.encode(x), z)
    assert torch.equal(loaded.decode(z), codec.decode(z))
    assert [p.name for p in tmp_path.iterdir()] == ["vae.pt"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_file_raises_bench_error_naming_it(codec, tmp_path, damage):
    path = tmp_path / "broken-vae.pt"
    codec.save(path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage]
    )
    with pytest.raises(BenchError, match="broken-vae.pt") as err:
        LatentCodec.load(path)
    assert "re-run" in str(err.value)


def test_missing_file_raises_bench_error(tmp_path):
    with pytest.raises(BenchError, match="nope.pt.*does not exist"):
        LatentCodec.load(tmp_path / "nope.pt")


def test_fit_is_seeded_and_leaves_global_rng_alone(digits):
    spec = VAESpec(factor=2, latent_channels=2, base_channels=8, steps=3, batch_size=16, seed=7)
    state = torch.get_rng_state()
    a = fit_vae(digits[:64], spec, progress=False, recon_loss="mse")
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_vae(digits[:64], spec, progress=False, recon_loss="mse")
    c = fit_vae(digits[:64], VAESpec(**{**asdict(spec), "seed": 8}), progress=False, recon_loss="mse")
    sa, sb, sc = (m.vae.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_build_vae_factors(factor):
    vae = build_vae(3, factor, latent_channels=3, base_channels=8)
    mean, logvar = vae.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert mean.shape == logvar.shape == (2, 3, 16 // factor, 16 // factor)
    assert vae.decode(mean).shape == (2, 3, 16, 16)


def test_validate_vae():
    validate_vae(VAESpec(factor=4), 32)
    with pytest.raises(BenchError, match=r"vae\.factor: must be one of 2, 4, 8"):
        validate_vae(VAESpec(factor=3), 30)
    with pytest.raises(BenchError, match="image size 28 is not divisible by the VAE factor 8") as err:
        validate_vae(VAESpec(factor=8), 28, where="study.yaml: vae")
    assert str(err.value).startswith("study.yaml: vae.factor")
    with pytest.raises(BenchError, match="latent_channels"):
        validate_vae(VAESpec(latent_channels=0), 8)
    with pytest.raises(BenchError, match="does not exist"):
        validate_vae(VAESpec(pretrained="/nonexistent/sd-vae"), 32)


def test_fit_vae_rejects_float_images():
    with pytest.raises(BenchError, match="uint8"):
        fit_vae(torch.rand(4, 1, 8, 8), SPEC, progress=False)


@pytest.mark.skipif(HAS_DIFFUSERS, reason="checks the message shown when diffusers is missing")
def test_pretrained_without_diffusers_says_how_to_install(tmp_path):
    with pytest.raises(BenchError, match="pip install diffusers"):
        load_pretrained_vae(tmp_path)


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers is not installed (pip install diffusers)")
def test_pretrained_diffusers_vae_round_trip(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.5,
    ).save_pretrained(tmp_path / "vae")
    codec = load_pretrained_vae(tmp_path / "vae")
    assert codec.scale_factor == 0.5 and codec.latent_shape(3, 16) == (4, 8, 8)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert codec.decode(codec.encode(x)).shape == x.shape
    codec.save(tmp_path / "codec.pt")
    assert torch.equal(LatentCodec.load(tmp_path / "codec.pt").encode(x), codec.encode(x))
