//! Grand-challenge.org I/O: where the platform puts the CT scan, where it expects the answers.
//!
//! Conventions (see `docs` in the README and the platform's templates):
//! - socket layout: the "CT Image" socket is `/input/images/ct/<uuid>.mha`, with `/input/inputs.json`
//!   describing the upload (each socket object keyed `socket` today, `interface` in older jobs);
//!   JSON outputs are bare values at `/output/<slug>.json`;
//! - legacy layout ("Generic Medical Image"): images directly in `/input`, answers in
//!   `/output/results.json` in the evalutils shape.
//!
//! Images directly in a folder (the legacy layout, one scan or many) and sharded runs are a batch:
//! each case gets its own output folder with the socket files, and `summary.json`/`.csv` list
//! them all (the legacy layout also writes `results.json`). Only the socket layout writes the
//! answers directly into the output folder.

pub mod case;
pub mod memory;
pub mod merge;
pub mod options;
pub mod outputs;
pub mod run;
pub mod shard;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::volume::dicom;

/// Folder of the CT image socket, relative to the input folder.
pub const CT_SOCKET_DIR: &str = "images/ct";
/// Folder of the optional lesion-map socket, relative to the input folder.
pub const LESION_SOCKET_DIR: &str = "images/covid-19-lesion-segmentation";

/// Errors of finding the inputs.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The input folder cannot be listed.
    #[error("cannot read the input folder {path}: {error}")]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: std::io::Error,
    },
    /// No CT image in any known layout.
    #[error("no CT image found in {0}: expected images/ct/<case>.mha or a DICOM series in images/ct/ (grand-challenge), or .mha/.mhd/.nii/.nii.gz files or DICOM series folders directly in it")]
    NoCases(PathBuf),
    /// Two files would give the same case name.
    #[error("two input files share the case name {name:?}: {first} and {second}")]
    DuplicateCase {
        /// The case name.
        name: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
}

/// How the inputs were laid out, which decides how the answers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `images/ct/*.mha` (the platform's sockets).
    Sockets,
    /// Images directly in the input folder (legacy "Generic Medical Image"; `results.json`).
    Legacy,
}

/// One scan to grade.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The case name: the image's file name without its extension.
    pub name: String,
    /// The CT image.
    pub image: PathBuf,
    /// The lesion map on the same grid, when one was given.
    pub lesion: Option<PathBuf>,
    /// The file name the uploader gave (from `inputs.json`), for logs.
    pub upload_name: Option<String>,
}

/// What `discover` found.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The layout.
    pub layout: Layout,
    /// The cases, sorted by name.
    pub cases: Vec<Case>,
    /// What was odd without stopping the run (an `inputs.json` that cannot be understood).
    pub warnings: Vec<String>,
}

/// Image file extensions ctgrade reads, longest first.
const EXTENSIONS: [&str; 4] = [".nii.gz", ".mha", ".mhd", ".nii"];

/// The case name of an image path (file name without a known image extension), or `None` when it is
/// not an image ctgrade reads.
pub fn case_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let lower = file.to_ascii_lowercase();
    EXTENSIONS
        .iter()
        .find(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
        .map(|ext| file[..file.len() - ext.len()].to_string())
}

/// Lists the image files directly in `dir` with their case names, skipping hidden files.
fn images_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    let entries = std::fs::read_dir(dir).map_err(|error| GcError::ReadDir {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !path.is_file() {
            continue;
        }
        if let Some(name) = case_name(&path) {
            found.push((name, path));
        }
    }
    Ok(found)
}

/// Lists the sub-folders of `dir` that hold a DICOM series (files recognised by content), each a
/// case named after its folder, skipping hidden folders.
fn series_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    let entries = std::fs::read_dir(dir).map_err(|error| GcError::ReadDir {
        path: dir.to_path_buf(),
        error,
    })?;
    Ok(entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir() && dicom::folder_has_dicom(p))
        .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
        .collect())
}

/// Sorts cases by name and refuses two with the same name.
fn sorted_unique(mut found: Vec<(String, PathBuf)>) -> Result<Vec<(String, PathBuf)>, GcError> {
    found.sort();
    for pair in found.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(GcError::DuplicateCase {
                name: pair[0].0.clone(),
                first: pair[0].1.clone(),
                second: pair[1].1.clone(),
            });
        }
    }
    Ok(found)
}

/// Finds the cases in an input folder.
/// - Socket layout, when `images/ct/` exists or `inputs.json` names a DICOM image set: the image
///   files in `images/ct/`, or the DICOM series in a CT socket's folder (one case, named after the
///   socket value's image `pk`, else the folder).
/// - Otherwise (local batches, the legacy layout): the image files directly in the folder, each
///   sub-folder holding a DICOM series (a case named after the folder), or the folder itself when
///   it holds a DICOM series.
///
/// Lesion maps are matched to cases by name, or taken as is when there is one of each.
pub fn discover(input: &Path) -> Result<Inputs, GcError> {
    let mut warnings = Vec::new();
    let sockets = read_inputs_json(&input.join("inputs.json")).unwrap_or_else(|reason| {
        warnings.push(format!(
            "ignoring {}: {reason}; the files on disk decide",
            input.join("inputs.json").display()
        ));
        Vec::new()
    });
    let ct_dir = input.join(CT_SOCKET_DIR);
    // The CT socket folders: images/ct, and any DICOM image set socket inputs.json names.
    let mut socket_dirs: Vec<(PathBuf, Option<&SocketValue>)> = Vec::new();
    for s in sockets.iter().filter(|s| s.is_dicom_set()) {
        let dir = input.join(&s.relative_path);
        if dir.is_dir() && !socket_dirs.iter().any(|(d, _)| *d == dir) {
            socket_dirs.push((dir, Some(s)));
        }
    }
    if ct_dir.is_dir() && !socket_dirs.iter().any(|(d, _)| *d == ct_dir) {
        let value = sockets.iter().find(|s| s.relative_path == CT_SOCKET_DIR);
        socket_dirs.push((ct_dir, value));
    }
    let (layout, images) = if socket_dirs.is_empty() {
        let mut found = images_in(input)?;
        found.extend(series_in(input)?);
        if found.is_empty() && dicom::folder_has_dicom(input) {
            let name = input
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "series".into());
            found.push((name, input.to_path_buf()));
        }
        (Layout::Legacy, sorted_unique(found)?)
    } else {
        let mut found = Vec::new();
        for (dir, value) in &socket_dirs {
            let files = images_in(dir)?;
            if files.is_empty() && dicom::folder_has_dicom(dir) {
                let name = value
                    .and_then(|v| v.image_pk.clone())
                    .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "series".into());
                found.push((name, dir.clone()));
            } else {
                found.extend(files);
            }
        }
        (Layout::Sockets, sorted_unique(found)?)
    };
    if images.is_empty() {
        return Err(GcError::NoCases(input.to_path_buf()));
    }
    let lesion_dir = input.join(LESION_SOCKET_DIR);
    let lesions = if lesion_dir.is_dir() {
        sorted_unique(images_in(&lesion_dir)?)?
    } else {
        Vec::new()
    };
    let ct_values: Vec<&SocketValue> = sockets.iter().filter(|s| s.is_ct()).collect();
    let single = images.len() == 1 && lesions.len() == 1;
    let cases = images
        .into_iter()
        .map(|(name, image)| {
            let lesion = if single {
                Some(lesions[0].1.clone())
            } else {
                lesions
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, p)| p.clone())
            };
            let file = image.file_name().map(|f| f.to_string_lossy().into_owned());
            let upload_name = ct_values
                .iter()
                .find(|u| single_or_matching(u, file.as_deref(), ct_values.len()))
                .and_then(|u| u.image_name.clone());
            Case {
                name,
                image,
                lesion,
                upload_name,
            }
        })
        .collect();
    Ok(Inputs {
        layout,
        cases,
        warnings,
    })
}

/// The kind grand-challenge gives a socket holding a DICOM series.
pub const DICOM_SET_KIND: &str = "DICOM Image Set";

/// A socket value of `inputs.json`: what ctgrade needs of it.
#[derive(Debug, Clone)]
struct SocketValue {
    /// The socket's folder or file, relative to the input folder.
    relative_path: String,
    /// The socket's kind ("Image", "DICOM Image Set", ...).
    kind: String,
    /// The stored file (`file` key), when given.
    file: Option<String>,
    /// The image's `pk`.
    image_pk: Option<String>,
    /// The name the uploader gave the image.
    image_name: Option<String>,
}

impl SocketValue {
    fn is_dicom_set(&self) -> bool {
        self.kind == DICOM_SET_KIND && self.relative_path != LESION_SOCKET_DIR
    }

    fn is_ct(&self) -> bool {
        self.relative_path == CT_SOCKET_DIR || self.is_dicom_set()
    }
}

fn single_or_matching(u: &SocketValue, file: Option<&str>, count: usize) -> bool {
    match (&u.file, file) {
        (Some(f), Some(file)) => f.ends_with(file),
        _ => count == 1,
    }
}

/// Reads the socket values of `inputs.json`: each socket object keyed `socket`, or `interface` in
/// older jobs; values without a socket object or relative path are skipped. A missing file is no
/// values; a file that cannot be understood is an `Err` with the reason, which the caller logs as a
/// warning: the files on disk are what is graded.
fn read_inputs_json(path: &Path) -> Result<Vec<SocketValue>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))?;
    let values = doc
        .as_array()
        .ok_or("not a list of socket values as the platform writes it")?;
    let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    Ok(values
        .iter()
        .filter_map(|v| {
            let socket = v.get("socket").or_else(|| v.get("interface"))?;
            let image = v.get("image");
            Some(SocketValue {
                relative_path: text_of(socket.get("relative_path"))?,
                kind: text_of(socket.get("kind")).unwrap_or_default(),
                file: text_of(v.get("file")),
                image_pk: text_of(image.and_then(|i| i.get("pk"))),
                image_name: text_of(image.and_then(|i| i.get("name"))),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_strip_known_extensions() {
        assert_eq!(
            case_name(Path::new("/a/b/scan.mha")).as_deref(),
            Some("scan")
        );
        assert_eq!(case_name(Path::new("x.y.nii.gz")).as_deref(), Some("x.y"));
        assert_eq!(case_name(Path::new("CASE.MHD")).as_deref(), Some("CASE"));
        assert_eq!(case_name(Path::new("scan.raw")), None);
        assert_eq!(case_name(Path::new(".mha")), None);
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn socket_layout_with_inputs_json_and_lesion() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("images/ct/1b2c.mha"));
        touch(&root.join("images/covid-19-lesion-segmentation/9f9f.mha"));
        let json = r#"[{"interface": {"slug": "ct-image", "kind": "Image", "super_kind": "Image",
            "relative_path": "images/ct"}, "value": null, "file": null,
            "image": {"pk": "1b2c", "name": "patient_017.mha"}, "pk": 3}]"#;
        std::fs::write(root.join("inputs.json"), json).unwrap();
        let found = discover(root).unwrap();
        assert_eq!(found.layout, Layout::Sockets);
        assert_eq!(found.cases.len(), 1);
        let case = &found.cases[0];
        assert_eq!(case.name, "1b2c");
        assert_eq!(case.upload_name.as_deref(), Some("patient_017.mha"));
        assert!(case.lesion.as_ref().unwrap().ends_with("9f9f.mha"));
    }

    #[test]
    fn legacy_layout_batch_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.mha", "a.nii.gz", "notes.txt", ".hidden.mha"] {
            touch(&dir.path().join(f));
        }
        let found = discover(dir.path()).unwrap();
        assert_eq!(found.layout, Layout::Legacy);
        let names: Vec<_> = found.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no CT image found"), "{err}");
        touch(&dir.path().join("a.mha"));
        touch(&dir.path().join("a.nii"));
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("share the case name \"a\""), "{err}");
    }

    #[test]
    fn both_key_spellings_and_unreadable_inputs_json() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("images/ct/1b2c.mha"));
        // Today's shape (`socket`), with fields ctgrade does not need and another socket first.
        let today = r#"[{"pk": "9e0c", "socket": {"slug": "age-in-months", "kind": "Integer",
            "super_kind": "Value", "relative_path": "age-in-months.json"}, "value": 60,
            "file": null, "image": null},
            {"pk": "77aa", "socket": {"title": "CT Image", "slug": "ct-image", "kind": "Image",
            "super_kind": "Image", "relative_path": "images/ct", "description": "",
            "look_up_table": null, "overlay_segments": []}, "value": null, "file": null,
            "image": {"pk": "1b2c", "name": "patient_017.mha"}}]"#;
        let old = today.replace("\"socket\"", "\"interface\"");
        for json in [today.to_string(), old] {
            std::fs::write(root.join("inputs.json"), json).unwrap();
            let found = discover(root).unwrap();
            assert!(found.warnings.is_empty(), "{:?}", found.warnings);
            assert_eq!(
                found.cases[0].upload_name.as_deref(),
                Some("patient_017.mha")
            );
        }
        // Not understood: a warning, and the file on disk is still the case.
        for bad in ["{", "{\"a\": 1}", "[{\"socket\": 3}]"] {
            std::fs::write(root.join("inputs.json"), bad).unwrap();
            let found = discover(root).unwrap();
            assert_eq!(found.cases.len(), 1, "{bad}");
            assert_eq!(found.cases[0].upload_name, None);
            if bad != "[{\"socket\": 3}]" {
                assert!(
                    found.warnings[0].contains("inputs.json"),
                    "{:?}",
                    found.warnings
                );
            }
        }
    }
}
