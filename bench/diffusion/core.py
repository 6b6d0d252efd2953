"""The Diffusion object: forward process, model predictions, losses, sampling and likelihood.

Samplers never branch on the objective or schedule: they ask :meth:`Diffusion.predict` for
(eps, x0) at a chain index, and the chain for its coefficients (STYLE.md, point 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.diffusion.chain import VARIANCES, Chain, gather
from bench.diffusion.guidance import GUIDANCE, Guided, always_active, check_guidance, guidance_weight
from bench.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from bench.diffusion.losses import LOSSES
from bench.diffusion.noise import NoiseSource
from bench.diffusion.objectives import OBJECTIVES
from bench.diffusion.prediction import Model, Prediction, is_conditional, null_label
from bench.diffusion.samplers import SAMPLERS, Denoiser, check_options
from bench.diffusion.schedules import NoiseSchedule, make_schedule
from bench.diffusion.spacing import make_levels, sigma_to_t


class Diffusion:
    """``Diffusion(schedule="cosine", timesteps=1000, objective="eps", variance="fixed_small", loss="simple")``."""

    def __init__(self, schedule: str | Sequence[float] | torch.Tensor | NoiseSchedule = "linear",
                 timesteps: int | None = 1000, objective: str = "eps", variance: str = "fixed_small",
                 loss: str = "simple", hybrid_weight: float = 0.001) -> None:
        self.schedule = schedule if isinstance(schedule, NoiseSchedule) else make_schedule(
            schedule, None if not isinstance(schedule, str) else timesteps)
        self.timesteps = self.schedule.timesteps
        self.objective_name = OBJECTIVES.check(objective, "diffusion.objective")
        self.objective = OBJECTIVES.get(objective)
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

    def __repr__(self) -> str:
        return (f"Diffusion(schedule={self.schedule.name!r}, timesteps={self.timesteps}, "
                f"objective={self.objective_name!r}, variance={self.variance_name!r}, loss={self.loss_name!r})")

    # --- forward process --------------------------------------------------------------------
    def coefs(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) broadcastable against ``like`` (t: [B] or one int)."""
        abar = gather(self.alphas_cumprod, t if isinstance(t, int) else t.cpu(), like)
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
                guidance_state: dict[str, Any] | None = None, guide: Model | None = None) -> Prediction:
        """eps and x0 at (x_t, t), guided by ``guidance_method`` (default classifier-free guidance,
        Ho & Salimans 2022 eq. 6) in ONE network call on 2B.

        ``t`` is an int64 tensor [B], or one int for the whole batch (the sampling fast path), or
        one float: a level between trained timesteps (noise-level schedules), whose ``abar`` is
        then given and sets the coefficients (the network sees the float time).

        Guidance (:mod:`bench.diffusion.guidance`): both branches become (eps, x0) and the method
        combines them; ``w = 0`` (or a call outside the method's active range, e.g. cfg-interval's
        interval) is one conditional B call. ``guidance_state`` carries a method's memory across the
        calls of one chain (APG's momentum). ``guide``: the guiding model of a ``guide=True`` method
        (autoguidance), called on the same (x_t, t, y) as a second B call.
        """
        if abar is not None:
            a, s = torch.tensor(abar**0.5, dtype=x_t.dtype), torch.tensor((1.0 - abar) ** 0.5, dtype=x_t.dtype)
        else:
            a, s = self.coefs(t, x_t)
        scalar_t = float(t) if isinstance(t, (int, float)) else None
        if isinstance(t, (int, float)):
            t = torch.full((x_t.shape[0],), t, dtype=torch.long if isinstance(t, int) else torch.float32,
                           device=x_t.device)
        method = None
        if guidance != 0.0:
            opts = check_guidance(guidance_method, guidance_options)
            meta = GUIDANCE.meta(guidance_method)
            sigma = float(s.flatten()[0] / a.flatten()[0]) if a.numel() == 1 else None
            if sigma is None and (meta["active"] is not always_active or opts["schedule"] != "constant"):
                raise BenchError(f"guidance method {guidance_method!r} with {opts} needs one noise level per call "
                                 "(an int or float t), not a tensor of timesteps")
            method = GUIDANCE.get(guidance_method) if sigma is None or meta["active"](sigma, opts) else None
        if method is not None and meta.get("guide"):
            if guide is None:
                raise BenchError(f"guidance method {guidance_method!r} needs its guiding model: pass guide=... "
                                 "(in a study, sample.guide names it)")
            cond, var2 = self._call(model, x_t, t, y)
            uncond, _ = self._call(guide, x_t, t, y)
        elif method is not None:
            b = x_t.shape[0]
            null = torch.full_like(y, null_label(model))
            pred2, var2 = self._call(model, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
            cond, uncond, var2 = pred2[:b], pred2[b:], None if var2 is None else var2[:b]
        if method is not None:
            if guidance_channels is not None:  # a checkpoint's own convention (DiT: 3 of 4 latent channels)
                uncond = torch.cat([uncond[:, :guidance_channels], cond[:, guidance_channels:]], dim=1)
            eps_c, x0_c = self.objective.to_eps_x0(cond, x_t, a, s)
            eps_u, x0_u = self.objective.to_eps_x0(uncond, x_t, a, s)
            w = guidance if scalar_t is None else guidance_weight(guidance, opts["schedule"], scalar_t, self.timesteps)
            g = Guided(eps_c, x0_c, eps_u, x0_u, x_t, a, s, sigma if sigma is not None else float("nan"))
            eps, x0 = method(g, w, guidance_state if guidance_state is not None else {}, **opts)
            var_out = var2
            own_eps = bool(meta.get("own_eps"))  # cfg++ renoises along eps_u: clipping x0 keeps it
        else:
            pred, var_out = self._call(model, x_t, t, y)
            eps, x0 = self.objective.to_eps_x0(pred, x_t, a, s)
            own_eps = False
        if clip_denoised:
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
        b = x0.shape[0]
        dev = x0.device
        gen_dev = generator.device if generator is not None else dev
        t = torch.randint(0, self.timesteps, (b,), generator=generator, device=gen_dev).to(dev)
        noise = torch.randn(x0.shape, generator=generator, device=gen_dev, dtype=x0.dtype).to(dev)
        if y is not None and p_uncond > 0.0:
            if not is_conditional(model):
                raise BenchError("p_uncond > 0 needs a class-conditional model (an int `num_classes`)")
            drop = torch.rand(b, generator=generator, device=gen_dev).to(dev) < p_uncond
            y = torch.where(drop, torch.full_like(y, null_label(model)), y)
        x_t = self.q_sample(x0, t, noise)
        pred, var_out = self._call(model, x_t, t, y)
        return self.loss_fn(self, x0, x_t, t, noise, pred, var_out).mean()

    def vb_term(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor,
                var_out: torch.Tensor | None) -> torch.Tensor:
        """L_t in bits per dim, per image: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0,
        the discretized-Gaussian decoder NLL -log p(x0 | x1) for t = 0 (Ho et al. eq. 5)."""
        chain = self.full_chain
        a, s = self.coefs(t, x_t)
        _, x0_hat = self.objective.to_eps_x0(pred, x_t, a, s)
        model_mean, model_logvar = self.p_mean_logvar(chain, t.cpu(), x_t, Prediction(pred, x0_hat, var_out))
        true_mean = gather(chain.coef_x0, t.cpu(), x_t) * x0 + gather(chain.coef_xt, t.cpu(), x_t) * x_t
        true_logvar = gather(chain.posterior_log_variance, t.cpu(), x_t)
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    # --- likelihood ----------------------------------------------------------------------------
    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x0) || N(0, I)) in bits per dim, per image."""
        t = torch.full((x0.shape[0],), self.timesteps - 1, dtype=torch.long)
        a, s = self.coefs(t, x0)
        kl = normal_kl(a * x0, torch.log(s**2).expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
        return kl.flatten(1).mean(1) / math.log(2.0)

    @torch.no_grad()
    def vlb_terms(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
        """Every term of the variational bound in bits per dim: ``prior`` [B], ``terms`` [B, T]."""
        from tqdm.auto import tqdm

        b, dev = x0.shape[0], x0.device
        terms = torch.zeros(b, self.timesteps, dtype=torch.float64)
        for t_i in tqdm(range(self.timesteps - 1, -1, -1), desc="nll", disable=not progress, leave=False):
            t = torch.full((b,), t_i, dtype=torch.long, device=dev)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                                device=generator.device if generator is not None else dev).to(dev)
            x_t = self.q_sample(x0, t, noise)
            pred, var_out = self._call(model, x_t, t, y)
            terms[:, t_i] = self.vb_term(x0, x_t, t, pred, var_out).double().cpu()
        return {"prior": self.prior_bpd(x0).double().cpu(), "terms": terms}

    def bits_per_dim(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, progress: bool = False,
                     timesteps: int | None = None) -> torch.Tensor:
        """Negative variational bound in bits per dim, per image [B] (Ho et al. 2020, Sec. 4.2).

        ``timesteps`` = K < T: an unbiased estimate from K network calls per image instead of T
        (:meth:`stratified_bpd`); None or T: the full bound.
        """
        if timesteps is not None and timesteps < self.timesteps:
            return self.stratified_bpd(model, x0, timesteps, y, generator)
        vb = self.vlb_terms(model, x0, y, generator, progress)
        return vb["prior"] + vb["terms"].sum(1)

    def stratified_bpd(self, model: Model, x0: torch.Tensor, k: int, y: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The bound's sum over t estimated from ``k`` terms per image, unbiased: the decoder term
        L_0 exactly (the largest and least smooth), and for each of k - 1 strata of 1 .. T-1 one t
        drawn uniformly per image, its term weighted by the stratum's size (E[n_s L_t] = the sum of
        the stratum's terms). The strata are geometric in t (1, 2, 3, ..., 99, 140, 200 for T = 200,
        k = 16): the terms change fastest near t = 0, and there equal strata would carry most of the
        variance (measured: 10x the standard error on digits at T = 200, k = 16). Per image [B], float64."""
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= self.timesteps:
            raise BenchError(f"eval.nll_timesteps = {k!r}: the estimate needs 2 <= K <= T = {self.timesteps} "
                             "timesteps (t = 0 and at least one stratum)")
        b, dev = x0.shape[0], x0.device
        gen_dev = generator.device if generator is not None else dev
        edges = [1]
        for j in range(1, k):  # geometric, at least one timestep each, ending at T
            edges.append(min(max(edges[-1] + 1, round(self.timesteps ** (j / (k - 1)))), self.timesteps - (k - 1 - j)))
        total = self.prior_bpd(x0).double().cpu()
        for lo, hi in [(0, 1), *zip(edges[:-1], edges[1:])]:
            t = (lo + torch.randint(0, hi - lo, (b,), generator=generator, device=gen_dev)).to(dev)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_dev).to(dev)
            x_t = self.q_sample(x0, t, noise)
            pred, var_out = self._call(model, x_t, t, y)
            total += (hi - lo) * self.vb_term(x0, x_t, t, pred, var_out).double().cpu()
        return total

    # --- sampling ---------------------------------------------------------------------------------
    def sample(self, model: Model, shape: Sequence[int], sampler: str = "ddim", steps: int = 50,
               eta: float = 0.0, spacing: str = "leading", guidance: float = 0.0,
               y: torch.Tensor | None = None, generator: torch.Generator | None = None,
               x_T: torch.Tensor | None = None, seeds: Sequence[int] | None = None,
               clip_denoised: bool = False, device: torch.device | str | None = None,
               progress: bool = False, options: Mapping[str, Any] | None = None,
               info: dict[str, Any] | None = None, guidance_channels: int | None = None,
               rho: float = 7.0, guidance_method: str = "cfg",
               guidance_options: Mapping[str, Any] | None = None, guide: Model | None = None) -> torch.Tensor:
        """Draw images with a registered sampler. See DESIGN.md, 'Public contract of bench.diffusion'.

        ``options`` are the sampler's declared knobs (``{"eta": 0.5}`` for ddim, ``{"s_churn": 1.0}``
        for heun); ``eta`` is DDIM's shortcut for its option of that name. ``spacing`` is a timestep
        spacing or a noise-level schedule (``karras`` with ``rho``), see :mod:`bench.diffusion.spacing`. ``info``,
        when given, receives ``nfe`` (the Denoiser's counted network calls per image).
        ``guidance_channels``: guide only the first N channels (diffusers' DiT pipeline guides 3 of the
        4 latent channels; None, the CFG paper's formula, guides all). ``info``: ``nfe``,
        ``guided_calls`` (how many of them ran cond + uncond as one 2B batch) and ``visited_steps``
        (the distinct timesteps of the chain: fewer than ``steps`` where a spacing deduplicates).
        ``guidance_method`` / ``guidance_options``: a method of :data:`bench.diffusion.GUIDANCE` and its
        options (``guidance_method="cfg-interval", guidance_options={"sigma_lo": 0.28, "sigma_hi": 5.42}``);
        ``guide``: autoguidance's guiding model (its calls are in ``nfe``, and in ``guide_calls``).
        """
        fn = SAMPLERS.get(SAMPLERS.check(sampler, "sample.sampler"))
        if not 0.0 <= float(eta) <= 1.0:
            raise BenchError(f"sample.eta={eta} is outside [0, 1]: 0 is deterministic DDIM, 1 is DDPM-like")
        given = dict(options or {})
        if SAMPLERS.meta(sampler).get("eta_shortcut"):
            given.setdefault("eta", float(eta))
        kwargs = check_options(sampler, given)
        shape = tuple(int(v) for v in shape)
        device = torch.device(device) if device is not None else (
            x_T.device if x_T is not None else _model_device(model))
        guide_opts = check_guidance(guidance_method, guidance_options)
        guided_by_model = bool(GUIDANCE.meta(guidance_method).get("guide"))
        if guided_by_model and guidance != 0.0 and guide is None:
            raise BenchError(f"guidance method {guidance_method!r} needs its guiding model: pass guide=...")
        y = self._check_labels(model, y, shape[0], 0.0 if guided_by_model else guidance, device)
        t, abar = make_levels(spacing, self.alphas_cumprod, steps, rho)
        if t.is_floating_point() and getattr(model, "discrete_time", False):
            t = torch.from_numpy(sigma_to_t(((1 - abar) / abar).sqrt().numpy(), self.alphas_cumprod, quantize=True))
        chain = Chain.from_levels(t, abar)
        noise = NoiseSource(shape, device, generator=generator, seeds=seeds)
        x = noise() if x_T is None else x_T.to(device=device, dtype=x_T.dtype if x_T.dtype == torch.float64 else torch.float32)
        if tuple(x.shape) != shape:
            raise BenchError(f"x_T has shape {tuple(x.shape)} but shape={shape}")
        den = Denoiser(self, model, chain, y, float(guidance), clip_denoised, guidance_channels,
                       guidance_method=guidance_method, guidance_options=guide_opts,
                       guidance_active=GUIDANCE.meta(guidance_method)["active"],
                       guide=guide if guided_by_model else None)
        with torch.no_grad():
            out = fn(den, x, noise, progress=progress, **kwargs)
        if info is not None:
            info.update(nfe=den.calls + den.guide_calls, guided_calls=den.guided_calls, visited_steps=len(chain))
            if den.guide is not None:
                info["guide_calls"] = den.guide_calls
        return out

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
