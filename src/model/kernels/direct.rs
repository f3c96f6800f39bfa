//! Direct convolution kernels for the CPU path: one register-blocked micro-kernel per instruction
//! set ([`Isa`]: AVX-512, or AVX2 + FMA) over the same data layout (8 output channels x 48 voxels
//! per micro-tile), which both the direct convolutions and the pointwise ones feed.
//!
//! Direct convolution ("implicit GEMM"): the input is rewritten once into zero-padded planes, split
//! by stride phase, so that for every kernel tap the 48 voxels a tile needs lie contiguously at a
//! fixed offset; the micro-kernel then streams them straight from the planes, with no im2col. A
//! tile runs along the flattened (y, x) plane of one output depth slice; the few columns that fall
//! in the plane's padding are computed and dropped. Pointwise convolutions pack their input into
//! 48-wide panels instead (applying a fused BatchNorm + ReLU while packing).
//!
//! On Zen 4 512-bit FMAs have the same throughput as two 256-bit ones; the AVX-512 kernel's gain
//! over the `gemm` crate's AVX2 kernels (about 55 GFLOP/s per core there, against 100-105 for it
//! and an FMA peak near 115) comes from 32 registers (a 24-accumulator tile, few loads per FMA),
//! weights packed once at load time, and the absent im2col. With AVX2's 16 registers the same
//! tile runs as four 4 x 24 sub-tiles (12 accumulators each) taking turns over blocks of the
//! reduction: the weights and planes stay where the AVX-512 kernel has them, only the register
//! blocking differs. Callers take an [`Isa`] from [`Isa::detect`]; `model::cpu` keeps the `gemm` path for
//! other CPUs.

use std::arch::x86_64::{
    __m256, __m512, _mm256_add_ps, _mm256_and_si256, _mm256_broadcast_ss, _mm256_cmpeq_epi32,
    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_maskstore_ps, _mm256_max_ps, _mm256_set1_epi32,
    _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_add_ps,
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_max_ps, _mm512_mul_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0,
};
use std::sync::OnceLock;

use candle_core::Result;
use rayon::prelude::*;

/// Output channels per micro-tile (rows of the weight panel).
pub(crate) const MR: usize = 8;
/// 16-float vectors per micro-tile row.
const NV: usize = 3;
/// Voxels per micro-tile.
pub(crate) const NR: usize = 16 * NV;

/// The instruction set a micro-kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F: one 8 x 48 tile in 24 registers.
    Avx512,
    /// AVX2 + FMA: four 4 x 24 sub-tiles in 12 registers each.
    Avx2,
}

impl Isa {
    /// Every instruction set this CPU runs, best first; `CTGRADE_CPU_KERNELS=avx2` or `=gemm`
    /// leaves out the better ones, to compare.
    pub(crate) fn available() -> &'static [Isa] {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let cap = std::env::var("CTGRADE_CPU_KERNELS").unwrap_or_default();
            let mut isas = Vec::new();
            if std::arch::is_x86_feature_detected!("avx512f") && !matches!(&*cap, "avx2" | "gemm") {
                isas.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && cap != "gemm"
            {
                isas.push(Isa::Avx2);
            }
            isas
        })
    }

    /// The best instruction set this CPU runs, if any.
    pub(crate) fn detect() -> Option<Isa> {
        Self::available().first().copied()
    }
}

/// Weights `(M, K)` (row-major) rearranged into panels of [`MR`] rows, k-major within a panel, the
/// rows past `M` zero: the micro-kernel reads `MR` consecutive floats per k.
#[derive(Clone, Debug)]
pub(crate) struct PackedWeights {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedWeights {
    /// Packs `w`, which holds `m * k` values (row `i` is output channel `i`).
    pub(crate) fn new(w: &[f32], m: usize, k: usize) -> Self {
        let panels = m.div_ceil(MR);
        let mut data = vec![0f32; panels * k * MR];
        for (i, row) in w.chunks_exact(k.max(1)).take(m).enumerate() {
            let (p, r) = (i / MR, i % MR);
            let panel = &mut data[p * k * MR..(p + 1) * k * MR];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * MR + r] = v;
            }
        }
        Self { m, k, data }
    }

    /// Output channels.
    pub(crate) fn m(&self) -> usize {
        self.m
    }

    /// Reduction length.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    fn panels(&self) -> usize {
        self.m.div_ceil(MR)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * MR..(p + 1) * self.k * MR]
    }
}

/// Where a micro-tile's columns go: per 16-wide vector, masked stores at offsets from the row's
/// base (a tile crosses output rows, or skips padding columns, so one vector may need several).
struct Stores {
    /// Per vector: (lane mask, offset of lane 0 from the row base).
    at: [[(u16, isize); 16]; NV],
    len: [usize; NV],
    /// Bit `j` set: column `j` is stored somewhere.
    columns: u64,
}

impl Stores {
    /// Stores of tile columns `0..NR` whose destination offsets `dst(j)` (None: dropped) run in
    /// unit steps within segments.
    fn new(dst: impl Fn(usize) -> Option<isize>) -> Self {
        let mut st = Stores {
            at: [[(0, 0); 16]; NV],
            len: [0; NV],
            columns: 0,
        };
        for v in 0..NV {
            let mut lane = 0;
            while lane < 16 {
                let j = 16 * v + lane;
                let Some(o) = dst(j) else {
                    lane += 1;
                    continue;
                };
                // Extend while the destination stays contiguous.
                let mut end = lane + 1;
                while end < 16 && dst(16 * v + end) == Some(o + (end - lane) as isize) {
                    end += 1;
                }
                let mask = (((1u32 << end) - 1) & !((1u32 << lane) - 1)) as u16;
                let n = st.len[v];
                st.at[v][n] = (mask, o - lane as isize);
                st.len[v] += 1;
                st.columns |= u64::from(mask) << (16 * v);
                lane = end;
            }
        }
        st
    }
}

/// The output side of a micro-kernel call: `rows` output channels, row `r` at `dst + r * cs`,
/// `relu?(acc + bias[r])` stored as `stores` says.
struct Out<'a> {
    dst: *mut f32,
    cs: usize,
    rows: usize,
    /// `MR` floats.
    bias: &'a [f32; MR],
    relu: bool,
    stores: &'a Stores,
}

/// Where the micro-kernel finds B row `k`: `base + offset(k)`.
trait Offsets: Copy {
    fn at(self, k: usize) -> isize;
}

/// Packed panels: row `k` at `k * NR`.
#[derive(Clone, Copy)]
struct Packed;

impl Offsets for Packed {
    #[inline(always)]
    fn at(self, k: usize) -> isize {
        (k * NR) as isize
    }
}

/// A table of offsets, one per `k` (a kernel tap of some input channel).
#[derive(Clone, Copy)]
struct Table<'a>(&'a [isize]);

impl Offsets for Table<'_> {
    #[inline(always)]
    fn at(self, k: usize) -> isize {
        // SAFETY: the callers pass k < table length (the weights' K, checked on entry).
        unsafe { *self.0.get_unchecked(k) }
    }
}

/// `out[r, j] = relu?(bias[r] + sum_k w[k * MR + r] * b[offs(k) + j])` for `r < out.rows`,
/// `j < NR`, stored where `out.stores` says.
///
/// # Safety
/// The CPU must support AVX-512F; `w` must hold `k * MR` floats; `b + offs(kk) .. + NR` must be
/// readable for every `kk < k`; every unmasked store lane of every row must be writable.
#[target_feature(enable = "avx512f")]
unsafe fn micro<O: Offsets>(k: usize, w: *const f32, b: *const f32, offs: O, out: &Out) {
    prefetch_out(out);
    // The first step multiplies instead of adding to zeros: a zero-initialised array would be
    // built with a memset and reloaded, a store-forwarding stall on every call.
    let load_b = |kk: usize| -> [__m512; NV] {
        let bp = b.offset(offs.at(kk));
        std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)))
    };
    let mut acc: [[__m512; NV]; MR] = if k == 0 {
        [[_mm512_setzero_ps(); NV]; MR]
    } else {
        let bv = load_b(0);
        std::array::from_fn(|r| {
            let a = _mm512_set1_ps(*w.add(r));
            std::array::from_fn(|v| _mm512_mul_ps(a, bv[v]))
        })
    };
    for kk in 1..k {
        let bp = b.offset(offs.at(kk));
        let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
        let wp = w.add(kk * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*wp.add(r));
            for (v, c) in row.iter_mut().enumerate() {
                *c = _mm512_fmadd_ps(a, bv[v], *c);
            }
        }
    }
    let zero = _mm512_setzero_ps();
    // Spelled out per row: a loop over rows would keep `acc` on the stack.
    macro_rules! store_rows {
        ($($r:literal)*) => {$(
            if $r < out.rows {
                let bias = _mm512_set1_ps(out.bias[$r]);
                let base = out.dst.wrapping_add($r * out.cs);
                for (v, c) in acc[$r].iter().enumerate() {
                    let mut c = _mm512_add_ps(*c, bias);
                    if out.relu {
                        c = _mm512_max_ps(c, zero);
                    }
                    for &(mask, o) in &out.stores.at[v][..out.stores.len[v]] {
                        _mm512_mask_storeu_ps(base.wrapping_offset(o), mask, c);
                    }
                }
            }
        )*};
    }
    const _: () = assert!(MR == 8);
    store_rows!(0 1 2 3 4 5 6 7);
}

/// Fetches the output lines of a micro-tile for writing, so that their misses overlap the
/// arithmetic.
#[inline(always)]
fn prefetch_out(out: &Out) {
    for r in 0..out.rows.min(MR) {
        let base = out.dst.wrapping_add(r * out.cs);
        for v in 0..NV {
            for &(mask, o) in &out.stores.at[v][..out.stores.len[v]] {
                let first = mask.trailing_zeros() as isize;
                // SAFETY: a prefetch is a hint; it never faults, whatever the address.
                unsafe {
                    _mm_prefetch::<_MM_HINT_ET0>(base.wrapping_offset(o + first) as *const i8)
                };
            }
        }
    }
}

/// Rows of an AVX2 sub-tile.
const MR2: usize = 4;
/// 8-float vectors per AVX2 sub-tile row.
const NV2: usize = 3;

/// Reduction steps an AVX2 sub-tile runs before the next sub-tile takes over: the B rows and
/// weights of one block (at most 128 x 48 + 128 x 8 floats, 28 KiB) stay in L1 for all four
/// sub-tiles.
const KB2: usize = 128;

/// Columns of an AVX2 sub-tile.
const COLS2: usize = 8 * NV2;
/// AVX2 sub-tiles per micro-tile.
const SUBS2: usize = (MR / MR2) * (NR / COLS2);

/// Accumulators of one AVX2 sub-tile.
type Acc2 = [[__m256; NV2]; MR2];

/// [`micro`] on AVX2 + FMA: the same tile as four `MR2 x COLS2` sub-tiles (sub-tiles with no
/// row or no stored column skipped), taking turns over blocks of [`KB2`] reduction steps; each
/// keeps its accumulators in registers within a block and in L1 between blocks.
///
/// # Safety
/// As for [`micro`], with AVX2 and FMA in place of AVX-512F.
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<O: Offsets>(k: usize, w: *const f32, b: *const f32, offs: O, out: &Out) {
    prefetch_out(out);
    // (first row, first column) of each sub-tile that stores anything.
    let mut subs = [(0, 0); SUBS2];
    let mut n = 0;
    for c0 in (0..NR).step_by(COLS2) {
        if (out.stores.columns >> c0) & ((1 << COLS2) - 1) != 0 {
            for r0 in (0..out.rows.min(MR)).step_by(MR2) {
                subs[n] = (r0, c0);
                n += 1;
            }
        }
    }
    let mut acc = [[[_mm256_setzero_ps(); NV2]; MR2]; SUBS2];
    for k0 in (0..k).step_by(KB2) {
        let k1 = (k0 + KB2).min(k);
        for (&(r0, c0), a) in subs[..n].iter().zip(acc.iter_mut()) {
            sub_tile_avx2(k0..k1, w.add(r0), b.add(c0), offs, a);
        }
    }
    for (&(r0, c0), a) in subs[..n].iter().zip(acc.iter()) {
        store_avx2(a, out, r0, c0);
    }
}

/// Adds reduction steps `ks` of one AVX2 sub-tile to `acc`: rows `0..MR2` of the panel at `w`
/// (already offset by the sub-tile's first row), columns `0..COLS2` of `b` (already offset by
/// its first column).
///
/// # Safety
/// As for [`micro_avx2`].
#[target_feature(enable = "avx2,fma")]
unsafe fn sub_tile_avx2<O: Offsets>(
    ks: std::ops::Range<usize>,
    w: *const f32,
    b: *const f32,
    offs: O,
    acc: &mut Acc2,
) {
    let mut c = *acc;
    for kk in ks {
        let bp = b.offset(offs.at(kk));
        let bv: [__m256; NV2] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(8 * v)));
        let wp = w.add(kk * MR);
        for (r, row) in c.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*wp.add(r));
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(a, bv[v], *x);
            }
        }
    }
    *acc = c;
}

/// Stores an AVX2 sub-tile (rows `r0..`, columns `c0..` of the tile) as `out` says.
///
/// # Safety
/// As for [`micro_avx2`].
#[target_feature(enable = "avx2,fma")]
unsafe fn store_avx2(acc: &Acc2, out: &Out, r0: usize, c0: usize) {
    let zero = _mm256_setzero_ps();
    let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (r, row) in acc.iter().enumerate() {
        if r0 + r >= out.rows {
            break;
        }
        let bias = _mm256_set1_ps(out.bias[r0 + r]);
        let base = out.dst.wrapping_add((r0 + r) * out.cs);
        for (v, c) in row.iter().enumerate() {
            let mut c = _mm256_add_ps(*c, bias);
            if out.relu {
                c = _mm256_max_ps(c, zero);
            }
            // This 8-lane vector is half `h` of 16-wide vector `v16` of the stores.
            let j = c0 + 8 * v;
            let (v16, h) = (j / 16, (j % 16) / 8);
            for &(mask, o) in &out.stores.at[v16][..out.stores.len[v16]] {
                let m8 = (mask >> (8 * h)) & 0xff;
                let at = base.wrapping_offset(o + 8 * h as isize);
                if m8 == 0xff {
                    _mm256_storeu_ps(at, c);
                } else if m8 != 0 {
                    let sel = _mm256_set1_epi32(i32::from(m8));
                    let m = _mm256_cmpeq_epi32(_mm256_and_si256(sel, lane_bits), lane_bits);
                    _mm256_maskstore_ps(at, m, c);
                }
            }
        }
    }
}

/// A pointer to an output buffer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct Dst(pub(crate) *mut f32);
// SAFETY: every parallel task writes a region no other task touches (see the callers).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Per-channel epilogue: `relu?(v + bias[c])`.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Per-output-channel bias.
    pub(crate) bias: Option<&'a [f32]>,
    /// Whether a ReLU follows.
    pub(crate) relu: bool,
}

impl Epilogue<'_> {
    /// The bias of panel `p`'s rows (zero past the end).
    fn panel_bias(&self, p: usize) -> [f32; MR] {
        std::array::from_fn(|r| {
            self.bias
                .and_then(|b| b.get(p * MR + r))
                .copied()
                .unwrap_or(0.0)
        })
    }
}

/// Geometry of one axis of a direct convolution after splitting the input by stride phase.
#[derive(Clone, Copy, Debug)]
struct Axis {
    len: usize,
    stride: usize,
    /// Output length.
    out: usize,
    /// Smallest tap shift, `floor(-pad / stride)`.
    smin: isize,
    /// Plane extent along this axis: `out + smax - smin`.
    extent: usize,
}

impl Axis {
    fn new(len: usize, kernel: usize, stride: usize, pad: usize, out: usize) -> Self {
        let s = stride as isize;
        let smin = (-(pad as isize)).div_euclid(s);
        let smax = (kernel as isize - 1 - pad as isize).div_euclid(s);
        Self {
            len,
            stride,
            out,
            smin,
            extent: (out as isize + smax - smin) as usize,
        }
    }

    /// Phase and plane offset of tap `a` (pad given again to keep the struct small).
    fn tap(&self, a: usize, pad: usize) -> (usize, usize) {
        let t = a as isize - pad as isize;
        let s = self.stride as isize;
        (
            t.rem_euclid(s) as usize,
            (t.div_euclid(s) - self.smin) as usize,
        )
    }

    /// Input index of plane index `j` in phase `ph`, if inside the input.
    fn source(&self, j: usize, ph: usize) -> Option<usize> {
        let i = (j as isize + self.smin) * self.stride as isize + ph as isize;
        (i >= 0 && (i as usize) < self.len).then_some(i as usize)
    }
}

/// A direct convolution's input geometry: per input channel, `phases` planes of
/// `extent[0] x extent[1] x extent[2]` floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirectGeom {
    axes: [Axis; 3],
    pads: [usize; 3],
    kernel: [usize; 3],
    c_in: usize,
}

impl DirectGeom {
    /// Geometry of a convolution of `c_in` channels of `input` voxels with the given kernel,
    /// stride and leading padding, producing `out` voxels (the caller computed `out`, trailing
    /// padding included).
    pub(crate) fn new(
        c_in: usize,
        input: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        pad_before: [usize; 3],
        out: [usize; 3],
    ) -> Self {
        let axes = std::array::from_fn(|a| {
            Axis::new(input[a], kernel[a], stride[a], pad_before[a], out[a])
        });
        Self {
            axes,
            pads: pad_before,
            kernel,
            c_in,
        }
    }

    fn phases(&self) -> usize {
        self.axes.iter().map(|a| a.stride).product()
    }

    fn plane(&self) -> usize {
        self.axes.iter().map(|a| a.extent).product()
    }

    /// Floats of the prepared input of one batch item, with slack for the last tile's overrun.
    pub(crate) fn prepared_len(&self) -> usize {
        self.c_in * self.phases() * self.plane() + NR + 16
    }

    /// Index in the prepared input of channel `c`, voxel `(z, y, x)` (stride 1 only).
    pub(crate) fn padded_index(&self, c: usize, z: usize, y: usize, x: usize) -> usize {
        let [ad, ah, aw] = self.axes;
        let (jz, jy, jx) = (
            (z as isize - ad.smin) as usize,
            (y as isize - ah.smin) as usize,
            (x as isize - aw.smin) as usize,
        );
        c * self.plane() + (jz * ah.extent + jy) * aw.extent + jx
    }

    /// Writes the prepared input of one batch item (`c_in` planes of the input volume) into `dst`
    /// (`prepared_len()` floats, fully overwritten).
    pub(crate) fn prepare(&self, src: &[f32], dst: &mut [f32]) {
        let [ad, ah, aw] = self.axes;
        let vol_in = ad.len * ah.len * aw.len;
        let plane = self.plane();
        let phases = self.phases();
        let (ph_h, ph_w) = (ah.stride, aw.stride);
        dst.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(idx, out)| {
                if out.len() < plane {
                    // The slack after the last plane.
                    out.fill(0.0);
                    return;
                }
                let (c, ph) = (idx / phases, idx % phases);
                let (pz, py, px) = (ph / (ph_h * ph_w), (ph / ph_w) % ph_h, ph % ph_w);
                let Some(chan) = src.get(c * vol_in..(c + 1) * vol_in) else {
                    out.fill(0.0);
                    return;
                };
                for (jz, slab) in out.chunks_exact_mut(ah.extent * aw.extent).enumerate() {
                    let Some(iz) = ad.source(jz, pz) else {
                        slab.fill(0.0);
                        continue;
                    };
                    for (jy, row) in slab.chunks_exact_mut(aw.extent).enumerate() {
                        let Some(iy) = ah.source(jy, py) else {
                            row.fill(0.0);
                            continue;
                        };
                        let line = &chan[(iz * ah.len + iy) * aw.len..][..aw.len];
                        if aw.stride == 1 {
                            // Stride 1: the row is the input line between zero margins, one copy
                            // (the general gather below runs per element).
                            let left = (-aw.smin).max(0) as usize;
                            let skip = aw.smin.max(0) as usize;
                            let left = left.min(row.len());
                            let n = (row.len() - left).min(aw.len.saturating_sub(skip));
                            row[..left].fill(0.0);
                            row[left..left + n].copy_from_slice(&line[skip..skip + n]);
                            row[left + n..].fill(0.0);
                            continue;
                        }
                        for (jx, v) in row.iter_mut().enumerate() {
                            *v = aw.source(jx, px).map_or(0.0, |ix| line[ix]);
                        }
                    }
                }
            });
    }

    /// Offset in the prepared input of every `k = (ci, a, b, c)`, the weights' own order.
    fn offsets(&self) -> Vec<isize> {
        let [ad, ah, aw] = self.axes;
        let [kd, kh, kw] = self.kernel;
        let plane = self.plane();
        let mut offs = Vec::with_capacity(self.c_in * kd * kh * kw);
        for ci in 0..self.c_in {
            for a in 0..kd {
                let (pz, oz) = ad.tap(a, self.pads[0]);
                for b in 0..kh {
                    let (py, oy) = ah.tap(b, self.pads[1]);
                    for c in 0..kw {
                        let (px, ox) = aw.tap(c, self.pads[2]);
                        let ph = (pz * ah.stride + py) * aw.stride + px;
                        let o = (ci * self.phases() + ph) * plane
                            + (oz * ah.extent + oy) * aw.extent
                            + ox;
                        offs.push(o as isize);
                    }
                }
            }
        }
        offs
    }
}

/// Direct convolution of one batch item on `isa`: `src` is the prepared input
/// ([`DirectGeom::prepare`]), `w` the weights `(C_out, C_in * kd * kh * kw)`; output channel `co`,
/// voxel `(z, y, x)` goes to `dst + co * dst_cs + (z * oh + y) * ow + x`.
///
/// # Safety
/// The CPU must run `isa`; `dst` must be writable at every such index and not otherwise accessed
/// meanwhile; `src` must hold `g.prepared_len()` floats.
pub(crate) unsafe fn conv_direct(
    isa: Isa,
    g: &DirectGeom,
    src: &[f32],
    w: &PackedWeights,
    epi: Epilogue,
    dst: Dst,
    dst_cs: usize,
) -> Result<()> {
    let od = g.axes[0].out;
    conv_direct_slices(isa, g, src, w, epi, dst, dst_cs, 0..od)
}

/// [`conv_direct`] of output depth slices `zs` only, slice `z` written as if it were slice
/// `z - zs.start` (so `dst` may hold just those slices).
///
/// # Safety
/// As for [`conv_direct`], with `z - zs.start` in place of `z`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv_direct_slices(
    isa: Isa,
    g: &DirectGeom,
    src: &[f32],
    w: &PackedWeights,
    epi: Epilogue,
    dst: Dst,
    dst_cs: usize,
    zs: std::ops::Range<usize>,
) -> Result<()> {
    let offs = g.offsets();
    if offs.len() != w.k() || src.len() < g.prepared_len() {
        candle_core::bail!(
            "direct conv: weights have {} taps x channels, geometry {}; input {} of {} floats",
            w.k(),
            offs.len(),
            src.len(),
            g.prepared_len()
        );
    }
    let [ad, ah, aw] = g.axes;
    let (oh, ow) = (ah.out, aw.out);
    let (hq, wq) = (ah.extent, aw.extent);
    let zs = zs.start..zs.end.min(ad.out);
    let od = zs.len();
    if od * oh * ow == 0 {
        return Ok(());
    }
    // Flattened (y, x) positions of one depth slice, padding columns included.
    let nq = (oh - 1) * wq + ow;
    let tiles = nq.div_ceil(NR);
    // Tasks of a few tiles, so that small slices still split over the threads.
    let per_task = tiles
        .div_ceil((4 * rayon::current_num_threads()).div_ceil(od).max(1))
        .max(1);
    let tasks_per_z = tiles.div_ceil(per_task);
    let biases: Vec<[f32; MR]> = (0..w.panels()).map(|p| epi.panel_bias(p)).collect();
    // The input rows a tile reads, one offset per run of taps that shift by one voxel: with
    // many input channels these are more streams than the hardware prefetcher follows, so
    // each tile fetches the next tile's rows itself (the micro-kernel otherwise waits on them).
    let rows: Vec<isize> = offs
        .iter()
        .enumerate()
        .filter(|&(k, &o)| k == 0 || o - offs[k - 1] != 1)
        .map(|(_, &o)| o)
        .collect();
    let row_span = NR + g.kernel[2];
    (0..od * tasks_per_z).into_par_iter().for_each(|t| {
        let (zl, t0) = (t / tasks_per_z, (t % tasks_per_z) * per_task);
        let z = zs.start + zl;
        for ti in t0..(t0 + per_task).min(tiles) {
            let q0 = ti * NR;
            let base = z * hq * wq + q0;
            let next = src.as_ptr().wrapping_add(base + NR);
            for &o in &rows {
                let row = next.wrapping_offset(o);
                for l in (0..row_span).step_by(16) {
                    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(l) as *const i8) };
                }
            }
            // Valid columns: inside the slice and left of the plane's padding columns.
            let stores = Stores::new(|j| {
                let q = q0 + j;
                let (y, x) = (q / wq, q % wq);
                (q < nq && x < ow).then(|| ((zl * oh + y) * ow + x) as isize)
            });
            for (p, bias) in biases.iter().enumerate() {
                let out = Out {
                    dst: dst.get().wrapping_add(p * MR * dst_cs),
                    cs: dst_cs,
                    rows: MR.min(w.m() - p * MR),
                    bias,
                    relu: epi.relu,
                    stores: &stores,
                };
                // SAFETY: offsets stay inside the prepared input (see DirectGeom), base + NR
                // overruns at most into the slack; stores hit output voxels of this tile only.
                unsafe {
                    let (wp, bp) = (w.panel(p).as_ptr(), src.as_ptr().add(base));
                    match isa {
                        Isa::Avx512 => micro(w.k(), wp, bp, Table(&offs), &out),
                        Isa::Avx2 => micro_avx2(w.k(), wp, bp, Table(&offs), &out),
                    }
                };
            }
        }
    });
    Ok(())
}

/// Where a pointwise convolution writes output channel `co`, voxel `p`.
#[derive(Clone, Copy)]
pub(crate) enum PointwiseDst<'a> {
    /// `ptr + co * cs + p`.
    Dense {
        /// Output buffer.
        ptr: Dst,
        /// Channel stride.
        cs: usize,
    },
    /// Into the prepared input of a following direct convolution with stride 1 (voxel `p` of
    /// `dims`), so it needs no separate padding pass.
    Padded {
        /// Output buffer.
        ptr: Dst,
        /// Geometry of the following convolution.
        geom: &'a DirectGeom,
        /// The volume's size.
        dims: [usize; 3],
    },
}

thread_local! {
    /// Per-thread packing buffer of the pointwise convolutions (kept: it is reused by every task).
    static PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A packing routine: [`pack_panel`] compiled for one instruction set.
type PackFn = unsafe fn(&[f32], usize, usize, usize, Option<(&[f32], &[f32])>, &mut [f32]);

/// Defines [`pack_panel`] compiled with the given target features, one function per set.
macro_rules! pack_panel_with {
    ($($name:ident: $features:literal),*) => {$(
        #[doc = concat!("[`pack_panel`] with ", $features, ".")]
        ///
        /// # Safety
        /// The CPU must support those features.
        #[target_feature(enable = $features)]
        unsafe fn $name(
            src: &[f32],
            src_cs: usize,
            p0: usize,
            n: usize,
            pre: Option<(&[f32], &[f32])>,
            panel: &mut [f32],
        ) {
            pack_panel(src, src_cs, p0, n, pre, panel)
        }
    )*};
}

pack_panel_with!(pack_panel_avx512: "avx512f", pack_panel_avx2: "avx2,fma");

/// Packs voxels `p0..p0 + n` of every input channel into `panel` (`K` rows of [`NR`] floats, the
/// columns past `n` zero), applying `relu(v * scale + shift)` when `pre` is given. Inlined into
/// the per-instruction-set wrappers, which vectorise it.
#[inline(always)]
fn pack_panel(
    src: &[f32],
    src_cs: usize,
    p0: usize,
    n: usize,
    pre: Option<(&[f32], &[f32])>,
    panel: &mut [f32],
) {
    for (ci, row) in panel.chunks_exact_mut(NR).enumerate() {
        if n < NR {
            row[n..].fill(0.0);
        }
        let Some(x) = src.get(ci * src_cs + p0..ci * src_cs + p0 + n) else {
            continue;
        };
        match pre {
            Some((a, b)) => {
                let (a, b) = (a[ci], b[ci]);
                row[..n]
                    .iter_mut()
                    .zip(x)
                    .for_each(|(o, &v)| *o = (v * a + b).max(0.0));
            }
            None => row[..n].copy_from_slice(x),
        }
    }
}

/// Pointwise convolution of one batch item: `out[co, p] = epi(sum_ci w[co, ci] * f(x[ci, p]))`
/// where `x[ci, p] = src[ci * src_cs + p]` for `p < vol` and `f` is `relu(v * scale + shift)` when
/// `pre` is given, else the identity.
///
/// # Safety
/// The CPU must run `isa`; every output index must be writable and not otherwise accessed
/// meanwhile; `src` must hold `(C_in - 1) * src_cs + vol` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv_pointwise(
    isa: Isa,
    src: &[f32],
    src_cs: usize,
    vol: usize,
    pre: Option<(&[f32], &[f32])>,
    w: &PackedWeights,
    epi: Epilogue,
    dst: PointwiseDst,
) -> Result<()> {
    let k = w.k();
    if vol == 0 || k == 0 {
        return Ok(());
    }
    if src.len() < (k - 1) * src_cs + vol {
        candle_core::bail!(
            "pointwise conv: {k} channels of {vol} voxels, {} apart, need more than {} floats",
            src_cs,
            src.len()
        );
    }
    if pre.is_some_and(|(a, b)| a.len() < k || b.len() < k) {
        candle_core::bail!("pointwise conv: fewer scales than {k} input channels");
    }
    let tiles = vol.div_ceil(NR);
    // Tiles per task: the packed input (k x NR floats per tile) within about 256 KiB.
    let per_task = (65536 / (k * NR)).clamp(1, 8);
    let per_task = per_task.min(tiles.div_ceil(2 * rayon::current_num_threads()).max(1));
    let tasks = tiles.div_ceil(per_task);
    let biases: Vec<[f32; MR]> = (0..w.panels()).map(|p| epi.panel_bias(p)).collect();
    // AVX2 reads the packed rows through a table of their offsets: with `Packed`, LLVM spills
    // one of a sub-tile's 12 accumulators in the inner loop (AVX2 has no spare register), which
    // made the pointwise convolutions about 1.4x slower.
    let packed_rows: Vec<isize> = match isa {
        Isa::Avx2 => (0..k).map(|kk| (kk * NR) as isize).collect(),
        Isa::Avx512 => Vec::new(),
    };
    let pack_fn: PackFn = match isa {
        Isa::Avx512 => pack_panel_avx512,
        Isa::Avx2 => pack_panel_avx2,
    };
    (0..tasks).into_par_iter().for_each(|t| {
        PACK.with_borrow_mut(|pack| {
            let t0 = t * per_task;
            let t1 = (t0 + per_task).min(tiles);
            // Every value is overwritten below, so only a new buffer gets zeroed.
            pack.resize((t1 - t0) * k * NR, 0.0);
            for (i, panel) in pack.chunks_exact_mut(k * NR).enumerate() {
                let p0 = (t0 + i) * NR;
                // SAFETY: the CPU runs `isa` (the caller's contract); bounds checked inside.
                unsafe { pack_fn(src, src_cs, p0, NR.min(vol - p0), pre, panel) };
            }
            for (i, panel) in pack.chunks_exact(k * NR).enumerate() {
                let p0 = (t0 + i) * NR;
                let n = NR.min(vol - p0);
                let (ptr, cs, stores) = match dst {
                    PointwiseDst::Dense { ptr, cs } => (
                        ptr,
                        cs,
                        Stores::new(|j| (j < n).then_some((p0 + j) as isize)),
                    ),
                    PointwiseDst::Padded { ptr, geom, dims } => {
                        let [_, h, wd] = dims;
                        let st = Stores::new(|j| {
                            let p = p0 + j;
                            let (z, y, x) = (p / (h * wd), (p / wd) % h, p % wd);
                            (j < n).then(|| geom.padded_index(0, z, y, x) as isize)
                        });
                        (ptr, geom.plane(), st)
                    }
                };
                for (p, bias) in biases.iter().enumerate() {
                    let out = Out {
                        dst: ptr.get().wrapping_add(p * MR * cs),
                        cs,
                        rows: MR.min(w.m() - p * MR),
                        bias,
                        relu: epi.relu,
                        stores: &stores,
                    };
                    // SAFETY: the panel holds k rows of NR floats; stores hit voxels p0..p0+n.
                    unsafe {
                        let (wp, bp) = (w.panel(p).as_ptr(), panel.as_ptr());
                        match isa {
                            Isa::Avx512 => micro(k, wp, bp, Packed, &out),
                            Isa::Avx2 => micro_avx2(k, wp, bp, Table(&packed_rows), &out),
                        }
                    };
                }
            }
        })
    });
    Ok(())
}
