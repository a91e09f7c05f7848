"""Check a run's exports with the Hugging Face libraries: the merged export through `transformers`, the PEFT export
through `peft` on the run's own base weights, each against our logits on 3 prompts.

Two steps, in two environments (torch, transformers and peft are never installed into the project's .venv):

    # 1. in the project's venv: our logits, and the run's base weights as a Hugging Face folder (for PEFT)
    .venv/bin/python bench/export_check.py reference RUN --out CHECK_DIR
    .venv/bin/tunix-tui export RUN --format merged --out CHECK_DIR/merged
    .venv/bin/tunix-tui export RUN --format peft --out CHECK_DIR/peft
    .venv/bin/tunix-tui export RUN --format gguf --out CHECK_DIR/gguf      # optional; --gguf-type q8_0 too

    # 2. in a venv of its own (torch's CPU wheel is enough):
    #    python3 -m venv REFVENV && REFVENV/bin/pip install torch transformers peft sentencepiece protobuf gguf
    REFVENV/bin/python bench/export_check.py compare CHECK_DIR

`compare` prints the largest logit difference per prompt and export, and exits 1 when one exceeds --tolerance
(default 1e-3: both sides compute in float32, in different orders). It also prints how far the base model alone is
from ours (the adapters' own effect: a check that compares equal models proves nothing) and, when the merged export
carries a tokenizer, whether transformers' tokenizer gives our token ids. The prompts are given as our token ids (the
`tiny` test model has no tokenizer that transformers knows). GGUF files in CHECK_DIR/gguf are read by transformers'
GGUF loader (the `gguf` package) and compared too; their weights are rounded (F16, Q8_0), so they are held to the
argmax agreeing at 90% of positions rather than to the tolerance, and skipped for `tiny`, whose layer pattern and
query scale GGUF readers do not take from the file (they assume Gemma 3's).

The slow test `tests/test_export.py::test_export_command_on_a_tiny_run` runs the first step on a tiny run, and the
second too when $TUNIX_TUI_EXPORT_CHECK_PYTHON names an interpreter of such a venv.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROMPTS = ["What is 12 + 30?", "<start_of_turn>user\nName a prime number.<end_of_turn>\n<start_of_turn>model\n",
           "The capital of France is"]


def reference(run: str, out: Path) -> int:
    """Our logits for the prompts (the run's model with its adapters), and the base weights as an HF folder."""
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from engine.commands.export import load_run_model
    from engine.export.merged import write_merged
    from engine.model import causal_attention_mask, make_positions
    from engine.model.lora import adapters_off
    from engine.protocol import find_run

    run_dir = find_run(run)
    if run_dir is None:
        print(f"no run {run!r}", file=sys.stderr)
        return 2
    _, model, tokenizer, step = load_run_model(run_dir, None)
    out.mkdir(parents=True, exist_ok=True)

    @nnx.jit
    def logits(m, tokens):
        valid = jnp.ones(tokens.shape, bool)
        hidden, _ = m(tokens, make_positions(valid), causal_attention_mask(valid))
        return m.logits(hidden)

    cases = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_bos=True)
        cases.append({"prompt": prompt, "ids": ids,
                      "logits": np.asarray(logits(model, jnp.asarray([ids])))[0].tolist()})
    (out / "base").mkdir(exist_ok=True)
    write_merged(adapters_off(model), tokenizer, out / "base", dtype="float32")
    (out / "reference.json").write_text(json.dumps({"run": run_dir.name, "step": step, "model_size": model.cfg.name,
                                                    "cases": cases}))
    print(f"reference logits of {run_dir.name} step {step} and its base weights written to {out}")
    return 0


def compare(folder: Path, tolerance: float) -> int:
    """Load the merged export with transformers and the PEFT export with peft; compare logits with ours."""
    import numpy as np
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = json.loads((folder / "reference.json").read_text())
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"   # renamed in transformers 4.56
    kw = {dtype_key: torch.float32, "attn_implementation": "eager"}
    print(f"ours: {ref['run']} step {ref['step']}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {__import__('peft').__version__}")
    models = {"merged (transformers)": AutoModelForCausalLM.from_pretrained(folder / "merged", **kw)}
    base = AutoModelForCausalLM.from_pretrained(folder / "base", **kw)
    base.eval()
    with torch.no_grad():   # before PEFT wraps it: the base model alone
        base_logits = [base(torch.tensor([c["ids"]])).logits[0].float().numpy() for c in ref["cases"]]
    models["peft (on the run's base)"] = PeftModel.from_pretrained(base, folder / "peft")
    worst = 0.0
    for name, model in models.items():
        model.eval()
        for case in ref["cases"]:
            with torch.no_grad():
                got = model(torch.tensor([case["ids"]])).logits[0].float().numpy()
            want = np.asarray(case["logits"], np.float32)
            diff = float(np.max(np.abs(got - want)))
            same = float(np.mean(got.argmax(-1) == want.argmax(-1)))
            worst = max(worst, diff)
            print(f"{name:<26} {case['prompt'][:32]!r:<36} max |logit diff| {diff:.2e}  argmax agrees {same:.0%}")
    effect = max(float(np.max(np.abs(b - np.asarray(c["logits"], np.float32))))
                 for b, c in zip(base_logits, ref["cases"]))
    print(f"the adapters' own effect (the base alone against ours): max |logit diff| {effect:.2e}")
    status = 0 if worst <= tolerance else 1
    for gguf in sorted((folder / "gguf").glob("*.gguf")):
        if ref.get("model_size") == "tiny":
            print(f"{gguf.name}: skipped (GGUF readers assume Gemma 3's layer pattern and query scale, not tiny's)")
            continue
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kw)
        model.eval()
        for case in ref["cases"]:
            with torch.no_grad():
                got = model(torch.tensor([case["ids"]])).logits[0].float().numpy()
            want = np.asarray(case["logits"], np.float32)
            same = float(np.mean(got.argmax(-1) == want.argmax(-1)))
            status = status or (0 if same >= 0.9 else 1)
            kind = f"gguf {gguf.stem.rsplit('-', 1)[-1]} (transformers)"
            print(f"{kind:<26} {case['prompt'][:32]!r:<36} max |logit diff| "
                  f"{float(np.max(np.abs(got - want))):.2e}  argmax agrees {same:.0%}")
    if (folder / "merged" / "tokenizer.model").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder / "merged")
        agree = [tok(c["prompt"])["input_ids"] == c["ids"] for c in ref["cases"]]
        print(f"transformers' tokenizer from the merged export gives our token ids for {sum(agree)} of "
              f"{len(agree)} prompts")
        status = status or (0 if all(agree) else 1)
    print(f"largest difference {worst:.2e} (tolerance {tolerance:g}): {'OK' if worst <= tolerance else 'FAIL'}")
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("reference", help="in the project venv: our logits and the run's base weights")
    p.add_argument("run")
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("compare", help="in a venv with torch, transformers and peft")
    p.add_argument("folder", type=Path)
    p.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    return reference(args.run, args.out) if args.mode == "reference" else compare(args.folder, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
