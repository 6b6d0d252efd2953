"""iPNDM against Euler and DPM-Solver++ at equal NFE on a trained digits U-Net (issue 29).

``python -m bench.perf.ipndm [--train-steps 3000] [--samples 1000] [--nfe 5 10] [--spacing karras] [--out DIR]``
trains a ``unet-tiny`` on ``digits`` (T = 1000, linear betas, eps; the training settings of
``ablations/samplers.yaml`` for ``--train-steps``; cached in ``--out``), then draws
``--samples`` images per sampler on ``--spacing`` levels (karras, rho 7) at each NFE, same seeds for
every sampler, and prints FID against ``digits:test`` in the ``domain:digits`` feature space.

iPNDM runs in four forms, the two options of :mod:`bench.diffusion.samplers.ipndm`:
fixed- or variable-step weights, and ending with the call D(x; sigma_min) (``denoise_to_zero``,
this package's chain) or stopping at sigma_min (the reference codes' default), and at order 2.
Not a test: minutes on a CPU (the domain classifier is trained once into ``$BENCH_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

VARIANTS = [("euler", {}), ("dpm-solver++", {})] + [("ipndm", o) for o in (
    {}, {"variable": True}, {"denoise_to_zero": False}, {"variable": True, "denoise_to_zero": False},
    {"order": 2}, {"order": 2, "denoise_to_zero": False})]
METRIC = "fid"


def trained(out: Path, steps: int, device: str):
    """(EMA model, Diffusion) of a digits unet-tiny trained for ``steps`` (resumed / reused from ``out``)."""
    from bench.core.config import from_dict
    from bench.training.checkpoint import load_trained
    from bench.training.loop import train_model

    cfg = from_dict({"data": {"dataset": "digits"}, "model": {"backbone": "unet-tiny"},  # ablations/samplers.yaml's
                     "train": {"steps": steps, "batch_size": 64, "lr": 1.0e-3, "warmup_steps": 50,
                               "ema_decay": 0.995, "checkpoint_every": 500, "log_every": 100}})
    res = train_model(cfg, out / f"digits-unet-tiny-{steps}", device=device, progress=False)
    model, diffusion, _ = load_trained(res.checkpoint, device)
    return model, diffusion, res


def label(name: str, opts: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in opts.items())


def main(device: str = "cpu", argv: list[str] | None = None) -> None:
    from bench.diffusion.samplers import steps_for_nfe
    from bench.metrics import compute_metrics

    p = argparse.ArgumentParser(prog="python -m bench.perf.ipndm", description=__doc__)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    p.add_argument("--out", default=".bench_cache/perf-ipndm")
    p.add_argument("--spacing", default="karras", help="the levels (karras: rho 7; linspace: uniform in t, as DEIS)")
    p.add_argument("--device", default=device)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    model, diffusion, res = trained(out, args.train_steps, args.device)
    print(f"model: digits unet-tiny, {res.steps} steps, final loss {res.final_loss:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
    seeds = list(range(args.samples))
    rows = []
    for nfe in args.nfe:
        for name, opts in VARIANTS:
            steps = steps_for_nfe(name, nfe, args.spacing, diffusion.timesteps, opts)
            info: dict = {}
            imgs = []
            for lo in range(0, args.samples, 250):
                x = diffusion.sample(model, (min(250, args.samples - lo), 1, 8, 8), sampler=name, steps=steps,
                                     spacing=args.spacing, seeds=seeds[lo:lo + 250], clip_denoised=True,
                                     options=opts, info=info, device=args.device)
                imgs.append(((x.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
            assert info["nfe"] == nfe, (name, opts, info)
            fid = compute_metrics(torch.cat(imgs), "digits:test", "domain:digits", (METRIC,), device=args.device,
                                  progress=False)[METRIC]
            rows.append((nfe, label(name, opts), steps, fid))
            print(f"NFE {nfe:3d}  levels {steps:3d}  FID {fid:8.3f}  {label(name, opts)}", flush=True)
    print(f"\n| NFE | sampler | levels ({args.spacing}) | FID ({args.samples} samples, domain:digits) |\n|---|---|---|---|")
    for nfe, lab, steps, fid in rows:
        print(f"| {nfe} | {lab} | {steps} | {fid:.2f} |")


if __name__ == "__main__":
    main()
