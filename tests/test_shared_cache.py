"""Shared artefacts are built once: two processes starting together on one fresh cache (as two CPU
workers do) train the ``domain:digits`` classifier, extract the reference features and compute the
digits arrays once between them; the other waits on the build lock and reads the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys, time
import torch
torch.set_num_threads(1)
from bench.core.config import DataSpec
from bench.core.paths import BUILD_COUNTS
from bench.metrics import compute_metrics
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[1]):  # both start at once
    time.sleep(0.01)
from bench.data import load_images
images = load_images(DataSpec(dataset="digits"), "train").images[:100]
m = compute_metrics(images, reference="digits:test", extractor="domain:digits", metrics=("fid",))
print(json.dumps({"counts": BUILD_COUNTS, "fid": m["fid"]}))
"""


def test_two_workers_on_a_fresh_cache_build_each_artefact_once(tmp_path) -> None:
    env = dict(os.environ, BENCH_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", CHILD, str(tmp_path / "go"), str(r)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in ready]
    t0 = time.time()
    while not all(r.exists() for r in ready) and time.time() - t0 < 120:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for artefact in ("domain_classifier", "reference_features", "digits_arrays"):
        builds = sum(r["counts"].get(artefact, 0) for r in results)
        assert builds == 1, (artefact, results)
    assert results[0]["fid"] == results[1]["fid"]  # the same classifier and reference features
