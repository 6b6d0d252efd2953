"""Pretrained diffusers checkpoints against diffusers itself: the same network, the same noise,
the same images (float32 tolerances). Small randomly initialised models saved with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from bench.models import inspect_pretrained, load_pretrained, load_pretrained_codec  # noqa: E402

T = 50


def _pipeline(folder: Path, parts: dict[str, object], scheduler: object) -> Path:
    for name, module in {**parts, "scheduler": scheduler}.items():
        module.save_pretrained(folder / name)
    index = {"_class_name": "DiffusionPipeline", **{n: ["diffusers", type(m).__name__] for n, m in
                                                    {**parts, "scheduler": scheduler}.items()}}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module.eval()


@pytest.fixture(scope="module")
def pixel_unet(tmp_path_factory) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    unet = _randomize(UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                  block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8))
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.2)
    return _pipeline(tmp_path_factory.mktemp("ddpm"), {"unet": unet}, sched)


@pytest.fixture(scope="module")
def latent_dit(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

    dit = _randomize(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                           out_channels=8, num_layers=2, sample_size=4, patch_size=2,
                                           num_embeds_ada_norm=5, norm_num_groups=8), seed=1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, layers_per_block=1).eval()
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.2,
                          variance_type="learned_range")
    return _pipeline(tmp_path_factory.mktemp("dit"), {"transformer": dit, "vae": vae}, sched)


def _draws(n: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


def test_the_folder_describes_the_model(pixel_unet, latent_dit) -> None:
    info = inspect_pretrained(str(pixel_unet))
    assert (info.model_class, info.space, info.image_size, info.channels, info.num_classes) == (
        "UNet2DModel", "pixel", 8, 3, None)
    assert info.diffusion_settings() == {"timesteps": T, "objective": "eps", "variance": "fixed_small",
                                         "schedule": "linear"}
    dit = inspect_pretrained(str(latent_dit))
    assert (dit.space, dit.image_size, dit.channels, dit.num_classes, dit.has_null_label) == ("latent", 8, 4, 5, True)
    assert dit.diffusion_settings()["variance"] == "learned_range"
    moved = pixel_unet.parent / "moved"
    pixel_unet.rename(moved)
    try:
        assert inspect_pretrained(str(moved)).sha256 == info.sha256  # the weights are the identity, not the path
    finally:
        moved.rename(pixel_unet)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_equals_diffusers_ddim_scheduler(pixel_unet, eta: float) -> None:
    from diffusers import DDIMScheduler, UNet2DModel

    model, d = load_pretrained(str(pixel_unet))
    steps, shape = 10, (2, 3, 8, 8)
    it = iter(_draws(steps + 1, shape, seed=0))  # x_T, then one draw per noisy step: the bench's order
    ours = d.sample(model, shape, sampler="ddim", steps=steps, eta=eta, spacing="leading",
                    generator=torch.Generator().manual_seed(0))
    unet = UNet2DModel.from_pretrained(str(pixel_unet), subfolder="unet").eval()
    sched = DDIMScheduler.from_pretrained(str(pixel_unet), subfolder="scheduler", clip_sample=False,
                                          set_alpha_to_one=True, timestep_spacing="leading")
    sched.set_timesteps(steps)
    x = next(it)
    with torch.no_grad():
        for k, t in enumerate(sched.timesteps):
            last = k == len(sched.timesteps) - 1
            z = torch.zeros(shape) if (last or eta == 0) else next(it)
            x = sched.step(unet(x, t).sample, t, x, eta=eta, variance_noise=z).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_ddpm_equals_diffusers_ddpm_scheduler(pixel_unet) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    model, d = load_pretrained(str(pixel_unet))
    shape = (2, 3, 8, 8)
    ours = d.sample(model, shape, sampler="ddpm", steps=T, generator=torch.Generator().manual_seed(3))
    unet = UNet2DModel.from_pretrained(str(pixel_unet), subfolder="unet").eval()
    sched = DDPMScheduler.from_pretrained(str(pixel_unet), subfolder="scheduler", clip_sample=False)
    sched.set_timesteps(T)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=gen).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_latent_dit_ddpm_with_learned_sigma_and_guidance(latent_dit) -> None:
    """DDPM with the DiT's learned variance equals DDPMScheduler(variance_type=learned_range) on the
    same network; guidance equals a hand-written two-pass CFG (w = 1.5, all 4 channels)."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    model, d = load_pretrained(str(latent_dit))
    assert model.num_classes == 5 and d.variance_name == "learned_range"
    net = DiTTransformer2DModel.from_pretrained(str(latent_dit), subfolder="transformer").eval()
    shape, y, w, steps = (3, 4, 4, 4), torch.tensor([0, 2, 4]), 1.5, 10
    ours = d.sample(model, shape, sampler="ddpm", steps=steps, guidance=w, y=y,
                    generator=torch.Generator().manual_seed(5))
    sched = DDPMScheduler.from_pretrained(str(latent_dit), subfolder="scheduler", clip_sample=False)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen)
    null = torch.full_like(y, 5)
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((3,), int(t))
            cond = net(x, timestep=tt, class_labels=y).sample
            uncond = net(x, timestep=tt, class_labels=null).sample
            eps = (1 + w) * cond[:, :4] - w * uncond[:, :4]
            out = torch.cat([eps, cond[:, 4:]], dim=1)  # the variance of the conditional pass
            x = sched.step(out, t, x, generator=gen).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    codec = load_pretrained_codec(str(latent_dit))
    assert codec.decode(ours).shape == (3, 3, 8, 8)



@pytest.fixture(scope="module")
def digits_unet(tmp_path_factory) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    unet = _randomize(UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                  block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8), seed=2)
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    return _pipeline(tmp_path_factory.mktemp("digits-ddpm"), {"unet": unet}, sched)


def test_a_pretrained_study_trains_nothing_and_moving_the_folder_reruns_nothing(digits_unet, tmp_path,
                                                                                 monkeypatch) -> None:
    import shutil

    import yaml
    from mlflow import MlflowClient

    from bench.pipeline import run_study
    from bench.study import load_study

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_THREADS", "1")

    def write(folder: Path) -> Path:
        study = {"name": "pretrained-digits", "base": {
            "data": {"dataset": "digits"}, "model": {"pretrained": str(folder)},
            "sample": {"sampler": "ddim", "batch_size": 50}, "eval": {"num_samples": 10, "metrics": ["nll"],
                                                                     "nll_samples": 2}},
            "grid": {"sample.steps": [2, 4]}}
        path = tmp_path / "pretrained.yaml"
        path.write_text(yaml.safe_dump(study))
        return path

    path = write(digits_unet)
    study = load_study(path)
    cfg = study.configs[0]
    assert cfg.diffusion.schedule == "cosine" and cfg.diffusion.timesteps == T and cfg.model.pretrained_sha256
    plan = study.plan()
    assert not plan.by_kind("train") and not plan.by_kind("vae") and len(plan.by_kind("eval")) == 2
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    summary = run_study(path, tracking_uri=uri, devices="cpu", progress=False, report=False)
    assert not summary.failed and len(summary.finished) == 2
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("pretrained-digits").experiment_id])
    assert all(r.data.tags["pretrained.sha256"] == cfg.model.pretrained_sha256 for r in runs)
    assert sorted(r.data.metrics["nfe"] for r in runs) == [2, 4]
    moved = tmp_path / "elsewhere"
    shutil.copytree(digits_unet, moved)
    again = run_study(write(moved), tracking_uri=uri, devices="cpu", progress=False, report=False)
    assert again.finished == [] and again.skipped == 2


def test_pretrained_studies_refuse_what_the_checkpoint_cannot_do(digits_unet, tmp_path, monkeypatch) -> None:
    from bench.core.errors import BenchError
    from bench.study import build_study

    base = {"data": {"dataset": "digits"}, "model": {"pretrained": str(digits_unet)}}
    with pytest.raises(BenchError, match="needs a checkpoint with a null label"):
        build_study({"name": "x", "base": {**base, "sample": {"guidance": 1.0}}})
    with pytest.raises(BenchError, match=r"generates 8x8 images.*set data.image_size: 8"):
        build_study({"name": "x", "base": {**base, "data": {"dataset": "digits", "image_size": 16}}})
    with pytest.raises(BenchError, match=r"diffusion.objective is read from the checkpoint"):
        build_study({"name": "x", "base": {**base, "diffusion": {"objective": "v"}}})
    with pytest.raises(BenchError, match="no checkpoint folder"):
        build_study({"name": "x", "base": {**base, "model": {"pretrained": str(tmp_path / "none")}}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # undone after the test, whatever the shell had set
    with pytest.raises(BenchError, match="hub id and this machine is offline.*`hf download .*HF_HUB_OFFLINE"):
        build_study({"name": "x", "base": {**base, "model": {"pretrained": "google/ddpm-cifar10-32"}}})


def test_a_python_entry_point_plugs_in_like_a_folder() -> None:
    from bench.study import build_study

    model, d = load_pretrained("python:user_model:load")
    x = d.sample(model, (2, 1, 8, 8), steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    study = build_study({"name": "own", "base": {"data": {"dataset": "digits"},
                                                 "model": {"pretrained": "python:user_model:load"},
                                                 "sample": {"steps": 10}, "eval": {"metrics": ["nll"], "nll_samples": 2}}})
    cfg = study.configs[0]
    assert cfg.diffusion.timesteps == 40 and cfg.model.pretrained_sha256 and not study.plan().by_kind("train")


def test_the_checkpoints_own_guidance_convention_on_request(latent_dit) -> None:
    """``guidance_channels=3``: diffusers' DiT pipeline convention, guidance on 3 of 4 latent channels."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    model, d = load_pretrained(str(latent_dit))
    net = DiTTransformer2DModel.from_pretrained(str(latent_dit), subfolder="transformer").eval()
    shape, y, w = (2, 4, 4, 4), torch.tensor([1, 3]), 3.0
    ours = d.sample(model, shape, sampler="ddim", steps=5, guidance=w, y=y, guidance_channels=3,
                    generator=torch.Generator().manual_seed(7))
    sched = DDIMScheduler.from_pretrained(str(latent_dit), subfolder="scheduler", clip_sample=False,
                                          set_alpha_to_one=True, timestep_spacing="leading")
    sched.set_timesteps(5)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((2,), int(t))
            cond = net(x, timestep=tt, class_labels=y).sample[:, :4]
            uncond = net(x, timestep=tt, class_labels=torch.full_like(y, 5)).sample[:, :4]
            eps = torch.cat([(1 + w) * cond[:, :3] - w * uncond[:, :3], cond[:, 3:]], dim=1)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    everywhere = d.sample(model, shape, sampler="ddim", steps=5, guidance=w, y=y,
                          generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(everywhere, ours)  # the two conventions differ on the 4th channel
