//! CPU inference kernels for the 3-D layers: on CPUs with AVX-512 or AVX2 + FMA, direct
//! convolutions and packed pointwise ones on a hand-written micro-kernel (`direct`); elsewhere a
//! tiled im2col feeding the `gemm` crate. Plus direct pooling loops and a fused per-channel
//! scale + shift + ReLU.
//!
//! candle's CPU `conv2d` (im2col + GEMM over 512-pixel tiles, with an NHWC copy of the whole input
//! on every call) reaches about 15 GFLOP/s here; these kernels build cache-sized im2col tiles per
//! output depth slice and hand them to the same GEMM, several times faster. They produce tensors
//! without autograd history, so the layers only use them when no input tracks gradients
//! ([`eligible`]); the composed versions in [`super::layers`] stay for training and GPUs.

use candle_core::{DType, Device, Result, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::geometry::{avg_divisors, Conv3dConfig, Pool3dConfig, PoolKind};
use super::prof::{self, Kind};

#[cfg(target_arch = "x86_64")]
use super::direct::{self, Isa};

/// Which convolution kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// Tiled im2col + the `gemm` crate (any CPU).
    Gemm,
    /// Direct convolution on the micro-kernel of an instruction set.
    #[cfg(target_arch = "x86_64")]
    Direct(Isa),
}

impl Engine {
    /// The fastest engine this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = Isa::detect() {
            return Engine::Direct(isa);
        }
        Engine::Gemm
    }
}

/// Whether the CPU kernels may run: f32 tensors on the CPU that track no gradients.
pub(crate) fn eligible(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// Runs `f` on the f32 data of a contiguous CPU tensor without copying it.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("cpu kernel: tensor is not contiguous");
    };
    match &*storage {
        Storage::Cpu(s) => match s.as_slice::<f32>()?.get(start..end) {
            Some(data) => f(data),
            None => candle_core::bail!("cpu kernel: layout outside storage"),
        },
        _ => candle_core::bail!("cpu kernel: tensor is not on the CPU"),
    }
}

/// A pointer to the output buffer shared by tiles that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every parallel task writes a region no other task touches (see the callers).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not the raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `n` zeros; large buffers are backed by transparent huge pages where the kernel offers them
/// (fewer page faults on first touch, fewer TLB misses on the strided channel accesses).
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    let v = vec![0f32; n];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (v.as_ptr() as usize, std::mem::size_of_val(v.as_slice()));
        if len >= 4 * HUGE {
            let lo = start.next_multiple_of(HUGE);
            let hi = (start + len) & !(HUGE - 1);
            // SAFETY: advice on whole pages inside this allocation; it changes no contents. A
            // failure (e.g. THP disabled) only leaves the normal pages.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Target size of one im2col tile, in f32 elements: about half of a 1 MiB L2 cache.
pub(super) const COL_TILE_ELEMS: usize = 128 * 1024;
/// Output voxels per tile of a pointwise convolution.
pub(super) const POINTWISE_TILE: usize = 4096;

/// Geometry of one convolution call.
#[derive(Clone, Copy)]
pub(super) struct ConvGeom {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) input: [usize; 3],
    pub(super) kernel: [usize; 3],
    pub(super) out: [usize; 3],
    pub(super) cfg: Conv3dConfig,
}

/// 3-D convolution, optionally followed by a ReLU, on f32 CPU tensors.
pub(crate) fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    conv3d_act(x, w, bias, cfg, false)
}

/// [`conv3d`] with an optional fused ReLU.
pub(crate) fn conv3d_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    relu: bool,
) -> Result<Tensor> {
    conv3d_with(Engine::detect(), x, w, bias, cfg, relu)
}

/// [`conv3d_act`] on the given engine.
pub(crate) fn conv3d_with(
    engine: Engine,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    relu: bool,
) -> Result<Tensor> {
    let (dst, shape) = conv3d_values_with(engine, x, w, bias, cfg, relu)?;
    Tensor::from_vec(dst, shape.as_slice(), &Device::Cpu)
}

/// [`conv3d_act`]'s output as its values (C-ordered) and its shape `[N, C_out, D, H, W]`, not yet a
/// tensor: a caller that transforms every value next (a norm) does it in place, without a second
/// full-size buffer.
pub(crate) fn conv3d_values(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    relu: bool,
) -> Result<(Vec<f32>, [usize; 5])> {
    conv3d_values_with(Engine::detect(), x, w, bias, cfg, relu)
}

/// [`conv3d_values`] on the given engine.
fn conv3d_values_with(
    engine: Engine,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    relu: bool,
) -> Result<(Vec<f32>, [usize; 5])> {
    let (n, c_in, d, h, wd) = x.dims5()?;
    let (c_out, c_in_w, kd, kh, kw) = w.dims5()?;
    if c_in != c_in_w {
        candle_core::bail!("conv3d: input has {c_in} channels, weight expects {c_in_w}");
    }
    let out = cfg.output_size([d, h, wd], [kd, kh, kw])?;
    let g = ConvGeom {
        n,
        c_in,
        c_out,
        input: [d, h, wd],
        kernel: [kd, kh, kw],
        out,
        cfg: *cfg,
    };
    let bias = match bias {
        Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    if bias.as_ref().is_some_and(|b| b.len() != c_out) {
        candle_core::bail!("conv3d: bias length differs from {c_out} outputs");
    }
    let pointwise = g.kernel == [1, 1, 1] && g.cfg.stride == [1; 3] && g.cfg.padding == [[0; 2]; 3];
    let _t = prof::span(match g.kernel {
        _ if pointwise => Kind::Pointwise,
        [7, 7, 7] => Kind::Stem,
        _ => Kind::ConvOther,
    });
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let vol_out = out[0] * out[1] * out[2];
    let shape = [n, c_out, out[0], out[1], out[2]];
    let mut dst = zeroed(n * c_out * vol_out);
    #[cfg(not(target_arch = "x86_64"))]
    let Engine::Gemm = engine;
    #[cfg(target_arch = "x86_64")]
    if let Engine::Direct(isa) = engine {
        with_f32(&x, |xs| {
            with_f32(&w, |ws| {
                conv_direct(isa, &g, xs, ws, bias.as_deref(), relu, pointwise, &mut dst)
            })
        })?;
        return Ok((dst, shape));
    }
    with_f32(&x, |xs| {
        with_f32(&w, |ws| {
            if pointwise {
                conv_pointwise(&g, xs, ws, &mut dst);
            } else {
                conv_im2col(&g, xs, ws, &mut dst);
            }
            Ok(())
        })
    })?;
    if bias.is_some() || relu {
        epilogue(&mut dst, c_out, vol_out, bias.as_deref(), relu);
    }
    Ok((dst, shape))
}

/// [`conv3d_with`]'s body on the direct kernels of `isa`: `dst` (zeroed, `n * c_out * vol_out`)
/// gets the convolution with bias and ReLU applied.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn conv_direct(
    isa: Isa,
    g: &ConvGeom,
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    pointwise: bool,
    dst: &mut [f32],
) -> Result<()> {
    let k = g.c_in * g.kernel.iter().product::<usize>();
    let pw = direct::PackedWeights::new(ws, g.c_out, k);
    let epi = direct::Epilogue { bias, relu };
    let vol_in = g.input.iter().product::<usize>();
    let vol_out = g.out.iter().product::<usize>();
    let item_out = g.c_out * vol_out;
    if pointwise {
        for (item, out) in xs
            .chunks_exact(g.c_in * vol_in)
            .zip(dst.chunks_exact_mut(item_out))
        {
            let to = direct::PointwiseDst::Dense {
                ptr: direct::Dst(out.as_mut_ptr()),
                cs: vol_out,
            };
            // SAFETY: the CPU runs `isa` (Engine::Direct); `out` holds c_out planes of vol_out.
            unsafe { direct::conv_pointwise(isa, item, vol_in, vol_in, None, &pw, epi, to)? };
        }
        return Ok(());
    }
    let pads = [
        g.cfg.padding[0][0],
        g.cfg.padding[1][0],
        g.cfg.padding[2][0],
    ];
    let geom = direct::DirectGeom::new(g.c_in, g.input, g.kernel, g.cfg.stride, pads, g.out);
    let mut prep = zeroed(geom.prepared_len());
    for (item, out) in xs
        .chunks_exact(g.c_in * vol_in)
        .zip(dst.chunks_exact_mut(item_out))
    {
        geom.prepare(item, &mut prep);
        // SAFETY: the CPU runs `isa`; `out` holds c_out planes of vol_out; prep is prepared.
        let to = direct::Dst(out.as_mut_ptr());
        unsafe { direct::conv_direct(isa, &geom, &prep, &pw, epi, to, vol_out)? };
    }
    Ok(())
}

/// Adds the bias per channel and applies the ReLU, in place.
fn epilogue(dst: &mut [f32], c_out: usize, vol: usize, bias: Option<&[f32]>, relu: bool) {
    dst.par_chunks_mut(vol).enumerate().for_each(|(i, plane)| {
        let b = bias.and_then(|b| b.get(i % c_out)).copied().unwrap_or(0.0);
        if relu {
            plane.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
        } else {
            plane.iter_mut().for_each(|v| *v += b);
        }
    });
}

/// `dst[co, p] = sum_k lhs[co, k] * rhs[k, p]` (row strides given), through the `gemm` crate.
///
/// # Safety
/// The pointers must address `m x k`, `k x n` and `m x n` matrices with the given row strides
/// (column stride 1), and no one else may access the `dst` region meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        1,
        rhs_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// Parallel over tiles when there are enough of them; otherwise inside the GEMM.
pub(super) fn split(tiles: usize) -> (bool, Parallelism) {
    let t = threads();
    if t == 1 {
        (false, Parallelism::None)
    } else if tiles >= 2 * t {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(t))
    }
}

/// 1x1x1, stride 1, no padding: a plain `(C_out, C_in) x (C_in, voxels)` product per batch item.
fn conv_pointwise(g: &ConvGeom, xs: &[f32], ws: &[f32], dst: &mut [f32]) {
    let vol = g.input[0] * g.input[1] * g.input[2];
    let per_item = vol.div_ceil(POINTWISE_TILE);
    let tiles = g.n * per_item;
    let (outer, par) = split(tiles);
    let out = OutPtr(dst.as_mut_ptr());
    let run = |t: usize| {
        let (b, i) = (t / per_item, t % per_item);
        let p0 = i * POINTWISE_TILE;
        let np = POINTWISE_TILE.min(vol - p0);
        // SAFETY: tile t writes columns p0..p0+np of batch item b only; reads stay inside xs/ws.
        unsafe {
            sgemm(
                g.c_out,
                np,
                g.c_in,
                out.get().add(b * g.c_out * vol + p0),
                vol,
                ws.as_ptr(),
                g.c_in,
                xs.as_ptr().add(b * g.c_in * vol + p0),
                vol,
                par,
            )
        }
    };
    if outer {
        (0..tiles).into_par_iter().for_each(run);
    } else {
        (0..tiles).for_each(run);
    }
}

/// General convolution: per tile of output rows in one output depth slice, an im2col matrix
/// `(C_in*kd*kh*kw, rows*W_out)` in the weight's own ordering, then one GEMM into the output.
fn conv_im2col(g: &ConvGeom, xs: &[f32], ws: &[f32], dst: &mut [f32]) {
    let vol_in = g.input.iter().product::<usize>();
    let vol_out = g.out.iter().product::<usize>();
    // SAFETY: dst holds n * c_out * vol_out elements, the layout conv_im2col_into writes.
    unsafe {
        conv_im2col_into(
            g,
            xs,
            g.c_in * vol_in,
            ws,
            OutPtr(dst.as_mut_ptr()),
            g.c_out * vol_out,
        )
    }
}

/// [`conv_im2col`] reading batch item `b` at `xs[b * x_bs..]` and writing it at `dst + b * dst_bs`
/// (channel planes contiguous): so a layer can read from and write into a DenseNet block buffer.
///
/// # Safety
/// `dst + b * dst_bs + co * vol_out + p` must be writable for every batch item, output channel and
/// voxel, and not otherwise accessed during the call.
pub(super) unsafe fn conv_im2col_into(
    g: &ConvGeom,
    xs: &[f32],
    x_bs: usize,
    ws: &[f32],
    out: OutPtr,
    dst_bs: usize,
) {
    let [od, oh, ow] = g.out;
    let k = g.c_in * g.kernel.iter().product::<usize>();
    let rows = (COL_TILE_ELEMS / (k * ow).max(1)).clamp(1, oh);
    let row_tiles = oh.div_ceil(rows);
    let tiles = g.n * od * row_tiles;
    let vol_out = od * oh * ow;
    let (outer, par) = split(tiles);
    let run = |col: &mut Vec<f32>, t: usize| {
        let b = t / (od * row_tiles);
        let z = (t / row_tiles) % od;
        let r0 = (t % row_tiles) * rows;
        let r1 = (r0 + rows).min(oh);
        let np = (r1 - r0) * ow;
        col.clear();
        col.resize(k * np, 0.0);
        im2col_tile(g, xs, b * x_bs, z, r0, r1, col);
        // SAFETY: tile t writes output rows r0..r1 of depth slice z of batch item b only.
        unsafe {
            sgemm(
                g.c_out,
                np,
                k,
                out.get().add(b * dst_bs + z * oh * ow + r0 * ow),
                vol_out,
                ws.as_ptr(),
                k,
                col.as_ptr(),
                np,
                par,
            )
        }
    };
    if outer {
        (0..tiles)
            .into_par_iter()
            .for_each_init(Vec::new, |col, t| run(col, t));
    } else {
        let mut col = Vec::new();
        (0..tiles).for_each(|t| run(&mut col, t));
    }
}

/// Fills `col` (zeroed, `k x np`) with the input patches of output rows `r0..r1` of depth slice `z`,
/// for the batch item whose channels start at `xs[base..]`.
pub(super) fn im2col_tile(
    g: &ConvGeom,
    xs: &[f32],
    base: usize,
    z: usize,
    r0: usize,
    r1: usize,
    col: &mut [f32],
) {
    let [d, h, wd] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.cfg.stride;
    let [[pd, _], [ph, _], [pw, _]] = g.cfg.padding;
    let ow = g.out[2];
    let np = (r1 - r0) * ow;
    let mut rows = col.chunks_exact_mut(np.max(1));
    for ci in 0..g.c_in {
        let plane = base + ci * d * h * wd;
        for a in 0..kd {
            // Input depth of this tap, or None inside the padding.
            let id = (z * sd + a).checked_sub(pd).filter(|&v| v < d);
            for bb in 0..kh {
                for c in 0..kw {
                    let Some(row) = rows.next() else { return };
                    let Some(id) = id else { continue };
                    // Output columns whose input column lies inside the input: [lo, hi).
                    let (lo, hi) = valid_range(ow, sw, c, pw, wd);
                    for (t, y) in (r0..r1).enumerate() {
                        let Some(ih) = (y * sh + bb).checked_sub(ph).filter(|&v| v < h) else {
                            continue;
                        };
                        let src = &xs[plane + (id * h + ih) * wd..][..wd];
                        let seg = &mut row[t * ow..(t + 1) * ow];
                        if lo >= hi {
                            continue;
                        }
                        let first = lo * sw + c - pw;
                        if sw == 1 {
                            seg[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                        } else {
                            for (j, v) in seg[lo..hi].iter_mut().enumerate() {
                                *v = src[first + j * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Output positions `o` in `0..n_out` whose input index `o*s + tap - pad` lies in `0..len`.
fn valid_range(n_out: usize, s: usize, tap: usize, pad: usize, len: usize) -> (usize, usize) {
    // o*s + tap >= pad  <=>  o >= ceil((pad - tap) / s)
    let lo = pad.saturating_sub(tap).div_ceil(s);
    // o*s + tap - pad < len  <=>  o*s < len + pad - tap
    let hi = match (len + pad).checked_sub(tap) {
        Some(lim) => lim.div_ceil(s),
        None => 0,
    };
    (lo.min(n_out), hi.min(n_out))
}

/// 3-D max or average pooling with PyTorch's semantics, one `(n, c)` plane per task.
pub(crate) fn pool3d(x: &Tensor, cfg: &Pool3dConfig, kind: PoolKind) -> Result<Tensor> {
    pool3d_pre(x, cfg, kind, None)
}

/// [`pool3d`] of `relu(x * scale[c] + shift[c])` when `pre` is given (a BatchNorm + ReLU fused
/// into the pool that follows it).
pub(crate) fn pool3d_pre(
    x: &Tensor,
    cfg: &Pool3dConfig,
    kind: PoolKind,
    pre: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    let pre = match pre {
        Some((a, b)) => {
            let (a, b) = (vec_f32(a)?, vec_f32(b)?);
            if a.len() != c || b.len() != c {
                candle_core::bail!("pool3d: {c} channels, {} scales", a.len());
            }
            Some((a, b))
        }
        None => None,
    };
    let plan = PoolPlan::new(cfg, kind, [d, h, w])?;
    let [od, oh, ow] = plan.out;
    let _t = prof::span(match kind {
        PoolKind::Max => Kind::MaxPool,
        PoolKind::Avg { .. } => Kind::TransitionPool,
    });
    let x = x.contiguous()?;
    let (vin, vout) = (d * h * w, od * oh * ow);
    let mut dst = zeroed(n * c * vout);
    with_f32(&x, |xs| {
        dst.par_chunks_mut(vout)
            .zip(xs.par_chunks(vin))
            .enumerate()
            .for_each_init(
                || vec![0f32; w],
                |row, (plane, (out, inp))| {
                    let pre = pre.as_ref().map(|(a, b)| (a[plane % c], b[plane % c]));
                    plan.run(inp, 0, 0..od, out, pre, row);
                },
            );
        Ok(())
    })?;
    Tensor::from_vec(dst, (n, c, od, oh, ow), &Device::Cpu)
}

/// A pooling's windows per axis (clipped to the input) and average divisors: the one plan of
/// the inference kernels and the trainable pooling.
pub(super) struct PoolPlan {
    pub(super) kind: PoolKind,
    pub(super) input: [usize; 3],
    pub(super) out: [usize; 3],
    /// Per axis, each output position's input window `[lo, hi)`.
    pub(super) windows: [Vec<(usize, usize)>; 3],
    /// Per axis, each output position's divisor (average pooling).
    pub(super) divisors: Option<[Vec<usize>; 3]>,
}

impl PoolPlan {
    pub(super) fn new(cfg: &Pool3dConfig, kind: PoolKind, input: [usize; 3]) -> Result<Self> {
        let out = cfg.output_size(input)?;
        let windows = std::array::from_fn(|a| {
            (0..out[a])
                .map(|i| {
                    let start = i * cfg.stride[a];
                    let lo = start.saturating_sub(cfg.padding[a][0]).min(input[a]);
                    let hi = (start + cfg.kernel[a])
                        .saturating_sub(cfg.padding[a][0])
                        .min(input[a]);
                    (lo, hi)
                })
                .collect()
        });
        let divisors = match kind {
            PoolKind::Max => None,
            PoolKind::Avg { count_include_pad } => Some(std::array::from_fn(|a| {
                avg_divisors(
                    input[a],
                    cfg.kernel[a],
                    cfg.stride[a],
                    cfg.padding[a],
                    out[a],
                    count_include_pad,
                )
            })),
        };
        Ok(Self {
            kind,
            input,
            out,
            windows,
            divisors,
        })
    }

    /// Pools output depth slices `zs` of one channel into `out` (those slices only), reading
    /// input depth slices `z0..` from `inp`; `row` is scratch.
    fn run(
        &self,
        inp: &[f32],
        z0: usize,
        zs: std::ops::Range<usize>,
        out: &mut [f32],
        pre: Option<(f32, f32)>,
        row: &mut Vec<f32>,
    ) {
        let [_, h, w] = self.input;
        let max = matches!(self.kind, PoolKind::Max);
        row.resize(w, 0.0);
        let mut o = 0;
        for zi in zs {
            let (za, zb) = self.windows[0][zi];
            for (yi, &(y0, y1)) in self.windows[1].iter().enumerate() {
                // Reduce the window's rows element-wise first (vectorisable), then each
                // output's columns.
                row.fill(if max { f32::NEG_INFINITY } else { 0.0 });
                for z in za..zb {
                    for y in y0..y1 {
                        let src = &inp[((z - z0) * h + y) * w..][..w];
                        reduce_row(row, src, pre, max);
                    }
                }
                for (xi, &(x0, x1)) in self.windows[2].iter().enumerate() {
                    let win = &row[x0..x1];
                    let mut acc = if max {
                        win.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
                    } else {
                        win.iter().sum::<f32>()
                    };
                    if let Some([dd, dh, dw]) = &self.divisors {
                        acc /= (dd[zi] * dh[yi] * dw[xi]) as f32;
                    }
                    out[o] = acc;
                    o += 1;
                }
            }
        }
    }
}

/// `pool(relu(conv3d(x) + bias))` (the DenseNet stem). On the direct engines the convolution runs
/// a few depth slices at a time into a small ring that the pool reads, so the full-resolution
/// activation (the network's largest) never exists; elsewhere it is convolution, then pooling.
pub(crate) fn conv3d_relu_pool(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    pool: &Pool3dConfig,
    kind: PoolKind,
) -> Result<Tensor> {
    conv3d_relu_pool_with(Engine::detect(), x, w, bias, cfg, pool, kind)
}

/// [`conv3d_relu_pool`] on the given engine.
pub(crate) fn conv3d_relu_pool_with(
    engine: Engine,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    pool: &Pool3dConfig,
    kind: PoolKind,
) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if let Engine::Direct(isa) = engine {
        return conv_pool_direct(isa, x, w, bias, cfg, pool, kind);
    }
    let h = conv3d_with(engine, x, w, bias, cfg, true)?;
    pool3d(&h, pool, kind)
}

/// [`conv3d_relu_pool`] on the direct kernels of `isa`.
#[cfg(target_arch = "x86_64")]
fn conv_pool_direct(
    isa: Isa,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    pool: &Pool3dConfig,
    kind: PoolKind,
) -> Result<Tensor> {
    let (n, c_in, d, h, wd) = x.dims5()?;
    let (c_out, c_in_w, kd, kh, kw) = w.dims5()?;
    if c_in != c_in_w {
        candle_core::bail!("conv3d: input has {c_in} channels, weight expects {c_in_w}");
    }
    let conv_out = cfg.output_size([d, h, wd], [kd, kh, kw])?;
    let plan = PoolPlan::new(pool, kind, conv_out)?;
    let bias = match bias {
        Some(b) => Some(vec_f32(b)?),
        None => None,
    };
    if bias.as_ref().is_some_and(|b| b.len() != c_out) {
        candle_core::bail!("conv3d: bias length differs from {c_out} outputs");
    }
    let _t = prof::span(Kind::Stem);
    let x = x.contiguous()?;
    let ws = vec_f32(w)?;
    let k = c_in * kd * kh * kw;
    let pw = direct::PackedWeights::new(&ws, c_out, k);
    let epi = direct::Epilogue {
        bias: bias.as_deref(),
        relu: true,
    };
    let pads = [cfg.padding[0][0], cfg.padding[1][0], cfg.padding[2][0]];
    let geom = direct::DirectGeom::new(c_in, [d, h, wd], [kd, kh, kw], cfg.stride, pads, conv_out);
    let [_, oh, ow] = conv_out;
    let slice = oh * ow;
    let [pd, ph, pwd] = plan.out;
    let pool_slice = ph * pwd;
    // Output depth slices per step, and the most convolution slices one step needs.
    const STEP: usize = 4;
    let span = (0..pd)
        .step_by(STEP)
        .map(|a| {
            let b = (a + STEP).min(pd);
            plan.windows[0][b - 1]
                .1
                .saturating_sub(plan.windows[0][a].0)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let mut prep = zeroed(geom.prepared_len());
    let mut ring = zeroed(c_out * span * slice);
    let mut dst = zeroed(n * c_out * pd * pool_slice);
    with_f32(&x, |xs| {
        for (item, out) in xs
            .chunks_exact(c_in * d * h * wd)
            .zip(dst.chunks_exact_mut(c_out * pd * pool_slice))
        {
            geom.prepare(item, &mut prep);
            // The ring holds convolution slices lo..hi, slice z at slot z - lo of each channel.
            let (mut lo, mut hi) = (0, 0);
            for a in (0..pd).step_by(STEP) {
                let b = (a + STEP).min(pd);
                let (need_lo, need_hi) = (plan.windows[0][a].0, plan.windows[0][b - 1].1);
                // Keep the slices this step shares with the last one, moved to the front.
                let keep = lo.max(need_lo);
                if keep < hi {
                    if keep > lo {
                        for ch in ring.chunks_exact_mut(span * slice) {
                            ch.copy_within((keep - lo) * slice..(hi - lo) * slice, 0);
                        }
                    }
                    lo = keep;
                } else {
                    (lo, hi) = (need_lo, need_lo);
                }
                if need_hi > hi {
                    // SAFETY: the CPU runs `isa` (the caller chose the engine); slices
                    // hi..need_hi go to slots hi - lo.. < span (need_hi - lo <= span) of every
                    // channel.
                    unsafe {
                        let at = ring.as_mut_ptr().add((hi - lo) * slice);
                        direct::conv_direct_slices(
                            isa,
                            &geom,
                            &prep,
                            &pw,
                            epi,
                            direct::Dst(at),
                            span * slice,
                            hi..need_hi,
                        )?;
                    }
                    hi = need_hi;
                }
                let ring = &ring;
                out.par_chunks_mut(pd * pool_slice)
                    .enumerate()
                    .for_each_init(
                        || vec![0f32; ow],
                        |row, (co, plane)| {
                            let inp = &ring[co * span * slice..(co + 1) * span * slice];
                            let o = &mut plane[a * pool_slice..b * pool_slice];
                            plan.run(inp, lo, a..b, o, None, row);
                        },
                    );
            }
        }
        Ok(())
    })?;
    Tensor::from_vec(dst, (n, c_out, pd, ph, pwd), &Device::Cpu)
}

/// `acc = max(acc, f(src))` or `acc += f(src)` element-wise, `f` being `relu(v * a + b)` when
/// `pre` is given and the identity otherwise (separate loops, so each vectorises).
fn reduce_row(acc: &mut [f32], src: &[f32], pre: Option<(f32, f32)>, max: bool) {
    let pairs = acc.iter_mut().zip(src);
    match (pre, max) {
        (None, true) => pairs.for_each(|(m, &v)| *m = m.max(v)),
        (None, false) => pairs.for_each(|(m, &v)| *m += v),
        (Some((a, b)), true) => pairs.for_each(|(m, &v)| *m = m.max((v * a + b).max(0.0))),
        (Some((a, b)), false) => pairs.for_each(|(m, &v)| *m += (v * a + b).max(0.0)),
    }
}

/// Global average pooling `(N, C, D, H, W) -> (N, C)`, accumulated in f64.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    let vol = d * h * w;
    if vol == 0 {
        candle_core::bail!("global average pooling of an empty volume");
    }
    let _t = prof::span(Kind::GlobalPool);
    let x = x.contiguous()?;
    let out = with_f32(&x, |xs| {
        Ok(xs
            .par_chunks(vol)
            .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / vol as f64) as f32)
            .collect::<Vec<f32>>())
    })?;
    Tensor::from_vec(out, (n, c), &Device::Cpu)
}

/// `relu(x * scale[c] + shift[c])` in one pass.
pub(crate) fn scale_shift_relu(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (n, c) = match dims.as_slice() {
        [n, c, ..] => (*n, *c),
        _ => candle_core::bail!(
            "scale_shift_relu: input of rank {} has no channel axis",
            dims.len()
        ),
    };
    let scale = scale.to_vec1::<f32>()?;
    let shift = shift.to_vec1::<f32>()?;
    if scale.len() != c || shift.len() != c {
        candle_core::bail!("scale_shift_relu: {c} channels, {} scales", scale.len());
    }
    let vol: usize = dims.iter().skip(2).product();
    let _t = prof::span(Kind::BnRelu);
    let x = x.contiguous()?;
    let mut dst = zeroed(n * c * vol);
    if vol > 0 {
        with_f32(&x, |xs| {
            dst.par_chunks_mut(vol)
                .zip(xs.par_chunks(vol))
                .enumerate()
                .for_each(|(i, (o, p))| {
                    let (a, b) = (scale[i % c], shift[i % c]);
                    o.iter_mut()
                        .zip(p)
                        .for_each(|(o, &v)| *o = (v * a + b).max(0.0));
                });
            Ok(())
        })?;
    }
    Tensor::from_vec(dst, dims, &Device::Cpu)
}

/// Copies a small parameter tensor to a `Vec<f32>`.
pub(super) fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// A convolution's parameters as the kernels take them (the layer types stay above the kernels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvParams<'a> {
    /// Weight, `[c_out, c_in, kd, kh, kw]`.
    pub weight: &'a Tensor,
    /// Bias, `[c_out]`.
    pub bias: Option<&'a Tensor>,
    /// Stride and padding.
    pub cfg: &'a Conv3dConfig,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every engine this CPU runs.
    pub(in crate::model::kernels) fn engines() -> Vec<Engine> {
        let mut e = vec![Engine::Gemm];
        #[cfg(target_arch = "x86_64")]
        e.extend(Isa::available().iter().map(|&isa| Engine::Direct(isa)));
        e
    }

    std::thread_local! {
        /// One seeded stream per test thread: a failure reproduces with the same values.
        static TEST_RNG: std::cell::RefCell<crate::rng::Rng> =
            std::cell::RefCell::new(crate::rng::Rng::new(0x7E57));
    }

    /// Standard normal values of the given shape, from the test thread's seeded stream.
    pub(in crate::model::kernels) fn randn(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let values: Vec<f32> =
            TEST_RNG.with_borrow_mut(|r| (0..n).map(|_| r.normal() as f32).collect());
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Direct 3-D convolution in f64, PyTorch's semantics.
    pub(in crate::model::kernels) fn naive_conv(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        cfg: &Conv3dConfig,
        relu: bool,
    ) -> Vec<f32> {
        let (n, ci_n, d, h, wd) = x.dims5().unwrap();
        let (co_n, _, kd, kh, kw) = w.dims5().unwrap();
        let [od, oh, ow] = cfg.output_size([d, h, wd], [kd, kh, kw]).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bs = b.map(|b| b.to_vec1::<f32>().unwrap());
        let inside = |i: isize, len: usize| (i >= 0 && (i as usize) < len).then_some(i as usize);
        let mut out = Vec::with_capacity(n * co_n * od * oh * ow);
        for bi in 0..n {
            for co in 0..co_n {
                for z in 0..od {
                    for y in 0..oh {
                        for xo in 0..ow {
                            let mut acc = bs.as_ref().map_or(0.0, |b| b[co] as f64);
                            for ci in 0..ci_n {
                                for a in 0..kd {
                                    let iz = (z * cfg.stride[0] + a) as isize
                                        - cfg.padding[0][0] as isize;
                                    let Some(iz) = inside(iz, d) else { continue };
                                    for bb in 0..kh {
                                        let iy = (y * cfg.stride[1] + bb) as isize
                                            - cfg.padding[1][0] as isize;
                                        let Some(iy) = inside(iy, h) else { continue };
                                        for c in 0..kw {
                                            let ix = (xo * cfg.stride[2] + c) as isize
                                                - cfg.padding[2][0] as isize;
                                            let Some(ix) = inside(ix, wd) else { continue };
                                            let xv = xs
                                                [(((bi * ci_n + ci) * d + iz) * h + iy) * wd + ix];
                                            let wv = ws
                                                [(((co * ci_n + ci) * kd + a) * kh + bb) * kw + c];
                                            acc += xv as f64 * wv as f64;
                                        }
                                    }
                                }
                            }
                            out.push(if relu { acc.max(0.0) } else { acc } as f32);
                        }
                    }
                }
            }
        }
        out
    }

    pub(in crate::model::kernels) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn engines_match_a_naive_convolution() {
        // (N, C_in, C_out, input, kernel, stride, padding, bias, relu): the stem's and the dense
        // layers' shapes in small, odd sizes, output-channel counts off the micro-tile, asymmetric
        // padding, unequal strides, rows narrower than a vector.
        let pads = |p: usize| [[p; 2]; 3];
        type Case = (
            usize,
            usize,
            usize,
            [usize; 3],
            [usize; 3],
            [usize; 3],
            [[usize; 2]; 3],
            bool,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                1,
                3,
                10,
                [9, 14, 13],
                [7, 7, 7],
                [2, 2, 2],
                pads(3),
                true,
                true,
            ),
            (
                2,
                12,
                5,
                [4, 7, 21],
                [3, 3, 3],
                [1, 1, 1],
                pads(1),
                false,
                false,
            ),
            (
                1,
                7,
                9,
                [3, 5, 37],
                [1, 1, 1],
                [1, 1, 1],
                pads(0),
                true,
                true,
            ),
            (
                2,
                4,
                3,
                [5, 6, 7],
                [1, 1, 1],
                [2, 1, 2],
                pads(0),
                true,
                false,
            ),
            (
                1,
                2,
                17,
                [5, 9, 6],
                [2, 3, 1],
                [1, 2, 3],
                [[0, 1], [2, 0], [1, 1]],
                true,
                false,
            ),
            (
                1,
                5,
                8,
                [2, 3, 2],
                [3, 3, 3],
                [1, 1, 1],
                pads(2),
                false,
                true,
            ),
        ];
        for (i, (n, ci, co, dims, k, stride, padding, bias, relu)) in cases.into_iter().enumerate()
        {
            let x = randn(&[n, ci, dims[0], dims[1], dims[2]]);
            let w = randn(&[co, ci, k[0], k[1], k[2]]);
            let b = bias.then(|| randn(&[co]));
            let cfg = Conv3dConfig { stride, padding };
            let want = naive_conv(&x, &w, b.as_ref(), &cfg, relu);
            // Relative to the outputs' size: the stem case sums 1029 products of random values
            // (outputs near 100), where f32 rounding alone reaches 1e-4.
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            for e in engines() {
                let got = conv3d_with(e, &x, &w, b.as_ref(), &cfg, relu).unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let d = max_diff(&got, &want);
                assert!(
                    d < 1e-5 * scale,
                    "case {i}, {e:?}: differs by {d} (outputs up to {scale})"
                );
            }
        }
    }

    #[test]
    fn fused_stem_and_pool_match_convolution_then_pooling() {
        // The stem's geometry over enough depth for several ring steps (pool output depth 10),
        // max pooling as in DenseNet, and an average pool with ceil mode for the general case.
        let x = randn(&[2, 3, 38, 11, 9]);
        let w = (randn(&[10, 3, 7, 7, 7]) * 0.05).unwrap();
        let b = randn(&[10]);
        let conv = Conv3dConfig::symmetric(2, 3);
        let avg = Pool3dConfig {
            kernel: [3, 2, 2],
            stride: [2, 2, 1],
            padding: [[1, 1], [0, 0], [1, 0]],
            ceil_mode: true,
        };
        let pools = [
            (Pool3dConfig::cubic(3, 2, 1), PoolKind::Max),
            (
                avg,
                PoolKind::Avg {
                    count_include_pad: false,
                },
            ),
        ];
        for (pool, kind) in pools {
            let full = Tensor::from_vec(
                naive_conv(&x, &w, Some(&b), &conv, true),
                (2, 10, 19, 6, 5),
                &Device::Cpu,
            )
            .unwrap();
            let want = pool3d(&full, &pool, kind).unwrap();
            for e in engines() {
                let got = conv3d_relu_pool_with(e, &x, &w, Some(&b), &conv, &pool, kind).unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = max_diff(
                    &got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    &want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert!(d < 1e-4, "{kind:?}, {e:?}: differs by {d}");
            }
        }
    }
}
