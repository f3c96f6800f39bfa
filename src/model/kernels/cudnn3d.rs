//! Native cuDNN 3-D convolution (feature `cudnn`), as a candle custom op.
//!
//! candle has no 3-D convolution; without this op a 3-D convolution on the GPU is composed from
//! one 2-D cuDNN convolution per depth tap (`layers::conv3d`), which measured 6x slower than
//! PyTorch on an H100. This op hands the whole NCDHW convolution to cuDNN, as PyTorch does.
//!
//! It is opt-in (`CTGRADE_CUDNN_CONV3D=1`) until a GPU run has checked it against the composed
//! path and PyTorch (`scripts/gpu-check.sh` runs both): this code was type-checked against
//! cudarc 0.19 but had no GPU to run on when it was written.
//!
//! f32 runs with FMA math (no TF32: parity with PyTorch's strict f32 first); f16 and bf16 use
//! tensor cores with f32 accumulation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{sys, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};
use half::{bf16, f16};

use super::geometry::Conv3dConfig;

/// Whether the native op is switched on (`CTGRADE_CUDNN_CONV3D=1`), read once.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CTGRADE_CUDNN_CONV3D").is_ok_and(|v| v == "1"))
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, as candle keeps them.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// `conv3d(x, w) + bias`, then a ReLU if `relu`, with cuDNN's native 3-D convolution; `None`
/// when the op does not apply (not on CUDA, gradients tracked, or not switched on), so that the
/// caller takes the composed path.
pub(crate) fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    relu: bool,
) -> Option<Result<Tensor>> {
    if !enabled() || !x.device().is_cuda() || x.track_op() || w.track_op() {
        return None;
    }
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return None;
    }
    let run = || {
        // cuDNN pads symmetrically: any excess on one side is padded explicitly first.
        let mut x = x.clone();
        let mut pads = [0usize; 3];
        for (axis, [lo, hi]) in cfg.padding.iter().copied().enumerate() {
            let sym = lo.min(hi);
            pads[axis] = sym;
            if lo != hi {
                x = x.pad_with_zeros(2 + axis, lo - sym, hi - sym)?;
            }
        }
        let (_, _, d, h, wd) = x.dims5()?;
        let (_, _, kd, kh, kw) = w.dims5()?;
        let sym_cfg = Conv3dConfig {
            padding: [[pads[0], pads[0]], [pads[1], pads[1]], [pads[2], pads[2]]],
            ..*cfg
        };
        let out = sym_cfg.output_size([d, h, wd], [kd, kh, kw])?;
        let op = CudnnConv3d {
            pads,
            stride: cfg.stride,
            out,
        };
        let mut y = x.contiguous()?.apply_op2(&w.contiguous()?, op)?;
        if let Some(b) = bias {
            y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1, 1))?)?;
        }
        if relu {
            y = y.relu()?;
        }
        Ok(y)
    };
    Some(run())
}

/// The custom op: x (N, C, D, H, W) and w (C_out, C, kD, kH, kW), both contiguous.
struct CudnnConv3d {
    pads: [usize; 3],
    stride: [usize; 3],
    out: [usize; 3],
}

impl CudnnConv3d {
    fn launch<T, C>(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)>
    where
        T: CudaDType + DeviceRepr + ValidAsZeroBits + CudnnDataType + WithDType,
        C: CudnnDataType,
    {
        let dev = x.device().clone();
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("cudnn conv3d: the input and the weight must be contiguous");
        };
        let (n, c, d, h, wd) = xl.shape().dims5()?;
        let (co, ci, kd, kh, kw) = wl.shape().dims5()?;
        if c != ci {
            candle_core::bail!("cudnn conv3d: input has {c} channels, weight expects {ci}");
        }
        let [od, oh, ow] = self.out;
        let i32s = |v: &[usize]| -> Result<Vec<i32>> {
            v.iter()
                .map(|&u| i32::try_from(u).map_err(candle_core::Error::wrap))
                .collect()
        };
        let strides_of = |dims: &[usize]| -> Vec<usize> {
            let mut s = vec![1usize; dims.len()];
            for i in (0..dims.len() - 1).rev() {
                s[i] = s[i + 1] * dims[i + 1];
            }
            s
        };
        let x_dims = [n, c, d, h, wd];
        let y_dims = [n, co, od, oh, ow];
        let cudnn = handle(&dev)?;
        let wrap = candle_core::Error::wrap;
        let mut conv = cudnn
            .create_convnd::<C>(
                &i32s(&self.pads)?,
                &i32s(&self.stride)?,
                &[1, 1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(wrap)?;
        let math = if T::DTYPE == DType::F32 {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        };
        conv.set_math_type(math).map_err(wrap)?;
        let xd = cudnn
            .create_nd_tensor::<T>(&i32s(&x_dims)?, &i32s(&strides_of(&x_dims))?)
            .map_err(wrap)?;
        let yd = cudnn
            .create_nd_tensor::<T>(&i32s(&y_dims)?, &i32s(&strides_of(&y_dims))?)
            .map_err(wrap)?;
        let wdesc = cudnn
            .create_nd_filter::<T>(
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                &i32s(&[co, ci, kd, kh, kw])?,
            )
            .map_err(wrap)?;
        let fwd = ConvForward {
            conv: &conv,
            x: &xd,
            w: &wdesc,
            y: &yd,
        };
        let algo = fwd.pick_algorithm().map_err(wrap)?;
        let ws_bytes = fwd.get_workspace_size(algo).map_err(wrap)?;
        let mut workspace = dev.alloc_zeros::<u8>(ws_bytes.max(1))?;
        let xs = x.as_cuda_slice::<T>()?.slice(x0..x1);
        let ws = w.as_cuda_slice::<T>()?.slice(w0..w1);
        let count: usize = y_dims.iter().product();
        // Every element is written by the convolution (beta = 0).
        let mut ys = unsafe { dev.alloc::<T>(count)? };
        // SAFETY: the descriptors describe exactly these contiguous buffers and types.
        unsafe {
            fwd.launch(
                algo,
                Some(&mut workspace),
                (T::one(), T::zero()),
                &xs,
                &ws,
                &mut ys,
            )
            .map_err(wrap)?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(ys, dev),
            Shape::from(&y_dims[..]),
        ))
    }
}

impl CustomOp2 for CudnnConv3d {
    fn name(&self) -> &'static str {
        "cudnn-conv3d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("cudnn conv3d runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::F32 => self.launch::<f32, f32>(x, xl, w, wl),
            DType::F16 => self.launch::<f16, f32>(x, xl, w, wl),
            DType::BF16 => self.launch::<bf16, f32>(x, xl, w, wl),
            dt => candle_core::bail!("cudnn conv3d: unsupported dtype {dt:?}"),
        }
    }
}
