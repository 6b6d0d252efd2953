"""Class accuracy: how often a domain classifier agrees with the class an image was generated for.

The usual check of class-conditional sampling and guidance (higher guidance -> higher accuracy,
lower diversity), with the same cached classifier that serves as the ``domain:<dataset>`` extractor.
"""

from __future__ import annotations

import torch

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.metrics.extractors import get_extractor
from bench.metrics.images import check_compatible, check_images


@torch.no_grad()
def class_accuracy(
    images: torch.Tensor, labels: torch.Tensor, extractor: str, *, data: DataSpec | None = None,
    device: str = "cpu", batch_size: int = 256, run_name: str | None = None,
) -> float:
    """Fraction of ``images`` (uint8 ``[N, C, H, W]``) that ``extractor`` (``"domain:<dataset>"``)
    classifies as ``labels`` (int ``[N]``)."""
    who = f"run {run_name!r}" if run_name else "class_accuracy"
    images = check_images(images, who, "images")
    if not isinstance(extractor, str) or not extractor.startswith("domain:"):
        raise BenchError(f"{who}: class accuracy needs a domain classifier, extractor='domain:<dataset>', "
                         f"got {extractor!r}")
    ext = get_extractor(extractor, image_size=int(images.shape[-1]), data=data, where=f"{who}: extractor")
    check_compatible(ext, images, who, "images")
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if len(labels) != len(images):
        raise BenchError(f"{who}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= ext.num_logits):
        raise BenchError(f"{who}: labels must lie in [0, {ext.num_logits}) for {ext.name}, got "
                         f"[{int(labels.min())}, {int(labels.max())}] (the null label is not a class)")
    net = ext.build((ext.logits_layer,), device=device)
    hits = 0
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(device)
        (logits,) = net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        hits += int((logits.argmax(1).cpu() == labels[s : s + batch_size]).sum())
    return hits / len(images)
