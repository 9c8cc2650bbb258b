"""Triton kernels of the fused bottleneck block (forward and backward), NHWC inside.

Imported lazily by :mod:`mesrgan.ops.triton_bottleneck`, on the first call: ``triton.jit`` decides at
decoration time whether a kernel runs compiled (CUDA) or in Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors), so the environment variable must be set before this module is
imported.

Tiling. One program owns one (image, band of rows x span of columns) tile. It works on a *grid* of
``BH x BW`` pixels (powers of two) around its tile: the tile plus a halo of 1 pixel (forward) or 2
(backward). Each grid pixel is one row of the tensors below (``P = BH * BW`` rows); hidden channels
are processed in chunks of ``BLOCK_K`` columns, so only ``P x BLOCK_K`` of the hidden tensor exists
at a time. The 3x3 depthwise step needs each pixel's neighbours, which live in other rows (held by
other threads), so the chunk goes through a per-program scratch buffer in global memory:
store -> ``tl.debug_barrier()`` -> nine shifted, masked loads.

Notation (per pixel p, hidden channel k): z1 = x W1 + b1, a1 = leaky(z1) (zero outside the image:
the depthwise step's padding), z2 = dw(a1) + b2, a2 = leaky(z2), y = a2 W2 + b3 (+ x).

Every channel dimension is padded to a power of two >= 16 (``tl.dot`` needs it) and masked, so any
C_in, hidden and C_out work. Products accumulate in float32.
"""
import triton
import triton.language as tl


@triton.jit
def _leaky(z, slope):
    return tl.where(z > 0, z, z * slope)


@triton.jit
def _leaky_grad(z, slope):
    # F.leaky_relu's derivative as autograd takes it: 1 where z > 0, the slope elsewhere.
    return tl.where(z > 0, 1.0, slope)


@triton.jit
def _operand(a, like, UPCAST: tl.constexpr):
    """a (float32) as a dot operand beside ``like`` (in its dtype), or float32 under UPCAST."""
    if UPCAST:
        return a.to(tl.float32)
    else:
        return a.to(like.dtype)


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, IN_PREC: tl.constexpr):
    # UPCAST (the interpreter): its bfloat16 dot multiplies the raw bits, so both operands go to
    # float32 first. IN_PREC is "tf32" or "ieee"; it matters for float32 operands only.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=IN_PREC)


@triton.jit
def _expand(x_base, w1_ptr, b1_ptr, pix, in_img, k, k_ok, C_IN, HIDDEN,
            HAS_B1: tl.constexpr, P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_CI: tl.constexpr,
            UPCAST: tl.constexpr, IN_PREC: tl.constexpr):
    """z1 of one hidden chunk on the grid: ``[P, BLOCK_K]`` float32. w1 is (hidden, C_in) row-major."""
    acc = tl.zeros((P, BLOCK_K), tl.float32)
    for c0 in range(0, C_IN, BLOCK_CI):
        ci = c0 + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C_IN
        xb = tl.load(x_base + pix[:, None] * C_IN + ci[None, :], mask=in_img[:, None] & ci_ok[None, :], other=0.0)
        wb = tl.load(w1_ptr + k[None, :] * C_IN + ci[:, None], mask=ci_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _dot(xb, wb, acc, UPCAST, IN_PREC)
    if HAS_B1:
        acc += tl.load(b1_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _shifted(scr, gr, gc, dy, dx, BH: tl.constexpr, BW: tl.constexpr, BLOCK_K: tl.constexpr):
    """The scratch chunk read at grid pixel (gr + dy, gc + dx); zero past the grid's edge."""
    sr = gr + dy
    sc = gc + dx
    ok = (sr >= 0) & (sr < BH) & (sc >= 0) & (sc < BW)
    q = tl.where(ok, sr * BW + sc, 0)
    return tl.load(scr + q[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _depthwise(scr, wd_ptr, bd_ptr, gr, gc, k, k_ok, HAS_BD: tl.constexpr,
               BH: tl.constexpr, BW: tl.constexpr, BLOCK_K: tl.constexpr):
    """z2 of the chunk held in scratch: 3x3 depthwise (wd is (hidden, 9) row-major) plus bias."""
    acc = tl.zeros((BH * BW, BLOCK_K), tl.float32)
    for tap in tl.static_range(9):
        w = tl.load(wd_ptr + k * 9 + tap, mask=k_ok, other=0.0).to(tl.float32)
        acc += _shifted(scr, gr, gc, tap // 3 - 1, tap % 3 - 1, BH, BW, BLOCK_K) * w[None, :]
    if HAS_BD:
        acc += tl.load(bd_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _grid(pid_t, tiles_w, H, W, HALO: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """Grid pixels of tile pid_t: (row in grid, column in grid, flat pixel index, inside the image)."""
    r0 = (pid_t // tiles_w) * (BH - 2 * HALO) - HALO
    c0 = (pid_t % tiles_w) * (BW - 2 * HALO) - HALO
    p = tl.arange(0, BH * BW)
    gr = p // BW
    gc = p % BW
    r = r0 + gr
    c = c0 + gc
    in_img = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    return gr, gc, tl.where(in_img, r * W + c, 0), in_img


@triton.jit
def _interior(gr, gc, in_img, RING: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """Grid pixels at least RING pixels from the grid's edge, inside the image."""
    return in_img & (gr >= RING) & (gr < BH - RING) & (gc >= RING) & (gc < BW - RING)


@triton.jit
def bottleneck_fwd_kernel(x_ptr, w1_ptr, b1_ptr, wd_ptr, bd_ptr, w2_ptr, b2_ptr, y_ptr, scratch_ptr,
                          H, W, C_IN, HIDDEN, C_OUT, tiles_w, slope,
                          HAS_B1: tl.constexpr, HAS_BD: tl.constexpr, HAS_B2: tl.constexpr, SKIP: tl.constexpr,
                          BH: tl.constexpr, BW: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_CO: tl.constexpr, UPCAST: tl.constexpr, IN_PREC: tl.constexpr):
    """Grid (tiles, N, C_out blocks). Tile: (BH - 2) x (BW - 2) output pixels, halo 1."""
    P: tl.constexpr = BH * BW
    pid_t = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_co = tl.program_id(2)
    gr, gc, pix, in_img = _grid(pid_t, tiles_w, H, W, 1, BH, BW)
    x_base = x_ptr + n * H * W * C_IN
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C_OUT
    # Each program its own scratch: programs of one launch run concurrently on the GPU.
    prog = (n * tl.num_programs(0) + pid_t) * tl.num_programs(2) + pid_co
    scr = scratch_ptr + prog * (P * BLOCK_K)
    scr_rows = tl.arange(0, P)[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros((P, BLOCK_CO), tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < HIDDEN
        z1 = _expand(x_base, w1_ptr, b1_ptr, pix, in_img, k, k_ok, C_IN, HIDDEN, HAS_B1, P, BLOCK_K, BLOCK_CI,
                     UPCAST, IN_PREC)
        tl.store(scr + scr_rows, tl.where(in_img[:, None], _leaky(z1, slope), 0.0))
        tl.debug_barrier()  # the shifted loads read other threads' rows
        a2 = _leaky(_depthwise(scr, wd_ptr, bd_ptr, gr, gc, k, k_ok, HAS_BD, BH, BW, BLOCK_K), slope)
        tl.debug_barrier()  # the next chunk's store must not overwrite rows still being read
        w2 = tl.load(w2_ptr + co[None, :] * HIDDEN + k[:, None], mask=k_ok[:, None] & co_ok[None, :], other=0.0)
        acc = _dot(_operand(a2, w2, UPCAST), w2, acc, UPCAST, IN_PREC)
    out_ok = _interior(gr, gc, in_img, 1, BH, BW)[:, None] & co_ok[None, :]
    if HAS_B2:
        acc += tl.load(b2_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    if SKIP:  # C_IN == C_OUT
        acc += tl.load(x_base + pix[:, None] * C_IN + co[None, :], mask=out_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + n * H * W * C_OUT + pix[:, None] * C_OUT + co[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _grad_dw_weight(pwd, gz2, scr_a, gr, gc, k, k_ok, core, BH: tl.constexpr, BW: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """This program's part of the depthwise weight's gradient: sum over core pixels p of
    gz2(p) * a1(p + tap offset), written to pwd (hidden, 9)."""
    g = tl.where(core[:, None], gz2, 0.0)
    for tap in tl.static_range(9):
        a1 = _shifted(scr_a, gr, gc, tap // 3 - 1, tap % 3 - 1, BH, BW, BLOCK_K)
        tl.store(pwd + k * 9 + tap, tl.sum(g * a1, axis=0), mask=k_ok)


@triton.jit
def _grad_a1(scr_b, wd_ptr, gr, gc, k, k_ok, BH: tl.constexpr, BW: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient of a1: the transposed depthwise step, sum over taps of gz2(p - offset) * wd[tap]."""
    acc = tl.zeros((BH * BW, BLOCK_K), tl.float32)
    for tap in tl.static_range(9):
        w = tl.load(wd_ptr + k * 9 + tap, mask=k_ok, other=0.0).to(tl.float32)
        acc += _shifted(scr_b, gr, gc, 1 - tap // 3, 1 - tap % 3, BH, BW, BLOCK_K) * w[None, :]
    return acc


@triton.jit
def _grad_expand(x_base, w1_ptr, pw1, gx_base, gz1, pix, core, k, k_ok, C_IN, NEED_GX: tl.constexpr,
                 NEED_W1: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
                 IN_PREC: tl.constexpr):
    """From gz1 (zero off the core): this program's part of W1's gradient (hidden, C_in) into pw1,
    and gz1 W1 added to the float32 gradient of x on the core pixels (owned by this program alone)."""
    for c0 in range(0, C_IN, BLOCK_CI):
        ci = c0 + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C_IN
        if NEED_W1:
            xb = tl.load(x_base + pix[:, None] * C_IN + ci[None, :], mask=core[:, None] & ci_ok[None, :], other=0.0)
            part = _dot(tl.trans(xb), _operand(gz1, xb, UPCAST),
                        tl.zeros((BLOCK_CI, BLOCK_K), tl.float32), UPCAST, IN_PREC)
            tl.store(pw1 + k[None, :] * C_IN + ci[:, None], part, mask=ci_ok[:, None] & k_ok[None, :])
        if NEED_GX:
            wb = tl.load(w1_ptr + k[:, None] * C_IN + ci[None, :], mask=k_ok[:, None] & ci_ok[None, :], other=0.0)
            ptrs = gx_base + pix[:, None] * C_IN + ci[None, :]
            m = core[:, None] & ci_ok[None, :]
            old = tl.load(ptrs, mask=m, other=0.0)
            tl.store(ptrs, _dot(_operand(gz1, wb, UPCAST), wb, old, UPCAST, IN_PREC), mask=m)


@triton.jit
def bottleneck_bwd_kernel(x_ptr, w1_ptr, b1_ptr, wd_ptr, bd_ptr, w2_ptr, gy_ptr, gx_ptr,
                          pw1_ptr, pb1_ptr, pwd_ptr, pbd_ptr, pw2_ptr, scratch_ptr,
                          H, W, C_IN, HIDDEN, C_OUT, tiles_w, slope,
                          HAS_B1: tl.constexpr, HAS_BD: tl.constexpr, NEED_GX: tl.constexpr,
                          NEED_W1: tl.constexpr, NEED_B1: tl.constexpr, NEED_WD: tl.constexpr,
                          NEED_BD: tl.constexpr, NEED_W2: tl.constexpr, NEED_GZ1: tl.constexpr,
                          NEED_GZ2: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BLOCK_CI: tl.constexpr,
                          BLOCK_K: tl.constexpr,
                          BLOCK_CO: tl.constexpr, UPCAST: tl.constexpr, IN_PREC: tl.constexpr):
    """Grid (tiles, N). Tile ("core"): (BH - 4) x (BW - 4) pixels, halo 2: gz2 is needed one pixel
    around the core (the transposed depthwise step), and z2 there needs a1 one pixel further.

    Weight and bias gradients: each program writes its sums over its core pixels to its own row of
    the partial buffers (pw1 (hidden, C_in), pb1 (hidden), pwd (hidden, 9), pbd (hidden),
    pw2 (hidden, C_out)); NEED_GZ1 / NEED_GZ2: whether the gradients asked for need gz1 / gz2 (the
    gradients of z1 / z2). The caller adds the rows up (deterministic, no atomics). gx_ptr is a float32
    NHWC buffer the kernel adds gz1 W1 to (the caller fills it with grad_out or zeros).
    """
    P: tl.constexpr = BH * BW
    pid_t = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    prog = n * tl.num_programs(0) + pid_t
    gr, gc, pix, in_img = _grid(pid_t, tiles_w, H, W, 2, BH, BW)
    core = _interior(gr, gc, in_img, 2, BH, BW)
    ring1 = _interior(gr, gc, in_img, 1, BH, BW)
    x_base = x_ptr + n * H * W * C_IN
    scr_a = scratch_ptr + prog * (2 * P * BLOCK_K)  # a1 of the chunk
    scr_b = scr_a + P * BLOCK_K  # gz2 of the chunk
    scr_rows = tl.arange(0, P)[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    co = tl.arange(0, BLOCK_CO)  # all of C_out in one block
    co_ok = co < C_OUT
    gy = tl.load(gy_ptr + n * H * W * C_OUT + pix[:, None] * C_OUT + co[None, :],
                 mask=ring1[:, None] & co_ok[None, :], other=0.0)
    for k0 in range(0, HIDDEN, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < HIDDEN
        z1 = _expand(x_base, w1_ptr, b1_ptr, pix, in_img, k, k_ok, C_IN, HIDDEN, HAS_B1, P, BLOCK_K, BLOCK_CI,
                     UPCAST, IN_PREC)
        tl.store(scr_a + scr_rows, tl.where(in_img[:, None], _leaky(z1, slope), 0.0))
        tl.debug_barrier()
        z2 = _depthwise(scr_a, wd_ptr, bd_ptr, gr, gc, k, k_ok, HAS_BD, BH, BW, BLOCK_K)
        if NEED_W2:
            a2 = tl.where(core[:, None], _leaky(z2, slope), 0.0)
            part = _dot(tl.trans(_operand(a2, gy, UPCAST)), gy, tl.zeros((BLOCK_K, BLOCK_CO), tl.float32),
                        UPCAST, IN_PREC)
            tl.store(pw2_ptr + prog * HIDDEN * C_OUT + k[:, None] * C_OUT + co[None, :], part,
                     mask=k_ok[:, None] & co_ok[None, :])
        if NEED_GZ2:
            w2t = tl.load(w2_ptr + co[:, None] * HIDDEN + k[None, :], mask=co_ok[:, None] & k_ok[None, :], other=0.0)
            ga2 = _dot(gy, w2t, tl.zeros((P, BLOCK_K), tl.float32), UPCAST, IN_PREC)
            gz2 = tl.where(ring1[:, None], ga2 * _leaky_grad(z2, slope), 0.0)
            if NEED_BD:
                tl.store(pbd_ptr + prog * HIDDEN + k, tl.sum(tl.where(core[:, None], gz2, 0.0), axis=0), mask=k_ok)
            tl.store(scr_b + scr_rows, gz2)
            tl.debug_barrier()
            if NEED_WD:
                _grad_dw_weight(pwd_ptr + prog * HIDDEN * 9, gz2, scr_a, gr, gc, k, k_ok, core, BH, BW, BLOCK_K)
            if NEED_GZ1:
                ga1 = _grad_a1(scr_b, wd_ptr, gr, gc, k, k_ok, BH, BW, BLOCK_K)
                gz1 = tl.where(core[:, None], ga1 * _leaky_grad(z1, slope), 0.0)
                if NEED_B1:
                    tl.store(pb1_ptr + prog * HIDDEN + k, tl.sum(gz1, axis=0), mask=k_ok)
                _grad_expand(x_base, w1_ptr, pw1_ptr + prog * HIDDEN * C_IN, gx_ptr + n * H * W * C_IN, gz1, pix,
                             core, k, k_ok, C_IN, NEED_GX, NEED_W1, BLOCK_CI, BLOCK_K, UPCAST, IN_PREC)
        tl.debug_barrier()  # the next chunk's stores must not overwrite scratch rows still being read
