"""Log a study's runs to MLflow exactly as bench.tracking lays them out (the tracking contract),
with synthetic metrics: the report tests' store, written through the real mlflow API."""

from __future__ import annotations

import io
from pathlib import Path


def png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def log_run(mlflow, study: str, cfg, kind: str, key: str, status: str = "FINISHED", metrics=None,
            tmp: Path | None = None) -> str:
    """One run of ``kind`` for ``cfg`` (tags, params, protocol tags, metrics, a samples.png when
    ``tmp`` is given); ``status`` FAILED also sets bench.error. Returns the run id."""
    with mlflow.start_run(run_name=f"{kind}-{key[:6]}") as run:
        mlflow.set_tags({"bench.key": key, "bench.train_key": cfg.train_key(), "bench.study": study,
                         "bench.kind": kind, "bench.label": f"{kind} seed={cfg.seed}"})
        mlflow.log_params({k: str(v) for k, v in cfg.flat().items()})
        if kind == "eval":
            mlflow.set_tags({"protocol.num_samples": "100", "protocol.extractor": "domain:digits",
                             "protocol.weights_sha256": "ab" * 32, "protocol.reference": "digits:test",
                             "protocol.backend": "torch-fidelity"})
        if metrics:
            mlflow.log_metrics(metrics)
        if tmp is not None:
            (tmp / "samples.png").write_bytes(png(hash(key) % 1000))
            mlflow.log_artifact(str(tmp / "samples.png"))
        if status == "FAILED":
            mlflow.set_tag("bench.error", "RuntimeError: NaN loss at step 7")
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id
