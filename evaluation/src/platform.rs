//! The platform's job shape: the objects of `predictions.json` (a list of an algorithm's
//! successful jobs) and of an algorithm's `/input/inputs.json` (a list of socket values).
//!
//! Today's platform keys a socket value's socket object `socket`; files written before the
//! rename key the same object `interface`. Readers accept both ([`socket_of`] for loosely typed
//! JSON, the `interface` alias on [`SocketValue::socket`] for the typed structs); the writers
//! here produce the current `socket` shape.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Slug of the CT image input socket.
pub const CT_IMAGE_SLUG: &str = "ct-image";
/// Folder of the CT image socket under `/input`.
pub const CT_IMAGE_RELATIVE_PATH: &str = "images/ct";
/// Kind of a socket holding a DICOM series (one file per slice).
pub const DICOM_IMAGE_SET_KIND: &str = "DICOM Image Set";

/// The socket object of a socket value: `socket` (today's platform) or `interface` (older
/// files), whichever is present; `socket` wins when a file carries both.
pub fn socket_of(socket_value: &Value) -> Option<&Value> {
    socket_value
        .get("socket")
        .or_else(|| socket_value.get("interface"))
}

/// A string field of a socket value's socket object (`slug`, `relative_path`, `kind`...).
pub fn socket_field<'a>(socket_value: &'a Value, field: &str) -> Option<&'a str> {
    socket_of(socket_value)?.get(field)?.as_str()
}

/// A socket: what an algorithm reads or writes, and where under `/input` or `/output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Socket {
    /// Slug, derived from the title ("Probability COVID-19" -> `probability-covid-19`).
    pub slug: String,
    /// Kind: `Image`, `Float`, `Integer`, ...
    pub kind: String,
    /// Super kind: `Image`, `Value` or `File`.
    pub super_kind: String,
    /// Path under `/input` or `/output`: a folder for images, a file for values.
    pub relative_path: String,
    /// Human-readable title, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Socket {
    /// The CT image input socket of the challenge.
    pub fn ct_image() -> Self {
        Socket {
            slug: CT_IMAGE_SLUG.into(),
            kind: "Image".into(),
            super_kind: "Image".into(),
            relative_path: CT_IMAGE_RELATIVE_PATH.into(),
            title: Some("CT Image".into()),
        }
    }

    /// A CT input socket of the DICOM image set kind, for algorithms configured to take the series
    /// itself: `/input/images/ct-dicom-image-set/<SOPInstanceUID>.dcm`.
    pub fn ct_dicom_image_set() -> Self {
        Socket {
            slug: "ct-dicom-image-set".into(),
            kind: DICOM_IMAGE_SET_KIND.into(),
            super_kind: "Image".into(),
            relative_path: "images/ct-dicom-image-set".into(),
            title: Some("CT DICOM Image Set".into()),
        }
    }

    /// A JSON value output socket stored as `<slug>.json`.
    pub fn value(slug: &str, kind: &str) -> Self {
        Socket {
            slug: slug.into(),
            kind: kind.into(),
            super_kind: "Value".into(),
            relative_path: format!("{slug}.json"),
            title: None,
        }
    }
}

/// The image of an image socket value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The image's id.
    pub pk: String,
    /// The file name the uploader gave (names the case).
    pub name: String,
}

/// One socket value of a job's inputs or outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketValue {
    /// The socket value's id (an integer on the platform).
    pub pk: u64,
    /// The socket; read from `interface` as well, as older files name it.
    #[serde(alias = "interface")]
    pub socket: Socket,
    /// Inline JSON value (value sockets), or null.
    #[serde(default)]
    pub value: Value,
    /// URL of a file socket's file, or null.
    #[serde(default)]
    pub file: Option<String>,
    /// The image of an image socket, or null.
    #[serde(default)]
    pub image: Option<ImageRef>,
}

/// One algorithm job as listed in `predictions.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id: its outputs are mounted at `/input/<pk>/output/` of the evaluation.
    pub pk: String,
    /// Input socket values.
    pub inputs: Vec<SocketValue>,
    /// Output socket values.
    pub outputs: Vec<SocketValue>,
    /// `Succeeded` for every job the platform passes to an evaluation.
    pub status: String,
    /// When the job started (ISO 8601).
    #[serde(default)]
    pub started_at: Option<String>,
    /// When the job completed (ISO 8601).
    #[serde(default)]
    pub completed_at: Option<String>,
    /// Run time of an exec-mode job (`HH:MM:SS.ffffff`), null for invoke mode.
    #[serde(default)]
    pub exec_duration: Option<String>,
    /// Run time of an invoke-mode call (`HH:MM:SS.ffffff`), null for exec mode.
    #[serde(default)]
    pub invoke_duration: Option<String>,
}

/// Formats a duration the way the platform's API writes a duration field: `HH:MM:SS.ffffff`.
pub fn format_duration(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    format!(
        "{:02}:{:02}:{:02}.{frac:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Formats a time as ISO 8601 UTC with microseconds (`2026-11-30T09:30:00.123456Z`), as the
/// platform's API writes `started_at`; times before 1970 are written as the epoch.
pub fn format_time(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil inverse).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn socket_object_under_either_key() {
        let new = serde_json::json!({"socket": {"slug": "a"}});
        let old = serde_json::json!({"interface": {"slug": "b"}});
        let both = serde_json::json!({"socket": {"slug": "a"}, "interface": {"slug": "b"}});
        assert_eq!(socket_field(&new, "slug"), Some("a"));
        assert_eq!(socket_field(&old, "slug"), Some("b"));
        assert_eq!(socket_field(&both, "slug"), Some("a"));
        assert_eq!(socket_field(&serde_json::json!({"value": 1}), "slug"), None);
    }

    #[test]
    fn typed_socket_value_reads_both_spellings_and_writes_socket() {
        for key in ["socket", "interface"] {
            let text = format!(
                r#"{{"pk": 1, "{key}": {{"slug": "ct-image", "kind": "Image",
                    "super_kind": "Image", "relative_path": "images/ct", "pk": 7,
                    "overlay_segments": []}},
                    "value": null, "file": null, "image": {{"pk": "i", "name": "x.mha"}}}}"#
            );
            let sv: SocketValue = serde_json::from_str(&text).unwrap();
            assert_eq!(sv.socket.slug, "ct-image");
            assert_eq!(sv.image.as_ref().map(|i| i.name.as_str()), Some("x.mha"));
            let back = serde_json::to_value(&sv).unwrap();
            assert!(back.get("socket").is_some() && back.get("interface").is_none());
        }
    }

    #[test]
    fn durations_and_times_in_the_api_format() {
        assert_eq!(
            format_duration(Duration::from_micros(3_723_000_042)),
            "01:02:03.000042"
        );
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.5 UTC.
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_500);
        assert_eq!(format_time(t), "2000-02-29T12:34:56.500000Z");
        // 2026-11-30 00:00:00 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_795_996_800);
        assert_eq!(format_time(t), "2026-11-30T00:00:00.000000Z");
    }
}
