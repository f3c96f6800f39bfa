//! Grand-challenge.org I/O: where the platform puts the CT scan, where it expects the answers.
//!
//! Conventions (see `docs` in the README and the platform's templates):
//! - socket layout: the "CT Image" socket is `/input/images/ct/<uuid>.mha`, with `/input/inputs.json`
//!   describing the upload (each socket object keyed `socket` today, `interface` in older jobs);
//!   JSON outputs are bare values at `/output/<slug>.json`;
//! - legacy layout ("Generic Medical Image"): images directly in `/input`, answers in
//!   `/output/results.json` in the evalutils shape.
//!
//! Locally, a folder with several scans is a batch: each case gets its own output folder and a
//! summary lists them all.

pub mod memory;
pub mod merge;
pub mod outputs;
pub mod run;
pub mod shard;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Folder of the CT image socket, relative to the input folder.
pub const CT_SOCKET_DIR: &str = "images/ct";
/// Folder of the optional lesion-map socket, relative to the input folder.
pub const LESION_SOCKET_DIR: &str = "images/covid-19-lesion-segmentation";

/// Errors of finding the inputs.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The input folder cannot be listed.
    #[error("cannot read the input folder {path}: {source}")]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No CT image in any known layout.
    #[error("no CT image found in {0}: expected images/ct/<case>.mha (grand-challenge), or .mha/.mhd/.nii/.nii.gz files directly in it")]
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

/// Lists the images directly in `dir`, sorted, skipping hidden files.
fn images_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    let entries = std::fs::read_dir(dir).map_err(|source| GcError::ReadDir {
        path: dir.to_path_buf(),
        source,
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

/// Finds the cases in an input folder: the socket layout when `images/ct/` exists, else the legacy
/// layout. Lesion maps are matched to cases by name, or taken as is when there is one of each.
pub fn discover(input: &Path) -> Result<Inputs, GcError> {
    let ct_dir = input.join(CT_SOCKET_DIR);
    let (layout, images) = if ct_dir.is_dir() {
        (Layout::Sockets, images_in(&ct_dir)?)
    } else {
        (Layout::Legacy, images_in(input)?)
    };
    if images.is_empty() {
        return Err(GcError::NoCases(input.to_path_buf()));
    }
    let lesion_dir = input.join(LESION_SOCKET_DIR);
    let lesions = if lesion_dir.is_dir() {
        images_in(&lesion_dir)?
    } else {
        Vec::new()
    };
    let mut warnings = Vec::new();
    let upload_names = read_inputs_json(&input.join("inputs.json")).unwrap_or_else(|reason| {
        warnings.push(format!(
            "ignoring {}: {reason}; the files on disk decide",
            input.join("inputs.json").display()
        ));
        Vec::new()
    });
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
            let upload_name = upload_names
                .iter()
                .find(|u| single_or_matching(u, file.as_deref(), upload_names.len()))
                .map(|u| u.name.clone());
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

/// An image socket value of `inputs.json`.
#[derive(Debug, Clone)]
struct UploadName {
    /// The stored file (`file` key), when given.
    file: Option<String>,
    /// The name the uploader gave.
    name: String,
}

fn single_or_matching(u: &UploadName, file: Option<&str>, count: usize) -> bool {
    match (&u.file, file) {
        (Some(f), Some(file)) => f.ends_with(file),
        _ => count == 1,
    }
}

/// Reads the CT socket's upload names from `inputs.json`: the socket values whose socket object
/// (keyed `socket`, or `interface` in older jobs) has the CT socket's `relative_path`. A missing
/// file is no names; a file that cannot be understood is an `Err` with the reason, which the
/// caller logs as a warning: the files on disk are what is graded.
fn read_inputs_json(path: &Path) -> Result<Vec<UploadName>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))?;
    let values = doc
        .as_array()
        .ok_or("not a list of socket values as the platform writes it")?;
    Ok(values
        .iter()
        .filter(|v| {
            let socket = v.get("socket").or_else(|| v.get("interface"));
            socket
                .and_then(|s| s.get("relative_path"))
                .and_then(Value::as_str)
                == Some(CT_SOCKET_DIR)
        })
        .filter_map(|v| {
            let name = v.get("image")?.get("name")?.as_str()?.to_string();
            let file = v.get("file").and_then(Value::as_str).map(str::to_string);
            Some(UploadName { file, name })
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
