import os

import pytest
import torch

from bench.core.allocator import tune_allocator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One intra-op thread: the tests run tiny networks, where extra OpenMP threads only spin against
# the other processes the suite starts (workers, servers) and cost up to 10x.
torch.set_num_threads(1)
tune_allocator()  # as the bench's own workers do: activation buffers reused, not page-faulted in anew


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write caches into the repository."""
    if "BENCH_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bench_cache"))


# The smallest DINOv2 and CLIP architectures, with random weights in their official file formats:
# fd_dinov2 and cmmd run through the real loading path without the released weights.
FOUNDATION_MODELS = {"dinov2": "dinov2-vit-s-14", "clip": "clip-vit-b-32"}


@pytest.fixture(scope="session")
def foundation_weights(tmp_path_factory) -> dict[str, str]:
    """``{extractor name: random-weights file}`` for ``FOUNDATION_MODELS``, written once per session."""
    import warnings

    from bench.metrics.foundation import official_file, save_random_weights

    folder = tmp_path_factory.mktemp("foundation_weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return {name: str(save_random_weights(name, folder / official_file(name)))
                for name in FOUNDATION_MODELS.values()}
