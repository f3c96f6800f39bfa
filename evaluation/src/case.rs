//! Case names: how predictions and ground-truth rows are matched.

use std::collections::HashMap;

use crate::error::{EvalError, Result};

/// Image extensions stripped from file names, longest first.
const IMAGE_EXTENSIONS: [&str; 4] = [".nii.gz", ".mha", ".mhd", ".nii"];

/// The case name of an input image: its file name without directories and without a
/// `.mha`, `.mhd`, `.nii` or `.nii.gz` extension (compared case-insensitively). Other names are
/// kept whole, trimmed of surrounding whitespace.
pub fn case_name(file_name: &str) -> String {
    let trimmed = file_name.trim();
    let base = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    let lower = base.to_ascii_lowercase();
    for ext in IMAGE_EXTENSIONS {
        if lower.len() > ext.len() && lower.ends_with(ext) {
            // ASCII lowercasing keeps byte offsets, so this cut is on a char boundary.
            if let Some(stem) = base.get(..base.len() - ext.len()) {
                return stem.to_string();
            }
        }
    }
    base.to_string()
}

/// The key cases are matched on: the case name lowercased with everything but letters and
/// digits removed, so that `Patient 12`, `patient_12` and `Patient12.mha` meet. Two different
/// names with the same key on one side are reported as duplicates rather than guessed at.
pub fn match_key(case: &str) -> String {
    case_name(case)
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Rejects two items with the same match key, naming both origins. `case` and `origin` read an
/// item's case name and where it came from (a file, a CSV row).
pub fn check_unique<T>(
    items: &[T],
    case: impl Fn(&T) -> &str,
    origin: impl Fn(&T) -> &str,
) -> Result<()> {
    let mut seen: HashMap<String, &T> = HashMap::new();
    for item in items {
        if let Some(first) = seen.insert(match_key(case(item)), item) {
            return Err(EvalError::DuplicateCase {
                case: case(item).to_string(),
                first: origin(first).to_string(),
                second: origin(item).to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_image_extensions_and_folders() {
        assert_eq!(case_name("scan_01.mha"), "scan_01");
        assert_eq!(case_name("/input/images/ct/Scan.NII.GZ"), "Scan");
        assert_eq!(case_name("a.b.mhd"), "a.b");
        assert_eq!(case_name("notes.txt"), "notes.txt");
        assert_eq!(case_name(".mha"), ".mha");
    }

    #[test]
    fn keys_ignore_case_and_punctuation() {
        assert_eq!(match_key("Patient 12"), match_key("patient_12.mha"));
        assert_ne!(match_key("Patient 12"), match_key("Patient 1"));
    }
}
