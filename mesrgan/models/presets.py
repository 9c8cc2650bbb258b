"""Networks by name. Constructor keyword arguments are the config keys; presets only set defaults."""
import inspect

from .discriminators import SRGANDiscriminator, VGGStyleDiscriminator
from .rrdbnet import MESRGAN, PaperESRGAN, PaperMESRGAN, RRDBNet
from .srresnet import SRResNet

# name -> (class, preset defaults)
GENERATORS = {
    "srgan": (SRResNet, {}),
    # The MESRGAN paper ran ESRGAN and MESRGAN with one dense block per RRDB (its section IV-C);
    # dense_blocks=3 gives the original ESRGAN.
    "esrgan": (RRDBNet, {"dense_blocks": 1}),
    "mesrgan": (MESRGAN, {"dense_blocks": 1}),
    "esrgan-paper": (PaperESRGAN, {}),
    "mesrgan-paper": (PaperMESRGAN, {}),
}

DISCRIMINATORS = {
    "srgan": (SRGANDiscriminator, {"input_size": 96}),
    "esrgan": (VGGStyleDiscriminator, {"input_size": 128}),
}
# The generator each model trains against: ESRGAN's discriminator for every (M)ESRGAN variant.
_DISCRIMINATOR_OF = {"srgan": "srgan", "esrgan": "esrgan", "mesrgan": "esrgan", "esrgan-paper": "esrgan",
                     "mesrgan-paper": "esrgan"}


def _options(cls):
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _lookup(kind, table, name):
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, one of {sorted(table)}, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return key


def _build(kind, name, cls, defaults, overrides):
    options = _options(cls)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        hint = ""
        if "impl" in unknown:
            hint = " ('impl' belongs to the models with depthwise convolutions: mesrgan, mesrgan-paper)"
        raise ValueError(f"unknown option(s) {unknown} for {kind} {name!r} ({cls.__name__}); "
                         f"options: {', '.join(options)}{hint}")
    return cls(**{**defaults, **overrides})


def generator_config(name, scale=4, **overrides):
    """The full keyword arguments ``build_generator(name, scale, **overrides)`` passes to the class.

    Returns a new dict: the preset defaults, then ``scale``, then ``overrides``.
    """
    key = _lookup("generator", GENERATORS, name)
    cls, defaults = GENERATORS[key]
    params = inspect.signature(cls.__init__).parameters
    config = {k: p.default for k, p in params.items() if k != "self"}
    config.update(defaults)
    config["scale"] = scale
    config.update(overrides)
    return config


def build_generator(name, scale=4, **overrides):
    """Build a generator by name.

    Args:
        name: ``"srgan"`` (SRResNet), ``"esrgan"`` (RRDBNet, 1 dense block per RRDB as in the paper),
            ``"mesrgan"`` (RRDBNet with bottleneck blocks), ``"esrgan-paper"``, ``"mesrgan-paper"``
            (the generators the MESRGAN authors ran).
        scale: 2 or 4.
        **overrides: constructor keyword arguments (e.g. ``dense_blocks=3``, ``num_blocks``,
            ``hidden_width="output"``, ``impl="torch"``).

    Returns:
        an ``nn.Module`` mapping ``(N, 3, H, W)`` to ``(N, 3, scale·H, scale·W)``.
    """
    key = _lookup("generator", GENERATORS, name)
    cls, defaults = GENERATORS[key]
    return _build("generator", key, cls, defaults, {"scale": scale, **overrides})


def build_discriminator(name, **overrides):
    """Build a discriminator by name.

    Args:
        name: ``"srgan"`` (SRGAN's, 96×96 crops by default) or ``"esrgan"`` (ESRGAN's VGG-style,
            128×128 by default); a generator name gives the discriminator that model trains
            against (``"mesrgan"``, ``"esrgan-paper"``, ``"mesrgan-paper"`` -> ``"esrgan"``).
        **overrides: constructor keyword arguments, e.g. ``input_size=96``.

    Returns:
        an ``nn.Module`` mapping ``(N, 3, S, S)`` crops to ``(N, 1)`` logits.
    """
    key = _lookup("discriminator", _DISCRIMINATOR_OF, name)
    key = _DISCRIMINATOR_OF[key]
    cls, defaults = DISCRIMINATORS[key]
    return _build("discriminator", key, cls, defaults, overrides)
