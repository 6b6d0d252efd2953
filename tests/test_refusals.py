"""Every mistake a user can make is refused by ``plan`` before any work, as one message (exit 2,
no traceback); and the bugs that used to surface mid-grid, each with the test that caught it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny import tiny_study

from bench.cli import main
from bench.core.config import from_dict
from bench.core.errors import BenchError

ROOT = Path(__file__).resolve().parents[1]


def plan_message(tmp_path: Path, study: dict[str, Any], capsys, *args: str) -> str:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    code = main(["plan", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1, err
    assert str(path) in err
    return err


MISTAKES = {  # name: (base sections to change, grid, words the one message must contain)
    "linear schedule over 10 steps": ({"diffusion": {"timesteps": 10}, "sample": {"steps": 5}}, None,
                                      ["base.diffusion.schedule", "every beta must lie in (0, 1)", "cosine"]),
    "label dropout on an unconditional model": ({"train": {"p_uncond": 0.1}}, None,
                                                ["base.train.p_uncond", "unconditional", "class_cond: true"]),
    "leading cannot give S steps": ({"sample": {"spacing": "leading", "steps": 60}}, None,
                                    ["base.sample.steps", "steps=60 > T/2", "use spacing 'linspace'"]),
    "a step count of a grid the spacing cannot serve": (
        {"sample": {"spacing": "leading"}}, {"sample.steps": [10, 70]},
        ["grid.sample.steps[1]", "steps=70", "use spacing"]),
    "an option the sampler does not have": ({"sample": {"sampler": "ddpm", "options": {"eta": 0.5}}}, None,
                                            ["sample.options.eta", "has no option 'eta'"]),
    "an option out of its range": ({"sample": {"options": {"eta": 2.0}}}, None,
                                   ["sample.options.eta", "outside [0.0, 1.0]"]),
    "a learned variance sampled as fixed": (
        {"diffusion": {"variance": "learned_range", "loss": "hybrid"}, "sample": {"variance": "fixed_large"}}, None,
        ["sample.variance", "trained its variance"]),
    "pixel NLL asked of a latent model": ({"model": {"space": "latent"}, "vae": {"steps": 5}}, None,
                                          ["eval.metrics", "nll is measured on pixel-space models", "latent_nll"]),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_plan_refuses_with_one_message(name: str, tmp_path, capsys) -> None:
    change, grid, words = MISTAKES[name]
    err = plan_message(tmp_path, tiny_study("mistake", grid=grid, **change), capsys)
    for w in words:
        assert w in err, f"{w!r} not in {err}"
    assert not (tmp_path / ".bench_cache").exists()  # nothing was built


def test_fp16_on_a_cpu_only_run_is_refused_before_work(tmp_path, capsys) -> None:
    path = tmp_path / "fp16.yaml"
    path.write_text(yaml.safe_dump(tiny_study("fp16", train={"precision": "fp16"})))
    code = main(["run", str(path), "--devices", "cpu", "--dry-run", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and "'fp16' needs a GPU" in err and "--devices cpu" in err and "Traceback" not in err


def test_a_pretrained_vae_without_diffusers_is_refused(tmp_path) -> None:
    (tmp_path / "vae").mkdir()
    study = tiny_study("vae-pretrained", model={"space": "latent"}, vae={"pretrained": str(tmp_path / "vae")},
                       eval={"metrics": ["latent_nll"], "nll_samples": 2, "num_samples": 20})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'diffusers' or name.startswith('diffusers.'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from bench.cli import main\n"
            f"raise SystemExit(main(['plan', {str(path)!r}, '--tracking-uri', 'sqlite:///{tmp_path}/m.db']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "needs the `diffusers` package" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path, capsys, monkeypatch) -> None:
    import bench.pipeline

    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bench.pipeline, "run_study", broken)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("s")))
    assert main(["run", str(path)]) == 1
    assert "unexpected RuntimeError: disk on fire" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["run", str(path), "--debug"])


# --- bugs, each with the test that fails without its fix --------------------------------------------


def test_replicate_seeds_never_collide() -> None:
    from bench.jobs import sample_seeds

    first = from_dict({"seed": 0})
    second = from_dict({"seed": 1})
    assert not set(sample_seeds(first, 1_000_001)) & set(sample_seeds(second, 10))
    assert sample_seeds(first, 3) == [0, 1, 2]  # image i of replicate 0 keeps seed i


def test_devices_are_indices_into_the_visible_gpus(monkeypatch) -> None:
    from bench.execute.local import physical_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [physical_gpu(0), physical_gpu(1)] == ["2", "3"]
    with pytest.raises(BenchError, match="cuda:2 is not visible: CUDA_VISIBLE_DEVICES='2,3'"):
        physical_gpu(2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert physical_gpu(1) == "1"


def test_class_conditional_imagefolder_labels_come_from_the_model(tmp_path) -> None:
    """imagefolder has no class count before its folder is read: generation asks the model."""
    from PIL import Image

    from bench.diffusion import Diffusion
    from bench.jobs import generate

    for split in ("train", "val"):
        for c in ("cat", "dog", "owl"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (40 * len(c), 10, 200)).save(tmp_path / split / c / "a.png")
    cfg = from_dict({"data": {"dataset": "imagefolder", "root": str(tmp_path), "image_size": 8},
                     "model": {"class_cond": True}, "sample": {"steps": 2, "batch_size": 4},
                     "eval": {"num_samples": 7}})

    class Net(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, y=None):
            assert y is not None and int(y.max()) < self.num_classes
            return torch.zeros_like(x)

    images, labels, _, calls = generate(cfg, Net(), Diffusion("cosine", 10), None, "cpu", progress=False)
    assert images.shape == (7, 3, 8, 8) and labels.tolist() == [0, 1, 2, 0, 1, 2, 0] and calls["nfe"] == 2


def _tiny_config(**sections: Any) -> Any:
    from bench.study import build_study

    return build_study(tiny_study("bugs", train_steps=6, **sections)).configs[0]


def test_a_non_finite_metric_fails_the_run_and_names_the_metric(tmp_path, monkeypatch) -> None:
    """A metric that comes out NaN is never dropped quietly: the eval job raises, naming it."""
    from bench.jobs import run_job
    from bench.metrics import METRICS, OUTPUTS, MetricDef, Output, register_metric

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    cfg = _tiny_config()
    run_job("train", cfg.to_dict(), cfg.train_key(), progress=False)
    register_metric(MetricDef("broken", (Output("broken", "Broken", ".2f", False),),
                              lambda ctx: {"broken": float("nan")}, higher_is_better=False, needs_model=True))
    try:
        bad = cfg.override(**{"eval.metrics": ["broken"]})
        with pytest.raises(FloatingPointError, match=r"metric\(s\) broken = nan are not finite"):
            run_job("eval", bad.to_dict(), bad.key(), progress=False)
    finally:
        METRICS.unregister("broken")
        OUTPUTS.unregister("broken")
    assert run_job("eval", cfg.to_dict(), cfg.key(), progress=False)["metrics"]["nll_bpd"] > 0


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_lost_checkpoint_is_trained_again(damage: str, tmp_path, monkeypatch) -> None:
    """A train job is done only while its checkpoint loads: deleted or corrupt, it is rebuilt
    when an evaluation needs it (the message used to say "delete it and re-run", which never helped)."""
    from bench.execute import done_keys
    from bench.jobs import checkpoint_path, run_job
    from bench.study import build_study
    from bench.tracking import Tracker

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_THREADS", "1")
    from bench.pipeline import run_study

    path = tmp_path / "lost.yaml"
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path.write_text(yaml.safe_dump(tiny_study("lost", grid={"sample.steps": [2]}, train_steps=6)))
    assert not run_study(path, tracking_uri=uri, devices="cpu", progress=False, report=False).failed
    cfg = build_study(yaml.safe_load(path.read_text())).configs[0]
    ckpt = checkpoint_path(cfg.train_key())
    if damage == "delete":
        ckpt.unlink()
    else:
        ckpt.write_bytes(b"not a checkpoint")
    path.write_text(yaml.safe_dump(tiny_study("lost", grid={"sample.steps": [2, 3]}, train_steps=6)))
    study = build_study(yaml.safe_load(path.read_text()))
    plan = study.plan()
    assert cfg.train_key() not in done_keys(plan, Tracker(study.name, uri))
    summary = run_study(path, tracking_uri=uri, devices="cpu", progress=False, report=False)
    assert not summary.failed and cfg.train_key() in summary.finished and len(summary.finished) == 2
    assert run_job("eval", cfg.to_dict(), cfg.key(), progress=False)["metrics"]["nfe"] == 2  # it loads again
