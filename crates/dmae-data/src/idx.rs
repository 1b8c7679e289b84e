//! The IDX file format (MNIST, Fashion-MNIST, EMNIST), plain or gzipped.
//!
//! Layout: a 4-byte big-endian magic `0x00 0x00 <type> <ndims>`, then `ndims` big-endian u32 dimensions, then
//! the values in row-major order, big-endian. Gzip is detected from the stream's first two bytes, not the file
//! name. The sizes a header announces are checked against the input before anything is allocated for them: a
//! plain file must hold exactly the announced payload (truncation and trailing bytes are reported with the
//! offset where the problem starts, without reading the payload), and a gzip stream cannot announce more than
//! [`MAX_DEFLATE_RATIO`] times its compressed length (the payload then grows as bytes arrive, so a stream that
//! ends early never allocates what its header claims).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const FORMAT: &str = "IDX";

/// Deflate's largest possible expansion (a 258-byte match coded in 2 bits: about 1032:1), the bound on the
/// payload a gzipped IDX file of a given length can hold.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// What is known about the input's length before its payload is read.
#[derive(Clone, Copy)]
enum Input {
    /// An uncompressed stream of exactly this many bytes.
    Plain(u64),
    /// A gzip stream of this many compressed bytes.
    Gzip(u64),
}

/// Element type codes of the IDX format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxType {
    /// `0x08`: unsigned byte.
    U8,
    /// `0x09`: signed byte.
    I8,
    /// `0x0B`: big-endian i16.
    I16,
    /// `0x0C`: big-endian i32.
    I32,
    /// `0x0D`: big-endian f32.
    F32,
    /// `0x0E`: big-endian f64.
    F64,
}

impl IdxType {
    /// Parses the type byte of the magic number.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x08 => IdxType::U8,
            0x09 => IdxType::I8,
            0x0B => IdxType::I16,
            0x0C => IdxType::I32,
            0x0D => IdxType::F32,
            0x0E => IdxType::F64,
            _ => return None,
        })
    }

    /// The type byte of the magic number.
    pub fn code(self) -> u8 {
        match self {
            IdxType::U8 => 0x08,
            IdxType::I8 => 0x09,
            IdxType::I16 => 0x0B,
            IdxType::I32 => 0x0C,
            IdxType::F32 => 0x0D,
            IdxType::F64 => 0x0E,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            IdxType::U8 | IdxType::I8 => 1,
            IdxType::I16 => 2,
            IdxType::I32 | IdxType::F32 => 4,
            IdxType::F64 => 8,
        }
    }
}

/// A parsed IDX array: element type, dimensions and the raw big-endian payload.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    dtype: IdxType,
    dims: Vec<usize>,
    data: Vec<u8>,
}

impl IdxArray {
    /// Element type.
    pub fn dtype(&self) -> IdxType {
        self.dtype
    }

    /// Dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The raw payload (big-endian elements, row-major).
    pub fn raw(&self) -> &[u8] {
        &self.data
    }

    /// The payload of a `U8` array, `None` for other types.
    pub fn as_u8(&self) -> Option<&[u8]> {
        (self.dtype == IdxType::U8).then_some(self.data.as_slice())
    }

    /// Consumes the array, returning the payload of a `U8` array or giving the array back.
    pub fn into_u8(self) -> std::result::Result<Vec<u8>, Self> {
        if self.dtype == IdxType::U8 {
            Ok(self.data)
        } else {
            Err(self)
        }
    }

    /// Every element converted to f32 (exact for the integer types, rounded for f64).
    pub fn to_f32(&self) -> Vec<f32> {
        let s = self.dtype.size();
        self.data
            .chunks_exact(s)
            .map(|c| match self.dtype {
                IdxType::U8 => f32::from(c[0]),
                IdxType::I8 => f32::from(c[0] as i8),
                IdxType::I16 => f32::from(i16::from_be_bytes([c[0], c[1]])),
                IdxType::I32 => i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32,
                IdxType::F32 => f32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                IdxType::F64 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_be_bytes(b) as f32
                }
            })
            .collect()
    }

    /// Builds an array from its parts; errors if the payload length does not match the dimensions.
    pub fn new(dtype: IdxType, dims: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let want = payload_len(&dims, dtype)
            .ok_or_else(|| Error::Config(format!("IDX dims {dims:?} overflow")))?;
        if dims.len() > 255 || dims.iter().any(|&d| u32::try_from(d).is_err()) {
            return Err(Error::Config(format!("IDX cannot store dims {dims:?}")));
        }
        if data.len() != want {
            return Err(Error::Config(format!(
                "IDX dims {dims:?} of {dtype:?} need {want} bytes, got {}",
                data.len()
            )));
        }
        Ok(IdxArray { dtype, dims, data })
    }

    /// Serialises the array as an (uncompressed) IDX file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 * self.dims.len() + self.data.len());
        // `new` and the parser guarantee at most 255 dims, each fitting u32.
        out.extend_from_slice(&[0, 0, self.dtype.code(), self.dims.len() as u8]);
        for &d in &self.dims {
            out.extend_from_slice(&(d as u32).to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

fn payload_len(dims: &[usize], dtype: IdxType) -> Option<usize> {
    dims.iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
}

/// A reader that counts consumed bytes, so errors can report offsets.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Parses an IDX array from bytes (gzipped or plain); `source` names the data in errors.
pub fn parse_idx(bytes: &[u8], source: &Path) -> Result<IdxArray> {
    let len = bytes.len() as u64;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        parse_stream(
            flate2::read::GzDecoder::new(bytes),
            source,
            Input::Gzip(len),
        )
    } else {
        parse_stream(bytes, source, Input::Plain(len))
    }
}

/// Reads and parses an IDX file (gzipped or plain). The file must be a regular file of at most
/// [`crate::file::MAX_FILE_BYTES`]; its header is checked against its length before the payload is read.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let (file, len) = crate::file::open_regular(path, crate::file::MAX_FILE_BYTES)?;
    let mut r = std::io::BufReader::new(file);
    let gz = r
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    if gz {
        parse_stream(flate2::read::GzDecoder::new(r), path, Input::Gzip(len))
    } else {
        parse_stream(r, path, Input::Plain(len))
    }
}

fn parse_stream<R: Read>(reader: R, source: &Path, input: Input) -> Result<IdxArray> {
    let mut r = Counting {
        inner: reader,
        pos: 0,
    };
    let gz = matches!(input, Input::Gzip(_));
    let path = PathBuf::from(source);
    let where_ = if gz { " (decompressed)" } else { "" };
    let fail = |offset: u64, reason: String| Error::format(path.clone(), FORMAT, offset, reason);
    let read_err = |offset: u64, e: std::io::Error, what: &str| {
        let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("file ends inside the {what}{where_}")
        } else if gz {
            format!("corrupt gzip stream while reading the {what}: {e}")
        } else {
            format!("read error in the {what}: {e}")
        };
        fail(offset, reason)
    };

    let mut magic = [0u8; 4];
    read_exact_counted(&mut r, &mut magic).map_err(|(off, e)| read_err(off, e, "magic number"))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(fail(
            0,
            format!("bad magic {magic:02x?}: an IDX file starts with two zero bytes"),
        ));
    }
    let dtype = IdxType::from_code(magic[2])
        .ok_or_else(|| fail(2, format!("unknown element type code {:#04x}", magic[2])))?;
    let ndims = usize::from(magic[3]);
    if ndims == 0 {
        return Err(fail(3, "zero dimensions".into()));
    }
    let mut dims = Vec::with_capacity(ndims);
    for i in 0..ndims {
        let mut b = [0u8; 4];
        read_exact_counted(&mut r, &mut b)
            .map_err(|(off, e)| read_err(off, e, &format!("dimension {i} of the header")))?;
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let header = r.pos;
    let want = payload_len(&dims, dtype).ok_or_else(|| {
        fail(
            4,
            format!("dimensions {dims:?} of {dtype:?} overflow the address space"),
        )
    })?;
    let truncated = |got: u64| {
        fail(
            header + got,
            format!(
                "truncated{where_}: dimensions {dims:?} of {dtype:?} need {want} payload bytes after the \
                 {header}-byte header, found {got}"
            ),
        )
    };
    let trailing = || {
        fail(
            header + want as u64,
            format!("trailing bytes after the {want}-byte payload of dimensions {dims:?}{where_}"),
        )
    };
    // Check the announced size against the input before allocating for it.
    let mut data = match input {
        Input::Plain(len) => {
            let available = len.saturating_sub(header);
            if (want as u64) > available {
                return Err(truncated(available));
            }
            if (want as u64) < available {
                return Err(trailing());
            }
            Vec::with_capacity(want)
        }
        Input::Gzip(compressed) => {
            if want as u64 > compressed.saturating_mul(MAX_DEFLATE_RATIO) {
                return Err(fail(
                    4,
                    format!(
                        "dimensions {dims:?} of {dtype:?} need {want} payload bytes, but a gzip stream of \
                         {compressed} bytes decompresses to at most {} bytes",
                        compressed.saturating_mul(MAX_DEFLATE_RATIO)
                    ),
                ));
            }
            // Grow as data arrives: a stream that ends early fails without allocating what was announced.
            Vec::with_capacity(want.min(16 << 20))
        }
    };
    let got = (&mut r)
        .take(want as u64)
        .read_to_end(&mut data)
        .map_err(|e| read_err(r_pos_hint(header, &data), e, "payload"))?;
    if got < want {
        return Err(truncated(got as u64));
    }
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(trailing()),
        Err(e) => return Err(read_err(header + want as u64, e, "end of the stream")),
    }
    Ok(IdxArray { dtype, dims, data })
}

fn r_pos_hint(header: u64, data: &[u8]) -> u64 {
    header + data.len() as u64
}

fn read_exact_counted<R: Read>(
    r: &mut Counting<R>,
    buf: &mut [u8],
) -> std::result::Result<(), (u64, std::io::Error)> {
    let start = r.pos;
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err((
                    start + filled as u64,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((start + filled as u64, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> &'static Path {
        Path::new("<memory>")
    }

    #[test]
    fn parses_every_type_and_round_trips() {
        let a = IdxArray::new(
            IdxType::I16,
            vec![2, 2],
            vec![0, 1, 0xff, 0xfe, 0x7f, 0xff, 0x80, 0],
        )
        .unwrap();
        let b = parse_idx(&a.to_bytes(), mem()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_f32(), vec![1.0, -2.0, 32767.0, -32768.0]);
        let f = IdxArray::new(IdxType::F32, vec![1], 1.5f32.to_be_bytes().to_vec()).unwrap();
        assert_eq!(parse_idx(&f.to_bytes(), mem()).unwrap().to_f32(), vec![1.5]);
    }

    #[test]
    fn errors_name_offsets() {
        // Header says 2x3 bytes, only 4 present: truncation found at header (12) + 4.
        let bytes = [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4];
        match parse_idx(&bytes, mem()) {
            Err(Error::Format { offset, .. }) => assert_eq!(offset, 16),
            other => panic!("expected a format error, got {other:?}"),
        }
        let mut long = bytes.to_vec();
        long.extend_from_slice(&[5, 6, 7]);
        match parse_idx(&long, mem()) {
            Err(Error::Format { offset, reason, .. }) => {
                assert_eq!(offset, 18);
                assert!(reason.contains("trailing"), "{reason}");
            }
            other => panic!("expected a format error, got {other:?}"),
        }
        match parse_idx(&[0, 0, 7, 1], mem()) {
            Err(Error::Format { offset, .. }) => assert_eq!(offset, 2),
            other => panic!("expected a format error, got {other:?}"),
        }
        // The file ends 2 bytes into the first dimension.
        match parse_idx(&[0, 0, 8, 3, 0, 0], mem()) {
            Err(Error::Format { offset, .. }) => assert_eq!(offset, 6),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn headers_are_checked_against_the_file_length_before_allocating() {
        // 2^31 images of 28x28 announced in a 16-byte header (peaked at 2.6 GB before the fix when the file
        // was long): refused from the length, before any payload is read.
        let mut bytes = vec![0, 0, 8, 3];
        for d in [1u32 << 31, 28, 28] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[0u8; 1000]);
        match parse_idx(&bytes, mem()) {
            Err(Error::Format { offset, reason, .. }) => {
                assert_eq!(offset, 16 + 1000);
                assert!(
                    reason.contains("truncated") && reason.contains("found 1000"),
                    "{reason}"
                );
            }
            other => panic!("expected a format error, got {other:?}"),
        }
        // Gzipped: a few hundred compressed bytes cannot hold 1.7 TB.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, &bytes).unwrap();
        let gz = e.finish().unwrap();
        match parse_idx(&gz, mem()) {
            Err(Error::Format { offset, reason, .. }) => {
                assert_eq!(offset, 4);
                assert!(reason.contains("decompresses to at most"), "{reason}");
            }
            other => panic!("expected a format error, got {other:?}"),
        }
        // The same through a file; a sparse file does not make the claim true.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images-idx3-ubyte");
        let f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &f, &bytes[..16]).unwrap();
        f.set_len(3 << 30).unwrap();
        drop(f);
        match read_idx(&path) {
            Err(Error::Format { offset, reason, .. }) => {
                assert_eq!(offset, 3 << 30);
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn huge_header_fails_without_allocating() {
        let bytes = [
            0, 0, 0x0E, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9,
        ];
        assert!(parse_idx(&bytes, mem()).is_err());
    }
}
