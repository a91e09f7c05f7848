"""Numbers in answers: GSM8K's `#### N` line, number parsing and normalisation.

Shared by the data sources, the reward functions and the evaluation counting, so that "1,234", "-5" and "2.50" mean
the same thing everywhere.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number as people write it: optional sign, digits with optional thousands commas, optional decimals; or a bare
# decimal like ".5". Commas are only accepted in groups of three so that "1,2" is not read as 12.
_NUMBER = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+−]?\.\d+"
NUMBER_RE = re.compile(_NUMBER)
_WHOLE_NUMBER_RE = re.compile(rf"^(?:{_NUMBER})$")
_FINAL_ANSWER_RE = re.compile(r"####\s*(.*?)\s*$", re.DOTALL)
# Decorations allowed around a number that is meant to stand alone ("$1,234", "12.", "50%").
_STRIP_AROUND = " \t\r\n$€£%.*"


def normalise_number(text: str) -> str | None:
    """Canonical string of a number written alone, or None if `text` is not one number.

    Accepts a sign (including the Unicode minus), thousands commas, decimals, a currency sign, a trailing period or
    percent sign and surrounding spaces. The result has no commas, no trailing zeros, no "+", and "-0" is "0":
    "1,234" -> "1234", "-5" -> "-5", "2.50" -> "2.5", "3.0" -> "3", "$12" -> "12".
    """
    s = text.strip().replace("−", "-")
    s = s.lstrip("$€£ ").rstrip(" .%")
    if s.startswith(("-$", "+$")):
        s = s[0] + s[2:]
    if not _WHOLE_NUMBER_RE.match(s):
        return None
    try:
        value = Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None
    return format_decimal(value)


def format_decimal(value: Decimal) -> str:
    """A Decimal as a plain string without exponent or trailing zeros ("-0" becomes "0")."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_number(text: str) -> float | None:
    """The value of a number written alone (see `normalise_number`), or None."""
    canonical = normalise_number(text)
    return None if canonical is None else float(canonical)


def first_number(text: str) -> str | None:
    """The first number that appears anywhere in `text`, normalised ("is -1,200 dollars" -> "-1200"), or None."""
    match = NUMBER_RE.search(text)
    if match is None:
        return None
    return normalise_number(match.group(0))


def final_answer(answer_text: str) -> str | None:
    """The normalised final answer of a GSM8K-style solution, or None if it has none.

    The answer is the text after the last `#### ` line ("... #### 1,234" -> "1234"). A solution without `####` that
    is itself just a number ("42", "-3.5") is accepted as its own answer, so plain question/answer tables work too.
    """
    if not answer_text:
        return None
    marker = answer_text.rfind("####")
    if marker >= 0:
        match = _FINAL_ANSWER_RE.match(answer_text[marker:])
        return normalise_number(match.group(1)) if match else None
    return normalise_number(answer_text)
