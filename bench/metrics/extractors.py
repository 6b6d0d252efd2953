"""Feature extractors, resolved by name and registered with torch-fidelity.

``EXTRACTORS`` holds factories: ``inception`` (torch-fidelity's Inception-v3 FID network, weights
downloaded by torch-fidelity or read from a local file) and ``domain`` (a classifier trained on a
dataset, named ``domain:<dataset>``). A factory returns an :class:`Extractor`: the torch-fidelity
registry name to compute with, the weights file and its sha256 (the protocol's identity of the
features), the feature size and the input it accepts.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.core.network import can_reach
from bench.core.paths import file_sha256
from bench.core.registry import Registry, UnknownChoiceError, did_you_mean
from bench.metrics.domain import FEATURE_DIM as DOMAIN_FEATURE_DIM

# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (read from its source; kept here so
# validation needs no torch-fidelity import).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_ENV = "BENCH_INCEPTION_WEIGHTS"
INCEPTION_TF_NAME = "inception-v3-compat"  # torch-fidelity's own registry name
DOMAIN_TF_PREFIX = "bench-domain"

# Images each domain extractor has pushed through its network in this process, by torch-fidelity name
# (lets tests and benchmarks see that cached reference features were not recomputed).
FORWARD_IMAGES: Counter[str] = Counter()


@dataclass(frozen=True)
class Extractor:
    """A resolved feature extractor: what to tell torch-fidelity and what to record in the protocol."""

    name: str  # as requested: "inception", "domain:digits"
    tf_name: str  # name in torch-fidelity's FEATURE_EXTRACTORS_REGISTRY
    weights_path: str
    weights_sha256: str
    feature_dim: int
    num_logits: int
    channels: int  # input channels it is built for (3: 1-channel images are repeated)
    input_size: int | None  # the one size it accepts; None: any (it resizes internally)
    resize: str  # the protocol's resizing rule
    feature_layer: str  # torch-fidelity feature name for FID / KID / precision-recall
    logits_layer: str  # ... for IS and class accuracy
    accuracy: float | None = None  # domain classifiers: test accuracy

    @property
    def slug(self) -> str:
        """A file-name-safe identity: name and weights hash."""
        return f"{self.name.replace(':', '-')}-{self.weights_sha256[:12]}"

    def tf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments selecting this extractor in ``torch_fidelity.calculate_metrics``."""
        return {"feature_extractor": self.tf_name, "feature_extractor_weights_path": self.weights_path}

    def build(self, features: tuple[str, ...] | None = None, device: str = "cpu") -> Any:
        """The torch-fidelity module (``FeatureExtractorBase``) producing ``features``."""
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        feats = list(features or (self.feature_layer,))
        module = FEATURE_EXTRACTORS_REGISTRY[self.tf_name](self.tf_name, feats, **self.tf_kwargs())
        return module.eval().requires_grad_(False).to(device)


EXTRACTORS: Registry[Callable[..., Extractor]] = Registry("feature extractor")


def resolve_name(name: str, where: str = "eval.extractor") -> tuple[str, str | None]:
    """Split ``"domain:digits"`` into ("domain", "digits") and check both parts (did-you-mean)."""
    from bench.data import DATASETS

    if not isinstance(name, str):
        raise BenchError(f"{where}: an extractor name is a string, got {name!r}")
    base, sep, arg = name.partition(":")
    if base not in EXTRACTORS:
        choices = [
            f"{n}:{d}" if EXTRACTORS.meta(n).get("takes_dataset") else n
            for n in EXTRACTORS.names() for d in (DATASETS.names() if EXTRACTORS.meta(n).get("takes_dataset") else [""])
        ]
        hint = did_you_mean(name, choices, cutoff=0.5)
        raise UnknownChoiceError(
            f"unknown feature extractor {name!r} at {where}.{hint} Available: {', '.join(choices)}."
        )
    takes = bool(EXTRACTORS.meta(base).get("takes_dataset"))
    if takes and not arg:
        raise BenchError(f"{where}: extractor {base!r} needs a dataset, e.g. '{base}:digits' "
                         f"(datasets: {', '.join(DATASETS.names())})")
    if not takes and sep:
        raise BenchError(f"{where}: extractor {base!r} takes no ':<argument>', got {name!r}")
    if takes:
        DATASETS.check(arg, f"{where} (the dataset after '{base}:')")
    return base, (arg or None)


def extractor_meta(name: str, where: str = "eval.extractor") -> dict[str, Any]:
    """Registry metadata (feature_dim, channels, ...) of an extractor name; no heavy work."""
    return EXTRACTORS.meta(resolve_name(name, where)[0])


def get_extractor(
    name: str, *, image_size: int, weights: str | None = None, data: DataSpec | None = None,
    where: str = "eval.extractor", progress: bool = True,
) -> Extractor:
    """Resolve ``name`` to a ready :class:`Extractor` (downloads / trains / loads as needed)."""
    base, arg = resolve_name(name, where)
    factory = EXTRACTORS.get(base)
    return factory(arg, image_size=image_size, weights=weights, data=data, progress=progress)


# --- inception ------------------------------------------------------------------------------------
def inception_hub_path() -> Path:
    """Where torch-fidelity's download of the weights lands (``torch.hub`` checkpoints folder)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(INCEPTION_URL).path)


def local_inception_weights(weights: str | None = None, where: str = "eval.inception_weights") -> Path | None:
    """The weights file to use without any network: the argument, ``$BENCH_INCEPTION_WEIGHTS``, or
    torch-fidelity's earlier download; None when there is none. A named file that is missing raises."""
    given, src = (weights, where) if weights else (os.environ.get(INCEPTION_ENV) or None, f"${INCEPTION_ENV}")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise BenchError(f"{src}: Inception weights file {path} does not exist. {inception_help()}")
        return path
    hub = inception_hub_path()
    return hub if hub.is_file() else None


def inception_help() -> str:
    """How to get the Inception weights onto an offline machine."""
    return (
        f"On a machine that is online download {INCEPTION_URL} (about 91 MB; torch-fidelity's Inception-v3 "
        f"FID weights), copy it here and set eval.inception_weights: /path/to/that.pth (or export "
        f"{INCEPTION_ENV}=/path/to/that.pth), or put it at {inception_hub_path()} where torch-fidelity looks."
    )


def can_download(url: str = INCEPTION_URL) -> bool:
    """False when ``$BENCH_OFFLINE`` is set or the host cannot be reached (one TCP connect, cached)."""
    return can_reach(url)


def _inception(arg: str | None, *, image_size: int, weights: str | None, data: DataSpec | None,
               progress: bool) -> Extractor:
    path = local_inception_weights(weights)
    if path is None:
        path = _download_inception(progress)
    return Extractor(
        name="inception", tf_name=INCEPTION_TF_NAME, weights_path=str(path), weights_sha256=file_sha256(path),
        feature_dim=2048, num_logits=1008, channels=3, input_size=None,
        resize="torch-fidelity Inception-v3: bilinear (TensorFlow-1 compatible) to 299x299 inside the network; "
              "1-channel images repeated to 3",
        feature_layer="2048", logits_layer="logits_unbiased",
    )


def _download_inception(progress: bool) -> Path:
    if not can_download():
        raise BenchError(
            "feature extractor 'inception' needs torch-fidelity's Inception-v3 weights and this machine is "
            f"offline (no eval.inception_weights, no ${INCEPTION_ENV}, nothing at {inception_hub_path()}). "
            + inception_help()
        )
    import torch.hub

    dst = inception_hub_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:  # the file name carries the sha256 prefix torch.hub checks: 6726825d
        torch.hub.download_url_to_file(INCEPTION_URL, str(dst), hash_prefix="6726825d", progress=progress)
    except Exception as e:  # URLError, HTTPError, timeouts
        raise BenchError(
            f"could not download the Inception weights ({type(e).__name__}: {e}). " + inception_help()
        ) from e
    return dst


def save_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a state dict of torch-fidelity's Inception-v3 architecture with RANDOM weights.

    For tests and benchmarks offline: same shapes and compute as the real network, meaningless
    features. The constructor always loads a state dict, so a subclass skips that one step.
    """
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
            return None  # keep PyTorch's default initialisation

    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = _Unloaded("random-inception", ["2048"], feature_extractor_weights_path=str(empty))
        for m in net.modules():  # He init keeps activations O(1) through ~95 conv layers (BN is identity)
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    from bench.core.paths import atomic_torch_save

    atomic_torch_save(net.state_dict(), path)
    return Path(path)


# --- domain classifier ----------------------------------------------------------------------------
def _domain(arg: str | None, *, image_size: int, weights: str | None, data: DataSpec | None,
            progress: bool) -> Extractor:
    import bench.metrics.domain as domain

    if arg is None:
        raise BenchError("extractor 'domain' needs a dataset: 'domain:<dataset>'")
    path = domain.get_classifier(arg, image_size, data=data, progress=progress)
    ckpt = domain.load_checkpoint(path)
    tf_name = register_domain_with_torch_fidelity()
    return Extractor(
        name=f"domain:{arg}", tf_name=tf_name, weights_path=str(path), weights_sha256=file_sha256(path),
        feature_dim=int(ckpt["feature_dim"]), num_logits=int(ckpt["num_classes"]), channels=int(ckpt["channels"]),
        input_size=int(ckpt["image_size"]),
        resize=f"none: images must be {ckpt['image_size']}x{ckpt['image_size']} (the classifier's training size; "
               f"references are loaded at that size with data.resize_filter)",
        feature_layer="features", logits_layer="logits", accuracy=float(ckpt["test_accuracy"]),
    )


@functools.lru_cache(maxsize=1)
def register_domain_with_torch_fidelity() -> str:
    """Register the domain-classifier extractor class with torch-fidelity (once); return its name.

    One class serves every dataset: torch-fidelity passes ``feature_extractor_weights_path`` (the
    checkpoint) to the constructor, and the checkpoint says which network to build.
    """
    import torch
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    import bench.metrics.domain as domain

    class DomainFeatureExtractor(FeatureExtractorBase):
        """uint8 ``[B, 3, H, W]`` -> ("features" ``[B, 64]``, "logits" ``[B, K]``) of a DomainNet."""

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise BenchError(f"{name}: pass feature_extractor_weights_path=<domain classifier checkpoint>")
            ckpt = domain.load_checkpoint(feature_extractor_weights_path)
            self.net = domain.build_net(ckpt)
            self.in_channels = int(ckpt["channels"])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
                raise ValueError(f"{self.name}: expecting uint8 [B, 3, H, W], got {getattr(x, 'shape', x)}")
            FORWARD_IMAGES[self.name] += int(x.shape[0])
            x = domain.to_unit(x)
            if self.in_channels == 1:  # the dataset wrapper repeats gray to 3 channels; undo exactly
                x = x.mean(dim=1, keepdim=True)
            feats, logits = self.net(x)
            out = {"features": feats, "logits": logits}
            return tuple(out[f] for f in self.features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    if DOMAIN_TF_PREFIX not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(DOMAIN_TF_PREFIX, DomainFeatureExtractor)
    return DOMAIN_TF_PREFIX


# --- helpers --------------------------------------------------------------------------------------
EXTRACTORS.register("inception", _inception, feature_dim=2048, channels=3, takes_dataset=False, resizes=True,
                    description="torch-fidelity Inception-v3 (FID weights, pool3 2048-d, 1008 logits)")
EXTRACTORS.register("domain", _domain, feature_dim=DOMAIN_FEATURE_DIM, channels=None, takes_dataset=True,
                    resizes=False,
                    description="CNN classifier trained on the dataset (64-d penultimate features, class logits)")


def _foundation(name: str) -> Callable[..., Extractor]:
    def factory(arg: str | None, *, image_size: int, weights: str | None, data: DataSpec | None,
                progress: bool) -> Extractor:
        from bench.metrics.foundation import extractor_fields

        return Extractor(**extractor_fields(name, weights, f"eval.feature_weights.{name}", progress))

    return factory


def _register_foundation() -> None:
    import bench.metrics.foundation as fm

    for name, (_, _, dim) in fm.DINOV2.items():
        EXTRACTORS.register(name, _foundation(name), feature_dim=dim, channels=3, takes_dataset=False, resizes=True,
                            family="dinov2", description=f"DINOv2 {name[7:].upper()} (Oquab et al. 2023), "
                            f"{dim}-d CLS token, EDM2 preprocessing; local weights {fm.official_file(name)}")
    for name, (_, dim, res) in fm.CLIP.items():
        EXTRACTORS.register(name, _foundation(name), feature_dim=dim, channels=3, takes_dataset=False, resizes=True,
                            family="clip", description=f"OpenAI CLIP image encoder {name[5:].upper()} at {res}px, "
                            f"{dim}-d normalised embedding (CMMD preprocessing); local weights {fm.official_file(name)}")


_register_foundation()
