//! Errors of volume I/O. Every variant names the file and the problem, so that the message alone
//! (shown to grand-challenge users as the last stderr line) explains what went wrong.

use std::path::PathBuf;

/// An error while reading or writing a volume file.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The operating system refused to open, read or write the file.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("cannot open", "cannot write", ...).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file name has no supported extension.
    #[error(
        "{}: unsupported file extension (expected .mha, .mhd, .nii or .nii.gz)",
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
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            path: path.into(),
            action,
            source,
        }
    }

    pub(crate) fn header(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Header {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
