//! The crate's error type.

use std::path::PathBuf;

/// Result alias used throughout `dmae-data`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, transforming or batching data.
///
/// Errors caused by input bytes always name the file (or `<memory>` for in-memory parsing) and, where the format
/// has one, the byte offset at which the problem was found.
///
/// Each message is complete on its own (it includes its cause's text), so a variant does not also
/// return that cause from [`std::error::Error::source`]: a chain printer (anyhow's `{:#}`) would
/// otherwise repeat it ("X: cause: cause"). The cause stays available in the variant's fields.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read, a directory listing or a file open.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error (in the message, not returned as `source()`).
        cause: std::io::Error,
    },
    /// A structured file (IDX, CIFAR binary, gzip stream) is malformed or truncated.
    #[error("{}: invalid {format} data at byte offset {offset}: {reason}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// The format being parsed, e.g. `"IDX"` or `"CIFAR-10"`.
        format: &'static str,
        /// Byte offset of the problem (in the decompressed stream for gzipped files).
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// An image file (PNG, JPEG, GIF) could not be decoded.
    #[error("{}: cannot decode image: {reason}", path.display())]
    Decode {
        /// The offending file.
        path: PathBuf,
        /// The decoder's explanation (corrupt data, truncated stream, unsupported format, ...).
        reason: String,
    },
    /// An image whose header announces more pixels than [`crate::decode::MAX_IMAGE_BYTES`] allows:
    /// refused before anything is allocated for its pixels.
    #[error(
        "{}: the image is {width}x{height} {color}: decoding and converting it needs {} MiB, over the \
         {} MiB limit per image (dmae_data::decode::MAX_IMAGE_BYTES)",
        path.display(), bytes.div_ceil(1 << 20), limit >> 20
    )]
    ImageTooLarge {
        /// The offending file.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// Colour type and bit depth from the header, e.g. `Rgba16`.
        color: String,
        /// Worst-case bytes of decoding plus conversion to f32 planes.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A path that must be a regular file (after following links) is a directory, FIFO, device or
    /// socket; reading it could block or never end, so it is refused before being opened.
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
        /// What it is instead, e.g. `"a FIFO (named pipe)"`.
        kind: &'static str,
    },
    /// A file larger than what the reader accepts (see [`crate::file`]).
    #[error(
        "{}: the file is {bytes} bytes, over the limit of {limit} bytes for this kind of file",
        path.display()
    )]
    FileTooLarge {
        /// The offending file.
        path: PathBuf,
        /// Its size (or the bytes read before giving up).
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A class or clip directory whose name is not valid UTF-8 (class names are text).
    #[error(
        "{}: the directory name is not valid UTF-8; class and clip directories need text names \
         (rename it)",
        path.display()
    )]
    NonUtf8Name {
        /// The directory (shown with the invalid bytes replaced).
        path: PathBuf,
    },
    /// Expected data is not where it was looked for.
    #[error("{}: {what}", path.display())]
    NotFound {
        /// The path that was looked at.
        path: PathBuf,
        /// What was missing and how to provide it.
        what: String,
    },
    /// A sample index past the end of a dataset.
    #[error("sample index {index} out of range for a dataset of {len} samples")]
    IndexOutOfRange {
        /// The requested index.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// An invalid option or argument (batch size 0, rank >= world size, crop larger than the image, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Samples of one batch have different shapes.
    #[error(
        "sample {index} has shape {got:?} but the batch started with shape {expected:?}; \
         add a resize or crop transform so every sample has the same size"
    )]
    ShapeMismatch {
        /// Dataset index of the odd sample.
        index: usize,
        /// Its shape.
        got: Vec<usize>,
        /// The shape of the batch's first sample.
        expected: Vec<usize>,
    },
    /// Loading one dataset sample failed (wraps the cause with the sample's index).
    #[error("sample {index}: {cause}")]
    Sample {
        /// Dataset index of the sample.
        index: usize,
        /// Why it failed (in the message, not returned as `source()`).
        cause: Box<Error>,
    },
    /// Building a tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The background prefetch thread died (a panic in user code such as a custom transform).
    #[error("the loader's background thread stopped unexpectedly: {0}")]
    Worker(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn format(
        path: impl Into<PathBuf>,
        format: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.into(),
            format,
            offset,
            reason: reason.into(),
        }
    }
}
