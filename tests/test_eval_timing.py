"""Sampling time of an eval run: the warm-up network call is outside the clock, every batch is timed,
s / image is the median over batches with its interquartile range beside it. The clock here is the
network's own call counter (each call advances it by one, the warm-up by 1000), so every assertion is
exact: nothing depends on how fast the machine is."""

from __future__ import annotations

import types

import pytest
import torch

from bench.core.config import from_dict
from bench.diffusion import Diffusion
from bench.jobs import eval as eval_job
from bench.metrics import OUTPUTS

WARM_UP = 1000.0  # clock ticks of the first network call: it must appear in no timing


class CountingNet(torch.nn.Module):
    """Predicts zero; each call advances ``clock`` by one tick (the first by WARM_UP)."""

    num_classes = 10

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock, self.shapes = clock, []

    def forward(self, x, t, y=None):
        self.clock[0] += WARM_UP if not self.shapes else 1.0
        self.shapes.append(tuple(x.shape))
        return torch.zeros_like(x)


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    ticks = [0.0]
    monkeypatch.setattr(eval_job, "time", types.SimpleNamespace(perf_counter=lambda: ticks[0]))
    return ticks


def _config(n: int = 10, batch: int = 4, steps: int = 3):
    return from_dict({"data": {"dataset": "digits"}, "model": {"class_cond": True},
                      "sample": {"steps": steps, "batch_size": batch}, "eval": {"num_samples": n}})


@pytest.mark.parametrize("process", ["vp", "rectified-flow"])
def test_warm_up_call_is_in_neither_the_nfe_nor_the_timed_seconds(clock, process):
    net = CountingNet(clock)
    d = Diffusion("cosine", 100) if process == "vp" else Diffusion(process=process, objective="velocity")
    images, _, timing, calls = eval_job.generate(_config(), net, d, None, "cpu", progress=False)
    assert len(images) == 10 and calls["nfe"] == 3
    assert net.shapes[0][0] == 4  # the warm-up: one call on the first batch's shape, before any batch
    assert len(net.shapes) == 1 + 3 * 3  # warm-up + 3 batches x 3 steps
    assert timing.batches == [(4, 3.0), (4, 3.0), (2, 3.0)]  # each batch's own 3 calls, no warm-up tick
    out = timing.outputs(10)
    assert out["sample_seconds"] == pytest.approx(9.0)
    assert out["seconds_per_image"] == pytest.approx(0.75)  # median of 3/4, 3/4, 3/2: the short batch ignored
    assert out["seconds_per_image_iqr"] == pytest.approx(1.125 - 0.75)  # inclusive quartiles of the three


def test_one_batch_has_no_spread_and_spreads_are_never_negative():
    assert "seconds_per_image_iqr" not in eval_job.Timing([(8, 2.0)]).outputs(8)
    for batches in ([(4, 1.0), (4, 3.0)], [(4, 2.0)] * 5, [(2, 5.0), (4, 1.0), (4, 1.5), (4, 9.0)]):
        out = eval_job.Timing(batches).outputs(10)
        assert out["seconds_per_image_iqr"] >= 0.0
        lo, hi = min(s / n for n, s in batches), max(s / n for n, s in batches)
        assert lo <= out["seconds_per_image"] <= hi


def test_reused_samples_keep_the_timing_of_the_batches_that_drew_them(clock):
    net = CountingNet(clock)
    cfg, d = _config(), Diffusion("cosine", 100)
    _, _, drawn, _ = eval_job.stored_or_generated(cfg, net, d, None, "cpu", False, None, {})
    calls = len(net.shapes)
    tags: dict[str, str] = {}
    _, _, reused, _ = eval_job.stored_or_generated(cfg, net, d, None, "cpu", False, None, tags)
    assert len(net.shapes) == calls and tags["bench.samples_reused"] == "10"  # nothing sampled again
    assert reused.batches == drawn.batches and reused.outputs(10) == drawn.outputs(10)


def test_the_timing_outputs_are_declared_and_the_caption_states_the_clock_and_spread():
    from bench.report import captions

    per_image = OUTPUTS.get("seconds_per_image")
    assert per_image.spread == "seconds_per_image_iqr" and per_image.spread in OUTPUTS
    assert OUTPUTS.get(per_image.spread).unit == "s"
    note = captions.timing_note("seconds_per_image", _no_runs())
    assert "warm-up" in note and "median" in note and "interquartile range" in note
    assert "warm-up" in captions.timing_note("sample_seconds", _no_runs())
    spec = types.SimpleNamespace(aggregate="mean", values=["seconds_per_image"])
    value = captions.value_note(spec, [types.SimpleNamespace(n=1)])
    assert "s / image ± its interquartile range over batches" in value


def _no_runs():
    import pandas as pd

    return pd.DataFrame({"_status": []})
