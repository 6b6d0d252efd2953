"""The ``samples`` plot kind: the ``samples.png`` grids the EVAL runs logged, fetched from MLflow."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.report.runs import FINISHED, StudyRuns
from bench.report.tables import _filter as filter_jobs
from bench.report.tables import default_format, metric_label
from bench.study.report_specs import PlotSpec
from bench.tracking import download_artifact

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a tqdm bar per downloaded artifact; a report downloads dozens."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def sample_grids(spec: PlotSpec, data: StudyRuns, order: dict[str, list[Any]], names: dict[str, str],
                 ) -> tuple[list[tuple[str, bytes]], list[str]]:  # fmt: skip
    """One ``samples.png`` per value combination of ``by`` (default: every non-seed axis):
    (captioned images, notes on what could not be shown)."""
    images: list[tuple[str, bytes]] = []
    notes: list[str] = []
    expected = filter_jobs(data.jobs, spec.where)
    jobs = expected[expected["_status"] == FINISHED]
    by = list(spec.by) or [a for a in names if a != "seed"]
    if by:
        have = {tuple(r) for r in jobs[by].itertuples(index=False, name=None)}
        lost = sorted({tuple(r) for r in expected[by].itertuples(index=False, name=None)} - have, key=str)
        notes += [f"{', '.join(f'{names.get(a, a)} = {v}' for a, v in zip(by, t))}: no finished run, no samples"
                      for t in lost]  # fmt: skip
    seed = spec.options.get("seed")
    if seed is not None:
        jobs = jobs[jobs["seed"] == seed]
    jobs = jobs.sort_values("seed", kind="stable")
    if by:
        rank = {a: {v: i for i, v in enumerate(order.get(a, []))} for a in by}
        jobs = jobs.assign(_rank=[tuple(rank[a].get(r[a], 10**6) for a in by) for r in jobs.to_dict("records")])
        jobs = jobs.sort_values("_rank", kind="stable").drop_duplicates(by)
    else:
        jobs = jobs.head(1)
    limit = int(spec.options.get("max", 16))
    if len(jobs) > limit:
        notes.append(f"Showing the first {limit} of {len(jobs)} sample grids (raise `max:` for more).")
    params = {r["run_id"]: r for r in data.runs.to_dict("records")} if "run_id" in data.runs else {}
    by_label = False
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        others = [a for a in names if a != "seed" and a not in by and expected[a].map(repr).nunique() > 1]
        for i, r in enumerate(jobs.head(limit).to_dict("records")):
            caption = ", ".join(f"{names.get(a, a)} = {r[a]}" for a in [*by, *others]) or "samples"
            if spec.y and spec.y in r and r[spec.y] is not None and math.isfinite(float(r[spec.y])):
                caption += f" — {metric_label(spec.y)} {format(float(r[spec.y]), default_format(spec.y, '.3g'))}"
            try:
                png = download_artifact(data.tracking_uri, r["_run_id"], "samples.png", str(Path(tmp) / str(i))).read_bytes()
            except Exception as e:  # noqa: BLE001 (any store error: the report goes on without this grid)
                notes.append(f"{caption}: no samples.png artifact ({type(e).__name__})")
                continue
            if png.startswith(PNG_MAGIC):
                classes, n = _classes(params.get(r["_run_id"], {}))
                if classes:
                    png = by_class(png, min(SAVED, n), classes) or png
                    by_label = True
                images.append((f"{caption} (seed {r['seed']})", png))
            else:
                notes.append(f"{caption}: samples.png is not a PNG file")
    if not images and not notes:
        notes.append("No finished evaluation runs with sample grids yet.")
    elif by_label:
        notes.append("One class per column (the label above it): image i of a run was generated for class i mod K.")
    return images, notes


SAVED, PAD = 64, 2  # bench.jobs.eval.save_grid: the first 64 images, ceil(sqrt(n)) a row, 2 px padding


def _classes(run: dict[str, Any]) -> tuple[int | None, int]:
    """(K, n): the classes a class-conditional run generated for (image i for class i mod K; None when
    unconditional) and its sample count, from the run's logged params."""
    if str(run.get("params.model.class_cond")) not in ("True", "true", "1"):
        return None, 0
    from bench.data import dataset_info

    try:
        k = dataset_info(str(run["params.data.dataset"])).num_classes
        n = int(float(run["params.eval.num_samples"]))
    except Exception:  # noqa: BLE001 (an unknown dataset or a missing param: keep the grid as logged)
        return None, 0
    return (int(k) if k else None), n


def by_class(png: bytes, n: int, classes: int) -> bytes | None:
    """The grid ``save_grid`` wrote (n images, ceil(sqrt(n)) a row) re-laid out with one column per
    class (image i is class i mod ``classes``) under a row of class labels; None when the image's
    size does not match that layout."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    src = Image.open(io.BytesIO(png)).convert("RGB")
    per_row = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / per_row)
    tile = (src.width - PAD) // per_row - PAD
    if tile <= 0 or src.width != per_row * (tile + PAD) + PAD or src.height != rows * (tile + PAD) + PAD:
        return None
    step, head = tile + PAD, max(14, tile // 2)
    depth = math.ceil(n / classes)
    out = Image.new("RGB", (classes * step + PAD, head + depth * step + PAD), "white")
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=head - 2)
    for c in range(classes):
        draw.text((PAD + c * step + tile // 2, head // 2), str(c), fill="black", font=font, anchor="mm")
    for i in range(n):
        x, y = PAD + (i % per_row) * step, PAD + (i // per_row) * step
        c, k = i % classes, i // classes
        out.paste(src.crop((x, y, x + tile, y + tile)), (PAD + c * step, head + PAD + k * step))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
