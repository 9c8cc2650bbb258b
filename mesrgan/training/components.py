"""What a run is built from: the device, the networks, the data, the perceptual loss.

Each builder reads the configuration of :mod:`.config` and turns a failure into one
``SystemExit`` message that names the flag to change.
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings

import torch

from . import losses as L
from ..cli import UsageError, resolve_device
from ..data import CropDataset, bundled_images, find_images, load_image, prepare_validation
from ..models import VGG19_URL, VGGFeatureExtractor, build_discriminator, build_generator, generator_config
from .config import ConfigError, one_line

__all__ = ["Networks", "compile_mode", "pick_device", "build_networks", "check_step_memory", "saved_bytes_per_lr_pixel",
           "build_train_set", "build_val_set",
           "vgg_cache_file", "find_vgg_weights", "missing_vgg_text", "perceptual_needed", "build_perceptual"]


def pick_device(cfg: dict, local_rank: int | None) -> torch.device:
    """``--device`` as a ``torch.device`` with an explicit CUDA index (``local_rank`` under torchrun)."""
    try:
        dev = resolve_device(cfg["device"])
    except UsageError as e:
        raise ConfigError(f"error: {e}") from None
    if dev.type == "cuda":
        if local_rank is not None:
            dev = torch.device("cuda", local_rank)
        elif dev.index is None:  # set_device and the checkpoints want an explicit index
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if cfg["amp"] == "fp16" and dev.type != "cuda":
        raise ConfigError(f"error: --amp fp16 needs a CUDA device; this run is on {dev} (--amp bf16 runs on CPUs too)")
    return dev


def compile_mode(device: torch.device) -> str | None:
    """``--compile``'s torch.compile mode: "reduce-overhead" on CUDA (CUDA graphs: one replay instead
    of a launch per kernel), the default mode on the CPU (inductor's C++ kernels; no launches to save)."""
    return "reduce-overhead" if device.type == "cuda" else None


class Networks:
    """The generator, its moving average (``--ema``), the discriminator (stage 2 only), and the
    training views of G and D (DDP wrappers with several processes, else the networks; compiled
    with ``--compile``). ``D_frozen`` is the view of D in the generator step: never DDP-wrapped
    (no gradient for D there), compiled with ``--compile``."""

    def __init__(self, G, D, ema, gen_config):
        self.G, self.D, self.ema, self.gen_config = G, D, ema, gen_config
        self.G_train, self.D_train, self.D_frozen = G, D, D
        self.cuda_graphs = False

    def compile(self, device: torch.device) -> None:
        """``--compile``: torch.compile the training views. G, D and the EMA stay uncompiled modules
        sharing the same parameters: checkpoints keep their keys (no ``_orig_mod.`` prefix), and the
        EMA and validation run them as they are."""
        mode = compile_mode(device)
        self.G_train = torch.compile(self.G_train, mode=mode)
        if self.D is not None:
            self.D_train = torch.compile(self.D_train, mode=mode)
            self.D_frozen = torch.compile(self.D, mode=mode)
        if mode == "reduce-overhead":
            self.use_cuda_graphs()

    def use_cuda_graphs(self) -> None:
        """The bookkeeping CUDA graphs need around the compiled calls (see :meth:`begin_step` and
        :meth:`keep`). D's gradient sums two backward passes (real batch, then fake), with a compiled
        D call between them that starts a new generation and would overwrite a ``.grad`` the graphs
        allocated: D's ``.grad`` buffers are allocated here, outside the graphs, and the
        discriminator step zeroes them instead of dropping them, so both passes add into them."""
        self.cuda_graphs = True
        if self.D is not None:
            for p in self.D.parameters():
                p.grad = torch.zeros_like(p)

    def begin_step(self) -> None:
        """Tell CUDA graphs a new iteration begins: the last one's graph outputs may be reused."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` detached, for use after the next call of a compiled network. Under CUDA graphs a
        compiled call made when no backward is pending starts a new generation, which overwrites the
        outputs of the calls before it: those are cloned (the stage-2 step reads G's output and
        D's first output after later D calls)."""
        t = t.detach()
        return t.clone() if self.cuda_graphs else t

    def update_ema(self, decay: float) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.G.parameters()):
                pe.lerp_(p.detach(), 1.0 - decay)
            for be, b in zip(self.ema.buffers(), self.G.buffers()):
                be.copy_(b)

    def restart_ema(self) -> None:
        """The average restarts from the generator (stage 2 starts from the stage-1 weights)."""
        if self.ema is not None:
            self.ema.load_state_dict(self.G.state_dict())


def build_networks(cfg: dict, device: torch.device, with_discriminator: bool) -> Networks:
    """The run's networks; a generator or discriminator option they refuse, or a batch whose
    training step cannot fit in this machine's memory, is one :class:`ConfigError` line."""
    with _options_of("--g-opt / [generator]", cfg["generator"]):
        # The generator config is what load_generator needs to rebuild it from a checkpoint.
        gen_config = generator_config(cfg["model"], cfg["scale"], **cfg["generator"])
        G = build_generator(cfg["model"], **gen_config).to(device)
    check_step_memory(cfg, G, device)
    D = None
    if with_discriminator:
        with _options_of("--d-opt / [discriminator]", cfg["discriminator"]):
            D = build_discriminator(cfg["model"], **{"input_size": cfg["crop_size"], **cfg["discriminator"]})
        D = D.to(device)
    if cfg["channels_last"]:
        for m in (G, D):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg["ema"] > 0 else None
    return Networks(G, D, ema, gen_config)


@contextlib.contextmanager
def _options_of(where: str, options: dict):
    """Turn a constructor's refusal of the user's options (an unknown name, a value of the wrong
    type or range) into one line naming where they were given."""
    try:
        yield
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"error: {where} {options}: {one_line(e)}") from None


# ---- memory: a batch the machine cannot hold fails at start, not after minutes of swapping ----------
_PROBE_LR = 16  # side of the LR probe whose saved activations are measured


def saved_bytes_per_lr_pixel(G: torch.nn.Module, device: torch.device) -> float:
    """Bytes autograd keeps for the backward of ``G``, per LR pixel of a batch, measured on one
    small probe (activations grow with the pixel count; the probe's output and input count too)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    was_training = G.training
    G.eval()  # no batch-norm statistics move
    try:
        # its own generator: the run's random streams must not move
        x = torch.rand(1, 3, _PROBE_LR, _PROBE_LR, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = G(x.requires_grad_())
            total += 2 * y.numel() * y.element_size()  # the output and its gradient
    finally:
        G.train(was_training)
    return total / _PROBE_LR ** 2


def available_memory(device: torch.device) -> int | None:
    """Bytes this process could still allocate on ``device``: free GPU memory, or the kernel's
    MemAvailable; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_step_memory(cfg: dict, G: torch.nn.Module, device: torch.device) -> None:
    """Refuse a batch whose generator step alone needs more memory than ``device`` has: a lower
    bound (the discriminator, VGG and the optimiser come on top), so no run that fits is refused."""
    free = available_memory(device)
    if free is None:
        return
    lr_side = cfg["crop_size"] // cfg["scale"]
    need = saved_bytes_per_lr_pixel(G, device) * cfg["batch_size"] * lr_side ** 2
    if need > free:
        raise ConfigError(
            f"error: --batch-size {cfg['batch_size']} with --crop-size {cfg['crop_size']}: one training step of "
            f"this generator keeps at least {need / 2**30:,.1f} GiB of activations for its backward, and "
            f"{device} has {free / 2**30:,.1f} GiB available; lower --batch-size or --crop-size")


def build_train_set(cfg: dict, log) -> CropDataset:
    kw = dict(seed=cfg["seed"], cache=cfg["cache_images"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if cfg["data_lr"]:
                ds = CropDataset.from_pairs(cfg["data"], cfg["data_lr"], cfg["crop_size"], cfg["scale"], **kw)
            elif cfg["data"]:
                ds = CropDataset.from_folders(cfg["data"], cfg["crop_size"], cfg["scale"], **kw)
            else:
                ds = CropDataset.from_arrays(bundled_images("train"), cfg["crop_size"], cfg["scale"], **kw)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise ConfigError(f"error: {e}") from None
    for w in caught:
        log(f"warning: {w.message}")
    if len(ds) == 0:
        raise ConfigError("error: no training images left after skipping")
    where = ", ".join(cfg["data"]) if cfg["data"] else "scikit-image's bundled photos"
    log(f"training on {len(ds)} images from {where}; crops {cfg['crop_size']} -> "
        f"{cfg['crop_size'] // cfg['scale']} (x{cfg['scale']})")
    return ds


def build_val_set(cfg: dict, log) -> list:
    if cfg["val_data"]:
        images = []
        for p in find_images(cfg["val_data"]):
            try:
                images.append((os.path.splitext(os.path.basename(p))[0], load_image(p)))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop training
                log(f"warning: skipping unreadable validation image {p}: {e}")
    else:
        try:
            images = bundled_images("val")
        except RuntimeError as e:
            log(f"warning: no validation ({e})")
            images = []
    return prepare_validation(images, cfg["scale"], cfg["val_max_size"])


# ---- the perceptual loss of stage 2 ---------------------------------------------------------------
def vgg_cache_file() -> str:
    """Where torch's hub cache keeps torchvision's VGG19 weights."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG19_URL))


def perceptual_needed(cfg: dict) -> bool:
    return cfg["perceptual_weight"] != 0


def find_vgg_weights(cfg: dict) -> str | None:
    """The VGG19 file stage 2 reads: ``--vgg-weights``, else the hub cache; None if neither is
    there. Nothing is downloaded: offline, a download would fail or hang, after stage 1."""
    if cfg["vgg_weights"]:
        return cfg["vgg_weights"] if os.path.isfile(cfg["vgg_weights"]) else None
    cached = vgg_cache_file()
    return cached if os.path.isfile(cached) else None


def missing_vgg_text(cfg: dict) -> str:
    """Why stage 2 cannot start yet, and where to put the file."""
    if cfg["vgg_weights"]:
        return f"the file given with --vgg-weights, {cfg['vgg_weights']}, does not exist"
    return (f"torchvision's VGG19 ImageNet weights (vgg19-dcbb9e9d.pth) were not found: give the file "
            f"with --vgg-weights PATH, or put it in torch's hub cache as {vgg_cache_file()}")


def build_perceptual(cfg: dict, path: str, device: torch.device):
    """The perceptual loss on VGG19 features read from ``path``."""
    try:
        extractor = VGGFeatureExtractor(layer=cfg["perceptual_layer"], weights=path, pretrained=True)
    except Exception as e:  # noqa: BLE001 - turned into one clear message
        raise ConfigError(f"error: {path} is not torchvision's VGG19 ImageNet checkpoint (vgg19-dcbb9e9d.pth), "
                         f"which stage 2 reads (--vgg-weights PATH or torch's hub cache): {e}") from None
    return L.PerceptualLoss(extractor, cfg["perceptual_criterion"]).to(device)
