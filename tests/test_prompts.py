"""Prompt templates equal the literal texts of Mobile-O's conversation "qwen_2"
(docs/model-facts.md section 6), written out here rather than rebuilt."""

from weights.core import prompts

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def test_generation_prompt():
    assert prompts.generation_prompt("a red cup") == (
        HEAD + "Please generate image based on the following caption: a red cup" + TAIL)


def test_understanding_prompt():
    assert prompts.understanding_prompt("What is this?") == HEAD + "<image>\nWhat is this?" + TAIL


def test_editing_prompt():
    assert prompts.editing_prompt("make it blue") == (
        HEAD + "<image>\nPlease edit the provided image according to the following description: make it blue"
        + TAIL)


def test_special_token_names():
    assert prompts.SPECIAL_TOKENS == ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "[IMG]", "[/IMG]", "<image>")
    assert prompts.EOS_TOKEN == "<|im_end|>" and prompts.PAD_TOKEN == "<|endoftext|>"
