//! Hot loops compiled for the widest vectors the CPU has: the crate is built for the x86-64
//! baseline (SSE2), where loops over f64 run two lanes at a time and rounding is a libm call.

/// Calls `$f` compiled for the widest vectors this CPU has (AVX-512F, AVX2, or the baseline's
/// SSE2): the same operations in the same order, so the same results bit for bit, on more lanes
/// at once.
macro_rules! wide {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                unsafe { wide_fns::$f::avx512($($arg),*) }
            } else if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { wide_fns::$f::avx2($($arg),*) }
            } else {
                $f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*)
        }
    }};
}

/// Each function of the list compiled for AVX-512F and for AVX2 (see `wide!`); the functions
/// are `#[inline(always)]`, so that their bodies compile with those features.
macro_rules! wide_versions {
    ($($f:ident($($a:ident: $t:ty),*);)*) => {
        #[cfg(target_arch = "x86_64")]
        mod wide_fns {
            $(pub(super) mod $f {
                // The argument types, as the caller's module names them.
                #[allow(unused_imports)]
                use super::super::*;
                /// # Safety
                /// The CPU must have AVX-512F.
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                pub(crate) unsafe fn avx512($($a: $t),*) { super::super::$f($($a),*) }
                /// # Safety
                /// The CPU must have AVX2.
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                pub(crate) unsafe fn avx2($($a: $t),*) { super::super::$f($($a),*) }
            })*
        }
    };
}
pub(crate) use {wide, wide_versions};
