//! Opening input files (images, IDX, CIFAR batches): regular files only, size-checked, and never
//! blocking.
//!
//! A name in a dataset folder may be a link to `/dev/zero` (endless bytes), a FIFO (opening it for
//! reading waits for a writer, forever) or a device. Every file the crate reads goes through
//! [`open_regular`]: the path's metadata is read first (links followed, nothing opened), anything but
//! a regular file is refused with [`Error::NotRegularFile`], and a file over the caller's size limit
//! with [`Error::FileTooLarge`]. The opened handle is checked again, so a file replaced between the two
//! calls is caught too; only a regular file swapped for a FIFO in that instant could still block the
//! `open`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest data file read into memory, in bytes (4 GiB): an IDX file or a CIFAR batch. The whole
/// EMNIST ByClass training set is 0.7 GB; image files have the lower
/// [`crate::decode::MAX_IMAGE_BYTES`].
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// Opens `path` for reading after checking that it is a regular file (after following links) of at
/// most `limit` bytes; returns the file and its length.
pub fn open_regular(path: &Path, limit: u64) -> Result<(File, u64)> {
    // `metadata` follows links and opens nothing, so a FIFO is refused before an `open` could block.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta, limit)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta, limit)?;
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes ([`open_regular`]). Stops reading at `limit`
/// even if the file grows meanwhile.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path, limit)?;
    // `len <= limit`, which the callers keep well under the address space.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            bytes: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

fn check_regular(path: &Path, meta: &std::fs::Metadata, limit: u64) -> Result<()> {
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: kind(&ft),
        });
    }
    if meta.len() > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            bytes: meta.len(),
            limit,
        });
    }
    Ok(())
}

/// What a non-regular file is, for the error message.
fn kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn links_to_devices_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.png");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_regular(&zero, 1 << 20).unwrap_err();
        assert!(
            matches!(&e, Error::NotRegularFile { kind, .. } if kind.contains("character device")),
            "{e}"
        );
        assert!(e.to_string().contains("zero.png"), "{e}");

        // Opening a FIFO for reading would wait for a writer: the refusal must come first.
        let fifo = dir.path().join("pipe.png");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(
            matches!(&e, Error::NotRegularFile { kind, .. } if kind.contains("FIFO")),
            "{e}"
        );

        let sub = dir.path().join("sub.png");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(
            read_regular(&sub, 1 << 20),
            Err(Error::NotRegularFile { .. })
        ));

        let big = dir.path().join("big.png");
        std::fs::write(&big, vec![0u8; 1000]).unwrap();
        assert!(matches!(
            read_regular(&big, 999),
            Err(Error::FileTooLarge {
                bytes: 1000,
                limit: 999,
                ..
            })
        ));
        assert_eq!(read_regular(&big, 1000).unwrap().len(), 1000);
        // A link to a regular file is followed.
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert_eq!(read_regular(&link, 1000).unwrap().len(), 1000);
    }
}
