"""Prompt templates and special tokens (docs/model-facts.md section 6).

Token *names* live here; token *ids* are always read from the tokenizer by name.
"""

from __future__ import annotations

SYSTEM = "You are a helpful assistant."
# conversation "qwen_2"; {qs} is the user turn
CHAT_TEMPLATE = (
    "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
    "<|im_start|>user\n{qs}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
IMAGE_PLACEHOLDER = "<image>"

GENERATION_QS = "Please generate image based on the following caption: {prompt}"
UNDERSTANDING_QS = IMAGE_PLACEHOLDER + "\n{question}"
EDITING_QS = (
    IMAGE_PLACEHOLDER
    + "\nPlease edit the provided image according to the following description: {instruction}"
)

# names of the special tokens; ids come from the tokenizer
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn: decoding stops here
EOS_TOKEN = IM_END
IMG_START = "[IMG]"
IMG_END = "[/IMG]"
IMAGE_TOKEN = IMAGE_PLACEHOLDER
QWEN2_SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)  # ids right after the BPE ranks
MOBILEO_ADDED_TOKENS = (IMG_START, IMG_END, IMAGE_TOKEN)  # added by Mobile-O's train.py
SPECIAL_TOKENS = QWEN2_SPECIAL_TOKENS + MOBILEO_ADDED_TOKENS

MAX_PROMPT_TOKENS = 512  # tokenizer_model_max_length


def generation_prompt(prompt: str) -> str:
    return CHAT_TEMPLATE.format(qs=GENERATION_QS.format(prompt=prompt))


def understanding_prompt(question: str) -> str:
    return CHAT_TEMPLATE.format(qs=UNDERSTANDING_QS.format(question=question))


def editing_prompt(instruction: str) -> str:
    return CHAT_TEMPLATE.format(qs=EDITING_QS.format(instruction=instruction))


ROLES = ("user", "assistant")


def conversation_prompt(turns: list[tuple[str, str]], system: str = SYSTEM, image_turn: int | None = None) -> str:
    """A multi-turn prompt in the ``qwen_2`` conversation template, ready for the assistant's
    next answer: every (role, text) turn is ``<|im_start|>{role}\n{text}<|im_end|>\n``
    and the prompt ends with ``<|im_start|>assistant\n``.  The one image, when there is one,
    goes at the start of user turn ``image_turn`` as ``<image>\n`` (Mobile-O puts it in the
    first user turn).  One user turn with its image is exactly :func:`understanding_prompt`
    (docs/model-facts.md section 6)."""
    if image_turn is not None and not (0 <= image_turn < len(turns) and turns[image_turn][0] == "user"):
        raise ValueError(f"turn {image_turn} is not a user turn, so it cannot hold the image")
    out = f"{IM_START}system\n{system}{IM_END}\n"
    for i, (role, text) in enumerate(turns):
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        if i == image_turn:
            text = f"{IMAGE_PLACEHOLDER}\n{text}"
        out += f"{IM_START}{role}\n{text}{IM_END}\n"
    return out + f"{IM_START}assistant\n"
