"""`generate PROFILE_OR_RUN "PROMPT"`: complete a prompt with a profile's model, or a run's latest checkpoint.

The prompt is a question put into the profile's prompt template, as training and evaluation do (its
`prompt.template` and instructions); `--raw` sends the text as given instead, with bos in front (`<start_of_turn>` /
`<end_of_turn>` typed in it become their ids). Generation stops at an end-of-sequence id or one of the profile's
`generation.stop_strings`. Plain output is the generated text, printed as it is generated; `--json` prints one object
with `prompt` (the text sent), `prompt_ids`, `generated_ids`, `generated_logprobs` (log p of each generated token
under softmax(logits / T) over the whole vocabulary, before top-k/top-p; T = 1 with `--greedy` unless
`--temperature` is given) and `text` (without the final end-of-sequence id). Progress goes to stderr, so stdout
holds only the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (sampling defaults come from the profile's `generation` section)."""
    ap = argparse.ArgumentParser(prog="tunix-tui generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="a profile .toml, or a run directory (its frozen profile and checkpoints)")
    ap.add_argument("prompt", help="the question, put into the profile's prompt template (see --raw)")
    ap.add_argument("--raw", action="store_true", help="send the prompt as given, without the template")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: generation.max_generation_steps")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--temperature", type=float, default=None, help="default: generation.temperature")
    ap.add_argument("--top-k", type=int, default=None, help="0 disables; default: generation.top_k")
    ap.add_argument("--top-p", type=float, default=None, help="default: generation.top_p")
    ap.add_argument("--seed", type=int, default=None, help="sampling seed; default: run.seed")
    ap.add_argument("--step", type=int, default=None, help="with a run directory: checkpoint step (default latest)")
    ap.add_argument("--base", action="store_true", help="with a run directory: ignore its adapters")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile key, e.g. --set model.weight_source=gguf (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    return ap


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _has_checkpoint(run_dir: Path) -> bool:
    from engine.train.checkpoints import CheckpointStore

    if not (run_dir / "checkpoints").is_dir():
        return False
    store = CheckpointStore(run_dir / "checkpoints", read_only=True)
    try:
        return store.latest_step() is not None
    finally:
        store.close()


class TextStream:
    """Writes a completion to `out` as it grows: given the tokens so far, it writes the text not written yet (held
    back while the end is an unfinished character or could still change)."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], stop_strings: Sequence[str], out: Any = None):
        self.tokenizer, self.eos, self.stop_strings = tokenizer, set(int(e) for e in eos_ids), tuple(stop_strings)
        self.out = out or sys.stdout
        self.written = ""

    def text(self, ids: Sequence[int]) -> str:
        from engine.train.text import completion_ids, cut_at_stop

        text = self.tokenizer.decode(completion_ids(list(ids), len(ids), self.eos))
        return cut_at_stop(text, self.stop_strings) if self.stop_strings else text

    def __call__(self, rows: list[list[int]]) -> None:
        self._write(self.text(rows[0]).rstrip("\ufffd"))

    def finish(self, text: str) -> None:
        self._write(text)
        self.out.write("\n")
        self.out.flush()

    def _write(self, text: str) -> None:
        if len(text) > len(self.written) and text.startswith(self.written):
            self.out.write(text[len(self.written):])
            self.out.flush()
            self.written = text


def run(args: argparse.Namespace, stream: bool = False) -> dict[str, Any]:
    """Load the model, generate, and return the JSON-able result (`stream`: write the text to stdout as it comes)."""
    from engine.model.load import load_model_and_tokenizer
    from engine.profile_io import load_profile
    from engine.sampler import Sampler
    from engine.train.setup import Policy
    from engine.train.text import PromptEncoder

    profile = load_profile(args.profile, args.overrides)
    gen = profile.generation
    max_new = args.max_new_tokens if args.max_new_tokens is not None else gen.max_generation_steps
    if max_new < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    temperature = args.temperature if args.temperature is not None else (1.0 if args.greedy else gen.temperature)
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    top_k = args.top_k if args.top_k is not None else gen.top_k
    top_p = args.top_p if args.top_p is not None else gen.top_p
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"--top-k must be >= 0 and --top-p in (0, 1], got {top_k} and {top_p}")
    seed = args.seed if args.seed is not None else profile.run.seed
    t0 = time.perf_counter()
    progress = lambda m: _err(f"[model] {m}")  # noqa: E731
    run_dir = Path(args.profile)
    if run_dir.is_dir() and not args.base and (args.step is not None or _has_checkpoint(run_dir)):
        policy = Policy.from_run(run_dir, args.step, profile=profile, on_progress=progress)
        model, tok = policy.model, policy.tokenizer
        _err(f"[model] adapters of checkpoint step {policy.step}")
    else:
        model, tok = load_model_and_tokenizer(profile.model, on_progress=progress, seed=profile.run.seed)
        if run_dir.is_dir() and not args.base:
            _err("[model] the run has no checkpoint yet: base model")
    encoder = PromptEncoder.for_profile(tok, profile)   # the template and stop strings training uses
    prompt = args.prompt if args.raw else encoder.text_of(args.prompt)
    prompt_ids = tok.encode(prompt, add_bos=True)
    if len(prompt_ids) + max_new > model.cfg.max_seq_len:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens) plus {max_new} new tokens exceed the model's "
                         f"context of {model.cfg.max_seq_len}")
    sampler = Sampler(model, tok, eos_ids=list(gen.eos_tokens), max_prompt_length=len(prompt_ids),
                      max_new_tokens=max_new, stop_sequences=encoder.stop_ids)
    text_of = TextStream(tok, gen.eos_tokens, gen.stop_strings)
    t1 = time.perf_counter()
    out = sampler([prompt_ids], temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, greedy=args.greedy,
                  on_partial=text_of if stream else None, partial_every=1)
    n = int(out.lengths[0])
    ids = [int(i) for i in out.tokens[0, :n]]
    text = text_of.text(ids)
    if stream:
        text_of.finish(text)
    _err(f"[generate] {n} tokens in {time.perf_counter() - t1:.1f} s (load {t1 - t0:.1f} s)")
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "generated_ids": ids,
        "generated_logprobs": [float(x) for x in out.logprobs[0, :n]],
        "text": text,
        "finish_reason": "length" if bool(out.truncated[0]) else "eos",
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "greedy": bool(args.greedy),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 for a bad command line or profile, 1 when the model cannot be loaded."""
    ap = build_parser()
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.greedy and (args.top_k is not None or args.top_p is not None):
        ap.error("--greedy takes no --top-k/--top-p")
    from engine.profile_io import ProfileError
    from engine.tokenizer import TokenizerError
    from engine.train.checkpoints import CheckpointError
    from engine.weights.errors import WeightsError

    try:
        result = run(args, stream=not args.json)
    except ProfileError as exc:
        _err(f"generate: {exc}")
        return 2
    except ValueError as exc:
        _err(f"generate: {exc}")
        return 2
    except (WeightsError, TokenizerError, CheckpointError, OSError) as exc:
        _err(f"generate: {exc}")
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0
