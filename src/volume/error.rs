//! Errors of volume I/O. Every variant names the file and the problem, so that the message alone
//! (shown to grand-challenge users as the last stderr line) explains what went wrong.

use std::path::PathBuf;

/// An error while reading or writing a volume file.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The operating system refused to open, read or write the file.
    ///
    /// The OS error is part of the message, not a separate `source`, so that the one line a
    /// user sees (`anyhow` prints sources on later lines) names the file as well as the cause.
    #[error("{}: {action}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("cannot open", "cannot write", ...).
        action: &'static str,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The data file named by a MetaImage header cannot be opened.
    #[error("{}: cannot open its data file {}: {error}", path.display(), data.display())]
    DataFile {
        /// The header file.
        path: PathBuf,
        /// The data file it names.
        data: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The file name has no supported extension.
    #[error(
        "{}: unsupported file extension (expected .mha, .mhd, .nii or .nii.gz, or a folder of DICOM files)",
        path.display()
    )]
    UnknownExtension {
        /// The file.
        path: PathBuf,
    },
    /// The header is malformed or lacks a required field.
    #[error("{}: invalid header: {reason}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The header ended before its end marker, or is longer than the header limit.
    #[error("{}: header too long or incomplete: {reason}", path.display())]
    HeaderTooLong {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The element (voxel) type is unknown or not supported.
    #[error("{}: unsupported element type `{name}`", path.display())]
    ElementType {
        /// The file.
        path: PathBuf,
        /// The type as written in the file.
        name: String,
    },
    /// The image is not three-dimensional.
    #[error("{}: the image has {ndims} dimensions; only 3-D images are supported", path.display())]
    Dimensions {
        /// The file.
        path: PathBuf,
        /// The number of dimensions in the file.
        ndims: usize,
    },
    /// The image has more than one value per voxel.
    #[error(
        "{}: the image has {channels} channels per voxel; only scalar images are supported",
        path.display()
    )]
    Channels {
        /// The file.
        path: PathBuf,
        /// The number of channels in the file.
        channels: usize,
    },
    /// The image is larger than the reader's limit.
    #[error(
        "{}: image of {size:?} voxels ({voxels} in total) exceeds the limit of {limit} voxels",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Size as given by the header.
        size: Vec<u64>,
        /// Number of voxels (saturated at `u64::MAX`).
        voxels: u64,
        /// The limit.
        limit: usize,
    },
    /// The data section is shorter or longer than the header's size implies.
    #[error("{}: {what} has {actual} bytes but the header implies {expected}", path.display())]
    DataLength {
        /// The file holding the data.
        path: PathBuf,
        /// Which data ("pixel data", "compressed data", ...).
        what: &'static str,
        /// Expected bytes.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// The compressed stream is corrupt, truncated or inflates to the wrong size.
    #[error("{}: compressed data: {reason}", path.display())]
    Compression {
        /// The file holding the data.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Memory for the voxels could not be reserved.
    #[error("{}: cannot allocate {bytes} bytes for the voxels", path.display())]
    Allocation {
        /// The file.
        path: PathBuf,
        /// Bytes requested.
        bytes: usize,
    },
    /// A DICOM file or series cannot be read as a CT volume (see `volume::dicom`).
    #[error("{}: {reason}", path.display())]
    Dicom {
        /// The file, or the folder for a problem of the series.
        path: PathBuf,
        /// What is wrong, in one line.
        reason: String,
    },
    /// A DICOM file's transfer syntax (pixel data encoding) is not one the reader decodes.
    #[error(
        "{}: unsupported DICOM transfer syntax {name} ({uid}); read are implicit and explicit VR \
         little endian, deflated, RLE lossless and JPEG lossless",
        path.display()
    )]
    TransferSyntax {
        /// The file.
        path: PathBuf,
        /// The transfer syntax UID.
        uid: String,
        /// Its name ("unknown" when not a standard one).
        name: String,
    },
    /// A volume cannot be written as asked (bad geometry, size too large for the format).
    #[error("{}: cannot write volume: {reason}", path.display())]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl VolumeError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        error: std::io::Error,
    ) -> Self {
        Self::Io {
            path: path.into(),
            action,
            error,
        }
    }

    pub(crate) fn dicom(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Dicom {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn header(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Header {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
