"""Samplers: one module each, registered on import (``bench/diffusion/samplers/<name>.py``).

Adding a sampler is one file here that decorates its function with
:func:`~bench.diffusion.samplers.registry.register_sampler`; the contract tests run every entry.
"""

import importlib
import pkgutil

from bench.diffusion.samplers.registry import (
    SAMPLERS,
    Denoiser,
    Option,
    check_options,
    declared_options,
    register_sampler,
    sampler_nfe,
    steps_for_nfe,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["SAMPLERS", "Denoiser", "Option", "check_options", "declared_options", "register_sampler", "sampler_nfe",
           "steps_for_nfe"]
