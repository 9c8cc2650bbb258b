"""What a run is built from: the device, the networks, the data, the perceptual loss.

Each builder reads the configuration of :mod:`.config` and turns a failure into one
``SystemExit`` message that names the flag to change.
"""
from __future__ import annotations

import copy
import os
import warnings

import torch

from .. import losses as L
from ..data import CropDataset, bundled_images, find_images, load_image, prepare_validation

__all__ = ["Networks", "pick_device", "build_networks", "build_train_set", "build_val_set",
           "vgg_cache_file", "find_vgg_weights", "missing_vgg_text", "perceptual_needed", "build_perceptual"]


def pick_device(cfg: dict, local_rank: int | None) -> torch.device:
    """``--device`` as a ``torch.device`` with an explicit CUDA index (``local_rank`` under torchrun)."""
    want = cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(want)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {cfg['device']} asked for CUDA, but torch sees no GPU")
        if local_rank is not None:
            dev = torch.device("cuda", local_rank)
        elif dev.index is None:  # set_device and the checkpoints want an explicit index
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if cfg["amp"] != "none" and dev.type != "cuda":
        raise SystemExit(f"error: --amp {cfg['amp']} needs a CUDA device; this run is on {dev}")
    return dev


class Networks:
    """The generator, its moving average (``--ema``), the discriminator (stage 2 only), and the
    training views of G and D (DDP wrappers with several processes, else the networks)."""

    def __init__(self, G, D, ema, gen_config):
        self.G, self.D, self.ema, self.gen_config = G, D, ema, gen_config
        self.G_train, self.D_train = G, D

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
    from ..models import build_discriminator, build_generator, generator_config

    # The generator config is what load_generator needs to rebuild it from a checkpoint.
    gen_config = generator_config(cfg["model"], cfg["scale"], **cfg["generator"])
    G = build_generator(cfg["model"], **gen_config).to(device)
    D = None
    if with_discriminator:
        D = build_discriminator(cfg["model"], **{"input_size": cfg["crop_size"], **cfg["discriminator"]}).to(device)
    if cfg["channels_last"]:
        for m in (G, D):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg["ema"] > 0 else None
    return Networks(G, D, ema, gen_config)


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
            raise SystemExit(f"error: {e}") from None
    for w in caught:
        log(f"warning: {w.message}")
    if len(ds) == 0:
        raise SystemExit("error: no training images left after skipping")
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
    from ..models import VGG19_URL
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
    from ..models import VGGFeatureExtractor
    try:
        extractor = VGGFeatureExtractor(layer=cfg["perceptual_layer"], weights=path, pretrained=True)
    except Exception as e:  # noqa: BLE001 - turned into one clear message
        raise SystemExit(f"error: {path} is not torchvision's VGG19 ImageNet checkpoint (vgg19-dcbb9e9d.pth), "
                         f"which stage 2 reads (--vgg-weights PATH or torch's hub cache): {e}") from None
    return L.PerceptualLoss(extractor, cfg["perceptual_criterion"]).to(device)
