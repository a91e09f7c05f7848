"""The prompt around each question, chosen to suit the weights.

Two built-in templates (`prompt.template`):

* `chat`, for instruction-tuned weights (Gemma's `-it` checkpoints). Gemma has no system role, so the instructions
  open the user turn:

      <start_of_turn>user
      {instructions}

      {question}<end_of_turn>
      <start_of_turn>model

* `completion`, for pretrained (base) weights, such as the offline Gemma 3 270M package. A base model continues text;
  in the chat template it repeats the question. So the question is written as the next item of a short worked list
  (three solved problems of our own, one operation each, in the answer format), and the model completes it:

      {instructions}

      Question: <example 1>
      Answer: <reasoning>12 + 7 = 19</reasoning> <answer>19</answer>
      …
      Question: {question}
      Answer:

`auto` (the default) picks `chat` for instruction-tuned weights and `completion` for pretrained ones, from the
weights' name (`-it`, `instruct` or `chat` in a checkpoint's name or path; the offline GGUF package is the pretrained
270M; random weights get `chat`). Any other value is a template of the user's own with a `{question}` placeholder.

The strings carry no `<bos>`: encode them with `add_bos=True`.
"""

from __future__ import annotations

import re

from engine.tokenizer import END_OF_TURN, START_OF_TURN

REASONING_START = "<reasoning>"
REASONING_END = "</reasoning>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"

TEMPLATE_CHOICES = ("auto", "chat", "completion")

DEFAULT_INSTRUCTIONS = (
    f"Solve the problem below. First think it through step by step and write your working between "
    f"{REASONING_START} and {REASONING_END}. Then write only the final answer, a single number, between "
    f"{ANSWER_START} and {ANSWER_END}."
)
COMPLETION_INSTRUCTIONS = "Solve each problem. Show the working, then give the final answer as a single number."



def turn(role: str, text: str) -> str:
    """One turn of Gemma's chat format (no system role: instructions open the user turn)."""
    return f"{START_OF_TURN}{role}\n{text}{END_OF_TURN}\n"


CHAT_TEMPLATE = turn("user", "{instructions}\n\n{question}") + f"{START_OF_TURN}model\n"
# The same format as a Jinja chat template, as exported models carry it (Hugging Face's tokenizer config, GGUF).
JINJA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}" + turn("{{ role }}", "{{ message['content'] | trim }}") + "{% endfor %}"
    "{% if add_generation_prompt %}" + START_OF_TURN + "model\n{% endif %}")
COMPLETION_TEMPLATE = (
    "{instructions}\n\n"
    "Question: Mia has 12 pens. Her aunt gives her 7 pens. How many pens does Mia have now?\n"
    f"Answer: {REASONING_START}12 + 7 = 19{REASONING_END} {ANSWER_START}19{ANSWER_END}\n\n"
    "Question: Leo has 30 dollars. He spends 8 dollars on lunch. How much money does Leo have now?\n"
    f"Answer: {REASONING_START}30 - 8 = 22{REASONING_END} {ANSWER_START}22{ANSWER_END}\n\n"
    "Question: A box holds 6 eggs. How many eggs are in 4 boxes?\n"
    f"Answer: {REASONING_START}4 * 6 = 24{REASONING_END} {ANSWER_START}24{ANSWER_END}\n\n"
    "Question: {question}\n"
    "Answer:"
)
DEFAULT_TEMPLATE = CHAT_TEMPLATE
TEMPLATES = {"chat": CHAT_TEMPLATE, "completion": COMPLETION_TEMPLATE}
TEMPLATE_INSTRUCTIONS = {"chat": DEFAULT_INSTRUCTIONS, "completion": COMPLETION_INSTRUCTIONS}

PACKAGED_GGUF_NAME = "Gemma 3 270m"   # `general.name` of the offline package's file: the pretrained model
_INSTRUCTION_TUNED = re.compile(r"(^|[-_ ./])(it|instruct|chat)($|[-_ ./])", re.IGNORECASE)


def check_template(template: str) -> None:
    """ValueError unless `template` has a `{question}` placeholder (`{instructions}` is optional)."""
    if "{question}" not in template:
        raise ValueError("prompt.template must be one of " + ", ".join(TEMPLATE_CHOICES) + " or a template with "
                         "{question} (and usually {instructions}); got " + repr(template[:80]))


def instruction_tuned(name: str) -> bool:
    """Whether a checkpoint name or path names instruction-tuned weights (`-it`, `instruct`, `chat`)."""
    return bool(_INSTRUCTION_TUNED.search(name))


def weights_name(source: str, path: str, size: str) -> str:
    """The name the `auto` template is chosen by: the path or id, or the default one the source takes."""
    if path:
        return path
    if source == "gguf":
        return PACKAGED_GGUF_NAME
    if source == "kaggle":
        return f"google/gemma-3/flax/gemma3-{size}-it"
    if source == "huggingface":
        return f"google/gemma-3-{size}-it"
    return "random-it"   # random weights: the chat template (its shorter prompts suit the small test model)


def template_kind(setting: str, *, source: str, path: str = "", size: str = "270m") -> str:
    """`chat`, `completion` or `custom`: which template `prompt.template = setting` means for these weights."""
    if setting == "auto":
        return "chat" if instruction_tuned(weights_name(source, path, size)) else "completion"
    return setting if setting in TEMPLATES else "custom"


def resolve_template(setting: str, instructions: str = "", *, source: str, path: str = "",
                     size: str = "270m") -> tuple[str, str, str]:
    """(kind, template text, instructions) for a profile's `prompt.template` and `prompt.instructions`."""
    kind = template_kind(setting, source=source, path=path, size=size)
    if kind == "custom":
        check_template(setting)
        return kind, setting, instructions or DEFAULT_INSTRUCTIONS
    return kind, TEMPLATES[kind], instructions or TEMPLATE_INSTRUCTIONS[kind]


def profile_template(profile) -> tuple[str, str, str]:
    """`resolve_template` for a whole profile (any object with `.prompt` and `.model` sections)."""
    m = profile.model
    return resolve_template(profile.prompt.template, profile.prompt.instructions, source=m.weight_source,
                            path=m.weight_path, size=m.model_size)


def split_question(prompt: str) -> tuple[str, str]:
    """(the prompt without its question, the question) for prompts of the built-in templates: the text after the
    last `Question: ` up to `Answer:` (completion), or the user turn's last paragraph (chat). Other prompts come
    back whole, with an empty question."""
    start = prompt.rfind("Question: ")
    if start >= 0:
        end = prompt.find("\nAnswer:", start)
        end = len(prompt) if end < 0 else end
        return prompt[:start] + prompt[end:], prompt[start + len("Question: "):end]
    end = prompt.rfind("<end_of_turn>")
    start = prompt.rfind("\n\n", 0, end)
    if end >= 0 and start >= 0:
        return prompt[:start] + prompt[end:], prompt[start + 2:end]
    return prompt, ""


def describe_template(profile) -> str:
    """E.g. `completion (auto: pretrained weights, Gemma 3 270m)`, for `validate` and the run's log."""
    m = profile.model
    kind = profile_template(profile)[0]
    if profile.prompt.template != "auto":
        return f"{kind} (set in prompt.template)"
    flavour = "instruction-tuned" if kind == "chat" else "pretrained"
    return f"{kind} (auto: {flavour} weights, {weights_name(m.weight_source, m.weight_path, m.model_size)})"


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
