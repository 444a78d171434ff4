"""Image preprocessing as Mobile-O does it (docs/model-facts.md section 6), with Pillow and
numpy only.

    any image -> RGB -> pad to a square with black (expand2square) -> bicubic resize to
    S x S -> center crop S x S (a no-op on the square) -> [0, 1] (rescale 1/255; mean 0, std 1)

Constants come from :class:`weights.core.configs.ImagePreprocess`.  Anything Pillow can open
becomes RGB: EXIF orientation is applied (the one step beyond Mobile-O's
``Image.open(f).convert("RGB")``, so phone photos are upright); transparency is dropped as
``convert("RGB")`` drops it; 16-bit and 32-bit grayscale are scaled to 8 bits.
Unreadable input raises :class:`ImageError` with one line: a missing file, a URL (not
fetched), an undecodable file, or one above Pillow's decompression-bomb limit
(``2 * Image.MAX_IMAGE_PIXELS``, ~179 megapixels); images between Pillow's warning and that
limit are read without its warning.

    pixels = preprocess("photo.jpg", ckpt.config.preprocess)   # [S, S, 3] float32
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from weights.core.configs import ImagePreprocess
from weights.core.errors import MobileOError

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNG/TIFF grayscale


# the image formats read (Pillow's plug-in names); never EPS/PS (Ghostscript) or other exotic ones
READ_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG opens MPO phone photos too


class ImageError(MobileOError):
    """An image file that is missing or cannot be decoded."""


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def max_pixels() -> int | None:
    """Pillow refuses images above twice its ``MAX_IMAGE_PIXELS`` (a decompression bomb guard)."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def open_image(source: str | Path) -> Image.Image:
    if isinstance(source, str) and URL.match(source):
        raise ImageError(f"{source} is a URL; images are read from files only.",
                         fix="download it first (e.g. curl -LO URL) and pass the file.")
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a folder, not an image" if path.is_dir() else "does not exist"
        raise ImageError(f"image {path} {what}.", fix="pass the path of an image file.")
    return _decode(path, f"image {path}", lambda: _declared_size(path))


def decode_image(data: bytes, name: str = "the image") -> Image.Image:
    """Encoded image bytes (PNG, JPEG, ...: an upload, a data URL) with the same guards as files."""
    import io

    return _decode(io.BytesIO(data), name, lambda: "larger")


def _decode(fp, name: str, declared_size) -> Image.Image:
    try:
        with warnings.catch_warnings():  # between Pillow's warning and its limit: read, quietly
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=READ_FORMATS)
            img.load()
    except Image.DecompressionBombError:
        limit = max_pixels()
        raise ImageError(f"{name} is {declared_size()}, more than the {limit / 1e6:.0f} megapixels this tool "
                         "decodes (a decompression-bomb guard).",
                         fix="downscale it first, e.g. to 4096 px on the long side (Mobile-O sees it at "
                         "1024x1024 anyway).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot read {name} ({why}).",
                         fix="pass a valid image file (PNG, JPEG, WebP, TIFF, BMP, GIF ...).") from None
    return img


def _declared_size(path: Path) -> str:
    """``W x H (N MP)`` from the file's header, without decoding (for the error message)."""
    try:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path, formats=READ_FORMATS) as im:
                w, h = im.size
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        return f"{w}x{h} ({w * h / 1e6:.0f} megapixels)"
    except Exception:  # any header Pillow cannot read: say less
        return "too large"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.  Transparency is dropped, as Mobile-O's
    ``Image.open(f).convert("RGB")`` drops it (transformers' ``convert_rgb`` would composite
    on white instead)."""
    if img.mode in WIDE_INT_MODES or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        img = Image.fromarray(np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(image) -> Image.Image:
    """A path, PIL image or uint8 array ([H, W] or [H, W, 3|4]) -> upright RGB PIL image."""
    if isinstance(image, (str, Path)):
        image = open_image(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ImageError(f"cannot use an array of shape {list(image.shape)} and dtype {image.dtype} as an image.",
                             fix="pass uint8 pixels shaped [H, W], [H, W, 3] or [H, W, 4].")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise ImageError(f"cannot use a {type(image).__name__} as an image.",
                         fix="pass a file path, a PIL image or a uint8 numpy array.")
    if image.width < 1 or image.height < 1:
        raise ImageError("the image is empty (0 pixels).", fix="pass a non-empty image.")
    return to_rgb(ImageOps.exif_transpose(image))


def expand2square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Pad the short side symmetrically (extra pixel after) to a square of ``color``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), tuple(color))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def preprocess(image, cfg: ImagePreprocess = ImagePreprocess()) -> np.ndarray:
    """[S, S, 3] float32 pixels (channels last), S = ``cfg.size``."""
    img = expand2square(load_image(image), cfg.pad_color)
    # the square's shortest edge resized to S is S x S, so the center crop keeps everything
    img = img.resize((cfg.size, cfg.size), RESAMPLE[cfg.resample])
    x = np.asarray(img, dtype=np.float32) * np.float32(cfg.rescale_factor)
    mean = np.asarray(cfg.image_mean, np.float32)
    std = np.asarray(cfg.image_std, np.float32)
    return (x - mean) / std
