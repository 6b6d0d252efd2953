"""RunConfig identity: canonical JSON, keys, types, overrides."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from typing import Any

import pytest

from bench.core.config import (
    FIELD_TYPES,
    SECTIONS,
    EvalSpec,
    ModelSpec,
    Options,
    RunConfig,
    SampleSpec,
    VAESpec,
    coerce_value,
    defaults,
    from_dict,
    resolve_key,
    section_fields,
)
from bench.core.errors import BenchError

LATENT = RunConfig(model=ModelSpec(space="latent"), vae=VAESpec())
ALL_FIELDS = [(s, f) for s in SECTIONS for f in FIELD_TYPES[s]]
TRAINING = ("data", "model", "diffusion", "train")
INFERENCE = ("sample", "eval")


def changed(value: Any, section: str, name: str) -> Any:
    """A different value of the same type for ``section.name``."""
    ft = FIELD_TYPES[section][name]
    if value is None:
        return {int: 16, float: 0.5, str: "elsewhere"}[ft.base]
    if ft.items is not None:
        return (*value, "extra")
    if ft.base is dict:
        return Options.of({**dict(value), "extra": 1.0})
    if ft.base is bool:
        return not value
    if ft.base is str:
        return value + "-x"
    return value * 2 + 1


def with_field(cfg: RunConfig, section: str, name: str) -> RunConfig:
    spec = getattr(cfg, section)
    return replace(cfg, **{section: replace(spec, **{name: changed(getattr(spec, name), section, name)})})


def test_canonical_json_is_sorted_compact_and_stable() -> None:
    cfg = RunConfig(sample=SampleSpec(steps=20), seed=3)
    text = cfg.canonical_json()
    assert text == json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    assert text == RunConfig(sample=SampleSpec(steps=20), seed=3).canonical_json()
    assert json.loads(text)["schema"] == 1
    assert from_dict(json.loads(text)) == cfg
    assert from_dict(json.loads(text)).key() == cfg.key()
    assert len(cfg.key()) == 16 and int(cfg.key(), 16) >= 0


def test_canonical_json_of_sections_matches_json_dumps() -> None:
    d = LATENT.to_dict()
    for sections in (("data", "vae"), ("data", "model", "diffusion", "train", "seed", "vae"), ("seed",)):
        want = {"schema": 1, **{s: d[s] for s in sections}}
        assert LATENT.canonical_json(sections) == json.dumps(want, sort_keys=True, separators=(",", ":"))


def test_default_key_is_pinned() -> None:
    # Changing a default or the canonical form changes every key (finished runs are re-done): do it on purpose.
    assert RunConfig().key() == RunConfig().key()
    assert RunConfig().key() == "1239400bf2b47971"


@pytest.mark.parametrize(("section", "name"), ALL_FIELDS, ids=[f"{s}.{f}" for s, f in ALL_FIELDS])
def test_key_changes_with_every_field(section: str, name: str) -> None:
    """Every field is part of the run's identity, except those declared ``identity: False`` (a
    checkpoint's folder: its weights' hash is the identity), which must leave the key alone."""
    base = LATENT
    identity = section_fields(section)[name].metadata.get("identity", True)
    assert (with_field(base, section, name).key() != base.key()) == identity


def test_key_changes_with_seed() -> None:
    assert RunConfig(seed=1).key() != RunConfig().key()
    assert RunConfig(seed=1).train_key() != RunConfig().train_key()


@pytest.mark.parametrize("section", INFERENCE)
def test_train_key_ignores_sampling_and_evaluation(section: str) -> None:
    for name in FIELD_TYPES[section]:
        for base in (RunConfig(), LATENT):
            other = with_field(base, section, name)
            assert other.key() != base.key()
            assert other.train_key() == base.train_key(), f"{section}.{name}"
            assert other.vae_key() == base.vae_key()


@pytest.mark.parametrize("section", TRAINING)
def test_train_key_follows_training_fields(section: str) -> None:
    for name in FIELD_TYPES[section]:
        other = with_field(LATENT, section, name)
        if (section, name) == ("model", "space"):
            continue  # "latent-x" is no space; covered by the pixel/latent test below
        assert other.train_key() != LATENT.train_key(), f"{section}.{name}"


def test_vae_settings_matter_to_latent_training_only() -> None:
    for name in FIELD_TYPES["vae"]:
        assert with_field(LATENT, "vae", name).train_key() != LATENT.train_key()
        assert with_field(LATENT, "vae", name).vae_key() != LATENT.vae_key()
    pixel = RunConfig(vae=VAESpec())
    assert with_field(pixel, "vae", "factor").train_key() == pixel.train_key()
    assert pixel.vae_key() is None and RunConfig().vae_key() is None


def test_vae_key_shared_across_model_diffusion_train() -> None:
    for section in ("model", "diffusion", "train"):
        for name in FIELD_TYPES[section]:
            if (section, name) not in (("model", "space"), ("model", "pretrained")):
                assert with_field(LATENT, section, name).vae_key() == LATENT.vae_key()
    # a pretrained latent model brings its own VAE: no VAE job
    assert with_field(LATENT, "model", "pretrained").vae_key() is None
    assert with_field(LATENT, "data", "image_size").vae_key() != LATENT.vae_key()


def test_ints_for_floats_are_the_same_run() -> None:
    assert SampleSpec(eta=1).eta == 1.0 and isinstance(SampleSpec(eta=1).eta, float)
    assert RunConfig(sample=SampleSpec(eta=1)).key() == RunConfig(sample=SampleSpec(eta=1.0)).key()
    assert EvalSpec(metrics=["fid", "is"]).metrics == ("fid", "is")


def test_cached_keys_do_not_leak_into_equality_or_pickles() -> None:
    a, b = RunConfig(seed=5), RunConfig(seed=5)
    a.key()
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    c = pickle.loads(pickle.dumps(a))
    assert c == a and c.key() == a.key() and c.train_key() == a.train_key()
    assert replace(a, seed=6).key() != a.key()


def test_override_dotted_keys() -> None:
    cfg = RunConfig().override(**{"sample.steps": 20, "train.lr": 1e-3, "eval.metrics": ["fid", "kid"]})
    assert cfg.sample.steps == 20 and cfg.train.lr == 1e-3 and cfg.eval.metrics == ("fid", "kid")
    assert cfg.train_key() != RunConfig().train_key()
    assert RunConfig().override(**{"sample.steps": 20}).train_key() == RunConfig().train_key()
    assert cfg.flat()["sample.steps"] == 20
    with pytest.raises(BenchError, match="sample.stepz"):
        RunConfig().override(**{"sample.stepz": 3})


@pytest.mark.parametrize(
    ("d", "words"),
    [
        ({"sample": {"steps": "many"}}, ["sample.steps", "integer", "'many'"]),
        ({"sample": {"steps": 2.5}}, ["sample.steps", "integer"]),
        ({"sample": {"eta": True}}, ["sample.eta", "number"]),
        ({"model": {"class_cond": "yes"}}, ["model.class_cond", "true or false"]),
        ({"eval": {"metrics": "fid"}}, ["eval.metrics", "list of strs"]),
        ({"sample": {"etaa": 0.0}}, ["sample.etaa", "Did you mean 'sample.eta'"]),
        ({"smaple": {}}, ["smaple", "Did you mean 'sample'"]),
        ({"seed": "0"}, ["seed", "integer"]),
        ({"data": None}, ["data", "null"]),
    ],
)
def test_from_dict_rejects_bad_types_and_keys(d: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(BenchError) as e:
        from_dict(d, where="x.yaml")
    for w in ["x.yaml", *words]:
        assert w in str(e.value)


def test_coerce_and_resolve() -> None:
    assert coerce_value("train", "lr", 1, "w") == 1.0
    assert coerce_value("data", "image_size", None, "w") is None
    assert resolve_key("sample.eta", "w") == ("sample", "eta")
    with pytest.raises(BenchError, match="Did you mean 'sample.eta'"):
        resolve_key("sampel.eta", "w")
    assert defaults()["sample.steps"] == 50 and defaults()["eval.metrics"] == ("fid",)


def test_override_never_writes_into_the_callers_values() -> None:
    from bench.core.config import unflatten

    section = {"latent_channels": 4}
    out = unflatten({"vae": section, "vae.factor": 4})
    assert out == {"vae": {"latent_channels": 4, "factor": 4}}
    assert section == {"latent_channels": 4}
