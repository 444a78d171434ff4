"""MLX-native model folders (written by :mod:`mlx_model.convert`): read and load.

A folder holds ``config.json`` (the source's, with the values only tensors told resolved, and
a ``mobileo_mlx`` entry: format version, quantization, files), the SANA sub-configs, the
tokenizer, and one safetensors file per component with MLX parameter names and layouts --
already quantized (packed ``weight``, ``scales``, ``biases``) where the model is.  Loading is
``mx.load`` (lazy, memory-mapped; no float copy of a quantized layer) into a module given
the same quantized structure, as mlx-lm's ``load``.

    folder = MLXFolder.open(path)          # or open_model(path_or_id): either kind
    folder.load_into(module, "dit", quantize=4)

Every MLX component fills its module with :func:`load_part`, which takes either kind (an MLX
folder or an original checkpoint): the one place that branches on the two.  Opening a
``--model`` as either kind is :func:`open_model` (``weights.loading.hub.open_model`` knows
checkpoints only and is told about MLX folders here, explicitly).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from weights.mapping.checkpoint import CONFIG_FILE
from weights.core.components import QUANTIZED_PARTS
from weights.core.configs import MobileOConfig
from weights.core.errors import WeightsError
from weights.loading.hub import MLX_FOLDER_MARK

from mlx_model.support.quant import (QUANT_GROUP_SIZE, cast, finish_quantized, has_jit_layers, quantize_linears,
                                     quantized_modules)

FORMAT = "mobileo-mlx"
# 2: bf16 scales/biases, quantized embedding, bf16 floats, no VAE encoder; 3: the vision tower's and
# VAE decoder's matmul layers quantized too (``parts_quantization``)
FORMAT_VERSION = 3
META_KEY = MLX_FOLDER_MARK  # in config.json
QUANTIZED = QUANTIZED_PARTS  # the parts whose Linear layers -q quantizes: ("llm", "dit")


def is_mlx_folder(path: str | Path) -> bool:
    try:
        return META_KEY in json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


class MLXFolder:
    mlx_native = True

    def __init__(self, folder: Path, raw: dict):
        self.folder = folder
        self.raw = raw
        self.meta = raw[META_KEY]
        if self.meta.get("format") != FORMAT or self.meta.get("version") != FORMAT_VERSION:
            raise WeightsError(f"{folder} is an MLX folder of format {self.meta.get('format')!r} "
                               f"version {self.meta.get('version')!r}; this code reads {FORMAT} {FORMAT_VERSION}.",
                               fix="convert the model again: python -m mlx_model.convert --model SOURCE --out DIR.")

    @classmethod
    def open(cls, folder: str | Path) -> "MLXFolder":
        folder = Path(folder).expanduser()
        return cls(folder, json.loads((folder / CONFIG_FILE).read_text()))

    @cached_property
    def config(self) -> MobileOConfig:
        cfg = MobileOConfig.from_checkpoint_config(self.raw, str(self.folder / CONFIG_FILE), sana_folder=self.folder)
        t = self.meta.get("mcp_temperature")
        return cfg if t is None else replace(cfg, mcp=cfg.mcp.replace(temperature=t))

    @property
    def quantization(self) -> dict:
        """{"bits": 0|4|8, "group_size": int}: the ``-q`` the folder was made with (mlx-lm's
        ``quantization`` entry; what ``check_quantize`` compares a request with).  The bits of
        each part are in ``parts_quantization`` (:meth:`part_quantization`)."""
        return self.meta["quantization"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder

    def part_quantization(self, component: str) -> dict:
        """{"bits", "group_size"} of ``component``'s quantized layers, as the converter recorded
        every quantized part (``quant.part_bits``); a part it does not list is float (bits 0)."""
        return self.meta["parts_quantization"].get(component, {"bits": 0, "group_size": self.quantization["group_size"]})

    def has(self, component: str) -> bool:
        return component in self.meta["files"]

    def check_quantize(self, quantize: int, group_size: int = QUANT_GROUP_SIZE) -> None:
        """A folder quantized otherwise than asked is an error, never a silent re-quantization."""
        q = self.quantization
        if quantize != q["bits"] or (quantize and group_size != q["group_size"]):
            have = f"{q['bits']}-bit, group {q['group_size']}" if q["bits"] else "float"
            wanted = f"{quantize}-bit, group {group_size}" if quantize else "float (-q 0)"
            raise WeightsError(f"{self.folder} holds {have} weights but {wanted} was asked for.",
                               fix=f"pass -q {q['bits']}, or convert the source again with "
                                   f"python -m mlx_model.convert --quantize {quantize} --out NEW_DIR.")

    def load_into(self, module, component: str, quantize: int = 0, dtype=None,
                  dequantize: bool | None = None, keep_stored: tuple[str, ...] = (), prefix: str = ""):
        """Fill ``module`` (float structure, as built from the config) with ``component``:
        ``mx.load`` (lazy) of the tensors under ``prefix`` (e.g. the VAE's ``decoder.``), the
        layers the file holds quantized (a ``.scales`` tensor, as mlx-lm's ``load``) made
        quantized in place -- their never-evaluated float weights are replaced, not computed --
        then a strict ``load_weights``; float parameters cast to ``dtype``, except quantized
        layers' scales/biases (bf16 as stored) and those named in ``keep_stored`` (dotted
        parameter paths), which keep the folder's dtype."""
        import mlx.nn as nn

        if not self.has(component):
            raise WeightsError(f"{self.folder} holds no {component} weights.",
                               fix="convert the model again with mobileo-convert (python -m mlx_model.convert).")
        if component in QUANTIZED:
            self.check_quantize(quantize, self.quantization["group_size"])
        q = self.part_quantization(component)
        weights = self._read(component, prefix)
        if q["bits"] and any(k.endswith(".scales") for k in weights):
            nn.quantize(module, group_size=q["group_size"], bits=q["bits"],
                        class_predicate=lambda p, m: hasattr(m, "to_quantized") and f"{p}.scales" in weights)
        try:
            module.load_weights(list(weights.items()), strict=True)
        except ValueError as e:
            raise WeightsError(f"{self.folder / self.meta['files'][component]} does not match the {component} "
                               f"model: {str(e).splitlines()[0]}",
                               fix="convert the model again with this version of mobileo-convert.") from None
        import mlx.core as mx

        cast(module, mx.float32 if dtype is None else dtype, keep_stored)  # as the checkpoint path
        if quantized_modules(module):
            finish_quantized(module, dequantize, dtype)
        return module

    def _read(self, component: str, prefix: str = "") -> dict:
        import mlx.core as mx

        path = self.folder / self.meta["files"][component]
        if not path.is_file():
            raise WeightsError(f"the MLX folder {self.folder} lists {path.name} for its {component} weights, but "
                               "the file is missing.", fix="copy the whole folder again, or convert the model again "
                               "with mobileo-convert.")
        try:
            weights = mx.load(str(path))
        except Exception as e:  # corrupt file
            raise WeightsError(f"cannot read {path} ({type(e).__name__}).",
                               fix="convert the model again with mobileo-convert.") from None
        return {k: v for k, v in weights.items() if k.startswith(prefix)} if prefix else weights


FOLDER_KIND = (is_mlx_folder, MLXFolder.open)  # for weights.loading.hub.open_model(kinds=...)


def open_model(model: str, revision: str | None = None):
    """``--model`` (hub id, folder or ``demo``) opened as an MLX folder when it is one, else as
    a checkpoint (:class:`weights.mapping.checkpoint.Checkpoint`).  Every MLX command and
    pipeline opens its model here."""
    from weights.loading.hub import open_model as _open

    return _open(model, revision=revision, kinds=(FOLDER_KIND,))


def native(ckpt) -> bool:
    return getattr(ckpt, "mlx_native", False)


def load_part(module, ckpt, part: str, *, dtype=None, tensors=None, used: str | None = None, keys=None,
              quantize: int = 0, group_size: int = QUANT_GROUP_SIZE, dequantize: bool | None = None,
              keep_stored: tuple[str, ...] = (), embeddings: bool = False):
    """Fill ``module`` with checkpoint part ``part`` (``weights.core.components.CHECKPOINT_PARTS``)
    and return it evaluated, in inference mode, its ``eval_blocks`` set: whether the component
    evaluates block by block because it holds JIT layers (:func:`quant.has_jit_layers`).
    The one loader of both sources:

    * an MLX folder (``ckpt`` from :func:`open_model`): ``mx.load`` into the module, quantized
      as the folder is (``quantize`` / ``group_size`` are checked against it, never re-applied),
      floats cast to ``dtype`` except ``keep_stored``;
    * a checkpoint, or explicit ``tensors`` (part-local, numpy; ``ckpt`` may then be None):
      mapped to MLX names (then ``keys``, e.g. mlx-lm's ``sanitize``), shape-checked, cast to
      ``dtype``, Linear layers quantized to ``quantize`` bits (``dequantize``: see
      :func:`mlx_model.support.quant.quantize_linears`; ``embeddings``: the Embedding tables
      too, as mlx-lm -- the LLM's).

    ``used``: only the part-local keys under this prefix, without those inference never
    reads (``Checkpoint.load_used``; e.g. ``Component.prefix`` of the VAE decoder); None: all.
    """
    import mlx.core as mx

    from weights.mapping.mlx_map import load_component

    if tensors is None and native(ckpt):  # pre-converted MLX folder: mx.load, no float copy
        ckpt.load_into(module, part, quantize, dtype, dequantize, keep_stored=keep_stored, prefix=used or "")
    else:
        if tensors is None and used is not None:
            tensors = ckpt.load_used(part, used)
        load_component(module, ckpt, part, tensors=tensors, keys=keys)
        cast(module, dtype)
        quantize_linears(module, quantize, group_size, dequantize, embeddings=embeddings, dtype=dtype)
    module.eval()
    module.eval_blocks = has_jit_layers(module)
    mx.eval(module.parameters())
    return module
