"""Sampler overhead: time of sampling / (counted NFE x one bare forward), and guided sampling's
two ways (one 2B call, two B calls; ``sample.guidance_batch``) against each other and against the
way ``measure`` picks on this device (bench.diffusion.batching; ``auto`` is always the joint call);
and a rectified-flow model (a float time in [0, 1], the pure-noise start) under Euler and
DPM-Solver++, against bare forwards of it.

Targets: overhead ratio <= 1.05 for every sampler; guided ``measure`` never slower than the faster way.
"""

from __future__ import annotations

import torch

from bench.diffusion import SAMPLERS, Diffusion
from bench.perf.timing import best_times, cpu_threads, print_table

ROUNDS = 10  # interleaved rounds per case: the best of 10 is stable to about 1 % on a quiet CPU


class SmallConvNet(torch.nn.Module):
    """A small conditional conv net (4 convs, 64 channels) standing in for a real backbone."""

    def __init__(self, channels: int = 3, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.mid = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1),
                                                             torch.nn.SiLU()) for _ in range(2)])
        self.out = torch.nn.Conv2d(width, channels, 3, padding=1)
        self.temb = torch.nn.Embedding(1000, width)
        self.yemb = torch.nn.Embedding(num_classes + 1, width)

    def forward(self, x, t, y=None):
        if t.is_floating_point():  # a continuous process's time in [0, 1]: the table's row of t x 999
            t = (t * 999).long()
        y = torch.full_like(t, self.num_classes) if y is None else y
        h = self.inp(x) + (self.temb(t) + self.yemb(y))[:, :, None, None]
        return self.out(self.mid(h))


class TwoCallCFG(torch.nn.Module):
    """Guidance the naive way: a conditional and an unconditional call of B each."""

    def __init__(self, net: SmallConvNet, w: float) -> None:
        super().__init__()
        self.net, self.w, self.num_classes = net, w, net.num_classes

    def forward(self, x, t, y):
        null = torch.full_like(y, self.num_classes)
        return (1 + self.w) * self.net(x, t, y) - self.w * self.net(x, t, null)


def main(device: str = "cpu", batch: int = 64, steps: int = 20, size: int = 16) -> list[dict]:
    cpu_threads(device)
    torch.manual_seed(0)
    net = SmallConvNet().to(device).eval()
    d = Diffusion("linear", 1000)
    shape = (batch, 3, size, size)
    x = torch.randn(shape, device=device)
    t = torch.full((batch,), 500, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y])

    def gen():
        return torch.Generator(device).manual_seed(0)

    def forwards(n, xx, tt, yy):
        with torch.no_grad():
            for _ in range(n):
                net(xx, tt, yy)

    nfe: dict[str, int] = {}
    # fixed-step samplers: an adaptive one (dopri5) takes its own steps on this net's field, piecewise
    # constant in t (an embedding table), so its calls measure the field, not the sampler's overhead
    fixed = [s for s in SAMPLERS.names() if not SAMPLERS.meta(s).get("adaptive")]
    cases = {f"{s}, batch {batch}": (lambda s=s: d.sample(net, shape, sampler=s, steps=steps, eta=1.0, y=y,
                                                             generator=gen(), info=nfe.setdefault(s, {})))
             for s in fixed}
    cases["bare forward x steps"] = lambda: forwards(steps, x, t, y)
    flow = Diffusion(process="rectified-flow", objective="velocity", shift=3.0)
    flow_samplers = ("euler", "dpm-solver++")
    for s in flow_samplers:
        cases[f"rectified-flow {s}"] = (lambda s=s: flow.sample(net, shape, sampler=s, steps=steps, y=y, generator=gen(),
                                                                info=nfe.setdefault(f"flow {s}", {})))
    cases["bare forward x steps, float t"] = lambda: forwards(steps, x, torch.full((batch,), 0.5, device=device), y)
    cases["bare 2B forward x steps"] = lambda: forwards(steps, x2, t2, y2)
    for mode in ("joint", "split", "measure"):
        cases[f"guided ddim, {mode}"] = (lambda m=mode: d.sample(net, shape, sampler="ddim", steps=steps, guidance=2.0,
                                                                  y=y, generator=gen(), guidance_batch=m))
    cases["guided ddim, two calls by hand"] = lambda: d.sample(TwoCallCFG(net, 2.0), shape, sampler="ddim",
                                                                steps=steps, y=y, generator=gen())
    best = best_times(cases, device, rounds=ROUNDS)
    rows = []
    for s in fixed:
        name = f"{s}, batch {batch}"
        bare = best["bare forward x steps"] * nfe[s]["nfe"] / steps  # Heun: 2 steps - 1 calls
        rows.append({"case": name, "nfe": nfe[s]["nfe"], "seconds": best[name], "bare forwards": bare,
                     "ratio": best[name] / bare, "target": "<= 1.05"})
    for s in flow_samplers:
        bare = best["bare forward x steps, float t"] * nfe[f"flow {s}"]["nfe"] / steps
        rows.append({"case": f"rectified-flow {s} (shift 3), batch {batch}", "nfe": nfe[f"flow {s}"]["nfe"],
                     "seconds": best[f"rectified-flow {s}"], "bare forwards": bare,
                     "ratio": best[f"rectified-flow {s}"] / bare, "target": "<= 1.05"})
    joint, split, measured = (best[f"guided ddim, {m}"] for m in ("joint", "split", "measure"))
    picked = {}
    d.sample(net, shape, sampler="ddim", steps=1, guidance=2.0, y=y, generator=gen(), info=picked,
             guidance_batch="measure")
    rows.append({"case": "guided ddim, one 2B call (joint)", "seconds": joint,
                 "bare forwards": best["bare 2B forward x steps"], "ratio": joint / best["bare 2B forward x steps"],
                 "target": "<= 1.05"})
    rows.append({"case": "guided ddim, two B calls (split)", "seconds": split, "bare forwards": 2 * best["bare forward x steps"],
                 "ratio": split / (2 * best["bare forward x steps"]), "target": "<= 1.05"})
    rows.append({"case": "guided ddim, two calls by hand", "seconds": best["guided ddim, two calls by hand"],
                 "bare forwards": 2 * best["bare forward x steps"], "ratio": best["guided ddim, two calls by hand"] / split,
                 "target": "split / by hand ~ 1"})
    rows.append({"case": f"guided ddim, measure (picks {picked['guidance_batch']})", "seconds": measured,
                 "bare forwards": min(joint, split), "ratio": measured / min(joint, split),
                 "target": "<= 1.05 (never slower)"})
    print_table(rows, f"Sampler overhead on {device} ({steps} steps, {shape}, small conv net, best of {ROUNDS})")
    return rows


if __name__ == "__main__":
    main()
