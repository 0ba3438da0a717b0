"""The training loop: `train(config)` runs (or resumes) one run folder.

Every step of the loop is visible in `_Loop.loop`: get batch, forward/backward (compiled),
accumulate, average across processes, clip, update, log, evaluate, checkpoint. Around it:
setup.py reads and builds what a run needs, step.py is the compiled step, state.py the
trainer state a checkpoint saves, runlog.py the log and history, signals.py Ctrl-C / SIGTERM,
checkpoint.py the crash-safe folders.

Exactness of resume rests on four facts: batches are a pure function of (seed, step) (data
position == step), the LR is a pure function of the step (schedule.py), checkpoints hold the
full optimizer state (and the Grokfast EMA) bit for bit, and nothing random is drawn during a
training step (the RNG key is saved anyway and restored).

Exit status (TrainResult.exit_code): 0 finished or early-stopped; 130 stopped by SIGINT
(Ctrl-C) and 143 by SIGTERM, both after saving a checkpoint; 3 stopped by the NaN guard
(nothing saved after the last good checkpoint); 4 a --stage verdict FAILURE (health.py:
at the stage's end, or at an evaluation before it for the rows of STOP_MIDSTAGE), after
saving a checkpoint, unless stop_on_failure is off.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import mlx.core as mx

from .._files import atomic_write_text, output_folder
from ..evaluation import evaluate_loss
from ..models import count_parameters
from . import checkpoint as ckpt
from . import lock, setup
from .config import TrainConfig
from .health import (BEHAVIOUR_SAMPLES, BEHAVIOUR_TOKENS, ExplosionDetector, format_verdict,
                     is_finite, stage_verdict, stopping_rows)
from .optim import checkpoint_arrays, set_learning_rate
from .reporting import Reporters, check_report_to, open_reporters
from .runlog import (RUN_CONFIG, ReportWindow, RunLog, format_eval, format_report,
                     read_history)
from .signals import EXIT_SIGNAL, StopSignals
from .state import TrainerState
from .step import make_step, step_record

EXIT_NAN = 3
EXIT_STAGE_FAILED = 4


@dataclass
class TrainResult:
    status: str  # "completed", "early_stopped", "interrupted", "nan", "stage_failed"
    step: int
    exit_code: int
    run_dir: Path
    best_val_loss: float | None = None
    message: str = ""


def train(config: TrainConfig, explicit: set | None = None, echo=print,
          resume_from=None) -> TrainResult:
    """Run or resume the training run `config.output_dir`.

    `explicit`: the option names the user set (flags or config file); on --resume those
    override the saved run config and everything else comes from it. None means: every
    option that differs from TrainConfig's default. `resume_from`: a step_N folder of the
    run's checkpoints/ to resume from instead of the newest (implies resume; a one-off
    choice, not one of the run's saved options).
    Raises ValueError, DataError, ModelLoadError, RuntimeError or lock.LockError on bad input.
    """
    config.check_types()
    check_report_to(config.report_to)  # a missing extra: refused before anything is written
    defaults = TrainConfig()
    if explicit is None:
        explicit = {k for k, v in config.to_dict().items() if getattr(defaults, k) != v}
    if resume_from is not None:  # a chosen checkpoint of the run: a resume
        config = config.replace(resume=True)
    if not config.resume:
        config.validate()
    if not config.output_dir:  # Path("") is the working directory itself
        raise ValueError("--output-dir must name a folder, got an empty path")
    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    try:  # a linked folder is followed, as every command's output folder is
        run_dir = output_folder(config.output_dir)
    except OSError as e:
        raise ValueError(f"--output-dir {config.output_dir}: {e.strerror}") from None
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--output-dir {run_dir} exists and is not a folder")
    writer = rank == 0
    if writer:  # before the lock: a folder that is not a run gets nothing written into it
        setup.check_run_folder(run_dir)
    created = writer and not run_dir.exists()
    started = False
    if writer:
        lock.acquire(run_dir, log=echo)
    reporters = Reporters()
    try:
        with StopSignals() as signals:
            run, state = setup.prepare(config, explicit, run_dir, rank, world, resume_from)
            log = RunLog(run_dir, writer, echo)
            reporters = _open_reporters(run, log)
            started = True
            result = _Loop.begin(run, state, log, signals, reporters).loop()
            reporters.close(failed=result.status == "nan")
            return result
    finally:
        reporters.close(failed=True)  # only if still open: the run raised
        if writer:
            lock.release(run_dir)
        if created and not started:  # refused before writing: leave no empty run folder
            shutil.rmtree(run_dir, ignore_errors=True)


def _open_reporters(run: setup.Run, log: RunLog) -> Reporters:
    """--report-to's backends, on rank 0 (a resumed run's saved choice is checked again:
    its extra may be missing here)."""
    names = check_report_to(run.config.report_to)
    if not (run.writer and names):
        return Reporters()
    run_config = {**run.config.to_dict(), "model": run.model.args.to_dict(),
                  "tokenizer": run.tokenizer_spec, "world_size": run.world}
    return open_reporters(names, run.run_dir, run.config.project_name, run_config,
                          warn=log.line)


@dataclass(kw_only=True)
class _Loop:
    """One run between its first and last step: what it is made of, where it stands, and
    what the loop itself keeps (the report window, what was saved and evaluated last)."""

    run: setup.Run  # config, model, optimizer, data, run folder (built by setup.prepare)
    state: TrainerState  # step, best val loss, schedule, ...: what a checkpoint saves
    log: RunLog
    signals: StopSignals
    detector: ExplosionDetector
    step_fn: Callable  # step.make_step's compiled step
    compiled_state: list  # its implicit state (model, optimizer, filter, RNG)
    window: ReportWindow = field(default_factory=ReportWindow)
    reporters: Reporters = field(default_factory=Reporters)  # --report-to's backends
    last_saved: int | None = None  # the step whose checkpoint is on disk
    last_eval_step: int | None = None
    stage_failure: str | None = None  # why a mid-stage verdict stops the run
    vocabulary: object = None  # the training corpus's words (probe.quality), built on first use

    @classmethod
    def begin(cls, run: setup.Run, state: TrainerState, log: RunLog, signals: StopSignals,
              reporters: Reporters | None = None) -> "_Loop":
        """The run folder's first writes (notes, history restarted or cut back to the
        checkpoint, config.json, the start line) and the compiled step."""
        c = run.config
        for note in run.notes:
            log.line(note)
        if c.patience and c.steps_per_eval > c.max_steps:
            log.line("note: --patience has no effect: no evaluation before --max-steps")
        detector = ExplosionDetector(c.explode_factor)
        detector.minimum = state.explosion_min
        step_fn, compiled_state = make_step(run.model, run.optimizer, run.grokfast,
                                            grad_accum=c.grad_accum, grad_clip=c.grad_clip,
                                            world=run.world)
        loop = cls(run=run, state=state, log=log, signals=signals, detector=detector,
                   step_fn=step_fn, compiled_state=compiled_state,
                   reporters=reporters or Reporters())
        loop.open_history()
        if loop.reporters.backends and run.resumed_from is not None:  # zone shares: whole run
            loop.reporters.count_zones(r for r in read_history(run.run_dir)
                                       if r.get("event") == "train")
        n_params = count_parameters(run.model)
        loop.write_run_config(n_params)
        log.line(f"Training {run.model.args.preset or run.model.args.model_type} "
                 f"({n_params:,} parameters) on {c.data}: {c.max_steps} steps, batch "
                 f"{c.batch_size} x seq {c.seq_len} x accum {c.grad_accum} x {run.world} "
                 f"process(es), {c.optimizer}{' + grokfast' if c.grokfast else ''}, "
                 f"lr {c.learning_rate:g}, weight decay {c.weight_decay:g}")
        return loop

    def open_history(self) -> None:
        """A new run restarts history.jsonl; a resumed one cuts it back to its checkpoint's
        own event (what came after is redone) and records the resume."""
        if self.run.resumed_from is None:
            self.log.restart_history()
            return
        step = self.state.step
        kept = self.log.truncate_history(self.state.history_len, step)
        # the checkpoint is on disk and its evaluation (if one was due) in the kept history: a
        # finished run resumed again must not repeat them
        self.last_saved = step
        if any(r.get("event") == "eval" and r.get("step") == step for r in kept):
            self.last_eval_step = step
        self.log.line(f"resumed from {self.run.resumed_from} at step {step}")
        self.log.event({"event": "resume", "step": step,
                        "checkpoint": str(self.run.resumed_from),
                        "max_steps": self.run.config.max_steps})

    def write_run_config(self, n_params: int) -> None:
        """RUN/config.json (options, model, tokenizer: what status and a rerun read) and, for
        a new run, the history's start event."""
        run = self.run
        if not run.writer:
            return
        run_config = {"train": run.config.to_dict(), "model": run.model.args.to_dict(),
                      "tokenizer": run.tokenizer_spec, "world_size": run.world,
                      "n_parameters": n_params, "host": socket.gethostname(),
                      "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(run.run_dir / RUN_CONFIG, json.dumps(run_config, indent=2))
        if run.resumed_from is None:
            self.log.event({"event": "start", "step": 0, "max_steps": run.config.max_steps,
                            "n_parameters": n_params, "world_size": run.world,
                            "preset": run.model.args.preset})

    # -- the loop
    def loop(self) -> TrainResult:
        """Step, report, evaluate, checkpoint until --max-steps, an early stop or a signal."""
        c, state = self.run.config, self.state
        while state.step < c.max_steps:
            t0 = time.perf_counter()
            record = self.train_step()  # get batches, forward/backward, clip, update
            dt = time.perf_counter() - t0
            if not (is_finite(record["loss"]) and is_finite(record["grad_norm"])):
                return self.nan_stop(record)
            if self.window.add(record, dt):  # traces and compiles: kept out of tokens/s
                self.log.line(f"Iter {state.step}: first step (compiles the graph) took "
                              f"{dt:.1f}s")
            last = state.step == c.max_steps
            if state.step % c.steps_per_report == 0 or last:
                self.report()
            self.log.bar(state.step, c.max_steps, self.window.eta(c.max_steps - state.step, dt))
            if state.step % c.steps_per_eval == 0 or last:
                self.evaluate()
                if self.stage_failure:
                    return self.finish("stage_failed", EXIT_STAGE_FAILED, self.stage_failure)
                if c.patience and state.evals_without_improvement >= c.patience:
                    return self.finish("early_stopped", 0, (
                        f"early stop at step {state.step}: no val improvement"
                        f"{f' > {c.min_delta:g}' if c.min_delta else ''} in {c.patience} "
                        f"evaluations (best {state.best_val_loss:.4f} at step "
                        f"{state.best_step})"))
            if state.step % c.save_every == 0:
                self.save("periodic")
            signum = self.stop_requested()
            if signum:
                return self.finish("interrupted", EXIT_SIGNAL.get(signum, 130), (
                    f"stopped by {signal.Signals(signum).name} at step {state.step}; resume "
                    "with --resume"))
        return self.finish("completed", 0, f"finished {state.step} steps")

    def train_step(self) -> dict:
        """One optimizer step: for each of grad_accum micro-batches, get the batch and run
        forward/backward; the last one also averages, clips and updates (step.make_step)."""
        c, state = self.run.config, self.state
        lr = state.schedule.lr(state.step + 1)
        set_learning_rate(self.run.optimizer, lr)
        grads, losses, metrics = None, [], []
        for micro in range(c.grad_accum):
            inputs, targets = self.run.sampler.batch(state.step * c.grad_accum + micro)
            last = micro == c.grad_accum - 1
            loss, m, grads, grad_norm = self.step_fn(mx.array(inputs), mx.array(targets),
                                                     grads, last)
            losses.append(loss)
            metrics.append(m)
        mx.eval(self.compiled_state, losses, metrics, grad_norm)
        state.step += 1
        return step_record(losses, metrics, grad_norm, lr)

    def stop_requested(self) -> int | None:
        return self.signals.requested(self.run.world)

    def finish(self, status: str, exit_code: int, message: str) -> TrainResult:
        """The last report, evaluation, checkpoint and verdict; the end event."""
        c, state = self.run.config, self.state
        if self.window.records:
            self.report()
        if status == "completed" and self.last_eval_step != state.step:
            self.evaluate()
        self.save("final" if status == "completed" else "exit")
        # a stage stopped mid-way has just printed the verdict that stopped it
        if c.stage is not None and status in ("completed", "early_stopped"):
            if c.stage >= 5:
                self.behaviour()
            failed = stopping_rows(self.verdict(), final=True)
            if c.stop_on_failure and self.on_any_rank(bool(failed)):
                status, exit_code = "stage_failed", EXIT_STAGE_FAILED
                message = self.failure_message(failed, final=True)
        if state.best_val_loss is not None:
            message += f"; best val loss {state.best_val_loss:.4f} at step {state.best_step}"
        self.log.event({"event": "end", "step": state.step, "status": status,
                        "best_val_loss": state.best_val_loss})
        self.log.line(message)
        return TrainResult(status, state.step, exit_code, self.run.run_dir,
                           state.best_val_loss, message)

    # -- reports, evaluation, samples, verdicts
    def report(self) -> None:
        c = self.run.config
        tokens_per_step = c.batch_size * c.seq_len * c.grad_accum * self.run.world
        r = self.window.summary(self.state.step, tokens_per_step)
        r["max_steps"] = c.max_steps
        self.log.line(format_report(r))
        flagged = self.detector.check(r["loss"])
        if flagged:
            self.log.line(f"WARNING: {flagged} at step {self.state.step}")
            self.log.event({"event": "warning", "step": self.state.step, "kind": "explosion",
                            "message": flagged})
        self.log.event(r)
        self.reporters.train(r)

    def evaluate(self) -> dict:
        """Validation loss and R on the fixed batches, samples, best/ when it improved."""
        run, state = self.run, self.state
        t0 = time.perf_counter()
        metrics = evaluate_loss(run.model, run.val_set)
        e = {"event": "eval", "step": state.step, **metrics}
        best = state.best_val_loss
        e["is_best"] = best is None or metrics["val_loss"] < best
        # --patience counts evaluations that do not beat the best by more than --min-delta
        if best is None or metrics["val_loss"] < best - run.config.min_delta:
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        if e["is_best"]:
            state.best_val_loss, state.best_step = metrics["val_loss"], state.step
        if run.writer:
            e["samples"] = self.samples()
        e["eval_s"] = time.perf_counter() - t0
        self.log.line(format_eval(e))
        for s in e.get("samples", []):
            flag = f"  [collapsed: {s['reason']}]" if s["collapsed"] else ""
            self.log.line(f"  Sample {s['prompt']!r} -> {s['text']!r}{flag}")
        if e["is_best"] and run.writer:
            try:
                ckpt.save_best(run.run_dir, run.model, self.snapshot(), metrics,
                               run.tokenizer_spec, tokenizer_root=run.config.data)
            except OSError as error:
                raise self.write_failed(f"{run.run_dir / ckpt.BEST} (step {state.step})",
                                        error) from None
        self.log.event(e)
        self.reporters.eval(e)
        self.last_eval_step = state.step
        if run.config.stage is not None and state.step < run.config.max_steps:
            failed = stopping_rows(self.verdict(), final=False)  # the end prints its own
            # rank 0 alone reads the history: every rank stops with it, at the same step
            if run.config.stop_on_failure and self.on_any_rank(bool(failed)):
                self.stage_failure = self.failure_message(failed, final=False)
        return e

    def on_any_rank(self, flag: bool) -> bool:
        if self.run.world > 1:
            return bool(mx.distributed.all_sum(mx.array(int(flag))).item())
        return flag

    def failure_message(self, failed: list, final: bool) -> str:
        c = self.run.config
        where = f"at the end of stage {c.stage}" if final else \
            f"at step {self.state.step} of stage {c.stage}"
        rows = f" ({', '.join(failed)})" if failed else ""
        return (f"stage {c.stage} verdict FAILURE {where}{rows}: stopped after "
                "saving a checkpoint (docs/training.md, \"Staged training\"; "
                "--no-stop-on-failure trains on)")

    def samples(self) -> list:
        from ..probe.generate import generate_tokens
        from ..probe.quality import corpus_vocabulary, sample_quality

        c, out = self.run.config, []
        if self.vocabulary is None:
            self.vocabulary = corpus_vocabulary(self.run.sampler.dataset.tokens,
                                                self.run.tokenizer.decode)
        stopping = lambda: self.signals.received is not None  # noqa: E731
        for i, prompt in enumerate(c.sample_prompts):
            ids = self.run.tokenizer.encode(prompt)
            if not ids or stopping():  # a signal: the checkpoint is what matters now
                continue
            # a seed per prompt: with one shared noise stream, the contractive state lets
            # two continuations fall into the same text once a few tokens coincide
            gen = generate_tokens(self.run.model, ids, max_tokens=c.sample_tokens, temp=0.8,
                                  seed=c.seed + i, should_stop=stopping)
            text = self.run.tokenizer.decode(gen.tokens)
            out.append({"prompt": prompt, "text": text,
                         **sample_quality(gen.tokens, text, self.vocabulary)})
        return out

    def behaviour(self) -> None:
        """Stage 5's behavioural probe (health.behaviour_row) on the final weights, at cheap
        settings, logged as a "behaviour" event for the verdict to read."""
        from ..probe.behaviour import behaviour_probes

        run = self.run
        if not run.writer or self.signals.received is not None:
            return
        result = behaviour_probes(run.model, run.tokenizer, samples=BEHAVIOUR_SAMPLES,
                                  max_tokens=BEHAVIOUR_TOKENS, seed=run.config.seed)
        event = {"event": "behaviour", "step": self.state.step,
                 "completions": len(result["completions"]),
                 **{k: result[k] for k in ("score", "score_ci", "paired_difference",
                                           "paired_difference_ci", "samples", "max_tokens")}}
        lo, hi = event["score_ci"]
        self.log.line(f"Behavioural score {event['score']:.2f} (95% CI {lo:.2f}-{hi:.2f}): "
                      "the share of completions of the action prompts with an action verb")
        self.log.event(event)

    def verdict(self) -> dict:
        history = read_history(self.run.run_dir) if self.run.writer else []
        v = stage_verdict(self.run.config.stage, history)
        self.log.line(format_verdict(v))
        self.log.event({"event": "verdict", "step": self.state.step, **v})
        return v

    # -- checkpoints
    def snapshot(self, pending_events: int = 0) -> dict:
        """trainer_state.json as of now: the state, with what the RNG, the detector and the log
        hold brought in. `pending_events`: events to be written with it (a checkpoint's own)."""
        self.state.take_rng_key()
        self.state.explosion_min = self.detector.minimum
        self.state.history_len = self.log.n_events + pending_events
        return self.state.to_json()

    def save(self, reason: str) -> None:
        run, step = self.run, self.state.step
        if self.last_saved == step or not run.writer:
            self.last_saved = step
            return
        t0 = time.perf_counter()
        arrays = checkpoint_arrays(run.optimizer, run.grokfast)
        # the checkpoint records the history up to its own event, which is written only once
        # the save succeeded: a failed write leaves no event for a step never saved
        state = self.snapshot(pending_events=1)
        try:
            path = ckpt.save_checkpoint(run.run_dir, step, run.model, arrays, state,
                                        run.tokenizer_spec, run.config.keep_last,
                                        tokenizer_root=run.config.data)
        except OSError as error:
            raise self.write_failed(f"checkpoint {ckpt.step_dir(run.run_dir, step)}",
                                    error) from None
        self.log.event({"event": "checkpoint", "step": step, "reason": reason,
                        "path": str(path)})
        self.last_saved = step
        self.log.line(f"Iter {step}: saved {path} ({reason}, {time.perf_counter() - t0:.2f}s)")

    def last_checkpoint(self):
        """The newest complete checkpoint up to the current step: one after it is not this
        trajectory's (a checkpoint the resume skipped as damaged or non-finite)."""
        folders = [f for f in ckpt.list_checkpoints(self.run.run_dir)
                   if ckpt.step_of(f) <= self.state.step]
        return folders[-1] if folders else None

    def write_failed(self, what: str, error: OSError) -> OSError:
        """The error a failed checkpoint or best/ write stops the run with (a full disk:
        training on could never be saved), recorded in training.log and history.jsonl."""
        last = self.last_checkpoint()
        where = f" (writing {Path(error.filename).name})" if error.filename else ""
        kept = (f"the last good checkpoint {last} is kept" if last
                else "no checkpoint was saved before")
        fix = "free some space" if error.errno == errno.ENOSPC else "fix that"
        message = (f"{what} not saved: {error.strerror or error}{where}; {kept}; {fix}, then "
                   "continue with --resume")
        self.log.failure(self.state.step, message)
        failure = OSError(message)
        failure.errno = error.errno
        return failure

    def nan_stop(self, record) -> TrainResult:
        step, best = self.state.step, self.state.best_val_loss
        last = self.last_checkpoint()
        where = (f"last good checkpoint {last} (resume with --resume and a lower "
                 "--learning-rate)" if last else "no checkpoint was saved before it")
        message = (f"loss is {record['loss']} (grad norm {record['grad_norm']}) at step "
                   f"{step}: stopped without saving; {where}")
        self.log.event({"event": "nan", "step": step, "loss": str(record["loss"]),
                        "grad_norm": str(record["grad_norm"]),
                        "last_checkpoint": str(last) if last else None})
        self.log.event({"event": "end", "step": step, "status": "nan", "best_val_loss": best})
        self.log.line("ERROR: " + message)
        return TrainResult("nan", step, EXIT_NAN, self.run.run_dir, best, message)
