"""The Diffusion object: forward process, model predictions, losses, sampling and likelihood.

Samplers never branch on the objective or schedule: they ask :meth:`Diffusion.predict` for
(eps, x0) at a chain index, and the chain for its coefficients (STYLE.md, point 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.diffusion.batching import split_guided
from bench.diffusion.chain import VARIANCES, Chain, gather
from bench.diffusion.continuous import ProcessMath
from bench.diffusion.guidance import GUIDANCE, Guided, always_active, check_guidance, guidance_weight
from bench.diffusion.losses import LOSSES
from bench.diffusion.noise import NoiseSource
from bench.diffusion.objectives import Rates, check_objective, get_objective, objective_meta
from bench.diffusion.prediction import Conditioning, Level, Model, Prediction, is_conditional, null_label
from bench.diffusion.processes import PROCESSES, U_EDGE
from bench.diffusion.request import SampleRequest, check_request
from bench.diffusion.samplers import SAMPLERS, Denoiser
from bench.diffusion.schedules import NoiseSchedule, make_schedule
from bench.diffusion.spacing import make_levels, process_levels, sigma_to_t
from bench.diffusion.vlb import VariationalBound


class Diffusion(ProcessMath, VariationalBound):
    """``Diffusion(schedule="cosine", timesteps=1000, objective="eps", variance="fixed_small", loss="simple")``;
    ``Diffusion(process="rectified-flow", objective="velocity", shift=3.0)`` for a continuous process
    (:mod:`bench.diffusion.processes`; its ``schedule`` and ``timesteps`` are then unused).

    Hooks for training a continuous process: ``t_sampler(n, generator, device) -> t [n]`` draws the
    training times in the process's range (None: uniform in unit time, ``process.sample_t``);
    ``weighting(t) -> [n]`` multiplies the per-image loss (None: the objective's own weight).
    """

    def __init__(self, schedule: str | Sequence[float] | torch.Tensor | NoiseSchedule = "linear",
                 timesteps: int | None = 1000, objective: str = "eps", variance: str = "fixed_small",
                 loss: str = "simple", hybrid_weight: float = 0.001, *, process: str = "vp", shift: float = 1.0,
                 process_options: Mapping[str, Any] | None = None) -> None:
        self.schedule = schedule if isinstance(schedule, NoiseSchedule) else make_schedule(
            schedule, None if not isinstance(schedule, str) else timesteps)
        self.timesteps = self.schedule.timesteps
        self.objective_name = check_objective(objective, "diffusion.objective")
        self.objective = get_objective(objective)
        self._needs_rates = objective_meta(objective)["rates"]
        self.variance_name = VARIANCES.check(variance, "diffusion.variance")
        self.variance = VARIANCES.get(variance)
        self.learned_variance = bool(VARIANCES.meta(variance).get("learned"))
        self.loss_name = LOSSES.check(loss, "diffusion.loss")
        self.loss_fn = LOSSES.get(loss)
        if self.learned_variance and not LOSSES.meta(loss).get("trains_variance"):
            raise BenchError(f"variance {variance!r} is learned, but loss {loss!r} gives it no gradient; "
                             "use loss 'hybrid' (Nichol & Dhariwal) or 'vlb'")
        self.hybrid_weight = float(hybrid_weight)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.full_chain = Chain.build(self.alphas_cumprod, torch.arange(self.timesteps))
        self._tables: dict[torch.device, torch.Tensor] = {}
        self.process_name = PROCESSES.check(process, "diffusion.process")
        opts = dict(process_options or {})
        if process == "vp":
            opts["alphas_cumprod"] = self.alphas_cumprod
        self.process = PROCESSES.get(process)(shift=shift, **opts)
        self.continuous = bool(self.process.continuous)
        if self.continuous and (self.learned_variance or loss != "simple"):
            raise BenchError(f"process {process!r} trains with loss 'simple' and a fixed variance (the learned "
                             f"variance and the vlb need the discrete chain of process 'vp'); got loss {loss!r}, "
                             f"variance {variance!r}")
        p = self.process
        # an objective that cannot give x0 where alpha = 0 samples from unit time 1 - U_EDGE (as SiT does)
        self.u_top = 1.0 if (objective_meta(objective).get("at_pure_noise", True)
                             or float(p.abar(p.from_unit(1.0))) > 0) else 1.0 - U_EDGE
        self.t_sampler: Callable[..., torch.Tensor] | None = None
        self.weighting: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __repr__(self) -> str:
        if self.continuous:
            return (f"Diffusion(process={self.process_name!r}, shift={self.process.shift}, "
                    f"objective={self.objective_name!r})")
        return (f"Diffusion(schedule={self.schedule.name!r}, timesteps={self.timesteps}, "
                f"objective={self.objective_name!r}, variance={self.variance_name!r}, loss={self.loss_name!r})")

    # --- forward process --------------------------------------------------------------------
    def coefs(self, t: torch.Tensor | int | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) broadcastable against ``like`` (t: [B] or one number); for ``vp``
        (sqrt(abar_t), sqrt(1 - abar_t)) from the table, a device copy of it for a tensor t (no host sync)."""
        if self.continuous or (isinstance(t, torch.Tensor) and t.is_floating_point()) or isinstance(t, float):
            tt = torch.as_tensor(t, dtype=torch.float64)
            shape = (-1, *([1] * (like.ndim - 1))) if tt.ndim else ()
            return (self.process.alpha(tt).to(like.dtype).reshape(shape),
                    self.process.sigma(tt).to(like.dtype).reshape(shape))
        if isinstance(t, int):
            abar = gather(self.alphas_cumprod, t, like)
        else:
            table = self._tables.get(t.device)
            if table is None:
                table = self._tables[t.device] = self.alphas_cumprod.to(t.device)
            abar = table[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
        return abar.sqrt(), (1.0 - abar).sqrt()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a, s = self.coefs(t, x0)
        return a * x0 + s * noise

    # --- the network -----------------------------------------------------------------------
    def _call(self, model: Model, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = model(x_t, t, y)
        c = x_t.shape[1]
        want = 2 * c if self.learned_variance else c
        if out.shape[0] != x_t.shape[0] or out.shape[2:] != x_t.shape[2:] or out.shape[1] != want:
            extra = (" (prediction and variance: variance 'learned_range' needs 2C channels)"
                     if self.learned_variance and out.shape[1] == c else "")
            raise BenchError(f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                             f"expected {(x_t.shape[0], want, *x_t.shape[2:])}{extra}")
        out = out.to(x_t.dtype)
        return (out[:, :c], out[:, c:]) if self.learned_variance else (out, None)

    def predict(self, model: Model, x_t: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None = None,
                guidance: float = 0.0, clip_denoised: bool = False, guidance_channels: int | None = None,
                abar: float | None = None, guidance_method: str = "cfg",
                guidance_options: Mapping[str, Any] | None = None,
                guidance_state: dict[str, Any] | None = None, guide: Model | None = None,
                split: bool = False) -> Prediction:
        """eps and x0 at (x_t, t), guided by ``guidance_method`` (default classifier-free guidance,
        Ho & Salimans 2022 eq. 6): one network call on 2B, or (``split``) two calls on B.

        ``t`` is an int64 tensor [B], or one int for the whole batch (the sampling fast path), or
        one float: a level between trained timesteps (noise-level schedules), whose ``abar`` is
        then given and sets the coefficients (the network sees the float time).

        Guidance (:mod:`bench.diffusion.guidance`): both branches become (eps, x0) and the method
        combines them; ``w = 0`` (or a call outside the method's active range, e.g. cfg-interval's
        interval) is one conditional B call. ``guidance_state`` carries a method's memory across the
        calls of one chain (APG's momentum). ``guide``: the guiding model of a ``guide=True`` method
        (autoguidance), called on the same (x_t, t, y) as a second B call.

        A sampler's chain builds the :class:`Conditioning` once and each :class:`Level` once
        (:meth:`conditioning`, :meth:`level`) and calls :meth:`predict_at`; this is that, for one call.
        """
        c = self.conditioning(model, y, guidance, guidance_method, guidance_options, guide=guide,
                              clip_denoised=clip_denoised, guidance_channels=guidance_channels,
                              state=guidance_state, split=split)
        return self.predict_at(model, x_t, self.level(t, x_t, c, abar), c)

    def conditioning(self, model: Model, y: torch.Tensor | None, guidance: float = 0.0, method: str = "cfg",
                     options: Mapping[str, Any] | None = None, *, guide: Model | None = None,
                     clip_denoised: bool = False, guidance_channels: int | None = None,
                     state: dict[str, Any] | None = None, split: bool = False) -> Conditioning:
        """What every call of one chain shares: labels (and their 2B copy), the checked guidance method."""
        opts = check_guidance(method, options)
        meta = GUIDANCE.meta(method)
        fn = GUIDANCE.get(method) if guidance != 0.0 else None
        by_model = bool(meta.get("guide"))
        if fn is not None and by_model and guide is None:
            raise BenchError(f"guidance method {method!r} needs its guiding model: pass guide=... "
                             "(in a study, sample.guide names it)")
        if fn is not None and not by_model and y is None:
            raise BenchError(f"guidance={guidance} needs class labels y; pass y=... (one per image)")
        y2 = torch.cat([y, torch.full_like(y, null_label(model))]) if fn is not None and not by_model else None
        return Conditioning(y=y, y2=y2, method=fn, options=opts, own_eps=bool(meta.get("own_eps")),
                            guide=guide if by_model else None, split=split, clip_denoised=clip_denoised,
                            guidance_channels=guidance_channels, state={} if state is None else state,
                            guidance=float(guidance), active=meta["active"])

    def level(self, t: torch.Tensor | int | float, x_t: torch.Tensor, c: Conditioning, abar: float | None = None
              ) -> Level:
        """The :class:`Level` of a call at ``t`` (see :meth:`predict`) for a batch like ``x_t``."""
        b, dev = x_t.shape[0], x_t.device
        if isinstance(t, torch.Tensor):
            if self.continuous:
                raise BenchError(f"process {self.process_name!r}: per-image times go through eps_x0(model, x_t, t); "
                                 "predict takes one level per call")
            a, s = self.coefs(t, x_t)
            if c.method is not None and (c.active is not always_active or c.options["schedule"] != "constant"):
                raise BenchError(f"guidance method with {c.options} needs one noise level per call "
                                 "(an int or float t), not a tensor of timesteps")
            guided = c.method is not None
            return Level(t, torch.cat([t, t]) if guided else None, a, s, float("nan"), guided, c.guidance,
                         k=self.rates(t.cpu().double(), x_t) if self._needs_rates else None)
        if self.continuous:
            return self._process_level(float(t), b, dev, c, abar)
        if abar is None:
            if not float(t).is_integer():
                raise BenchError(f"t = {t} falls between trained timesteps: pass its abar=...")
            abar = float(self.alphas_cumprod[int(t)])
        a, s = abar**0.5, (1.0 - abar) ** 0.5
        guided = c.method is not None and c.active(s / a, c.options)
        t2 = torch.full((2 * b if guided else b,), t, dtype=torch.long if isinstance(t, int) else torch.float32,
                        device=dev)
        w = guidance_weight(c.guidance, c.options["schedule"], float(t), self.timesteps) if guided else 0.0
        k = None
        if self._needs_rates:  # vp with a rate objective: the VP state is the process state
            p, tt = self.process, torch.tensor(float(t), dtype=torch.float64)
            k = Rates(a, s, float(p.d_alpha(tt)), float(p.d_sigma(tt)))
        return Level(t2[:b], t2 if guided else None, a, s, s / a, guided, w, k=k)

    def predict_at(self, model: Model, x_t: torch.Tensor, lv: Level, c: Conditioning) -> Prediction:
        """(eps, x0) of ``model`` at level ``lv`` under conditioning ``c``: the sampling hot path,
        which allocates only what the call's math produces."""
        a, s = lv.a, lv.s
        x_in = x_t if lv.scale == 1.0 else x_t * lv.scale
        if lv.guided:
            if c.guide is not None:
                cond, var_out = self._call(model, x_in, lv.t, c.y)
                uncond, _ = self._call(c.guide, x_in, lv.t, c.y)
            elif c.split:
                b = x_t.shape[0]
                cond, var_out = self._call(model, x_in, lv.t, c.y)
                uncond, _ = self._call(model, x_in, lv.t, c.y2[b:])
            else:
                b = x_t.shape[0]
                pred2, var2 = self._call(model, torch.cat([x_in, x_in]), lv.t2, c.y2)
                cond, uncond, var_out = pred2[:b], pred2[b:], None if var2 is None else var2[:b]
            if c.guidance_channels is not None:  # a checkpoint's own convention (DiT: 3 of 4 latent channels)
                uncond = torch.cat([uncond[:, :c.guidance_channels], cond[:, c.guidance_channels:]], dim=1)
            eps_c, x0_c = self._to_eps_x0(cond, x_t, lv)
            eps_u, x0_u = self._to_eps_x0(uncond, x_t, lv)
            eps, x0 = c.method(Guided(eps_c, x0_c, eps_u, x0_u, x_t, a, s, lv.sigma), lv.w, c.state, **c.options)
            own_eps = c.own_eps  # cfg++ renoises along eps_u: clipping x0 keeps it
        else:
            pred, var_out = self._call(model, x_in, lv.t, c.y)
            eps, x0 = self._to_eps_x0(pred, x_t, lv)
            own_eps = False
        if c.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            if not own_eps:
                eps = (x_t - a * x0) / s
        return Prediction(eps, x0, var_out)

    def p_mean_logvar(self, chain: Chain, i: torch.Tensor | int, x_t: torch.Tensor, pred: Prediction
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of p(x_{prev} | x_t) at chain index i (Ho et al. eq. 7 with x0-hat)."""
        mean = gather(chain.coef_x0, i, x_t) * pred.x0 + gather(chain.coef_xt, i, x_t) * x_t
        return mean, self.variance(chain, i, x_t, pred.var_out)

    # --- training ------------------------------------------------------------------------------
    def training_loss(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None = None,
                      p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean loss over the batch at uniformly drawn t (label dropout p_uncond for guidance)."""
        if self.continuous or self._needs_rates:
            return self._process_loss(model, x0, y, p_uncond, generator)
        t, noise, y = self._training_draws(model, x0, y, p_uncond, generator)
        x_t = self.q_sample(x0, t, noise)
        pred, var_out = self._call(model, x_t, t, y)
        loss = self.loss_fn(self, x0, x_t, t, noise, pred, var_out)
        return (loss if self.weighting is None else loss * self.weighting(t)).mean()

    # --- sampling ---------------------------------------------------------------------------------
    def sample(self, model: Model, shape: Sequence[int], request: SampleRequest | str | None = None, *,
               y: torch.Tensor | None = None, generator: torch.Generator | None = None,
               x_T: torch.Tensor | None = None, seeds: Sequence[int] | None = None,
               device: torch.device | str | None = None, progress: bool = False,
               info: dict[str, Any] | None = None, guide: Model | None = None, **settings: Any) -> torch.Tensor:
        """Draw images with a registered sampler. See DESIGN.md, 'Public contract of bench.diffusion'.

        The settings are one :class:`~bench.diffusion.request.SampleRequest` (a study's sample
        section, built once: ``SampleRequest.of(cfg.sample)``), or its fields as keywords
        (``d.sample(model, shape, sampler="heun", steps=18, spacing="karras")``), or both (the
        keywords replace the request's). They are: ``sampler``, ``steps``, ``eta`` (DDIM's shortcut
        for its option of that name), ``spacing`` (a timestep spacing or a noise-level schedule,
        ``karras`` with ``rho``; :mod:`bench.diffusion.spacing`), ``options`` (the sampler's declared
        knobs: ``{"eta": 0.5}`` for ddim, ``{"s_churn": 1.0}`` for heun), ``guidance`` (w),
        ``guidance_method`` / ``guidance_options`` (a method of :data:`bench.diffusion.GUIDANCE`,
        e.g. ``guidance_method="cfg-interval", guidance_options={"sigma_lo": 0.28, "sigma_hi": 5.42}``),
        ``guidance_channels`` (guide only the first N channels, as diffusers' DiT pipeline guides 3 of
        4 latent channels; None guides all), ``guidance_batch`` (a guided call's two branches as one 2B
        call or two B calls: ``auto``, ``measure``, ``joint``, ``split``; :mod:`bench.diffusion.batching`)
        and ``clip_denoised``. :func:`~bench.diffusion.request.check_request` checks them (the same
        function validates a study before any work).

        Per call: ``y`` labels, ``generator`` or per-image ``seeds``, ``x_T``, ``device``, ``guide``
        (autoguidance's guiding model; its calls are in ``nfe`` and in ``guide_calls``). ``info``,
        when given, receives ``nfe`` (the Denoiser's counted network calls per image),
        ``guided_calls`` (how many ran cond + uncond), ``visited_steps`` (the distinct levels of the
        chain: fewer than ``steps`` where a spacing deduplicates) and ``guidance_batch`` (which ran;
        the NFE is the same either way).
        """
        if isinstance(request, str):  # d.sample(model, shape, "ddim", ...): the sampler's name
            settings = {"sampler": request, **settings}
            request = None
        req = SampleRequest.from_settings(settings, request)
        kwargs = check_request(req)
        fn = SAMPLERS.get(req.sampler)
        shape = tuple(int(v) for v in shape)
        device = torch.device(device) if device is not None else (
            x_T.device if x_T is not None else _model_device(model))
        guided_by_model = bool(GUIDANCE.meta(req.guidance_method).get("guide"))
        y = self._check_labels(model, y, shape[0], 0.0 if guided_by_model else req.guidance, device)
        cond = self.conditioning(model, y, float(req.guidance), req.guidance_method, req.guidance_options,
                                 guide=guide, clip_denoised=req.clip_denoised,
                                 guidance_channels=req.guidance_channels)
        if self.continuous:
            t, abar = process_levels(self.process, req.spacing, req.steps, req.rho, self.u_top)
        else:
            t, abar = make_levels(req.spacing, self.alphas_cumprod, req.steps, req.rho)
        if not self.continuous and t.is_floating_point() and getattr(model, "discrete_time", False):
            t = torch.from_numpy(sigma_to_t(((1 - abar) / abar).sqrt().numpy(), self.alphas_cumprod, quantize=True))
        chain = Chain.from_levels(t, abar)
        noise = NoiseSource(shape, device, generator=generator, seeds=seeds)
        x = noise() if x_T is None else x_T.to(device=device, dtype=x_T.dtype if x_T.dtype == torch.float64 else torch.float32)
        if tuple(x.shape) != shape:
            raise BenchError(f"x_T has shape {tuple(x.shape)} but shape={shape}")
        den = Denoiser(self, model, chain, cond, shape[0], device)
        with torch.no_grad():
            den.cond = self._choose_batching(den, x, req.guidance_batch)
            out = fn(den, x, noise, progress=progress, **kwargs)
        if info is not None:
            info.update(nfe=den.calls + den.guide_calls, guided_calls=den.guided_calls, visited_steps=len(chain))
            if den.guided_calls and cond.guide is None:
                info["guidance_batch"] = "split" if den.cond.split else "joint"
            if cond.guide is not None:
                info["guide_calls"] = den.guide_calls
        return out

    def _choose_batching(self, den: Denoiser, x: torch.Tensor, mode: str) -> Conditioning:
        """The chain's conditioning with its guided calls as one 2B call or two B calls
        (:func:`bench.diffusion.batching.split_guided`); a measurement runs on the chain's first
        guided level with a fresh method state and is not counted in the chain's NFE."""
        cond = den.cond
        level = next((lv for lv in den.levels if lv.guided), None)
        if level is None or cond.guide is not None:
            return cond
        probe = replace(cond, state={})
        split = split_guided(mode, den.model, x.device, tuple(x.shape), x.dtype,
                             joint=lambda: self.predict_at(den.model, x, level, replace(probe, split=False)),
                             split=lambda: self.predict_at(den.model, x, level, replace(probe, split=True)))
        return replace(cond, split=split)

    def _check_labels(self, model: Model, y: torch.Tensor | None, batch: int, guidance: float,
                      device: torch.device) -> torch.Tensor | None:
        if guidance != 0.0:
            if not is_conditional(model):
                raise BenchError(f"guidance={guidance} needs a class-conditional model (an int attribute "
                                 "`num_classes`, whose index is the null label); this model has none")
            if y is None:
                raise BenchError(f"guidance={guidance} needs class labels y; pass y=... (one per image)")
        if y is None:
            return None
        y = torch.as_tensor(y, dtype=torch.long, device=device)
        if y.shape != (batch,):
            raise BenchError(f"y has shape {tuple(y.shape)}; expected ({batch},): one label per image")
        return y


def _model_device(model: Model) -> torch.device:
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")
