"""The one manifest an app reads: bundles, their I/O and parity evidence, and every
pipeline fact (scheduler, defaults, latent shape, preprocessing, prompts, tokens).

    write_manifest(out_dir, ckpt, results, model_id="Amshaker/Mobile-O-0.5B", revision=None)

Facts are read from ``weights/`` (the checkpoint's config, ``weights.core.prompts``, the
tokenizer's ids by name), from the conversion results (``ConversionResult.to_dict()``) and
from the component table (``weights.core.components``: component names, default compute
units) and the bundle contract (``weights.bundles.contract``: minimum OS; a torch-free
module); nothing is restated here.  ``schema.json`` beside this
file describes the output.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from weights.bundles import contract
from weights.core import components, prompts
from weights.mapping.checkpoint import TOKENIZER_FILES
from weights.core.samplers import DEFAULT_SAMPLER, SAMPLER_INFO
from weights.core.errors import MobileOError
from weights.mapping.tokenizer_files import eos_token

from ios_bridge import MANIFEST_FILE, SCHEMA_VERSION
from weights.bundles.hashing import bundle_bytes, bundle_sha256

SCHEMA_PATH = Path(__file__).with_name("schema.json")
TOKENIZER_DIR = "tokenizer"  # tokenizer files are copied here, beside the bundles
SCHEDULER = SAMPLER_INFO[DEFAULT_SAMPLER]  # DPM-Solver++ on flow sigmas (docs/model-facts.md section 3)
SCHEDULER_TYPE = SCHEDULER.manifest_type
# token roles an app needs; the names come from weights.core.prompts, the ids from the tokenizer
TOKEN_ROLES = {
    "pad": prompts.PAD_TOKEN, "eos": prompts.EOS_TOKEN, "im_start": prompts.IM_START,
    "im_end": prompts.IM_END, "image": prompts.IMAGE_TOKEN, "img_start": prompts.IMG_START,
    "img_end": prompts.IMG_END,
}


class ManifestError(MobileOError):
    """A conversion result or output folder the manifest cannot describe."""


def json_safe(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, non-finite floats to the strings
    "Infinity" / "-Infinity" / "NaN" (JSON has no such numbers; Swift's JSONDecoder
    reads them back with ``.convertFromString``)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _as_dict(result: Any) -> dict[str, Any]:
    return dict(result.to_dict() if hasattr(result, "to_dict") else result)


def _tensor(spec: Any) -> dict[str, Any]:
    d = _as_dict(spec)
    out = {"name": d["name"], "shape": [int(x) for x in d["shape"]], "dtype": d["dtype"],
           "layout": d["layout"]}
    if d.get("enumerated"):
        out["enumerated"] = {str(axis): [int(x) for x in sizes] for axis, sizes in d["enumerated"].items()}
    return out


def _file_entry(out_dir: Path, rel: str, component: str) -> dict[str, Any]:
    path = out_dir / rel
    if not path.exists():
        raise ManifestError(f"{path}: bundle of component {component!r} does not exist.",
                            fix="convert that component again, or drop it from the results.")
    return {"file": rel, "sha256": bundle_sha256(path), "bytes": bundle_bytes(path)}


def component_entry(out_dir: Path, result: Any) -> dict[str, Any]:
    """One ``components[]`` item from a ``ConversionResult`` (or its ``to_dict()``)."""
    d = _as_dict(result)
    name = d["name"]
    if name not in components.BUNDLES:
        raise ManifestError(f"{name!r} is not a Mobile-O component ({', '.join(components.BUNDLES)}).",
                            fix="pass the results of python -m coreml_convert.")
    entry: dict[str, Any] = {"name": name}
    if d.get("chunks"):  # a component split into ordered chunks
        entry["chunks"] = [_file_entry(out_dir, c["file"] if isinstance(c, Mapping) else c, name)
                           for c in d["chunks"]]
    else:
        found = _file_entry(out_dir, d["file"], name)
        for key in ("sha256", "bytes"):
            if d.get(key) not in (None, found[key]):
                raise ManifestError(
                    f"{out_dir / d['file']}: {key} is {found[key]} on disk but the conversion "
                    f"recorded {d[key]}; the bundle changed after conversion.",
                    fix="convert the component again.")
        entry.update(found)
    entry.update(
        inputs=[_tensor(t) for t in d.get("inputs", [])],
        outputs=[_tensor(t) for t in d.get("outputs", [])],
        states=[_tensor(t) for t in d.get("states", [])],
        functions=list(d.get("functions") or ["main"]),
        compute_units=d.get("compute_units") or components.COMPONENTS[name].compute_units,
        target=(d.get("compression") or {}).get("target", components.DEFAULT_TARGET),
        minimum_os=dict(d.get("minimum_os") or contract.MINIMUM_OS),
        compression=dict(d.get("compression") or {}),
        gates=dict(d.get("gates") or {}),
        conversion={k: d[k] for k in ("seconds", "peak_rss_mb") if d.get(k) is not None},
    )
    if d.get("files"):  # tables the app reads beside the bundle (e.g. the LLM's token embeddings)
        entry["files"] = []
        for f in d["files"]:
            found = _file_entry(out_dir, f["file"], name)
            if (f.get("sha256"), f.get("bytes")) != (found["sha256"], found["bytes"]):
                raise ManifestError(f"{out_dir / f['file']}: differs from what the conversion recorded.",
                                    fix="convert the component again.")
            entry["files"].append({**found, "shape": [int(n) for n in f["shape"]], "dtype": f["dtype"]})
    if d.get("lint"):
        entry["lint"] = dict(d["lint"])
    if d.get("function_io"):  # a multifunction bundle: each function's I/O (inputs/outputs: the default's)
        unknown = sorted(set(d["function_io"]) - set(entry["functions"]))
        if unknown:
            raise ManifestError(f"component {name!r}: function_io names {unknown[0]!r}, which is not among "
                                f"its functions {entry['functions']}.", fix="convert the component again.")
        entry["function_io"] = {fn: {k: [_tensor(t) for t in io[k]] for k in ("inputs", "outputs")}
                                for fn, io in d["function_io"].items()}
    return entry


def _tokenizer_section(out_dir: Path, ckpt) -> dict[str, Any]:
    from tokenizers import Tokenizer

    src = Path(ckpt.tokenizer_dir)
    dst = out_dir / TOKENIZER_DIR
    dst.mkdir(parents=True, exist_ok=True)
    files = []
    for name in TOKENIZER_FILES:
        if not (src / name).is_file():
            continue
        if not (dst / name).is_file() or bundle_sha256(dst / name) != bundle_sha256(src / name):
            shutil.copyfile(src / name, dst / name)
        files.append(_file_entry(out_dir, f"{TOKENIZER_DIR}/{name}", "tokenizer"))
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    specials = []
    for name in prompts.SPECIAL_TOKENS:
        tid = tok.token_to_id(name)
        if tid is None:
            raise ManifestError(f"{src / 'tokenizer.json'} has no special token {name!r}.",
                                fix="use the tokenizer files that came with the Mobile-O checkpoint.")
        specials.append({"name": name, "id": tid})
    return {
        "type": "byte_level_bpe",
        "files": files,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "special_tokens": specials,
        "roles": {**TOKEN_ROLES, "eos": eos_token(src)},  # the checkpoint's own stop token
    }


def host_facts(cfg) -> dict[str, Any]:
    """The constants of the inputs the app computes (weights.bundles.contract's host side)."""
    from weights.core.configs import DiTConfig

    return {
        "embeddings": contract.EMBEDDINGS_FILE,
        "rope_theta": float(cfg.llm.rope_theta),
        "head_dim": cfg.llm.head_dim,
        "chunk_length": contract.chunk_length(cfg),
        "context_length": contract.context_length(cfg),
        "mask_bias": float(DiTConfig.MASK_BIAS),
        "timestep_channels": DiTConfig.TIMESTEP_CHANNELS,
        "timestep_max_period": float(DiTConfig.TIMESTEP_MAX_PERIOD),
        "timestep_order": "cos_sin",
    }


def pipeline_facts(cfg) -> dict[str, Any]:
    """Everything the Swift pipeline needs besides the bundles (a ``MobileOConfig``)."""
    return {
        "scheduler": {"type": SCHEDULER_TYPE, "class_name": SCHEDULER.diffusers_class,
                      "config": cfg.scheduler.to_dict()},
        "defaults": cfg.defaults.to_dict(),
        "latent_shape": list(cfg.latent_shape),
        "image_size": cfg.image_size,
        "vae_scaling_factor": cfg.vae.scaling_factor,
        "conditioning": {
            "hidden_states": cfg.mcp.num_layers,  # last N LLM hidden states into the MCP
            "llm_hidden_size": cfg.llm.hidden_size,
            "caption_channels": cfg.dit.caption_channels,
            "image_tokens": cfg.vision.num_tokens,
            "unconditional": "mcp_of_zero_hidden_states",
        },
        "image_preprocess": cfg.preprocess.to_dict(),
        "host_inputs": host_facts(cfg),
        "prompts": {
            "system": prompts.SYSTEM,
            "chat": prompts.CHAT_TEMPLATE,
            "generation": prompts.GENERATION_QS,
            "understanding": prompts.UNDERSTANDING_QS,
            "editing": prompts.EDITING_QS,
            "image_placeholder": prompts.IMAGE_PLACEHOLDER,
            "max_prompt_tokens": prompts.MAX_PROMPT_TOKENS,
        },
    }


def export_facts(entries: list[dict], requested: Iterable[str] | None, target: str | None) -> dict[str, Any]:
    """The ``export`` object: the target and the components the run was asked for; partial
    when that is a subset of the pipeline's (a component missing from a complete request is
    then a failed conversion, which the validator refuses)."""
    asked = list(requested) if requested is not None else list(components.BUNDLES)
    targets = {e.get("target") for e in entries} - {None}
    return {"target": target or (targets.pop() if len(targets) == 1 else components.DEFAULT_TARGET),
            "partial": set(asked) != set(components.BUNDLES), "components": asked}


def build_manifest(out_dir: str | Path, ckpt, results: Iterable[Any], model_id: str,
                   revision: str | None, requested: Iterable[str] | None = None,
                   target: str | None = None, run: Mapping | None = None) -> dict[str, Any]:
    """``requested``: the components the run was asked for (default: all of them); ``run``:
    the conversion run's own figures (seconds, peak RSS in MB, processes), recorded as
    ``export.conversion``."""
    out_dir = Path(out_dir)
    entries = [component_entry(out_dir, r) for r in results]  # kept in the order given (pipeline order)
    names = [e["name"] for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ManifestError(f"component {dup[0]!r} appears twice in the conversion results.",
                            fix="pass one result per component.")
    cfg = ckpt.config
    synthetic = (Path(ckpt.folder) / "synthetic.json").is_file()
    facts = pipeline_facts(cfg)
    facts["tokenizer"] = _tokenizer_section(out_dir, ckpt)
    return json_safe({
        "schema_version": SCHEMA_VERSION,
        "model": {"id": model_id, "revision": revision,
                  "diffusion_name_or_path": cfg.diffusion_name_or_path, "synthetic": synthetic},
        "export": {**export_facts(entries, requested, target), **({"conversion": dict(run)} if run else {})},
        "components": entries,
        "pipeline": facts,
    })


def write_manifest(out_dir: str | Path, ckpt, results: list, model_id: str,
                   revision: str | None, requested: Iterable[str] | None = None,
                   target: str | None = None, run: Mapping | None = None) -> Path:
    """Write ``out_dir/manifest.json`` atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = build_manifest(out_dir, ckpt, results, model_id, revision, requested, target, run)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".json", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a manifest is as readable as the bundles
        os.replace(tmp, out_dir / MANIFEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_dir / MANIFEST_FILE


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())
