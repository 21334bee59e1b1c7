//! The capture (corpus) file format: a sequence of `[u32 LE length][frame bytes]` records, the whole file
//! zstd-compressed when its name ends in `.zst`.
//!
//! [`CaptureWriter`] appends frames, [`CaptureReader`] streams them back (rejecting lengths above
//! [`MAX_FRAME_LEN`] instead of allocating), and [`read_capture`] loads a whole file.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Largest frame length accepted by the reader (16 MiB); a larger length prefix is treated as corruption.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// zstd level used when writing `.zst` captures.
const ZSTD_LEVEL: i32 = 3;

/// Errors reading or writing a capture file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Opening, reading or writing the file failed.
    #[error("capture i/o on {path}: {source}")]
    Io {
        /// The capture file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A length prefix was larger than [`MAX_FRAME_LEN`].
    #[error("capture {path}: frame {index} claims {len} bytes (max {MAX_FRAME_LEN})")]
    FrameTooLarge {
        /// The capture file.
        path: PathBuf,
        /// Zero-based index of the offending frame.
        index: usize,
        /// The length found in the prefix.
        len: usize,
    },
    /// The file ended inside a length prefix or a frame.
    #[error("capture {path}: truncated in frame {index}")]
    Truncated {
        /// The capture file.
        path: PathBuf,
        /// Zero-based index of the incomplete frame.
        index: usize,
    },
    /// A frame handed to the writer was larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes is larger than the capture limit {MAX_FRAME_LEN}")]
    WriteTooLarge {
        /// The frame length.
        len: usize,
    },
}

fn is_zst(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

/// Writes frames to a capture file; call [`CaptureWriter::finish`] to flush (and end the zstd stream).
pub struct CaptureWriter {
    path: PathBuf,
    sink: Sink,
    frames: u64,
}

impl CaptureWriter {
    /// Creates (truncates) `path`; zstd-compressed when the name ends in `.zst`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| CaptureError::Io {
            path: path.clone(),
            source,
        };
        let file = BufWriter::new(File::create(&path).map_err(io_err)?);
        let sink = if is_zst(&path) {
            Sink::Zstd(zstd::stream::write::Encoder::new(file, ZSTD_LEVEL).map_err(io_err)?)
        } else {
            Sink::Plain(file)
        };
        Ok(Self {
            path,
            sink,
            frames: 0,
        })
    }

    /// Appends one frame.
    pub fn write_frame(&mut self, frame: &[u8]) -> Result<(), CaptureError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_FRAME_LEN)
            .ok_or(CaptureError::WriteTooLarge { len: frame.len() })?;
        let w: &mut dyn Write = match &mut self.sink {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w,
        };
        w.write_all(&len.to_le_bytes())
            .and_then(|()| w.write_all(frame))
            .map_err(|source| CaptureError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.frames += 1;
        Ok(())
    }

    /// Number of frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flushes everything to disk and returns the number of frames written.
    pub fn finish(self) -> Result<u64, CaptureError> {
        let io_err = |source| CaptureError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match self.sink {
            Sink::Plain(w) => w,
            Sink::Zstd(enc) => enc.finish().map_err(io_err)?,
        };
        file.flush().map_err(io_err)?;
        file.get_ref().sync_all().map_err(io_err)?;
        Ok(self.frames)
    }
}

/// Streams frames from a capture file; yields an error (and then stops) on corruption.
pub struct CaptureReader {
    path: PathBuf,
    inner: Box<dyn Read + Send>,
    index: usize,
    done: bool,
}

impl CaptureReader {
    /// Opens `path`, decompressing when the name ends in `.zst`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| CaptureError::Io {
            path: path.clone(),
            source,
        };
        let file = BufReader::new(File::open(&path).map_err(io_err)?);
        let inner: Box<dyn Read + Send> = if is_zst(&path) {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io_err)?)
        } else {
            Box::new(file)
        };
        Ok(Self {
            path,
            inner,
            index: 0,
            done: false,
        })
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, CaptureError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(CaptureError::Truncated {
                        path: self.path.clone(),
                        index: self.index,
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(true)
    }

    fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CaptureError> {
        let mut len = [0u8; 4];
        if !self.fill(&mut len)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME_LEN {
            return Err(CaptureError::FrameTooLarge {
                path: self.path.clone(),
                index: self.index,
                len,
            });
        }
        let mut frame = vec![0u8; len];
        if len > 0 && !self.fill(&mut frame)? {
            return Err(CaptureError::Truncated {
                path: self.path.clone(),
                index: self.index,
            });
        }
        self.index += 1;
        Ok(Some(frame))
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Vec<u8>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_frame() {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads every frame of a capture file.
pub fn read_capture(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>, CaptureError> {
    CaptureReader::open(path)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/corpus/frames.bin.zst")
    }

    #[test]
    fn reads_the_real_corpus() {
        let frames = read_capture(corpus()).expect("corpus readable");
        assert_eq!(frames.len(), 150);
        let total: usize = frames.iter().map(Vec::len).sum();
        // docs/measurements.md: mean frame size ~5,459 B.
        let mean = total / frames.len();
        assert!((4_000..7_000).contains(&mean), "mean {mean}");
        assert!(frames.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn roundtrip_plain_and_zstd() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["c.bin", "c.bin.zst"] {
            let path = dir.path().join(name);
            let mut w = CaptureWriter::create(&path).expect("create");
            let frames: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; i as usize * 7]).collect();
            for f in &frames {
                w.write_frame(f).expect("write");
            }
            assert_eq!(w.finish().expect("finish"), 50);
            assert_eq!(read_capture(&path).expect("read"), frames, "{name}");
        }
    }

    #[test]
    fn rejects_huge_length_without_allocating() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.bin");
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let mut r = CaptureReader::open(&path).expect("open");
        assert_eq!(r.next().expect("first").expect("ok"), b"abc");
        match r.next() {
            Some(Err(CaptureError::FrameTooLarge { index: 1, len, .. })) => {
                assert_eq!(len, u32::MAX as usize)
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(r.next().is_none());
    }

    #[test]
    fn reports_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trunc.bin");
        let mut bytes = 10u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            read_capture(&path),
            Err(CaptureError::Truncated { index: 0, .. })
        ));
        std::fs::write(&path, [1u8, 0]).expect("write");
        assert!(matches!(
            read_capture(&path),
            Err(CaptureError::Truncated { index: 0, .. })
        ));
    }
}
