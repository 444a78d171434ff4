"""``python -m mlx_model.convert --model X --quantize 4 --out DIR``: an MLX-native folder.

As ``mlx_lm.convert`` (the mlx-community conversions) / mflux's saved models: the weights are
written in MLX's own layout and names, already quantized (packed ``weight``, ``scales``,
``biases`` for the LLM and DiT Linear layers and the LLM's token embedding -- a tied LM head
reuses it through ``QuantizedEmbedding.as_linear`` -- group
:data:`mlx_model.support.quant.QUANT_GROUP_SIZE`), one safetensors file per component, with
the configs, the tokenizer and a README model card (what is quantized, bytes per component,
how it was made).  Every MLX CLI and pipeline takes the folder with ``--model DIR`` and
loads it with ``mx.load`` (lazy, no float copy); asking it for other quantization settings
is an error, not a re-quantization.  ``--upload-repo`` then pushes it to the Hugging Face
hub as ``mlx_lm.convert --upload-repo`` does.

Quantization runs on the fp32 upcast of the checkpoint (exact for bf16); scales/biases are
stored in bf16 as mlx-community's.  The vision tower's and VAE decoder's matmul layers
(attention projections, 1x1 convolutions) are quantized too, at the bits their measured drift
chose (:data:`mlx_model.support.quant.PART_BITS`: vision 4, VAE 8; :data:`DRIFT_NOTE`); every
other float tensor (their spatial convolutions, projector, MCP, norms) is stored in bf16 --
lossless for Mobile-O's bf16 checkpoint; whether it was is written in the card.  A folder
loads bit-identical to quantizing in memory on CPU.  The VAE encoder is left out: no Mobile-O inference path runs it (docs/upstream.md).  The folder
is written beside ``DIR`` and renamed into place: never half a folder.
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
from mlx_model.support.quant import (DEFAULT_QUANTIZE, GROUP_SIZES, QUANTIZE_CHOICES, QUANT_GROUP_SIZE, check_bits,
                                     part_bits)

__all__ = ["convert", "main"]
COMPONENTS = CHECKPOINT_PARTS  # one file each (weights.core.components.mlx_file)
CARD = "README.md"
# measured (README "MLX folder"); written into the card of a quantized folder
DRIFT_NOTE = ("measured on the random full-size checkpoint against each part's float path, PSNR = 20 log10(max|ref| / "
              "RMSE): VAE decoder at 8 bits, the decoded 512x512 image 42.4 dB (4 bits: 24.0 dB, rejected); vision "
              "tower at 4 bits, its features 41.3 dB (SNR 17.7 dB; 8 bits: 64.1 dB, SNR 40.5 dB). Details: the "
              "project README, section 'MLX folder'")


def _modules(ckpt, quantize: int, group_size: int):
    """(component, module) pairs built from ``ckpt`` in fp32, the LLM and DiT quantized (packed),
    the vision tower's and VAE decoder's matmul layers too (:func:`mlx_model.support.quant.part_bits`)."""
    import mlx.core as mx

    from mlx_model.components.dcae import AutoencoderDC
    from mlx_model.components.dit import SanaTransformer
    from mlx_model.components.llm import LanguageModel
    from mlx_model.components.mcp import MCP
    from mlx_model.components.multimodal import ImageEncoder

    yield "llm", LanguageModel.from_checkpoint(ckpt, quantize, group_size, mx.float32, dequantize=False).model
    yield "mcp", MCP.from_checkpoint(ckpt)
    yield "dit", SanaTransformer.from_checkpoint(ckpt, quantize, group_size, mx.float32, dequantize=False)
    # no inference path encodes (docs/upstream.md); vision and VAE matmul layers: quant.part_bits
    yield "vae", AutoencoderDC.from_checkpoint(ckpt, encoder=False, quantize=quantize, group_size=group_size)
    enc = ImageEncoder.from_checkpoint(ckpt, quantize, group_size)
    yield "vision", enc.vision
    yield "projector", enc.projector


def _tensors(module) -> tuple[dict, bool]:
    """The module's parameters to save: quantized layers as they are (packed weight, bf16
    scales/biases), every other float as bf16; and whether that rounding was lossless."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_model.support.quant import quantized_modules

    quant = set(quantized_modules(module))
    out, lossless = {}, True
    for k, v in tree_flatten(module.parameters()):
        owner, _, leaf = k.rpartition(".")
        if owner in quant or not mx.issubdtype(v.dtype, mx.floating) or v.dtype == mx.bfloat16:
            out[k] = v
            continue
        out[k] = v.astype(mx.bfloat16)
        lossless = lossless and mx.array_equal(out[k].astype(v.dtype), v).item()
    return out, lossless


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _card(source: str, bits: int, group_size: int, files: dict, sizes: dict, lossless: dict,
          tied: bool) -> str:
    """README.md with the hub's YAML header (library_name mlx, as mlx_lm.convert's card)."""
    from mlx_model.support.quant import SCALES_DTYPE

    what = {"llm": "Linear layers + token embedding" + (" (the tied LM head reuses it)" if tied else
                                                        "; the untied LM head as a Linear layer"),
            "dit": "Linear layers (and the 1x1 convolutions run as Linear)",
            "vision": "attention projections and 1x1 convolutions; depthwise / strided convolutions, "
                      "squeeze-excite and norms bf16",
            "vae": "attention projections and the Mix-FFN's 1x1 convolutions; 3x3 and depthwise "
                   "convolutions and norms bf16"}
    rows = []
    for c, f in files.items():
        b = part_bits(c, bits)
        q = f"{b}-bit, group {group_size}: {what[c]}" if b and c in what else "bf16"
        rows.append(f"| {c} | `{f}` | {q} | {_mb(sizes[c])} | {'yes' if lossless[c] else 'no (rounded)'} |")
    drift = f"\n- drift of the quantized vision tower and VAE decoder against their float path: {DRIFT_NOTE}" if bits else ""
    base = f"base_model: {source}\n" if "/" in source and not Path(source).exists() else ""
    return (f"---\nlibrary_name: mlx\n{base}tags:\n- mlx\n- mobileo\n---\n\n"
            f"# Mobile-O, MLX-native ({f'{bits}-bit' if bits else 'float'})\n\n"
            f"Converted from `{source}` by `python -m mlx_model.convert --model {source} -q {bits}"
            f"{f' --group-size {group_size}' if bits else ''}` (format {FORMAT} v{FORMAT_VERSION}: MLX parameter "
            f"names and layouts, one safetensors file per component).\n\n"
            f"- quantization: {f'{bits}-bit affine, group {group_size}, scales and biases {SCALES_DTYPE}' if bits else 'none'}"
            "\n- every other float tensor: bf16 (column 'bf16 lossless': the source held those values exactly)"
            f"{drift}"
            "\n- the VAE encoder is not included: no Mobile-O inference path (generation, editing, understanding) "
            "runs it\n\n"
            "| component | file | stored as | bytes | bf16 lossless |\n| --- | --- | --- | --- | --- |\n"
            + "\n".join(rows) + f"\n| total | | | {_mb(sum(sizes.values()))} | |\n\n"
            f"Use: `python -m mlx_model.generate \"a red cup\" --model <this folder> -q {bits}`\n")


def upload(folder: str | Path, repo: str, log=print, api=None) -> None:
    """Push ``folder`` to the Hugging Face hub repo ``repo`` (created when missing), as
    ``mlx_lm.convert --upload-repo``; ``api``: an ``huggingface_hub.HfApi`` (default: a new one,
    which reads ``HF_TOKEN`` / ``HF_ENDPOINT``)."""
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise MobileOError("--upload-repo needs the huggingface_hub package.",
                               fix="pip install huggingface_hub, then run mobileo-convert again.") from None
        api = HfApi()
    try:
        api.create_repo(repo_id=repo, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="Upload Mobile-O MLX folder (mobileo-convert)")
    except Exception as e:  # network, auth, permissions: the folder stays, one line says so
        raise MobileOError(f"uploading {folder} to {repo} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).",
                           fix=f"check HF_TOKEN (hf auth login) and the repo name; the converted folder is kept: "
                               f"hf upload {repo} {folder}") from None
    log(f"uploaded {folder} to {repo}")


def convert(model: str = DEFAULT_MODEL, out: str | Path = "mlx_models/mobileo", quantize: int = DEFAULT_QUANTIZE,
            group_size: int = QUANT_GROUP_SIZE, revision: str | None = None, log=print,
            upload_repo: str | None = None) -> Path:
    """Write the MLX folder ``out`` for ``model`` (then push it to ``upload_repo``); returns its path."""
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
        files, sizes, lossless = {}, {}, {}
        for component, module in _modules(ckpt, quantize, group_size):
            name = mlx_file(component)
            tensors, lossless[component] = _tensors(module)
            mx.save_safetensors(str(stage / name), tensors, metadata={"format": "mlx"})
            files[component], sizes[component] = name, (stage / name).stat().st_size
            log(f"wrote {component} ({_mb(sizes[component])})")
            del module, tensors
        assert sorted(files) == sorted(COMPONENTS), files
        raw = json.loads((src / CONFIG_FILE).read_text())
        cfg = ckpt.config
        raw.update(vocab_size=cfg.llm.vocab_size, tie_word_embeddings=cfg.llm.tie_word_embeddings)
        raw[META_KEY] = {"format": FORMAT, "version": FORMAT_VERSION, "source": str(model),
                         "quantization": {"bits": quantize, "group_size": group_size},
                         "parts_quantization": {c: {"bits": part_bits(c, quantize), "group_size": group_size}
                                                for c in COMPONENTS if part_bits(c, quantize)},
                         "bytes": sizes, "vae_encoder": False,
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
        (stage / CARD).write_text(_card(str(model), quantize, group_size, files, sizes, lossless,
                                        cfg.llm.tie_word_embeddings))
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp made it 0700: the folder gets the mode of any new folder
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"saved {out}")
    if upload_repo:
        upload(out, upload_repo, log)
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
    p.add_argument("--upload-repo", default=None,
                   help="then upload the folder to this Hugging Face repo (as mlx_lm.convert), e.g. me/Mobile-O-4bit")
    return p


def main(argv: list[str] | None = None) -> None:
    from mlx_model.support.platform import prepare_cpu_process

    if argv is None:
        prepare_cpu_process()
    ready()  # from here run_cli says "interrupted"
    a = parser().parse_args(argv)
    run_cli(lambda: convert(a.model, a.out, a.quantize, a.group_size, a.revision, upload_repo=a.upload_repo))


if __name__ == "__main__":
    main()
