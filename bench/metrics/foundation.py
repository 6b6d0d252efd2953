"""Foundation-model feature spaces: DINOv2 (FD_DINOv2, Stein et al. 2023) and CLIP (CMMD,
Jayasumana et al. 2024), as torch-fidelity feature extractors read from local weight files.

- ``dinov2-vit-{s,b,l,g}-14``: the official checkpoints (``dinov2_vitl14_pretrain.pth``) in timm's
  DINOv2 ViT. torch-fidelity 0.4 ships these names but builds them only through ``torch.hub`` from
  GitHub (no local file); ours reads the file. Preprocessing is EDM2's / dgm-eval's: uint8 -> [0, 1],
  bicubic with antialiasing to 224 x 224, ImageNet mean / std; the feature is the normalised CLS
  token, and the position embeddings are interpolated from the 37 x 37 training grid exactly as the
  reference model does at 224 (bicubic, scale (16 + 0.1) / 37, no antialiasing).
- ``clip-vit-b-32`` ... ``clip-vit-l-14-336px``: torch-fidelity's own CLIP extractor (OpenAI's
  TorchScript files), with CMMD's preprocessing (google-research/cmmd): bicubic resize of [0, 1]
  images to the model's resolution, CLIP mean / std, and the image embedding L2-normalised.

Weights: ``eval.feature_weights: {name: file}``, else the official file name in
``$BENCH_WEIGHTS_DIR`` or in torch.hub's checkpoints folder, else a download where online.
:func:`save_random_weights` writes a file of the right architecture with random weights (tests).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError

WEIGHTS_DIR_ENV = "BENCH_WEIGHTS_DIR"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}_pretrain.pth"
DINOV2 = {  # name -> (timm architecture, official arch name, feature dim)
    "dinov2-vit-s-14": ("vit_small_patch14_dinov2", "dinov2_vits14", 384),
    "dinov2-vit-b-14": ("vit_base_patch14_dinov2", "dinov2_vitb14", 768),
    "dinov2-vit-l-14": ("vit_large_patch14_dinov2", "dinov2_vitl14", 1024),
    "dinov2-vit-g-14": ("vit_giant_patch14_dinov2", "dinov2_vitg14", 1536),
}
DINOV2_SIZE, DINOV2_GRID = 224, 37  # EDM2's input size; the checkpoints' 518 / 14 position grid
CLIP = {  # name -> (OpenAI file name, embedding dim, input resolution)
    "clip-vit-b-32": ("ViT-B-32", 512, 224),
    "clip-vit-b-16": ("ViT-B-16", 512, 224),
    "clip-vit-l-14": ("ViT-L-14", 768, 224),
    "clip-vit-l-14-336px": ("ViT-L-14-336px", 768, 336),
}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TF_PREFIX = "bench-"  # our torch-fidelity registry names: bench-dinov2-vit-l-14, bench-clip-vit-b-32


def official_file(name: str) -> str:
    if name in DINOV2:
        return f"{DINOV2[name][1]}_pretrain.pth"
    return f"{CLIP[name][0]}.pt"


def official_url(name: str) -> str:
    if name in DINOV2:
        return DINOV2_URL.format(arch=DINOV2[name][1])
    from torch_fidelity.feature_extractor_clip import MODEL_URLS

    return MODEL_URLS[name]


def hub_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_help(name: str) -> str:
    return (f"On a machine that is online download {official_url(name) if name in DINOV2 else official_file(name)} "
            f"(the official {name} weights), copy it here and set eval.feature_weights: {{{name}: /path/to/"
            f"{official_file(name)}}}, or put it in ${WEIGHTS_DIR_ENV} or {hub_dir()}")


def local_weights(name: str, given: str | None, where: str) -> Path | None:
    """The weights file of extractor ``name`` without any network, or None."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise BenchError(f"{where}: weights file {path} of {name} does not exist. {weights_help(name)}")
        return path
    for folder in (os.environ.get(WEIGHTS_DIR_ENV), hub_dir()):
        if folder and (Path(folder).expanduser() / official_file(name)).is_file():
            return Path(folder).expanduser() / official_file(name)
    return None


def resolve_weights(name: str, given: str | None, where: str, progress: bool) -> Path:
    from bench.core.network import can_reach

    path = local_weights(name, given, where)
    if path is not None:
        return path
    if not can_reach(official_url(name)):
        raise BenchError(f"{where}: extractor {name!r} needs its weights and this machine is offline (nothing "
                         f"in eval.feature_weights, ${WEIGHTS_DIR_ENV} or {hub_dir()}). {weights_help(name)}")
    import torch.hub

    dst = hub_dir() / official_file(name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(official_url(name), str(dst), progress=progress)
    except Exception as e:  # URLError, HTTPError, timeouts
        raise BenchError(f"{where}: could not download {name} ({type(e).__name__}: {e}). {weights_help(name)}") from e
    return dst


# --- DINOv2 -----------------------------------------------------------------------------------
def _dinov2_pos_embed(pos: Any, grid: int) -> Any:
    """The reference model's interpolation of [1, 1 + M*M, D] position embeddings to ``grid``."""
    import torch
    import torch.nn.functional as F

    m = int(math.isqrt(pos.shape[1] - 1))
    if m == grid:
        return pos
    cls, patch = pos[:, :1], pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / m  # the DINOv2 code's interpolate_offset = 0.1, antialias off
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    return torch.cat((cls, patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)), dim=1)


def build_dinov2(name: str, weights_path: str) -> Any:
    """timm's DINOv2 ViT at 224 x 224 with an official checkpoint's weights (CLS-token features)."""
    import timm
    import torch
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = torch.load(weights_path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or "pos_embed" not in sd:
        raise BenchError(f"{weights_path}: not a DINOv2 checkpoint (no pos_embed); expected {official_file(name)}")
    sd = dict(sd, pos_embed=_dinov2_pos_embed(sd["pos_embed"], DINOV2_SIZE // 14))
    model = timm.create_model(DINOV2[name][0], pretrained=False, img_size=DINOV2_SIZE, num_classes=0)
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    return model.eval().requires_grad_(False)


def save_random_weights(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """A weights file of extractor ``name``'s architecture, in its official format, with random weights."""
    import torch

    from bench.core.paths import atomic_torch_save

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in DINOV2:
            import timm

            if name == "dinov2-vit-g-14":
                raise BenchError("random weights are written for the s / b / l DINOv2 models only")
            model = timm.create_model(DINOV2[name][0], pretrained=False, img_size=518, num_classes=0)
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            for k in [k for k in sd if k.endswith(".gamma")]:  # LayerScale: O(1) so random features differ
                sd[k] = torch.full_like(sd[k], 0.1)
            sd["mask_token"] = torch.zeros(1, DINOV2[name][2])
            atomic_torch_save(sd, path)
        elif name in CLIP:
            _save_random_clip(name, Path(path))
        else:
            raise BenchError(f"no random-weights writer for extractor {name!r}")
    return Path(path)


def _save_random_clip(name: str, path: Path) -> None:
    """OpenAI's format: a TorchScript archive whose state dict torch-fidelity's ``build_model`` reads."""
    import torch
    from torch_fidelity.feature_extractor_clip import CLIPVisual

    file, dim, res = CLIP[name]
    width, layers, patch = {"ViT-B-32": (768, 12, 32), "ViT-B-16": (768, 12, 16), "ViT-L-14": (1024, 24, 14),
                            "ViT-L-14-336px": (1024, 24, 14)}[file]
    sd = CLIPVisual(dim, res, layers, width, patch).state_dict()
    sd["text_projection"] = torch.randn(512 if dim == 512 else 768, dim)

    class Holder(torch.nn.Module):  # a module tree holding the tensors under their dotted names
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in sd.items():
        node = root
        *parents, leaf = key.split(".")
        for p in parents:
            if not hasattr(node, p):
                node.add_module(p, Holder())
            node = getattr(node, p)
        node.register_parameter(leaf, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(torch.jit.script(root), str(tmp))
    os.replace(tmp, path)


@functools.cache
def register_with_torch_fidelity(name: str) -> str:
    """Register our extractor class for ``name`` with torch-fidelity (once); return its registry name."""
    import torch
    import torch.nn.functional as F
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    def unit(x: torch.Tensor, size: int, mean: tuple, std: tuple, antialias: bool) -> torch.Tensor:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expecting uint8 [B, 3, H, W], got {getattr(x, 'shape', x)}")
        x = F.interpolate(x.float() / 255.0, size=(size, size), mode="bicubic", antialias=antialias)
        m, s = torch.tensor(mean, device=x.device)[:, None, None], torch.tensor(std, device=x.device)[:, None, None]
        return (x - m) / s

    class DinoV2Features(FeatureExtractorBase):
        """uint8 ``[B, 3, H, W]`` -> "dinov2" ``[B, D]`` (EDM2 / dgm-eval preprocessing)."""

        def __init__(self, tf_name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(tf_name, features_list)
            if feature_extractor_weights_path is None:
                raise BenchError(f"{tf_name}: pass feature_extractor_weights_path=<{official_file(name)}>")
            self.model = build_dinov2(name, feature_extractor_weights_path)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.model(unit(x, DINOV2_SIZE, IMAGENET_MEAN, IMAGENET_STD, antialias=True))
            return tuple(feats.float() for _ in self.features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("dinov2",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "dinov2"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    class ClipFeatures(FeatureExtractorCLIP):
        """torch-fidelity's CLIP network with CMMD's preprocessing and L2-normalised embeddings."""

        def __init__(self, tf_name: str, features_list: list[str], **kwargs: Any) -> None:
            # torch-fidelity checks the name against its own table: build under the CLIP name
            super().__init__(name, features_list, **kwargs)
            self.name = tf_name

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            emb = self.model.visual(unit(x, self.resolution, CLIP_MEAN, CLIP_STD, antialias=False)).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            return tuple(emb for _ in self.features_list)

    tf_name = TF_PREFIX + name
    if tf_name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(tf_name, DinoV2Features if name in DINOV2 else ClipFeatures)
    return tf_name


def extractor_fields(name: str, weights: str | None, where: str, progress: bool) -> dict[str, Any]:
    """The fields of ``name``'s :class:`bench.metrics.extractors.Extractor` (weights found or fetched)."""
    from bench.core.paths import file_sha256

    path = resolve_weights(name, weights, where, progress)
    if name in DINOV2:
        dim, layer = DINOV2[name][2], "dinov2"
        resize = "DINOv2 (EDM2 / dgm-eval): bicubic with antialiasing to 224x224, ImageNet mean/std, CLS token"
    else:
        dim, layer = CLIP[name][1], "clip"
        resize = (f"CLIP (CMMD): bicubic to {CLIP[name][2]}x{CLIP[name][2]}, CLIP mean/std, "
                  "image embedding L2-normalised")
    return dict(name=name, tf_name=register_with_torch_fidelity(name), weights_path=str(path),
                weights_sha256=file_sha256(path), feature_dim=dim, num_logits=0, channels=3, input_size=None,
                resize=resize + "; 1-channel images repeated to 3", feature_layer=layer, logits_layer=layer)
