"""The fused bottleneck block written in Triton: ``torch.ops.mesrgan.bottleneck_block_triton``.

Same arguments and result as :func:`mesrgan.ops.bottleneck_block` (the compiled CPU op), computed by
the Triton kernels of :mod:`mesrgan.ops._triton_kernels` for CUDA tensors, or for CPU tensors when
Triton's interpreter is on (``TRITON_INTERPRET=1`` set before the first call; that is how the tests
prove the GPU code without a GPU). **Not yet run on a GPU**: it has passed the interpreter tests
only, and nothing chooses it by itself (``BottleneckResidualBlock(impl="triton")`` asks for it).

Dtypes: float32, float16, bfloat16 (all arguments alike; inside ``torch.autocast`` they are cast to
its dtype), accumulating in float32. float32 products use TF32 on the GPU when
``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default: True): the op stands in for three
convolutions, which follow that flag, so it rounds as the unfused convolutions would
(``torch.backends.cuda.matmul.allow_tf32`` governs matmuls, which this op is not).

The ops are ``torch.library.custom_op`` s (fake kernels, autograd through a backward op of its own,
so ``torch.compile`` and ``opcheck`` see both). No double backward. The forward keeps no hidden
tensor at full size; the backward recomputes it tile by tile.
"""
import math
from typing import List, Optional

import torch

from .bottleneck import PARAM_NAMES, _check_devices, _check_slope
from .layout import op_output_format
from .depthwise import autocast_dtype

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tile shapes: the grid of BH x BW pixels around a tile (powers of two), the hidden chunk, the
# largest channel blocks. Under the interpreter, small grids keep tests fast and put small images
# over several tiles. The CUDA ones are untuned first choices (no GPU has run them yet), picked by
# compiling for sm_90 on the CPU (benchmarks/triton_compile_check.py, C_in 192 -> C_out 64): 8 x 16
# grids, 16 hidden channels a chunk and 8 warps compile without register spills in every dtype,
# with 16-126 KiB of shared memory (fits an A100's 163 KiB and an H100's 227). 256-pixel grids
# (8 x 32 forward, 16 x 16 backward; less halo recomputed) spilled 360-1656 bytes at 255 registers,
# and the float32 backward on a 16 x 16 grid needs 246-268 KiB of shared memory, more than any card
# has: float32 keeps its own entry so that the 16-bit ones can grow without it.
_CUDA = {"fwd": (8, 16), "bwd": (8, 16), "block_k": 16, "max_block_ci": 32, "max_block_co": 64, "num_warps": 8}
TILES = {
    "interpret": {"fwd": (8, 16), "bwd": (8, 16), "block_k": 32, "max_block_ci": 64, "max_block_co": 256,
                  "num_warps": 4},
    "cuda": dict(_CUDA),
    "cuda-float32": dict(_CUDA),
}


def tile_config(mode, dtype):
    """The entry of TILES the kernels launch with for ``mode`` ("interpret" or "cuda") and ``dtype``."""
    if mode == "cuda" and dtype == torch.float32:
        return TILES["cuda-float32"]
    return TILES[mode]


_KERNELS = None


def kernels():
    """The kernels module, imported on first use (see its docstring for why); a clear error without Triton."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from . import _triton_kernels
        except ImportError as e:
            raise RuntimeError("impl='triton' needs the triton package (pip install triton), which failed to "
                               f"import: {e}") from e
        _KERNELS = _triton_kernels
    return _KERNELS


def triton_available():
    """Whether the triton package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted():
    """Whether the kernels run in Triton's interpreter (decided when they were first imported)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(kernels().bottleneck_fwd_kernel, InterpretedFunction)


def _mode(x):
    kernels()
    if interpreted():
        import triton
        if not triton.knobs.runtime.interpret:  # the interpreter re-reads it on every run
            raise RuntimeError("the Triton kernels were imported under TRITON_INTERPRET=1, which has since been "
                               "unset; keep it set for as long as they run")
        return "interpret"
    if x.device.type != "cuda":
        raise RuntimeError("impl='triton' needs a CUDA GPU, or Triton's interpreter for CPU tensors "
                           "(TRITON_INTERPRET=1 in the environment before the first call); "
                           f"got a tensor on {x.device}")
    return "cuda"


def _pow2_block(c, largest):
    """A channel block: a power of two >= 16 (tl.dot's least size), at most ``largest``, masked past c."""
    return max(16, min(largest, triton_next_pow2(c)))


def triton_next_pow2(c):
    return 1 << max(0, int(c) - 1).bit_length()


def _dot_precision(dtype, mode):
    """tl.dot's input_precision: "ieee" (true float32) for float32 unless TF32 is allowed on the GPU;
    "tf32", Triton's default, for 16-bit operands, where it changes nothing."""
    exact = dtype == torch.float32 and (mode != "cuda" or not torch.backends.cudnn.allow_tf32)
    return "ieee" if exact else "tf32"


def _nhwc(t):
    """(N, C, H, W) -> a contiguous (N, H, W, C) tensor (no copy for channels_last input)."""
    return t.permute(0, 2, 3, 1).contiguous()


def _common(mode, dtype, c_in):
    """Launch settings shared by forward and backward."""
    cfg = tile_config(mode, dtype)
    return dict(UPCAST=mode == "interpret", IN_PREC=_dot_precision(dtype, mode), BLOCK_K=cfg["block_k"],
                BLOCK_CI=_pow2_block(c_in, cfg["max_block_ci"]), num_warps=cfg["num_warps"])


def forward_meta(mode, dtype, c_in, c_out, has_biases=(True, True, True), skip=False):
    """The forward kernel's constexpr arguments (and num_warps) for these sizes; also used by
    benchmarks/triton_compile_check.py to compile exactly what a launch would."""
    cfg = tile_config(mode, dtype)
    bh, bw = cfg["fwd"]
    return dict(HAS_B1=has_biases[0], HAS_BD=has_biases[1], HAS_B2=has_biases[2], SKIP=bool(skip), BH=bh, BW=bw,
                BLOCK_CO=_pow2_block(c_out, cfg["max_block_co"]), **_common(mode, dtype, c_in))


def backward_meta(mode, dtype, c_in, c_out, mask=(True,) * 7, has_biases=(True, True)):
    """The backward kernel's constexpr arguments (and num_warps); mask as output_mask, biases applied."""
    bh, bw = tile_config(mode, dtype)["bwd"]
    return dict(HAS_B1=has_biases[0], HAS_BD=has_biases[1], NEED_GX=mask[0], NEED_W1=mask[1], NEED_B1=mask[2],
                NEED_WD=mask[3], NEED_BD=mask[4], NEED_W2=mask[5], NEED_GZ1=any(mask[:3]), NEED_GZ2=any(mask[:5]),
                BH=bh, BW=bw, BLOCK_CO=_pow2_block(c_out, 1 << 30),  # all of C_out in one block
                **_common(mode, dtype, c_in))


# --- the forward ---------------------------------------------------------------------------------

def _check_args(x, ew, eb, dw, db, pw, pb, skip):
    torch._check(x.dim() == 4, lambda: f"bottleneck_block_triton: x must be 4-D (N, C_in, H, W), got {tuple(x.shape)}")
    c_in, hidden, c_out = x.shape[1], ew.shape[0], pw.shape[0]
    expected = {"expand_weight": (hidden, c_in, 1, 1), "expand_bias": (hidden,), "dw_weight": (hidden, 1, 3, 3),
                "dw_bias": (hidden,), "project_weight": (c_out, hidden, 1, 1), "project_bias": (c_out,)}
    for name, t in zip(PARAM_NAMES, (ew, eb, dw, db, pw, pb)):
        torch._check(t is None or tuple(t.shape) == expected[name],
                     lambda: f"bottleneck_block_triton: {name} must have shape {expected[name]}, got {tuple(t.shape)}")
        torch._check(t is None or t.dtype == x.dtype,
                     lambda: f"bottleneck_block_triton: {name} must be {x.dtype} like x, got {t.dtype}")
    torch._check(x.dtype in DTYPES, lambda: f"bottleneck_block_triton: dtype must be one of {DTYPES}, got {x.dtype}")
    torch._check(not skip or c_in == c_out, lambda: f"bottleneck_block_triton: skip needs C_in == C_out, got "
                                                    f"{c_in} and {c_out}")


@torch.library.custom_op("mesrgan::bottleneck_block_triton", mutates_args=(), device_types=("cpu", "cuda"))
def _forward_op(x: torch.Tensor, expand_weight: torch.Tensor, expand_bias: Optional[torch.Tensor],
                dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor], project_weight: torch.Tensor,
                project_bias: Optional[torch.Tensor], skip: bool, negative_slope: float) -> torch.Tensor:
    ew, eb, dw, db, pw, pb = expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias
    _check_args(x, ew, eb, dw, db, pw, pb, skip)
    mode = _mode(x)
    n, c_in, h, w = x.shape
    hidden, c_out = ew.shape[0], pw.shape[0]
    y = x.new_empty((n, h, w, c_out))
    if y.numel():
        _launch_forward(_nhwc(x), [t if t is None else t.contiguous() for t in (ew, eb, dw, db, pw, pb)], y,
                        hidden, skip, negative_slope, mode)
    return y.permute(0, 3, 1, 2).contiguous(memory_format=op_output_format(x))


def _launch_forward(xl, params, y, hidden, skip, slope, mode):
    ew, eb, dw, db, pw, pb = params
    n, h, w, c_in = xl.shape
    c_out = y.shape[3]
    meta = forward_meta(mode, xl.dtype, c_in, c_out, (eb is not None, db is not None, pb is not None), skip)
    bh, bw = meta["BH"], meta["BW"]
    tiles_w = -(-w // (bw - 2))
    grid = (-(-h // (bh - 2)) * tiles_w, n, -(-c_out // meta["BLOCK_CO"]))
    scratch = torch.empty(math.prod(grid) * bh * bw * meta["BLOCK_K"], dtype=torch.float32, device=xl.device)
    kernels().bottleneck_fwd_kernel[grid](
        xl, ew, eb if eb is not None else ew, dw, db if db is not None else dw, pw, pb if pb is not None else pw,
        y, scratch, h, w, c_in, hidden, c_out, tiles_w, float(slope), **meta)


@_forward_op.register_fake
def _fake_forward(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
                  negative_slope):
    _check_args(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip)
    n, _, h, w = x.shape
    return x.new_empty((n, project_weight.shape[0], h, w)).contiguous(memory_format=op_output_format(x))


# --- the backward --------------------------------------------------------------------------------

@torch.library.custom_op("mesrgan::bottleneck_block_triton_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _backward_op(grad_out: torch.Tensor, x: torch.Tensor, expand_weight: torch.Tensor,
                 expand_bias: Optional[torch.Tensor], dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
                 project_weight: torch.Tensor, skip: bool, negative_slope: float,
                 output_mask: List[bool]) -> List[torch.Tensor]:
    """The seven gradients (x, expand w / b, dw w / b, project w / b); an empty tensor for each one
    output_mask leaves out (and for a bias that is None)."""
    ew, eb, dw, db, pw = expand_weight, expand_bias, dw_weight, dw_bias, project_weight
    _check_args(x, ew, eb, dw, db, pw, None, skip)
    mode = _mode(x)
    mask = _effective_mask(output_mask, eb, db)
    grads = _zero_grads(x, ew, dw, pw, mask)
    if x.numel() and any(mask[:6]):
        gy = _nhwc(grad_out.to(x.dtype))
        gx = gy.to(torch.float32, copy=True) if skip and mask[0] else None  # the kernel adds to it
        grads = _launch_backward(gy, _nhwc(x), (ew.contiguous(), eb, dw.contiguous(), db, pw.contiguous()),
                                 gx, mask, negative_slope, mode)
    elif mask[0] and skip:
        grads[0] = grad_out.to(x.dtype, copy=True)
    if mask[6]:
        grads[6] = grad_out.sum((0, 2, 3), dtype=torch.float32).to(x.dtype)
    if mask[0]:
        grads[0] = grads[0].contiguous(memory_format=op_output_format(x))
    return [g if m else x.new_empty((0,)) for g, m in zip(grads, mask)]


def _effective_mask(output_mask, eb, db):
    m = [bool(v) for v in output_mask]
    torch._check(len(m) == 7,
                 lambda: f"bottleneck_block_triton_backward: output_mask must have 7 entries, got {len(m)}")
    m[2] = m[2] and eb is not None
    m[4] = m[4] and db is not None
    return m


def _zero_grads(x, ew, dw, pw, mask):
    """The gradients of an empty input (N, H or W of 0): zeros of each shape."""
    c_out, hidden = pw.shape[0], ew.shape[0]
    shapes = (x.shape, ew.shape, (hidden,), dw.shape, (hidden,), pw.shape, (c_out,))
    return [x.new_zeros(s) if m else None for s, m in zip(shapes, mask)]


def _launch_backward(gy, xl, params, gx, mask, slope, mode):
    ew, eb, dw, db, pw = params
    n, h, w, c_in = xl.shape
    hidden, c_out = ew.shape[0], pw.shape[0]
    meta = backward_meta(mode, xl.dtype, c_in, c_out, mask, (eb is not None, db is not None))
    bh, bw = meta["BH"], meta["BW"]
    tiles_w = -(-w // (bw - 4))
    grid = (-(-h // (bh - 4)) * tiles_w, n)
    progs = math.prod(grid)
    f32 = dict(dtype=torch.float32, device=xl.device)
    if mask[0] and gx is None:
        gx = torch.zeros(n, h, w, c_in, **f32)
    # One row of partial sums per program, added up below (deterministic: no atomics).
    parts = [torch.empty(progs, *shape, **f32) if need else None for need, shape in
             zip(mask[1:6], ((hidden, c_in), (hidden,), (hidden, 9), (hidden,), (hidden, c_out)))]
    scratch = torch.empty(progs * 2 * bh * bw * meta["BLOCK_K"], **f32)
    dummy = scratch
    kernels().bottleneck_bwd_kernel[grid](
        xl, ew, eb if eb is not None else ew, dw, db if db is not None else dw, pw, gy,
        gx if gx is not None else dummy, *(p if p is not None else dummy for p in parts), scratch,
        h, w, c_in, hidden, c_out, tiles_w, float(slope), **meta)
    return _reduce(xl, gx, parts, hidden, c_in, c_out)


def _reduce(xl, gx, parts, hidden, c_in, c_out):
    """The gradients from the kernel's buffers, in the parameters' shapes and x's dtype."""
    shapes = ((hidden, c_in, 1, 1), (hidden,), (hidden, 1, 3, 3), (hidden,), None)
    grads = [None if gx is None else gx.to(xl.dtype).permute(0, 3, 1, 2)]
    for part, shape in zip(parts, shapes):
        if part is None:
            grads.append(None)
        elif shape is None:  # project weight: partial sums (hidden, C_out) -> (C_out, hidden, 1, 1)
            grads.append(part.sum(0).t().contiguous().view(c_out, hidden, 1, 1).to(xl.dtype))
        else:
            grads.append(part.sum(0).reshape(shape).to(xl.dtype))
    return grads + [None]


@_backward_op.register_fake
def _fake_backward_op(grad_out, x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, skip,
                      negative_slope, output_mask):
    mask = _effective_mask(output_mask, expand_bias, dw_bias)
    c_out, hidden = project_weight.shape[0], expand_weight.shape[0]
    shapes = (x.shape, expand_weight.shape, (hidden,), dw_weight.shape, (hidden,), project_weight.shape, (c_out,))
    grads = [x.new_empty(s) if m else x.new_empty((0,)) for s, m in zip(shapes, mask)]
    if mask[0]:
        grads[0] = grads[0].contiguous(memory_format=op_output_format(x))
    return grads


def _setup_context(ctx, inputs, output):
    x, ew, eb, dw, db, pw, pb, skip, slope = inputs
    ctx.save_for_backward(x, ew, eb, dw, db, pw)
    ctx.has_project_bias = pb is not None
    ctx.skip, ctx.slope = skip, slope


def _autograd_backward(ctx, grad_out):
    x, ew, eb, dw, db, pw = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2] and eb is not None, need[3], need[4] and db is not None, need[5],
            need[6] and ctx.has_project_bias]
    grads = _backward_op(grad_out, x, ew, eb, dw, db, pw, ctx.skip, ctx.slope, mask)
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None, None)


_forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --- the Python face -----------------------------------------------------------------------------

def bottleneck_block_triton(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, *,
                            skip=False, negative_slope=0.2):
    """The fused bottleneck block in Triton; arguments and result as :func:`mesrgan.ops.bottleneck_block`.

    x: ``(N, C_in, H, W)``, float32 / float16 / bfloat16 on CUDA (or on the CPU under
    ``TRITON_INTERPRET=1``); any memory format (copied to channels_last inside), the output in x's.
    Raises RuntimeError without Triton, or for a CPU tensor without the interpreter.
    """
    for name, t in (("x", x), ("expand_weight", expand_weight), ("dw_weight", dw_weight),
                    ("project_weight", project_weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    params = (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias)
    for name, t in zip(PARAM_NAMES, params):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    _check_devices(x, *params)
    if not isinstance(skip, bool):
        raise TypeError(f"skip must be a bool, got {type(skip).__name__}")
    _check_slope(negative_slope)
    kernels()  # the clear error without Triton, before any dispatch
    dtype = autocast_dtype(x)
    if dtype is not None:  # as the compiled op's autocast kernel: everything in the region's dtype
        x = x.to(dtype)
        params = tuple(None if t is None else t.to(dtype) for t in params)
    return _forward_op(x, *params, skip, float(negative_slope))
