"""Image preprocessing vs transformers' CLIPImageProcessor (Mobile-O's config, docs/model-facts.md section 6)
on real photographs (skimage.data) of several sizes and modes.

Reference = expand2square with black, then CLIPImageProcessor(shortest_edge S, bicubic, center
crop S, rescale 1/255, mean 0, std 1, convert_rgb).  transformers 5 ships two backends: the
Pillow one (what Mobile-O's transformers 4.x used) must agree to 1/255; the torchvision one
resizes differently and is held to 2/255.
"""

import io

import numpy as np
import pytest
from PIL import Image

import skimage.data as skdata
import transformers

from mlx_model.support.preprocess import ImageError, load_image, preprocess  # noqa: E402
from weights.core.configs import ImagePreprocess  # noqa: E402

pytestmark = pytest.mark.torch

ONE = 1 / 255


def _processor(size: int, pil: bool):
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    cls = CLIPImageProcessorPil if pil else CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
               do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], do_convert_rgb=True)


def _expand2square(img: Image.Image, color) -> Image.Image:
    # as LLaVA / Mobile-O write it
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), color)
        out.paste(img, (0, (w - h) // 2))
    else:
        out = Image.new(img.mode, (h, h), color)
        out.paste(img, ((h - w) // 2, 0))
    return out


def reference(rgb: Image.Image, size: int, pil: bool = True) -> np.ndarray:
    """[S, S, 3] from transformers, given the upright RGB image."""
    from transformers.image_transforms import convert_to_rgb

    rgb = Image.fromarray(convert_to_rgb(rgb, return_numpy=True))
    out = _processor(size, pil)(images=_expand2square(rgb, (0, 0, 0)), return_tensors="np")
    return out["pixel_values"][0].transpose(1, 2, 0)


def photos():
    """name -> (PIL image in its own mode, upright RGB reference input)."""
    astronaut = Image.fromarray(skdata.astronaut())  # 512 x 512 RGB
    coffee = Image.fromarray(skdata.coffee())  # 600 x 400 RGB
    chelsea = Image.fromarray(skdata.chelsea())  # 451 x 300 RGB
    camera = Image.fromarray(skdata.camera())  # 512 x 512 L
    logo = Image.fromarray(skdata.logo())  # RGBA
    crop = Image.fromarray(skdata.rocket()[100:137, 200:290])  # 90 x 37 RGB
    palette = coffee.quantize(colors=64)  # P
    return {
        "rgb_square": (astronaut, astronaut),
        "rgb_wide": (coffee, coffee),
        "rgb_tall": (chelsea.transpose(Image.Transpose.ROTATE_90), chelsea.transpose(Image.Transpose.ROTATE_90)),
        "rgb_small": (crop, crop),
        "grayscale": (camera, camera.convert("RGB")),
        "rgba": (logo, logo.convert("RGB")),  # Mobile-O: Image.open(f).convert("RGB")
        "palette": (palette, palette.convert("RGB")),
    }


@pytest.mark.parametrize("size", [1024, 256])
@pytest.mark.parametrize("name", list(photos()))
def test_matches_clip_processor(name, size, parity):
    img, ref_in = photos()[name]
    ours = preprocess(img, ImagePreprocess(size=size))
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    ref = reference(ref_in, size, pil=True)
    parity(f"preprocess {name} {size}", "pillow", "max_abs_diff x255", np.abs(ours - ref).max() * 255, at_most=1.0 + 1e-4)
    assert 0.0 <= ours.min() and ours.max() <= 1.0


@pytest.mark.parametrize("name", ["rgb_wide", "rgb_tall", "grayscale"])
def test_close_to_torchvision_backend(name):
    img, ref_in = photos()[name]
    ours = preprocess(img)
    ref = reference(ref_in, 1024, pil=False)
    diff = np.abs(ours - ref)
    assert diff.max() <= 2 * ONE + 1e-6
    assert (diff > ONE + 1e-6).mean() < 1e-3


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_sixteen_bit_grayscale(tmp_path):
    camera = skdata.camera()
    path = tmp_path / "camera16.png"
    Image.fromarray(camera.astype(np.uint16) * 257).save(path)  # 16-bit PNG
    assert Image.open(path).mode.startswith("I")
    ours = preprocess(path, ImagePreprocess(size=256))
    ref = reference(Image.fromarray(camera).convert("RGB"), 256)
    assert np.abs(ours - ref).max() <= ONE + 1e-6


def test_exif_rotation(tmp_path):
    chelsea = Image.fromarray(skdata.chelsea())  # upright: 451 wide, 300 tall
    stored = chelsea.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "rotated.png"
    path.write_bytes(_png(stored, exif=exif))
    upright = load_image(path)
    assert upright.size == chelsea.size
    assert np.array_equal(np.asarray(upright), np.asarray(chelsea))
    ours = preprocess(path, ImagePreprocess(size=256))
    assert np.abs(ours - reference(chelsea, 256)).max() <= ONE + 1e-6


def test_file_and_array_inputs_agree(tmp_path):
    coffee = skdata.coffee()
    path = tmp_path / "coffee.png"
    Image.fromarray(coffee).save(path)
    cfg = ImagePreprocess(size=256)
    a, b, c = preprocess(str(path), cfg), preprocess(coffee, cfg), preprocess(Image.fromarray(coffee), cfg)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_padding_is_black_and_centered():
    img = np.full((10, 30, 3), 255, np.uint8)  # white, wide: padded top and bottom
    x = preprocess(img, ImagePreprocess(size=30))
    assert x[0].max() == 0 and x[-1].max() == 0  # black bands
    assert x[15].min() == 1.0  # the image row in the middle
    assert np.array_equal(x[:10], x[::-1][:10])  # symmetric


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        preprocess(tmp_path / "nope.png")


@pytest.mark.parametrize("content", [b"not an image at all", _png(Image.fromarray(skdata.coffee()))[:5000]],
                         ids=["garbage", "truncated"])
def test_unreadable_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="cannot read image") as e:
        preprocess(path)
    assert "\n" not in str(e.value)


def test_bad_array():
    with pytest.raises(ImageError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32))
