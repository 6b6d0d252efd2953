"""The variational bound of the discrete VP chain (Ho et al. 2020, eq. 5), a mixin of
:class:`bench.diffusion.Diffusion`: per-step terms, the prior term, the full and stratified bounds."""

from __future__ import annotations

import math

import torch

from bench.core.errors import BenchError
from bench.diffusion.chain import gather
from bench.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from bench.diffusion.prediction import Model, Prediction


class VariationalBound:
    """Mixin: needs ``full_chain``, ``coefs``, ``objective``, ``_call``, ``q_sample``,
    ``p_mean_logvar``, ``timesteps`` of the Diffusion."""

    def vb_term(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor,
                var_out: torch.Tensor | None) -> torch.Tensor:
        """L_t in bits per dim, per image: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0,
        the discretized-Gaussian decoder NLL -log p(x0 | x1) for t = 0 (Ho et al. eq. 5)."""
        self._discrete_only("the variational bound")
        chain = self.full_chain
        a, s = self.coefs(t, x_t)
        _, x0_hat = self.objective.to_eps_x0(pred, x_t, a, s,
                                             self.rates(t.double(), x_t) if self._needs_rates else None)
        # gather reads device copies of the chain's tables: no host sync in a GPU training step (hybrid, vlb)
        model_mean, model_logvar = self.p_mean_logvar(chain, t, x_t, Prediction(pred, x0_hat, var_out))
        true_mean = gather(chain.coef_x0, t, x_t) * x0 + gather(chain.coef_xt, t, x_t) * x_t
        true_logvar = gather(chain.posterior_log_variance, t, x_t)
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    # --- likelihood ----------------------------------------------------------------------------
    def _discrete_only(self, what: str) -> None:
        if self.continuous:
            raise BenchError(f"{what} needs the discrete chain of process 'vp'; process {self.process_name!r} "
                             "has a likelihood through the probability-flow ODE")

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

        self._discrete_only("the variational bound")
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
