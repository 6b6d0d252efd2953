"""The EVAL job: sample from a trained model with per-sample seeds, then compute its metrics."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.core.config import RunConfig
from bench.core.paths import atomic_write_bytes
from bench.jobs.fp32 import strict_fp32
from bench.jobs.store import artifact_dir, checkpoint_path, train_dir
from bench.jobs.vae import load_codec
from bench.metrics.features import load_samples, save_samples

SEED_STRIDE = 2**32  # images per replicate before two replicates' seeds could meet
SAMPLED = {"images": 0}  # images generated in this process (rescoring is checked to add none)


def sample_seeds(cfg: RunConfig, n: int) -> list[int]:
    """Image i of replicate s has seed s * 2^32 + i: it depends on nothing else (STYLE.md, 6), and
    no two (replicate, image) pairs share a seed (i < 2^32; torch seeds are 64-bit)."""
    if not 0 <= cfg.seed < 2**31 or n > SEED_STRIDE:
        raise ValueError(f"seed {cfg.seed} / {n} samples: seeds must lie in [0, 2^31) and samples <= 2^32")
    return [cfg.seed * SEED_STRIDE + i for i in range(n)]


@dataclass
class Timing:
    """Sampling wall-clock of a run: (images, seconds) per timed batch, each read after a device
    sync; the warm-up network call before the clock (:func:`_warm_up`) is in none of them."""

    batches: list[tuple[int, float]]

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.batches)

    @property
    def images(self) -> int:
        return sum(n for n, _ in self.batches)

    def per_image(self) -> list[float]:
        return [s / n for n, s in self.batches if n]

    def outputs(self, n: int) -> dict[str, float]:
        """``sample_seconds`` (the timed seconds per image times ``n``), ``seconds_per_image`` (the
        median over batches of a batch's seconds per image: one slow batch moves it little) and, from
        two batches on, ``seconds_per_image_iqr`` (their interquartile range; one batch has none)."""
        per = self.per_image()
        if not per:
            return {}
        out = {"sample_seconds": self.seconds / self.images * n, "seconds_per_image": statistics.median(per)}
        if len(per) >= 2:
            q1, _, q3 = statistics.quantiles(per, n=4, method="inclusive")
            out["seconds_per_image_iqr"] = q3 - q1
        return out


def _timed(batches: Any, device: str, times: list[float]) -> Any:
    """Yield ``batches``; append each one's seconds (the loop body's, between two device syncs)."""
    for b in batches:
        _sync(device)
        t0 = time.perf_counter()
        yield b
        _sync(device)
        times.append(time.perf_counter() - t0)


def _warm_up(diffusion: Any, net: Any, shape: tuple[int, ...], y: torch.Tensor | None, device: str,
             autocast: Any) -> None:
    """One untimed network call on the first batch's shape before the clock starts (lazy CUDA and
    library init, the allocator, a compiled graph), through the diffusion's training loss (one call
    at a random level of its own time input); it is counted in no NFE: the Denoiser never sees it."""
    gen = torch.Generator(device).manual_seed(0)  # its own noise: the run's random state is untouched
    with torch.no_grad(), autocast:
        diffusion.training_loss(net, torch.zeros(shape, device=device), y, generator=gen)


def generate(cfg: RunConfig, model: Any, diffusion: Any, codec: Any, device: str, progress: bool = True,
             guide: Any = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, Timing, dict[str, int]]:
    """Images ``start`` .. ``eval.num_samples - 1`` as uint8 (decoded to pixels in latent space),
    their labels, their :class:`Timing`, and the network calls the Denoiser counted per image (``nfe``,
    ``guided_calls``; equal for every batch, so the first batch's count is the run's)."""
    from tqdm.auto import tqdm

    from bench.data import dataset_info

    n, bs, s = cfg.eval.num_samples, cfg.sample.batch_size, cfg.sample
    info = dataset_info(cfg.data.dataset)
    size = cfg.data.image_size or info.image_size
    shape = codec.latent_shape(info.channels, size) if codec is not None else (info.channels, size, size)
    seeds = sample_seeds(cfg, n)
    # class i % K for image i, K = the model's classes (imagefolder's class count is found on disk)
    classes = getattr(model, "num_classes", None) or getattr(model, "class_count", None)
    labels = torch.arange(n) % int(classes) if cfg.model.class_cond else None
    if labels is not None:
        labels = labels[start:]
    seeds = seeds[start:]
    n -= start
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=sampling_precision(cfg, device) == "bf16")
    net = compiled(model) if s.compile else model
    from bench.diffusion import SampleRequest

    request = SampleRequest.of(s, clip_denoised=s.clip_denoised and codec is None)  # every setting, once
    out, calls = [], {}
    if n > 0:
        first = labels[:min(n, bs)].to(device) if labels is not None else None
        for m in (net, guide) if guide is not None else (net,):  # autoguidance's model is called too
            _warm_up(diffusion, m, (min(n, bs), *shape), first, device, autocast)
    times: list[float] = []
    for lo in _timed(tqdm(range(0, n, bs), desc="sampling", disable=not progress, leave=False), device, times):
        hi = min(n, lo + bs)
        y = labels[lo:hi].to(device) if labels is not None else None
        with autocast:
            x = diffusion.sample(net, (hi - lo, *shape), request, y=y, seeds=seeds[lo:hi], device=device,
                                 info=calls, guide=guide)
            if codec is not None:
                x = codec.decode(x.float())
        out.append(x.float().cpu())
    timing = Timing([(min(n, lo + bs) - lo, t) for lo, t in zip(range(0, n, bs), times)])
    x = torch.cat(out)
    SAMPLED["images"] += len(x)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise FloatingPointError(f"{bad} of {n} generated images contain NaN or inf (model {cfg.train_key()})")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), labels, timing, calls


def sampling_precision(cfg: RunConfig, device: str) -> str:
    """``fp32`` or ``bf16``: the sampling network's autocast. ``sample.precision: auto`` keeps what the
    model trained with on a GPU (bf16 where ``train.precision`` is bf16), fp32 on a CPU."""
    if cfg.sample.precision != "auto":
        return cfg.sample.precision
    return "bf16" if device.startswith("cuda") and cfg.train.precision == "bf16" else "fp32"


def compiled(model: Any) -> Any:
    """``torch.compile(model)`` for sampling, static shapes (a run's batches have one or two sizes);
    the backend is ``$BENCH_COMPILE_BACKEND`` (default inductor; ``eager`` traces with dynamo and
    generates no code, ``cudagraphs`` replays CUDA graphs without inductor)."""
    return torch.compile(model, dynamic=False, backend=compile_backend())


def compile_backend() -> str:
    return os.environ.get("BENCH_COMPILE_BACKEND", "inductor")


def sampling_tags(cfg: RunConfig, device: str) -> dict[str, str]:
    """How the run's images are computed: the network's precision and compilation."""
    backend = compile_backend() if cfg.sample.compile else "none"
    return {"protocol.sample_precision": sampling_precision(cfg, device), "protocol.sample_compile": backend}


def run_eval(cfg: RunConfig, key: str, device: str, progress: bool = True) -> dict[str, Any]:
    from bench.metrics import METRICS
    from bench.training import build_diffusion, load_trained

    tags: dict[str, str] = strict_fp32()
    if cfg.model.pretrained is not None:
        from bench.models import inspect_pretrained, load_pretrained, load_pretrained_codec

        model, diffusion = load_pretrained(cfg.model.pretrained, device)
        if cfg.sample.variance is not None:  # a fixed variance chosen at sampling time (the sigma-hat row)
            from bench.diffusion import Diffusion

            diffusion = Diffusion(diffusion.schedule, objective=diffusion.objective_name,
                                  variance=cfg.sample.variance)
        codec = load_pretrained_codec(cfg.model.pretrained, device) if cfg.model.space == "latent" else None
        # a loaded folder model carries what load_pretrained read (weights hashed once); python: models do not
        info = getattr(model, "info", None) or inspect_pretrained(cfg.model.pretrained)
        tags.update(info.tags())
    else:
        model, _, _ = load_trained(checkpoint_path(cfg.train_key()), device=device)
        # this run's diffusion: equal to the checkpoint's in everything that trained the model (the
        # train key says so), with the variance the run samples with (sample.variance, or its own)
        variance = cfg.sample.variance or cfg.diffusion.variance
        diffusion = build_diffusion(replace(cfg.diffusion, variance=variance))
        codec = load_codec(cfg, device) if cfg.model.space == "latent" else None
    guide = None
    if cfg.sample.guide:  # autoguidance's weaker model: its own TRAIN job's checkpoint
        guide_cfg = cfg.guide_config()
        guide, _, _ = load_trained(checkpoint_path(guide_cfg.train_key()), device=device)
        tags["bench.guide_key"] = guide_cfg.train_key()
    images, labels, timing, calls = stored_or_generated(cfg, model, diffusion, codec, device, progress,
                                                        guide, tags)
    t0 = time.perf_counter()
    ev = cfg.eval
    on_images = [m for m in ev.metrics if not METRICS.get(m).needs_model]
    values: dict[str, float] = {}
    if on_images:
        res = image_metrics(cfg, key, images, labels, on_images, device, progress)
        values.update(res)
        tags.update({f"protocol.{k}": str(v) for k, v in res.protocol.items() if v is not None})
    on_model = [m for m in ev.metrics if METRICS.get(m).needs_model]
    if on_model and ev.nll_samples > 0:
        ctx = _ModelInputs(cfg, model, diffusion, codec, device, progress)
        for m in on_model:
            values.update(_cached_model_metric(cfg, m, ctx))
        tags["protocol.nll_space"] = "latent" if codec is not None else "pixel"
        tags["protocol.nll_samples"] = str(ev.nll_samples)
        tags["protocol.nll_timesteps"] = str(ev.nll_timesteps or "all")
    eval_seconds = time.perf_counter() - t0
    values.update(eval_seconds=eval_seconds, **timing.outputs(len(images)), **calls)
    result_file = train_dir(cfg.train_key()) / "result.json"
    if result_file.exists():
        values["train_seconds"] = json.loads(result_file.read_text())["train_seconds"]
    grid = artifact_dir(key) / "samples.png"
    save_grid(images[:64], grid)
    bad = {k: v for k, v in values.items() if v is None or not math.isfinite(float(v))}
    if bad:  # a run without its number is not FINISHED: the job fails with the names
        raise FloatingPointError(f"metric(s) {', '.join(f'{k} = {v}' for k, v in bad.items())} are not finite "
                                 f"(run {key}); check the samples (samples.png) and the metric's inputs")
    return {"metrics": {k: float(v) for k, v in values.items()}, "tags": tags, "artifacts": [str(grid)]}


def stored_or_generated(cfg: RunConfig, model: Any, diffusion: Any, codec: Any, device: str, progress: bool,
                        guide: Any, tags: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor | None, Timing, dict]:
    """The run's images: the first ``eval.num_samples`` of the stored sequence of its sample key
    (drawn by a run scored differently, or by one with more samples), and the rest generated and
    stored, with the timing of every batch that drew them (a stored sequence's own)."""
    n, skey = cfg.eval.num_samples, cfg.sample_key()
    tags["bench.sample_key"] = skey
    tags.update(sampling_tags(cfg, device))
    run = load_samples(skey, n)
    if run is not None:
        tags["bench.samples_reused"] = str(n)
        calls = {k: int(v) for k, v in run["calls"].items()}
        return run["images"], run["labels"], _stored_timing(run), calls
    stored = load_samples(skey)  # fewer than n: keep them, draw the rest
    have = len(stored["images"]) if stored is not None else 0
    if have:
        tags["bench.samples_reused"] = str(have)
    images, labels, timing, calls = generate(cfg, model, diffusion, codec, device, progress, guide, start=have)
    batching = calls.pop("guidance_batch", None)  # a tag, not a count: calls are logged as metrics
    if batching is not None:
        tags["protocol.guidance_batch"] = batching
    if have:
        timing = Timing(_stored_timing(stored).batches + timing.batches)
        images = torch.cat([stored["images"], images])
        labels = torch.cat([stored["labels"], labels]) if labels is not None else None
    save_samples(skey, images, labels, sample_seeds(cfg, n), timing.seconds, calls, batches=timing.batches)
    return images, labels, timing, calls


def _stored_timing(blob: dict[str, Any]) -> Timing:
    """The timed batches kept with stored samples (one batch of all of them where none were kept)."""
    batches = blob.get("batches")
    if batches is None:
        return Timing([(len(blob["images"]) if "stored" not in blob else int(blob["stored"]), float(blob["seconds"]))])
    return Timing([(int(k), float(s)) for k, s in batches.tolist()])


def image_metrics(cfg: RunConfig, key: str, images: torch.Tensor, labels: torch.Tensor | None,
                  metrics: list[str], device: str, progress: bool = True) -> Any:
    """The run's metrics of generated images, their features kept in the feature store under the
    run's sample key."""
    from bench.metrics import compute_metrics

    ev = cfg.eval
    return compute_metrics(images, reference=f"{cfg.data.dataset}:{ev.reference_split}", extractor=ev.extractor,
                           metrics=metrics, fid_backend=ev.fid_backend, inception_weights=ev.inception_weights,
                           kid_subset_size=ev.kid_subset_size, device=device, run_name=key, data=cfg.data,
                           labels=labels, progress=progress, store_key=cfg.sample_key(),
                           feature_weights=ev.feature_weights.as_dict(), bootstrap=ev.bootstrap,
                           feature_models={"dinov2": ev.dinov2_model, "clip": ev.clip_model})


class _ModelInputs:
    """The model context of ``needs_model`` metrics, its test images loaded on first use."""

    def __init__(self, cfg: RunConfig, model: Any, diffusion: Any, codec: Any, device: str, progress: bool) -> None:
        self.cfg, self.args = cfg, (diffusion, model, codec)
        self.device, self.progress = device, progress
        self._ctx: Any = None

    def get(self) -> Any:
        if self._ctx is None:
            from bench.data import load_images
            from bench.metrics import ModelContext

            cfg = self.cfg
            test = load_images(cfg.data, cfg.eval.reference_split)
            n = min(cfg.eval.nll_samples, len(test.images))
            y = test.labels[:n] if (cfg.model.class_cond and test.labels is not None) else None
            self._ctx = ModelContext(*self.args, test.images[:n], y, self.device, cfg.seed, self.progress,
                                     nll_timesteps=cfg.eval.nll_timesteps)
        return self._ctx


def _cached_model_metric(cfg: RunConfig, name: str, inputs: _ModelInputs) -> dict[str, float]:
    """A model metric depends on the trained model, not on the sampler: computed once per
    (model, metric, protocol) and kept beside the checkpoint."""
    from bench.metrics import METRICS

    k = cfg.eval.nll_timesteps
    path = train_dir(cfg.train_key()) / f"{name}_{cfg.eval.reference_split}_{cfg.eval.nll_samples}{f'_k{k}' if k else ''}.json"
    if path.exists():
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    values = METRICS.get(name).compute(inputs.get())
    if all(math.isfinite(v) for v in values.values()):  # a NaN is reported, never kept
        atomic_write_bytes(path, json.dumps(values).encode())
    return values


def save_grid(images: torch.Tensor, path: Path, scale: int = 4) -> None:
    """A PNG grid of uint8 images, upscaled (nearest) so 8x8 digits are visible."""
    import torchvision

    x = images.float() / 255.0
    if x.shape[-1] < 32:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    nrow = max(1, int(math.ceil(math.sqrt(len(x)))))
    torchvision.utils.save_image(x, str(path), nrow=nrow, padding=2, pad_value=1.0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
