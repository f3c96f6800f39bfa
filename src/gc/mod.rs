//! Grand-challenge.org I/O: where the platform puts the CT scan, where it expects the answers.
//!
//! Conventions (see `docs` in the README and the platform's templates):
//! - socket layout: the "CT Image" socket is `/input/images/ct/<uuid>.mha`, with `/input/inputs.json`
//!   describing the upload; JSON outputs are bare values at `/output/<slug>.json`;
//! - legacy layout ("Generic Medical Image"): images directly in `/input`, answers in
//!   `/output/results.json` in the evalutils shape.
//!
//! Locally, a folder with several scans is a batch: each case gets its own output folder and a
//! summary lists them all.

pub mod outputs;

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// `inputs.json` exists but is not the platform's format.
    #[error("{path} is not a grand-challenge inputs.json: {reason}")]
    InputsJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
    let upload_names = read_inputs_json(input)?;
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
    Ok(Inputs { layout, cases })
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

#[derive(Deserialize)]
struct SocketValue {
    interface: Interface,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    image: Option<ImageRef>,
}

#[derive(Deserialize)]
struct Interface {
    #[serde(default)]
    relative_path: Option<String>,
}

#[derive(Deserialize)]
struct ImageRef {
    #[serde(default)]
    name: Option<String>,
}

/// Reads the CT socket's upload names from `inputs.json`, if the file exists.
fn read_inputs_json(input: &Path) -> Result<Vec<UploadName>, GcError> {
    let path = input.join("inputs.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(GcError::InputsJson {
                path,
                reason: e.to_string(),
            })
        }
    };
    let values: Vec<SocketValue> =
        serde_json::from_str(&text).map_err(|e| GcError::InputsJson {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok(values
        .into_iter()
        .filter(|v| v.interface.relative_path.as_deref() == Some(CT_SOCKET_DIR))
        .filter_map(|v| {
            let name = v.image.and_then(|i| i.name)?;
            Some(UploadName { file: v.file, name })
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
        std::fs::write(dir.path().join("inputs.json"), "{").unwrap();
        std::fs::remove_file(dir.path().join("a.nii")).unwrap();
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("inputs.json"), "{err}");
    }
}
