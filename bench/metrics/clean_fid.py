"""FID through clean-fid's own pipeline (Parmar et al. 2022, "On Aliased Resizing and Surprising
Subtleties in GAN Evaluation"): images as PNG files, read by its ``ResizeDataset``, resized with
its "clean" rule (PIL bicubic on float images, no quantization after), features by its own
Inception (the StyleGAN2 torchscript file) or, for ``domain:<dataset>``, by our classifier as
clean-fid's ``custom_feat_extractor``, and its Fréchet distance (``fid_from_feats``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import BenchError

INCEPTION_FILE = "inception-2015-12-05.pt"  # the file clean-fid downloads (StyleGAN2-ADA's metrics net)
DIR_ENV = "BENCH_CLEANFID_DIR"


def inception_dir() -> Path:
    """Where clean-fid's Inception file is looked for: ``$BENCH_CLEANFID_DIR``, else clean-fid's own /tmp."""
    return Path(os.environ.get(DIR_ENV, "/tmp")).expanduser()


def check_inception(where: str) -> None:
    """Offline, clean-fid's Inception must already be on disk (it is not torch-fidelity's file)."""
    from bench.metrics.extractors import can_download

    if not (inception_dir() / INCEPTION_FILE).is_file() and not can_download():
        raise BenchError(f"{where}: fid_backend 'clean-fid' with extractor 'inception' needs clean-fid's own Inception "
                         f"file {INCEPTION_FILE} (not torch-fidelity's), and this machine is offline; put it in "
                         f"{inception_dir()} (or point ${DIR_ENV} at its folder), or use fid_backend: torch-fidelity")


class _DomainFeatures(torch.nn.Module):
    """A domain classifier as clean-fid's feature extractor: float [B, 3, H, W] in [0, 255] -> features."""

    def __init__(self, weights_path: str, device: torch.device) -> None:
        super().__init__()
        import bench.metrics.domain as domain

        ckpt = domain.load_checkpoint(weights_path)
        self.net = domain.build_net(ckpt).to(device).eval()
        self.gray = int(ckpt["channels"]) == 1

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1.0
        return self.net(x.mean(dim=1, keepdim=True) if self.gray else x)[0]


def _write_pngs(images: torch.Tensor, folder: Path) -> str:
    from PIL import Image

    folder.mkdir(parents=True)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(arr):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:07d}.png")
    return str(folder)


def clean_fid(ext: Any, images: torch.Tensor, ref: torch.Tensor, device: str, batch_size: int,
              protocol: dict[str, Any]) -> float:
    """FID of uint8 ``images`` against uint8 ``ref`` by clean-fid's pipeline (see the module docstring)."""
    from cleanfid import fid as cf
    from cleanfid.resize import make_resizer

    dev = torch.device(device)
    if ext.name.startswith("domain:"):
        model: Any = _DomainFeatures(ext.weights_path, dev)
        resize = make_resizer("PIL", False, "bicubic", (ext.input_size, ext.input_size))  # clean-fid's "clean" rule
        protocol["cleanfid_features"] = f"{ext.name} (custom_feat_extractor)"
    else:
        from cleanfid.inception_torchscript import InceptionV3W

        check_inception("eval.extractor")
        folder = inception_dir()
        model = InceptionV3W(str(folder), download=not (folder / INCEPTION_FILE).is_file()).to(dev).eval()
        resize = None  # clean mode: PIL bicubic to 299 x 299
        protocol["cleanfid_features"] = f"clean-fid torchscript Inception ({INCEPTION_FILE})"
    protocol["cleanfid_mode"] = "clean"
    with tempfile.TemporaryDirectory(prefix="bench-cleanfid-") as tmp:
        feats = [cf.get_folder_features(_write_pngs(x, Path(tmp) / name), model, num_workers=0, batch_size=batch_size,
                                        device=dev, mode="clean", custom_fn_resize=resize, verbose=False)
                 for name, x in (("generated", images), ("reference", ref))]
    return float(cf.fid_from_feats(*feats))
