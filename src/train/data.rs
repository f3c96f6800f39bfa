//! Training data: finding the labelled scans, preprocessing them once (kept in memory, and cached
//! on disk so a resumed run skips the work), the stratified train/validation split, and the
//! class-balanced validation list.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use super::labels::LabelRow;
use super::lesions::LesionMaps;
use super::TrainError;
use crate::gc::case_name;
use crate::preprocess::{self, ChannelLayout, InputSpec, PAD_HU};
use crate::rng::Rng;
use crate::volume;

/// A labelled scan on disk.
#[derive(Debug, Clone)]
pub struct CaseFile {
    /// The label row.
    pub label: LabelRow,
    /// The CT.
    pub ct: PathBuf,
    /// The lesion map, if any.
    pub lesion: Option<PathBuf>,
}

/// Matches label rows to the scans in `data` (`<case>.mha`, `.mhd`, `.nii`, `.nii.gz`, or a
/// folder `<case>/` of DICOM files, directly in it or in `images/ct/`). Every labelled case must
/// have exactly one scan; scans without a label are ignored.
pub fn find_cases(data: &Path, labels: &[LabelRow]) -> Result<Vec<CaseFile>, TrainError> {
    let ct_dir = if data.join("images/ct").is_dir() {
        data.join("images/ct")
    } else {
        data.to_path_buf()
    };
    let entries = std::fs::read_dir(&ct_dir).map_err(|e| TrainError::Data {
        path: ct_dir.clone(),
        msg: format!("cannot list the folder: {e}"),
    })?;
    let mut scans: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            if let Some(name) = case_name(&path) {
                scans.entry(name).or_default().push(path);
            }
        } else if path.is_dir() && volume::dicom::folder_has_dicom(&path) {
            // A DICOM series folder is the case named after the folder.
            if let Some(name) = path.file_name() {
                let name = name.to_string_lossy().into_owned();
                scans.entry(name).or_default().push(path);
            }
        }
    }
    let mut out = Vec::with_capacity(labels.len());
    let mut missing = Vec::new();
    for row in labels {
        match scans.get(&row.case).map(Vec::as_slice) {
            Some([one]) => out.push(CaseFile {
                label: row.clone(),
                ct: one.clone(),
                lesion: row.lesion.as_ref().map(|l| {
                    if l.is_absolute() {
                        l.clone()
                    } else {
                        data.join(l)
                    }
                }),
            }),
            Some(many) => {
                return Err(TrainError::Data {
                    path: ct_dir.clone(),
                    msg: format!(
                        "case {} has {} scans ({})",
                        row.case,
                        many.len(),
                        many.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
            None => missing.push(row.case.clone()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(5).cloned().collect();
        return Err(TrainError::Data {
            path: ct_dir,
            msg: format!(
                "no scan (.mha, .mhd, .nii, .nii.gz or DICOM folder) for {} labelled case(s): {}{}",
                missing.len(),
                shown.join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            ),
        });
    }
    Ok(out)
}

/// A preprocessed case, stored without duplicate channels.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Case name.
    pub case: String,
    /// CO-RADS 1..5.
    pub co_rads: u8,
    /// Patient (the case when none is given).
    pub group: String,
    /// The distinct channels: the CT (and the lesion map), `(channels, D, H, W)`, x fastest.
    pub data: Vec<f32>,
    /// Number of channels in `data` (1 for the CT alone, 2 with a lesion map).
    pub channels: usize,
    /// (D, H, W).
    pub dims: [usize; 3],
    /// Channel layout of the network input.
    pub layout: ChannelLayout,
}

impl Sample {
    /// Padding value of each stored channel (what the CT's padding HU becomes, and 0).
    pub fn pad_values(spec: &InputSpec) -> [f32; 2] {
        let [lo, hi] = spec.hu_window;
        [(PAD_HU.clamp(lo, hi) - lo) / (hi - lo), 0.0]
    }

    /// The network input `(3, D, H, W)` from (possibly augmented) stored channels.
    pub fn expand(&self, data: &[f32]) -> Vec<f32> {
        let vol: usize = self.dims.iter().product();
        let mut out = Vec::with_capacity(3 * vol);
        match self.layout {
            ChannelLayout::CtX3 => {
                for _ in 0..3 {
                    out.extend_from_slice(&data[..vol]);
                }
            }
            ChannelLayout::CtLesionZeros => {
                out.extend_from_slice(&data[..2 * vol]);
                out.resize(3 * vol, 0.0);
            }
        }
        out
    }

    /// The training input and its channel count: for `ct_x3` the CT once (the training network
    /// folds the repetition into its stem, see [`super::net::TrainNet::forward_train`]),
    /// otherwise the three channels.
    pub fn train_input(&self, data: &[f32]) -> (Vec<f32>, usize) {
        match self.layout {
            ChannelLayout::CtX3 => {
                let vol: usize = self.dims.iter().product();
                (data[..vol].to_vec(), 1)
            }
            ChannelLayout::CtLesionZeros => (self.expand(data), 3),
        }
    }
}

/// Stacks inputs of `channels` channels into an `(N, channels, D, H, W)` tensor on `device`.
pub fn batch_tensor(
    inputs: Vec<Vec<f32>>,
    channels: usize,
    dims: [usize; 3],
    device: &candle_core::Device,
) -> Result<Tensor, TrainError> {
    let n = inputs.len();
    let flat: Vec<f32> = inputs.into_iter().flatten().collect();
    Ok(Tensor::from_vec(
        flat,
        (n, channels, dims[0], dims[1], dims[2]),
        device,
    )?)
}

/// A short key of what a cached input depends on: the specification and the files' identity.
fn cache_key(spec: &InputSpec, case: &CaseFile, maps: Option<&LesionMaps>) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_string(spec).unwrap_or_default());
    // A computed lesion map is named by the model that computes it.
    if let (None, Some(m)) = (&case.lesion, maps) {
        h.update(m.cache_identity());
    }
    let identity = |h: &mut Sha256, p: &Path| {
        h.update(p.to_string_lossy().as_bytes());
        if let Ok(m) = std::fs::metadata(p) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified() {
                if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
                    h.update(d.as_nanos().to_le_bytes());
                }
            }
        }
    };
    for p in std::iter::once(&case.ct).chain(case.lesion.as_ref()) {
        identity(&mut h, p);
        // A DICOM folder: its files' identities too (the folder's own time changes only when
        // files are added or removed, not rewritten).
        if let Ok(entries) = std::fs::read_dir(p) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in &files {
                identity(&mut h, f);
            }
        }
    }
    ctgrade_fsio::hex(&h.finalize()[..8])
}

fn cache_path(dir: &Path, case: &str, key: &str) -> PathBuf {
    let safe: String = case
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}-{key}.safetensors"))
}

/// Preprocesses every case (or reads it from `cache`), reporting progress through `log`. A case
/// without a lesion map gets one from `maps` when given.
pub fn load_samples(
    cases: &[CaseFile],
    spec: &InputSpec,
    maps: Option<&LesionMaps>,
    cache: Option<&Path>,
    mut log: impl FnMut(String),
) -> Result<Vec<Sample>, TrainError> {
    if let Some(dir) = cache {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Data {
            path: dir.to_path_buf(),
            msg: format!("cannot create the cache folder: {e}"),
        })?;
    }
    let [_, d, h, w] = spec.shape();
    let vol = d * h * w;
    let stored = spec.channels.distinct();
    let start = Instant::now();
    let (mut cached, mut computed) = (0, 0);
    let mut samples = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let path = cache.map(|dir| cache_path(dir, &case.label.case, &cache_key(spec, case, maps)));
        let from_cache = path
            .as_ref()
            .filter(|p| p.is_file())
            .and_then(|p| candle_core::safetensors::load(p, &candle_core::Device::Cpu).ok())
            .and_then(|m| m.get("input").cloned())
            .filter(|t| t.dims() == [stored, d, h, w])
            .and_then(|t| t.flatten_all().ok()?.to_vec1::<f32>().ok());
        let data = match from_cache {
            Some(data) => {
                cached += 1;
                data
            }
            None => {
                let data_err = |path: &Path, msg: String| TrainError::Data {
                    path: path.to_path_buf(),
                    msg,
                };
                let ct = volume::read(&case.ct).map_err(|e| data_err(&case.ct, e.to_string()))?;
                let lesion = match (&case.lesion, maps) {
                    (Some(p), _) => Some(volume::read(p).map_err(|e| data_err(p, e.to_string()))?),
                    (None, Some(m)) => {
                        computed += 1;
                        Some(m.compute(&ct, &case.ct)?)
                    }
                    (None, None) => None,
                };
                let pre = preprocess::preprocess(&ct, lesion.as_ref(), spec)
                    .map_err(|e| data_err(&case.ct, format!("preprocessing failed: {e}")))?;
                let data = pre.input[..stored * vol].to_vec();
                if let Some(p) = &path {
                    let t =
                        Tensor::from_slice(&data, (stored, d, h, w), &candle_core::Device::Cpu)?;
                    ctgrade_fsio::write_atomic_by_path(p, "", |tmp| {
                        candle_core::safetensors::save(&HashMap::from([("input", t)]), tmp)
                    })
                    .map_err(|e| match e {
                        ctgrade_fsio::ByPathError::Fill(e) => TrainError::from(e),
                        ctgrade_fsio::ByPathError::Io(e) => data_err(p, e.to_string()),
                    })?;
                }
                data
            }
        };
        samples.push(Sample {
            case: case.label.case.clone(),
            co_rads: case.label.co_rads,
            group: case.label.group().to_string(),
            data,
            channels: stored,
            dims: [d, h, w],
            layout: spec.channels,
        });
        let done = i + 1;
        if done % 25 == 0 || done == cases.len() {
            let maps = if computed > 0 {
                format!(", {computed} lesion map(s) computed")
            } else {
                String::new()
            };
            log(format!(
                "preprocessed {done}/{} cases ({cached} from the cache{maps}) in {:.0} s",
                cases.len(),
                start.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(samples)
}

/// Indices of the training and validation cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training cases.
    pub train: Vec<usize>,
    /// Validation cases.
    pub val: Vec<usize>,
}

/// Splits cases by patient, stratified by CO-RADS: the patients of each stratum (a patient's
/// stratum is its highest CO-RADS) are shuffled with `seed` and `round(fraction * n)` of them go
/// to validation, at least one and never all when the stratum has two or more patients.
pub fn split(samples: &[Sample], fraction: f64, seed: u64) -> Split {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        groups.entry(s.group.as_str()).or_default().push(i);
    }
    let mut strata: BTreeMap<u8, Vec<&Vec<usize>>> = BTreeMap::new();
    for members in groups.values() {
        let top = members
            .iter()
            .map(|&i| samples[i].co_rads)
            .max()
            .unwrap_or(1);
        strata.entry(top).or_default().push(members);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (c, mut patients) in strata {
        Rng::stream(seed, 0x5EED_0000 + c as u64).shuffle(&mut patients);
        let n = patients.len();
        let mut k = (fraction * n as f64).round() as usize;
        if fraction > 0.0 && n >= 2 {
            k = k.clamp(1, n - 1);
        }
        for (j, members) in patients.into_iter().enumerate() {
            if j < k {
                val.extend(members);
            } else {
                train.extend(members);
            }
        }
    }
    train.sort_unstable();
    val.sort_unstable();
    Split { train, val }
}

/// The class-balanced validation list: every CO-RADS class present in `val` contributes the
/// same number of entries (the largest class's size), smaller classes repeating their cases.
pub fn balanced(samples: &[Sample], val: &[usize]) -> Vec<usize> {
    let mut by_class: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    for &i in val {
        by_class.entry(samples[i].co_rads).or_default().push(i);
    }
    let m = by_class.values().map(Vec::len).max().unwrap_or(0);
    by_class
        .values()
        .flat_map(|cases| cases.iter().copied().cycle().take(m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(case: &str, co_rads: u8, group: &str) -> Sample {
        Sample {
            case: case.into(),
            co_rads,
            group: group.into(),
            data: Vec::new(),
            channels: 1,
            dims: [0; 3],
            layout: ChannelLayout::CtX3,
        }
    }

    #[test]
    fn split_is_stratified_and_keeps_patients_together() {
        let mut s = Vec::new();
        for c in 1..=5u8 {
            for i in 0..8 {
                // Two scans per patient.
                s.push(sample(&format!("c{c}-{i}"), c, &format!("p{c}-{}", i / 2)));
            }
        }
        let sp = split(&s, 0.25, 3);
        assert_eq!(sp.train.len() + sp.val.len(), s.len());
        for c in 1..=5u8 {
            // 4 patients per class: 1 to validation (round(0.25 * 4)), 2 scans.
            assert_eq!(sp.val.iter().filter(|&&i| s[i].co_rads == c).count(), 2);
        }
        for &v in &sp.val {
            assert!(sp.train.iter().all(|&t| s[t].group != s[v].group));
        }
        assert_eq!(split(&s, 0.25, 3), sp);
        assert_ne!(split(&s, 0.25, 4), sp);
    }

    #[test]
    fn balanced_repeats_small_classes() {
        let s = vec![
            sample("a", 1, "a"),
            sample("b", 1, "b"),
            sample("c", 3, "c"),
        ];
        assert_eq!(balanced(&s, &[0, 1, 2]), vec![0, 1, 2, 2]);
    }
}
