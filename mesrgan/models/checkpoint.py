"""Generator checkpoints: ours, bare state dicts, and the public ESRGAN / Real-ESRGAN RRDBNet files.

Our format (``generator_checkpoint``)::

    {"format": "mesrgan-generator-v1", "model": <preset name>, "config": <build_generator kwargs>,
     "generator": <state_dict>}

Training checkpoints carry the same keys plus their own (optimiser state, "generator_ema", ...).
"""
import os
import re
import warnings
from collections.abc import Mapping

import torch

from .presets import GENERATORS, _lookup, build_generator, generator_config

FORMAT = "mesrgan-generator-v1"


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint path that does not exist (a FileNotFoundError that is also a ValueError)."""


def generator_checkpoint(model_name, generator, config):
    """The dict to ``torch.save`` for a generator; ``load_generator`` rebuilds it.

    Args:
        model_name: preset name given to ``build_generator`` (e.g. ``"mesrgan"``).
        generator: the ``nn.Module`` it built.
        config: the keyword arguments it was built with, ``scale`` included (``scale`` is taken
            from ``generator.scale`` when missing).

    Returns:
        ``{"format": "mesrgan-generator-v1", "model": model_name, "config": dict(config),
        "generator": generator.state_dict()}``.
    """
    if model_name not in GENERATORS:
        raise ValueError(f"model_name must be one of {sorted(GENERATORS)}, got {model_name!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict of build_generator keyword arguments, got {type(config).__name__}")
    config = dict(config)
    if "scale" not in config and hasattr(generator, "scale"):
        config["scale"] = generator.scale
    return {"format": FORMAT, "model": model_name, "config": config, "generator": generator.state_dict()}


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message is one line naming the file and what it holds."""


def _describe(obj):
    """A few words on what a loaded object is, for error messages."""
    if obj is None:
        return "None"
    if isinstance(obj, torch.Tensor):
        return f"a bare tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return "an empty dict" if not obj else f"a dict with keys such as {list(obj)[:3]}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item{'s' if len(obj) != 1 else ''}"
    if isinstance(obj, (str, bytes)):
        return f"a {type(obj).__name__} ({obj[:20]!r}{'...' if len(obj) > 20 else ''})"
    return f"a {type(obj).__name__}"


def _load_refusal(exc):
    """One line on why ``torch.load(weights_only=True)`` refused a file (its own message runs to a paragraph)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    elif isinstance(exc, EOFError):
        text = "the file is empty or cut short"
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def read_checkpoint(path, *, require=()) -> Mapping:
    """Load a checkpoint file that must hold a dict, refusing anything else in one line.

    Reads with ``torch.load(weights_only=True)`` (no code in the file can run) onto the CPU.

    Args:
        path: the file.
        require: keys the dict must have (e.g. a training checkpoint's ``"optimizer_g"``).

    Returns:
        the loaded dict.

    Raises:
        CheckpointNotFoundError for a missing file; CheckpointError (a ValueError) naming the file
        and what it holds when it is not a torch file of tensors, not a dict, or lacks a required key.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a checkpoint file" if os.path.isdir(path) else "does not exist"
        raise CheckpointNotFoundError(2, f"checkpoint {path!r} {what}", path)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4" and the like: the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds for files that are not its own
        raise CheckpointError(f"cannot load {path!r}: not a torch checkpoint of tensors "
                              f"({_load_refusal(exc)})") from None
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"cannot load {path!r}: it holds {_describe(obj)}, not a checkpoint (a dict of tensors)")
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(f"cannot load {path!r}: it holds {_describe(obj)}, without the key(s) {missing} "
                              "this needs")
    return obj


def _read(source):
    if isinstance(source, Mapping):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_checkpoint(source)
    raise TypeError(f"source must be a path or a dict, got {type(source).__name__}")


# Renames from the original ESRGAN repository's RRDBNet to the BasicSR / Real-ESRGAN names.
_ESRGAN_REPO_RENAMES = ((r"^RRDB_trunk\.", "body."), (r"\.RDB(\d)\.", r".rdb\1."), (r"^trunk_conv\.", "conv_body."),
                        (r"^upconv(\d)\.", r"conv_up\1."), (r"^HRconv\.", "conv_hr."))


def _normalise_keys(state):
    state = {k: v for k, v in state.items()}
    # Wrappers' prefixes: DataParallel / DDP ("module.") and torch.compile ("_orig_mod.").
    for prefix in ("module.", "_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("RRDB_trunk.") for k in state):
        for pattern, repl in _ESRGAN_REPO_RENAMES:
            state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    return state


def _indices(state, pattern):
    return sorted({int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m})


def _bottleneck_config(state, prefix, features, growth):
    """expansion and hidden_width from the widths of the first and last bottleneck of a dense block."""
    h1 = state[f"{prefix}conv1.expand.weight"].shape[0]
    h5_key = f"{prefix}conv5.expand.weight"
    h5 = state[h5_key].shape[0] if h5_key in state else None
    if h1 % features == 0 and h5 in (None, h1 // features * (features + 4 * growth)):
        return {"expansion": h1 // features, "hidden_width": "input"}
    if h1 % growth == 0:
        return {"expansion": h1 // growth, "hidden_width": "output"}
    raise ValueError(f"cannot infer the bottleneck expansion: {prefix}conv1.expand has {h1} channels for "
                     f"{features} inputs and {growth} outputs")


def infer_generator(state):
    """Which preset and config a bare generator state dict belongs to, or ``(None, {})``.

    Recognises RRDBNet (ours and the public ESRGAN / Real-ESRGAN layout), MESRGAN, SRResNet and the
    "-paper" generators, from key names and weight shapes.
    """
    if "conv_first.weight" in state:
        w = state["conv_first.weight"]
        features, in_channels = int(w.shape[0]), int(w.shape[1])
        out_channels = int(state["conv_last.weight"].shape[0]) if "conv_last.weight" in state else in_channels
        blocks = _indices(state, r"^body\.(\d+)\.rdb\d+\.")
        dense = _indices(state, r"^body\.0\.rdb(\d+)\.")
        config = {"in_channels": in_channels, "out_channels": out_channels, "features": features,
                  "num_blocks": len(blocks) or 1, "dense_blocks": len(dense) or 1,
                  "scale": 4 if "conv_up2.weight" in state else 2}
        # Real-ESRGAN's x2 / x1 models: a x4 body behind a pixel unshuffle by 2 / 4 of the input
        unshuffled = {4 * out_channels: 2, 16 * out_channels: 1}.get(in_channels)
        if unshuffled is not None and "conv_up2.weight" in state:
            if "body.0.rdb1.conv1.weight" not in state:
                raise ValueError(f"this state dict pixel-unshuffles its {out_channels}-channel input into "
                                 f"{in_channels} channels, a layout only the esrgan (RRDBNet) generator has")
            config.update(in_channels=out_channels, scale=unshuffled, unshuffle_input=True)
        if "body.0.rdb1.conv1.weight" in state:
            config["growth"] = int(state["body.0.rdb1.conv1.weight"].shape[0])
            return "esrgan", config
        if "body.0.rdb1.conv1.expand.weight" in state:
            config["growth"] = int(state["body.0.rdb1.conv1.project.weight"].shape[0])
            config.update(_bottleneck_config(state, "body.0.rdb1.", features, config["growth"]))
            return "mesrgan", config
        return None, {}
    if "conv_head.weight" in state:
        w = state["conv_head.weight"]
        features = int(w.shape[0])
        ups = [k for k in state if re.match(r"^upsample\.\d+\.weight$", k) and state[k].dim() == 4]
        config = {"in_channels": int(w.shape[1]), "features": features,
                  "num_blocks": len(_indices(state, r"^body\.(\d+)\.")) or 1, "scale": 2 ** len(ups)}
        if "conv_tail.weight" in state:
            config["out_channels"] = int(state["conv_tail.weight"].shape[0])
        if "body.0.bn1.weight" in state:
            return "srgan", config
        if "body.0.conv1.weight" in state:
            config["growth"] = int(state["body.0.conv1.weight"].shape[0])
            return "esrgan-paper", config
        if "body.0.conv1.expand.weight" in state:
            config["growth"] = int(state["body.0.conv1.project.weight"].shape[0])
            config.update(_bottleneck_config(state, "body.0.", features, config["growth"]))
            return "mesrgan-paper", config
    return None, {}


def _state_mismatch(model, state):
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{', …' if len(items) > 5 else ''}")
    return "; ".join(parts)


def load_generator(source, model=None, device="cpu", **overrides):
    """Rebuild a generator from a checkpoint, ready for inference.

    Args:
        source: a path (read with ``torch.load(weights_only=True)``) or an already loaded dict:
            our checkpoint (``generator_checkpoint`` keys; ``"generator_ema"`` is preferred when
            present), a bare generator state dict, or a public ESRGAN / Real-ESRGAN RRDBNet file
            (``conv_first``, ``body.{i}.rdb{j}.conv{k}``, …, or the ESRGAN repo's ``RRDB_trunk`` names,
            possibly wrapped in ``"params_ema"`` / ``"params"``).
        model: preset name; needed only for a bare state dict whose layout is not recognised. If
            given, it must agree with the checkpoint.
        device: where to put the generator.
        **overrides: build_generator keyword arguments that replace the stored / inferred ones
            (e.g. ``impl="torch"``).

    Returns:
        ``(generator, info)``: the ``nn.Module`` in eval mode mapping ``(N, 3, H, W)`` to
        ``(N, 3, scale·H, scale·W)``, and ``{"model": name, "config": build_generator kwargs incl.
        scale, "format": "mesrgan-generator-v1" | "state_dict" | "params_ema" | "params"}``.

    Raises:
        CheckpointNotFoundError (a FileNotFoundError and ValueError) for a missing file;
        ValueError for an unknown model or an unrecognised layout; RuntimeError for a state dict
        that does not fit the model it names.
    """
    obj = _read(source)
    if model is not None:
        try:
            model = _lookup("generator", GENERATORS, model)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model must be one of {sorted(GENERATORS)}, got {model!r}") from exc
    if "generator" in obj or "generator_ema" in obj or "format" in obj:
        if obj.get("format", FORMAT) != FORMAT:
            raise ValueError(f"unknown checkpoint format {obj['format']!r}; expected {FORMAT!r}")
        state = obj.get("generator_ema")
        if state is None:
            state = obj.get("generator")
        if not isinstance(state, Mapping):
            raise ValueError("checkpoint has no generator state dict under 'generator' or 'generator_ema'")
        fmt, stored_model, config = FORMAT, obj.get("model"), dict(obj.get("config") or {})
        if stored_model is not None and stored_model not in GENERATORS:
            raise ValueError(f"checkpoint names model {stored_model!r}, which is not one of {sorted(GENERATORS)}")
    else:
        fmt = "state_dict"
        state = obj
        for wrapper in ("params_ema", "params"):
            if isinstance(obj.get(wrapper), Mapping):
                fmt, state = wrapper, obj[wrapper]
                break
        stored_model, config = None, {}
    if not state or not all(isinstance(k, str) for k in state):
        raise ValueError(f"expected a generator state dict (parameter name -> tensor), found {_describe(state)}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("expected a generator state dict (parameter name -> tensor), found non-tensor values "
                         f"under keys such as {[k for k, v in state.items() if not isinstance(v, torch.Tensor)][:3]}")
    state = _normalise_keys(state)
    inferred_model, inferred = infer_generator(state)
    if model is not None:
        for other in (stored_model, inferred_model):
            if other is not None and other != model:
                raise ValueError(f"model={model!r} was asked for, but the checkpoint holds a {other!r} generator")
    name = model or stored_model or inferred_model
    if name is None:
        raise ValueError(f"cannot tell which generator this state dict belongs to (keys such as "
                         f"{list(state)[:3]}); pass model=, one of {sorted(GENERATORS)}")
    if not config and name == inferred_model:
        config = inferred
    config = generator_config(name, **{**config, **overrides})
    generator = build_generator(name, **config)
    problems = _state_mismatch(generator, state)
    if problems:
        raise RuntimeError(f"the state dict does not fit generator {name!r} built with {config}: {problems}")
    generator.load_state_dict(state)
    return generator.to(device).eval(), {"model": name, "config": config, "format": fmt}
