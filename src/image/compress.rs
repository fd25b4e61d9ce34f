//! Layer and archive compression, recognised by content (magic bytes), never by file name or
//! media type: registries and `docker save` both mislabel layers in the wild.

use std::io::{self, Cursor, Read};

/// The formats a layer or archive may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("reading the start of the stream: {0}")]
    Read(io::Error),
    #[error("starting the {format:?} decoder: {source}")]
    Decoder {
        format: Compression,
        source: io::Error,
    },
}

impl Compression {
    /// The format whose magic `head` starts with.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(GZIP) {
            Compression::Gzip
        } else if head.starts_with(ZSTD) {
            Compression::Zstd
        } else if head.starts_with(XZ) {
            Compression::Xz
        } else {
            Compression::None
        }
    }
}

/// Read up to `XZ.len()` bytes (the longest magic) without losing them.
fn peek<R: Read>(mut reader: R) -> Result<(Compression, Cursor<Vec<u8>>, R), CompressError> {
    let mut head = vec![0u8; XZ.len()];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CompressError::Read(e)),
        }
    }
    head.truncate(got);
    Ok((Compression::detect(&head), Cursor::new(head), reader))
}

/// Sniff the compression of `reader` and return it together with a reader of the
/// decompressed content. Concatenated gzip members and xz streams are read to the end.
pub fn decompress_detect<R: Read + Send + 'static>(
    reader: R,
) -> Result<(Compression, Box<dyn Read + Send>), CompressError> {
    let (c, head, rest) = peek(reader)?;
    let whole = head.chain(rest);
    let out: Box<dyn Read + Send> = match c {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(
            zstd::Decoder::new(whole)
                .map_err(|source| CompressError::Decoder { format: c, source })?,
        ),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(whole)),
    };
    Ok((c, out))
}

/// [`decompress_detect`] without the format.
pub fn decompress<R: Read + Send + 'static>(
    reader: R,
) -> Result<Box<dyn Read + Send>, CompressError> {
    decompress_detect(reader).map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(c: Compression, data: &[u8]) -> Vec<u8> {
        let packed = match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        };
        let (found, mut r) = decompress_detect(Cursor::new(packed)).unwrap();
        assert_eq!(found, c);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn detects_by_content() {
        let data = b"hello layer".repeat(100);
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Xz,
        ] {
            assert_eq!(roundtrip(c, &data), data, "{c:?}");
        }
        // Short and empty inputs are plain data, not an error.
        assert_eq!(roundtrip(Compression::None, b"ab"), b"ab");
        assert_eq!(roundtrip(Compression::None, b""), b"");
    }

    #[test]
    fn concatenated_gzip_members_are_read() {
        let mut all = Vec::new();
        for part in [&b"one "[..], b"two"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
            e.write_all(part).unwrap();
            all.extend(e.finish().unwrap());
        }
        let mut out = String::new();
        decompress(Cursor::new(all))
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "one two");
    }
}
