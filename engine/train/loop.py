"""The GRPO training process: load, (restore,) then per step rollout -> rewards -> reference -> update(s) ->
metrics, with evaluation and checkpoints on their cadence, and live control between phases.

A step passes records (engine.train.records): the rollout phase makes a `Rollout`, `score` a `ScoredRollout`
(`train_groups` keeps the groups the update trains on when `grpo.oversample` sampled more), `to_example` and the
reference phase a `TrainExample`, and the update phase applies the pure update
(engine.train.step.update) to it, `grpo.num_iterations` times.

`Trainer(run_dir).run()` does a whole run and returns the process exit code (0 finished or stopped, 1 failed).
Everything the console needs goes to RUN_DIR/events.jsonl; nothing is written outside the run directory.

One of several processes (engine/distributed.py) runs the same loop on the same data and seeds, so every process
computes the same rollouts, rewards and metrics over the mesh of all their devices; process 0 alone writes the events
(the others' RunLog writes nothing), engine.json, TensorBoard and W&B, and reads the control folder; the control
state is agreed at each boundary (engine.train.control), arrays are brought to the host whole (engine.distributed
.to_host) and every process takes part in each checkpoint (orbax writes the host arrays from process 0).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Profile
from engine.profile_io import load_profile, profile_fingerprint, to_dict
from engine.protocol import RunPaths
from engine.train.control import Controller
from engine.train.events import RunLog
from engine.train.process import Heartbeat, StopSignal

log = logging.getLogger("engine")

STEADY_COMPILE_SECONDS = 0.5   # a step that spent longer compiling is not a steady-state step


class StopRun(Exception):
    """Raised at a phase boundary when the run must stop (command or signal)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class TrainState:
    """The committed state: what a checkpoint holds. Replaced as a whole after each update."""
    step: int
    lora: Any
    opt_state: Any
    data_position: dict[str, int]

    @property
    def updates(self) -> int:
        """Updates applied so far (the learning-rate schedule's position), as the optimizer state counts them."""
        from engine.train.optim import applied_updates

        return applied_updates(self.opt_state)

    @property
    def nonfinite_in_row(self) -> int:
        """Non-finite updates skipped in a row, as the optimizer state counts them."""
        from engine.train.optim import nonfinite_in_row

        return nonfinite_in_row(self.opt_state)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step: a pure function of (run seed, step), so a resumed run samples the same."""
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class Timer:
    """Wall-clock seconds per phase of one step."""
    times: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds


@dataclass
class StepTally:
    """What the run's `summary` takes from this process's steps."""
    steps: int = 0
    steady_steps: int = 0
    steady_seconds: float = 0.0
    recent_rewards: deque = field(default_factory=lambda: deque(maxlen=10))   # reward_mean of the last 10 steps

    def add(self, metrics: dict[str, float], steady: bool) -> None:
        self.steps += 1
        if steady:
            self.steady_steps += 1
            self.steady_seconds += metrics["time_step"]
        self.recent_rewards.append(metrics.get("reward_mean"))

    @property
    def step_seconds(self) -> float | None:
        return self.steady_seconds / self.steady_steps if self.steady_steps else None

    @property
    def final_reward(self) -> float | None:
        return self.recent_rewards[-1] if self.recent_rewards else None

    @property
    def recent_reward(self) -> float | None:
        finite = [r for r in self.recent_rewards if r is not None and np.isfinite(r)]
        return float(np.mean(finite)) if finite else None


class Trainer:
    """One training process for one run directory."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False, install_signals: bool = True,
                 heartbeat_interval: float = 2.0, allow_changes: bool = False):
        self.paths = RunPaths(Path(run_dir))
        self.resume = resume
        self.allow_changes = allow_changes   # resume although the profile changed keys (each is recorded)
        self.install_signals = install_signals
        self.heartbeat_interval = heartbeat_interval
        from engine import distributed

        self.lead = distributed.is_lead()              # writes the run (process 0, or the only process)
        self.processes = distributed.process_count()
        self.log = RunLog(self.paths.events, write=self.lead)
        self.signals = StopSignal()
        self.control = Controller(self.paths.root, self.log, signal_stop=lambda: self.signals.requested,
                                  on_record=self._record_event, reads_commands=self.lead,
                                  sync=distributed.gather_ints if self.processes > 1 else None)
        self.profile: Profile | None = None
        self.state: TrainState | None = None
        self.store: Any = None
        self.wandb: Any = None
        self._saved_step: int | None = None
        self._compiled: set[str] = set()
        self._compiling: tuple | None = None   # the program in its first use: (name, step, start, stats, held)
        self.compile_cache: Path | None = None
        self.total_steps = 0
        self.tally = StepTally()   # this process's steps, for the summary
        # figures of the whole run for its `summary` (kept in checkpoints, so a resumed run continues them)
        self.figures: dict[str, Any] = {"best_reward": None, "best_reward_step": None, "baseline_eval": None,
                                        "final_eval": None, "last_eval": None}
        self._started = time.time()

    # ------------------------------------------------------------------------------------------------------------
    # entry point

    def run(self) -> int:
        """Do the run; returns the exit code. Never raises (an error is an event plus exit code 1)."""
        heartbeat = Heartbeat(self.paths.root, self.heartbeat_interval)
        if self.lead:
            heartbeat.start()
            self.control.start_watching()
        if self.install_signals:
            self.signals.install()
        try:
            self.log.status("starting", detail="resuming" if self.resume else "")
            self._setup()
            self._train()
            self._finish()
            self._summary("finished")
            self.log.status("finished", step=self.state.step if self.state else 0)
            return 0
        except StopRun as stop:
            try:
                self._save("stop", detail=stop.reason)
            except Exception as exc:  # noqa: BLE001 - the stop still ends the run; say what was not saved
                self._report_unsaved("stop", exc)
            self._summary("stopped")
            self.log.status("stopped", step=self.state.step if self.state else 0, detail=stop.reason)
            return 0
        except SystemExit:  # a second stop signal: leave at once, without a checkpoint
            self.log.status("stopped", step=self.state.step if self.state else 0,
                            detail="second signal: exited without a checkpoint")
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, KeyboardInterrupt included
            self._fail(exc)
            return 1
        finally:
            for closing in (self.control.stop_watching, lambda: self.wandb is not None and self.wandb.finish(),
                            lambda: self.store is not None and self.store.close(),
                            lambda: self.install_signals and self.signals.uninstall(),
                            heartbeat.stop, self.log.close):
                try:
                    closing()
                except Exception:  # noqa: BLE001 - closing down never raises (a full disk, a lost W&B)
                    log.exception("while closing down")

    def _fail(self, exc: BaseException) -> None:
        from engine.train.checkpoints import CheckpointError, IncompatibleCheckpoint

        expected = isinstance(exc, CheckpointError)   # says all there is to say: no traceback
        if isinstance(exc, IncompatibleCheckpoint):
            message = f"cannot resume from the checkpoint: {exc}"
        elif expected:
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        self.log.error(message, exc=None if expected else exc, fatal=True)
        if not isinstance(exc, IncompatibleCheckpoint):
            try:  # keep what was learnt since the last checkpoint, if it is sound
                self._save("error")
            except Exception as save_exc:  # noqa: BLE001
                self._report_unsaved("error", save_exc)
        self.log.status("failed", step=self.state.step if self.state else 0, detail=message[:300])

    def _report_unsaved(self, reason: str, exc: BaseException) -> None:
        last = f"the last checkpoint is step {self._saved_step}" if self._saved_step is not None else \
            "there is no checkpoint"
        self.log.error(f"could not save the state at the {reason} ({exc}); {last}")

    # ------------------------------------------------------------------------------------------------------------
    # set-up

    def _setup(self) -> None:
        self.log.status("loading", detail="profile")
        profile = self.profile = load_profile(self.paths.profile)
        self._configure_jax()
        self.fingerprint = profile_fingerprint(profile)
        from engine.train.checkpoints import CheckpointStore

        self.store = CheckpointStore(self.paths.checkpoints, max_to_keep=profile.training.max_checkpoints_to_keep)
        self._resume_plan = self._plan_resume() if self.resume else None  # before the slow loading
        resume_step = self._resume_plan.candidates[0] if self._resume_plan else None
        self._load_data(profile)
        self._load_model(profile)
        self._build_training(profile)
        from engine.train.watch import Watch

        self.watch = Watch(self)  # system figures, alerts, probes
        if resume_step is not None:
            self._restore(resume_step)
        if profile.logging.tensorboard and self.lead:  # a listener of the event stream, from run_started on
            from engine.train.tensorboard_log import TensorBoardLogger

            self.log.listeners.append(TensorBoardLogger(self.paths.root / "tensorboard",
                                                        on_problem=lambda msg: self.log.info(msg, level="warning")))
        from engine.sharding import mesh_fields

        self.log.emit("run_started", run_id=self.paths.run_id, pid=os.getpid(), host=os.uname().nodename,
                      resumed=resume_step is not None, step=self.state.step, total_steps=self.total_steps,
                      profile=str(self.paths.profile),
                      compile_cache=str(self.compile_cache) if self.compile_cache else None,
                      **mesh_fields(self.policy.mesh))
        self._start_wandb(profile, resumed=resume_step is not None)

    def _configure_jax(self) -> None:
        from engine.train.setup import configure_compile_cache

        self.compile_cache = configure_compile_cache()

    def _load_data(self, p: Profile) -> None:
        from engine.data import BatchIterator
        from engine.train.setup import load_splits

        d = p.data
        self.log.status("loading", detail=f"data ({d.source})")
        splits = self.splits = load_splits(p)
        self.log.emit("data_info", source=splits.description, dropped=splits.total_dropped, **splits.sizes())
        if splits.total_dropped:
            self.log.info(f"{splits.total_dropped} rows without a usable answer were dropped "
                          f"({', '.join(f'{k}: {v}' for k, v in splits.dropped.items() if v)})", level="warning")
        self.iterator = BatchIterator(splits.train, p.training.micro_batch_size * p.grpo.oversample,
                                      seed=p.run.seed, shuffle=d.shuffle,
                                      epochs=p.training.num_epochs, num_batches_cap=p.training.num_batches)
        self.total_steps = self.iterator.total_steps
        if self.total_steps == 0:
            raise ValueError(f"the training split has {len(splits.train)} examples, fewer than one batch of "
                             f"training.micro_batch_size = {p.training.micro_batch_size}"
                             + (f" x grpo.oversample = {p.grpo.oversample}" if p.grpo.oversample > 1 else ""))
        self.per_epoch = self.total_steps // max(p.training.num_epochs, 1)

    def _load_model(self, p: Profile) -> None:
        from engine.train.setup import Policy

        self.log.status("loading", detail=f"model {p.model.model_size} from {p.model.weight_source}")
        last = [0.0]

        def progress(message: str) -> None:
            if time.monotonic() - last[0] > 0.5:
                last[0] = time.monotonic()
                self.log.status("loading", detail=f"model: {message}", force=True)
            log.info("model: %s", message)

        if self.processes > 1:   # checked before any weight is placed on a mesh some processes are not in
            import jax

            from engine.sharding import make_mesh

            size = make_mesh(p.model.mesh_shape, p.model.mesh_axes).size
            if size != jax.device_count():
                raise ValueError(f"model.mesh_shape {list(p.model.mesh_shape)} uses {size} of the "
                                 f"{jax.device_count()} devices of the {self.processes} processes; a run of several "
                                 f"processes needs them all (model.mesh_shape = [] puts them all on fsdp)")
        self.policy = Policy.load(p, progress)
        self.model, self.tokenizer = self.policy.model, self.policy.tokenizer

    def _build_training(self, p: Profile) -> None:
        from engine.rewards import resolve_rewards
        from engine.sampler import Sampler
        from engine.train.optim import learning_rate_schedule, make_optimizer
        from engine.train.step import LossSettings, Phases
        from engine.train.text import PromptEncoder

        g = p.generation
        self.eos_ids = list(g.eos_tokens)
        self.rewards = resolve_rewards(p.rewards.functions, p.rewards.weights or None, base_dir=self.paths.root)
        self.encoder = PromptEncoder.for_profile(self.tokenizer, p)
        self.log.status("loading", detail="tokenizing prompts")
        train = self.splits.train
        self.prompt_width = self.encoder.width(train)
        if self.encoder.overlong:
            longest = max(self.encoder.overlong.values())
            self.log.info(f"{len(self.encoder.overlong)} of {len(train)} training prompts are longer than "
                          f"generation.max_prompt_length = {g.max_prompt_length} tokens (the longest: {longest}): "
                          f"they keep only their last {g.max_prompt_length} tokens, so the model sees them without "
                          f"their beginning (the instructions, any worked example); "
                          f"generation.max_prompt_length = {-(-longest // 8) * 8} fits them all", level="warning")
        self.sampler = self._agreeing(Sampler(
            self.model, self.tokenizer, eos_ids=self.eos_ids, max_prompt_length=g.max_prompt_length,
            max_new_tokens=g.max_generation_steps, min_prompt_bucket=self.encoder.bucket(train),
            stop_sequences=self.encoder.stop_ids))
        n_updates = self.total_steps * p.grpo.num_iterations
        self.schedule = learning_rate_schedule(p.optimizer, n_updates)
        self.optimizer = make_optimizer(p.optimizer, n_updates)
        self.phases = Phases(self.model, self.optimizer, LossSettings.from_profile(p), mesh=self.policy.mesh)
        lora = self.policy.lora
        opt_state = self.optimizer.init(lora)
        if self.policy.mesh.size > 1:   # its counters on the mesh too, as the update returns them: else the second
            opt_state = self.policy.place(opt_state)   # update would be compiled again for the new placement
        self.state = TrainState(step=0, lora=lora, opt_state=opt_state, data_position=self.iterator.state_dict())
        self._eval_sampler: Any = None

    def _plan_resume(self) -> Any:
        """Which checkpoints to try, newest first; refuses a changed profile (unless allowed) from the metas alone."""
        from engine.train.checkpoints import CheckpointError, IncompatibleCheckpoint

        plan = self.store.plan_resume(self.fingerprint)
        if not plan.candidates and not plan.damaged:
            self.log.info("no checkpoint to resume from: starting at step 0", level="warning")
            return None
        if not plan.candidates:
            raise CheckpointError("no checkpoint of this run can be restored: " + "; ".join(
                f"step {s}: {why}" for s, why in plan.damaged))
        if plan.changes and not self.allow_changes:
            raise IncompatibleCheckpoint(plan.changes)
        return plan

    def _restore(self, step: int) -> None:
        """Restore the newest checkpoint that restores whole (`step` is the newest candidate); the damaged newer ones
        are moved aside, each named with why in a warning."""
        from engine.train.checkpoints import CheckpointError, fingerprint_differences

        plan = self._resume_plan
        self.log.status("loading", detail=f"checkpoint of step {step}")
        try:
            restored, failed = self.store.restore_newest(
                plan.candidates, self.state.lora, self.state.opt_state, fingerprint=self.fingerprint,
                allow_changes=self.allow_changes, check=lambda r: self.iterator.load_state_dict(r.meta["data"]))
        except CheckpointError as exc:
            if plan.damaged and "no checkpoint of this run can be restored" in str(exc):
                raise CheckpointError(f"{exc}; " + "; ".join(f"step {s}: {why}" for s, why in plan.damaged)) \
                    from None
            raise
        for bad, why in sorted(plan.damaged + failed, reverse=True):
            where = self.store.set_aside(bad) if self.lead else None
            self.log.info(f"the checkpoint of step {bad} cannot be restored ({why})"
                          + (f"; moved to {where}" if where else ""), level="warning")
        changes = fingerprint_differences(restored.meta.get("fingerprint", {}), self.fingerprint)
        if changes:
            self.log.info("resuming with changed profile keys (--allow-changes): " + "; ".join(changes),
                          level="warning")
        lora = self.policy.use_adapters(restored.lora, step=restored.step)
        opt_state = self.policy.place(restored.opt_state)   # as the adapters (see Policy.place)
        self.state = TrainState(step=restored.step, lora=lora, opt_state=opt_state,
                                data_position=self.iterator.state_dict())
        self._saved_step = restored.step
        self.figures.update(restored.meta.get("figures") or {})
        skipped = len(plan.damaged) + len(failed)
        self.log.info(f"resumed from the checkpoint of step {restored.step}"
                      + (f", the newest that restores ({skipped} damaged set aside)" if skipped else ""),
                      level="warning" if skipped else "info")

    def _start_wandb(self, p: Profile, *, resumed: bool) -> None:
        from engine.train.wandb_log import WandbLogger, resolve_mode

        mode = resolve_mode(p.logging.wandb_mode) if self.lead else "disabled"   # one W&B run: process 0's
        if p.logging.wandb_mode == "auto" and mode == "disabled":
            log.info("W&B disabled (auto: no key configured)")
        self.wandb = WandbLogger(mode, project=p.run.project_name, run_name=self.paths.run_id,
                                 run_dir=self.paths.root, config=to_dict(p), resume=resumed, tags=list(p.run.tags),
                                 on_problem=lambda msg: self.log.info(msg, level="warning"))
        self.log.listeners.append(self.wandb.on_event)   # evaluations paired with their baseline

    # ------------------------------------------------------------------------------------------------------------
    # control between phases

    def _boundary(self, *_: Any) -> None:
        """Handle control: hold while paused, save on request, raise StopRun on a stop. Called at phase boundaries
        and between the decode chunks of a rollout or an evaluation (as the sampler's `between_chunks`)."""
        step = self.state.step if self.state else 0
        pending = self.control.boundary(step=step, save=lambda: self._save("request"))
        if pending.stop:
            raise StopRun(pending.stop)

    def _enter(self, phase: str, step: int, compiles: str | None = None) -> None:
        """A phase boundary: handle control, then announce the phase (as `compiling` on a program's first use)."""
        from engine.train.memory import trim_host_memory

        trim_host_memory()
        self._boundary()
        self._compiled_end()
        if compiles and compiles not in self._compiled:
            self._compiled_begin(compiles, step)
            self.log.status("compiling", phase=phase, step=step, detail=f"{compiles} (first use)")
        else:
            self.log.status("running", phase=phase, step=step)

    def _compiled_begin(self, program: str, step: int) -> None:
        from engine.train.setup import COMPILE_STATS

        self._compiled.add(program)
        self._compiling = (program, step, time.perf_counter(), COMPILE_STATS.snapshot(), self.control.held_seconds)

    def _compiled_end(self) -> None:
        """After a program's first use: a `compile` event (seconds spent compiling or loading it, cache outcome)."""
        if self._compiling is None:
            return
        from engine.train.setup import COMPILE_STATS, cache_outcome

        program, step, start, (hits0, misses0, seconds0), held = self._compiling
        self._compiling = None
        hits, misses, seconds = COMPILE_STATS.snapshot()
        self.log.emit("compile", step=step, program=program, seconds=seconds - seconds0,
                      phase_seconds=time.perf_counter() - start - (self.control.held_seconds - held),
                      cache_hits=hits - hits0, cache_misses=misses - misses0,
                      cache=cache_outcome(hits - hits0, misses - misses0, self.compile_cache is not None))

    # ------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _save(self, reason: str, detail: str = "") -> tuple[bool, str]:
        """Save the committed state (once per step), then a `checkpoint` event. Returns (ok, what happened): the
        answer to a checkpoint request."""
        if self.state is None or self.store is None:
            return False, "nothing to save yet: the run is still starting"
        step = self.state.step
        if step == 0 and self._saved_step is None:  # this process trained nothing and restored nothing
            if reason == "request":
                self.log.info("nothing trained yet: no checkpoint to save", level="warning")
            return False, "nothing trained yet: no checkpoint to save"
        path = self.store.path(step)
        if self._saved_step == step and reason in ("error", "final"):
            return True, f"step {step} is already saved ({path})"  # nothing new since the last checkpoint
        if self._saved_step != step:
            from engine.train.checkpoints import all_finite

            lora, opt_state = self._host_state()
            if not (all_finite(lora) and all_finite(opt_state)):
                self.log.info(f"step {step}: the state is not finite; no checkpoint written", level="error")
                return False, f"step {step} not saved: its state is not finite"
            t0 = time.perf_counter()
            previous = (self.log.status_now, self.log.phase_now)
            self.log.status("checkpointing", step=step, detail=reason)
            meta = {"fingerprint": self.fingerprint, "data": self.state.data_position,
                    "rng": {"seed": self.profile.run.seed, "scheme": "sampling seed = SeedSequence([seed, step])"},
                    "updates": self.state.updates, "nonfinite_in_row": self.state.nonfinite_in_row,
                    "total_steps": self.total_steps, "reason": reason, "figures": self.figures}
            path = self._write_checkpoint(step, reason, meta, lora, opt_state)
            if path is None:
                return False, f"step {step} not saved (see the error)"
            self._saved_step = step
            if previous[0] and previous[0] not in ("checkpointing",) and reason not in ("stop", "error", "final"):
                self.log.status(previous[0], phase=previous[1], step=step)
            outcome = f"saved step {step} -> {path}, {time.perf_counter() - t0:.1f} s"
        else:
            outcome = f"step {step} is already saved ({path})"
        self.log.emit("checkpoint", step=step, path=str(path), reason=reason, **({"detail": detail} if detail else {}))
        return True, outcome

    def _host_state(self) -> tuple[Any, Any]:
        """The committed adapters and optimizer state to save: as they are on one process; whole on each of several
        (a collective: orbax writes process 0's copy)."""
        if self.processes == 1:
            return self.state.lora, self.state.opt_state
        from engine.distributed import to_host

        return to_host((self.state.lora, self.state.opt_state))

    def _write_checkpoint(self, step: int, reason: str, meta: dict[str, Any], lora: Any,
                          opt_state: Any) -> Path | None:
        """`store.save` with the free space checked first. Short of space (or cut short by a full disk), it pauses
        with an error saying how much to free where, and tries again on resume; at a stop or after a failure it
        gives up, saying so (None)."""
        from engine.train.checkpoints import DiskFull

        while True:
            try:
                self.store.check_space(step, lora, opt_state)
                return self.store.save(step, lora, opt_state, meta)
            except DiskFull as exc:
                if reason in ("stop", "error") or self.control.pending.stop:
                    self._report_unsaved(reason, exc)
                    return None
                self.log.error(str(exc))
                self.control.pause_with_error(f"disk full: {exc}")
                if self.control.boundary(step=step).stop:   # holds until resumed; a stop ends the run
                    return None

    # ------------------------------------------------------------------------------------------------------------
    # training

    def _train(self) -> None:
        p = self.profile
        if p.eval.baseline and self.state.step == 0 and not self.resume:
            self._evaluate("test", p.eval.final_num_questions, step=0)
        while self.state.step < self.total_steps:
            self._step(self.state.step + 1)

    def _step(self, step: int) -> None:
        """rollout -> score -> the trained groups -> the update's example (reference) -> update(s) -> report (over
        every sampled group), then checkpoint and
        evaluation on their cadence."""
        from engine.train.records import score, to_example, train_groups
        from engine.train.setup import COMPILE_STATS

        p = self.profile
        timer = Timer()
        t_step, held_before = time.perf_counter(), self.control.held_seconds
        compiled_before, compile_before = len(self._compiled), COMPILE_STATS.seconds

        rollout, position = self._rollout(step, timer)
        self._enter("rewards", step)
        t0 = time.perf_counter()
        scored = score(rollout, self.rewards, scale_by_std=p.grpo.advantage_normalization == "std")
        timer.add("rewards", time.perf_counter() - t0)
        trained = train_groups(scored, p.training.micro_batch_size)
        example = self._logprobs(step, to_example(trained, self.prompt_width, self.tokenizer.pad_id), timer)
        update_metrics, lr = self._update(step, example, position, timer)

        self._compiled_end()
        self.log.status("running", phase="metrics", step=step)
        compile_seconds = COMPILE_STATS.seconds - compile_before
        # a steady step compiled nothing: its time predicts the next ones (an ETA leaves the others out)
        steady = len(self._compiled) == compiled_before and compile_seconds < STEADY_COMPILE_SECONDS
        timer.add("step", time.perf_counter() - t_step - (self.control.held_seconds - held_before))
        self._report(scored, update_metrics, lr, timer, compile_seconds=compile_seconds, steady=steady,
                     trained=trained)

        t = p.training
        if t.save_interval_steps and step % t.save_interval_steps == 0:
            self._save("interval")
        evaluation = None
        if t.eval_every_n_steps and step % t.eval_every_n_steps == 0 and step < self.total_steps:
            evaluation = self._evaluate("validation", p.eval.num_questions, step=step)
        self.watch.after_evaluations(step, evaluation)

    def _rollout(self, step: int, timer: Timer) -> tuple[Any, dict[str, int]]:
        """The rollout phase: the step's prompts and G completions of each (their partial text streamed as `partial`
        events) -> (Rollout, the data position after it)."""
        from engine.train.records import Rollout

        p = self.profile
        G = p.grpo.num_generations
        self._enter("rollout", step, compiles="sampler")
        t0 = time.perf_counter()
        examples = next(self.iterator)
        position = self.iterator.state_dict()
        ids = [self.encoder.ids(e) for e in examples]
        on_partial = (self._partial_callback(step, G) if p.logging.samples_per_step > 0
                      and p.generation.partial_every > 0 else None)   # partial_every = 0: never
        held = self.control.held_seconds
        out = self.sampler([row for row in ids for _ in range(G)], temperature=p.generation.temperature,
                           top_k=p.generation.top_k, top_p=p.generation.top_p, seed=step_seed(p.run.seed, step),
                           on_partial=on_partial, partial_every=max(p.generation.partial_every, 1),
                           between_chunks=self._boundary)
        if on_partial is not None:   # the rollout is over: the console clears its "generating" line
            self._emit_partial(step, [list(out.tokens[i, :out.lengths[i]]) for i in range(G)], done=True)
        texts = self.encoder.completions(out.tokens, out.lengths, self.eos_ids)
        # the adapters change every step, so the sampler's re-laid-out weight copy (the size of the layer weights)
        # would only be rebuilt; meanwhile the update needs the memory
        self.sampler.release()
        timer.add("rollout", time.perf_counter() - t0 - (self.control.held_seconds - held))   # not the time paused
        rollout = Rollout(step=step, examples=list(examples), prompts=[self.encoder.text(e) for e in examples],
                          prompt_ids=ids, tokens=out.tokens, lengths=out.lengths, truncated=out.truncated,
                          texts=texts, group_size=G)
        return rollout, position

    def _logprobs(self, step: int, example: Any, timer: Timer) -> Any:
        """The reference phase: the reference model's log-probabilities (beta > 0) and the sampling policy's (more
        than one update per rollout) -> the example with them."""
        p = self.profile
        if p.grpo.beta == 0 and p.grpo.num_iterations == 1:
            return example
        self._enter("reference", step, compiles="log-probabilities")
        t0 = time.perf_counter()
        batch = example.batch
        example = example.with_logprobs(
            ref_logp=self.phases.reference_logprobs(batch) if p.grpo.beta != 0 else None,
            old_logp=self.phases.logprobs(self.state.lora, batch) if p.grpo.num_iterations > 1 else None)
        timer.add("reference", time.perf_counter() - t0)
        return example

    def _update(self, step: int, example: Any, position: dict[str, int], timer: Timer) -> tuple[dict, float]:
        """The update phase: `grpo.num_iterations` updates on the example, committed as the new state -> (the
        update metrics averaged over them, the learning rate of the first)."""
        from flax import nnx

        from engine.train.metrics import mean_update_metrics

        p = self.profile
        self._enter("update", step, compiles="update")
        t0 = time.perf_counter()
        lora, opt_state = self.state.lora, self.state.opt_state
        lr = float(self.schedule(self.state.updates))
        per_iteration = []
        for _ in range(p.grpo.num_iterations):
            lora, opt_state, m = self.phases.update(lora, opt_state, example)
            per_iteration.append(m)
        nnx.update(self.model, lora)
        self.state = TrainState(step=step, lora=lora, opt_state=opt_state, data_position=position)
        timer.add("update", time.perf_counter() - t0)
        return mean_update_metrics(per_iteration, max_grad_norm=p.optimizer.max_grad_norm), lr

    def _report(self, scored: Any, update_metrics: dict[str, float], lr: float, timer: Timer, *,
                compile_seconds: float, steady: bool, trained: Any) -> None:
        """The metrics phase: the `step` event (over every group sampled; with oversampling also the zero-spread
        fraction of the groups trained), alerts and system figures, `sample` events, W&B, and the error of a skipped
        (non-finite) update."""
        from engine.train.memory import memory_stats
        from engine.train.metrics import length_metrics, reward_metrics, sample_groups, zero_spread

        p = self.profile
        rollout = scored.rollout
        step, G = rollout.step, rollout.group_size
        metrics: dict[str, float] = {}
        metrics.update(update_metrics)
        metrics.update(reward_metrics(scored.scores, G))
        metrics.update(length_metrics(rollout.lengths, rollout.truncated))
        if trained is not scored:
            metrics["frac_trained_zero_std"] = zero_spread(trained.scores, G)
        metrics["learning_rate"] = lr
        metrics["tokens_per_s"] = int(rollout.lengths.sum()) / max(timer.times.get("rollout", 0.0), 1e-9)
        for name in ("rollout", "rewards", "reference", "update", "step"):
            metrics[f"time_{name}"] = timer.times.get(name, 0.0)
        memory = memory_stats()
        epoch = (step - 1) // max(self.per_epoch, 1)
        self.log.emit("step", step=step, total_steps=self.total_steps, epoch=epoch, metrics=metrics, memory=memory,
                      compile_seconds=compile_seconds, steady=steady)
        self.tally.add(metrics, steady)
        reward = metrics.get("reward_mean")
        if reward is not None and np.isfinite(reward) and (self.figures["best_reward"] is None
                                                          or reward > self.figures["best_reward"]):
            self.figures.update(best_reward=float(reward), best_reward_step=step)
        self.watch.after_step(step, metrics, memory)
        for sample in sample_groups(step=step, questions=rollout.questions, answers=rollout.answers,
                                    texts=rollout.texts, scores=scored.scores, advantages=scored.advantages,
                                    lengths=rollout.lengths, truncated=rollout.truncated, group_size=G,
                                    num_groups=p.logging.samples_per_step):
            self.log.emit("sample", **sample)
            self.wandb.log_samples(step, sample["prompt"], sample["answer"], sample["completions"])
        self.wandb.log_step(step, metrics, memory)
        if update_metrics["skipped"] > 0:
            self._nonfinite(step, update_metrics)

    def _nonfinite(self, step: int, update_metrics: dict[str, float]) -> None:
        n = self.state.nonfinite_in_row
        limit = self.profile.training.max_nonfinite_steps
        self.log.error(f"step {step}: non-finite loss or gradient (loss {update_metrics.get('loss')}, grad norm "
                       f"{update_metrics.get('grad_norm')}); the update was skipped ({n} in a row, pause at {limit})")
        if n >= limit:
            reason = (f"{n} non-finite updates in a row: paused; lower optimizer.learning_rate or check the "
                      f"rewards, then resume")
            self.log.error(reason)
            self.control.pause_with_error(reason)

    def _partial_callback(self, step: int, group_size: int) -> Any:
        last = [0.0]
        max_tokens = self.profile.generation.max_generation_steps

        def on_partial(rows: list[list[int]]) -> None:
            now = time.monotonic()
            done = max((len(r) for r in rows[:group_size]), default=0)
            if now - last[0] < 0.5 or done >= max_tokens:
                return
            last[0] = now
            self._emit_partial(step, rows[:group_size])
        return on_partial

    def _emit_partial(self, step: int, rows: list[list[int]], *, done: bool = False) -> None:
        """A `partial` event: the text so far of every completion of the first group; `done` once the rollout has
        ended (the texts are then final)."""
        eos = set(self.eos_ids)
        texts = [self.tokenizer.decode([int(t) for t in r if t not in eos]) for r in rows]
        self.log.emit("partial", step=step, tokens_done=max((len(r) for r in rows), default=0),
                      max_tokens=self.profile.generation.max_generation_steps, texts=texts,
                      lengths=[len(r) for r in rows], done=done)

    # ------------------------------------------------------------------------------------------------------------
    # evaluation

    def _evaluate(self, split: str, num_questions: int, *, step: int) -> Any:
        from engine.train.evaluation import eval_batch_size, evaluate, select

        p = self.profile
        pool = self.splits.validation if split == "validation" else self.splits.test
        if not pool:
            self.log.info(f"no {split} questions: evaluation skipped (data.val_fraction is 0?)", level="warning")
            return None
        questions = select(pool, num_questions)
        self._boundary()
        self.log.status("evaluating", step=step, detail=f"{len(questions)} {split} questions ({p.eval.preset})",
                        progress=0.0)
        batch = eval_batch_size(p, len(questions))
        program = f"evaluation sampler ({batch} rows)"
        if program not in self._compiled:
            self._compiled_end()
            self._compiled_begin(program, step)
        shown = [-1, 0.0]   # answered count and time of the last progress status

        def progress(done: int, total: int) -> None:
            if done != shown[0] and (done == total or time.monotonic() - shown[1] >= 1.0):
                shown[:] = [done, time.monotonic()]
                self.log.status("evaluating", step=step, progress=done / total, force=True,
                                detail=f"{done}/{total} {split} questions")

        def between_chunks(done: int, total: int) -> None:   # commands, and progress inside a batch
            self._boundary()
            progress(done, total)

        result = evaluate(self._evaluation_sampler(), self.encoder, questions, preset=p.eval.preset, split=split,
                          eos_ids=self.eos_ids, batch_size=batch, seed=p.run.seed,
                          on_progress=progress, on_chunk=between_chunks)
        self._eval_sampler.release()
        self._compiled_end()
        payload = result.payload(step)
        self.log.emit("eval", **payload)
        self._note_eval(payload)
        self.wandb.log_eval(step, split, {k: v for k, v in result.figures().items() if isinstance(v, (int, float))})
        return result

    def _evaluation_sampler(self) -> Any:
        """The sampler of evaluations (and probes), made on first use."""
        from engine.sampler import Sampler
        from engine.train.evaluation import select

        if self._eval_sampler is None:
            p = self.profile
            every = list(self.splits.validation) + list(self.splits.test)
            self._eval_sampler = self._agreeing(Sampler(
                self.model, self.tokenizer, eos_ids=self.eos_ids, max_prompt_length=p.generation.max_prompt_length,
                max_new_tokens=p.eval.max_generation_steps,
                min_prompt_bucket=self.encoder.bucket(select(every, 4096)), stop_sequences=self.encoder.stop_ids))
        return self._eval_sampler

    def _agreeing(self, sampler: Any) -> Any:
        """A sampler of this run: one of several processes sizes its decode chunks as process 0 does (each chunk is
        a program run by all, and each boundary between chunks a turn they take together)."""
        if self.processes > 1:
            from engine.distributed import share_int

            sampler.agree_chunk = share_int
        return sampler

    def _note_eval(self, payload: dict[str, Any]) -> None:
        figures = {k: payload.get(k) for k in ("step", "split", "num_questions", "accuracy", "partial_accuracy",
                                               "format_accuracy", "preset")}
        self.figures["last_eval"] = figures
        if payload.get("step") == 0:
            self.figures["baseline_eval"] = figures
        elif payload.get("split") == "test":
            self.figures["final_eval"] = figures

    def _record_event(self, type_: str, payload: dict[str, Any]) -> tuple[bool, str]:
        """A `record` command (from the control watcher's thread): write another process's event into the stream."""
        if type_ != "eval":
            return False, f"only eval events are recorded for other processes, not {type_!r}"
        self.log.emit("eval", **dict(payload, source=payload.get("source") or "cli"))
        return True, "recorded in the event stream"

    def _summary(self, status: str) -> None:
        """The `summary` event that closes a finished or stopped run (never fails the run)."""
        if not self.lead:
            return
        try:
            with open(self.paths.events, "rb") as fh:
                began = float(json.loads(fh.readline())["t"])
            saved = self._saved_step
            tally = self.tally
            self.log.emit("summary", status=status, step=self.state.step if self.state else 0,
                          total_steps=self.total_steps, wall_seconds=time.time() - self._started,
                          elapsed_seconds=time.time() - began, steps_this_process=tally.steps,
                          step_seconds=tally.step_seconds, final_reward=tally.final_reward,
                          recent_reward=tally.recent_reward, **self.figures,
                          checkpoint_step=saved, checkpoint=str(self.store.path(saved)) if saved is not None else None,
                          run_dir=str(self.paths.root))
        except Exception as exc:  # noqa: BLE001
            self.log.info(f"no run summary: {type(exc).__name__}: {exc}", level="warning")

    def _finish(self) -> None:
        p = self.profile
        self._boundary()
        self._save("final")
        if p.eval.final:
            self._evaluate("test", p.eval.final_num_questions, step=self.state.step)
