"""The discretization: which noise levels a sampler visits, as its own axis (``sample.spacing``).

Two kinds, one registry. A *timestep spacing* (``kind="timesteps"``) maps (T, steps) -> the
trained timesteps it visits, in integers (never a float range that can gain or lose an element),
and declares where its last (noisiest) timestep lies, ``last(T, S)``; :func:`make_timesteps`
returns them increasing and distinct, or raises one BenchError before any sampling. A *noise-level
schedule* (``kind="sigmas"``: karras, exponential, uniform-logsnr) places ``steps`` levels
sigma_max = s_{N-1} > ... > s_0 = sigma_min over the model's trained range, sigma =
sqrt((1 - abar) / abar) (Karras et al. 2022, the convention x = x0 + sigma eps). Every sampler runs
on either: :func:`make_levels` returns the network's time input and abar for each level.

A discrete-time model sees a level between two trained timesteps at the *interpolated* timestep,
linear in log sigma between its neighbours (k-diffusion's ``DiscreteSchedule.sigma_to_t`` with
``quantize=False``, diffusers' ``_sigma_to_t``), a float; a model with ``discrete_time = True``
(an embedding table over integer t) gets the nearest trained timestep instead (k-diffusion's
``quantize=True``), while the sampler's coefficients keep the level's own sigma.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry

SpacingFn = Callable[[int, int], np.ndarray]
SPACINGS: Registry[SpacingFn] = Registry("spacing")


def _round_half_even(num: np.ndarray, den: int) -> np.ndarray:
    """round(num / den) for non-negative integers, ties to even (numpy's rule, without floats)."""
    q, r = np.divmod(num, den)
    return q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1)))


def leading_refusal(T: int, steps: int) -> str | None:
    """Why ``leading`` cannot serve (T, S), or None: with S > T/2 and T not a multiple of S its
    stride T // S is 1, so the chain would start at t = S - 1 instead of near T - 1."""
    if steps > T // 2 and T % steps:
        return (f"spacing 'leading' with steps={steps} > T/2 = {T / 2:g} (T={T} not a multiple of {steps}) "
                f"would start from t={steps - 1} instead of near t={T - 1}")
    return None


@SPACINGS.register("leading", kind="timesteps", last=lambda T, S: (S - 1) * (T // S), refuses=leading_refusal,
                   paper="DDIM (Song et al. 2021) 'uniform'; diffusers 'leading': 0, k, 2k, ..., k = T // S")
def leading(T: int, steps: int) -> np.ndarray:
    return np.arange(steps, dtype=np.int64) * (T // steps)


@SPACINGS.register("linspace", kind="timesteps", last=lambda T, S: T - 1 if S > 1 else 0,
                   paper="diffusers 'linspace': evenly from 0 to T - 1 inclusive, rounded")
def linspace(T: int, steps: int) -> np.ndarray:
    if steps == 1:
        return np.zeros(1, dtype=np.int64)
    return _round_half_even(np.arange(steps, dtype=np.int64) * (T - 1), steps - 1)


@SPACINGS.register("trailing", kind="timesteps", last=lambda T, S: T - 1,
                   paper="Lin et al. 2024, 'Common diffusion noise schedules...', Tab. 2; diffusers 'trailing'")
def trailing(T: int, steps: int) -> np.ndarray:
    """round(T - i T / S) - 1 for i = S-1, ..., 0: always S values, the last T - 1 (diffusers'
    ``np.round(np.arange(T, 0, -T / S)) - 1``, computed in integers so it never gains one)."""
    i = np.arange(steps - 1, -1, -1, dtype=np.int64)
    return _round_half_even(T * (steps - i), steps) - 1


@SPACINGS.register("quadratic", kind="timesteps", last=lambda T, S: (4 * T) // 5 if S > 1 else 0, dedup=True,
                   paper="DDIM (Song et al. 2021), App. D.2, CIFAR-10 ('quad' in the authors' code)")
def quadratic(T: int, steps: int) -> np.ndarray:
    """floor((i sqrt(0.8 T) / (S - 1))^2) for i = 0..S-1, exactly (4 T i^2 // (5 (S-1)^2)).

    From S of about sqrt(0.8 T) on, the first values repeat. The authors' code then calls the
    network again at the same timestep, a step that changes nothing; here each timestep is
    visited once, so a run may visit fewer than S timesteps (``visited_steps``, counted ``nfe``).
    """
    if steps == 1:
        return np.zeros(1, dtype=np.int64)
    i = np.arange(steps, dtype=np.int64)
    return np.unique((4 * T * i * i) // (5 * (steps - 1) ** 2))


# --- noise-level schedules: fn(sigma_min, sigma_max, steps, rho) -> [steps] decreasing ------------------
def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0.0 < sigma_min < sigma_max:
        raise BenchError(f"a noise-level schedule needs 0 < sigma_min < sigma_max; got [{sigma_min}, {sigma_max}]")


@SPACINGS.register("karras", kind="sigmas", paper="Karras et al. 2022 (EDM), eq. 5: rho = 7 by default")
def karras(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """s_i = (smax^(1/rho) + i / (N - 1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1."""
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        return np.array([sigma_max])
    ramp = np.arange(steps, dtype=np.float64) / (steps - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    out = (hi + ramp * (lo - hi)) ** rho
    out[0], out[-1] = sigma_max, sigma_min  # exact endpoints (no round-off through the power)
    return out


@SPACINGS.register("exponential", kind="sigmas", paper="k-diffusion get_sigmas_exponential: geometric in sigma")
def exponential(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        return np.array([sigma_max])
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), steps))


@SPACINGS.register("uniform-logsnr", kind="sigmas",
                   paper="Lu et al. 2022 (DPM-Solver), skip type 'logSNR': uniform in lambda = log(alpha / sigma)")
def uniform_logsnr(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Uniform in the half log-SNR lambda = log(alpha_t / sigma_t) = -log sigma. In the sigma of this
    module that is geometric spacing, so its levels are k-diffusion's ``exponential`` ones: the two
    papers' names for one discretization (tested as such)."""
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        return np.array([sigma_max])
    lam = np.linspace(-np.log(sigma_max), -np.log(sigma_min), steps)
    return np.exp(-lam)


def trained_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1, increasing."""
    abar = alphas_cumprod.double().numpy()
    return np.sqrt((1.0 - abar) / abar)


def sigma_to_t(sigma: np.ndarray, alphas_cumprod: torch.Tensor, quantize: bool = False) -> np.ndarray:
    """The time input for noise level ``sigma``: linear in log sigma between trained neighbours, or
    (``quantize``) the trained timestep nearest in log sigma. Clamped to [0, T - 1]."""
    log_s = np.log(trained_sigmas(alphas_cumprod))
    log_q = np.log(np.asarray(sigma, dtype=np.float64))
    if quantize:
        return np.abs(log_q[..., None] - log_s).argmin(-1).astype(np.int64)
    return np.interp(log_q, log_s, np.arange(len(log_s), dtype=np.float64))


def make_levels(spacing: str, alphas_cumprod: torch.Tensor, steps: int, rho: float = 7.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, abar) of the levels a sampler visits, increasing in t: int64 timesteps for a timestep
    spacing, float64 interpolated timesteps for a noise-level schedule over [sigma_0, sigma_{T-1}]."""
    T = len(alphas_cumprod)
    if SPACINGS.meta(SPACINGS.check(spacing, "sample.spacing"))["kind"] == "timesteps":
        t = make_timesteps(spacing, T, steps)
        return t, alphas_cumprod[t].double()
    _check_steps(steps, T)
    check_rho(rho)
    sig = trained_sigmas(alphas_cumprod)
    levels = np.asarray(SPACINGS.get(spacing)(float(sig[0]), float(sig[-1]), int(steps), float(rho)))[::-1].copy()
    if len(levels) != steps or (np.diff(levels) <= 0).any():
        raise BenchError(f"spacing {spacing!r} gave {len(levels)} levels for steps={steps}, not {steps} "
                         "distinct increasing ones")
    t = torch.from_numpy(sigma_to_t(levels, alphas_cumprod))
    t[0], t[-1] = (0.0, float(T - 1)) if steps > 1 else (float(T - 1), float(T - 1))
    return t, torch.from_numpy(1.0 / (1.0 + levels**2))


def process_levels(process, spacing: str, steps: int, rho: float = 7.0, u_top: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, abar) of a continuous process's levels, increasing in t (float64 process times).

    A timestep spacing maps to the process's unit time u (``process.from_unit``, the shift
    included): ``leading``, ``linspace`` and ``trailing`` to levels uniform in u, ``quadratic`` to
    levels quadratic in u (denser near the data), the top level at u = ``u_top`` (1: pure noise).
    Where sigma(t_min) = 0 (rectified flow, gvp) the level u = 0 is the data itself, the end of every
    chain, so the N levels are u_top k / N, k = 1..N (diffusers' flow schedulers' levels); else (edm)
    they include u = 0 (sigma_min), as Karras et al.'s schedule does. A noise-level schedule (karras,
    ...) places its levels in VE sigma = sigma / alpha over ``process.ve_range()``."""
    meta = SPACINGS.meta(SPACINGS.check(spacing, "sample.spacing"))
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise BenchError(f"sample.steps={steps!r} must be a positive int")
    n = int(steps)
    if meta["kind"] == "timesteps":
        clean_end = float(process.sigma(process.from_unit(0.0))) == 0.0
        k = np.arange(1, n + 1, dtype=np.float64) / n if clean_end else (
            np.arange(n, dtype=np.float64) / (n - 1) if n > 1 else np.ones(1))
        u = k * k if spacing == "quadratic" else k
        t = process.from_unit(torch.from_numpy(u * u_top)).double()
        return t, process.abar(t).double()
    check_rho(rho)
    lo, hi = process.ve_range()
    if u_top < 1.0:
        hi = min(hi, float(process.ve(process.from_unit(u_top))))
    levels = np.asarray(SPACINGS.get(spacing)(lo, hi, n, float(rho)))[::-1].copy()
    if len(levels) != n or (n > 1 and (np.diff(levels) <= 0).any()):
        raise BenchError(f"spacing {spacing!r} gave {len(levels)} levels for steps={steps}, not {steps} "
                         "distinct increasing ones")
    t = process.t_of_ve(torch.from_numpy(levels)).double()
    return t, torch.from_numpy(1.0 / (1.0 + levels**2))


def check_rho(rho: float, where: str = "sample.rho") -> None:
    """The karras schedule's rho (EDM eq. 5) is a finite number > 0; study validation calls this too."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < float("inf"):
        raise BenchError(f"{where} = {rho!r} must be a finite number > 0 (Karras et al. use 7). Fix the value")


def level_count(spacing: str, T: int, steps: int) -> int:
    """How many levels ``steps`` gives on ``spacing`` (fewer where a spacing deduplicates)."""
    if SPACINGS.meta(SPACINGS.check(spacing, "sample.spacing")).get("dedup"):
        return len(make_timesteps(spacing, T, steps))
    return int(steps)


def _check_steps(steps: int, T: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise BenchError(f"sample.steps={steps!r} is impossible: it must be an int in [1, {T}] "
                         f"(the schedule's timesteps). Use fewer steps or more diffusion.timesteps.")


def make_timesteps(spacing: str, T: int, steps: int) -> torch.Tensor:
    """Increasing, distinct timesteps for a sampler; one clear error for any impossible request."""
    fn = SPACINGS.get(SPACINGS.check(spacing, "sample.spacing"))
    meta = SPACINGS.meta(spacing)
    if meta["kind"] != "timesteps":
        raise BenchError(f"spacing {spacing!r} is a noise-level schedule, not a timestep spacing; "
                         "use make_levels(spacing, alphas_cumprod, steps)")
    _check_steps(steps, T)
    refusal = meta.get("refuses", lambda T, S: None)(T, int(steps))
    if refusal:
        ok = [n for n in SPACINGS.names() if n != spacing and not SPACINGS.meta(n).get("refuses", lambda *a: None)(
            T, int(steps)) and SPACINGS.meta(n)["kind"] == "timesteps"]
        raise BenchError(f"{refusal}; use spacing {' or '.join(repr(n) for n in ok)}, or a step count that "
                         f"divides T (or at most T/2)")
    ts = np.asarray(fn(T, int(steps))).astype(np.int64)
    expected = None if meta.get("dedup") else steps
    if (expected is not None and len(ts) != expected) or (ts < 0).any() or (ts >= T).any():
        raise BenchError(f"spacing {spacing!r} produced {len(ts)} timesteps in "
                         f"[{ts.min()}, {ts.max()}] for steps={steps}, T={T}; expected {steps} in [0, {T})")
    if len(np.unique(ts)) != len(ts):
        raise BenchError(f"spacing {spacing!r} with steps={steps} and T={T} repeats timesteps "
                         f"(e.g. {ts[:-1][np.diff(ts) == 0][:3].tolist()}); use fewer steps or "
                         "another spacing (leading, linspace, trailing)")
    return torch.from_numpy(np.sort(ts))
