"""Evaluation counting on hand-written completions, and the decoding presets."""

import sys

import pytest

from engine.grpo.eval_metrics import EVAL_PRESETS, count_eval, judge

COMPLETIONS = [
    # (completion, true answer, correct, partially correct, format correct)
    ("<reasoning>16 - 3 - 4 = 9 eggs, 9 * 2 = 18</reasoning>\n<answer>18</answer>", "18", True, True, True),
    ("<reasoning>r</reasoning><answer>$18.00</answer><end_of_turn>", "18", True, True, True),
    ("<reasoning>close</reasoning><answer>19</answer>", "18", False, True, True),       # ratio 1.056
    ("<reasoning>far</reasoning><answer>25</answer>", "18", False, False, True),
    ("The answer is 18.", "18", False, False, False),                                    # no <answer>: no number
    ("<answer>18</answer>", "18", True, True, False),                                    # right, wrong format
    ("<reasoning>r</reasoning><answer>1,234</answer>", "1234", True, True, True),       # commas
    ("<reasoning>r</reasoning><answer>-5</answer>", "-5", True, True, True),            # negatives
    ("<reasoning>r</reasoning><answer>5</answer>", "-5", False, False, True),
    ("<reasoning>r</reasoning><answer>2.50</answer>", "2.5", True, True, True),         # decimals
    ("<reasoning>r</reasoning><answer>1</answer>", "0", False, False, True),            # zero answer, no ratio
    ("<reasoning>r</reasoning><answer>x</answer> and 18", "18", False, False, False),
]


@pytest.mark.parametrize("completion, answer, correct, partial, formatted", COMPLETIONS)
def test_judge(completion, answer, correct, partial, formatted):
    item = judge(completion, answer)
    assert (item.correct, item.partially_correct, item.format_correct) == (correct, partial, formatted)


def test_counts_and_accuracies():
    counts = count_eval([c[0] for c in COMPLETIONS], [c[1] for c in COMPLETIONS])
    assert (counts.total, counts.correct, counts.partially_correct, counts.format_correct) == (12, 6, 7, 9)
    assert counts.accuracy == pytest.approx(6 / 12)
    assert counts.partial_accuracy == pytest.approx(7 / 12)
    assert counts.format_accuracy == pytest.approx(9 / 12)
    assert counts.summary()["format_correct"] == 9
    assert counts.items[2].extracted == "19"
    assert count_eval([], []).accuracy == 0.0
    with pytest.raises(ValueError):
        count_eval(["a"], [])


def test_presets():
    assert EVAL_PRESETS["greedy"]["top_k"] == 1 and EVAL_PRESETS["greedy"]["greedy"] is True
    assert EVAL_PRESETS["standard"] == {"greedy": False, "temperature": 0.7, "top_k": 50, "top_p": 0.95}
    assert EVAL_PRESETS["liberal"] == {"greedy": False, "temperature": 0.85, "top_k": 2000, "top_p": 1.0}


def test_counting_needs_no_jax():
    import subprocess

    code = "import sys, engine.grpo.eval_metrics; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
