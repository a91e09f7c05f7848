"""The chat-template prompt: Gemma has no system role, so the instructions open the user turn.

    <start_of_turn>user
    {instructions}

    {question}<end_of_turn>
    <start_of_turn>model

The string carries no `<bos>`: encode it with `add_bos=True`.
"""

from __future__ import annotations

REASONING_START = "<reasoning>"
REASONING_END = "</reasoning>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"

DEFAULT_INSTRUCTIONS = (
    f"Solve the problem below. First think it through step by step and write your working between "
    f"{REASONING_START} and {REASONING_END}. Then write only the final answer, a single number, between "
    f"{ANSWER_START} and {ANSWER_END}."
)

DEFAULT_TEMPLATE = "<start_of_turn>user\n{instructions}\n\n{question}<end_of_turn>\n<start_of_turn>model\n"


def check_template(template: str) -> None:
    """ValueError unless `template` has a `{question}` placeholder (`{instructions}` is optional)."""
    if "{question}" not in template:
        raise ValueError("prompt.template must contain {question} (and usually {instructions}); got "
                         f"{template[:80]!r}")


def build_prompt(question: str, instructions: str | None = None, template: str | None = None) -> str:
    """The prompt for one question. `instructions` / `template` default to DEFAULT_INSTRUCTIONS / DEFAULT_TEMPLATE.

    Only the `{instructions}` and `{question}` placeholders are replaced, so braces in either text (or anywhere else
    in the template) are kept as they are.
    """
    template = DEFAULT_TEMPLATE if template is None else template
    check_template(template)
    instructions = DEFAULT_INSTRUCTIONS if instructions is None else instructions
    # Replace the question last so a question containing "{instructions}" is not expanded.
    marker = "\x00question\x00"
    text = template.replace("{question}", marker).replace("{instructions}", instructions)
    return text.replace(marker, question.strip())


def build_prompts(questions: list[str], instructions: str | None = None, template: str | None = None) -> list[str]:
    """`build_prompt` for each question."""
    return [build_prompt(q, instructions, template) for q in questions]
