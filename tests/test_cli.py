"""mesrgan.cli: what the programs share (device, precision, checkpoint flags)."""
import os

import pytest
import torch

from mesrgan.cli import UsageError, resolve_device, resolve_dtype, weights_file


def test_a_run_folder_stands_for_its_best_generator(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UsageError, match="is a folder without a run's checkpoint"):
        weights_file(str(run))
    for name in ("last.pt", "stage1_best.pt", "best.pt"):  # stage 1 done, no VGG weights: no best.pt yet
        (run / name).write_bytes(b"x")
        assert weights_file(str(run)) == os.path.join(str(run), name)
    assert weights_file(str(run / "last.pt")) == str(run / "last.pt")  # a file is itself


def test_device_and_precision_flags():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device bogus: "):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(UsageError, match="--dtype: float16 inference is CUDA-only; on cpu use --dtype bfloat16"):
        resolve_dtype("float16", cpu)


def test_flag_names_match_across_programs():
    from mesrgan import evaluate
    from mesrgan.training.config import build_parser as train_parser
    assert evaluate.build_parser().parse_args(["--weights", "w", "--data-lr", "d"]).lr_data == "d"  # as train's
    assert evaluate.build_parser().parse_args(["--weights", "w", "--lr-data", "d"]).lr_data == "d"  # the old name
    assert train_parser().parse_args(["-o", "x"]).out == "x" and train_parser().parse_args(["--output", "y"]).out == "y"
    from benchmarks import quality
    args = quality.build_parser().parse_args(["--psnr-iters", "7", "--batch-size", "2", "--crop-size", "32"])
    assert (args.iters, args.batch, args.crop) == (7, 2, 32)
    old = quality.build_parser().parse_args(["--iters", "7", "--batch", "2", "--crop", "32"])  # the old names
    assert (old.iters, old.batch, old.crop) == (7, 2, 32)
