"""The job DAG: deduplication by key, dependencies, scheduling order, summaries."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from bench.core.config import RunConfig, VAESpec
from bench.plan import Plan, eval_cost, plan

BASE = RunConfig()


def grid(base: RunConfig = BASE, **axes: list[object]) -> list[RunConfig]:
    keys = list(axes)
    return [base.override(**dict(zip(keys, values))) for values in itertools.product(*axes.values())]


def ddim_grid() -> list[RunConfig]:
    return grid(
        **{
            "diffusion.objective": ["eps", "v", "x0"],
            "sample.steps": [10, 20, 50, 100, 1000],
            "sample.eta": [0.0, 0.2, 0.5, 1.0],
        }
    )


def assert_topological(p: Plan, jobs: list) -> None:
    seen: set[str] = set()
    for job in jobs:
        assert all(d in seen for d in job.deps), job
        seen.add(job.key)


def test_three_objectives_five_steps_four_etas() -> None:
    p = plan(ddim_grid())
    assert len(p.by_kind("train")) == 3 and len(p.by_kind("eval")) == 60 and not p.by_kind("vae")
    for job in p.by_kind("eval"):
        (dep,) = job.deps
        assert p[dep].kind == "train" and dep == job.config.train_key() and job.key == job.config.key()
    assert all(j.deps == () for j in p.by_kind("train"))


def test_duplicates_collapse() -> None:
    configs = ddim_grid()
    assert len(plan(configs + configs[:7])) == len(plan(configs)) == 63


def test_latent_runs_share_one_vae() -> None:
    latent = BASE.override(**{"model.space": "latent"})
    latent = replace(latent, vae=VAESpec(steps=10))
    configs = grid(
        latent,
        **{
            "diffusion.objective": ["eps", "v"],
            "model.backbone": ["unet-tiny", "dit-tiny"],
            "sample.steps": [10, 20],
        },
    )
    configs += grid(BASE, **{"sample.steps": [10, 20]})  # pixel runs need no VAE
    p = plan(configs)
    (vae,) = p.by_kind("vae")
    trains = p.by_kind("train")
    assert len(trains) == 5 and len(p.by_kind("eval")) == 10
    assert sum(t.deps == (vae.key,) for t in trains) == 4 and sum(t.deps == () for t in trains) == 1
    assert vae.key == configs[0].vae_key() and vae.cost > 0
    assert_topological(p, p.order())
    assert p.order()[0].kind == "vae"  # it unlocks the most work


def test_order_is_topological_complete_and_stable() -> None:
    p = plan(ddim_grid())
    order = p.order()
    assert_topological(p, order)
    assert sorted(j.key for j in order) == sorted(p.jobs)
    assert [j.key for j in order] == [j.key for j in plan(ddim_grid()).order()]
    assert order[0].kind == "train"


def test_priority_counts_downstream_work() -> None:
    few = grid(**{"sample.steps": [10]})
    many = grid(BASE.override(**{"diffusion.objective": "v"}), **{"sample.steps": [10, 20, 50, 100]})
    p = plan(few + many)
    first = p.ready(set())[0]
    assert first.kind == "train" and first.config.diffusion.objective == "v"
    assert p.priority[first.key] == first.cost + sum(p[k].cost for k in p.children[first.key])


def test_ready_respects_dependencies() -> None:
    p = plan(ddim_grid())
    trains = {j.key for j in p.by_kind("train")}
    assert {j.key for j in p.ready(set())} == trains
    one = next(iter(trains))
    assert {j.key for j in p.ready(set(), running={one})} == trains - {one}
    ready = p.ready({one}, running=trains - {one})
    assert len(ready) == 20 and all(j.kind == "eval" and j.deps == (one,) for j in ready)
    done = {one} | {j.key for j in ready[:5]}
    assert len(p.ready(done, running=trains - {one})) == 15
    assert all(a.cost >= b.cost for a, b in itertools.pairwise(ready))  # most work first


def test_done_keys_skip_work() -> None:
    configs = ddim_grid()
    p = plan(configs)
    v_evals = {c.key() for c in configs if c.diffusion.objective == "v"}
    need = p.needed(v_evals)
    assert len(need) == 2 + 40  # the v model is not retrained: all its evaluations are done
    assert all(not (set(j.deps) - v_evals - need) for j in p.order(v_evals))
    assert not p.needed(set(p.jobs)) and not p.order(set(p.jobs)) and not p.ready(set(p.jobs))
    a_train = p.by_kind("train")[0].key
    assert p.needed({a_train}) == set(p.jobs) - {a_train}


def test_summary_counts_and_order() -> None:
    configs = ddim_grid()
    p = plan(configs)
    text = p.summary({configs[0].key(), configs[0].train_key(), "not-a-job"})
    lines = text.splitlines()
    assert lines[0].split() == ["kind", "jobs", "done", "to", "run", "est.", "cost"]
    assert lines[2].split()[:4] == ["train", "3", "1", "2"]
    assert lines[3].split()[:4] == ["eval", "60", "1", "59"]
    assert "order (first 8 of 61)" in text and "objective=" in text
    assert "nothing to run" in p.summary(set(p.jobs))


def test_costs_and_labels() -> None:
    cheap = BASE.override(**{"sample.steps": 10})
    guided = BASE.override(**{"sample.steps": 10, "sample.guidance": 2.0})
    assert eval_cost(guided) == 2 * eval_cost(cheap)
    p = plan(ddim_grid())
    ev = p.by_kind("eval")[0]
    assert ev.label.startswith("eval ") and "steps=10" in ev.label and "eta=0" in ev.label
    assert p.by_kind("train")[0].label == "train objective=eps"
    q = plan(ddim_grid(), axes=["sample.steps"])
    assert q.by_kind("eval")[0].label == "eval steps=10"


def test_frontier_schedules_like_ready() -> None:
    configs = ddim_grid()
    p = plan(configs)
    f = p.frontier({configs[0].key()})
    taken = [f.take() for _ in range(3)]
    assert [j.kind for j in taken] == ["train"] * 3 and f.take() is None  # evals wait for training
    f.finish(taken[0].key)
    expected = p.ready(f.done, f.running)[0]
    ev = f.take()
    assert ev is not None and ev.key == expected.key and ev.deps == (taken[0].key,)
    dropped = f.fail(taken[1].key)
    assert len(dropped) == 20 and all(p[k].deps == (taken[1].key,) for k in dropped)
    order = [ev]
    while (job := f.take()) is not None:
        order.append(job)
        f.finish(job.key)
    f.finish(ev.key)
    f.finish(taken[2].key)
    while (job := f.take()) is not None:
        order.append(job)
        f.finish(job.key)
    assert f.finished() and len(order) == 60 - 1 - 20
    assert_topological(p, [taken[0], taken[2], *order])


def test_bulk_building_pauses_the_collector_and_restores_it_also_on_errors() -> None:
    import gc

    from bench.core.bulk import no_gc

    assert gc.isenabled()
    with no_gc():
        assert not gc.isenabled()
        with no_gc():  # nested: the inner block leaves it to the outer one
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="inside"), no_gc():
        raise RuntimeError("inside")
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        with no_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
