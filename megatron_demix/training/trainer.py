"""The trainer: one base or component model on megatron-core, with TP/PP/DP.

    experiment = load_experiment("configs/demo.yaml")
    run = RunOptions.defaults(experiment, "code")      # or "base", or a candidate index
    Trainer(experiment, run).train()

Launched by `python -m megatron_demix.commands.train` (torchrun or srun; launch/train_component.py from a checkout). Setup happens in this order, and
every check that can fail runs before the first step: parallel arithmetic and head split, data
files, checkpoint shapes.
  1. process group, megatron-core model-parallel groups, seed;
  2. tokenizer and the blended datasets (data/datasets.py);
  3. this rank's GPTModel stage wrapped in megatron-core DDP;
  4. starting point: resume from `run.load` if it holds a checkpoint, else the weights of
     `run.pretrained` (a component starts from the base), else random initialisation;
  5. optimizer and LR schedule (training/optimizer.py; after the weights, because the Megatron
     optimizer copies them into its fp32 main parameters when it is built);
then each iteration runs `get_forward_backward_func()` over its microbatches (read ahead by
training/loader.py), steps the optimizer and the schedule, logs, validates per domain and saves at
the configured intervals (keeping the newest `keep_checkpoints`).

No host synchronisation per step (Megatron-LM's loop does the same): the loss, the non-finite
check and the SIGTERM flag stay on the device until the next log or save, where one all-reduce
brings them to every rank's host. A non-finite loss or gradient norm then raises `TrainingDiverged`
naming its first iteration, before anything is saved, so the latest checkpoint stays the last good
state (Megatron-LM's --check-for-nan-in-loss-and-grad); it is caught within one log interval.
"""
from __future__ import annotations

import contextlib
import os
import signal
from functools import partial
from pathlib import Path

import torch

from megatron_demix.checkpoint.layout import CheckpointError, read_tracker, resolve_checkpoint
from megatron_demix.checkpoint.weights import load_weights
from megatron_demix.config.base import ConfigError, to_dict
from megatron_demix.model.gpt import build_gpt_model, check_parallel_fits
from megatron_demix.runtime import device
from megatron_demix.runtime.distributed import init_distributed
from megatron_demix.runtime.errors import FAILED
from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel
from megatron_demix.training import run_state
from megatron_demix.data.datasets import TrainingData, blend_for, check_prepared
from megatron_demix.training.metrics import MetricsLog
from megatron_demix.training.loader import TrainLoader
from megatron_demix.training.optimizer import build_optimizer, build_scheduler, wire_overlap, wrap_data_parallel
from megatron_demix.training.run_options import RunOptions


def _resuming(run: RunOptions) -> bool:
    return run.load is not None and read_tracker(run.load) is not None


def _require_writable(flag: str, directory: Path) -> None:
    """A ConfigError (exit 2) now, rather than an OSError at the first save, when `directory` (or the
    nearest existing parent it will be created in) is not writable. os.access is also false on a
    read-only file system, even for root. Nothing is created here."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {directory}: {existing} is a file, not a directory; choose a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "permission denied"
        raise ConfigError(f"{flag} {directory}: cannot write there ({reason}); choose a writable directory")


def check_before_start(experiment, run: RunOptions, world_size: int) -> ParallelDims:
    """Every input check that needs no process group: fail fast, with the flag to change."""
    training = experiment.training
    check_parallel_fits(experiment.model, training.tensor_model_parallel_size, training.pipeline_model_parallel_size)
    dims = ParallelDims(training.tensor_model_parallel_size, training.pipeline_model_parallel_size, world_size)
    if training.global_batch_size % (training.micro_batch_size * dims.data):
        raise ConfigError(
            f"--global-batch-size {training.global_batch_size} must be a multiple of --micro-batch-size"
            f" {training.micro_batch_size} x data-parallel size {dims.data} (= world {world_size} / (TP x PP))"
        )
    check_prepared(experiment, blend_for(experiment, run.model_name, run.mixture))
    if not _resuming(run) and run.pretrained is not None and read_tracker(run.pretrained) is None and not Path(run.pretrained, "metadata.json").is_file():
        raise CheckpointError(
            f"--pretrained-checkpoint {run.pretrained}: no checkpoint there; train the base first"
            " (--component base) or point the flag at the base's save directory"
        )
    for flag, directory in (("--save", run.save), ("--log-dir", run.log_dir)):
        _require_writable(flag, Path(directory))
    start = run.load if _resuming(run) else run.pretrained
    if start is not None:
        resolve_checkpoint(start)  # complete and of a known format, before any process group
    return dims


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm is not finite: training stops, nothing is saved; the launcher exits 1."""
    exit_status = FAILED


class _StopOnSigterm:
    """Megatron-LM's --exit-signal-handler: SIGTERM only sets a flag. The ranks agree on it at the
    next log or save (`Trainer._sync`, with the loss: no collective of its own), so they all save
    the same iteration and leave, at most log_interval iterations after the signal (SLURM's
    `--signal=B:USR1@120` in slurm/train_component.sh leaves two minutes for that)."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        self.received = True


class _Window:
    """What the iterations since the last sync left on the device: per iteration the loss sum and token
    count (last pipeline stage; zero elsewhere), whether the loss and the grad norm were finite, the grad
    norm; the learning rates stay on the host."""

    def __init__(self):
        self.steps, self.norms, self.lrs, self.iterations, self.has_norm = [], [], [], [], []

    def add(self, iteration: int, records: list, grad_norm, lr: float) -> None:
        dev = device.device()
        loss = torch.stack([r["lm loss"] for r in records]).double().sum(0) if records else torch.zeros(2, dtype=torch.float64, device=dev)
        norm = torch.as_tensor(grad_norm if grad_norm is not None else float("nan"), dtype=torch.float64, device=dev).reshape(())
        finite = torch.stack([loss.isfinite().all(), norm.isfinite() | (grad_norm is None)]).double()
        self.steps.append(torch.cat([loss, 1 - finite]))
        self.norms.append(norm)
        self.lrs.append(lr)
        self.iterations.append(iteration)
        self.has_norm.append(grad_norm is not None)


class Trainer:
    """Holds the parts of one training run; `train()` runs it to the budget."""

    def __init__(self, experiment, run: RunOptions):
        from megatron.core import parallel_state
        from megatron_demix.data.tokenizer import load_tokenizer

        # configs
        self.experiment, self.run, self.training = experiment, run, experiment.training
        layout = init_distributed()
        self.dims = check_before_start(experiment, run, layout.world_size)
        initialize_model_parallel(self.dims, self.training.seed)
        self.num_microbatches = self.training.global_batch_size // (self.training.micro_batch_size * self.dims.data)

        # data
        tokenizer = load_tokenizer(experiment.paths.tokenizer)
        self.data = TrainingData.build(
            experiment, blend_for(experiment, run.model_name, run.mixture), tokenizer, train_iters=run.train_iters,
            training=self.training, cache=experiment.paths.data / "index-cache" / run.model_name,
        )

        # model, starting point, optimizer. Checkpoints hold the bare GPTModel's keys
        # (`embedding.word_embeddings.weight`, ...), as Megatron-LM writes them, not the DDP wrapper's.
        self.throughput = device.throughput_settings(self.training)
        self.gpt = gpt = build_gpt_model(experiment.model, tokenizer.vocab_size, throughput=self.throughput,
                                         params_dtype=device.default_params_dtype(self.training.precision))
        self.model = wrap_data_parallel(gpt, self.training)
        resuming = _resuming(run)
        if not resuming and run.pretrained is not None:
            load_weights(run.pretrained, gpt)
        self.optimizer = build_optimizer(self.model, self.training)
        self.scheduler = build_scheduler(self.optimizer, self.training, run.train_iters)
        self.iteration = 0
        if resuming:
            common = run_state.load_checkpoint(run.load, gpt, self.optimizer, self.scheduler)
            if common.get("model_name") != run.model_name:
                raise CheckpointError(f"--load {run.load}: holds model {common.get('model_name')!r}, not {run.model_name!r}")
            self.iteration = common["iteration"]

        wire_overlap(self.model, gpt.config)
        self.is_last_stage = parallel_state.is_pipeline_last_stage()
        self.loader = None if self.training.dataloader == "dali" else TrainLoader(
            self.data, num_microbatches=self.num_microbatches, first_iteration=self.iteration,
            end_iteration=run.train_iters, throughput=self.throughput,
        )

        # runtime utilities
        self.stop_signal = _StopOnSigterm() if run.exit_signal_handler else None
        self.window = _Window()
        self.loss_since_log = [0.0, 0.0]  # reduced over all ranks at each sync, consumed at each log
        self.log = MetricsLog(
            run.log_dir, total_iters=run.train_iters, name=run.model_name, enabled=torch.distributed.get_rank() == 0,
            tokens_per_iter=self.training.global_batch_size * experiment.model.seq_length,
        )
        if torch.distributed.get_rank() == 0:
            for path in run_state.remove_incomplete_checkpoints(run.save):
                self.log.message(f"removed {path}: an incomplete checkpoint (a save that was killed)")

    # --- one step -------------------------------------------------------------------------------

    @staticmethod
    def _loss(loss_mask, output_tensor):
        """Sum of masked token losses and the token count; megatron-core divides by the count."""
        mask = loss_mask.reshape(-1).float()
        total = torch.sum(output_tensor.reshape(-1).float() * mask)
        count = mask.sum().to(torch.int)
        return total, count, {"lm loss": torch.stack([total.detach(), mask.sum()])}

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
        return output, partial(self._loss, batch["loss_mask"])

    def _run_microbatches(self, microbatches, forward_only: bool) -> list:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=self._forward_step,
            data_iterator=microbatches,
            model=[self.model],
            num_microbatches=self.num_microbatches,
            seq_length=self.experiment.model.seq_length,
            micro_batch_size=self.training.micro_batch_size,
            forward_only=forward_only,
        )

    def _mean_loss(self, records: list) -> float:
        """Token-weighted mean over microbatches, data-parallel ranks and (from the last stage) all ranks."""
        from megatron.core import parallel_state

        totals = torch.zeros(2, dtype=torch.float64, device=device.device())
        if self.is_last_stage:
            totals += torch.stack([r["lm loss"] for r in records]).double().sum(0)
        torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        # Only the last stage has losses; the sum over the pipeline group hands them to every stage.
        torch.distributed.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
        return (totals[0] / totals[1].clamp(min=1)).item()

    def train_step(self) -> tuple[list, float, float | None]:
        """One iteration; returns the loss records, the learning rate it used and the grad norm."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches = (self.loader.microbatches(self.iteration) if self.loader is not None
                   else self.data.train_microbatches(self.iteration, self.num_microbatches))
        records = self._run_microbatches(batches, False)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        self.iteration += 1
        return records, lr, grad_norm

    @contextlib.contextmanager
    def _params_gathered(self):
        """With overlapped parameter gathering the updated weights reach the model only in the next forward's
        pre-hooks: gather them now and keep the hooks off while evaluating or saving (as Megatron-LM does)."""
        overlapped = self.model.ddp_config.overlap_param_gather
        if overlapped:
            self.model.disable_forward_pre_hook()
        try:
            yield
        finally:
            if overlapped:
                self.model.enable_forward_pre_hook()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        with self._params_gathered():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        losses = {}
        for domain in self.data.valid:
            records = []
            for step in range(self.training.eval_iters):
                records += self._run_microbatches(self.data.valid_microbatches(domain, step, self.num_microbatches), True)
            losses[domain] = self._mean_loss(records)
        self.model.train()
        self.log.valid(self.iteration, losses)
        return losses

    def save(self) -> None:
        common = {
            "model_name": self.run.model_name,
            "consumed_train_samples": self.iteration * self.training.global_batch_size,
            "train_iters": self.run.train_iters,
            "config": to_dict(self.experiment),
        }
        with self._params_gathered():
            path = run_state.save_checkpoint(self.run.save, self.iteration, self.gpt, self.optimizer, self.scheduler,
                                             common=common, fully_parallel=self.throughput.ckpt_fully_parallel_save)
        self.log.message(f"saved {path}")
        if torch.distributed.get_rank() == 0:
            removed = run_state.prune_checkpoints(self.run.save, self.training.keep_checkpoints)
            if removed:
                self.log.message(f"removed {', '.join(p.name for p in removed)} (training.keep_checkpoints={self.training.keep_checkpoints})")

    def _sync(self) -> bool:
        """Bring the window since the last sync to every rank's host with one all-reduce: add its loss to the
        next log's, raise `TrainingDiverged` on all ranks alike at its first non-finite iteration (when
        checked), and return whether any rank received SIGTERM."""
        window, self.window = self.window, _Window()
        signalled = self.stop_signal is not None and self.stop_signal.received
        flag = torch.tensor([float(signalled)], dtype=torch.float64, device=device.device())
        totals = torch.cat([flag, *window.steps]) if window.steps else flag
        torch.distributed.all_reduce(totals)  # over every rank: TP replicas scale loss and count alike
        values = torch.cat([totals, torch.stack(window.norms)]).tolist() if window.norms else totals.tolist()
        steps, norms = [values[1 + 4 * i: 5 + 4 * i] for i in range(len(window.steps))], values[1 + 4 * len(window.steps):]
        for (total, count, loss_bad, norm_bad), iteration, norm, lr in zip(steps, window.iterations, norms, window.lrs):
            if self.training.check_for_nan_in_loss_and_grad and (loss_bad or norm_bad):
                self._diverged(iteration, total / max(count, 1), norm, lr, loss_bad, norm_bad)
            self.loss_since_log = [self.loss_since_log[0] + total, self.loss_since_log[1] + count]
        self.last_grad_norm = norms[-1] if norms and window.has_norm[-1] else None
        return values[0] > 0

    def _diverged(self, iteration: int, loss: float, grad_norm: float, lr: float, loss_bad: float, norm_bad: float):
        bad = [name for name, flag in (("loss", loss_bad), ("grad norm", norm_bad)) if flag]
        latest = read_tracker(self.run.save) if Path(self.run.save).is_dir() else None
        raise TrainingDiverged(
            f"{self.run.model_name}: iteration {iteration}: {' and '.join(bad)} not finite (loss {loss:.4g},"
            f" grad norm {grad_norm:.4g}, lr {lr:g}); stopped without saving, the latest checkpoint in {self.run.save}"
            f" is {'none' if latest is None else f'iteration {latest}'}. Lower --lr or raise --lr-warmup-iters and"
            " resume; training.check_for_nan_in_loss_and_grad: false trains on regardless"
        )

    # --- the loop -------------------------------------------------------------------------------

    def train(self) -> None:
        """Train from the current iteration to `run.train_iters`; save at intervals and at the end."""
        training, run = self.training, self.run
        self.model.train()
        self.log.message(
            f"training {run.train_iters} iterations from {self.iteration}: TP={self.dims.tensor} PP={self.dims.pipeline}"
            f" DP={self.dims.data}, {self.num_microbatches} microbatches of {training.micro_batch_size}"
        )
        self.log.start(self.iteration)
        saved_at = self.iteration if self.iteration else None
        while self.iteration < run.train_iters:
            records, lr, grad_norm = self.train_step()
            it = self.iteration
            self.window.add(it, records if self.is_last_stage else [], grad_norm, lr)
            logging_now = it % training.log_interval == 0 or it == run.train_iters
            saving_now = bool(training.save_interval) and it % training.save_interval == 0 and it < run.train_iters
            # The only host synchronisation between logs: at a log, a save and the end (nothing non-finite is saved).
            signalled = self._sync() if logging_now or saving_now else False
            if logging_now:
                total, count = self.loss_since_log
                self.loss_since_log = [0.0, 0.0]
                self.log.train(it, loss=total / max(count, 1), lr=lr, grad_norm=self.last_grad_norm)
            if training.eval_interval and it % training.eval_interval == 0 and it < run.train_iters:
                self.evaluate()
            if saving_now:
                self.save()
                saved_at = it
            if signalled:
                if saved_at != it:
                    self.save()
                self.log.message(f"SIGTERM: saved iteration {it}; exiting (resume with the same --load)")
                return
            if run.stop_after_iters is not None and it >= run.stop_after_iters:
                self.log.message(f"stopping after iteration {it} without saving (--stop-after-iters)")
                return
        self.evaluate()
        if saved_at != self.iteration:
            self.save()

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
        self.log.close()
