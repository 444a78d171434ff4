"""The Core ML components in pipeline order (the bundles of ``weights.core.components``); each
module ``components/<name>.py`` exposes ``build_spec(ckpt, seed=0)``.

One recipe file per component (its torch module, example inputs, upstream reference); the
bundle's I/O comes from ``weights.bundles.contract`` and the blocks components share from
``coreml_convert.ane`` / ``coreml_convert.ane_qwen2``.  Components never import each other.

``REGISTRY[name]`` imports the module on first use, so one missing or broken component
module does not stop the others from converting.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

from weights.core.components import BUNDLES


class _LazyModules(Mapping):
    def __init__(self, names: tuple[str, ...]):
        self._names = names
        self._loaded: dict[str, ModuleType] = {}

    def __getitem__(self, name: str) -> ModuleType:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = importlib.import_module(f"{__name__}.{name}")
        return self._loaded[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"REGISTRY({', '.join(self._names)})"


REGISTRY: Mapping[str, ModuleType] = _LazyModules(BUNDLES)  # pipeline order
