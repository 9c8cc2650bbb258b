"""The training program's configuration: flags, TOML files, the paper's defaults, validation.

Precedence: flags > ``--config`` file > ``--quick`` preset > the paper's defaults for ``--model``.
:func:`resolve_config` returns one flat dict whose keys are the flags' names (dashes ->
underscores), plus the run-only keys of :data:`RUN_ONLY`; :func:`dump_toml` writes it back.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MODELS", "STAGES", "PAPER_DEFAULTS", "QUICK", "RUN_ONLY", "DESCRIPTION", "EXIT_NEEDS_VGG", "ConfigError",
           "default_workers", "build_parser", "resolve_config", "validate", "dump_toml", "stages_of",
           "resume_command"]

# Exit status of a run that finished stage 1 and stopped because stage 2's VGG19 weights are missing
# (0 = done or stopped on request, 1 = error, 2 = bad command line, 128 + N = stopped by signal N).
EXIT_NEEDS_VGG = 3

DESCRIPTION = """\
Train SRGAN / ESRGAN / MESRGAN with the paper's two-stage recipe.

    python -m mesrgan.train --model mesrgan --quick            # a few minutes on a CPU
    python -m mesrgan.train --model esrgan --data DIV2K_sub/   # the full recipe (paper defaults)
    torchrun --nproc_per_node=4 -m mesrgan.train --model mesrgan --data DIV2K_sub/

Stage 1 ("psnr") trains the generator with a pixel loss; stage 2 ("gan") starts from it and adds
a discriminator and a VGG perceptual loss. Every hyperparameter is a flag (default: the paper's
value) and a key of the TOML file given with --config (flags win over the file). The resolved
configuration is written to OUT/config.toml; --config OUT/config.toml repeats a run.

Stage 2 reads torchvision's VGG19 ImageNet weights (vgg19-dcbb9e9d.pth) from --vgg-weights PATH or
torch's hub cache; nothing is downloaded. Without them stage 1 runs, and the run then saves and
exits with status 3: continue with --resume --vgg-weights PATH.

Run folder OUT (default runs/<model>, runs/<model>-quick with --quick), locked while a run uses it:
  last.pt         everything to resume (--resume), written every --save-every iterations,
                  at the end of each stage and on the first Ctrl-C / SIGTERM; atomic
  best.pt         best validation PSNR of the current stage (stage 1's is kept as stage1_best.pt)
  stage1.pt       the generator at the end of stage 1, where stage 2 starts
  metrics.jsonl   training losses (every --log-every) and validation results, one JSON per line
  samples/        side-by-side PNGs (bicubic | SR | HR) of a validation crop
  config.toml     the resolved configuration
A new run into a folder that holds any of these files is refused: --resume it, choose another
--out, or --overwrite it. --overwrite deletes only these files (samples/ and tb/: only the ones a
run writes there), and only once the new run's flags, data and networks have been checked; any
other file in the folder is kept. Every file is written whole or not at all (temporary file and
rename). All .pt files load with mesrgan.models.load_generator / upscale --weights.
Exit status: 0 done (or --stop-after), 1 error (e.g. a full disk: the files already written stay
whole), 2 bad flags, configuration or run folder (one line naming the flag; nothing changed on
disk), 3 stage 1 done but VGG19 weights missing, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
"""

def default_workers() -> int:
    """DataLoader workers by default: min(4, the CPUs this process may run on). More workers than
    CPUs only compete with the training process (and make PyTorch warn)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


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
    "save_every": 5000, "log_every": 100, "workers": default_workers(), "device": "auto", "seed": 0,
    "amp": "none", "channels_last": False, "compile": False, "ema": 0.0, "cache_images": False, "tensorboard": True,
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

# Flags that steer this invocation, not the run: never written to config.toml or a checkpoint.
RUN_ONLY = ("config", "resume", "stop_after", "overwrite")


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
    p = argparse.ArgumentParser(allow_abbrev=False,
        prog="python -m mesrgan.train", description=DESCRIPTION, argument_default=S,
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
    g.add_argument("--out", "-o", "--output", dest="out", metavar="DIR", help="run folder (default: runs/<model>, with --quick runs/<model>-quick)")
    g.add_argument("--stage", choices=("psnr", "gan", "all"), help=f"which stage(s) to run {d('stage')}")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUT that holds one, deleting that run's files (and no other "
                   "file) once the new run is set up")
    g.add_argument("--stop-after", type=int, metavar="N",
                   help="stop (with a checkpoint) after N iterations in this invocation; continue with --resume")
    g.add_argument("--quick", action="store_true",
                   help="demo schedule: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--seed", type=int, help=d("seed"))
    g.add_argument("--workers", type=int, help="DataLoader worker processes (default: min(4, CPUs), here "
                   f"{default_workers()})")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"),
                   help="mixed precision (torch.autocast; float32 weights and optimiser): bf16 on CPU or CUDA "
                   "(fast on CPUs with AVX512_BF16 or AMX and on GPUs), fp16 on CUDA with loss scaling "
                   "(default: none)")
    g.add_argument("--channels-last", action="store_true", dest="channels_last",
                   help="NHWC memory format for the networks")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks' training steps (the generator; the discriminator in stage 2): "
                   "mode reduce-overhead (CUDA graphs, fewer kernel launches) on CUDA -- not yet run on a GPU -- and "
                   "the default mode (inductor) on the CPU. The first iterations compile (a minute or more); "
                   "checkpoints, EMA and validation use the uncompiled networks (default: off)")
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
    g.add_argument("--batch-size", type=int, help="images per iteration, over all processes; refused at start if a "
                   f"step cannot fit in memory {d('batch_size')}")

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
                   help="torchvision's vgg19-dcbb9e9d.pth for stage 2 (default: the file in torch's hub cache)")
    g.add_argument("--pretrained", metavar="PATH",
                   help="stage-1 generator for --stage gan (default: OUT/stage1.pt)")

    g = p.add_argument_group("optimiser and bookkeeping")
    g.add_argument("--lr-gamma", type=float, help="lr factor at each milestone, in (0, 1] " + d("lr_gamma"))
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

    Returns the full configuration dict (plus the run-only keys ``resume``, ``stop_after`` and
    ``overwrite``).
    """
    ns = vars(build_parser().parse_args(argv))
    cli = {k: v for k, v in ns.items()}
    for k, table in (("g_opt", "generator"), ("d_opt", "discriminator")):
        if k in cli:
            cli[table] = dict(cli.pop(k))
    file_cfg = {}
    if cli.get("config"):
        path = cli["config"]
        file_cfg = _read_config_file(path)
    model = cli.get("model", file_cfg.get("model", "mesrgan"))
    if model not in MODELS:
        raise ConfigError(f"error: model in --config {cli['config']!r} must be one of {', '.join(MODELS)}, "
                          f"got {model!r}")
    defaults = PAPER_DEFAULTS[model]
    known = set(defaults) | {"model", "out"}
    unknown = sorted(set(file_cfg) - known - set(RUN_ONLY))
    if unknown:
        raise ConfigError(f"error: --config {cli['config']!r}: unknown key(s) {unknown}; "
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
    # --quick has a folder of its own, so that a demo never lands on a real run.
    cfg.setdefault("out", os.path.join("runs", f"{model}-quick" if cfg["quick"] else model))
    cfg["resume"] = bool(cli.get("resume", False))
    cfg["overwrite"] = bool(cli.get("overwrite", False))
    cfg["stop_after"] = int(cli.get("stop_after", 0) or 0)
    cfg.pop("config", None)
    for k in ("data", "data_lr", "val_data"):
        v = cfg.get(k) or []
        cfg[k] = [v] if isinstance(v, str) else v
    validate(cfg, lambda key: _flag(key) if key in cli or key not in file_cfg else f"{key} in --config {cli['config']!r}")
    return cfg


def _read_config_file(path: str) -> dict:
    """The TOML file of ``--config``, its keys with dashes as underscores; one line for a file
    that cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            file_cfg = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"error: --config {path!r}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"error: --config {path!r} is a folder; give the TOML file (e.g. OUT/config.toml)") from None
    except OSError as e:
        raise ConfigError(f"error: --config {path!r}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"error: --config {path!r} is not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"error: --config {path!r} is not valid TOML: {e}") from None
    return {k.replace("-", "_"): v for k, v in file_cfg.items()}


class ConfigError(SystemExit):
    """A value of the command line or the ``--config`` file that cannot be used. The message is
    one line naming the flag (or the file's key); ``python -m mesrgan.train`` prints it and exits
    with status 2, like argparse does for a bad command line."""


def one_line(error: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (PyTorch's state-dict errors span many), shortened."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML's true is not a batch size


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


_POSITIVE_INTS = ("batch_size", "crop_size", "log_every", "val_every", "save_every")
_COUNTS = ("psnr_iters", "gan_iters", "workers", "val_max_size", "seed", "stop_after")
_BOOLS = ("channels_last", "cache_images", "tensorboard", "quick", "compile")
_STRINGS = ("device", "vgg_weights", "pretrained", "out", "perceptual_layer")
_CHOICES = {"stage": ("psnr", "gan", "all"), "amp": ("none", "bf16", "fp16"), "psnr_loss": ("mse", "l1"),
            "pixel_loss": ("mse", "l1"), "perceptual_criterion": ("mse", "l1"), "gan_type": ("gan", "ragan"),
            "scale": (2, 4)}
# the largest values that make sense: beyond them a run would only fail later, or never end
_CEILINGS = {"crop_size": 8192, "batch_size": 1 << 20, "workers": 256}


def validate(cfg, where=None):
    """Raise :class:`ConfigError` naming the flag when a value of ``cfg`` has the wrong type or is
    out of range. ``where(key)`` names the source of a value (default ``--flag-name``)."""
    where = where or _flag

    def need(cond, key, text):
        if not cond:
            raise ConfigError(f"error: {where(key)} {text}, got {cfg[key]!r}")

    for k in _POSITIVE_INTS:
        need(_is_int(cfg[k]) and cfg[k] > 0, k, "must be a positive whole number")
    for k in _COUNTS:
        need(_is_int(cfg[k]) and cfg[k] >= 0, k, "must be a whole number >= 0")
    for k, top in _CEILINGS.items():
        need(cfg[k] <= top, k, f"must be at most {top}")
    for k in _BOOLS:
        need(isinstance(cfg[k], bool), k, "must be true or false")
    for k in _STRINGS:
        need(isinstance(cfg[k], str), k, "must be a string")
    for k, choices in _CHOICES.items():
        need(cfg[k] in choices and type(cfg[k]) is type(choices[0]), k,
             "must be one of " + ", ".join(map(str, choices)))
    need(cfg["crop_size"] % cfg["scale"] == 0, "crop_size", f"must be a multiple of scale {cfg['scale']}")
    need(_is_number(cfg["ema"]) and 0.0 <= cfg["ema"] < 1.0, "ema", "must be a decay in [0, 1)")
    for k in ("psnr_lr", "gan_lr", "d_lr"):
        need(_is_number(cfg[k]) and cfg[k] > 0, k, "must be a number > 0")
    need(_is_number(cfg["lr_gamma"]) and 0 < cfg["lr_gamma"] <= 1, "lr_gamma",
         "must be a number in (0, 1] (the factor the lr is multiplied by at each milestone)")
    for k in ("pixel_weight", "perceptual_weight", "adv_weight"):
        need(_is_number(cfg[k]) and cfg[k] >= 0, k, "must be a number >= 0")
    for k in ("beta1", "beta2"):
        need(_is_number(cfg[k]) and 0 <= cfg[k] < 1, k, "must be in [0, 1)")
    for k in ("data", "data_lr", "val_data"):
        need(isinstance(cfg[k], list) and all(isinstance(d, str) for d in cfg[k]), k, "must be folder names")
    for k in ("psnr_milestones", "gan_milestones"):
        need(isinstance(cfg[k], list) and all(_is_int(m) and m > 0 for m in cfg[k]), k,
             "must be a list of positive iterations")
    if cfg["resume"] and cfg["overwrite"]:
        raise ConfigError("error: --resume continues a run and --overwrite deletes it: give one")
    if cfg["data_lr"] and len(cfg["data_lr"]) != len(cfg["data"]):
        raise ConfigError(f"error: --data-lr must be given once per --data folder ({len(cfg['data'])} --data, "
                          f"{len(cfg['data_lr'])} --data-lr)")
    for table, flag in (("generator", "--g-opt"), ("discriminator", "--d-opt")):
        if not isinstance(cfg[table], dict):
            raise ConfigError(f"error: {flag} / [{table}] must be a table of KEY = VALUE, got {cfg[table]!r}")
    if "scale" in cfg["generator"]:
        raise ConfigError("error: the generator's scale is set with --scale, not --g-opt")
    if "input_size" in cfg["discriminator"]:
        raise ConfigError("error: the discriminator's input_size follows --crop-size, not --d-opt")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def stages_of(cfg) -> list:
    """The stages this run trains, in order."""
    return list(STAGES) if cfg["stage"] == "all" else [cfg["stage"]]


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


def resume_command(argv, resume: bool = True) -> str:
    """The command that continues a run given ``argv`` once the VGG19 weights are at hand:
    ``argv`` without ``--resume``, ``--overwrite`` and ``--vgg-weights``, plus
    ``[--resume] --vgg-weights PATH``."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--vgg-weights":
            skip = True  # its value follows
        elif a not in ("--resume", "--overwrite") and not a.startswith("--vgg-weights="):
            kept.append(a)
    tail = (["--resume"] if resume else []) + ["--vgg-weights", "PATH"]
    return "python -m mesrgan.train " + shlex.join(kept + tail)
