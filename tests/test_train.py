"""bench.training: bit-exact resume, corrupt checkpoints, non-finite losses, input errors, EMA, warmup."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.config import DiffusionSpec, ModelSpec, RunConfig, TrainSpec, VAESpec
from bench.core.errors import BenchError
from bench.data import DATASETS
from bench.models import fit_vae
from bench.training.checkpoint import CheckpointError, load_trained, read_checkpoint
from bench.training.loop import EMA, EpochSampler, NonFiniteLossError, Trainer, train_model, warmup_factor

STEPS = 6




def tiny(backbone: str = "unet-tiny", **train) -> RunConfig:
    """Class-conditional, dropout, label dropout and gradient accumulation: every random stream used."""
    spec = {"steps": STEPS, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "grad_accum": 2, "ema_decay": 0.9,
            "p_uncond": 0.2, "checkpoint_every": 2, "log_every": 2, **train}
    return RunConfig(model=ModelSpec(backbone=backbone, class_cond=True, dropout=0.1),
                     diffusion=DiffusionSpec(schedule="cosine", timesteps=50), train=TrainSpec(**spec), seed=3)


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    blob = read_checkpoint(path)
    adam = {f"{i}.{k}": v for i, st in blob["optimizer"]["state"].items() for k, v in st.items()}
    return {"model": blob["model"], "ema": blob["ema"]["weights"], "adam": adam}


def assert_same(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for part in ("model", "ema", "adam"):
        assert wa[part].keys() == wb[part].keys()
        for k in wa[part]:
            assert torch.equal(wa[part][k], wb[part][k]), f"{part}.{k} differs"


class Crash(Exception):
    pass


def crash_at(k: int):
    def hook(step: int) -> bool:
        if step == k:
            raise Crash(f"killed at step {k}")
        return False

    return hook


@pytest.fixture(scope="module", params=["unet-tiny", "dit-tiny"])
def straight(request, tmp_path_factory) -> tuple[RunConfig, object]:
    cfg = tiny(request.param)
    return cfg, train_model(cfg, tmp_path_factory.mktemp("straight"), progress=False)


@pytest.mark.parametrize("k", [3, 4])  # crash between checkpoints (resume from 2) and right after one
def test_resume_after_crash_is_bit_exact(straight, tmp_path, k):
    cfg, ref = straight
    with pytest.raises(Crash):
        train_model(cfg, tmp_path, progress=False, should_stop=crash_at(k))
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == k // 2 * 2
    res = train_model(cfg, tmp_path, progress=False)
    assert res.resumed_from == k // 2 * 2 and res.steps == STEPS and res.finished
    assert_same(ref.checkpoint, res.checkpoint)
    assert res.loss_history == ref.loss_history and res.final_loss == ref.final_loss


def test_graceful_stop_then_resume(straight, tmp_path):
    cfg, ref = straight
    part = train_model(cfg, tmp_path, progress=False, should_stop=lambda step: step == 3)
    assert (part.steps, part.finished) == (3, False)  # a stop between checkpoints still saves
    res = train_model(cfg, tmp_path, progress=False)
    assert res.resumed_from == 3
    assert_same(ref.checkpoint, res.checkpoint)
    assert res.loss_history == ref.loss_history


def test_result_and_finished_rerun(straight, tmp_path):
    cfg, ref = straight
    assert ref.steps == STEPS and ref.device == "cpu" and ref.train_seconds > 0
    assert [s for s, _ in ref.loss_history] == [2, 4, 6] and math.isfinite(ref.final_loss)
    model, diffusion, cfg2 = load_trained(ref.checkpoint)
    assert cfg2 == cfg and not model.training and diffusion.timesteps == 50
    assert ref.num_params == sum(p.numel() for p in model.parameters())
    mtime = os.stat(ref.checkpoint).st_mtime_ns
    again = train_model(cfg, ref.checkpoint.parent, progress=False)  # done: nothing is retrained
    assert os.stat(ref.checkpoint).st_mtime_ns == mtime
    assert again.loss_history == ref.loss_history and again.resumed_from == STEPS


def test_corrupt_checkpoint_is_moved_aside_and_retrained(straight, tmp_path):
    cfg, ref = straight
    train_model(cfg, tmp_path, progress=False, should_stop=lambda step: step == 4)
    ckpt = tmp_path / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(BenchError, match="checkpoint.pt.*truncated or corrupt"):
        load_trained(ckpt)
    with pytest.warns(UserWarning, match=r"checkpoint\.pt.*truncated or corrupt.*training from scratch"):
        res = train_model(cfg, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt.corrupt").read_bytes() == data[: len(data) // 2]
    assert res.resumed_from == 0
    assert_same(ref.checkpoint, res.checkpoint)  # from scratch is the same run again


def test_foreign_file_is_moved_aside(straight, tmp_path):
    cfg, ref = straight
    torch.save({"weights": torch.zeros(3)}, tmp_path / "checkpoint.pt")  # loads, but is no checkpoint
    with pytest.warns(UserWarning, match="not a bench.TrainCheckpoint/1 file"):
        res = train_model(cfg, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt.corrupt").exists()
    assert_same(ref.checkpoint, res.checkpoint)


def test_load_trained_errors(straight, tmp_path):
    cfg, ref = straight
    with pytest.raises(BenchError, match="does not exist"):
        load_trained(tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_trained(tmp_path / "garbage.pt")
    train_model(cfg, tmp_path, progress=False, should_stop=lambda step: step == 2)
    with pytest.raises(BenchError, match="step 2 of 6"):
        load_trained(tmp_path / "checkpoint.pt")
    with pytest.warns(UserWarning, match="cut off"):
        load_trained(tmp_path / "checkpoint.pt", allow_unfinished=True)


def test_checkpoint_of_another_run_is_refused(straight):
    cfg, ref = straight
    other = cfg.override(**{"train.lr": 2e-3})
    with pytest.raises(BenchError, match=f"checkpoint of run {cfg.train_key()}.*{other.train_key()}"):
        train_model(other, ref.checkpoint.parent, progress=False)


def test_non_finite_loss_stops_the_run(tmp_path):
    # lr = 1e30: the first Adam update moves every weight by ~1e30 and the next forward overflows
    cfg = tiny(lr=1e30, warmup_steps=0, checkpoint_every=1, log_every=10, grad_clip=0.0)
    with pytest.raises(NonFiniteLossError, match=rf"run {cfg.train_key()}.*at step 2\b.*train\.lr=1e\+30"):
        train_model(cfg, tmp_path, progress=False)
    blob = read_checkpoint(tmp_path / "checkpoint.pt")  # the last good one stays
    assert blob["step"] == 1
    assert all(torch.isfinite(v).all() for v in blob["ema"]["weights"].values())
    assert issubclass(NonFiniteLossError, RuntimeError)


@pytest.fixture
def unlabelled():
    src = DATASETS.get("digits")
    DATASETS.register("digits-nolabels", src, num_classes=None, channels=1, image_size=8,
                      splits=("train", "test"), has_labels=False)
    yield "digits-nolabels"
    DATASETS.unregister("digits-nolabels")


@pytest.mark.parametrize(
    "override, match",
    [
        ({"data.image_size": 9}, r"divisible by 2.*image size is 9"),
        ({"model.backbone": "dit-tiny", "data.image_size": 9}, r"'dit-tiny' needs an image size divisible by 2"),
        ({"model.backbone": "unet-tiniest"}, r"unknown backbone 'unet-tiniest'.*Available: .*unet-tiny"),
        ({"model.space": "latent"}, r"no vae section"),
        ({"model.space": "latent", "vae": {}}, r"needs the run's trained VAE"),
        ({"model.space": "latent", "vae": {"factor": 8}}, r"model.backbone \(latent\).*image size is 1"),
        ({"model.space": "latent", "vae": {"factor": 4}, "data.image_size": 10}, r"vae.factor.*not divisible"),
        ({"train.precision": "fp16"}, r"'fp16' needs a GPU"),
        ({"train.precision": "fp8"}, r"train.precision must be one of"),
        ({"model.class_cond": False}, r"p_uncond=0.2.*unconditional"),
        ({"diffusion.objective": "epsilon"}, r"unknown objective 'epsilon'"),
    ],
)
def test_bad_input_raises_one_clear_error(tmp_path, override, match):
    with pytest.raises(BenchError, match=match):
        train_model(tiny().override(**override), tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # raised before any work


def test_class_cond_without_labels(tmp_path, unlabelled):
    cfg = tiny().override(**{"data.dataset": unlabelled})
    with pytest.raises(BenchError, match=r"class_cond is true but dataset 'digits-nolabels' has no labels"):
        train_model(cfg, tmp_path, progress=False)


def test_latent_needs_matching_codec_and_trains(tmp_path):
    spec = VAESpec(factor=2, latent_channels=4, base_channels=8, steps=3, batch_size=16)
    codec = fit_vae(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), spec, progress=False)
    latent = {"model.space": "latent", "vae.factor": 2, "vae.latent_channels": 4, "vae.base_channels": 8,
              "vae.steps": 3, "vae.batch_size": 16}
    wrong = tiny().override(**{**latent, "vae.latent_channels": 8})
    with pytest.raises(BenchError, match="is not the config's VAE"):
        train_model(wrong, tmp_path, progress=False, codec=codec)
    cfg = tiny(steps=2).override(**latent)
    res = train_model(cfg, tmp_path, progress=False, codec=codec)
    model, diffusion, _ = load_trained(res.checkpoint)
    assert read_checkpoint(res.checkpoint)["model_args"]["in_channels"] == 4
    z = diffusion.sample(model, (3, 4, 4, 4), steps=5, y=torch.tensor([0, 1, 2]),
                         generator=torch.Generator().manual_seed(0))
    x = codec.decode(z)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_bf16_on_cpu_then_fp32_in_one_process(tmp_path):
    # accelerate's process-wide state is reset between runs of different precision
    for precision in ("bf16", "no"):
        res = train_model(tiny(steps=2, precision=precision), tmp_path / precision, progress=False)
        assert math.isfinite(res.final_loss)


def test_trainer_consumes_batch_times_grad_accum():
    tr = Trainer(tiny(grad_accum=3, batch_size=5))
    tr.step()
    assert tr.sampler.pos == 15 and tr.step_count == 1
    assert tr.scheduler.get_last_lr()[0] == pytest.approx(1e-3)  # warmup 2: 1/2 then 2/2


def test_warmup_factor():
    f = warmup_factor(4)
    assert [f(n) for n in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0)(0) == 1.0


def test_ema_formula():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99)
    expected = 0.0
    for n in range(30):
        with torch.no_grad():
            model.weight.fill_(float(n + 1))
        ema.update(model)
        d = min(0.99, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * (n + 1)
        assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6)


def test_epoch_sampler_visits_every_image_once_per_epoch():
    s = EpochSampler(10, seed=0)
    first = torch.cat([s.next(4), s.next(4), s.next(2)])
    assert sorted(first.tolist()) == list(range(10))
    state = s.state_dict()
    a = s.next(7)
    s.load_state_dict(state)
    assert torch.equal(a, s.next(7))


def test_rng_state_round_trip():
    from bench.training.checkpoint import global_rng_state, set_global_rng_state

    dev = torch.device("cpu")
    state = global_rng_state(dev)
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    set_global_rng_state(state, dev)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_no_warnings_on_a_clean_run(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_model(tiny(steps=1), tmp_path, progress=False)
