//! The NVIDIA driver, probed through `dlopen` rather than linked: a build without CUDA can tell
//! whether the CUDA build could run here, and the CUDA build can tell why it cannot before candle
//! fails later on a kernel the driver cannot load.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::fmt;

/// A CUDA version as the driver API writes it: 1000 x major + 10 x minor (13000 is 13.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion(pub i32);

impl CudaVersion {
    /// The oldest Linux driver release that runs this toolkit's code, PTX JIT included (NVIDIA's
    /// CUDA release notes, "CUDA Toolkit and Corresponding Driver Versions"); `None` for a
    /// version that table does not list.
    pub fn minimum_driver(self) -> Option<&'static str> {
        const TABLE: [(i32, &str); 11] = [
            (13000, "580.65.06"),
            (12090, "575.51.03"),
            (12080, "570.26"),
            (12060, "560.28.03"),
            (12050, "555.42.02"),
            (12040, "550.54.14"),
            (12030, "545.23.06"),
            (12020, "535.54.03"),
            (12010, "530.30.02"),
            (12000, "525.60.13"),
            (11080, "520.61.05"),
        ];
        // A minor release of a listed line needs at least its line's .0 driver.
        TABLE
            .iter()
            .find(|(v, _)| *v <= self.0 && self.0 / 1000 == v / 1000)
            .map(|(_, d)| *d)
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0 / 1000, self.0 % 1000 / 10)
    }
}

/// What the driver on this machine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaDriver {
    /// The newest CUDA version the driver supports (`cuDriverGetVersion`).
    pub version: CudaVersion,
    /// CUDA devices it sees (`cuDeviceGetCount`).
    pub devices: usize,
}

/// Why CUDA cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaUnavailable {
    /// This binary has no CUDA backend.
    #[error("this ctgrade was built without the `cuda` feature")]
    NotBuilt,
    /// `libcuda.so.1` could not be loaded.
    #[error("no NVIDIA driver ({0})")]
    NoDriver(String),
    /// A driver call failed.
    #[error("the NVIDIA driver's {call} failed: {reason}")]
    DriverCall {
        /// The function.
        call: &'static str,
        /// The driver's description of the error, or its code.
        reason: String,
    },
    /// The driver sees no device.
    #[error("the NVIDIA driver sees no CUDA device")]
    NoDevice,
    /// The ordinal asked for is past the devices the driver sees.
    #[error("no CUDA device {index}: the NVIDIA driver sees {count}")]
    NoSuchDevice {
        /// Device ordinal asked for.
        index: usize,
        /// Devices seen.
        count: usize,
    },
    /// The CUDA build installed beside this one cannot run here: its own verdict, or why it
    /// does not start (the message names it).
    #[error("{0}")]
    CudaBuild(String),
    /// The driver is older than the toolkit this build's kernels and libraries come from.
    #[error(
        "the NVIDIA driver supports CUDA {driver}, this build needs CUDA {needed}{}",
        needed.minimum_driver().map(|d| format!(" (driver {d} or newer)")).unwrap_or_default()
    )]
    DriverTooOld {
        /// What the driver supports.
        driver: CudaVersion,
        /// What this build needs.
        needed: CudaVersion,
    },
}

impl CudaDriver {
    /// Loads the driver (`libcuda.so.1`), initialises it and reads its version and device count.
    pub fn probe() -> Result<Self, CudaUnavailable> {
        let lib = Driver::open()?;
        // SAFETY: the signatures are those of the CUDA driver API (cuda.h), stable since CUDA 2.0.
        unsafe {
            let init: unsafe extern "C" fn(c_uint) -> c_int = lib.function(c"cuInit")?;
            lib.check("cuInit", init(0))?;
            let get_version: unsafe extern "C" fn(*mut c_int) -> c_int =
                lib.function(c"cuDriverGetVersion")?;
            let mut version = 0;
            lib.check("cuDriverGetVersion", get_version(&mut version))?;
            let get_count: unsafe extern "C" fn(*mut c_int) -> c_int =
                lib.function(c"cuDeviceGetCount")?;
            let mut count = 0;
            lib.check("cuDeviceGetCount", get_count(&mut count))?;
            Ok(Self {
                version: CudaVersion(version),
                devices: usize::try_from(count).unwrap_or(0),
            })
        }
    }

    /// Whether device `index` can run code built with CUDA `needed` (`None`: no requirement).
    pub fn check(&self, index: usize, needed: Option<CudaVersion>) -> Result<(), CudaUnavailable> {
        if let Some(needed) = needed.filter(|n| self.version < *n) {
            return Err(CudaUnavailable::DriverTooOld {
                driver: self.version,
                needed,
            });
        }
        match self.devices {
            0 => Err(CudaUnavailable::NoDevice),
            count if index >= count => Err(CudaUnavailable::NoSuchDevice { index, count }),
            _ => Ok(()),
        }
    }
}

/// The driver library's handle. It is never closed: `cuInit` starts threads that run its code.
struct Driver(*mut c_void);

impl Driver {
    fn open() -> Result<Self, CudaUnavailable> {
        // SAFETY: dlopen with a constant name; dlerror is read on the same thread right after.
        let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            return Err(CudaUnavailable::NoDriver(dl_error()));
        }
        Ok(Self(handle))
    }

    /// The function `name`, typed as `F` (a function pointer type).
    ///
    /// # Safety
    /// `F` must be the function's signature.
    unsafe fn function<F: Copy>(&self, name: &'static CStr) -> Result<F, CudaUnavailable> {
        let symbol = libc::dlsym(self.0, name.as_ptr());
        if symbol.is_null() {
            return Err(CudaUnavailable::DriverCall {
                call: name.to_str().unwrap_or("?"),
                reason: format!("missing from libcuda.so.1 ({})", dl_error()),
            });
        }
        Ok(std::mem::transmute_copy(&symbol))
    }

    /// `Ok` for CUDA_SUCCESS, else the driver's description of `code`.
    fn check(&self, call: &'static str, code: c_int) -> Result<(), CudaUnavailable> {
        if code == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString's signature (cuda.h); the string it returns is static.
        let described = unsafe {
            self.function::<unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int>(
                c"cuGetErrorString",
            )
            .is_ok_and(|f| f(code, &mut text) == 0 && !text.is_null())
        };
        let reason = if described {
            // SAFETY: non-null, NUL-terminated, owned by the driver.
            let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
            format!("{text} (error {code})")
        } else {
            format!("error {code}")
        };
        Err(CudaUnavailable::DriverCall { call, reason })
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call.
    let text = unsafe { libc::dlerror() };
    if text.is_null() {
        "unknown dlopen error".into()
    } else {
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The CUDA version this build's kernels and libraries come from (`CUDA_VERSION` of the
/// toolkit's `cuda.h`, as cudarc was built for it): the oldest driver API version that can load
/// them, PTX included.
#[cfg(feature = "cuda")]
pub const TOOLKIT: CudaVersion =
    CudaVersion(candle_core::cuda_backend::cudarc::driver::sys::CUDA_VERSION as i32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_and_name_their_drivers() {
        assert_eq!(CudaVersion(13000).to_string(), "13.0");
        assert_eq!(CudaVersion(12060).to_string(), "12.6");
        assert_eq!(CudaVersion(13000).minimum_driver(), Some("580.65.06"));
        assert_eq!(CudaVersion(12070).minimum_driver(), Some("560.28.03"));
        assert_eq!(CudaVersion(13020).minimum_driver(), Some("580.65.06"));
        assert_eq!(CudaVersion(10020).minimum_driver(), None);
    }

    #[test]
    fn a_driver_is_checked_for_version_and_device() {
        let driver = CudaDriver {
            version: CudaVersion(12040),
            devices: 1,
        };
        assert_eq!(driver.check(0, Some(CudaVersion(12040))), Ok(()));
        assert_eq!(driver.check(0, None), Ok(()));
        let old = driver.check(0, Some(CudaVersion(13000))).unwrap_err();
        assert_eq!(
            old.to_string(),
            "the NVIDIA driver supports CUDA 12.4, this build needs CUDA 13.0 (driver 580.65.06 \
             or newer)"
        );
        assert_eq!(
            driver.check(1, None),
            Err(CudaUnavailable::NoSuchDevice { index: 1, count: 1 })
        );
        let none = CudaDriver {
            devices: 0,
            ..driver
        };
        assert_eq!(none.check(0, None), Err(CudaUnavailable::NoDevice));
    }
}
