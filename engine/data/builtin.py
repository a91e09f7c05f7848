"""Built-in word problems: multi-step arithmetic with exact integer answers, in GSM8K's format.

The engine's offline data source. Each problem follows one person's count of things (or money) through a chain of
events; every event is one or two arithmetic operations, and the worked solution shows each with GSM8K's
`<<a+b=c>>` calculator annotation and ends in `#### N`. Deterministic by (seed, difficulty); questions are unique.

Difficulty 1-5 sets the number of events (1, 2, 3, 4, 5-6), the size of the starting numbers (up to 20, 50, 100,
500, 1000) and which operations appear (1: add/subtract; 2: + groups of things; 3+: + multiply and divide).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from itertools import zip_longest
from typing import Callable

from engine.data.example import Example

_NAMES = [("Ava", "she"), ("Liam", "he"), ("Maya", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"),
          ("Priya", "she"), ("Mateo", "he"), ("Hana", "she"), ("Kofi", "he"), ("Lena", "she"), ("Tariq", "he"),
          ("Sofia", "she"), ("Jonas", "he"), ("Amara", "she"), ("Diego", "he"), ("Ingrid", "she"), ("Ravi", "he"),
          ("Chloe", "she"), ("Felix", "he"), ("Yara", "she"), ("Kenji", "he"), ("Nadia", "she"), ("Theo", "he"),
          ("Elif", "she"), ("Samir", "he"), ("Greta", "she"), ("Marcus", "he"), ("Lucia", "she"), ("Arjun", "he")]
_FRIENDS = ["a neighbour", "a classmate", "a cousin", "a friend", "the teacher", "a little brother",
            "a little sister", "a teammate"]
_THINGS = [("apple", "apples", "basket"), ("marble", "marbles", "bag"), ("sticker", "stickers", "sheet"),
           ("book", "books", "box"), ("pencil", "pencils", "pack"), ("cookie", "cookies", "tray"),
           ("seashell", "seashells", "bucket"), ("trading card", "trading cards", "pack"), ("stamp", "stamps", "album"),
           ("bead", "beads", "jar"), ("egg", "eggs", "carton"), ("toy car", "toy cars", "box"),
           ("orange", "oranges", "crate"), ("balloon", "balloons", "bag"), ("flower", "flowers", "bunch")]
_ITEMS = [("notebook", "notebooks"), ("sandwich", "sandwiches"), ("ticket", "tickets"), ("toy", "toys"),
          ("plant", "plants"), ("puzzle", "puzzles"), ("scarf", "scarves"), ("mug", "mugs")]
_MAX_START = {1: 20, 2: 50, 3: 100, 4: 500, 5: 1000}
_STEPS = {1: (1, 1), 2: (2, 2), 3: (3, 3), 4: (4, 4), 5: (5, 6)}


@dataclass
class _Story:
    """The running state of one problem while its events are generated."""

    name: str
    subj: str          # she / he
    obj: str           # her / him
    poss: str          # her / his
    money: bool        # dollars instead of things
    one: str           # singular unit name (things only)
    many: str          # plural unit name, or "dollars"
    container: str
    value: int
    sentences: list[str]
    steps: list[str]

    def amount(self, n: int) -> str:
        if self.money:
            return f"${n}"
        return f"{n} {self.one if n == 1 else self.many}"


def _calc(a: int, op: str, b: int) -> tuple[str, int]:
    """GSM8K-style calculator annotation for `a op b` and its exact integer result."""
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a}{op}{b} = <<{a}{op}{b}={result}>>{result}", result


def _add(story: _Story, rng: random.Random, limit: int) -> bool:
    b = rng.randint(2, max(3, limit // 2))
    text, story.value = _calc(story.value, "+", b)[0], story.value + b
    if story.money:
        sentence = rng.choice([f"{story.name} earns ${b} doing chores.", f"{story.name}'s grandmother gives "
                               f"{story.obj} ${b}.", f"{story.name} sells an old bike for ${b}."])
        story.steps.append(f"After getting ${b} more, {story.subj} has {text} dollars.")
    else:
        sentence = rng.choice([f"{story.name} buys {story.amount(b)} more.", f"{story.name} finds {story.amount(b)}.",
                               f"{rng.choice(_FRIENDS).capitalize()} gives {story.obj} {story.amount(b)}."])
        story.steps.append(f"{story.name} gets {b} more, so {story.subj} has {text} {story.many}.")
    story.sentences.append(sentence)
    return True


def _subtract(story: _Story, rng: random.Random, limit: int) -> bool:
    if story.value < 3:
        return False
    b = rng.randint(1, min(story.value - 1, max(2, limit // 2)))
    text = _calc(story.value, "-", b)[0]
    story.value -= b
    if story.money:
        sentence = rng.choice([f"{story.name} spends ${b} on lunch.", f"{story.name} pays ${b} for a bus pass.",
                               f"{story.name} donates ${b} to a school fundraiser."])
        story.steps.append(f"After spending ${b}, {story.subj} has {text} dollars.")
    else:
        friend = rng.choice(_FRIENDS)
        sentence = rng.choice([f"{story.name} gives {story.amount(b)} to {friend}.",
                               f"{story.name} loses {story.amount(b)} on the way home.",
                               f"{story.name} sells {story.amount(b)} at the market."])
        story.steps.append(f"{story.name} has {b} fewer, so {story.subj} has {text} {story.many}.")
    story.sentences.append(sentence)
    return True


def _groups(story: _Story, rng: random.Random, limit: int) -> bool:
    """k groups of p things (or k items at $p each): two operations in one event."""
    k = rng.randint(2, 6)
    p = rng.randint(2, max(3, min(12, limit // 8)))
    total_text, total = _calc(k, "*", p)
    if story.money:
        if total >= story.value:
            story.sentences.append(f"{story.name} earns ${p} an hour for {k} hours of babysitting.")
            story.steps.append(f"Babysitting pays {total_text} dollars.")
            text = _calc(story.value, "+", total)[0]
            story.steps.append(f"Now {story.subj} has {text} dollars.")
            story.value += total
        else:
            one, many = rng.choice(_ITEMS)
            story.sentences.append(f"{story.name} buys {k} {many} that cost ${p} each.")
            story.steps.append(f"The {many} cost {total_text} dollars.")
            text = _calc(story.value, "-", total)[0]
            story.steps.append(f"{story.name} has {text} dollars left.")
            story.value -= total
    else:
        story.sentences.append(f"{story.name} buys {k} {story.container}s with {p} {story.many} in each "
                               f"{story.container}.")
        story.steps.append(f"The {story.container}s hold {total_text} {story.many}.")
        text = _calc(story.value, "+", total)[0]
        story.steps.append(f"So {story.subj} has {text} {story.many}.")
        story.value += total
    return True


def _multiply(story: _Story, rng: random.Random, limit: int) -> bool:
    if story.value > 4 * limit:
        return False
    k = rng.randint(2, 4)
    word = {2: "twice", 3: "three times", 4: "four times"}[k]
    text = _calc(story.value, "*", k)[0]
    story.value *= k
    if story.money:
        story.sentences.append(f"By the end of the month {story.name}'s savings grow to {word} that amount.")
        story.steps.append(f"{word.capitalize()} that amount is {text} dollars.")
    else:
        story.sentences.append(f"Over the summer, {story.poss} collection grows to {word} as many {story.many}.")
        story.steps.append(f"{word.capitalize()} as many is {text} {story.many}.")
    return True


def _divide(story: _Story, rng: random.Random, limit: int) -> bool:
    options = [k for k in (2, 3, 4, 5) if story.value % k == 0 and story.value // k >= 1 and story.value >= 2 * k]
    if not options:
        return False
    k = rng.choice(options)
    text = _calc(story.value, "/", k)[0]
    story.value //= k
    what = "money" if story.money else story.many
    if k == 2:
        story.sentences.append(f"{story.name} gives half of {story.poss} {what} to {rng.choice(_FRIENDS)}.")
        story.steps.append(f"Half of it is left: {text}.")
    else:
        story.sentences.append(f"{story.name} splits {story.poss} {what} equally between {story.obj}self and "
                               f"{k - 1} friends, and keeps one share.")
        story.steps.append(f"There are {k} shares, so {story.subj} keeps {text}.")
    return True


_OPS: dict[int, list[Callable[[_Story, random.Random, int], bool]]] = {
    1: [_add, _subtract],
    2: [_add, _subtract, _groups],
    3: [_add, _subtract, _groups, _multiply, _divide],
    4: [_add, _subtract, _groups, _multiply, _divide],
    5: [_add, _subtract, _groups, _multiply, _divide],
}


def _one_problem(rng: random.Random, difficulty: int) -> tuple[str, str, int]:
    name, subj = rng.choice(_NAMES)
    obj, poss = ("her", "her") if subj == "she" else ("him", "his")
    money = rng.random() < 0.3
    one, many, container = rng.choice(_THINGS)
    if money:
        one, many, container = "dollar", "dollars", "wallet"
    limit = _MAX_START[difficulty]
    story = _Story(name=name, subj=subj, obj=obj, poss=poss, money=money, one=one, many=many, container=container,
                   value=rng.randint(max(3, limit // 5), limit), sentences=[], steps=[])
    story.sentences.append(f"{name} has {story.amount(story.value)}.")
    lo, hi = _STEPS[difficulty]
    events = rng.randint(lo, hi)
    done = 0
    while done < events:
        op = rng.choice(_OPS[difficulty])
        if op(story, rng, limit):
            done += 1
    question_end = (f"How much money does {name} have now?" if money
                    else rng.choice([f"How many {many} does {name} have now?",
                                     f"How many {many} does {name} have in the end?"]))
    question = " ".join(story.sentences + [question_end])
    solution = "\n".join(story.steps + [f"#### {story.value}"])
    return question, solution, story.value


def generate_problems(n: int, *, seed: int, difficulty: int = 2) -> list[Example]:
    """`n` distinct word problems, deterministic by (seed, difficulty); ids are "builtin-0" ... "builtin-{n-1}"."""
    if not 1 <= difficulty <= 5:
        raise ValueError(f"builtin difficulty must be 1..5, got {difficulty}")
    if n < 0:
        raise ValueError(f"builtin size must be >= 0, got {n}")
    rng = random.Random(seed * 7919 + difficulty)
    seen: set[str] = set()
    examples: list[Example] = []
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not generate {n} distinct problems at difficulty {difficulty}; ask for fewer")
        question, solution, value = _one_problem(rng, difficulty)
        if question in seen:
            continue
        seen.add(question)
        examples.append(Example(question=question, answer_text=solution, answer=str(value),
                                id=f"builtin-{len(examples)}"))
    return examples


def difficulty_levels(difficulty: int, min_difficulty: int = 0) -> list[int]:
    """The difficulties a mix draws from: `min_difficulty` .. `difficulty`, or `difficulty` alone when
    `min_difficulty` is 0 (off) or not below it."""
    return list(range(min_difficulty, difficulty + 1)) if 0 < min_difficulty < difficulty else [difficulty]


def mixed_problems(n: int, *, seed: int, difficulty: int, min_difficulty: int = 0) -> list[Example]:
    """`n` problems of each of `difficulty_levels(difficulty, min_difficulty)` in equal shares, interleaved (easiest
    first in each round); ids "builtin-0" ... "builtin-{n-1}". Each difficulty's problems are those
    `generate_problems` gives it."""
    levels = difficulty_levels(difficulty, min_difficulty)
    if len(levels) == 1:
        return generate_problems(n, seed=seed, difficulty=difficulty)
    shares = [generate_problems(n // len(levels) + (i < n % len(levels)), seed=seed, difficulty=level)
              for i, level in enumerate(levels)]
    order = [problem for round_ in zip_longest(*shares) for problem in round_ if problem is not None]
    return [replace(problem, id=f"builtin-{i}") for i, problem in enumerate(order)]
