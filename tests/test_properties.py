"""Property-based checks (hypothesis) of the code that meets untrusted input: the safetensors
header reader, the manifest validator, prompt building, and the command lines' argument
checks.  Each property: any input either works and gives a consistent result, or raises the
project's one-line error; nothing else escapes.  Strategies draw the inputs a property is
about; inputs the code must refuse have properties of their own.  Example counts, deadlines and
derandomisation come from the profile conftest.py loads (`ci` in CI: the same examples every
run; `explore` locally)."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from weights.core.errors import MobileOError, WeightsError


def one_line(e: MobileOError) -> str:
    text = str(e)
    assert "\n" not in text and "Fix:" in text, text
    return text


# ---------------------------------------------------------------------- safetensors header

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1}
json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


def _file(tmp_path, header, data_len: int, name="x.safetensors", pad=True) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)
    return path


@st.composite
def valid_headers(draw):
    """A consistent header: tensors packed one after another, and the data length."""
    header, offset = {}, 0
    for i in range(draw(st.integers(0, 5))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 6), max_size=3))
        n = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype]
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    return header, offset


@given(valid_headers(), st.integers(0, 16))
def test_safetensors_valid_headers_parse_exactly(tmp_path_factory, hv, slack):
    from weights.mapping.safetensors_io import read_header

    header, data_len = hv
    path = _file(tmp_path_factory.mktemp("st"), header, data_len + slack)
    infos = read_header(path)
    assert set(infos) == {k for k in header if k != "__metadata__"}
    size = path.stat().st_size
    for key, info in infos.items():
        assert info.shape == tuple(header[key]["shape"]) and info.dtype == header[key]["dtype"]
        assert 0 <= info.start <= info.end <= size


@given(valid_headers(), st.integers(1, 64))
def test_safetensors_truncated_data_is_named(tmp_path_factory, hv, cut):
    from weights.mapping.safetensors_io import read_header

    header, data_len = hv
    assume(data_len > 0)
    path = _file(tmp_path_factory.mktemp("st"), header, max(data_len - cut, 0))
    with pytest.raises(WeightsError) as e:
        read_header(path)
    assert path.name in one_line(e.value)


@given(st.binary(max_size=64))
def test_safetensors_any_bytes_give_a_weights_error_or_a_header(tmp_path_factory, blob):
    from weights.mapping.safetensors_io import read_header

    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(blob)
    try:
        read_header(path)
    except WeightsError as e:
        one_line(e)


entries = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(sorted(DTYPES)) | json_values,
    "shape": st.lists(st.integers(-3, 6), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-8, 64), min_size=2, max_size=2) | json_values})
headers = (st.dictionaries(st.text(max_size=6), entries | json_values, max_size=4)
           | json_values)  # any JSON document, lists and numbers included


@given(headers)
@example([])  # a JSON array, not an object
def test_safetensors_any_json_header_gives_a_weights_error_or_a_header(tmp_path_factory, header):
    from weights.mapping.safetensors_io import read_header

    path = _file(tmp_path_factory.mktemp("st"), header, 32)
    try:
        infos = read_header(path)
    except WeightsError as e:
        one_line(e)
    else:
        for info in infos.values():
            assert 0 <= info.start <= info.end <= path.stat().st_size


# ---------------------------------------------------------------------- manifest validator


@pytest.fixture(scope="module")
def good_manifest(tmp_path_factory, tiny_ckpt):
    from tools.golden import PLACEHOLDER_COMPONENTS, placeholder_results
    from ios_bridge import MANIFEST_FILE
    from ios_bridge.manifest import write_manifest

    out = tmp_path_factory.mktemp("export")
    write_manifest(out, tiny_ckpt, placeholder_results(tiny_ckpt, out), model_id="synthetic/tiny", revision="abc",
                   requested=PLACEHOLDER_COMPONENTS)
    return out, json.loads((out / MANIFEST_FILE).read_text())


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=40)  # each example validates a whole export folder
@given(st.data())
def test_validator_reports_every_mutation_as_lines(good_manifest, data):
    """Any one node of a valid manifest replaced (or removed): the validator returns problem
    lines, never raises; the untouched manifest stays valid."""
    from ios_bridge import MANIFEST_FILE
    from ios_bridge.validate import validate

    folder, good = good_manifest
    m = json.loads(json.dumps(good))
    paths = [p for p in _paths(m) if p]
    where = data.draw(st.sampled_from(paths))
    parent = m
    for k in where[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(json_values)
    path = folder / MANIFEST_FILE
    try:
        path.write_text(json.dumps(m))
        problems = validate(folder, read_bundles=False)  # placeholder bundles: no specs
    finally:
        path.write_text(json.dumps(good))
    assert isinstance(problems, list) and all(isinstance(p, str) and "\n" not in p for p in problems)
    assert validate(folder, read_bundles=False) == []


@settings(max_examples=30)
@given(json_values)
def test_validator_any_json_document(good_manifest, doc):
    from ios_bridge import MANIFEST_FILE
    from ios_bridge.validate import validate

    folder, good = good_manifest
    path = folder / MANIFEST_FILE
    try:
        path.write_text(json.dumps(doc))
        problems = validate(folder, read_bundles=False)  # placeholder bundles: no specs
    finally:
        path.write_text(json.dumps(good))
    assert problems and all(isinstance(p, str) for p in problems)


# ---------------------------------------------------------------------- prompt building

# Text a user may type: any characters but surrogates, and never the image placeholder, which
# the prompt builders refuse (that refusal is its own property below).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
user_text = any_text.filter(lambda t: "<image>" not in t)
blank_text = st.text(st.sampled_from(" \t\n\r\u3000\u00a0"), max_size=6)


def nfc(text: str) -> str:
    """Qwen2's tokenizer (and the tiny one) NFC-normalizes: decode(encode(t)) == NFC(t)."""
    import unicodedata

    return unicodedata.normalize("NFC", text)


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpt):
    from mlx_model.support.tokenizer import Tokenizer

    return Tokenizer.from_checkpoint(tiny_ckpt)


@given(user_text)
def test_multimodal_prompt_splices_one_image(tokenizer, question):
    from mlx_model.components.multimodal import MultimodalPrompt
    from mlx_model.pipelines.understanding import prompt_text
    from weights.core.prompts import IMAGE_PLACEHOLDER, IMAGE_TOKEN

    n = 16
    prompt = MultimodalPrompt.build(tokenizer, prompt_text(question), n)  # 40 characters stay far under the limit
    ids = prompt.ids()
    assert len(ids) == len(prompt) == sum(map(len, prompt.pieces)) + n
    image = tokenizer.token_id(IMAGE_TOKEN)
    assert ids[prompt.image_positions()] == [image] * n
    before, after = (tokenizer.decode(p) for p in prompt.pieces)
    assert before + IMAGE_PLACEHOLDER + after == nfc(prompt_text(question))


@given(any_text, any_text)
def test_placeholder_anywhere_is_refused_before_loading(a, b):
    from mlx_model.support.tokenizer import PromptError
    from mlx_model.pipelines.understanding import check_question, prompt_text

    for refuse in (check_question, prompt_text, lambda t: prompt_text("a question", system_prompt=t)):
        with pytest.raises(PromptError) as e:
            refuse(a + "<image>" + b)
        assert "<image>" in one_line(e.value)


@given(user_text.filter(str.strip))
def test_generation_prompt_is_its_template(tokenizer, prompt):
    from weights.core.prompts import MAX_PROMPT_TOKENS, generation_prompt

    ids = tokenizer.encode_prompt(prompt, generation_prompt)  # 40 characters stay far under the limit
    assert len(ids) <= MAX_PROMPT_TOKENS
    assert tokenizer.decode(ids) == nfc(generation_prompt(prompt))


@given(blank_text)
def test_blank_generation_prompt_is_one_error(tokenizer, prompt):
    from mlx_model.support.tokenizer import PromptError
    from weights.core.prompts import generation_prompt

    with pytest.raises(PromptError) as e:
        tokenizer.encode_prompt(prompt, generation_prompt)
    one_line(e.value)


@given(user_text, st.one_of(st.none(), user_text))
def test_system_prompt_replaces_only_the_system_turn(question, system):
    from mlx_model.pipelines.understanding import prompt_text
    from weights.core.prompts import SYSTEM, understanding_prompt

    text = prompt_text(question, system)
    if system is None:
        assert text == understanding_prompt(question)
    else:
        assert text == understanding_prompt(question).replace(SYSTEM, system, 1)
        assert text.endswith(understanding_prompt(question).split(SYSTEM, 1)[1])


# ---------------------------------------------------------------------- argument checks

floats = st.floats(allow_nan=True, allow_infinity=True)


@given(st.one_of(st.none(), st.integers(-5, 2000)), st.one_of(st.none(), floats), st.integers(-3, 10))
def test_sampling_checks(steps, guidance, n):
    from mlx_model.support.image_settings import MAX_STEPS, ImageSettings

    ok = ((steps is None or 1 <= steps <= MAX_STEPS) and (guidance is None or math.isfinite(guidance)) and n >= 1)
    try:
        ImageSettings("a red cup", steps=steps, guidance=guidance, n_images=n).check()
        assert ok
    except MobileOError as e:
        assert not ok
        one_line(e)


@given(st.lists(st.integers(-2**70, 2**70) | st.integers(0, 50), max_size=4), st.integers(1, 4))
def test_seed_checks(seeds, n):
    from mlx_model.support.image_settings import SEED_LIMIT, check_several_seeds

    ok = (bool(seeds) and all(0 <= s <= SEED_LIMIT - n for s in seeds) and len(set(seeds)) == len(seeds)
          and (len(seeds) == 1 or n == 1))
    try:
        assert check_several_seeds(seeds, n) == seeds and ok
    except MobileOError as e:
        assert not ok
        one_line(e)


@given(st.one_of(st.none(), st.integers(-100, 1000)), st.one_of(st.none(), st.integers(-100, 1000)))
def test_size_checks(tiny_ckpt, height, width):
    from mlx_model.support.image_settings import MAX_SIDE_FACTOR, latent_shape

    cfg = tiny_ckpt.config
    m, top = cfg.vae.spatial_compression * cfg.dit.patch_size, MAX_SIDE_FACTOR * cfg.image_size

    def good(side):
        return side is None or (side >= m and side % m == 0 and side <= top)

    try:
        c, h, w = latent_shape(cfg, height, width)
        assert good(height) and good(width)
        assert h * cfg.vae.spatial_compression == (height or cfg.image_size)
        assert w * cfg.vae.spatial_compression == (width or cfg.image_size)
    except MobileOError as e:
        assert not (good(height) and good(width))
        one_line(e)


@given(st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=8),
       st.sampled_from(["", ".png", ".PNG", ".jpg", ".jpeg", ".webp", ".gif", ".txt", ".tiff", "/"]))
def test_output_names(tmp_path_factory, stem, ext):
    from mlx_model.cli_common import output_target
    from mlx_model.support.image_files import IMAGE_FORMATS

    folder = tmp_path_factory.mktemp("out")
    name = f"{folder}/{stem}{ext}"  # (a Path would drop the trailing /)
    try:
        path = output_target(name)
        assert path.suffix.lower() in IMAGE_FORMATS and ext in ("", ".png", ".PNG", ".jpg", ".jpeg", ".webp")
        assert path.parent == folder and not path.exists()
    except MobileOError as e:
        assert ext in (".gif", ".txt", ".tiff", "/")
        one_line(e)


@given(st.integers(-3, 10**6), floats, floats, st.integers(-3, 300), floats,
       st.one_of(st.none(), floats), st.integers(-2, 50), st.one_of(st.none(), st.integers(-2, 100)))
def test_decoding_checks(max_tokens, temp, top_p, top_k, min_p, rep, rep_ctx, kv):
    from mlx_model.pipelines.understanding import KV_KEEP, check_options

    fin = math.isfinite
    ok = (max_tokens >= 1 and fin(temp) and temp >= 0 and fin(top_p) and 0 < top_p <= 1 and top_k >= 0
          and fin(min_p) and 0 <= min_p < 1 and (rep is None or (fin(rep) and rep > 0)) and rep_ctx >= 1
          and (kv is None or kv > KV_KEEP))
    try:
        check_options(max_tokens, temp, top_p, top_k, min_p, rep, rep_ctx, kv)
        assert ok
    except MobileOError as e:
        assert not ok
        one_line(e)


@given(st.integers(1, 5000), st.integers(1, 10**6), st.integers(1, 40000))
def test_answer_is_bounded_by_the_context(n_prompt, max_tokens, context):
    from mlx_model.pipelines.understanding import check_length

    try:
        check_length(n_prompt, max_tokens, context)
        assert n_prompt + max_tokens <= context
    except MobileOError as e:
        assert n_prompt + max_tokens > context
        one_line(e)
