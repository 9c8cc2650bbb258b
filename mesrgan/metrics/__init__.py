"""Image quality with the field's conventions: PSNR, SSIM and RMSE against a reference
(:mod:`.fidelity`), NIQE without one (:mod:`.niqe`, MATLAB's), and the perceptual index where it can
be computed (:mod:`.pi`)."""
from .fidelity import SSIM_WINDOWS, psnr, rgb_to_y, rmse, ssim
from .niqe import NIQE_BLOCK, NIQE_CONVERSIONS, load_pristine_model, niqe, niqe_features
from .pi import ma_scorer, perceptual_index

__all__ = ["psnr", "ssim", "rmse", "niqe", "rgb_to_y", "SSIM_WINDOWS", "NIQE_BLOCK", "NIQE_CONVERSIONS",
           "niqe_features", "load_pristine_model", "ma_scorer", "perceptual_index"]
