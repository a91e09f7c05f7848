"""The chat-template prompt."""

import pytest

from engine.prompt import DEFAULT_INSTRUCTIONS, build_prompt, build_prompts


def test_default_prompt_is_gemma_user_turn_with_instructions():
    text = build_prompt("What is 2+2?")
    assert text == (f"<start_of_turn>user\n{DEFAULT_INSTRUCTIONS}\n\nWhat is 2+2?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    for tag in ("<reasoning>", "</reasoning>", "<answer>", "</answer>"):
        assert tag in DEFAULT_INSTRUCTIONS
    assert "<bos>" not in text and "system" not in text


def test_instructions_and_template_are_settable():
    assert build_prompt("Q?", instructions="Answer briefly.") == (
        "<start_of_turn>user\nAnswer briefly.\n\nQ?<end_of_turn>\n<start_of_turn>model\n")
    assert build_prompt(" Q? ", template="{instructions}|{question}", instructions="I") == "I|Q?"
    assert build_prompts(["a", "b"], template="[{question}]") == ["[a]", "[b]"]


def test_braces_are_kept_literally():
    assert build_prompt("Is {x} = {instructions}?", instructions="{question} {y}", template="{instructions}/{question}") \
        == "{question} {y}/Is {x} = {instructions}?"


def test_template_without_question_is_refused():
    with pytest.raises(ValueError, match="question"):
        build_prompt("Q?", template="<start_of_turn>user\n{instructions}")
