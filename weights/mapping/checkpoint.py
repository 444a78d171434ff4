"""A merged Mobile-O checkpoint on disk: file discovery, component split, lazy loading.

    ckpt = Checkpoint.open(folder)
    ckpt.config                  # MobileOConfig, with the values the checkpoint decides
    ckpt.load("dit")             # {local key: np.ndarray float32}, reads only DiT tensors
    ckpt.check_shapes("dit", expected)   # clear error naming key, file and both shapes
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from weights.core.configs import MobileOConfig, read_json
from weights.core.errors import WeightsError
from weights.mapping.layout import COMPONENTS, Split, checkpoint_key, drop_unused, split_keys
from weights.mapping.safetensors_io import SafetensorsFile

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def discover_files(folder: Path) -> dict[str, Path]:
    """{tensor key: file} from an index (sharded) or the safetensors files present."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise WeightsError(f"{index} is not a valid safetensors index (no weight_map).",
                               fix="re-download the model.") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise WeightsError(f"{folder}: shard {missing[0]} listed in {INDEX_FILE} is missing"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}.",
                               fix="re-download the model; the download was incomplete.")
        return {k: folder / f for k, f in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder} has no {SINGLE_FILE} and no {INDEX_FILE}.",
                           fix="point --model at the folder holding the model's safetensors.")
    if len(files) > 1 and not (folder / SINGLE_FILE).is_file():
        raise WeightsError(f"{folder} has {len(files)} safetensors files but no {INDEX_FILE}.",
                           fix="restore the index file that came with the shards.")
    path = folder / SINGLE_FILE if (folder / SINGLE_FILE).is_file() else files[0]
    return {k: path for k in SafetensorsFile(path).tensors}


class Checkpoint:
    """Read-only view of one checkpoint folder."""

    def __init__(self, folder: Path, key_files: dict[str, Path]):
        self.folder = folder
        self.key_files = key_files
        self._files: dict[Path, SafetensorsFile] = {}
        for path in sorted(set(key_files.values())):
            self._files[path] = SafetensorsFile(path)
        for key, path in key_files.items():
            if key not in self._files[path].tensors:
                raise WeightsError(f"{path} lacks tensor {key!r} that {INDEX_FILE} places there.",
                                   fix="re-download the model; the shard does not match the index.")
        self.split: Split = split_keys(key_files, source=str(folder))

    @classmethod
    def open(cls, folder: str | Path) -> "Checkpoint":
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise WeightsError(f"{folder} is not a folder.", fix="pass a model folder, hub id or 'demo'.")
        if not (folder / CONFIG_FILE).is_file():
            raise WeightsError(f"{folder} has no {CONFIG_FILE}.",
                               fix="point --model at the folder holding config.json and the safetensors.")
        return cls(folder, discover_files(folder))

    # ------------------------------------------------------------------ structure
    def info(self, key: str):
        return self._files[self.key_files[key]].tensors[key]

    def keys(self, component: str) -> list[str]:
        """Local keys of one component."""
        self._check_component(component)
        return sorted(self.split.components[component])

    def shapes(self, component: str) -> dict[str, tuple[int, ...]]:
        return {k: self.info(ck).shape for k, ck in self.split.components[component].items()}

    def has(self, component: str) -> bool:
        return bool(self.split.components.get(component))

    def file_of(self, component: str, local: str) -> Path:
        return self.key_files[checkpoint_key(component, local)]

    def _check_component(self, component: str):
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; one of {COMPONENTS}")

    # ------------------------------------------------------------------ tensors
    def load(self, component: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """{local key: array} for one component, read lazily; floating point becomes float32."""
        self._check_component(component)
        comp = self.split.components[component]
        if not comp:
            raise WeightsError(f"{self.folder} holds no {component} tensors.",
                               fix="use a full Mobile-O checkpoint (it has llm, vision, projector, mcp, dit, vae).")
        wanted = comp if keys is None else {k: comp[k] for k in keys}
        return {k: self._files[self.key_files[ck]].get(ck) for k, ck in wanted.items()}

    def used_keys(self, component: str, prefix: str = "") -> list[str]:
        """The local keys an inference module reads: under ``prefix`` (e.g.
        ``layout.VAE_DECODER``), without the ones inference never reads (``layout.UNUSED``)."""
        return list(drop_unused(component, dict.fromkeys(k for k in self.keys(component) if k.startswith(prefix))))

    def load_used(self, component: str, prefix: str = "") -> dict[str, np.ndarray]:
        """What an inference module loads: the tensors of :meth:`used_keys`."""
        return self.load(component, self.used_keys(component, prefix))

    def check_shapes(self, component: str, expected: Mapping[str, tuple[int, ...]],
                     got: Mapping[str, tuple[int, ...]] | None = None) -> None:
        """Compare a component's tensors with what a model built from the config expects.

        ``got`` defaults to the shapes on disk; pass mapped shapes when a transform
        changed them (same keys).  Raises naming the checkpoint key and its file.
        """
        got = self.shapes(component) if got is None else got
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        fix = "the checkpoint does not match its config.json; re-download it or fix the config."
        if missing:
            raise WeightsError(f"{self.folder}: {component} tensor "
                               f"{checkpoint_key(component, missing[0])!r} is missing"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}.", fix=fix)
        if extra:
            raise WeightsError(f"{self.file_of(component, extra[0])}: unexpected {component} tensor "
                               f"{checkpoint_key(component, extra[0])!r}"
                               f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}.", fix=fix)
        for k in sorted(expected):
            if tuple(got[k]) != tuple(expected[k]):
                raise WeightsError(
                    f"{self.file_of(component, k)}: tensor {checkpoint_key(component, k)!r} has shape "
                    f"{list(got[k])} but the {component} config expects {list(expected[k])}.", fix=fix)

    # ------------------------------------------------------------------ config
    @cached_property
    def config(self) -> MobileOConfig:
        """config.json + SANA configs, with the values only the tensors can tell."""
        raw = read_json(self.folder / CONFIG_FILE)
        shapes = self.shapes("llm")
        if "model.embed_tokens.weight" in shapes:
            raw = {**raw, "vocab_size": shapes["model.embed_tokens.weight"][0]}
        if self.has("llm"):
            raw["tie_word_embeddings"] = "lm_head.weight" not in shapes
        cfg = MobileOConfig.from_checkpoint_config(raw, str(self.folder / CONFIG_FILE),
                                                   sana_folder=self.folder)
        if "temperature" in self.split.components["mcp"]:
            t = float(self.load("mcp", ["temperature"])["temperature"].reshape(()))
            cfg = replace(cfg, mcp=cfg.mcp.replace(temperature=t))
        return cfg

    @property
    def tokenizer_dir(self) -> Path:
        if not (self.folder / "tokenizer.json").is_file():
            raise WeightsError(f"{self.folder} has no tokenizer.json.",
                               fix="copy the tokenizer files that came with the model into this folder.")
        return self.folder

    def close(self):
        for f in self._files.values():
            f.close()
