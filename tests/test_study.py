"""Study files: expansion, extends, overrides and one clear error per bad file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.study import Study, load_study

BASE = """\
name: t
question: does it work?
base:
  data: {dataset: digits}
  model: {backbone: unet-tiny, class_cond: true}
  diffusion: {timesteps: 100}
  train: {steps: 10, p_uncond: 0.1}
  eval: {num_samples: 100, extractor: "domain:digits", metrics: [fid]}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml", base: bool = True) -> Path:
    """``text`` as a study file; with ``base`` it extends a valid common study (BASE)."""
    path = tmp_path / name
    if base:
        (tmp_path / "common.yaml").write_text(BASE)
    path.write_text(("extends: common.yaml\n" if base else "") + textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **kw: object) -> Study:
    return load_study(write(tmp_path, text), **kw)  # type: ignore[arg-type]


def test_grid_zip_seeds_counts_and_order(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        grid:
          diffusion.objective: [eps, v]
          sample.steps: [10, 20, 50]
        zip:
          sample.sampler: [ddim, ddim, ddpm]
          sample.eta: [0.0, 0.5, 1.0]
        seeds: [0, 1]
        """,
    )
    assert len(s.configs) == 2 * 3 * 3 * 2
    assert s.axes == ("diffusion.objective", "sample.steps", "sample.sampler", "sample.eta", "seed")
    assert s.name == "t" and s.question == "does it work?"
    first = s.configs[0]
    assert (first.diffusion.objective, first.sample.steps, first.sample.sampler, first.seed) == (
        "eps",
        10,
        "ddim",
        0,
    )
    assert s.configs[1].seed == 1  # seeds innermost
    assert {(c.sample.sampler, c.sample.eta) for c in s.configs} == {
        ("ddim", 0.0),
        ("ddim", 0.5),
        ("ddpm", 1.0),
    }
    assert len({c.key() for c in s.configs}) == len(s.configs)
    assert len({c.train_key() for c in s.configs}) == 2 * 2
    assert s.point(first) == {
        "diffusion.objective": "eps",
        "sample.steps": 10,
        "sample.sampler": "ddim",
        "sample.eta": 0.0,
        "seed": 0,
    }
    again = load_study(tmp_path / "study.yaml")
    assert [c.key() for c in again.configs] == [c.key() for c in s.configs]  # stable order


def test_base_defaults_and_types(tmp_path: Path) -> None:
    s = load(tmp_path, "base: {train: {lr: 1e-3, steps: 10}}\n")
    (cfg,) = s.configs
    assert cfg.train.lr == 1e-3 and cfg.train.p_uncond == 0.1 and cfg.sample.sampler == "ddim"
    assert s.axes == () and cfg.vae is None


def test_exclude(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        grid:
          sample.sampler: [ddim, ddpm]
          sample.eta: [0.0, 0.5, 1.0]
        exclude:
          - {sample.sampler: ddpm, sample.eta: 0.0}
          - {sample.sampler: ddpm, sample.eta: 0.5}
        """,
    )
    assert [(c.sample.sampler, c.sample.eta) for c in s.configs] == [
        ("ddim", 0.0),
        ("ddim", 0.5),
        ("ddim", 1.0),
        ("ddpm", 1.0),
    ]


def test_overrides_apply_to_base(tmp_path: Path) -> None:
    path = write(tmp_path, "grid: {sample.steps: [10, 20]}\n")
    s = load_study(path, overrides={"eval.num_samples": 200, "train.steps": "5"})
    assert {c.eval.num_samples for c in s.configs} == {200}
    assert {c.train.steps for c in s.configs} == {5}
    with pytest.raises(BenchError, match="overrides.sample.steps"):
        load_study(path, overrides={"sample.steps": 5})
    with pytest.raises(BenchError, match="Did you mean 'eval.num_samples'"):
        load_study(path, overrides={"eval.num_sample": 5})


def test_extends_merges_base_and_axes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(
        tmp_path,
        """
        grid:
          sample.steps: [10, 20]
          sample.eta: [0.0, 1.0]
        seeds: [0, 1]
        """,
        "parent.yaml",
    )
    child = write(
        tmp_path / "sub",
        """
        extends: ../parent.yaml
        name: child
        base:
          train: {steps: 7}
        grid:
          sample.steps: [5]
          sample.eta: null
          diffusion.objective: [eps, v]
        """,
        "child.yaml",
        base=False,
    )
    s = load_study(child)
    assert s.name == "child" and s.question == "does it work?"
    assert s.axes == ("sample.steps", "diffusion.objective", "seed")
    assert len(s.configs) == 1 * 2 * 2
    cfg = s.configs[0]
    assert cfg.train.steps == 7 and cfg.train.p_uncond == 0.1 and cfg.eval.extractor == "domain:digits"
    assert "extends" not in s.raw and s.raw["base"]["train"] == {"steps": 7, "p_uncond": 0.1}


def test_latent_runs_and_pixel_runs_drop_unused_vae(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        base:
          vae: {steps: 20}
        grid:
          model.space: [pixel, latent]
        """,
    )
    pixel, latent = s.configs
    assert pixel.vae is None and latent.vae is not None and latent.vae.steps == 20
    assert latent.vae_key() is not None and pixel.vae_key() is None


def test_tables_and_plots_are_kept(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        grid: {sample.eta: [0.0, 1.0], sample.steps: [10, 20]}
        seeds: [0, 1]
        tables:
          - {rows: sample.eta, columns: sample.steps, values: fid, caption: DDIM table 1}
          - {rows: [sample.eta, seed], values: [fid, sample_seconds]}
        plots:
          - {x: sample.steps, y: fid, hue: sample.eta}
          - {x: seconds_per_image, y: fid}
        search: {params: {sample.guidance: {type: float, low: 0.0, high: 4.0}}, objectives: [fid], n_trials: 5}
        """,
    )
    assert s.tables[0]["caption"] == "DDIM table 1" and len(s.plots) == 2 and s.search["n_trials"] == 5


# --- one clear error per bad study file -------------------------------------------------------

BAD = {
    "unknown axis": ("grid: {sample.etta: [0.0]}", ["grid.sample.etta", "Did you mean 'sample.eta'"]),
    "unknown value": (
        "grid: {sample.sampler: [ddim, ddmi]}",
        ["grid.sample.sampler[1]", "Did you mean", "'ddim'"],
    ),
    "unknown base value": (
        "base: {diffusion: {schedule: cosin}}",
        ["base.diffusion.schedule", "Did you mean 'cosine'"],
    ),
    "unknown base key": (
        "base: {diffusion: {schedul: cosine}}",
        ["base.diffusion.schedul", "Did you mean 'diffusion.schedule'"],
    ),
    "wrong type": ("grid: {sample.steps: [10, many]}", ["grid.sample.steps[1]", "integer", "'many'"]),
    "wrong float type": ("grid: {sample.eta: [0.0, '0.5']}", ["grid.sample.eta[1]", "number"]),
    "empty grid": ("grid: {sample.eta: []}", ["grid.sample.eta", "non-empty list"]),
    "duplicate axis": (
        "grid: {sample.eta: [0.0]}\nzip: {sample.eta: [1.0]}",
        ["zip.sample.eta", "already a grid axis"],
    ),
    "duplicate yaml key": (
        "grid:\n  sample.eta: [0.0]\n  sample.eta: [1.0]",
        ["sample.eta", "appears twice", "line"],
    ),
    "nested + dotted axis": (
        "grid:\n  sample: {eta: [0.0]}\n  sample.eta: [1.0]",
        ["grid.sample.eta", "twice"],
    ),
    "repeated value": (
        "grid: {sample.steps: [10, 20, 10]}",
        ["grid.sample.steps[2]", "repeats grid.sample.steps[0]"],
    ),
    "zip lengths": (
        "zip: {sample.sampler: [ddim, ddpm], sample.eta: [0.0, 0.5, 1.0]}",
        ["zip", "sample.sampler: 2", "sample.eta: 3", "same length"],
    ),
    "negative eta": ("grid: {sample.eta: [0.0, -0.5]}", ["grid.sample.eta[1]", "negative", "[0, 1]"]),
    "eta above one": ("base: {sample: {eta: 1.5}}", ["base.sample.eta", "[0, 1]"]),
    "guidance without label dropout": (
        "base: {train: {p_uncond: 0.0}}\ngrid: {sample.guidance: [0.0, 2.0]}",
        ["grid.sample.guidance[1]", "train.p_uncond", "base.train.p_uncond"],
    ),
    "guidance unconditional": (
        "base: {model: {class_cond: false}}\ngrid: {sample.guidance: [0.0, 3.0]}",
        ["grid.sample.guidance[1]", "model.class_cond"],
    ),
    "steps > timesteps": (
        "grid: {sample.steps: [50, 200]}",
        ["grid.sample.steps[1]", "diffusion.timesteps = 100"],
    ),
    "steps < 1": ("grid: {sample.steps: [0, 10]}", ["grid.sample.steps[0]", "positive"]),
    "latent without vae": (
        "base: {model: {space: latent}}",
        ["base.model.space", "latent space needs a `vae:` section"],
    ),
    "latent with vae null": ("base: {model: {space: latent}, vae: null}", ["base.model.space", "vae: null"]),
    "dit patch mismatch": (
        "base: {model: {backbone: dit-tiny}, data: {image_size: 9}}",
        ["base.model.backbone", "divisible by 2", "9"],
    ),
    "unet size per grid point": (
        "base: {model: {backbone: unet-small}}\ngrid: {data.image_size: [8, 10]}",
        ["base.model.backbone with grid.data.image_size[1]", "divisible by 4"],
    ),
    "vae factor": ("base: {model: {space: latent}, vae: {factor: 8}}", ["vae", "factor"]),
    "unknown table metric": (
        "grid: {sample.eta: [0.0, 1.0]}\ntables: [{rows: sample.eta, values: fdi}]",
        ["tables[0].values", "Did you mean 'fid'"],
    ),
    "table metric not measured": (
        "grid: {sample.eta: [0.0, 1.0]}\ntables: [{rows: sample.eta, values: kid_mean}]",
        ["tables[0].values", "add 'kid' to eval.metrics"],
    ),
    "table axis not varying": (
        "grid: {sample.eta: [0.0, 1.0]}\ntables: [{rows: sample.etaa, values: fid}]",
        ["tables[0].rows", "does not vary", "Did you mean 'sample.eta'"],
    ),
    "seed column with one seed": (
        "grid: {sample.eta: [0.0, 1.0]}\ntables: [{rows: seed, values: fid}]",
        ["tables[0].rows", "'seed' does not vary"],
    ),
    "plot axis": (
        "grid: {sample.eta: [0.0, 1.0]}\nplots: [{x: sample.eta, y: fid, hue: sample.steps}]",
        ["plots[0].hue", "sample.steps"],
    ),
    "exclude non-axis": (
        "grid: {sample.eta: [0.0, 1.0]}\nexclude: [{sample.etaa: 0.0}]",
        ["exclude[0].sample.etaa", "not an axis", "Did you mean 'sample.eta'"],
    ),
    "exclude unknown value": (
        "grid: {sample.eta: [0.0, 1.0]}\nexclude: [{sample.eta: 0.3}]",
        ["exclude[0].sample.eta", "0.3", "axis values"],
    ),
    "exclude everything": (
        "grid: {sample.eta: [0.0]}\nexclude: [{sample.eta: 0.0}]",
        ["exclude", "nothing would run"],
    ),
    "unknown top-level key": ("grd: {sample.eta: [0.0]}", ["'grd'", "Did you mean 'grid'"]),
    "seed axis": ("grid: {seed: [0, 1]}", ["grid.seed", "seeds:"]),
    "bad seeds": ("seeds: 3", ["seeds", "list of integers"]),
    "unknown metric": (
        "base: {eval: {metrics: [fid, kidd]}}",
        ["base.eval.metrics[1]", "Did you mean 'kid'"],
    ),
    "too few samples for FID": ("base: {eval: {num_samples: 10}}", ["eval.num_samples", "65"]),
    "class accuracy unconditional": (
        "base: {model: {class_cond: false}, eval: {metrics: [class_accuracy]}}",
        ["base.eval.metrics", "class_cond"],
    ),
    "learned variance, simple loss": (
        "grid: {diffusion.variance: [fixed_small, learned_range]}",
        ["grid.diffusion.variance[1]", "loss 'simple' does not train it", "hybrid"],
    ),
    "unknown train split": (
        "base: {data: {train_split: val}}",
        ["base.data.train_split", "'val'", "train, test"],
    ),
    "bad yaml": ("grid: {sample.eta: [0.0", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_file(tmp_path: Path, case: str) -> None:
    text, words = BAD[case]
    path = write(tmp_path, text + "\n")
    with pytest.raises(BenchError) as e:
        load_study(path)
    message = str(e.value)
    for w in [str(path), *words]:
        assert w in message, f"{w!r} not in: {message}"
    assert message.count(str(path)) == 1


def test_missing_name(tmp_path: Path) -> None:
    path = write(tmp_path, "grid: {sample.eta: [0.0]}\n", base=False)
    with pytest.raises(BenchError, match="missing `name:`") as e:
        load_study(path)
    assert str(path) in str(e.value)


def test_missing_dataset_offline(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        base:
          data: {{dataset: cifar10, root: {tmp_path / "no-such-folder"}}}
          eval: {{extractor: inception, num_samples: 5000}}
        """,
    )
    with pytest.raises(BenchError) as e:
        load_study(path)
    for w in [str(path), "base.data", "cifar10", "not found", "base.data.root"]:
        assert w in str(e.value)


def test_missing_dataset_names_the_grid_point(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        base:
          data: {{root: {tmp_path / "no-such-folder"}}}
        grid:
          data.dataset: [digits, cifar10]
        """,
    )
    with pytest.raises(BenchError, match=r"grid\.data\.dataset\[1\]: data: dataset 'cifar10' not found"):
        load_study(path)


def test_extends_errors(tmp_path: Path) -> None:
    a = write(tmp_path, "extends: b.yaml\n", "a.yaml", base=False)
    write(tmp_path, "extends: a.yaml\n", "b.yaml", base=False)
    with pytest.raises(BenchError, match="cycle"):
        load_study(a)
    c = write(tmp_path, "extends: nowhere.yaml\n", "c.yaml", base=False)
    with pytest.raises(BenchError, match=r"nowhere\.yaml: no such study file \(extended by"):
        load_study(c)


def test_scientific_notation_is_a_float(tmp_path: Path) -> None:
    (cfg,) = load(tmp_path, "base: {train: {lr: 2e-4, weight_decay: 1E-2}}\n").configs
    assert cfg.train.lr == 2e-4 and cfg.train.weight_decay == 0.01
