//! Optional per-layer-type timing of the CPU kernels, for `ctgrade bench` with `CTGRADE_PROFILE=1`.
//!
//! Off by default: one relaxed atomic load per kernel call. When on, each kernel call adds its wall
//! time and the process CPU time (user + system, all threads) to its kind's totals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// What a timed span computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The stem convolution (conv0 with norm0 folded, ReLU fused).
    Stem,
    /// Max pooling (pool0).
    MaxPool,
    /// 1x1x1 convolutions inside dense layers, with norm1 + ReLU applied while packing.
    Bottleneck,
    /// 3x3x3 convolutions inside dense layers.
    Conv3x3,
    /// Copying a block's input into its preallocated feature buffer (the only concatenation left).
    Concat,
    /// Transition norm + ReLU + average pool, fused.
    TransitionPool,
    /// Other 1x1x1 convolutions (transitions).
    Pointwise,
    /// Other convolutions.
    ConvOther,
    /// Stand-alone per-channel scale + shift + ReLU (norm5).
    BnRelu,
    /// Global average pooling.
    GlobalPool,
}

const KINDS: [(Kind, &str); 10] = [
    (Kind::Stem, "stem conv 7x7x7/2 (+BN+ReLU)"),
    (Kind::MaxPool, "max pool"),
    (Kind::Bottleneck, "dense 1x1x1 conv (+BN+ReLU)"),
    (Kind::Conv3x3, "dense 3x3x3 conv"),
    (Kind::Concat, "block input copy (concat)"),
    (Kind::TransitionPool, "transition BN+ReLU+avg pool"),
    (Kind::Pointwise, "transition 1x1x1 conv"),
    (Kind::ConvOther, "other conv"),
    (Kind::BnRelu, "BN+ReLU (norm5)"),
    (Kind::GlobalPool, "global avg pool"),
];

struct Totals {
    wall_ns: [AtomicU64; KINDS.len()],
    cpu_ns: [AtomicU64; KINDS.len()],
    calls: [AtomicU64; KINDS.len()],
}

static TOTALS: Totals = Totals {
    wall_ns: [const { AtomicU64::new(0) }; KINDS.len()],
    cpu_ns: [const { AtomicU64::new(0) }; KINDS.len()],
    calls: [const { AtomicU64::new(0) }; KINDS.len()],
};
static ON: OnceLock<AtomicBool> = OnceLock::new();

fn on() -> &'static AtomicBool {
    ON.get_or_init(|| {
        let v = std::env::var("CTGRADE_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
        AtomicBool::new(v)
    })
}

/// Whether profiling is on (`CTGRADE_PROFILE` set to something other than `0`).
pub fn enabled() -> bool {
    on().load(Ordering::Relaxed)
}

fn index(kind: Kind) -> usize {
    KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0)
}

/// CPU time (user + system, all threads) this process has used, in seconds (`None` off Unix).
#[cfg(unix)]
pub fn process_cpu_s() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// CPU time this process has used (not measured off Unix).
#[cfg(not(unix))]
pub fn process_cpu_s() -> Option<f64> {
    None
}

/// A running span; adds its time to its kind's totals when dropped.
pub(crate) struct Span {
    kind: Kind,
    start: Option<(Instant, f64)>,
}

/// Starts timing `kind` (a no-op unless profiling is on).
pub(crate) fn span(kind: Kind) -> Span {
    let start = enabled().then(|| (Instant::now(), process_cpu_s().unwrap_or(0.0)));
    Span { kind, start }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((t, c)) = self.start {
            let i = index(self.kind);
            let cpu = process_cpu_s().unwrap_or(c) - c;
            TOTALS.wall_ns[i].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            TOTALS.cpu_ns[i].fetch_add((cpu.max(0.0) * 1e9) as u64, Ordering::Relaxed);
            TOTALS.calls[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Clears the totals (e.g. after a warm-up forward).
pub fn reset() {
    for i in 0..KINDS.len() {
        TOTALS.wall_ns[i].store(0, Ordering::Relaxed);
        TOTALS.cpu_ns[i].store(0, Ordering::Relaxed);
        TOTALS.calls[i].store(0, Ordering::Relaxed);
    }
}

/// A table of the totals divided by `forwards`: wall and CPU seconds per kind and their shares.
pub fn report(forwards: usize) -> String {
    let n = forwards.max(1) as f64;
    let load = |a: &[AtomicU64; KINDS.len()], i: usize| a[i].load(Ordering::Relaxed) as f64 / n;
    let wall: f64 = (0..KINDS.len()).map(|i| load(&TOTALS.wall_ns, i)).sum();
    let cpu: f64 = (0..KINDS.len()).map(|i| load(&TOTALS.cpu_ns, i)).sum();
    let mut out = format!(
        "{:<32} {:>8} {:>6} {:>8} {:>6} {:>6}\n",
        "per forward", "wall s", "wall%", "cpu s", "cpu%", "calls"
    );
    for (i, (_, name)) in KINDS.iter().enumerate() {
        let (w, c) = (load(&TOTALS.wall_ns, i), load(&TOTALS.cpu_ns, i));
        if load(&TOTALS.calls, i) == 0.0 {
            continue;
        }
        out += &format!(
            "{name:<32} {:>8.3} {:>5.1}% {:>8.3} {:>5.1}% {:>6.0}\n",
            w * 1e-9,
            100.0 * w / wall.max(1.0),
            c * 1e-9,
            100.0 * c / cpu.max(1.0),
            load(&TOTALS.calls, i)
        );
    }
    out += &format!(
        "{:<32} {:>8.3} {:>6} {:>8.3}\n",
        "total (kernels)",
        wall * 1e-9,
        "",
        cpu * 1e-9
    );
    out
}
