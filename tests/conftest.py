import os

import pytest
import torch

from bench.core.allocator import tune_allocator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One intra-op thread: the tests run tiny networks, where extra OpenMP threads only spin against
# the other processes the suite starts (workers, servers) and cost up to 10x.
torch.set_num_threads(1)
tune_allocator()  # as the bench's own workers do: activation buffers reused, not page-faulted in anew


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Tests never read or write a cache outside this test process's own temporary folder: not the
    repository's ``.bench_cache``, not a ``$BENCH_CACHE_DIR`` of the shell (a user's real cache, shared
    with their runs and with the other xdist worker). Set for the whole session, so module fixtures
    (trained models, Ray clusters) see it too. Nor a tracking server or Ray cluster the shell names."""
    cache = str(tmp_path_factory.getbasetemp() / "bench_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", cache)
        for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):  # the shell's server or cluster is not the tests'
            mp.delenv(var, raising=False)
        yield cache


@pytest.fixture(autouse=True)
def _isolated_cache(_session_cache, monkeypatch):
    """Each test runs on the session's cache unless a module fixture of its file chose its own
    (e.g. test_metrics' one cache where the digits classifier is trained once)."""
    if not os.environ.get("BENCH_CACHE_DIR"):
        monkeypatch.setenv("BENCH_CACHE_DIR", _session_cache)


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
