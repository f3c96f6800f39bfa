//! The cases folder and the sockets of a job: which files are cases, the CT input socket value
//! of a case, and reading a job's output sockets back.

use super::*;

/// One case of the cases folder.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseFile {
    /// The file, or the folder of a DICOM series.
    pub path: PathBuf,
    /// Its file or folder name (the upload's name: `image.name` of the job).
    pub name: String,
    /// What it is, which decides the socket it is provisioned to.
    pub kind: CaseKind,
}

/// What a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKind {
    /// An image file with this extension, one of [`CASE_EXTENSIONS`]: the CT image socket.
    Image(&'static str),
    /// A folder holding a DICOM series: the CT DICOM image set socket, one file per slice.
    DicomSeries,
}

/// Whether `path` is a DICOM Part 10 file: the `DICM` marker at byte 128, whatever its name (the
/// platform and the algorithm recognise DICOM files the same way).
pub(super) fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    path.is_file()
        && fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
        && &head[128..] == b"DICM"
}

/// The DICOM files directly in `dir`, sorted by name.
pub(super) fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_dicom_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Lists the cases of `dir`, sorted by name; hidden entries are skipped. A case is a `.mha`,
/// `.nii.gz` or `.nii` file, or a folder holding DICOM files (a series); anything else is an error
/// naming it, before any container starts.
pub fn list_cases(dir: &Path) -> Result<Vec<CaseFile>> {
    let mut cases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if path.is_dir() {
            if dicom_files(&path)?.is_empty() {
                return Err(SimulateError::Case {
                    path,
                    reason: "a folder without DICOM files (none has the DICM marker at byte 128): \
                             a case is an image file or a folder holding one DICOM series"
                        .into(),
                });
            }
            cases.push(CaseFile {
                path,
                name,
                kind: CaseKind::DicomSeries,
            });
            continue;
        }
        let Some(extension) = CASE_EXTENSIONS
            .iter()
            .find(|e| lower.len() > e.len() && lower.ends_with(*e))
        else {
            let reason = if lower.ends_with(".mhd") {
                "a .mhd header with a separate data file cannot be provisioned as one socket \
                 file; convert it to .mha"
            } else {
                "not a case image: simulate takes .mha, .nii.gz and .nii files"
            };
            return Err(SimulateError::Case {
                path,
                reason: reason.into(),
            });
        };
        cases.push(CaseFile {
            path,
            name,
            kind: CaseKind::Image(extension),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    crate::case::check_unique(&cases, |c| &c.name, |c| &c.name)?;
    if cases.is_empty() {
        return Err(SimulateError::Usage(format!(
            "{}: no cases (.mha, .nii.gz or .nii files, or DICOM series folders)",
            dir.display()
        )));
    }
    Ok(cases)
}

/// The input socket value of a case: the CT image socket (or, for a DICOM series, the CT DICOM
/// image set socket) with the uploaded name.
pub fn ct_input(pk: u64, image_pk: &str, name: &str, kind: CaseKind) -> SocketValue {
    SocketValue {
        pk,
        socket: match kind {
            CaseKind::Image(_) => Socket::ct_image(),
            CaseKind::DicomSeries => Socket::ct_dicom_image_set(),
        },
        value: Value::Null,
        file: None,
        image: Some(ImageRef {
            pk: image_pk.into(),
            name: name.into(),
        }),
    }
}

/// The two output sockets of the algorithm, with their JSON kinds.
pub(super) fn output_sockets() -> [Socket; 2] {
    [
        Socket::value(PROBABILITY_SLUG, "Float"),
        Socket::value(CO_RADS_SLUG, "Integer"),
    ]
}

/// Reads the algorithm's outputs from its `/output` folder and checks them as the platform
/// validates a value socket's kind (a missing file fails the job, with the platform's wording).
pub fn read_outputs(dir: &Path, first_pk: u64) -> std::result::Result<Vec<SocketValue>, String> {
    let mut values = Vec::new();
    for (k, socket) in output_sockets().into_iter().enumerate() {
        let file = dir.join(&socket.relative_path);
        let text = fs::read_to_string(&file)
            .map_err(|_| format!("Output file {} was not produced", socket.relative_path))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "Output file {} is not valid JSON: {e}",
                socket.relative_path
            )
        })?;
        let ok = match socket.kind.as_str() {
            "Integer" => value.is_i64() || value.is_u64(),
            _ => value.as_f64().is_some_and(f64::is_finite),
        };
        if !ok {
            return Err(format!(
                "Output file {} holds {value}, not a {} value",
                socket.relative_path,
                socket.kind.to_ascii_lowercase()
            ));
        }
        values.push(SocketValue {
            pk: first_pk + k as u64,
            socket,
            value,
            file: None,
            image: None,
        });
    }
    Ok(values)
}
