"""Images on disk with their settings: names that never overwrite (``_1``, ``_2``, or by
seed as mflux names them), the format of the extension (PNG, JPEG, WebP), the settings
inside the file (AUTOMATIC1111-style ``parameters`` text plus the full JSON under
``mobileo``; in EXIF for JPEG/WebP), written whole or not at all, and read back for
``--config-from-metadata``.  Used by the image commands (``generate``, ``edit``); no MLX."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from weights.core.errors import MobileOError
from weights.core.samplers import SAMPLER_TABLE

METADATA_KEY = "mobileo"  # PNG text chunk (JPEG/WebP: EXIF ImageDescription) holding the settings as JSON
A1111_KEY = "parameters"  # PNG text chunk (JPEG/WebP: EXIF UserComment) in AUTOMATIC1111's text format
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # by --output extension
EXIF_DESCRIPTION, EXIF_IFD, EXIF_USER_COMMENT = 0x010E, 0x8769, 0x9286


def unique_path(path: str | Path, taken: Iterable[Path] = ()) -> Path:
    """``path`` if free, else ``stem_1.ext``, ``stem_2.ext``, ... (never an existing file)."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    taken = set(taken)
    candidate, i = path, 0
    while candidate.exists() or candidate.with_suffix(".json").exists() or candidate in taken:
        i += 1
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
    return candidate


def output_paths(path: str | Path, n: int, seeds: Sequence[int] | None = None) -> list[Path]:
    """``n`` free names from ``path``; with ``seeds`` (several --seed values), each named by its
    seed as mflux does: ``image_seed_3.png``."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    out: list[Path] = []
    for i in range(n):
        base = path.with_name(f"{path.stem}_seed_{seeds[i]}{path.suffix}") if seeds else path
        out.append(unique_path(base, out))
    return out


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mobileo-deploy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def model_revision(folder: str | Path) -> str | None:
    """The hub commit of a ``huggingface_hub`` snapshot folder (``.../snapshots/<sha>/...``), else None."""
    parts = Path(folder).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots":
            return parts[i + 1]
    return None


def model_hash(folder: str | Path, sample: int = 1 << 16) -> str | None:
    """A quick fingerprint of a checkpoint folder (10 hex digits, as AUTOMATIC1111's "Model hash"):
    sha256 of config.json, the index, and per safetensors file its header and four ``sample``-byte
    slices.  Different weights give different hashes without reading gigabytes."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    files = [folder / "config.json", folder / "model.safetensors.index.json", *sorted(folder.glob("*.safetensors"))]
    try:
        for f in files:
            if not f.is_file():
                continue
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                if f.suffix != ".safetensors":
                    h.update(fh.read())
                    continue
                size = f.stat().st_size
                n = int.from_bytes(fh.read(8), "little")
                fh.seek(0)
                h.update(fh.read(min(8 + n, size)))
                for at in (size // 4, size // 2, 3 * size // 4, max(size - sample, 0)):
                    fh.seek(at)
                    h.update(fh.read(sample))
    except OSError:
        return None
    return h.hexdigest()[:10]


SAMPLER_NAMES = {s.name: s.a1111 for s in SAMPLER_TABLE}  # AUTOMATIC1111's names, from the sampler table


def _a1111_value(v) -> str:
    text = str(v)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def a1111_parameters(meta: dict) -> str:
    """The settings in AUTOMATIC1111's ``parameters`` text: the prompt, then one line of
    ``Key: value`` pairs (values holding , : or " are JSON-quoted, as A1111 does)."""
    prompt = meta.get("prompt", meta.get("instruction", ""))
    h, w = (meta.get("size") or [None, None])[:2]
    model = meta.get("model")
    fields = {"Steps": meta.get("steps"), "Sampler": SAMPLER_NAMES.get(meta.get("scheduler"), meta.get("scheduler")),
              "CFG scale": meta.get("guidance"), "Seed": meta.get("seed"),
              "Size": f"{w}x{h}" if h and w else None, "Model hash": meta.get("model_hash"),
              "Model": Path(str(model)).name if model else None, "Model revision": meta.get("model_revision"),
              "Task": meta.get("task"), "Version": f"mobileo-deploy {meta.get('version', tool_version())}"}
    line = ", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields.items() if v is not None)
    return f"{prompt}\n{line}"


def encode_image(image, fmt: str, metadata: dict) -> bytes:
    """The file's bytes: PNG with text chunks ``mobileo`` (JSON) and ``parameters`` (A1111);
    JPEG/WebP with the JSON in EXIF ImageDescription and the A1111 text in EXIF UserComment."""
    import io

    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    text = json.dumps(metadata, sort_keys=True, allow_nan=False)  # ASCII-only, and valid JSON: no NaN
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngInfo()
        info.add_text(METADATA_KEY, text)
        info.add_text(A1111_KEY, a1111_parameters(metadata))  # iTXt when not Latin-1
        img.save(buf, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[EXIF_DESCRIPTION] = text
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\0" + a1111_parameters(metadata).encode("utf-16-be")
        img.save(buf, format=fmt, exif=exif, quality=95)
    return buf.getvalue()


def save_image(image, path: Path, metadata: dict, write_json: bool = False) -> Path:
    """Write a uint8 [H, W, 3] image in the format of its extension (PNG, JPEG, WebP) with
    ``metadata`` inside (and beside it as JSON with ``write_json``).

    The file is written whole under a temporary name, then claimed with a hard link, which
    fails if the name exists: a file that appeared meanwhile (another run) is never
    overwritten; the next free name is taken instead.  The file gets the umask's mode, as
    any new file.  Errors name ``path``, never the temporary file.  Returns the path written."""
    import secrets

    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MobileOError(f"cannot write {path.suffix} images ({path}).", fix="use .png, .jpg or .webp.")
    data = encode_image(image, fmt, metadata)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{path.suffix}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, like any new file
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            while True:
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:
                    path = unique_path(path)
        finally:
            tmp.unlink(missing_ok=True)
        if write_json:
            sidecar = path.with_suffix(".json")
            tmp_json = sidecar.with_name(f".{sidecar.name}.{secrets.token_hex(4)}.partial")
            try:
                tmp_json.write_text(json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False) + "\n")
                tmp_json.replace(sidecar)
            finally:
                tmp_json.unlink(missing_ok=True)
    except OSError as e:
        raise MobileOError(f"cannot write {path} ({e.strerror or type(e).__name__}).",
                           fix="check the folder exists, is writable and the disk has room.") from None
    return path


def read_metadata(path: str | Path) -> dict:
    """The settings JSON of an image this tool wrote (PNG, JPEG, WebP) or of its .json sidecar."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    fix = "pass an image written by mobileo-generate or mobileo-edit (or its .json sidecar from --metadata)."
    if not path.is_file():
        raise MobileOError(f"{path} does not exist.", fix=fix)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            with Image.open(path) as im:
                text = im.text.get(METADATA_KEY) if hasattr(im, "text") else None
                text = text or im.getexif().get(EXIF_DESCRIPTION)
            if not text:
                raise MobileOError(f"{path} holds no mobileo settings.", fix=fix)
            data = json.loads(text)
    except (OSError, UnidentifiedImageError, UnicodeDecodeError, ValueError) as e:
        raise MobileOError(f"cannot read the settings in {path} ({type(e).__name__}).", fix=fix) from None
    if not isinstance(data, dict):
        raise MobileOError(f"{path}: the settings are not a JSON object.", fix=fix)
    return data


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


def damage(path: str | Path) -> str | None:
    """Why the image file ``path`` is not whole ("empty", "no IEND chunk", "truncated", ...), or
    None when it decodes completely (a PNG must also end with its IEND chunk)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        if path.suffix.lower() == ".png":
            with open(path, "rb") as f:
                f.seek(max(size - len(PNG_END), 0))
                if f.read() != PNG_END:
                    return "no IEND chunk: cut short"
        with Image.open(path) as im:
            im.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        return f"does not decode: {type(e).__name__}"
    return None


def metadata_defaults(path: str | Path, task: str = "generate") -> dict:
    """``--config-from-metadata``: the settings of one image as this command's argument names."""
    meta = read_metadata(path)
    if meta.get("task", "generate") != task:
        raise MobileOError(f"{path} was made by mobileo-{meta.get('task', 'generate')}, not mobileo-{task}.",
                           fix=f"use mobileo-{meta.get('task', 'generate')} --config-from-metadata {path}.")
    out = {}
    for key in ("steps", "guidance", "scheduler", "model", "quantize", "dtype", "latents"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    revision = meta.get("model_revision") or meta.get("revision")
    if revision:
        out["revision"] = revision
    if meta.get("latents"):
        out["n_images"] = meta.get("n_images", 1)
    elif meta.get("seed") is not None:
        out["seed"] = [meta["seed"]]
    size = meta.get("size")
    if isinstance(size, list) and len(size) == 2:
        out["height"], out["width"] = size
    text_key = "instruction" if task == "edit" else "prompt"
    if meta.get(text_key):
        out["text"] = meta[text_key]
    if task == "edit" and meta.get("image"):
        out["image"] = meta["image"]
    return out


GENERATOR = "mobileo-deploy mlx_model"


def run_metadata(*, quantize: int, dtype, source) -> dict:
    """What every image of a run carries besides its own settings (:meth:`ImageSettings.metadata
    <mlx_model.support.image_settings.ImageSettings.metadata>`): weights, tool and model
    identity.  The commands, batch runs and the server all write it."""
    from mlx_model.support.platform import dtype_name

    return {"quantize": quantize, "dtype": dtype_name(dtype), "generator": GENERATOR,
            "version": tool_version(), "model_revision": model_revision(source), "model_hash": model_hash(source)}


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists as a writable folder, or can be made in the nearest one that does."""
    base = Path(folder).absolute()
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise MobileOError(f"cannot write {what}: {base} is a file, not a folder.",
                           fix="choose a path under a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise MobileOError(f"cannot write {what}: the folder {base} is not writable.",
                           fix="choose a folder you can write to.")
