//! Kernels: the compute under the layers, importing no layer or network.
//!
//! - [`geometry`]: convolution and pooling configurations (stride, padding, output sizes,
//!   average divisors), shared by every form of a layer;
//! - `cpu`: the CPU inference kernels (tiled im2col + `gemm`, or the AVX-512 / AVX2 micro-kernels
//!   in `direct`), one pooling plan, the fused stem (convolution + ReLU + pool) and BatchNorm + ReLU;
//! - `dense`: the DenseNet's dense blocks fused on the CPU;
//! - `grad_conv`, `grad_pool`, `grad_norm`: the same convolution and pooling, and BatchNorm with
//!   batch statistics, as candle custom ops with hand-written gradients, for training on the CPU;
//! - `cudnn3d`: cuDNN's native 3-D convolution (feature `cudnn`);
//! - `prof`: per-kind timing of the CPU kernels (`CTGRADE_PROFILE`).
//!
//! The layers ([`super::layers`]) choose among these and the composed candle forms.

pub(crate) mod cpu;
#[cfg(feature = "cudnn")]
pub(crate) mod cudnn3d;
pub(crate) mod dense;
#[cfg(target_arch = "x86_64")]
pub(crate) mod direct;
pub mod geometry;
pub(crate) mod grad_conv;
pub(crate) mod grad_norm;
pub(crate) mod grad_pool;
pub(crate) mod prof;

use candle_core::{CpuStorage, Layout, Result};

/// The f32 values a custom op receives for one argument, which must be contiguous; `what` names
/// the op and argument in the error.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets().and_then(|(a, b)| data.get(a..b)) {
        Some(d) => Ok(d),
        None => candle_core::bail!("{what} is not a contiguous f32 tensor"),
    }
}
