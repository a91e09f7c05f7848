"""The prompt follows the weights: chat for instruction-tuned, worked examples for pretrained; stop strings."""

import subprocess
import sys

import pytest

from engine.profile_io import parse_text
from engine.prompt import (CHAT_TEMPLATE, COMPLETION_TEMPLATE, build_prompt, instruction_tuned, profile_template,
                           split_question,
                           resolve_template, template_kind)
from engine.tokenizer import ByteTokenizer
from engine.train.text import PromptEncoder, cut_at_stop, stop_token_sequences


@pytest.mark.parametrize("source, path, kind", [
    ("gguf", "", "completion"),                                  # the offline package: pretrained 270M
    ("kaggle", "", "chat"),                                      # default handle gemma3-270m-it
    ("huggingface", "", "chat"),                                 # default id google/gemma-3-270m-it
    ("huggingface", "google/gemma-3-270m", "completion"),
    ("huggingface", "google/gemma-3-1b-it", "chat"),
    ("gguf", "/models/gemma-3-270m-it-Q8_0.gguf", "chat"),
    ("gguf", "/models/gemma-3-270m-Q8_0.gguf", "completion"),
    ("path", "/models/my-instruct-gemma", "chat"),
    ("random", "", "chat"),
])
def test_auto_template_follows_the_weights_name(source, path, kind):
    assert template_kind("auto", source=source, path=path, size="270m") == kind


def test_named_and_custom_templates():
    assert resolve_template("chat", source="gguf")[:2] == ("chat", CHAT_TEMPLATE)
    assert resolve_template("completion", source="kaggle")[:2] == ("completion", COMPLETION_TEMPLATE)
    kind, text, instructions = resolve_template("Q: {question}\nA:", "Be brief.", source="gguf")
    assert (kind, text, instructions) == ("custom", "Q: {question}\nA:", "Be brief.")
    assert not instruction_tuned("gemma-3-270m") and instruction_tuned("Gemma-3-1B-IT")


def test_completion_prompt_is_a_worked_list_ending_in_the_question():
    _, template, instructions = resolve_template("auto", source="gguf")
    text = build_prompt("Tom has 3 apples and buys 5 more. How many apples does he have?", instructions, template)
    assert text.endswith("Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:")
    assert "<start_of_turn>" not in text and text.count("<answer>") == 3   # the three worked examples
    assert "<answer>" not in instructions   # the instructions do not spell the tags out


def test_profile_template_and_validation():
    p = parse_text('[model]\nweight_source = "gguf"\n', "p.toml")
    assert profile_template(p)[0] == "completion"
    with pytest.raises(Exception, match="prompt.template"):
        parse_text('[prompt]\ntemplate = "no placeholder"\n', "p.toml")
    with pytest.raises(Exception, match="generation.stop_strings"):
        parse_text('[generation]\nstop_strings = [""]\n', "p.toml")


def test_validate_prints_the_template_it_chose(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('[model]\nweight_source = "gguf"\n')
    out = subprocess.run([sys.executable, "-m", "tunix_tui.cli", "validate", str(profile)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "prompt template: completion" in out.stdout


def test_stop_strings_become_token_sequences_and_cut_the_text():
    tok = ByteTokenizer()
    seqs = stop_token_sequences(tok, ["</answer>"])
    assert seqs == [[b + tok.BYTE_OFFSET for b in b"</answer>"]]   # one way to write it in bytes
    assert cut_at_stop("<answer>4</answer>\n\nQuestion: more", ["</answer>"]) == "<answer>4</answer>"
    assert cut_at_stop("no stop here", ["</answer>"]) == "no stop here"
    enc = PromptEncoder(tok, "I", 64, "{instructions} {question}", ["</answer>"])
    assert enc.stop_ids == seqs and enc.text_of("Q?") == "I Q?"


def test_split_question_finds_the_question_in_both_templates():
    for kind in ("chat", "completion"):
        _, template, instructions = resolve_template(kind, source="gguf")
        prompt = build_prompt("Ava has 9 stamps. How many?", instructions, template)
        context, question = split_question(prompt)
        assert question == "Ava has 9 stamps. How many?" and "Ava" not in context and instructions in context
