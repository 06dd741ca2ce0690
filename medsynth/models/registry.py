"""Registry of GAN variants by name (in the manner of torchvision's ``register_model``)."""

from __future__ import annotations

import importlib
from typing import Callable

from medsynth.errors import MedsynthError

_REGISTRY: dict[str, type] = {}

#: Modules of ``medsynth.models`` that are infrastructure, not variants.
_NOT_VARIANTS = {"augment", "base", "layers", "registry"}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`~medsynth.models.base.GANVariant` findable by ``name``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    """Import every variant module in this package (one file per variant) so it registers."""
    import pkgutil

    import medsynth.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in _NOT_VARIANTS and not info.name.startswith("_"):
            importlib.import_module(f"medsynth.models.{info.name}")


def list_models() -> list[str]:
    """Names of all registered variants, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_model(name: str) -> type:
    """The variant class registered as ``name``."""
    _load_builtins()
    if name not in _REGISTRY:
        raise MedsynthError("--model", f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(cfg):
    """Instantiate the variant named by ``cfg.name`` (a :class:`~medsynth.config.ModelConfig`)."""
    return get_model(cfg.name)(cfg)
