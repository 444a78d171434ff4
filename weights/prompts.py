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

