"""Train SRGAN / ESRGAN / MESRGAN with the paper's two-stage recipe.

    python -m mesrgan.train --model mesrgan --quick            # a few minutes on a CPU
    python -m mesrgan.train --model esrgan --data DIV2K_sub/   # the full recipe (paper defaults)
    torchrun --nproc_per_node=4 -m mesrgan.train --model mesrgan --data DIV2K_sub/

Stage 1 ("psnr") trains the generator with a pixel loss; stage 2 ("gan") starts from it and adds
a discriminator and a VGG perceptual loss. Every hyperparameter is a flag (default: the paper's
value) and a key of the TOML file given with ``--config`` (flags win over the file). The resolved
configuration is written to ``OUT/config.toml``; ``--config OUT/config.toml`` repeats a run.

Run folder ``OUT`` (default ``runs/<model>``):
  last.pt         everything to resume (``--resume``), written every --save-every iterations,
                  at the end of each stage and on SIGINT/SIGTERM; atomic (temp file + rename)
  best.pt         best validation PSNR of the current stage (stage 1's is kept as stage1_best.pt)
  stage1.pt       the generator at the end of stage 1, where stage 2 starts
  metrics.jsonl   training losses (every --log-every) and validation results, one JSON per line
  samples/        side-by-side PNGs (bicubic | SR | HR) of a validation crop
  config.toml     the resolved configuration
All .pt files load with ``mesrgan.models.load_generator`` / ``python -m mesrgan.upscale --weights``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

from . import losses as L
from .data import (CropDataset, SampleIdSampler, bundled_images, find_images, imresize, load_image,
                   prepare_validation, quantize)

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MODELS", "PAPER_DEFAULTS", "QUICK", "build_parser", "resolve_config", "dump_toml",
           "save_checkpoint", "Trainer", "main"]

MODELS = ("srgan", "esrgan", "mesrgan", "esrgan-paper", "mesrgan-paper")
STAGES = ("psnr", "gan")

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
# The paper's recipe (section IV-A; "remaining hyperparameters identical to ESRGAN").
_COMMON = {
    "scale": 4, "stage": "all", "batch_size": 16,
    "psnr_iters": 200_000, "psnr_lr": 2e-4, "psnr_milestones": [100_000],
    "gan_iters": 200_000, "gan_lr": 1e-4, "d_lr": 1e-4, "gan_milestones": [50_000, 100_000, 150_000],
    "lr_gamma": 0.5, "beta1": 0.9, "beta2": 0.999,
    "data": [], "data_lr": [], "val_data": [], "val_every": 5000, "val_max_size": 0,
    "save_every": 5000, "log_every": 100, "workers": 4, "device": "auto", "seed": 0,
    "amp": "none", "channels_last": False, "ema": 0.0, "cache_images": False, "tensorboard": True,
    "vgg_weights": "", "pretrained": "", "quick": False, "generator": {}, "discriminator": {},
}
_SRGAN = {  # Ledig et al. / the paper's eq. (2)
    "crop_size": 96, "psnr_loss": "mse", "pixel_loss": "mse", "pixel_weight": 1.0,
    "perceptual_weight": 6e-3, "perceptual_layer": "relu5_4", "perceptual_criterion": "mse",
    "adv_weight": 1e-3, "gan_type": "gan",
}
_ESRGAN = {  # Wang et al.
    "crop_size": 128, "psnr_loss": "l1", "pixel_loss": "l1", "pixel_weight": 1e-2,
    "perceptual_weight": 1.0, "perceptual_layer": "conv5_4", "perceptual_criterion": "l1",
    "adv_weight": 5e-3, "gan_type": "ragan",
}
PAPER_DEFAULTS = {m: {**_COMMON, **(_SRGAN if m == "srgan" else _ESRGAN)} for m in MODELS}

# --quick: a demo of both stages that finishes in a few minutes on 2 CPU cores.
QUICK = {
    "psnr_iters": 40, "gan_iters": 20, "psnr_milestones": [30], "gan_milestones": [10],
    "batch_size": 4, "crop_size": 64, "val_every": 20, "save_every": 20, "log_every": 5,
    "val_max_size": 96, "workers": 0, "generator": {"num_blocks": 2}, "discriminator": {"features": 32},
}

_RUN_ONLY = ("config", "resume", "stop_after")  # flags that steer this invocation, not the run


def _parse_kv(text: str):
    """``key=value`` with a TOML value (``3``, ``0.5``, ``true``, ``"x"``; bare words are strings)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        pass  # a bare word: keep the string
    return key.strip(), value


def _int_list(text: str):
    try:
        return [int(float(v)) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated iterations, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line. Flags default to None here; paper defaults are filled in by
    :func:`resolve_config` (so a config file can sit between the two)."""
    S = argparse.SUPPRESS
    p = argparse.ArgumentParser(
        prog="python -m mesrgan.train", description=__doc__, argument_default=S,
        formatter_class=argparse.RawDescriptionHelpFormatter)

    def d(key, model="mesrgan"):
        v = PAPER_DEFAULTS[model][key]
        if key in ("crop_size", "psnr_loss", "pixel_loss", "pixel_weight", "perceptual_weight",
                   "perceptual_layer", "perceptual_criterion", "adv_weight", "gan_type"):
            return f"(default: srgan {PAPER_DEFAULTS['srgan'][key]}, (m)esrgan {PAPER_DEFAULTS['esrgan'][key]})"
        if isinstance(v, list):
            v = ",".join(map(str, v)) or "none"
        return f"(default: {v})"

    g = p.add_argument_group("run")
    g.add_argument("--model", choices=MODELS, help="network to train (default: mesrgan)")
    g.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags "
                   "(dashes -> underscores; tables [generator] and [discriminator])")
    g.add_argument("--out", metavar="DIR", help="run folder (default: runs/<model>)")
    g.add_argument("--stage", choices=("psnr", "gan", "all"), help=f"which stage(s) to run {d('stage')}")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--stop-after", type=int, metavar="N",
                   help="stop (with a checkpoint) after N iterations in this invocation; continue with --resume")
    g.add_argument("--quick", action="store_true",
                   help="demo schedule: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--seed", type=int, help=d("seed"))
    g.add_argument("--workers", type=int, help=f"DataLoader worker processes {d('workers')}")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), help="mixed precision on CUDA (default: none)")
    g.add_argument("--channels-last", action="store_true", dest="channels_last",
                   help="NHWC memory format for the networks")
    g.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the generator (e.g. 0.999); 0 = off (default)")
    g.add_argument("--no-tensorboard", action="store_false", dest="tensorboard",
                   help="do not log to TensorBoard even if it is installed")

    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", metavar="DIR",
                   help="folder of HR training images, searched recursively (repeatable); "
                   "default: photos bundled with scikit-image")
    g.add_argument("--data-lr", action="append", metavar="DIR",
                   help="paired LR folder for the matching --data folder (default: LR = imresize(HR, 1/scale))")
    g.add_argument("--val-data", action="append", metavar="DIR",
                   help="folder of HR validation images (default: the 2 held-out bundled photos)")
    g.add_argument("--cache-images", action="store_true", dest="cache_images",
                   help="keep decoded training images in memory (per worker)")
    g.add_argument("--scale", type=int, choices=(2, 4), help=d("scale"))
    g.add_argument("--crop-size", type=int, help="HR crop side " + d("crop_size"))
    g.add_argument("--batch-size", type=int, help=f"images per iteration, over all processes {d('batch_size')}")

    g = p.add_argument_group("stage 1 (psnr)")
    g.add_argument("--psnr-iters", type=int, help=d("psnr_iters"))
    g.add_argument("--psnr-lr", type=float, help=d("psnr_lr"))
    g.add_argument("--psnr-milestones", type=_int_list, metavar="I,J", help="lr x gamma at these " + d("psnr_milestones"))
    g.add_argument("--psnr-loss", choices=("mse", "l1"), help=d("psnr_loss"))

    g = p.add_argument_group("stage 2 (gan)")
    g.add_argument("--gan-iters", type=int, help=d("gan_iters"))
    g.add_argument("--gan-lr", type=float, help="generator lr " + d("gan_lr"))
    g.add_argument("--d-lr", type=float, help="discriminator lr " + d("d_lr"))
    g.add_argument("--gan-milestones", type=_int_list, metavar="I,J", help=d("gan_milestones"))
    g.add_argument("--pixel-loss", choices=("mse", "l1"), help=d("pixel_loss"))
    g.add_argument("--pixel-weight", type=float, help=d("pixel_weight"))
    g.add_argument("--perceptual-weight", type=float, help=d("perceptual_weight"))
    g.add_argument("--perceptual-layer", help="VGG19 layer " + d("perceptual_layer"))
    g.add_argument("--perceptual-criterion", choices=("mse", "l1"), help=d("perceptual_criterion"))
    g.add_argument("--adv-weight", type=float, help=d("adv_weight"))
    g.add_argument("--gan-type", choices=("gan", "ragan"), help=d("gan_type"))
    g.add_argument("--vgg-weights", metavar="PATH",
                   help="torchvision's vgg19-dcbb9e9d.pth (default: the torch hub cache / download)")
    g.add_argument("--pretrained", metavar="PATH",
                   help="stage-1 generator for --stage gan (default: OUT/stage1.pt)")

    g = p.add_argument_group("optimiser and bookkeeping")
    g.add_argument("--lr-gamma", type=float, help=d("lr_gamma"))
    g.add_argument("--beta1", type=float, help=d("beta1"))
    g.add_argument("--beta2", type=float, help=d("beta2"))
    g.add_argument("--val-every", type=int, help=d("val_every"))
    g.add_argument("--val-max-size", type=int, help="centre-crop validation images to this side, 0 = whole " + d("val_max_size"))
    g.add_argument("--save-every", type=int, help=d("save_every"))
    g.add_argument("--log-every", type=int, help=d("log_every"))
    g.add_argument("--g-opt", action="append", type=_parse_kv, metavar="KEY=VALUE",
                   help="generator constructor option, e.g. num_blocks=8 (repeatable)")
    g.add_argument("--d-opt", action="append", type=_parse_kv, metavar="KEY=VALUE",
                   help="discriminator constructor option (repeatable)")
    return p


def resolve_config(argv=None) -> dict:
    """Flags > ``--config`` file > ``--quick`` preset > the paper's defaults for the model.

    Returns the full configuration dict (plus the run-only keys ``resume`` and ``stop_after``).
    """
    ns = vars(build_parser().parse_args(argv))
    cli = {k: v for k, v in ns.items()}
    for k, table in (("g_opt", "generator"), ("d_opt", "discriminator")):
        if k in cli:
            cli[table] = dict(cli.pop(k))
    file_cfg = {}
    if cli.get("config"):
        path = cli["config"]
        try:
            with open(path, "rb") as f:
                file_cfg = tomllib.load(f)
        except FileNotFoundError:
            raise SystemExit(f"error: --config {path!r}: no such file") from None
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"error: --config {path!r} is not valid TOML: {e}") from None
        file_cfg = {k.replace("-", "_"): v for k, v in file_cfg.items()}
    model = cli.get("model", file_cfg.get("model", "mesrgan"))
    if model not in MODELS:
        raise SystemExit(f"error: model must be one of {', '.join(MODELS)}, got {model!r}")
    defaults = PAPER_DEFAULTS[model]
    known = set(defaults) | {"model", "out"}
    unknown = sorted(set(file_cfg) - known - set(_RUN_ONLY))
    if unknown:
        raise SystemExit(f"error: --config {cli['config']!r}: unknown key(s) {unknown}; "
                         f"known keys: {', '.join(sorted(known))}")
    quick = cli.get("quick", file_cfg.get("quick", False))
    cfg = dict(copy.deepcopy(defaults))
    if quick:
        cfg.update(copy.deepcopy(QUICK))
    for src in (file_cfg, cli):
        for k, v in src.items():
            if k in ("generator", "discriminator"):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
    cfg["model"] = model
    cfg.setdefault("out", os.path.join("runs", model))
    cfg["resume"] = bool(cli.get("resume", False))
    cfg["stop_after"] = int(cli.get("stop_after", 0) or 0)
    cfg.pop("config", None)
    for k in ("data", "data_lr", "val_data"):
        v = cfg.get(k) or []
        cfg[k] = [v] if isinstance(v, str) else list(v)
    _validate(cfg)
    return cfg


def _validate(cfg):
    def need(cond, msg):
        if not cond:
            raise SystemExit(f"error: {msg}")

    for k in ("batch_size", "crop_size", "log_every", "val_every", "save_every"):
        need(isinstance(cfg[k], int) and cfg[k] > 0, f"{k.replace('_', '-')} must be a positive integer, got {cfg[k]!r}")
    for k in ("psnr_iters", "gan_iters", "workers", "val_max_size"):
        need(isinstance(cfg[k], int) and cfg[k] >= 0, f"{k.replace('_', '-')} must be >= 0, got {cfg[k]!r}")
    need(cfg["scale"] in (2, 4), f"scale must be 2 or 4, got {cfg['scale']!r}")
    need(cfg["crop_size"] % cfg["scale"] == 0,
         f"crop-size must be a multiple of scale {cfg['scale']}, got {cfg['crop_size']}")
    need(cfg["stage"] in ("psnr", "gan", "all"), f"stage must be psnr, gan or all, got {cfg['stage']!r}")
    need(cfg["amp"] in ("none", "bf16", "fp16"), f"amp must be none, bf16 or fp16, got {cfg['amp']!r}")
    need(0.0 <= float(cfg["ema"]) < 1.0, f"ema must be a decay in [0, 1), got {cfg['ema']!r}")
    need(isinstance(cfg["seed"], int) and cfg["seed"] >= 0, f"seed must be an integer >= 0, got {cfg['seed']!r}")
    need(cfg["stop_after"] >= 0, f"stop-after must be >= 0 iterations, got {cfg['stop_after']!r}")
    finite = (int, float)
    for k in ("psnr_lr", "gan_lr", "d_lr", "lr_gamma"):
        need(isinstance(cfg[k], finite) and 0 < cfg[k] < math.inf,
             f"{k.replace('_', '-')} must be a number > 0, got {cfg[k]!r}")
    for k in ("pixel_weight", "perceptual_weight", "adv_weight"):
        need(isinstance(cfg[k], finite) and 0 <= cfg[k] < math.inf,
             f"{k.replace('_', '-')} must be a number >= 0, got {cfg[k]!r}")
    for k in ("beta1", "beta2"):
        need(isinstance(cfg[k], finite) and 0 <= cfg[k] < 1, f"{k} must be in [0, 1), got {cfg[k]!r}")
    for k in ("psnr_loss", "pixel_loss", "perceptual_criterion"):
        need(cfg[k] in ("mse", "l1"), f"{k.replace('_', '-')} must be mse or l1, got {cfg[k]!r}")
    need(cfg["gan_type"] in ("gan", "ragan"), f"gan-type must be gan or ragan, got {cfg['gan_type']!r}")
    need(not cfg["data_lr"] or len(cfg["data_lr"]) == len(cfg["data"]),
         f"--data-lr must be given once per --data folder ({len(cfg['data'])} --data, {len(cfg['data_lr'])} --data-lr)")
    for table in ("generator", "discriminator"):
        need(isinstance(cfg[table], dict), f"{table} options must be a table of KEY = VALUE, got {cfg[table]!r}")
    need("scale" not in cfg["generator"], "the generator's scale is set with --scale, not --g-opt")
    need("input_size" not in cfg["discriminator"], "the discriminator's input_size follows --crop-size")
    for k in ("psnr_milestones", "gan_milestones"):
        need(isinstance(cfg[k], list) and all(isinstance(m, int) and m > 0 for m in cfg[k]),
             f"{k.replace('_', '-')} must be a list of positive iterations, got {cfg[k]!r}")


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(cfg: dict) -> str:
    """Write a flat config with one level of tables as TOML (read back by ``tomllib``)."""
    lines, tables = [], []
    for k in sorted(cfg):
        v = cfg[k]
        if isinstance(v, dict):
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, t in tables:
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in sorted(t.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_checkpoint(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash at any moment leaves either the old or the new file, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rng_state():
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
    }


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate((3, tuple(s["python"]), None))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
# what --resume needs from last.pt (the optional parts are looked up with .get)
_RESUME_KEYS = ("stage", "iteration", "best_psnr", "generator", "optimizer_g", "rng")


def _read_checkpoint_or_exit(flag, path, require=()):
    """``read_checkpoint``, or one line on stderr and exit status 2 for a file that is not one."""
    from .models import CheckpointError, read_checkpoint
    try:
        return read_checkpoint(path, require=require)
    except CheckpointError as e:
        print(f"error: {flag}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _lr_at(base: float, milestones, gamma: float, iteration: int) -> float:
    """Step schedule: ``base * gamma ** (number of milestones <= iteration)``."""
    return base * gamma ** sum(1 for m in milestones if iteration >= m)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


def _unwrap(m):
    return m.module if hasattr(m, "module") else m


def _vgg_cache_file():
    from .models import VGG19_URL
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG19_URL))


def _worker_init(_worker_id):
    # Ctrl-C reaches the whole process group; the main process saves a checkpoint and shuts the
    # workers down, so they must not die on it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Dist:
    """torchrun's environment: rank, world size, local rank."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Runs the stages of ``cfg`` (from :func:`resolve_config`), resuming when asked."""

    def __init__(self, cfg: dict, log=print):
        from .models import build_discriminator, build_generator, generator_config

        self.cfg = cfg
        self.dist = _Dist()
        self.log = log if self.dist.main else (lambda *a, **k: None)
        self.out = cfg["out"]
        self._stop_signal = None
        self._setup_device()
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"] % 2**32)
        random.seed(cfg["seed"])

        self.stages = list(STAGES) if cfg["stage"] == "all" else [cfg["stage"]]
        self.state = {"stage": self.stages[0], "iteration": 0, "best_psnr": -math.inf}

        # Networks. The generator config is what load_generator needs to rebuild it.
        self.gen_config = generator_config(cfg["model"], cfg["scale"], **cfg["generator"])
        self.G = build_generator(cfg["model"], **self.gen_config).to(self.device)
        self.D = None
        if "gan" in self.stages:
            self.D = build_discriminator(cfg["model"], **{"input_size": cfg["crop_size"], **cfg["discriminator"]})
            self.D = self.D.to(self.device)
        if cfg["channels_last"]:
            for m in (self.G, self.D):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        self.ema = None
        if cfg["ema"] > 0:
            self.ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.perceptual = self._build_perceptual() if "gan" in self.stages else None

        self.G_train, self.D_train = self.G, self.D
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_train = DDP(self.G, device_ids=ids)
            if self.D is not None:
                # Each rank keeps its own batch-norm statistics: broadcasting buffers on every
                # forward would also clash with the several discriminator passes per step.
                with warnings.catch_warnings():  # newer torch renames the flag; the old one still works
                    warnings.simplefilter("ignore", FutureWarning)
                    self.D_train = DDP(self.D, device_ids=ids, broadcast_buffers=False)

        self.train_set = self._build_train_set()
        self.val_set = self._build_val_set()
        self.scaler = None
        if cfg["amp"] == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
        self.opt_g = self.opt_d = None
        self.tb = None

    # ---- setup ----------------------------------------------------------------------------
    def _setup_device(self):
        cfg, dist = self.cfg, self.dist
        want = cfg["device"]
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(want)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit(f"error: --device {cfg['device']} asked for CUDA, but torch sees no GPU")
            if dist.enabled:
                dev = torch.device("cuda", dist.local_rank)
            elif dev.index is None:  # set_device and the checkpoints want an explicit index
                dev = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(dev)
        if cfg["amp"] != "none" and dev.type != "cuda":
            raise SystemExit(f"error: --amp {cfg['amp']} needs a CUDA device; this run is on {dev}")
        self.device = dev
        if cfg["batch_size"] % dist.world_size:
            raise SystemExit(f"error: --batch-size {cfg['batch_size']} (the global batch) must be divisible by "
                             f"the number of processes, {dist.world_size}")
        if dist.enabled and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")

    def _build_perceptual(self):
        """Build the VGG feature extractor now, so a missing file fails at start, not after stage 1."""
        cfg = self.cfg
        if cfg["perceptual_weight"] == 0:
            return None
        from .models import VGGFeatureExtractor

        weights = cfg["vgg_weights"] or None
        if cfg["quick"] and weights is None and not os.path.isfile(_vgg_cache_file()):
            self.log("note: the perceptual (VGG) term of stage 2 is OFF in this --quick run: no VGG19 "
                     f"ImageNet weights were given (--vgg-weights PATH) and none are cached at "
                     f"{_vgg_cache_file()}; stage 2 runs with the pixel and adversarial terms only.")
            cfg["perceptual_weight"] = 0.0
            return None
        try:
            extractor = VGGFeatureExtractor(layer=cfg["perceptual_layer"], weights=weights, pretrained=True)
        except Exception as e:  # noqa: BLE001 - turned into one clear message
            raise SystemExit(
                f"error: stage 2 needs the VGG19 ImageNet weights for its perceptual loss and they could not "
                f"be loaded: {e}\nPass --vgg-weights PATH (torchvision's vgg19-dcbb9e9d.pth), run only "
                f"--stage psnr, or set --perceptual-weight 0.") from None
        return L.PerceptualLoss(extractor, cfg["perceptual_criterion"]).to(self.device)

    def _build_train_set(self):
        cfg = self.cfg
        kw = dict(seed=cfg["seed"], cache=cfg["cache_images"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cfg["data_lr"]:
                ds = CropDataset.from_pairs(cfg["data"], cfg["data_lr"], cfg["crop_size"], cfg["scale"], **kw)
            elif cfg["data"]:
                try:
                    ds = CropDataset.from_folders(cfg["data"], cfg["crop_size"], cfg["scale"], **kw)
                except (FileNotFoundError, ValueError) as e:
                    raise SystemExit(f"error: {e}") from None
            else:
                try:
                    images = bundled_images("train")
                except RuntimeError as e:
                    raise SystemExit(f"error: {e}") from None
                ds = CropDataset.from_arrays(images, cfg["crop_size"], cfg["scale"], **kw)
        for w in caught:
            self.log(f"warning: {w.message}")
        if len(ds) == 0:
            raise SystemExit("error: no training images left after skipping")
        where = ", ".join(cfg["data"]) if cfg["data"] else "scikit-image's bundled photos"
        self.log(f"training on {len(ds)} images from {where}; crops {cfg['crop_size']} -> "
                 f"{cfg['crop_size'] // cfg['scale']} (x{cfg['scale']})")
        return ds

    def _build_val_set(self):
        cfg = self.cfg
        if cfg["val_data"]:
            images = []
            for p in find_images(cfg["val_data"]):
                try:
                    images.append((os.path.splitext(os.path.basename(p))[0], load_image(p)))
                except Exception as e:  # noqa: BLE001
                    self.log(f"warning: skipping unreadable validation image {p}: {e}")
        else:
            try:
                images = bundled_images("val")
            except RuntimeError as e:
                self.log(f"warning: no validation ({e})")
                images = []
        return prepare_validation(images, cfg["scale"], cfg["val_max_size"])

    def _optimizer(self, params, lr):
        return torch.optim.Adam(params, lr=lr, betas=(self.cfg["beta1"], self.cfg["beta2"]))

    def _start_stage(self, stage):
        cfg = self.cfg
        if stage == "psnr":
            self.opt_g = self._optimizer(self.G.parameters(), cfg["psnr_lr"])
            self.opt_d = None
        else:
            self.opt_g = self._optimizer(self.G.parameters(), cfg["gan_lr"])
            self.opt_d = self._optimizer(self.D.parameters(), cfg["d_lr"])
        self.d_loss_fn, self.g_adv_fn = L.adversarial_losses(cfg["gan_type"])
        # Different crops in each stage, same crops in every run with this seed.
        self.train_set.seed = cfg["seed"] + 7919 * STAGES.index(stage)

    def _schedule(self, stage):
        cfg = self.cfg
        if stage == "psnr":
            return cfg["psnr_lr"], cfg["psnr_milestones"]
        return cfg["gan_lr"], cfg["gan_milestones"]

    def _set_lr(self, stage, it):
        base, ms = self._schedule(stage)
        for g in self.opt_g.param_groups:
            g["lr"] = _lr_at(base, ms, self.cfg["lr_gamma"], it)
        if self.opt_d is not None:
            for g in self.opt_d.param_groups:
                g["lr"] = _lr_at(self.cfg["d_lr"], ms, self.cfg["lr_gamma"], it)

    # ---- checkpoints ----------------------------------------------------------------------
    def _generator_ckpt(self):
        from .models import generator_checkpoint
        ck = generator_checkpoint(self.cfg["model"], self.G, self.gen_config)
        if self.ema is not None:
            ck["generator_ema"] = self.ema.state_dict()
        return ck

    def _checkpoint(self):
        cfg = self.cfg
        stage = self.state["stage"]
        base, ms = self._schedule(stage)
        ck = self._generator_ckpt()
        ck.update({
            "train_config": {k: v for k, v in cfg.items() if k not in _RUN_ONLY},
            "stage": stage, "iteration": self.state["iteration"], "best_psnr": self.state["best_psnr"],
            "optimizer_g": self.opt_g.state_dict(),
            "scheduler_g": {"base_lr": base, "milestones": list(ms), "gamma": cfg["lr_gamma"],
                            "iteration": self.state["iteration"]},
            "rng": _rng_state(),
        })
        if self.D is not None:
            ck["discriminator"] = self.D.state_dict()
        if self.opt_d is not None:
            ck["optimizer_d"] = self.opt_d.state_dict()
            ck["scheduler_d"] = {"base_lr": cfg["d_lr"], "milestones": list(ms), "gamma": cfg["lr_gamma"],
                                 "iteration": self.state["iteration"]}
        if self.scaler is not None:
            ck["scaler"] = self.scaler.state_dict()
        return ck

    def save_last(self):
        if self.dist.main:
            save_checkpoint(self._checkpoint(), os.path.join(self.out, "last.pt"))
        self.dist.barrier()

    def _resume(self):
        path = os.path.join(self.out, "last.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"error: --resume: no checkpoint {path}")
        ck = _read_checkpoint_or_exit("--resume", path, _RESUME_KEYS)
        old = ck.get("train_config", {})
        for k in ("model", "scale", "crop_size", "generator"):
            if k in old and old[k] != self.cfg[k]:
                raise SystemExit(f"error: --resume: {path} was trained with {k}={old[k]!r}, "
                                 f"this run asks for {self.cfg[k]!r}")
        if ck["stage"] not in self.stages:
            raise SystemExit(f"error: --resume: {path} is in stage {ck['stage']!r}, which --stage "
                             f"{self.cfg['stage']} does not run")
        self.G.load_state_dict(ck["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(ck.get("generator_ema", ck["generator"]))
        if self.D is not None and "discriminator" in ck:
            self.D.load_state_dict(ck["discriminator"])
        self.state.update(stage=ck["stage"], iteration=int(ck["iteration"]), best_psnr=float(ck["best_psnr"]))
        self._start_stage(ck["stage"])
        self.opt_g.load_state_dict(ck["optimizer_g"])
        if self.opt_d is not None and "optimizer_d" in ck:
            self.opt_d.load_state_dict(ck["optimizer_d"])
        if self.scaler is not None and "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        self.log(f"resumed from {path}: stage {ck['stage']}, iteration {ck['iteration']}")

    def _load_stage1(self):
        """Stage 2 starts from the stage-1 generator."""
        path = self.cfg["pretrained"] or os.path.join(self.out, "stage1.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"error: --stage gan starts from a stage-1 generator, and {path} does not exist: "
                             "pass --pretrained PATH or run --stage psnr first with the same --out")
        ck = _read_checkpoint_or_exit("--pretrained" if self.cfg["pretrained"] else "--stage gan", path)
        # Our checkpoints hold the raw weights under "generator" (an EMA, if any, is not where
        # stage 1 ended); anything else is taken as a bare state dict.
        state = ck["generator"] if "generator" in ck else ck
        try:
            self.G.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError) as e:
            raise SystemExit(f"error: {path} does not fit the {self.cfg['model']} generator of this run "
                             f"(options {self.cfg['generator']}): {e}") from None
        self.log(f"stage 2 starts from {path}")

    # ---- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, stage, it):
        from .metrics import psnr, ssim
        if not self.val_set:
            return None
        net = self.ema if self.ema is not None else self.G
        was_training = net.training
        net.eval()
        s = self.cfg["scale"]
        res = {"psnr": [], "ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
        sample = None
        for i, (name, lr, hr) in enumerate(self.val_set):
            x = lr.to(self.device)
            if self.cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                sr = net(x)
            sr = quantize(sr.float().cpu())
            bic = quantize(imresize(lr, s))
            res["psnr"].append(float(psnr(sr, hr, crop_border=s, y_channel=True)[0]))
            res["ssim"].append(float(ssim(sr, hr, crop_border=s, y_channel=True)[0]))
            res["bicubic_psnr"].append(float(psnr(bic, hr, crop_border=s, y_channel=True)[0]))
            res["bicubic_ssim"].append(float(ssim(bic, hr, crop_border=s, y_channel=True)[0]))
            if i == 0:
                sample = (bic, sr, hr)
        net.train(was_training)
        out = {k: sum(v) / len(v) for k, v in res.items()}
        self._save_sample(sample, stage, it)
        return out

    def _save_sample(self, sample, stage, it):
        from PIL import Image
        bic, sr, hr = sample
        h, w = hr.shape[-2:]
        c = min(192, h, w)
        y0, x0 = (h - c) // 2, (w - c) // 2
        gap = torch.ones(1, 3, c, 4)
        tiles = [bic, gap, sr, gap, hr]
        row = torch.cat([t[..., y0:y0 + c, x0:x0 + c] if t is not gap else t for t in tiles], dim=-1)
        a = (row[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
        folder = os.path.join(self.out, "samples")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(a).save(os.path.join(folder, f"{stage}_{it:07d}.png"))

    # ---- steps ----------------------------------------------------------------------------
    def _autocast(self):
        amp = self.cfg["amp"]
        if amp == "none":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _backward(self, loss):
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _opt_step(self, opt):
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()

    def _update_ema(self):
        if self.ema is None:
            return
        d = self.cfg["ema"]
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.G.parameters()):
                pe.lerp_(p.detach(), 1.0 - d)
            for be, b in zip(self.ema.buffers(), self.G.buffers()):
                be.copy_(b)

    def _step_psnr(self, lr, hr):
        cfg = self.cfg
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            sr = self.G_train(lr)
            loss = L.pixel_loss(sr.float(), hr, cfg["psnr_loss"])
        self._backward(loss)
        self._opt_step(self.opt_g)
        if self.scaler is not None:
            self.scaler.update()
        return {"l_pix": loss.detach()}

    def _step_gan(self, lr, hr):
        cfg = self.cfg
        D = _unwrap(self.D_train)
        ragan = cfg["gan_type"] == "ragan"
        # Generator step: D is frozen and called without its DDP wrapper (no gradient for D).
        D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            sr = self.G_train(lr)
            srf = sr.float()
            l_pix = cfg["pixel_weight"] * L.pixel_loss(srf, hr, cfg["pixel_loss"])
            fake_g = D(sr).float()
            real_g = D(hr).float().detach() if ragan else None
            l_adv = cfg["adv_weight"] * self.g_adv_fn(real_g, fake_g)
            total = l_pix + l_adv
            logs = {"l_pix": l_pix.detach(), "l_adv": l_adv.detach()}
            if self.perceptual is not None:
                l_per = cfg["perceptual_weight"] * self.perceptual(srf, hr)
                total = total + l_per
                logs["l_per"] = l_per.detach()
        self._backward(total)
        self._opt_step(self.opt_g)
        # Discriminator step. d_loss(real, fake) has one term per side, so its gradient is the sum
        # of the gradients of d_loss(real, fake_ref) and d_loss(real_ref, fake) with the *_ref
        # detached; fake_ref = D(sr) from the generator step (same D, same input). Two backward
        # passes, one per D forward, keep DDP to one forward per backward.
        D.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        fake_ref = fake_g.detach()
        with self._autocast():
            real_d = self.D_train(hr).float()
            l_d_real = self.d_loss_fn(real_d, fake_ref)
        self._backward(l_d_real)
        with self._autocast():
            fake_d = self.D_train(sr.detach()).float()
            l_d_fake = self.d_loss_fn(real_d.detach(), fake_d)
        self._backward(l_d_fake)
        self._opt_step(self.opt_d)
        if self.scaler is not None:
            self.scaler.update()
        logs["l_d"] = l_d_fake.detach()  # = d_loss(real, fake): same values as l_d_real
        logs["d_real"] = real_d.detach().mean()
        logs["d_fake"] = fake_d.detach().mean()
        return logs

    # ---- the loop -------------------------------------------------------------------------
    def _install_signals(self):
        def handler(signum, frame):
            if self._stop_signal is not None:  # second signal: give up at once
                raise KeyboardInterrupt
            self._stop_signal = signum
        self._old_handlers = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old_handlers[s] = signal.signal(s, handler)

    def _restore_signals(self):
        for s, h in getattr(self, "_old_handlers", {}).items():
            signal.signal(s, h)

    def _should_stop(self, done_here, last):
        """--stop-after is the same on every rank; a signal may reach only some ranks, so with
        several processes they agree on it every 10 iterations (and at the end of a stage)."""
        if self.cfg["stop_after"] and done_here >= self.cfg["stop_after"]:
            return True
        if not self.dist.enabled:
            return self._stop_signal is not None
        if done_here % 10 and not last:
            return False
        t = torch.tensor([1.0 if self._stop_signal is not None else 0.0],
                         device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        if t.item() and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM  # another rank was told to stop
        return bool(t.item())

    def _loader(self, start_iteration, iters):
        cfg, dist = self.cfg, self.dist
        sampler = SampleIdSampler(cfg["batch_size"], start_batch=start_iteration, rank=dist.rank,
                                  world_size=dist.world_size, num_batches=iters - start_iteration)
        workers = cfg["workers"]
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=sampler.per_rank, sampler=sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None, drop_last=False,
            worker_init_fn=_worker_init if workers > 0 else None)

    def _write_metrics(self, record):
        if not self.dist.main:
            return
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["iteration"] + (self.cfg["psnr_iters"] if record["stage"] == "gan" else 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("iteration", "time"):
                    self.tb.add_scalar(f"{record['stage']}/{k}", v, step)

    def _open_tensorboard(self):
        if not (self.cfg["tensorboard"] and self.dist.main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional
            return
        self.tb = SummaryWriter(os.path.join(self.out, "tb"))

    def run(self) -> int:
        """Train; returns 0 when done or stopped on request (checkpoint written)."""
        cfg = self.cfg
        if self.dist.main:
            os.makedirs(self.out, exist_ok=True)
        self.dist.barrier()
        if cfg["resume"]:
            self._resume()
        else:
            if self.dist.main and os.path.isfile(os.path.join(self.out, "metrics.jsonl")):
                os.unlink(os.path.join(self.out, "metrics.jsonl"))  # a fresh run starts a fresh log
            if self.stages[0] == "gan":
                self._load_stage1()
                if self.ema is not None:
                    self.ema.load_state_dict(self.G.state_dict())
            self._start_stage(self.stages[0])
        if self.dist.main:
            with open(os.path.join(self.out, "config.toml"), "w") as f:
                f.write(dump_toml({k: v for k, v in cfg.items() if k not in _RUN_ONLY}))
        self._open_tensorboard()
        self._install_signals()
        done_here = 0
        try:
            for stage in self.stages[self.stages.index(self.state["stage"]):]:
                if stage != self.state["stage"]:
                    self._begin_next_stage(stage)
                stopped, done_here = self._run_stage(stage, done_here)
                if stopped:
                    return self._stopped()
        finally:
            self._restore_signals()
            if self.tb is not None:
                self.tb.close()
        self.log(f"done: {self.out}")
        return 0

    def _stopped(self):
        why = (f"signal {signal.Signals(self._stop_signal).name}" if self._stop_signal is not None
               else f"--stop-after {self.cfg['stop_after']}")
        self.log(f"\nstopped ({why}) at stage {self.state['stage']} iteration {self.state['iteration']}; "
                 f"continue with --resume (checkpoint {os.path.join(self.out, 'last.pt')})")
        return 128 + int(self._stop_signal) if self._stop_signal is not None else 0

    def _begin_next_stage(self, stage):
        self.state.update(stage=stage, iteration=0, best_psnr=-math.inf)
        if self.ema is not None:  # stage 2 starts from the stage-1 weights; so does its average
            self.ema.load_state_dict(self.G.state_dict())
        self._start_stage(stage)

    def _end_stage(self, stage):
        if not self.dist.main:
            return
        if stage == "psnr":
            from .models import generator_checkpoint
            ck = generator_checkpoint(self.cfg["model"], self.G, self.gen_config)
            save_checkpoint(ck, os.path.join(self.out, "stage1.pt"))
            best = os.path.join(self.out, "best.pt")
            if os.path.isfile(best) and "gan" in self.stages:
                os.replace(best, os.path.join(self.out, "stage1_best.pt"))

    def _run_stage(self, stage, done_here):
        cfg = self.cfg
        iters = cfg[f"{stage}_iters"]
        it = self.state["iteration"]
        step = self._step_psnr if stage == "psnr" else self._step_gan
        self.G_train.train()
        if self.D_train is not None:
            self.D_train.train()
        if it >= iters:  # resumed from a checkpoint written at the very end of this stage
            self._end_stage(stage)
            return False, done_here
        self.log(f"stage {stage}: iterations {it + 1}..{iters}, batch {cfg['batch_size']}, "
                 f"lr {_lr_at(*self._schedule(stage), cfg['lr_gamma'], it):g}")
        tty = sys.stdout.isatty()
        t_last = t_bar = time.perf_counter()
        it_last = it
        sums, count = {}, 0
        for batch in self._loader(it, iters):
            lr = batch["lr"].to(self.device, non_blocking=True)
            hr = batch["hr"].to(self.device, non_blocking=True)
            if cfg["channels_last"]:
                lr = lr.contiguous(memory_format=torch.channels_last)
                hr = hr.contiguous(memory_format=torch.channels_last)
            self._set_lr(stage, it)
            logs = step(lr, hr)
            self._update_ema()
            it += 1
            done_here += 1
            self.state["iteration"] = it
            # Summed as tensors on the device: no GPU synchronisation until a log line is due.
            for k, v in logs.items():
                sums[k] = sums[k] + v.float() if k in sums else v.float()
            count += 1
            now = time.perf_counter()
            if it % cfg["log_every"] == 0 or it == iters:
                rate = (it - it_last) / max(now - t_last, 1e-9)
                keys = sorted(sums)
                t = torch.stack([sums[k] for k in keys]) / count
                if self.dist.enabled:  # the loss of the global batch, not rank 0's share
                    torch.distributed.all_reduce(t)
                    t = t / self.dist.world_size
                means = {k: float(v) for k, v in zip(keys, t.cpu())}
                means = {k: means[k] for k in logs}  # in the step's order
                self._write_metrics({"stage": stage, "iteration": it,
                                     "lr": self.opt_g.param_groups[0]["lr"], **means,
                                     "it_per_s": rate, "time": time.time()})
                line = (f"[{stage}] {it}/{iters} " + " ".join(f"{k} {v:.4g}" for k, v in means.items())
                        + f" | {rate:.2f} it/s | ETA {_fmt_time((iters - it) / max(rate, 1e-9))}")
                self.log(("\r" + line + "\x1b[K") if tty else line, flush=True)
                sums, count = {}, 0
                t_last, it_last, t_bar = now, it, now
            elif tty and now - t_bar > 0.5:
                # Between log lines, a live progress line on terminals.
                rate = (it - it_last) / max(now - t_last, 1e-9)
                self.log(f"\r[{stage}] {it}/{iters} | {rate:.2f} it/s | ETA "
                         f"{_fmt_time((iters - it) / max(rate, 1e-9))}\x1b[K", end="", flush=True)
                t_bar = now
            if it % cfg["val_every"] == 0 or it == iters:
                self._validate_and_keep_best(stage, it)
            last = it == iters
            stop = self._should_stop(done_here, last)
            if it % cfg["save_every"] == 0 or last or stop:
                self.save_last()
            if last:
                self._end_stage(stage)
            if stop and not last:
                return True, done_here
            if stop and last:
                # Finished this stage exactly when asked to stop: move to the next (if any)
                # in the checkpoint so --resume starts it.
                nxt = self.stages.index(stage) + 1
                if nxt < len(self.stages):
                    self._begin_next_stage(self.stages[nxt])
                    self.save_last()
                return True, done_here
        self.dist.barrier()
        return False, done_here

    def _validate_and_keep_best(self, stage, it):
        if self.dist.main:
            res = self.validate(stage, it)
            if res is not None:
                improved = res["psnr"] > self.state["best_psnr"]
                self._write_metrics({"stage": stage, "iteration": it, "val": True,
                                     **{f"val_{k}": v for k, v in res.items()}})
                self.log(f"[{stage}] {it} validation: PSNR-Y {res['psnr']:.2f} dB, SSIM-Y {res['ssim']:.4f} "
                         f"(bicubic {res['bicubic_psnr']:.2f} dB, {res['bicubic_ssim']:.4f})"
                         + (" *best*" if improved else ""))
                if improved:
                    self.state["best_psnr"] = res["psnr"]
                    ck = self._generator_ckpt()
                    ck.update({"stage": stage, "iteration": it, "val": res})
                    save_checkpoint(ck, os.path.join(self.out, "best.pt"))
        if self.dist.enabled:  # everyone learns the best PSNR so their checkpoints agree
            t = torch.tensor([self.state["best_psnr"]], dtype=torch.float64)
            if self.device.type == "cuda":
                t = t.to(self.device)
            torch.distributed.broadcast(t, 0)
            self.state["best_psnr"] = float(t.item())


def main(argv=None) -> int:
    cfg = resolve_config(argv)
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        if trainer.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
