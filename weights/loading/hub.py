"""``--model`` resolution: a hub id, a local folder, or ``demo``.

Hub ids go through ``huggingface_hub`` (progress bars, cache reuse, only the files we
need).  When the hub is unreachable and nothing is cached, one line says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weights.core.errors import ModelNotFoundError

DEMO = "demo"


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    subfolder: str | None = None  # where config.json and the safetensors live in the repo
    revision: str | None = None


KNOWN_MODELS = {
    "Amshaker/Mobile-O-0.5B": HubModel("Amshaker/Mobile-O-0.5B", "final_merged_model_23620"),
    "Amshaker/Mobile-O-1.5B": HubModel("Amshaker/Mobile-O-1.5B"),
}
DEFAULT_MODEL = "Amshaker/Mobile-O-0.5B"
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.tiktoken", "tokenizer*")


def _patterns(sub: str | None) -> list[str]:
    return [f"{sub}/{p}" if sub else p for p in ALLOW_PATTERNS] + (
        [f"{sub}/*/*.json"] if sub else ["*/*.json"])


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (huggingface_hub then never connects)."""
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(model: str, *, revision: str | None = None, offline: bool | None = None) -> Path:
    """Local folder holding config.json + safetensors for ``model``."""
    if model == DEMO:
        from weights.loading.synthetic import demo_path

        return demo_path()
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local:
        raise ModelNotFoundError(f"model folder {model} does not exist.",
                                 fix=f"pass an existing folder, a hub id such as {DEFAULT_MODEL}, or 'demo'.")
    spec = KNOWN_MODELS.get(model, HubModel(model))
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - base dependency
        raise ModelNotFoundError("huggingface_hub is not installed.", fix="pip install huggingface-hub") from None
    try:
        root = snapshot_download(spec.repo_id, revision=revision or spec.revision,
                                 allow_patterns=_patterns(spec.subfolder),
                                 local_files_only=bool(offline))
    except Exception as e:  # network errors, missing repo, gated repo, offline and not cached
        kind = type(e).__name__
        if offline or hub_offline():
            raise ModelNotFoundError(
                f"{model} is not in the local Hugging Face cache, and the hub is off "
                f"({'HF_HUB_OFFLINE is set' if hub_offline() else 'offline was asked for'}).",
                fix=("unset HF_HUB_OFFLINE" if hub_offline() else "allow the download") + " to get it once, "
                "pass a local folder with --model /path/to/model, or try the pipeline with --model demo.") from None
        raise ModelNotFoundError(
            f"cannot get {model} from the Hugging Face hub ({kind}) and it is not in the local cache.",
            fix="connect to the internet or log in (hf auth login), pass a local folder "
            "with --model /path/to/model, or try the pipeline with --model demo.") from None
    folder = Path(root) / spec.subfolder if spec.subfolder else Path(root)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{model} has no folder {spec.subfolder!r}.",
                                 fix="pass the folder that holds config.json with --model.")
    return folder


MLX_FOLDER_MARK = "mobileo_mlx"  # the config.json entry of a folder written by mlx_model.convert


def open_model(model: str, kinds=(), **kw):
    """Resolve ``model`` and open it: the first of ``kinds`` -- other folder kinds the caller's
    runtime reads, as (is_kind(path) -> bool, open(path)) pairs, passed explicitly (weights/
    imports no runtime; ``mlx_model.support.mlx_folder.open_model`` passes MLX-native
    folders) -- that claims it, else the checkpoint."""
    import json

    from weights.mapping.checkpoint import CONFIG_FILE, Checkpoint
    from weights.core.errors import WeightsError

    path = resolve_model(model, **kw)
    for is_kind, opener in kinds:
        if is_kind(path):
            return opener(path)
    try:
        mlx_native = MLX_FOLDER_MARK in json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        mlx_native = False
    if mlx_native:
        raise WeightsError(f"{path} is an MLX-native folder (python -m mlx_model.convert), not a checkpoint.",
                           fix="load it with mlx_model (its CLIs or pipelines), or pass the source checkpoint.")
    return Checkpoint.open(path)
