"""``python -m mlx_model.convert --model X --quantize 4 --out DIR``: an MLX-native folder.

As ``mlx_lm.convert`` / mflux's saved models: the weights are written in MLX's own layout and
names, already quantized (packed ``weight``, ``scales``, ``biases`` for the LLM and DiT
Linear layers, group :data:`mlx_model.support.quant.QUANT_GROUP_SIZE`), one safetensors file per
component, with the configs, the tokenizer and a short model card.  Every MLX CLI and
pipeline takes the folder with ``--model DIR`` and loads it with ``mx.load`` (lazy, no float
copy); asking it for other quantization settings is an error, not a re-quantization.

Quantization runs on the fp32 upcast of the checkpoint (exact for bf16) and scales/biases
are stored in fp32, so a folder loads bit-identical to quantizing in memory on CPU; other
float tensors are stored as bf16 when the source was bf16 (lossless).  The folder is written
beside ``DIR`` and renamed into place: never half a folder.
"""

from __future__ import annotations

from mlx_model.interrupt import quiet_while_importing, ready

quiet_while_importing(__name__)  # Ctrl-C during the imports below: one word, no traceback

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from weights.core.components import CHECKPOINT_PARTS, mlx_file
from weights.mapping.checkpoint import CONFIG_FILE, TOKENIZER_FILES
from weights.core.errors import MobileOError, run_cli
from weights.loading.hub import DEFAULT_MODEL

from mlx_model.support.mlx_folder import FORMAT, FORMAT_VERSION, META_KEY
from mlx_model.support.quant import DEFAULT_QUANTIZE, GROUP_SIZES, QUANTIZE_CHOICES, QUANT_GROUP_SIZE, check_bits

__all__ = ["convert", "main"]
COMPONENTS = CHECKPOINT_PARTS  # one file each (weights.core.components.mlx_file)
CARD = "README.md"


def _modules(ckpt, quantize: int, group_size: int):
    """(component, module) pairs built from ``ckpt`` in fp32, LLM and DiT quantized (packed)."""
    import mlx.core as mx

    from mlx_model.components.dcae import AutoencoderDC
    from mlx_model.components.dit import SanaTransformer
    from mlx_model.components.llm import LanguageModel
    from mlx_model.components.mcp import MCP
    from mlx_model.components.multimodal import ImageEncoder

    yield "llm", LanguageModel.from_checkpoint(ckpt, quantize, group_size, mx.float32, dequantize=False).model
    yield "mcp", MCP.from_checkpoint(ckpt)
    yield "dit", SanaTransformer.from_checkpoint(ckpt, quantize, group_size, mx.float32, dequantize=False)
    yield "vae", AutoencoderDC.from_checkpoint(ckpt, encoder=True)
    enc = ImageEncoder.from_checkpoint(ckpt)
    yield "vision", enc.vision
    yield "projector", enc.projector


def _tensors(ckpt, component: str, module) -> dict:
    """The module's parameters to save: quantized parts as they are, other floats as bf16
    when every source tensor of the component is bf16."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    bf16 = all(ckpt.info(k).dtype == "BF16" for k in ckpt.split.components[component].values())
    quant = {name for name, m in module.named_modules() if isinstance(m, nn.QuantizedLinear)}
    out = {}
    for k, v in tree_flatten(module.parameters()):
        owner, _, leaf = k.rpartition(".")
        keep = owner in quant and leaf in ("weight", "scales", "biases")
        out[k] = v.astype(mx.bfloat16) if bf16 and not keep and mx.issubdtype(v.dtype, mx.floating) else v
    return out


def _card(source: str, bits: int, group_size: int, files: dict) -> str:
    q = f"{bits}-bit affine, group {group_size} (LLM and DiT Linear layers)" if bits else "none (float)"
    rows = "\n".join(f"| {c} | `{f}` |" for c, f in files.items())
    return (f"# Mobile-O, MLX-native\n\nConverted from `{source}` by `python -m mlx_model.convert`.\n\n"
            f"- quantization: {q}\n- format: {FORMAT} v{FORMAT_VERSION} (MLX parameter names and layouts)\n\n"
            f"| component | file |\n| --- | --- |\n{rows}\n\n"
            f"Use: `python -m mlx_model.generate \"a red cup\" --model <this folder> -q {bits}`\n")


def convert(model: str = DEFAULT_MODEL, out: str | Path = "mlx_models/mobileo", quantize: int = DEFAULT_QUANTIZE,
            group_size: int = QUANT_GROUP_SIZE, revision: str | None = None, log=print) -> Path:
    """Write the MLX folder ``out`` for ``model``; returns its path."""
    import mlx.core as mx

    from weights.mapping.checkpoint import Checkpoint
    from weights.loading.hub import resolve_model

    check_bits(quantize)
    if quantize and group_size not in GROUP_SIZES:
        raise MobileOError(f"--group-size {group_size} is not one MLX quantizes with.",
                           fix=f"use one of {', '.join(map(str, GROUP_SIZES))} (default {QUANT_GROUP_SIZE}).")
    out = Path(out).expanduser()
    if out.exists():
        raise MobileOError(f"{out} already exists.", fix="pass a new --out folder, or remove the old one first.")
    src = resolve_model(model, revision=revision)
    ckpt = Checkpoint.open(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        files = {}
        for component, module in _modules(ckpt, quantize, group_size):
            name = mlx_file(component)
            mx.save_safetensors(str(stage / name), _tensors(ckpt, component, module), metadata={"format": "mlx"})
            files[component] = name
            log(f"wrote {component}")
            del module
        assert sorted(files) == sorted(COMPONENTS), files
        raw = json.loads((src / CONFIG_FILE).read_text())
        cfg = ckpt.config
        raw.update(vocab_size=cfg.llm.vocab_size, tie_word_embeddings=cfg.llm.tie_word_embeddings)
        raw[META_KEY] = {"format": FORMAT, "version": FORMAT_VERSION, "source": str(model),
                         "quantization": {"bits": quantize, "group_size": group_size},
                         "mcp_temperature": cfg.mcp.temperature, "files": files}
        (stage / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
        for sub in src.iterdir():  # SANA sub-configs (scheduler/, transformer/, vae/)
            if sub.is_dir() and any(sub.glob("*.json")):
                (stage / sub.name).mkdir()
                for f in sub.glob("*.json"):
                    shutil.copy2(f, stage / sub.name / f.name)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
        (stage / CARD).write_text(_card(str(model), quantize, group_size, files))
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp made it 0700: the folder gets the mode of any new folder
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"saved {out}")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileo-convert",
                                description="Write Mobile-O as an MLX-native, pre-quantized folder.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id, local folder or 'demo'. Default {DEFAULT_MODEL}")
    p.add_argument("--revision", default=None, help="hub revision")
    p.add_argument("-q", "--quantize", type=int, choices=QUANTIZE_CHOICES, default=DEFAULT_QUANTIZE,
                   help=f"bits for the LLM and DiT Linear layers (0 = float). Default {DEFAULT_QUANTIZE}")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=QUANT_GROUP_SIZE,
                   help=f"weights per quantization group, one of {GROUP_SIZES} (MLX's). Default {QUANT_GROUP_SIZE}")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    return p


def main(argv: list[str] | None = None) -> None:
    from mlx_model.support.platform import use_openblas

    if argv is None:
        use_openblas()
    ready()  # from here run_cli says "interrupted"
    a = parser().parse_args(argv)
    run_cli(lambda: convert(a.model, a.out, a.quantize, a.group_size, a.revision))


if __name__ == "__main__":
    main()
