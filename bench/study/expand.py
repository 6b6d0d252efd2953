"""Grid expansion: factors x seeds -> RunConfigs, with every rule across sections run once per
distinct combination of the section values it reads (a 100,000-point grid checks each once)."""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Callable
from typing import Any

import bench.rules as rules
from bench.core.config import SECTIONS, RunConfig, variance_is_trained
from bench.core.errors import BenchError

_Builder = Any  # bench.study.build._Builder, which imports this module


# --- expansion -------------------------------------------------------------------------------

_ORDER = ("data", "model", "vae", "diffusion", "train", "sample", "eval")


class Expander:
    """Grid points x seeds -> RunConfigs, running each cross-section check once per combination."""

    def __init__(self, b: _Builder) -> None:
        self.b = b
        self.base: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for k, v in b.base.items():
            section, name = k.split(".", 1)
            self.base[section][name] = v
        self.interned: dict[Any, Any] = {}
        self.done: set[tuple[Any, ...]] = set()
        # checks run once the grid is expanded, so a point's own errors (guidance needs label
        # dropout) are reported before the rules they imply (label dropout needs a conditional model)
        self.later: dict[tuple[int, int], tuple[tuple[int, ...], Any, Any]] = {}
        self.nfe_memo: dict[tuple[Any, ...], Any] = {}

    def expand(self, exclude: list[dict[int, set[int]]]) -> list[RunConfig]:
        b = self.b
        const = {s: self._make(s, {}) for s in _ORDER if not self._parts(s)}
        if b.vae_mode != "set":
            const["vae"] = None
        variable = [(s, *self._getter(s)) for s in _ORDER if s not in const]
        seeds = b.factors[-1][0].values
        out = []
        for idx in itertools.product(*(range(len(f[0].values)) for f in b.factors)):
            if exclude and any(all(idx[j] in ok for j, ok in e.items()) for e in exclude):
                continue
            secs = const.copy()
            for section, pick, memo, build in variable:
                k = pick(idx)
                inst = memo.get(k)
                secs[section] = inst if inst is not None else build(k, idx)
            if secs["model"].space != "latent":
                secs["vae"] = None  # unused by pixel runs: keep it out of their keys
            if secs["sample"].nfe is not None:
                secs["sample"] = self._meet_nfe(idx, secs["sample"], secs["diffusion"].timesteps,
                                                secs["diffusion"].process != "vp")
            self._check(idx, secs)
            cfg = RunConfig(**secs, seed=seeds[idx[-1]])
            if cfg.sample.guide and self._once("guide", id(secs["model"]), id(secs["train"]), id(secs["sample"])):
                self._check_guide_config(idx, cfg)
            out.append(cfg)
        for idx, model, train in self.later.values():  # after every point's own checks
            rules.check_label_dropout(train.p_uncond, model.class_cond,
                                      self._at(idx, "train.p_uncond", "model.class_cond"), self._origin(idx))
        return out

    def _parts(self, section: str) -> list[tuple[int, Any]]:
        return [(j, a) for j, f in enumerate(self.b.factors) for a in f if a.section == section]

    def _getter(
        self, section: str
    ) -> tuple[Callable[[tuple[int, ...]], Any], dict[Any, Any], Callable[..., Any]]:
        """(pick the factor indices the section depends on, memo, build the section there)."""
        parts = self._parts(section)
        pick = operator.itemgetter(*sorted({j for j, _ in parts}))
        memo: dict[Any, Any] = {}

        def build(k: Any, idx: tuple[int, ...]) -> Any:
            inst = memo[k] = self._make(section, {a.field: a.values[idx[j]] for j, a in parts})
            return inst

        return pick, memo, build

    def _make(self, section: str, values: dict[str, Any]) -> Any:
        inst = SECTIONS[section](**{**self.base[section], **values})
        return self.interned.setdefault(inst, inst)

    def _once(self, *key: Any) -> bool:
        """True the first time ``key`` (a check name and section identities) is seen."""
        if key in self.done:
            return False
        self.done.add(key)
        return True

    def _check(self, idx: tuple[int, ...], s: dict[str, Any]) -> None:
        """Every cross-section check, each once per combination of the sections it reads."""
        data, model, vae, diffusion = s["data"], s["model"], s["vae"], s["diffusion"]
        train, sample, ev = s["train"], s["sample"], s["eval"]
        if self._once("data", id(data)):
            self._check_data(idx, data)
        if self._once("diffusion", id(diffusion)):
            self._check_diffusion(idx, diffusion)
        if self._once("model", id(data), id(model), id(vae)):
            self._check_model(idx, data, model, vae)
        if self._once("guidance", id(model), id(train), id(sample)):
            origin = self._origin(idx)
            if model.pretrained is not None:
                self._check_pretrained_guidance(idx, sample)
            elif guided_by_model(sample.guidance_method):  # a weaker model guides: no label dropout needed
                pass
            else:
                rules.check_guidance(sample.guidance, model.class_cond, train.p_uncond,
                                     self._at(idx, "sample.guidance", "model.class_cond", "train.p_uncond"), origin)
            self.later.setdefault((id(model), id(train)), (idx, model, train))
        if self._once("steps", id(diffusion), id(sample)) and diffusion.process == "vp":  # continuous: any steps
            rules.check_steps(sample.steps, diffusion.timesteps,
                              self._at(idx, "sample.steps", "diffusion.timesteps", "sample.spacing"),
                              self._origin(idx), sample.spacing)
        if self._once("sampler", id(sample)):
            self._check_sampler(idx, sample)
        if self._once("t_sampling", id(diffusion), id(train)):
            from bench.diffusion import check_t_sampling

            opts = train.t_sampling_options.as_dict()
            check_t_sampling(train.t_sampling, opts, self._at(idx, "train.t_sampling_options", "train.t_sampling")
                             if {"train.t_sampling_options", "train.t_sampling"} & set(self.b.axis_at)
                             else "train.t_sampling_options")
            rules.check_t_sampling(train.t_sampling, opts, diffusion.loss,
                                   self._at(idx, "train.t_sampling", "diffusion.loss"), self._origin(idx))
        if sample.variance is not None and self._once("variance", id(diffusion), id(sample)):
            rules.check_sampling_variance(sample.variance, diffusion.variance, variance_is_trained(diffusion),
                                          self._at(idx, "sample.variance", "diffusion.loss"), self._origin(idx))
        if self._once("eval", id(data), id(model), id(ev)):
            self._check_eval(idx, data, model, ev)
        if ev.nll_timesteps is not None and self._once("nll_timesteps", id(diffusion), id(ev)):
            k, t_max = ev.nll_timesteps, diffusion.timesteps
            if not 2 <= k <= t_max:
                raise BenchError(f"{self._at(idx, 'eval.nll_timesteps', 'diffusion.timesteps')}: nll_timesteps = {k} "
                                 f"must be in [2, diffusion.timesteps = {t_max}]: t = 0 plus at least one stratum "
                                 "(unset it for the full bound)")

    def _check_data(self, idx: tuple[int, ...], data: Any) -> None:
        datasets = _data_module()
        self._external(idx, ("data",), lambda w: datasets.check_available(data, w), "data")
        splits = datasets.dataset_info(data.dataset).splits
        if data.train_split not in splits:
            raise BenchError(
                f"{self._at(idx, 'data.train_split', 'data.dataset')}: dataset {data.dataset!r} has no split "
                f"{data.train_split!r}; its splits are {', '.join(splits)}"
            )

    def _check_diffusion(self, idx: tuple[int, ...], diffusion: Any) -> None:
        from bench.diffusion import make_schedule

        try:  # every beta in (0, 1): a linear schedule over 10 steps reaches beta = 1
            make_schedule(diffusion.schedule, diffusion.timesteps)
        except BenchError as e:
            raise BenchError(f"{self._at(idx, 'diffusion.schedule', 'diffusion.timesteps')}: {e}; use more "
                             "diffusion.timesteps or another schedule (cosine clips its betas)") from None
        rules.check_learned_variance(diffusion.variance, diffusion.loss,
                                     self._at(idx, "diffusion.variance", "diffusion.loss"), self._origin(idx))
        rules.check_process(diffusion, self._at(idx, "diffusion.process", "diffusion.shift", "diffusion.objective",
                                                "diffusion.loss"))

    def _check_sampler(self, idx: tuple[int, ...], sample: Any) -> None:
        """``sample.options`` against the options the sampler declares."""
        from bench.diffusion import SampleRequest, check_request

        options = sample.options.as_dict()
        where = self._at(idx, "sample.options", "sample.sampler")
        where = where if "sample.options" in self.b.axis_at else "sample.options"
        gwhere = self._at(idx, "sample.guidance_options", "sample.guidance_method")
        gwhere = (gwhere if "sample.guidance_options" in self.b.axis_at or "sample.guidance_method" in self.b.axis_at
                  else "sample.guidance_options")  # fmt: skip
        # the rules Diffusion.sample applies on the run, by the same function, before any work
        check_request(SampleRequest.of(sample), where, gwhere,
                      self._at(idx, "sample.guidance", "sample.guidance_method"))
        self._check_guide(idx, sample)
        if "eta" in options and sample.eta not in (0.0, options["eta"]):
            raise BenchError(f"{self._at(idx, 'sample.eta', 'sample.options')}: sample.eta = {sample.eta} and "
                             f"sample.options.eta = {options['eta']} disagree; give eta once")

    def _check_guide(self, idx: tuple[int, ...], sample: Any) -> None:
        """``sample.guide`` names the guiding model of a method that takes one (``guide=True``:
        autoguidance) as model.* / train.* overrides."""
        from bench.core.config import coerce_value
        from bench.diffusion.guidance import GUIDANCE
        from bench.study.checks import check_value

        where = self._at(idx, "sample.guide", "sample.guidance_method")
        method = sample.guidance_method
        auto = guided_by_model(method)
        if sample.guide and not auto:
            takes = " or ".join(m for m in GUIDANCE.names() if guided_by_model(m))
            raise BenchError(f"{where}: sample.guide is the guiding model of guidance_method: {takes}, but "
                             f"the method is {method!r}; drop sample.guide or use {takes}")
        if auto and not sample.guide:
            raise BenchError(f"{where}: {method} needs sample.guide, the weaker model that guides: this run's "
                             "model with model.* / train.* overrides, e.g. sample.guide: {train.steps: 100}")
        for key in sample.guide.as_dict():
            if key.partition(".")[0] not in ("model", "train"):
                raise BenchError(f"{where}.{key}: the guide is this run's model trained shorter or smaller: only "
                                 "model.* and train.* keys may differ (data, diffusion and the labels stay the same)")
            if key in ("model.class_cond", "model.pretrained"):
                raise BenchError(f"{where}.{key}: the guide must see the same labels and be trained here; "
                                 "change its size (model.*) or its training (train.*) instead")
            section, _, name = key.partition(".")
            check_value(key, coerce_value(section, name, sample.guide.as_dict()[key], f"{where}.{key}"),
                        f"{where}.{key}")

    def _check_guide_config(self, idx: tuple[int, ...], cfg: RunConfig) -> None:
        """The guide builds as a config of its own and is not the model itself."""
        where = self._at(idx, "sample.guide")
        try:
            guide = cfg.guide_config()
            assert guide is not None
            self._check(idx, {s: getattr(guide, s) for s in _ORDER})  # every rule a run's config meets
        except BenchError as e:
            raise BenchError(f"{where}: the guiding model's config is invalid: {e}") from None
        if guide.train_key() == cfg.train_key():
            raise BenchError(f"{where}: {dict(cfg.sample.guide.as_dict())} leaves the guide equal to the model "
                             "itself (autoguidance then is no guidance); make it weaker, e.g. fewer train.steps")

    def _meet_nfe(self, idx: tuple[int, ...], sample: Any, timesteps: int, continuous: bool = False) -> Any:
        """The sample section with ``steps`` set so that its sampler meets ``sample.nfe`` exactly."""
        key = ("nfe", id(sample), timesteps, continuous)
        if key not in self.nfe_memo:
            self._check_sampler(idx, sample)
            steps = rules.check_nfe(sample.nfe, sample.sampler, sample.spacing, timesteps, sample.options.as_dict(),
                                    self._at(idx, "sample.nfe", "sample.sampler", "sample.spacing"), continuous)
            inst = dataclasses.replace(sample, steps=steps)
            self.nfe_memo[key] = self.interned.setdefault(inst, inst)
        return self.nfe_memo[key]

    def _origin(self, idx: tuple[int, ...]) -> Callable[[str], str]:
        return lambda key: self.b.origin(key, idx)

    def _check_pretrained_guidance(self, idx: tuple[int, ...], sample: Any) -> None:
        info = self.b.pretrained
        if sample.guidance != 0 and not info.has_null_label:
            raise BenchError(f"{self._at(idx, 'sample.guidance')}: guidance w = {sample.guidance} needs a checkpoint "
                             f"with a null label; {info.source!r} ({info.model_class}) has none; use guidance 0")

    def _check_pretrained(self, idx: tuple[int, ...], data: Any, size: int | None, channels: int) -> None:
        """The study's data must be what the checkpoint generates: size, channels."""
        info = self.b.pretrained
        at = self._at(idx, "data.image_size", "data.dataset")
        if size != info.image_size:
            raise BenchError(f"{at}: {info.source!r} generates {info.image_size}x{info.image_size} images, but the "
                             f"study's data are {size}x{size}; set data.image_size: {info.image_size}")
        want = 3 if info.space == "latent" else info.channels
        if channels != want:
            raise BenchError(f"{at}: {info.source!r} generates {want}-channel images, dataset {data.dataset!r} has "
                             f"{channels}; compare it with a dataset of {want} channels")

    def _check_model(self, idx: tuple[int, ...], data: Any, model: Any, vae: Any) -> None:
        from bench.models import validate_model

        info = _data_module().dataset_info(data.dataset)
        size, channels = data.image_size or info.image_size, info.channels
        if model.pretrained is not None:
            return self._check_pretrained(idx, data, size, channels)
        rules.check_class_labels(model.class_cond, data.dataset, info.has_labels,
                                 self._at(idx, "model.class_cond", "data.dataset"))
        if model.space == "latent":
            if vae is None:
                how = "`vae: null` switches it off" if self.b.vae_mode == "null" else "it is missing"
                raise BenchError(
                    f"{self._at(idx, 'model.space')}: latent space needs a `vae:` section ({how}); "
                    "add `vae: {}` under base for the default VAE, or use model.space: pixel"
                )
            from bench.models.vae import validate_vae

            self._external(idx, ("data", "vae"), lambda w: validate_vae(vae, size, w), "vae")
            latent = f" (in latent space: {size}px / vae.factor {vae.factor} = {size // vae.factor}px)"
            size, channels = size // vae.factor, vae.latent_channels
        where = self._at(idx, "model.backbone", "data.image_size", "vae.factor", "model.space")
        validate_model(model.backbone, channels, size, where + (latent if model.space == "latent" else ""))

    def _check_eval(self, idx: tuple[int, ...], data: Any, model: Any, ev: Any) -> None:
        import bench.metrics as metrics

        for name in ev.metrics:
            space = metrics.METRICS.get(name).needs_space
            if space is not None and model.space != space:
                other = [m for m in metrics.METRICS.names() if metrics.METRICS.get(m).needs_space == model.space]
                raise BenchError(
                    f"{self._at(idx, 'eval.metrics', 'model.space')}: {name} is measured on {space}-space models, "
                    f"but model.space is {model.space!r}; use {' or '.join(other) or 'another metric'} there")
        for name in ev.metrics:
            if metrics.METRICS.get(name).needs_labels and not model.class_cond:
                raise BenchError(
                    f"{self._at(idx, 'eval.metrics', 'model.class_cond')}: {name} compares generated images "
                    "with the labels they were asked for, so it needs model.class_cond: true; drop it or "
                    "make the model class-conditional"
                )
        validate = getattr(metrics, "validate_eval", None)
        if validate is not None:
            self._external(idx, ("eval", "data"), lambda w: validate(ev, data, w), "eval")

    def _at(self, idx: tuple[int, ...], key: str, *context: str) -> str:
        """The origin of ``key`` at ``idx``, plus the axes among ``context`` that vary there."""
        extra = [self.b.origin(k, idx) for k in context if k != key and k in self.b.axis_at]
        return " with ".join([self.b.origin(key, idx), *extra])

    def _external(self, idx: tuple[int, ...], sections: tuple[str, ...], check: Callable[[str], None],
                  where: str) -> None:  # fmt: skip
        """Run a validator written elsewhere with ``where`` = the section (``base.<section>`` when
        none of ``sections`` varies, else the varying axes at ``idx`` lead the message)."""
        varying = self.b.varying(idx, sections)
        try:
            check(where if varying else f"base.{where}")
        except BenchError as e:
            raise BenchError(f"{', '.join(varying)}: {e}" if varying else str(e)) from None


def guided_by_model(method: str) -> bool:
    """Whether guidance method ``method`` takes a guide model, as its entry declares (an unknown
    name: no; its own check names it)."""
    from bench.diffusion.guidance import GUIDANCE
    from bench.diffusion.guidance import guided_by_model as declared

    return method in GUIDANCE and declared(method)


def _data_module() -> Any:
    import bench.data

    return bench.data


