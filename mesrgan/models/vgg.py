"""VGG19 features for the perceptual loss, without torchvision.

The layers are numbered as torchvision's ``vgg19().features`` so that its published ImageNet
checkpoint loads directly (keys ``features.{index}.weight`` / ``.bias``).
"""
import os

import torch
from torch import nn

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"

# torchvision's configuration "E": channel counts, "M" = 2×2 max pool.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names():
    """Names of vgg19.features[i] in order: conv1_1, relu1_1, …, pool5."""
    names, stage, idx = [], 1, 1
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{stage}")
            stage, idx = stage + 1, 1
        else:
            names += [f"conv{stage}_{idx}", f"relu{stage}_{idx}"]
            idx += 1
    return names


VGG19_LAYERS = tuple(_layer_names())


def _vgg19_features(last_index):
    layers, c_in = [], 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers[:last_index + 1])


def _read_weights(weights):
    """The torchvision vgg19 state dict, from a local file or the torch hub cache / download."""
    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGGFeatureExtractor: weights file {path!r} does not exist; pass the path "
                                    f"of torchvision's vgg19 ImageNet checkpoint ({VGG19_URL})")
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", progress=True, check_hash=True)
    except Exception as exc:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"VGGFeatureExtractor could not get the VGG19 ImageNet weights ({type(exc).__name__}: {exc}). "
            f"Either (1) go online once so torch.hub downloads {VGG19_URL} into {cache}, or put that file "
            f"there yourself; or (2) pass weights=<path to vgg19-dcbb9e9d.pth>. "
            f"pretrained=False gives random weights (tests only).") from exc


class VGGFeatureExtractor(nn.Module):
    """Frozen VGG19 features of one layer, for perceptual losses.

    ``(N, 3, H, W)`` RGB in [0, 1] ``-> (N, C_layer, H / 2^p, W / 2^p)`` where p is the number of
    pools before the layer (``conv5_4``/``relu5_4``: C = 512, p = 4). ImageNet normalisation is
    applied inside. Parameters never require grad and the module stays in eval mode, but gradients
    flow to the input.

    Args:
        layer: one of ``VGG19_LAYERS``: ``"conv5_4"`` (ESRGAN: before the activation) or
            ``"relu5_4"`` (SRGAN: after it), or any other ``convX_Y`` / ``reluX_Y`` / ``poolX``.
            Only the layers up to it are kept.
        weights: path of torchvision's ``vgg19`` ImageNet checkpoint (``vgg19-dcbb9e9d.pth``), or
            None to load it through ``torch.hub`` (the torch cache, downloading when online).
        pretrained: False gives randomly initialised weights and reads nothing (tests, offline).
    """

    def __init__(self, layer="conv5_4", weights=None, pretrained=True):
        super().__init__()
        if layer not in VGG19_LAYERS:
            raise ValueError(f"layer must be one of VGG19's layers {VGG19_LAYERS}, got {layer!r}")
        self.layer = layer
        last = VGG19_LAYERS.index(layer)
        self.features = _vgg19_features(last)
        if pretrained:
            state = _read_weights(weights)
            if not isinstance(state, dict):
                raise ValueError(f"VGGFeatureExtractor: the weights must be a state dict, got {type(state).__name__}")
            wanted = self.state_dict().keys()
            missing = [k for k in wanted if k not in state]
            if missing:
                raise ValueError(f"VGGFeatureExtractor: the weights lack {missing[:4]}{'…' if len(missing) > 4 else ''}"
                                 f"; expected torchvision's vgg19 layout (features.<index>.weight/bias)")
            self.load_state_dict({k: state[k] for k in wanted})
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        """Stays in eval mode whatever ``mode`` says: the extractor is a fixed measuring instrument."""
        return super().train(False)

    def forward(self, x):
        return self.features((x - self.mean) / self.std)
