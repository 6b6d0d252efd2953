"""Rules that involve more than one key, each written once.

Study validation (:mod:`bench.study`), search validation (:mod:`bench.study.search_spec`) and the
training setup (:mod:`bench.training.setup`) call these same functions, so a rule and its message
cannot drift apart. Every rule takes ``at`` (where the offending value was given, e.g.
``grid.sample.guidance[1]``) and ``origin`` (key -> where that key's value comes from; the
identity when there is no study file) and raises one BenchError saying what to do.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.core.errors import BenchError
from bench.diffusion import LOSSES, SPACINGS, VARIANCES, TimeSampler, make_timesteps

Origin = Callable[[str], str]


def plain(key: str) -> str:
    """The origin of a key when there is no study file: the key itself."""
    return key


def check_guidance(w: float | None, class_cond: bool, p_uncond: float, at: str, origin: Origin = plain) -> None:
    """Classifier-free guidance needs a class-conditional model trained with label dropout, so it
    also learned the unconditional score (Ho & Salimans 2022). ``w`` None: a searched guidance."""
    if w == 0:
        return
    shown = "" if w is None else f"w = {w} "
    if not class_cond:
        why = f"model.class_cond is false ({origin('model.class_cond')})"
    elif p_uncond == 0:
        why = f"train.p_uncond is 0 ({origin('train.p_uncond')}: no label dropout)"
    else:
        return
    raise BenchError(f"{at}: guidance {shown}needs a class-conditional model that also learned the "
                     f"unconditional score, but {why}; set model.class_cond: true and train.p_uncond "
                     "(e.g. 0.1), or use guidance 0")


def check_steps(steps: int, timesteps: int, at: str, origin: Origin = plain, spacing: str | None = None) -> None:
    """A sampler takes at most one step per training timestep, and the spacing must be able to
    place ``steps`` distinct timesteps in [0, T) (:func:`bench.diffusion.make_timesteps`)."""
    if steps > timesteps:
        raise BenchError(f"{at}: sample.steps = {steps} is more than diffusion.timesteps = {timesteps} "
                         f"({origin('diffusion.timesteps')}); a sampler can take at most one step per "
                         "training timestep. Lower sample.steps")
    if spacing is not None and SPACINGS.meta(SPACINGS.check(spacing, "sample.spacing"))["kind"] == "timesteps":
        try:
            make_timesteps(spacing, timesteps, steps)
        except BenchError as e:
            raise BenchError(f"{at}: {e}") from None


def check_nfe(nfe: int, sampler: str, spacing: str, timesteps: int, options: dict, at: str,
              continuous: bool = False) -> int:
    """The step count that meets the budget ``sample.nfe`` exactly, or one error naming budgets that work
    (``continuous``: a continuous process, whose levels are never deduplicated)."""
    from bench.diffusion.samplers import steps_for_nfe

    try:
        return steps_for_nfe(sampler, nfe, spacing, timesteps, options, continuous=continuous)
    except BenchError as e:
        raise BenchError(f"{at}: {e}") from None


def check_learned_variance(variance: str, loss: str, at: str, origin: Origin = plain) -> None:
    """A learned variance needs a loss that trains it (Nichol & Dhariwal 2021, Sec. 3.1)."""
    learned = VARIANCES.meta(VARIANCES.check(variance, "diffusion.variance")).get("learned", False)
    if learned and not LOSSES.meta(LOSSES.check(loss, "diffusion.loss")).get("trains_variance", True):
        raise BenchError(f"{at}: variance {variance!r} is learned, but loss {loss!r} does not train it "
                         f"({origin('diffusion.loss')}); use diffusion.loss: hybrid (Nichol & Dhariwal) or "
                         "vlb, or a fixed variance")


def check_process(diffusion: object, at: str) -> None:
    """The process, its shift and the objective / loss / variance it trains with: the checks the
    :class:`~bench.diffusion.Diffusion` of the run makes when it is built (the same function)."""
    from bench.diffusion import Diffusion

    d = diffusion
    try:
        Diffusion(d.schedule, d.timesteps, d.objective, d.variance, d.loss, d.hybrid_weight,  # type: ignore[attr-defined]
                  process=d.process, shift=d.shift)  # type: ignore[attr-defined]
    except BenchError as e:
        raise BenchError(f"{at}: {e}") from None


def check_label_dropout(p_uncond: float, class_cond: bool, at: str, origin: Origin = plain) -> None:
    """Label dropout replaces labels by the null label: only a class-conditional model has one."""
    if p_uncond > 0 and not class_cond:
        raise BenchError(f"{at}: p_uncond={p_uncond} drops class labels for guidance, but the model is "
                         f"unconditional ({origin('model.class_cond')}); set model.class_cond: true or "
                         "train.p_uncond: 0")


def check_class_labels(class_cond: bool, dataset: str, has_labels: bool, at: str) -> None:
    """A class-conditional model needs a labelled dataset."""
    if class_cond and not has_labels:
        raise BenchError(f"{at}: class_cond is true but dataset {dataset!r} has no labels; set "
                         "model.class_cond: false or use a labelled dataset")


def check_precision(precision: str, device_type: str, at: str) -> None:
    """fp16 autocast and loss scaling are CUDA features (accelerate would silently train in fp32)."""
    if precision == "fp16" and device_type == "cpu":
        raise BenchError(f"{at}: 'fp16' needs a GPU (fp16 autocast and loss scaling are CUDA "
                         "features; accelerate would silently train in fp32 on the CPU). Use 'bf16' "
                         "(CPU autocast) or 'no' on the CPU, or train on a GPU.")


def check_sampling_variance(variance: str | None, trained: str, trained_by_loss: bool, at: str,
                            origin: Origin = plain) -> None:
    """``sample.variance`` picks a fixed variance at sampling time: only where the training loss
    ignored the variance (a fixed one with the ``simple`` loss), and only a fixed one."""
    if variance is None:
        return
    if VARIANCES.meta(VARIANCES.check(variance, at)).get("learned", False):
        raise BenchError(f"{at}: sample.variance {variance!r} is learned: it comes from training, not sampling; "
                         "choose fixed_small or fixed_large, or set diffusion.variance")
    if trained_by_loss:
        raise BenchError(f"{at}: sample.variance {variance!r} replaces the variance at sampling time, but this "
                         f"model's loss trained its variance {trained!r} ({origin('diffusion.loss')}); drop "
                         "sample.variance or train with a fixed variance and loss: simple")


def check_t_sampling(name: str, options: dict, loss: str, at: str, origin: Origin = plain) -> None:
    """A timestep density with its options in range; one other than uniform t with the objective's own
    loss reweights the loss over t, which the variational bound's losses (vlb, hybrid: T L_t at uniform
    t, an unbiased estimate of the bound) cannot take."""
    try:
        sampler = TimeSampler(name, options)
    except BenchError as e:
        raise BenchError(f"{at}: {e}") from None
    if not sampler.is_default and LOSSES.meta(LOSSES.check(loss, "diffusion.loss")).get("trains_variance", False):
        raise BenchError(f"{at}: train.t_sampling {name!r} with {options or 'its defaults'} reweights the loss over t, "
                         f"but diffusion.loss {loss!r} ({origin('diffusion.loss')}) estimates the variational bound "
                         "from uniform t; use diffusion.loss: simple, or train.t_sampling: uniform without weighting")
