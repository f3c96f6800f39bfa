//! The geometry of 3-D convolution and pooling (strides, padding, output sizes, average-pool
//! divisors): shared by the layers above and the kernels below, and importing neither.

use candle_core::Result;

/// Per-side zero padding: `[[depth_before, depth_after], [height_before, height_after],
/// [width_before, width_after]]`. Asymmetric padding expresses TensorFlow's "SAME".
pub type Padding3d = [[usize; 2]; 3];

/// Stride and padding of a 3-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dConfig {
    /// Stride along depth, height, width.
    pub stride: [usize; 3],
    /// Zero padding per side.
    pub padding: Padding3d,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [[0; 2]; 3],
        }
    }
}

impl Conv3dConfig {
    /// The same stride and symmetric padding along all three axes (PyTorch's `Conv3d(stride=s, padding=p)`).
    pub fn symmetric(stride: usize, padding: usize) -> Self {
        Self {
            stride: [stride; 3],
            padding: [[padding; 2]; 3],
        }
    }

    /// Output size (D, H, W) for an input of `input` voxels and a kernel of `kernel` taps.
    pub fn output_size(&self, input: [usize; 3], kernel: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for a in 0..3 {
            let padded = input[a] + self.padding[a][0] + self.padding[a][1];
            if self.stride[a] == 0 || kernel[a] == 0 || padded < kernel[a] {
                candle_core::bail!(
                    "conv3d: kernel {kernel:?} with stride {:?} does not fit input {input:?} padded by {:?}",
                    self.stride,
                    self.padding
                );
            }
            out[a] = (padded - kernel[a]) / self.stride[a] + 1;
        }
        Ok(out)
    }
}

/// Kernel, stride, per-side padding and ceil mode of a 3-D pooling layer, with PyTorch's semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool3dConfig {
    /// Window size along depth, height, width.
    pub kernel: [usize; 3],
    /// Stride along depth, height, width.
    pub stride: [usize; 3],
    /// Padding per side (`-inf` for max pooling, zeros for average pooling).
    pub padding: Padding3d,
    /// Round the output size up (PyTorch `ceil_mode`); a window must still start inside the input
    /// or its left padding.
    pub ceil_mode: bool,
}

impl Pool3dConfig {
    /// Cubic window with stride and symmetric padding, floor mode (PyTorch's defaults).
    pub fn cubic(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel: [kernel; 3],
            stride: [stride; 3],
            padding: [[padding; 2]; 3],
            ceil_mode: false,
        }
    }

    /// Output size (D, H, W) for an input of `input` voxels.
    pub fn output_size(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for (a, o) in out.iter_mut().enumerate() {
            *o = pool_len(
                input[a],
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.ceil_mode,
            )?;
        }
        Ok(out)
    }
}

/// Output length along one axis, as PyTorch's `pooling_output_shape` (generalised to per-side padding).
pub(crate) fn pool_len(
    len: usize,
    k: usize,
    s: usize,
    pad: [usize; 2],
    ceil: bool,
) -> Result<usize> {
    // Each window must overlap the input, or max pooling would produce -inf.
    if k == 0 || s == 0 || pad[0] >= k || pad[1] >= k || len + pad[0] + pad[1] < k {
        candle_core::bail!(
            "pool3d: window {k} stride {s} padding {pad:?} does not fit length {len}"
        );
    }
    let span = len + pad[0] + pad[1] - k;
    let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
    if ceil && (o - 1) * s >= len + pad[0] {
        o -= 1;
    }
    Ok(o)
}

/// Which reduction a pooling window applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum; padding counts as `-inf`.
    Max,
    /// Mean; padding counts as zero and, with `count_include_pad`, in the divisor.
    Avg {
        /// PyTorch's `count_include_pad`.
        count_include_pad: bool,
    },
}

/// PyTorch's average-pool divisor per output position along one axis (the 3-D divisor is the
/// product of the three, with or without `count_include_pad`).
pub(crate) fn avg_divisors(
    len: usize,
    k: usize,
    s: usize,
    pad: [usize; 2],
    o: usize,
    count_include_pad: bool,
) -> Vec<usize> {
    (0..o)
        .map(|i| {
            // Input coordinates, shifted by the left padding to stay unsigned.
            let start = i * s;
            let end = (start + k).min(len + pad[0] + pad[1]);
            if count_include_pad {
                end - start
            } else {
                end.min(len + pad[0]) - start.max(pad[0])
            }
        })
        .collect()
}
