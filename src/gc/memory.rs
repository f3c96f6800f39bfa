//! The memory a case may use, and what follows from it: the largest scan and the largest resampled
//! grid a run accepts, so that a case too large for the container fails with a reason instead of an
//! allocation abort or an OOM kill.
//!
//! The budget is the smallest limit that applies to this process: grand-challenge's
//! `GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB` (which recent versions of its wrapper may not pass
//! through), the process's `RLIMIT_DATA` and `RLIMIT_AS` (which that wrapper may set), and the
//! cgroup's `memory.max` (v2) or `memory.limit_in_bytes` (v1), which Docker's `--memory` sets.
//! Measurements behind the constants are in docs/robustness.md.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::preprocess;
use crate::volume::ReadLimits;

/// Where a memory limit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB`.
    Variable,
    /// The process's data segment limit (heap and private writable mappings).
    RlimitData,
    /// The process's address-space limit, less what is already reserved without being used.
    RlimitAs,
    /// A cgroup v2 `memory.max` file.
    CgroupV2(PathBuf),
    /// A cgroup v1 `memory.limit_in_bytes` file.
    CgroupV1(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Variable => f.write_str("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB"),
            Self::RlimitData => f.write_str("RLIMIT_DATA"),
            Self::RlimitAs => f.write_str("RLIMIT_AS"),
            Self::CgroupV2(p) | Self::CgroupV1(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One memory limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Bytes.
    pub bytes: u64,
    /// Where it comes from.
    pub source: Source,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB ({})", self.bytes >> 20, self.source)
    }
}

/// Values at or above this are "no limit" (cgroup v1 writes 2^63 rounded down to a page).
const UNLIMITED: u64 = 1 << 60;

/// Every memory limit that applies to this process, in no particular order.
pub fn limits() -> Vec<Limit> {
    let mut found = Vec::new();
    if let Some(bytes) = std::env::var("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        found.push(Limit {
            bytes: bytes.saturating_mul(1 << 20),
            source: Source::Variable,
        });
    }
    found.extend(rlimits());
    if let Ok(table) = std::fs::read_to_string("/proc/self/cgroup") {
        found.extend(cgroup_limits(&table, Path::new("/sys/fs/cgroup")));
    }
    found
}

/// The budget: the smallest limit, when any applies.
pub fn budget() -> Option<Limit> {
    limits().into_iter().min_by_key(|l| l.bytes)
}

#[cfg(unix)]
fn rlimits() -> Vec<Limit> {
    let soft = |resource| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given and nothing else.
        let ok = unsafe { libc::getrlimit(resource, &mut r) } == 0;
        (ok && r.rlim_cur != libc::RLIM_INFINITY && r.rlim_cur < UNLIMITED).then_some(r.rlim_cur)
    };
    let mut found = Vec::new();
    if let Some(bytes) = soft(libc::RLIMIT_DATA) {
        found.push(Limit {
            bytes,
            source: Source::RlimitData,
        });
    }
    if let Some(bytes) = soft(libc::RLIMIT_AS) {
        found.push(Limit {
            bytes: bytes.saturating_sub(reserved_address_space()),
            source: Source::RlimitAs,
        });
    }
    found
}

#[cfg(not(unix))]
fn rlimits() -> Vec<Limit> {
    Vec::new()
}

/// Address space that counts against `RLIMIT_AS` but holds no data: what is mapped now and not
/// resident (code, thread stacks, malloc's reserved arenas), plus what the worker threads will
/// reserve when they start (glibc reserves a 64 MiB arena for each, and a stack).
fn reserved_address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mapped_idle = kib("VmSize:").saturating_sub(kib("VmRSS:")) << 10;
    let threads = rayon::current_num_threads() as u64;
    mapped_idle + threads * (66 << 20)
}

/// The limits of the cgroups in `table` (the text of `/proc/self/cgroup`) under `root` (where the
/// cgroup file systems are mounted). A cgroup is bounded by its ancestors too: each level of the
/// path counts. Inside a container the path is usually `/` and the files at the mount's root are the
/// container's own.
pub fn cgroup_limits(table: &str, root: &Path) -> Vec<Limit> {
    let mut found = Vec::new();
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (dir, file, v2) = if id == "0" && controllers.is_empty() {
            (root.to_path_buf(), "memory.max", true)
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes", false)
        } else {
            continue;
        };
        let mut level = Some(Path::new(path.trim()));
        while let Some(p) = level {
            let file = dir.join(p.strip_prefix("/").unwrap_or(p)).join(file);
            let value = std::fs::read_to_string(&file).ok();
            if let Some(bytes) = value.and_then(|v| v.trim().parse::<u64>().ok()) {
                if bytes < UNLIMITED {
                    let source = if v2 {
                        Source::CgroupV2(file)
                    } else {
                        Source::CgroupV1(file)
                    };
                    found.push(Limit { bytes, source });
                }
            }
            level = p.parent();
        }
    }
    found
}

/// Peak bytes per input voxel: the CT as `f32` (then, after resampling frees it, the lung mask on
/// the CT's grid).
pub const BYTES_PER_INPUT_VOXEL: u64 = 4;

/// Peak bytes per voxel of the resampled grid while the lung mask is made, after the CT is freed
/// (HU, labels, masks; measured on noise, 9 on a chest; docs/robustness.md).
pub const BYTES_PER_GRID_VOXEL: u64 = 18;

/// Bytes of the program itself beside a case's arrays: code, buffers, and one network's inference
/// (0.63 / 0.73 GB for DenseNet-121 / -201 on the CPU comes after the CT and the grid are freed).
pub const PROGRAM_BYTES: u64 = 512 << 20;

/// The largest resampled grid (voxels) whose lung mask fits in `bytes`, at most
/// [`preprocess::MAX_GRID_VOXELS`].
pub fn grid_voxels_for_memory(bytes: u64) -> usize {
    let n = bytes.saturating_sub(PROGRAM_BYTES) / BYTES_PER_GRID_VOXEL;
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(preprocess::MAX_GRID_VOXELS)
}

/// The largest scan (voxels) whose case fits in `bytes`: while it is resampled, memory holds the
/// CT (4 bytes per voxel) and the grid (4 bytes per voxel of at most
/// [`grid_voxels_for_memory`]) beside the program.
pub fn voxels_for_memory(bytes: u64) -> usize {
    let grid = grid_voxels_for_memory(bytes) as u64 * 4;
    let n = bytes.saturating_sub(PROGRAM_BYTES + grid) / BYTES_PER_INPUT_VOXEL;
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The read limits of a run: `max_voxels` when given (`--max-voxels`, `CTGRADE_MAX_VOXELS`);
/// otherwise the default of [`ReadLimits`], lowered to what fits `budget` bytes.
pub fn read_limits(max_voxels: Option<usize>, budget: Option<u64>) -> ReadLimits {
    let mut limits = ReadLimits::default();
    if let Some(n) = max_voxels {
        limits.max_voxels = n;
    } else if let Some(bytes) = budget {
        limits.max_voxels = limits.max_voxels.min(voxels_for_memory(bytes));
    }
    limits
}

/// The largest resampled grid of a run: [`preprocess::MAX_GRID_VOXELS`], lowered to what `budget`
/// bytes hold. A small scan with huge voxels (a hostile or broken geometry) then fails with a
/// reason before preprocessing instead of being killed while its lung mask is made.
pub fn max_grid_voxels(budget: Option<u64>) -> usize {
    budget.map_or(preprocess::MAX_GRID_VOXELS, grid_voxels_for_memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cgroup_v2_limits_of_the_path_and_its_ancestors() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("memory.max"), "max\n");
        write(&r.join("a/memory.max"), "4294967296\n");
        write(&r.join("a/b/memory.max"), "max\n");
        let found = cgroup_limits("0::/a/b\n", r);
        assert_eq!(
            found,
            vec![Limit {
                bytes: 4 << 30,
                source: Source::CgroupV2(r.join("a/memory.max"))
            }]
        );
        // Inside a container: the namespace's root is the container's cgroup.
        write(&r.join("memory.max"), "1572864000\n");
        let found = cgroup_limits("0::/\n", r);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bytes, 1_572_864_000);
    }

    #[test]
    fn cgroup_v1_memory_controller_and_unlimited() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            &r.join("memory/docker/abc/memory.limit_in_bytes"),
            "2147483648\n",
        );
        write(
            &r.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        let table = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n1:name=systemd:/x\n";
        let found = cgroup_limits(table, r);
        assert_eq!(
            found,
            vec![Limit {
                bytes: 2 << 30,
                source: Source::CgroupV1(r.join("memory/docker/abc/memory.limit_in_bytes"))
            }]
        );
        assert!(cgroup_limits("garbage\n\n3:memory\n", r).is_empty());
    }

    #[test]
    fn budgets_follow_the_formulas() {
        let gib = 1u64 << 30;
        assert_eq!(
            grid_voxels_for_memory(3 * gib),
            ((3 * gib - PROGRAM_BYTES) / 18) as usize
        );
        assert_eq!(
            grid_voxels_for_memory(u64::MAX),
            preprocess::MAX_GRID_VOXELS
        );
        let grid = grid_voxels_for_memory(gib) as u64;
        assert_eq!(
            voxels_for_memory(gib),
            ((gib - PROGRAM_BYTES - 4 * grid) / 4) as usize
        );
        assert_eq!(voxels_for_memory(PROGRAM_BYTES), 0);
        assert_eq!(read_limits(Some(7), Some(gib)).max_voxels, 7);
        assert_eq!(read_limits(None, None), ReadLimits::default());
        assert_eq!(max_grid_voxels(None), preprocess::MAX_GRID_VOXELS);
    }
}
