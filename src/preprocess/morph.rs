//! Binary-image tools for the lung mask: connected components, Euclidean distance transforms
//! (hence exact ball-shaped dilation, erosion and closing), hole filling, bounding boxes.
//!
//! Masks are `u8` (0 or 1) arrays in the volume layout (x fastest, then y, then z).

use rayon::prelude::*;

use crate::wide::{wide, wide_versions};

/// Grid dimensions (x, y, z).
pub(crate) type Dims = [usize; 3];

wide_versions! {
    y_pass(
        slab: &[f32], out: &mut [f32], acc: &mut [f64], nx: usize, ny: usize, ry: usize, w: f64
    );
    z_pass(
        d: &[f32], out: &mut [u8], acc: &mut [f64], rounded: &mut [f32], plane: usize, z: usize,
        srcs: std::ops::Range<usize>, w: f64, r2: f32
    );
}

/// Statistics of one connected component.
#[derive(Debug, Clone, Default)]
pub(crate) struct Component {
    /// Number of voxels.
    pub voxels: usize,
    /// Inclusive bounding box: minimum and maximum index per axis.
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

/// Union-find root with path halving.
#[inline]
fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let p = parent[parent[i as usize] as usize];
        parent[i as usize] = p;
        i = p;
    }
    i
}

/// Joins the sets of `a` and `b` (the smaller root wins, so roots follow scan order).
#[inline]
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra < rb {
        parent[rb as usize] = ra;
    } else if rb < ra {
        parent[ra as usize] = rb;
    }
}

/// Two-pass 4-connected labelling of one slice: writes labels 1..=n and returns per-label
/// stats (z bounds left at 0).
fn label_slice(mask: &[u8], nx: usize, ny: usize, labels: &mut [u32]) -> Vec<Component> {
    let mut parent: Vec<u32> = vec![0];
    for y in 0..ny {
        for x in 0..nx {
            let i = x + nx * y;
            if mask[i] == 0 {
                labels[i] = 0;
                continue;
            }
            let left = if x > 0 { labels[i - 1] } else { 0 };
            let up = if y > 0 { labels[i - nx] } else { 0 };
            labels[i] = match (left, up) {
                (0, 0) => {
                    let l = parent.len() as u32;
                    parent.push(l);
                    l
                }
                (l, 0) | (0, l) => l,
                (l, u) => {
                    if l != u {
                        union(&mut parent, l, u);
                    }
                    l.min(u)
                }
            };
        }
    }
    // Compact the roots to 1..=n in scan order.
    let mut compact = vec![0u32; parent.len()];
    let mut n = 0u32;
    for l in 1..parent.len() as u32 {
        let r = find(&mut parent, l);
        if r == l {
            n += 1;
            compact[l as usize] = n;
        } else {
            compact[l as usize] = compact[r as usize];
        }
    }
    let mut comps = vec![
        Component {
            lo: [usize::MAX, usize::MAX, 0],
            ..Default::default()
        };
        n as usize
    ];
    for y in 0..ny {
        for x in 0..nx {
            let i = x + nx * y;
            if labels[i] == 0 {
                continue;
            }
            let l = compact[labels[i] as usize];
            labels[i] = l;
            let c = &mut comps[l as usize - 1];
            c.voxels += 1;
            c.lo[0] = c.lo[0].min(x);
            c.hi[0] = c.hi[0].max(x);
            c.lo[1] = c.lo[1].min(y);
            c.hi[1] = c.hi[1].max(y);
        }
    }
    comps
}

/// Labels the 6-connected components of `mask` (1-based labels, 0 = background), numbered in
/// the scan order of their first voxel. Slices are labelled in parallel, then joined through
/// their z neighbours with a union-find over the slice labels.
pub(crate) fn label_3d(mask: &[u8], dims: Dims) -> (Vec<u32>, Vec<Component>) {
    let [nx, ny, _] = dims;
    let plane = nx * ny;
    let mut labels = vec![0u32; mask.len()];
    if plane == 0 {
        return (labels, Vec::new());
    }
    let per_slice: Vec<Vec<Component>> = labels
        .par_chunks_mut(plane)
        .zip(mask.par_chunks(plane))
        .map(|(lab, m)| label_slice(m, nx, ny, lab))
        .collect();
    // Global ids: slice z's label l is base[z] + l - 1.
    let mut base = Vec::with_capacity(per_slice.len());
    let mut total = 0u32;
    for s in &per_slice {
        base.push(total);
        total += s.len() as u32;
    }
    let mut parent: Vec<u32> = (0..total).collect();
    for z in 1..per_slice.len() {
        let (below, here) = (
            &labels[(z - 1) * plane..z * plane],
            &labels[z * plane..(z + 1) * plane],
        );
        let mut last = (0u32, 0u32);
        for (&a, &b) in below.iter().zip(here) {
            if a != 0 && b != 0 && (a, b) != last {
                last = (a, b);
                union(&mut parent, base[z - 1] + a - 1, base[z] + b - 1);
            }
        }
    }
    // Final labels in order of the global ids (scan order) and merged stats.
    let mut final_of = vec![0u32; total as usize];
    let mut comps: Vec<Component> = Vec::new();
    for g in 0..total {
        let r = find(&mut parent, g);
        if r == g {
            comps.push(Component {
                lo: [usize::MAX; 3],
                ..Default::default()
            });
            final_of[g as usize] = comps.len() as u32;
        } else {
            final_of[g as usize] = final_of[r as usize];
        }
    }
    for (z, slice_comps) in per_slice.iter().enumerate() {
        for (l, c) in slice_comps.iter().enumerate() {
            let f = &mut comps[final_of[(base[z] + l as u32) as usize] as usize - 1];
            f.voxels += c.voxels;
            for k in 0..2 {
                f.lo[k] = f.lo[k].min(c.lo[k]);
                f.hi[k] = f.hi[k].max(c.hi[k]);
            }
            f.lo[2] = f.lo[2].min(z);
            f.hi[2] = f.hi[2].max(z);
        }
    }
    labels
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(z, lab)| {
            for l in lab.iter_mut().filter(|l| **l != 0) {
                *l = final_of[(base[z] + *l - 1) as usize];
            }
        });
    (labels, comps)
}

/// A 4-connected component of one axial slice.
#[derive(Debug, Clone)]
pub(crate) struct Component2d {
    /// Pixel indices within the slice.
    pub pixels: Vec<usize>,
    /// Mean x index.
    pub centroid_x: f64,
}

/// The 4-connected components of an axial slice (`nx * ny` pixels).
pub(crate) fn components_2d(slice: &[u8], nx: usize, ny: usize) -> Vec<Component2d> {
    let mut seen = vec![false; slice.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..slice.len() {
        if slice[start] == 0 || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        let mut sum_x = 0usize;
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = (i % nx, i / nx);
            sum_x += x;
            let mut visit = |j: usize| {
                if slice[j] != 0 && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < nx {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - nx);
            }
            if y + 1 < ny {
                visit(i + nx);
            }
        }
        let centroid_x = sum_x as f64 / pixels.len() as f64;
        out.push(Component2d { pixels, centroid_x });
    }
    out
}

/// The one-dimensional squared distance transform (with squared sample spacing `w`) of a line
/// that holds only 0 (features) and +inf, in place: the squared distance to the nearest feature,
/// found by one sweep each way (bit for bit the lower envelope's values, at a fraction of its
/// cost). `left` is scratch space.
fn edt_1d_binary(line: &mut [f32], w: f64, left: &mut Vec<usize>) {
    let n = line.len();
    // Distance (in samples) to the nearest feature on the left, then the right.
    left.clear();
    left.resize(n, usize::MAX);
    let mut last = None;
    for (q, &v) in line.iter().enumerate() {
        if v == 0.0 {
            last = Some(q);
        }
        if let Some(p) = last {
            left[q] = q - p;
        }
    }
    let mut next = None;
    for q in (0..n).rev() {
        if line[q] == 0.0 {
            next = Some(q);
        }
        let d = left[q].min(next.map_or(usize::MAX, |p| p - q));
        line[q] = if d == usize::MAX {
            f32::INFINITY
        } else {
            // The lower envelope's expression, so that the values are bit for bit the same.
            let d = d as f64;
            (w * d * d + 0.0) as f32
        };
    }
}

/// Where the squared Euclidean distance (mm²) to the nearest voxel where `feature` holds is at
/// most `r2`: 1 there, else 0. Exact: the values compared are those of the full distance
/// transform (separable, Felzenszwalb & Huttenlocher 2012: squared distances along x, then their
/// minimum plus the squared offset along y, then along z, each pass summed in f64 and kept in
/// f32), but only distances up to `r2` matter, so the y and z passes take the minimum over the
/// offsets within `r` instead of building lower envelopes: whole rows and planes at a time,
/// which vectorises.
pub(crate) fn within(
    dims: Dims,
    spacing: [f64; 3],
    r2: f32,
    feature: impl Fn(usize) -> bool + Sync,
) -> Vec<u8> {
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    let w = spacing.map(|s| s * s);
    // The largest offset along an axis that can still be within `r` (one more is harmless).
    let reach = |k: usize| {
        ((r2 as f64 / w[k]).sqrt().floor() as usize)
            .saturating_add(1)
            .min(dims[k])
    };
    // x: rows hold only 0 and +inf, the two-sweep transform is exact.
    let mut d: Vec<f32> = (0..nx * ny * nz)
        .into_par_iter()
        .map(|i| if feature(i) { 0.0 } else { f32::INFINITY })
        .collect();
    d.par_chunks_mut(nx)
        .for_each_init(Vec::new, |left, row| edt_1d_binary(row, w[0], left));
    // y: within each plane, each row is the minimum over the rows within reach.
    let ry = reach(1);
    d.par_chunks_mut(plane).for_each_init(
        || (vec![0f64; nx], vec![0f32; plane]),
        |(acc, out), slab| {
            wide!(y_pass(slab, out, acc, nx, ny, ry, w[1]));
            slab.copy_from_slice(out);
        },
    );
    // z: each plane is the minimum over the planes within reach, compared with `r2` at once.
    let rz = reach(2);
    let mut result = vec![0u8; nx * ny * nz];
    result.par_chunks_mut(plane).enumerate().for_each_init(
        || (vec![0f64; plane], vec![0f32; plane]),
        |(acc, rounded), (z, out)| {
            let srcs = z.saturating_sub(rz)..(z + rz + 1).min(nz);
            wide!(z_pass(&d, out, acc, rounded, plane, z, srcs, w[2], r2));
        },
    );
    result
}

/// The y pass of [`within`] over one plane: each row of `out` is the minimum over the rows of
/// `slab` within `ry`, plus the squared offset.
#[inline(always)]
fn y_pass(slab: &[f32], out: &mut [f32], acc: &mut [f64], nx: usize, ny: usize, ry: usize, w: f64) {
    for y in 0..ny {
        acc.fill(f64::INFINITY);
        for src in y.saturating_sub(ry)..(y + ry + 1).min(ny) {
            let dy = src.abs_diff(y) as f64;
            min_plus(acc, &slab[src * nx..(src + 1) * nx], w * dy * dy);
        }
        round_into(&mut out[y * nx..(y + 1) * nx], acc);
    }
}

/// The z pass of [`within`] for plane `z`: the minimum over planes `srcs` of `d`, plus the
/// squared offset, compared with `r2`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn z_pass(
    d: &[f32],
    out: &mut [u8],
    acc: &mut [f64],
    rounded: &mut [f32],
    plane: usize,
    z: usize,
    srcs: std::ops::Range<usize>,
    w: f64,
    r2: f32,
) {
    acc.fill(f64::INFINITY);
    for src in srcs {
        let dz = src.abs_diff(z) as f64;
        min_plus(acc, &d[src * plane..(src + 1) * plane], w * dz * dz);
    }
    round_into(rounded, acc);
    for (o, &v) in out.iter_mut().zip(rounded.iter()) {
        *o = u8::from(v <= r2);
    }
}

/// `acc[i] = min(acc[i], f[i] + c)` in f64: the lower envelope's expression for one offset.
#[inline]
fn min_plus(acc: &mut [f64], f: &[f32], c: f64) {
    for (a, &v) in acc.iter_mut().zip(f) {
        *a = a.min(c + v as f64);
    }
}

#[inline]
fn round_into(out: &mut [f32], acc: &[f64]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// Morphological closing with a ball of radius `r_mm`: dilation (within `r` of the mask) then
/// erosion (farther than `r` from outside the dilation), by [`within`]. The grid must leave room
/// for the dilation (a margin of `r` plus a voxel): space beyond it counts as inside the
/// dilation. The result always contains the input.
pub(crate) fn close_ball(mask: &mut [u8], dims: Dims, spacing: [f64; 3], r_mm: f64) {
    let r2 = (r_mm * r_mm) as f32;
    let dilated = within(dims, spacing, r2, |i| mask[i] != 0);
    let near_outside = within(dims, spacing, r2, |i| dilated[i] == 0);
    mask.par_iter_mut()
        .zip(near_outside.par_iter())
        .for_each(|(m, &near)| {
            if near == 0 {
                *m = 1;
            }
        });
}

/// Fills the 3-D holes of `mask`: background regions (6-connected) that do not reach the grid
/// border.
pub(crate) fn fill_holes_3d(mask: &mut [u8], dims: Dims) {
    // 0 background, 1 mask, 2 background reached from the border.
    flood_from_border(mask, dims, 0, 2, true);
    mask.par_iter_mut().for_each(|m| *m = u8::from(*m != 2));
}

/// Sets to `to` every voxel of value `from` that a 6-connected path of `from` voxels joins to a
/// face of the grid perpendicular to x or y, or (`z_faces`) to z. Scanline fill: a row segment
/// at a time, each segment widened along x in one pass and only its four neighbouring rows
/// searched for more. `to` must differ from `from`.
pub(crate) fn flood_from_border(mask: &mut [u8], dims: Dims, from: u8, to: u8, z_faces: bool) {
    let [nx, ny, nz] = dims;
    if nx == 0 || ny == 0 || nz == 0 {
        return;
    }
    let flood = Flood { nx, from, to };
    // Segments (row, x0, x1): row `y + ny * z`, voxels x0..=x1 set to `to`.
    let mut stack: Vec<(usize, usize, usize)> = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            let row = y + ny * z;
            if y == 0 || y + 1 == ny || (z_faces && (z == 0 || z + 1 == nz)) {
                flood.row(mask, row, 0, nx - 1, &mut stack);
            } else {
                flood.row(mask, row, 0, 0, &mut stack);
                flood.row(mask, row, nx - 1, nx - 1, &mut stack);
            }
        }
    }
    while let Some((row, x0, x1)) = stack.pop() {
        let (y, z) = (row % ny, row / ny);
        if y > 0 {
            flood.row(mask, row - 1, x0, x1, &mut stack);
        }
        if y + 1 < ny {
            flood.row(mask, row + 1, x0, x1, &mut stack);
        }
        if z > 0 {
            flood.row(mask, row - ny, x0, x1, &mut stack);
        }
        if z + 1 < nz {
            flood.row(mask, row + ny, x0, x1, &mut stack);
        }
    }
}

/// One scanline flood: rows of `nx` voxels, `from` voxels become `to`.
struct Flood {
    nx: usize,
    from: u8,
    to: u8,
}

impl Flood {
    /// Sets the runs of `from` in row `row` that overlap `x0..=x1` to `to`, each widened to its
    /// full extent, and queues them.
    fn row(
        &self,
        mask: &mut [u8],
        row: usize,
        x0: usize,
        x1: usize,
        stack: &mut Vec<(usize, usize, usize)>,
    ) {
        let (nx, from) = (self.nx, self.from);
        let line = &mut mask[row * nx..(row + 1) * nx];
        let mut x = x0;
        while x <= x1 {
            if line[x] != from {
                x += 1;
                continue;
            }
            let mut a = x;
            while a > 0 && line[a - 1] == from {
                a -= 1;
            }
            let mut b = x;
            while b + 1 < nx && line[b + 1] == from {
                b += 1;
            }
            line[a..=b].fill(self.to);
            stack.push((row, a, b));
            x = b + 1;
        }
    }
}

/// Copies the box `lo..=hi` of a grid into a new array (with the box's dims); the box may
/// extend beyond the grid, where it reads `fill`.
pub(crate) fn crop<T: Copy + Send + Sync>(
    data: &[T],
    dims: Dims,
    lo: [i64; 3],
    hi: [i64; 3],
    fill: T,
) -> (Vec<T>, Dims) {
    let bd = [0, 1, 2].map(|k| (hi[k] - lo[k] + 1).max(0) as usize);
    let mut out = vec![fill; bd[0] * bd[1] * bd[2]];
    // The part of the box inside the grid, in grid coordinates.
    let a = [0, 1, 2].map(|k| lo[k].max(0));
    let b = [0, 1, 2].map(|k| hi[k].min(dims[k] as i64 - 1));
    if (0..3).any(|k| a[k] > b[k]) {
        return (out, bd);
    }
    let w = (b[0] - a[0] + 1) as usize;
    out.par_chunks_mut(bd[0] * bd[1])
        .enumerate()
        .for_each(|(bz, slab)| {
            let z = lo[2] + bz as i64;
            if z < a[2] || z > b[2] {
                return;
            }
            for y in a[1]..=b[1] {
                let by = (y - lo[1]) as usize;
                let src = a[0] as usize + dims[0] * (y as usize + dims[1] * z as usize);
                let dst = (a[0] - lo[0]) as usize + bd[0] * by;
                slab[dst..dst + w].copy_from_slice(&data[src..src + w]);
            }
        });
    (out, bd)
}

/// Merges a box (as cut by [`crop`] at `lo`) back into a grid by the larger value (OR for 0/1
/// masks), skipping what lies outside.
pub(crate) fn or_back(data: &mut [u8], dims: Dims, lo: [i64; 3], sub: &[u8], bd: Dims) {
    let plane = dims[0] * dims[1];
    data.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(z, slab)| {
            let bz = z as i64 - lo[2];
            if bz < 0 || bz >= bd[2] as i64 {
                return;
            }
            for by in 0..bd[1] {
                let y = lo[1] + by as i64;
                if y < 0 || y >= dims[1] as i64 {
                    continue;
                }
                for bx in 0..bd[0] {
                    let x = lo[0] + bx as i64;
                    if x < 0 || x >= dims[0] as i64 {
                        continue;
                    }
                    let s = sub[bx + bd[0] * (by + bd[1] * bz as usize)];
                    let d = &mut slab[x as usize + dims[0] * y as usize];
                    *d = (*d).max(s);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wide_versions_compute_the_same_as_the_baseline() {
        // Distances as `within` sees them: zeros, +inf and squared multiples of the spacing.
        let (nx, ny, nz) = (37, 23, 9);
        let plane = nx * ny;
        let mut state = 7u64;
        let d: Vec<f32> = (0..plane * nz)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match state >> 61 {
                    0 => 0.0,
                    1 | 2 => f32::INFINITY,
                    k => (0.7f64 * 0.7 * ((state >> 33) % 40) as f64 * k as f64) as f32,
                }
            })
            .collect();
        type YPass = unsafe fn(&[f32], &mut [f32], &mut [f64], usize, usize, usize, f64);
        type ZPass = unsafe fn(
            &[f32],
            &mut [u8],
            &mut [f64],
            &mut [f32],
            usize,
            usize,
            std::ops::Range<usize>,
            f64,
            f32,
        );
        let run = |y_fn: YPass, z_fn: ZPass| {
            let mut ys = d.clone();
            let (mut acc, mut out) = (vec![0f64; plane], vec![0f32; plane]);
            for slab in ys.chunks_mut(plane) {
                // SAFETY: each version runs only where the CPU has its features.
                unsafe { y_fn(slab, &mut out, &mut acc, nx, ny, 4, 0.49) };
                slab.copy_from_slice(&out);
            }
            let mut zs = vec![0u8; plane * nz];
            let mut rounded = vec![0f32; plane];
            for (z, o) in zs.chunks_mut(plane).enumerate() {
                let srcs = z.saturating_sub(3)..(z + 4).min(nz);
                // SAFETY: as above.
                unsafe { z_fn(&ys, o, &mut acc, &mut rounded, plane, z, srcs, 0.64, 9.0) };
            }
            (ys, zs)
        };
        let baseline = run(y_pass, z_pass);
        assert!(baseline.1.contains(&0) && baseline.1.contains(&1));
        if std::arch::is_x86_feature_detected!("avx2") {
            let avx2 = run(wide_fns::y_pass::avx2, wide_fns::z_pass::avx2);
            assert!(avx2 == baseline, "AVX2");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            let avx512 = run(wide_fns::y_pass::avx512, wide_fns::z_pass::avx512);
            assert!(avx512 == baseline, "AVX-512");
        }
    }

    /// Hole filling by labelling, the oracle of the scanline fill: the background's
    /// 6-connected components (`label_3d`, union-find) that touch no face of the grid are holes.
    fn fill_holes_by_labels(mask: &mut [u8], dims: Dims) {
        let background: Vec<u8> = mask.iter().map(|&m| u8::from(m == 0)).collect();
        let (labels, comps) = label_3d(&background, dims);
        let hole = |c: &Component| (0..3).all(|k| c.lo[k] > 0 && c.hi[k] + 1 < dims[k]);
        for (m, &l) in mask.iter_mut().zip(&labels) {
            *m = u8::from(l == 0 || hole(&comps[l as usize - 1]));
        }
    }

    // The full distance transform by lower envelopes, the oracle of `within`.

    /// One-dimensional squared distance transform of sampled function `f` (0 at features, +inf
    /// elsewhere, or the result of a previous pass) with squared sample spacing `w`
    /// (Felzenszwalb & Huttenlocher, "Distance transforms of sampled functions", 2012).
    fn edt_1d(f: &[f32], w: f64, out: &mut [f32], v: &mut Vec<usize>, z: &mut Vec<f64>) {
        v.clear();
        z.clear();
        for (q, &fq) in f.iter().enumerate() {
            if !fq.is_finite() {
                continue;
            }
            let fq = fq as f64 + w * (q * q) as f64;
            loop {
                match v.last() {
                    Some(&p) => {
                        let fp = f[p] as f64 + w * (p * p) as f64;
                        let s = (fq - fp) / (2.0 * w * (q - p) as f64);
                        if z.last().is_some_and(|&zl| s <= zl) {
                            v.pop();
                            z.pop();
                            continue;
                        }
                        v.push(q);
                        z.push(s);
                    }
                    None => {
                        v.push(q);
                        z.push(f64::NEG_INFINITY);
                    }
                }
                break;
            }
        }
        if v.is_empty() {
            out.fill(f32::INFINITY);
            return;
        }
        let mut k = 0;
        for (q, o) in out.iter_mut().enumerate() {
            while k + 1 < v.len() && z[k + 1] < q as f64 {
                k += 1;
            }
            let p = v[k];
            let d = q as f64 - p as f64;
            *o = (w * d * d + f[p] as f64) as f32;
        }
    }

    /// Squared Euclidean distance (mm²) from every voxel to the nearest voxel where `feature` is
    /// true; +inf when there is none. Exact, separable, parallel over lines.
    fn squared_edt(
        dims: Dims,
        spacing: [f64; 3],
        feature: impl Fn(usize) -> bool + Sync,
    ) -> Vec<f32> {
        let [nx, ny, nz] = dims;
        let plane = nx * ny;
        let mut d: Vec<f32> = (0..nx * ny * nz)
            .into_par_iter()
            .map(|i| if feature(i) { 0.0 } else { f32::INFINITY })
            .collect();
        let w = spacing.map(|s| s * s);
        // x: rows are contiguous, and hold only 0 and +inf.
        d.par_chunks_mut(nx)
            .for_each_init(Vec::new, |left, row| edt_1d_binary(row, w[0], left));
        // y: columns within each z-plane.
        d.par_chunks_mut(plane).for_each_init(
            || (vec![0f32; ny], vec![0f32; ny], Vec::new(), Vec::new()),
            |(f, o, v, z), slab| {
                for x in 0..nx {
                    for y in 0..ny {
                        f[y] = slab[x + nx * y];
                    }
                    edt_1d(f, w[1], o, v, z);
                    for y in 0..ny {
                        slab[x + nx * y] = o[y];
                    }
                }
            },
        );
        // z: one y-row of columns per task: gather the (x, z) block with contiguous reads, transform
        // its columns, and write everything back plane by plane.
        let rows: Vec<Vec<f32>> = (0..ny)
            .into_par_iter()
            .map_init(
                || (vec![0f32; nx * nz], Vec::new(), Vec::new()),
                |(block, v, z), y| {
                    for k in 0..nz {
                        let row = &d[nx * (y + ny * k)..nx * (y + ny * k) + nx];
                        for (x, &val) in row.iter().enumerate() {
                            block[x * nz + k] = val;
                        }
                    }
                    let mut out = vec![0f32; nx * nz];
                    for (col, o) in block.chunks(nz).zip(out.chunks_mut(nz)) {
                        edt_1d(col, w[2], o, v, z);
                    }
                    out
                },
            )
            .collect();
        d.par_chunks_mut(plane).enumerate().for_each(|(k, slab)| {
            for (y, row) in rows.iter().enumerate() {
                for x in 0..nx {
                    slab[x + nx * y] = row[x * nz + k];
                }
            }
        });
        d
    }

    fn brute_force_edt(mask: &[u8], dims: Dims, sp: [f64; 3]) -> Vec<f32> {
        let [nx, ny, nz] = dims;
        let pts: Vec<[usize; 3]> = (0..mask.len())
            .filter(|&i| mask[i] != 0)
            .map(|i| [i % nx, (i / nx) % ny, i / (nx * ny)])
            .collect();
        (0..nx * ny * nz)
            .map(|i| {
                let p = [i % nx, (i / nx) % ny, i / (nx * ny)];
                pts.iter()
                    .map(|q| {
                        (0..3)
                            .map(|k| ((p[k] as f64 - q[k] as f64) * sp[k]).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min) as f32
            })
            .collect()
    }

    #[test]
    fn edt_matches_brute_force_with_anisotropic_spacing() {
        let dims = [9, 7, 5];
        let sp = [0.7, 1.3, 2.5];
        let mut mask = vec![0u8; 9 * 7 * 5];
        for &i in &[3usize, 40, 100, 222, 314] {
            mask[i] = 1;
        }
        let fast = squared_edt(dims, sp, |i| mask[i] != 0);
        let slow = brute_force_edt(&mask, dims, sp);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-3 * b.max(1.0), "{a} vs {b}");
        }
        let empty = squared_edt(dims, sp, |_| false);
        assert!(empty.iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn within_is_the_full_transform_thresholded() {
        let mut rng = crate::rng::Rng::new(5);
        for (dims, sp, density, r) in [
            ([23, 19, 17], [0.7, 1.3, 2.5], 0.01, 3.0),
            ([23, 19, 17], [0.7, 1.3, 2.5], 0.3, 1.9),
            ([30, 12, 40], [1.5, 1.5, 1.5], 0.002, 10.0),
            ([16, 16, 16], [1.0, 1.0, 1.0], 0.05, 2.0),
            ([9, 7, 5], [0.57, 0.57, 5.0], 0.0, 4.0),
        ] {
            let mask: Vec<u8> = (0..dims[0] * dims[1] * dims[2])
                .map(|_| u8::from(rng.uniform() < density))
                .collect();
            let r2 = (r * r) as f32;
            let full = squared_edt(dims, sp, |i| mask[i] != 0);
            let bounded = within(dims, sp, r2, |i| mask[i] != 0);
            let expected: Vec<u8> = full.iter().map(|&d| u8::from(d <= r2)).collect();
            assert_eq!(bounded, expected, "dims {dims:?}, spacing {sp:?}, r {r}");
        }
    }

    /// A 0/1 mask of `dims` with about `percent` % ones, from `seed`.
    fn random_mask(seed: u64, dims: Dims, percent: u64) -> Vec<u8> {
        let n = (dims[0] * dims[1] * dims[2]) as u64;
        (0..n)
            .map(|i| u8::from(crate::synth::test_hash(seed, i) % 100 < percent))
            .collect()
    }

    #[test]
    fn scanline_fill_matches_hole_filling_by_labels() {
        for (seed, dims, percent) in [
            (0u64, [13, 11, 9], 45),
            (1, [13, 11, 9], 60),
            (2, [20, 3, 17], 55),
            (3, [1, 9, 9], 50),
            (4, [9, 9, 1], 30),
            (5, [17, 16, 15], 70),
        ] {
            let mask = random_mask(seed, dims, percent);
            let (mut fast, mut slow) = (mask.clone(), mask.clone());
            fill_holes_3d(&mut fast, dims);
            fill_holes_by_labels(&mut slow, dims);
            assert_eq!(fast, slow, "seed {seed}, dims {dims:?}");
            assert!(fast.iter().zip(&mask).all(|(f, m)| f >= m));
        }
    }

    #[test]
    fn flooding_from_the_xy_faces_takes_the_components_touching_them() {
        for (seed, dims, percent) in [
            (0u64, [13, 11, 9], 45),
            (1, [13, 11, 9], 30),
            (2, [20, 3, 17], 55),
            (3, [1, 9, 9], 50),
            (4, [9, 9, 1], 40),
        ] {
            let air = random_mask(seed, dims, percent);
            let (labels, comps) = label_3d(&air, dims);
            let expected: Vec<u8> = labels
                .iter()
                .map(|&l| match l {
                    0 => 0,
                    l => {
                        let c = &comps[l as usize - 1];
                        let xy_face = c.lo[0] == 0
                            || c.lo[1] == 0
                            || c.hi[0] + 1 == dims[0]
                            || c.hi[1] + 1 == dims[1];
                        if xy_face {
                            2
                        } else {
                            1
                        }
                    }
                })
                .collect();
            let mut flooded = air.clone();
            flood_from_border(&mut flooded, dims, 1, 2, false);
            assert_eq!(flooded, expected, "seed {seed}, dims {dims:?}");
        }
    }

    #[test]
    fn binary_lines_give_the_lower_envelope_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(11);
        for (n, density, w) in [
            (1, 0.5, 1.0),
            (37, 0.1, 0.49),
            (200, 0.02, 2.25),
            (64, 0.0, 1.0),
        ] {
            let line: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.uniform() < density {
                        0.0
                    } else {
                        f32::INFINITY
                    }
                })
                .collect();
            let mut envelope = vec![0f32; n];
            edt_1d(&line, w, &mut envelope, &mut Vec::new(), &mut Vec::new());
            let mut sweeps = line.clone();
            edt_1d_binary(&mut sweeps, w, &mut Vec::new());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&sweeps), bits(&envelope), "n {n}, density {density}");
        }
    }

    #[test]
    fn closing_fills_a_gap_but_keeps_a_wide_notch() {
        // Two slabs 2 voxels apart: closing with r = 2 voxels bridges them.
        let dims = [20, 5, 5];
        let mut mask = vec![0u8; 500];
        for z in 0..5 {
            for y in 0..5 {
                for x in (3..8).chain(10..15) {
                    mask[x + 20 * (y + 5 * z)] = 1;
                }
            }
        }
        let mut closed = mask.clone();
        close_ball(&mut closed, dims, [1.0; 3], 2.0);
        assert_eq!(closed[8 + 20 * (2 + 5 * 2)], 1, "gap bridged");
        assert_eq!(closed[1 + 20 * (2 + 5 * 2)], 0, "outside stays outside");
        assert!(mask.iter().zip(&closed).all(|(a, b)| b >= a), "extensive");
    }

    /// Reference 6-connected labelling by flood fill.
    fn flood_labels(mask: &[u8], dims: Dims) -> Vec<u32> {
        let [nx, ny, nz] = dims;
        let mut labels = vec![0u32; mask.len()];
        let mut next = 0;
        for s in 0..mask.len() {
            if mask[s] == 0 || labels[s] != 0 {
                continue;
            }
            next += 1;
            labels[s] = next;
            let mut stack = vec![s];
            while let Some(i) = stack.pop() {
                let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
                let mut n = Vec::new();
                if x > 0 {
                    n.push(i - 1)
                }
                if x + 1 < nx {
                    n.push(i + 1)
                }
                if y > 0 {
                    n.push(i - nx)
                }
                if y + 1 < ny {
                    n.push(i + nx)
                }
                if z > 0 {
                    n.push(i - nx * ny)
                }
                if z + 1 < nz {
                    n.push(i + nx * ny)
                }
                for j in n {
                    if mask[j] != 0 && labels[j] == 0 {
                        labels[j] = next;
                        stack.push(j);
                    }
                }
            }
        }
        labels
    }

    #[test]
    fn labelling_matches_flood_fill_on_random_masks() {
        let dims = [13, 11, 9];
        for seed in 0..5u64 {
            let mask: Vec<u8> = (0..13 * 11 * 9u64)
                .map(|i| u8::from(crate::synth::test_hash(seed, i) % 100 < 45))
                .collect();
            let (fast, comps) = label_3d(&mask, dims);
            let slow = flood_labels(&mask, dims);
            assert_eq!(fast, slow, "seed {seed}");
            for (l, c) in comps.iter().enumerate() {
                let n = fast.iter().filter(|&&v| v == l as u32 + 1).count();
                assert_eq!(c.voxels, n);
            }
        }
    }

    #[test]
    fn labels_and_fills() {
        // A hollow cube: one component, its cavity is a hole.
        let dims = [7, 7, 7];
        let mut mask = vec![0u8; 343];
        for z in 1..6 {
            for y in 1..6 {
                for x in 1..6 {
                    let inner = (2..5).contains(&x) && (2..5).contains(&y) && (2..5).contains(&z);
                    if !inner {
                        mask[x + 7 * (y + 7 * z)] = 1;
                    }
                }
            }
        }
        let (labels, comps) = label_3d(&mask, dims);
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0].voxels, 125 - 27);
        assert_eq!(comps[0].lo, [1, 1, 1]);
        assert_eq!(comps[0].hi, [5, 5, 5]);
        assert_eq!(labels[3 + 7 * (3 + 7 * 3)], 0);
        fill_holes_3d(&mut mask, dims);
        assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 125);
        let (sub, sd) = crop(&mask, dims, [1, 1, 1], [2, 3, 5], 0);
        assert_eq!(sd, [2, 3, 5]);
        assert!(sub.iter().all(|&m| m == 1));
        // A box sticking out of the grid reads the fill value there and writes back inside.
        let (sub, sd) = crop(&mask, dims, [-2, 5, 5], [1, 7, 6], 9);
        assert_eq!(sd, [4, 3, 2]);
        assert_eq!(sub[0], 9);
        assert_eq!(sub[3], 1, "voxel (1, 5, 5)");
        let mut back = vec![0u8; 343];
        or_back(&mut back, dims, [-2, 5, 5], &sub, sd);
        assert_eq!(back[1 + 7 * (5 + 7 * 5)], 1);
        // Only voxel (1, 5, 5) of the box is inside both the grid and the filled cube.
        assert_eq!(back.iter().filter(|&&m| m != 0).count(), 1);
    }

    #[test]
    fn components_2d_split_and_centroid() {
        let (nx, ny) = (6, 3);
        let slice = [1u8, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let comps = components_2d(&slice, nx, ny);
        assert_eq!(comps.len(), 2);
        assert_eq!(comps[0].pixels.len(), 2);
        assert!((comps[0].centroid_x - 0.5).abs() < 1e-12);
        assert_eq!(comps[1].pixels.len(), 2);
        assert!((comps[1].centroid_x - 5.0).abs() < 1e-12);
        let _ = ny;
    }
}
