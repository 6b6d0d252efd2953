"""Which timesteps a sampler visits when it takes fewer steps than the schedule has.

Each spacing maps (T, steps) -> the timesteps it visits, in integers (never a float range that
can gain or lose an element), and declares where its last (noisiest) timestep lies, ``last(T, S)``.
:func:`make_timesteps` returns them increasing and distinct, or raises one BenchError before any
sampling: a spacing that cannot serve (T, S) says why and names the spacings that can.
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


@SPACINGS.register("leading", last=lambda T, S: (S - 1) * (T // S), refuses=leading_refusal,
                   paper="DDIM (Song et al. 2021) 'uniform'; diffusers 'leading': 0, k, 2k, ..., k = T // S")
def leading(T: int, steps: int) -> np.ndarray:
    return np.arange(steps, dtype=np.int64) * (T // steps)


@SPACINGS.register("linspace", last=lambda T, S: T - 1 if S > 1 else 0,
                   paper="diffusers 'linspace': evenly from 0 to T - 1 inclusive, rounded")
def linspace(T: int, steps: int) -> np.ndarray:
    if steps == 1:
        return np.zeros(1, dtype=np.int64)
    return _round_half_even(np.arange(steps, dtype=np.int64) * (T - 1), steps - 1)


@SPACINGS.register("trailing", last=lambda T, S: T - 1,
                   paper="Lin et al. 2024, 'Common diffusion noise schedules...', Tab. 2; diffusers 'trailing'")
def trailing(T: int, steps: int) -> np.ndarray:
    """round(T - i T / S) - 1 for i = S-1, ..., 0: always S values, the last T - 1 (diffusers'
    ``np.round(np.arange(T, 0, -T / S)) - 1``, computed in integers so it never gains one)."""
    i = np.arange(steps - 1, -1, -1, dtype=np.int64)
    return _round_half_even(T * (steps - i), steps) - 1


@SPACINGS.register("quadratic", last=lambda T, S: (4 * T) // 5 if S > 1 else 0, dedup=True,
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


def make_timesteps(spacing: str, T: int, steps: int) -> torch.Tensor:
    """Increasing, distinct timesteps for a sampler; one clear error for any impossible request."""
    fn = SPACINGS.get(SPACINGS.check(spacing, "sample.spacing"))
    meta = SPACINGS.meta(spacing)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise BenchError(f"sample.steps={steps!r} is impossible: it must be an int in [1, {T}] "
                         f"(the schedule's timesteps). Use fewer steps or more diffusion.timesteps.")
    refusal = meta.get("refuses", lambda T, S: None)(T, int(steps))
    if refusal:
        ok = [n for n in SPACINGS.names() if n != spacing and not SPACINGS.meta(n).get("refuses", lambda *a: None)(
            T, int(steps))]
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
