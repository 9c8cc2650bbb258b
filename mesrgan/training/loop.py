"""The training loop: the stages of a run, their iterations, and what happens between them.

:class:`Trainer` builds a run from its configuration (:mod:`.components`), starts it fresh or
resumes it from ``last.pt`` (:mod:`.run_folder`), and runs stage 1 then stage 2, saving, logging
(:mod:`.reporting`), validating and stopping on request (:mod:`.stops`) as it goes.
"""
from __future__ import annotations

import math
import os
import random
import signal
import time

import numpy as np
import torch

from ..io.atomic import write_text_atomic
from ..data import SampleIdSampler
from ..models import generator_checkpoint
from .components import (build_networks, build_perceptual, build_train_set, build_val_set, compile_mode,
                         find_vgg_weights, missing_vgg_text, perceptual_needed, pick_device)
from .config import EXIT_NEEDS_VGG, RUN_ONLY, STAGES, ConfigError, dump_toml, one_line, resume_command, stages_of
from .distributed import Dist
from .optim import StageOptimizers
from .reporting import Console, MetricsLog, TensorBoardLog
from .run_folder import RunFolder, rng_state, save_checkpoint, set_rng_state
from .steps import Steps
from .stops import StopRequests, init_data_worker, signal_name
from .validation import save_sample, validate

__all__ = ["Trainer"]


class _LossWindow:
    """Losses summed on the device between two log points (no GPU synchronisation per step).

    It travels in the checkpoint (:meth:`state_dict`), so that the first logged mean after a
    resume covers the same steps, with the same sums, as in a run that was never interrupted."""

    def __init__(self, stage: str, iteration: int, now: float):
        self.stage, self.sums, self.count = stage, {}, 0
        self.start_it = iteration
        self.clock_it, self.clock_t = iteration, now  # the speed is measured from here

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float()
        self.count += 1

    def state_dict(self) -> dict:
        return {"stage": self.stage, "start_it": self.start_it, "count": self.count,
                "sums": {k: v.detach().cpu() for k, v in self.sums.items()}}

    def load(self, state, iteration: int, device) -> None:
        """Continue the window saved at ``iteration`` of this stage (nothing if it is another one)."""
        if not state or state["stage"] != self.stage or state["start_it"] + state["count"] != iteration:
            return
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count, self.start_it = state["count"], state["start_it"]


class Trainer:
    """Runs the stages of ``cfg`` (from :func:`~.config.resolve_config`) in its run folder.

    ``argv``, the command line of this run, only shapes the "continue with" hints. The caller
    holds the folder's lock and has checked it (:meth:`~.run_folder.RunFolder.check_new_run`);
    building the trainer checks the configuration, data and networks, and only then does a new
    run clear the earlier run's files (:meth:`run`).
    """

    def __init__(self, cfg: dict, console: Console | None = None, dist: Dist | None = None, argv=None):
        self.cfg = cfg
        self.dist = dist or Dist()
        self.console = console or Console(enabled=self.dist.main)
        self.log = self.console.info
        self.folder = RunFolder(cfg["out"])
        self.argv = list(argv) if argv is not None else None
        self._announce_folder()  # first: building the data can take a while on a large folder
        self._setup_device()
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"] % 2**32)
        random.seed(cfg["seed"])

        self.stages = stages_of(cfg)
        self.state = {"stage": self.stages[0], "iteration": 0, "best_psnr": -math.inf}
        # The data first: a crop larger than every image fails here, before networks are sized by it.
        self.train_set = build_train_set(cfg, self.log)
        self.val_set = build_val_set(cfg, self.log)
        self.nets = build_networks(cfg, self.device, with_discriminator="gan" in self.stages)
        self.steps = Steps(cfg, self.nets, self._perceptual_at_start())
        self.nets.G_train = self.dist.wrap(self.nets.G)
        # Each rank keeps its own discriminator batch-norm statistics: broadcasting buffers on
        # every forward would also clash with the several discriminator passes per step.
        self.nets.D_train = self.dist.wrap(self.nets.D, broadcast_buffers=False)
        if cfg["compile"]:
            self.nets.compile(self.device)
            self.log(f"--compile: torch.compile, mode {compile_mode(self.device) or 'default'}; the first "
                     "iterations of each stage are slow while the networks compile")
        self.opt = None
        self.metrics = MetricsLog(self.folder.metrics, enabled=self.dist.main)
        self.tb = None
        self.stops = StopRequests(announce=self.dist.main)
        self.saved = None  # (stage, iteration) held by last.pt, as this run last wrote or read it
        self._window = None  # losses since the last log point
        self._resumed_window = None  # the window saved in last.pt, until the stage continues it

    # ---- set-up -------------------------------------------------------------------------------
    def _setup_device(self):
        cfg, dist = self.cfg, self.dist
        self.device = pick_device(cfg, dist.local_rank if dist.enabled else None)
        if cfg["batch_size"] % dist.world_size:
            raise ConfigError(f"error: --batch-size {cfg['batch_size']} (the global batch) must be divisible by "
                             f"the number of processes, {dist.world_size}")
        dist.init(self.device)

    def _perceptual_at_start(self):
        """The VGG loss if stage 2 needs it and its weights are at hand: loaded now, so that a bad
        file fails at start, not after stage 1. None otherwise (see :meth:`_vgg_missing`)."""
        cfg = self.cfg
        if "gan" not in self.stages or not perceptual_needed(cfg):
            return None
        path = find_vgg_weights(cfg)
        if path is not None:
            return self._build_perceptual(path)
        if cfg["quick"]:
            self.log(f"note: the perceptual (VGG) term of stage 2 is OFF in this --quick run: {missing_vgg_text(cfg)}; "
                     "stage 2 runs with the pixel and adversarial terms only.")
            cfg["perceptual_weight"] = 0.0
        return None

    def _build_perceptual(self, path):
        # Its random initialisation is overwritten by the weights: keep it from moving the RNG
        # stream, so that a run is the same whether VGG was loaded at start or after stage 1.
        with torch.random.fork_rng(devices=[]):
            return build_perceptual(self.cfg, path, self.device)

    def _vgg_missing(self) -> bool:
        """Stage 2 needs VGG weights that are still not there (looked for again each time)."""
        if not perceptual_needed(self.cfg) or self.steps.perceptual is not None:
            return False
        path = find_vgg_weights(self.cfg)
        if path is None:
            return True
        self.steps.perceptual = self._build_perceptual(path)
        self.log(f"stage 2's perceptual loss reads the VGG19 weights {path}")
        return False

    def _loader(self, start_iteration, iters):
        cfg, dist = self.cfg, self.dist
        sampler = SampleIdSampler(cfg["batch_size"], start_batch=start_iteration, rank=dist.rank,
                                  world_size=dist.world_size, num_batches=iters - start_iteration)
        workers = cfg["workers"]
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=sampler.per_rank, sampler=sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None, drop_last=False,
            worker_init_fn=init_data_worker if workers > 0 else None)

    # ---- starting, resuming, stages ---------------------------------------------------------------
    def _start_stage(self, stage):
        self.opt = StageOptimizers(self.cfg, stage, self.nets.G, self.nets.D)
        # Different crops in each stage, same crops in every run with this seed.
        self.train_set.seed = self.cfg["seed"] + 7919 * STAGES.index(stage)

    def _begin_next_stage(self, stage):
        self.state.update(stage=stage, iteration=0, best_psnr=-math.inf)
        self.nets.restart_ema()  # stage 2 starts from the stage-1 weights; so does their average
        self._start_stage(stage)

    def _start_fresh(self):
        if self.stages[0] == "gan":
            self._load_stage1()
            self.nets.restart_ema()
        if self.dist.main:  # everything is checked: now the earlier run's files may go
            self.folder.clear_for_new_run(self.cfg, self.log)
        if self.stages[0] == "gan":
            self.metrics.trim(STAGES, "gan", 0)  # stage 1's records of this folder stay
        self._start_stage(self.stages[0])

    def _load_stage1(self):
        path, state = self.folder.read_stage1(self.cfg["pretrained"])
        try:
            self.nets.G.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"error: {path} does not fit the {self.cfg['model']} generator of this run "
                             f"(options {self.cfg['generator']}): {e}") from None
        self.log(f"stage 2 starts from {path}")

    def _resume(self):
        ck = self.folder.read_last(self.cfg, self.stages)
        try:
            self._load_run_state(ck)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            what = f"no key {e}" if isinstance(e, KeyError) else one_line(e)
            raise ConfigError(f"error: --resume: {self.folder.last} does not fit this run ({what}); it was written "
                              "by another version or configuration, or damaged") from None
        stage, it = self.state["stage"], self.state["iteration"]
        self.saved = (stage, it)
        dropped = self.metrics.trim(STAGES, stage, it)  # the steps after the checkpoint run again
        self.log(f"resumed from {self.folder.last}: stage {stage}, iteration {it}"
                 + (f" ({dropped} lines after it cut from metrics.jsonl)" if dropped else ""))

    def _load_run_state(self, ck):
        nets = self.nets
        nets.G.load_state_dict(ck["generator"])
        if nets.ema is not None:
            nets.ema.load_state_dict(ck.get("generator_ema", ck["generator"]))
        if nets.D is not None and "discriminator" in ck:
            nets.D.load_state_dict(ck["discriminator"])
        stage, it = ck["stage"], int(ck["iteration"])
        self.state.update(stage=stage, iteration=it, best_psnr=float(ck["best_psnr"]))
        self._start_stage(stage)
        self.opt.load_state_dict(ck)
        if self.steps.scaler is not None and "scaler" in ck:
            self.steps.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        self._resumed_window = ck.get("loss_window")

    def _end_stage(self, stage):
        if not (self.dist.main and stage == "psnr"):
            return
        ck = generator_checkpoint(self.cfg["model"], self.nets.G, self.nets.gen_config)
        save_checkpoint(ck, self.folder.file("stage1.pt"))
        best = self.folder.file("best.pt")
        if os.path.isfile(best) and "gan" in self.stages:
            os.replace(best, self.folder.file("stage1_best.pt"))

    # ---- checkpoints ----------------------------------------------------------------------------
    def _generator_ckpt(self):
        ck = generator_checkpoint(self.cfg["model"], self.nets.G, self.nets.gen_config)
        if self.nets.ema is not None:
            ck["generator_ema"] = self.nets.ema.state_dict()
        return ck

    def _checkpoint(self):
        st = self.state
        ck = self._generator_ckpt()
        ck.update({
            "train_config": {k: v for k, v in self.cfg.items() if k not in RUN_ONLY},
            "stage": st["stage"], "iteration": st["iteration"], "best_psnr": st["best_psnr"],
            **self.opt.state_dict(st["iteration"]), "rng": rng_state(),
        })
        if self._window is not None:
            ck["loss_window"] = self._window.state_dict()
        if self.nets.D is not None:
            ck["discriminator"] = self.nets.D.state_dict()
        if self.steps.scaler is not None:
            ck["scaler"] = self.steps.scaler.state_dict()
        return ck

    def save_last(self):
        if self.dist.main:
            save_checkpoint(self._checkpoint(), self.folder.last)
        self.saved = (self.state["stage"], self.state["iteration"])
        self.dist.barrier()

    # ---- the run --------------------------------------------------------------------------------
    def run(self) -> int:
        """Train. Returns 0 when done or stopped by --stop-after, 128 + N when stopped by signal N,
        ``EXIT_NEEDS_VGG`` when stage 2 cannot start for want of VGG19 weights (checkpoint written).
        A second stop signal raises :class:`~.stops.StopNow`."""
        self.dist.barrier()
        if self.cfg["resume"]:
            self._resume()
        else:
            self._start_fresh()
        self._write_config()
        self._open_tensorboard()
        self._warn_if_vgg_missing()
        try:
            with self.stops:
                return self._run_stages()
        finally:
            self.console.end_stage()
            if self.tb is not None:
                self.tb.close()

    def _write_config(self):
        if self.dist.main:
            write_text_atomic(self.folder.file("config.toml"),
                              dump_toml({k: v for k, v in self.cfg.items() if k not in RUN_ONLY}))

    def _open_tensorboard(self):
        if self.cfg["tensorboard"] and self.dist.main:
            purge = None
            if self.cfg["resume"]:
                purge = TensorBoardLog.global_step(self.cfg["psnr_iters"], *self.saved) + 1
            self.tb = TensorBoardLog(self.folder.file("tb"), self.cfg["psnr_iters"], purge_step=purge)

    def _announce_folder(self):
        cfg = self.cfg
        self.log(f"run folder {self.folder.path}: last.pt (every {cfg['save_every']} iterations, at the end "
                 f"of each stage and on Ctrl-C), best.pt, stage1.pt, metrics.jsonl (every {cfg['log_every']} "
                 f"iterations), samples/, config.toml" + (", tb/ (if TensorBoard is installed)"
                                                          if cfg["tensorboard"] else ""))

    def _warn_if_vgg_missing(self):
        if self.state["stage"] == "psnr" and "gan" in self.stages and self._vgg_missing():
            self.log(f"warning: stage 2 needs VGG19 weights for its perceptual loss, and {missing_vgg_text(self.cfg)}. "
                     f"Stage 1 runs now; if the weights are still missing when it ends, the run saves and "
                     f"exits with status {EXIT_NEEDS_VGG}, to be continued with --resume --vgg-weights PATH.")

    def _run_stages(self) -> int:
        done_here = 0
        for stage in self.stages[self.stages.index(self.state["stage"]):]:
            if stage != self.state["stage"]:
                self._begin_next_stage(stage)
            if stage == "gan" and self._vgg_missing():
                return self._needs_vgg(trained=done_here > 0)
            stopped, done_here = self._run_stage(stage, done_here)
            if stopped:
                return self._stopped()
        self.log(f"done: {self.folder.path}")
        return 0

    def _needs_vgg(self, trained: bool) -> int:
        """Stage 2 cannot start: save where it starts (so that --resume starts it) and say how to go on."""
        if (trained or self.saved is not None) and self.saved != ("gan", 0):
            self.save_last()
        resume = self.saved is not None
        hint = resume_command(self.argv, resume=resume) if self.argv is not None else (
            "the same command" + (" with --resume" if resume else "") + " and --vgg-weights PATH")
        done = "stage 1 is done and saved" if resume else "nothing was trained"
        self.log(f"stopped: {done}, and stage 2 cannot start: {missing_vgg_text(self.cfg)}.\n"
                 f"Continue with:\n  {hint}\n(exit status {EXIT_NEEDS_VGG})")
        return EXIT_NEEDS_VGG

    def _stopped(self) -> int:
        signum = self.stops.signum
        why = f"signal {signal_name(signum)}" if signum is not None else f"--stop-after {self.cfg['stop_after']}"
        self.log(f"stopped ({why}) at stage {self.state['stage']} iteration {self.state['iteration']}; "
                 f"continue with --resume (checkpoint {self.folder.last})")
        return 128 + int(signum) if signum is not None else 0

    def _should_stop(self, done_here, last) -> bool:
        """--stop-after is the same on every rank; a signal may reach only some ranks, so with
        several processes they agree on it every 10 iterations (and at the end of a stage)."""
        if self.cfg["stop_after"] and done_here >= self.cfg["stop_after"]:
            return True
        if not self.dist.enabled:
            return self.stops.requested
        if done_here % 10 and not last:
            return False
        anyone = self.dist.any(self.stops.requested)
        if anyone:
            self.stops.request(signal.SIGTERM)  # another rank was told to stop
        return anyone

    def _run_stage(self, stage, done_here):
        cfg = self.cfg
        iters = cfg[f"{stage}_iters"]
        it = self.state["iteration"]
        self.nets.G_train.train()
        if self.nets.D_train is not None:
            self.nets.D_train.train()
        if it >= iters:  # resumed from a checkpoint written at the very end of this stage
            self._end_stage(stage)
            return False, done_here
        self.log(f"stage {stage}: iterations {it + 1}..{iters}, batch {cfg['batch_size']}, lr {self.opt.lr(it):g}")
        self.console.start_stage(stage, it, iters)
        self._window = _LossWindow(stage, it, time.perf_counter())
        self._window.load(self._resumed_window, it, self.device)
        self._resumed_window = None
        try:
            for batch in self._loader(it, iters):
                it = self._iteration(stage, batch)
                done_here += 1
                last = it == iters
                stop = self._should_stop(done_here, last)
                self.stops.raise_if_at_once()  # before any save: "at once" keeps the last checkpoint
                if it % cfg["save_every"] == 0 or last or stop:
                    self.save_last()
                if last:
                    self._end_stage(stage)
                if stop:
                    self.console.end_stage()
                    if last:  # the checkpoint moves on to the next stage, so --resume starts it
                        self._checkpoint_next_stage(stage)
                    return True, done_here
        finally:
            self.console.end_stage()
        self.dist.barrier()
        return False, done_here

    def _checkpoint_next_stage(self, stage):
        nxt = self.stages.index(stage) + 1
        if nxt < len(self.stages):
            self._begin_next_stage(self.stages[nxt])
            self.save_last()

    def _iteration(self, stage, batch) -> int:
        """One step, its EMA update, logging and validation; returns the new iteration count."""
        cfg = self.cfg
        lr = batch["lr"].to(self.device, non_blocking=True)
        hr = batch["hr"].to(self.device, non_blocking=True)
        if cfg["channels_last"]:
            lr = lr.contiguous(memory_format=torch.channels_last)
            hr = hr.contiguous(memory_format=torch.channels_last)
        it = self.state["iteration"]
        self.opt.set_lr(it)
        self.nets.begin_step()
        logs = (self.steps.psnr if stage == "psnr" else self.steps.gan)(self.opt, lr, hr)
        self.nets.update_ema(cfg["ema"])
        it += 1
        self.state["iteration"] = it
        self._window.add(logs)
        iters = cfg[f"{stage}_iters"]
        if it % cfg["log_every"] == 0 or it == iters:
            self.console.step(it, self._log_losses(stage, it, logs), force=True)
        else:
            self.console.step(it, lambda: {k: float(v) for k, v in logs.items()})
        if it % cfg["val_every"] == 0 or it == iters:
            self._validate_and_keep_best(stage, it)
        return it

    def _log_losses(self, stage, it, logs) -> dict:
        """Mean losses since the last log point (over all processes) into metrics.jsonl."""
        w = self._window
        keys = sorted(w.sums)
        means_t = self.dist.mean(torch.stack([w.sums[k] for k in keys]) / w.count)
        by_key = dict(zip(keys, means_t.cpu().tolist()))
        means = {k: by_key[k] for k in logs}  # in the step's order
        now = time.perf_counter()
        rate = (it - w.clock_it) / max(now - w.clock_t, 1e-9)
        record = {"stage": stage, "iteration": it, "lr": self.opt.g.param_groups[0]["lr"], **means,
                  "it_per_s": rate, "time": time.time()}
        self._record(record)
        self._window = _LossWindow(stage, it, now)
        return means

    def _record(self, record):
        if not self.dist.main:
            return
        self.metrics.append(record)
        if self.tb is not None:
            self.tb.add(record)

    def _validate_and_keep_best(self, stage, it):
        if self.dist.main:
            self._validate_on_main(stage, it)
        # Everyone learns the best PSNR so that their checkpoints agree.
        self.state["best_psnr"] = self.dist.broadcast_float(self.state["best_psnr"])

    def _validate_on_main(self, stage, it):
        net = self.nets.ema if self.nets.ema is not None else self.nets.G
        res, sample = validate(net, self.val_set, self.cfg["scale"], self.device,
                               channels_last=self.cfg["channels_last"], autocast=self.steps.autocast)
        if res is None:
            return
        save_sample(sample, self.folder.file(os.path.join("samples", f"{stage}_{it:07d}.png")))
        improved = res["psnr"] > self.state["best_psnr"]
        self._record({"stage": stage, "iteration": it, "val": True, **{f"val_{k}": v for k, v in res.items()}})
        self.log(f"[{stage}] {it} validation: PSNR-Y {res['psnr']:.2f} dB, SSIM-Y {res['ssim']:.4f} "
                 f"(bicubic {res['bicubic_psnr']:.2f} dB, {res['bicubic_ssim']:.4f})" + (" *best*" if improved else ""))
        if improved:
            self.state["best_psnr"] = res["psnr"]
            ck = self._generator_ckpt()
            ck.update({"stage": stage, "iteration": it, "val": res})
            save_checkpoint(ck, self.folder.file("best.pt"))
