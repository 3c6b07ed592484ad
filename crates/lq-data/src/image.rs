//! Decoding one image file (JPEG or PNG, told apart by content) into RGB u8 pixels, HWC.
//!
//! HWC because every decoder writes interleaved pixels and the resizer reads them; converting to CHW would be
//! one more pass over the largest buffer of the pipeline. The loader hands out NHWC batches for the same reason.
//! Decoders: `zune-jpeg` (measured at parity with Pillow's libjpeg-turbo here: 1.77 vs 1.78 ms on 500×375 baseline
//! photos, 5.8 vs 5.2 ms on 512² progressive ones; `image` 0.25 runs the same decoder behind one more layer;
//! turbojpeg would need cmake + nasm or a system libturbojpeg 3, which Debian 12 lacks), vendored with a faster
//! progressive refinement decoder (`vendor/README.md`: 1.7× upstream's decode on progressive photos), and `png`.
use crate::error::{Error, Result};
use std::path::Path;
use zune_jpeg::zune_core::bytestream::{ZByteIoError, ZByteReaderTrait, ZSeekFrom};
use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};

/// Largest file read (bytes): ImageNet's largest JPEG is ~15 MB.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Largest image decoded, in pixels (ImageNet's largest is ~10 Mpx); checked from the header before decoding.
pub const MAX_PIXELS: usize = 1 << 26;
/// Largest side accepted.
const MAX_SIDE: usize = 1 << 15;

/// A decoded image: `h × w × c` u8 pixels, row-major, channels interleaved (HWC). `c` is 3 for decoded files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Image {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Channels (1 or 3).
    pub c: usize,
    /// Pixels, HWC.
    pub data: Vec<u8>,
}

/// Reads `path` (at most [`MAX_FILE_BYTES`]) and decodes it with [`decode`].
pub fn read_image(path: &Path) -> Result<Image> {
    decode(path, &read_file(path)?)
}

/// Reads a whole file, refusing one larger than [`MAX_FILE_BYTES`] before allocating for it.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::format(path, format!("{len} bytes; image files over {MAX_FILE_BYTES} bytes are refused")));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(MAX_FILE_BYTES).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Decodes JPEG (baseline, progressive; grey, YCbCr, CMYK, YCCK) or PNG (any bit depth and colour type) bytes
/// into RGB, choosing the decoder by the leading bytes, not the file name. `path` only names the file in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Image> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => decode_jpeg(path, bytes),
        [0x89, b'P', b'N', b'G', ..] => decode_png(path, bytes),
        _ => {
            let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
            Err(Error::format(path, format!("not a JPEG or PNG (starts with {})", head.join(" "))))
        }
    }
}

fn check_size(path: &Path, w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || w * h > MAX_PIXELS {
        return Err(Error::format(
            path,
            format!("{w}x{h} pixels is outside 1..={MAX_SIDE} per side, {MAX_PIXELS} in all"),
        ));
    }
    Ok(())
}

fn decode_jpeg(path: &Path, bytes: &[u8]) -> Result<Image> {
    let fmt = |e: zune_jpeg::errors::DecodeErrors| Error::format(path, format!("bad JPEG: {e:?}"));
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
        // A truncated or damaged stream is an error (Pillow's default), not a grey-filled image.
        .set_strict_mode(true);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(Bytes { data: bytes, pos: 0 }, opts);
    dec.decode_headers().map_err(fmt)?;
    let info = dec.info().ok_or_else(|| Error::format(path, "JPEG without a frame header"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    check_size(path, w, h)?;
    if dec.output_buffer_size() != Some(w * h * 3) {
        return Err(Error::format(path, "JPEG decoder does not produce RGB for this colour space"));
    }
    // Sized by the checked header.
    let mut data = vec![0; w * h * 3];
    dec.decode_into(&mut data).map_err(fmt)?;
    Ok(Image { w, h, c: 3, data })
}

/// The JPEG decoder's view of the file bytes, with the semantics of zune-core's `ZCursor` (as its `std` build
/// reads one: a read at the end gives nothing and stays there). zune-core reaches a
/// `ZCursor` through `std::io::Read` when built with `std` (its blanket reader impl), so the bit reader's 4-byte
/// refill was a call to libc `memcpy` of a run-time length; here the length is the caller's constant once inlined
/// (baseline decode of the 20 photos re-encoded: 1.04 → 0.89 ms each, `bench_data ROOT rrc`).
struct Bytes<'a> {
    data: &'a [u8],
    /// May pass the end (a seek may put it there).
    pos: usize,
}

impl Bytes<'_> {
    fn rest(&self) -> &[u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
}

impl ZByteReaderTrait for Bytes<'_> {
    #[inline(always)]
    fn read_byte_no_error(&mut self) -> u8 {
        let mut b = [0];
        self.pos += self.peek_bytes(&mut b).unwrap_or(0);
        b[0]
    }

    #[inline(always)]
    fn read_exact_bytes(&mut self, buf: &mut [u8]) -> std::result::Result<(), ZByteIoError> {
        self.peek_exact_bytes(buf)?;
        self.pos += buf.len();
        Ok(())
    }

    #[inline(always)]
    fn read_bytes(&mut self, buf: &mut [u8]) -> std::result::Result<usize, ZByteIoError> {
        let n = self.peek_bytes(buf)?;
        self.pos += n;
        Ok(n)
    }

    #[inline(always)]
    fn peek_bytes(&mut self, buf: &mut [u8]) -> std::result::Result<usize, ZByteIoError> {
        let n = buf.len().min(self.rest().len());
        buf[..n].copy_from_slice(&self.rest()[..n]);
        Ok(n)
    }

    #[inline(always)]
    fn peek_exact_bytes(&mut self, buf: &mut [u8]) -> std::result::Result<(), ZByteIoError> {
        match self.rest().get(..buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(ZByteIoError::NotEnoughBytes(self.rest().len(), buf.len())),
        }
    }

    fn z_seek(&mut self, from: ZSeekFrom) -> std::result::Result<u64, ZByteIoError> {
        let pos = match from {
            ZSeekFrom::Start(n) => usize::try_from(n).ok(),
            ZSeekFrom::End(n) => isize::try_from(n).ok().and_then(|n| self.data.len().checked_add_signed(n)),
            ZSeekFrom::Current(n) => isize::try_from(n).ok().and_then(|n| self.pos.checked_add_signed(n)),
        };
        self.pos = pos.ok_or(ZByteIoError::SeekError("seek before the start or past usize"))?;
        Ok(self.pos as u64)
    }

    fn is_eof(&mut self) -> std::result::Result<bool, ZByteIoError> {
        Ok(self.pos >= self.data.len())
    }

    fn z_position(&mut self) -> std::result::Result<u64, ZByteIoError> {
        Ok(self.pos as u64)
    }

    fn read_remaining(&mut self, sink: &mut Vec<u8>) -> std::result::Result<usize, ZByteIoError> {
        let n = self.rest().len();
        sink.extend_from_slice(self.rest());
        self.pos = self.pos.max(self.data.len());
        Ok(n)
    }
}

fn decode_png(path: &Path, bytes: &[u8]) -> Result<Image> {
    let fmt = |e: png::DecodingError| Error::format(path, format!("bad PNG: {e}"));
    // The limit bounds what the decoder may allocate even before our own header check.
    let limits = png::Limits { bytes: MAX_PIXELS * 4 };
    let mut dec = png::Decoder::new_with_limits(bytes, limits);
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let info = dec.read_header_info().map_err(fmt)?;
    let (w, h) = (info.width as usize, info.height as usize);
    check_size(path, w, h)?;
    let mut r = dec.read_info().map_err(fmt)?;
    let (ct, _) = r.output_color_type();
    let ch = match ct {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(Error::format(path, "palette PNG not expanded")),
    };
    let mut buf = vec![0; w * h * ch];
    r.next_frame(&mut buf).map_err(fmt)?;
    if ch == 3 {
        return Ok(Image { w, h, c: 3, data: buf });
    }
    // Grey feeds all three channels; alpha is dropped (as Pillow's convert("RGB")).
    let data = buf.chunks_exact(ch).flat_map(|p| if ch < 3 { [p[0]; 3] } else { [p[0], p[1], p[2]] }).collect();
    Ok(Image { w, h, c: 3, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zune_jpeg::zune_core::bytestream::ZCursor;

    /// [`Bytes`] answers every reader call as zune-core's `ZCursor` does, at the start, the middle, the end and
    /// past it (the decoder relies on these answers for truncated files).
    #[test]
    fn bytes_reader_behaves_as_zcursor() {
        let data: Vec<u8> = (0..10).collect();
        let mut a = Bytes { data: &data, pos: 0 };
        let mut b = ZCursor::new(&data[..]);
        let mut ops = 0;
        for step in 0..200u32 {
            let n = (step * 7 % 6) as usize;
            let (mut x, mut y) = (vec![9u8; n], vec![9u8; n]);
            let (ra, rb) = match step % 9 {
                0 => (format!("{}", a.read_byte_no_error()), format!("{}", b.read_byte_no_error())),
                1 => (format!("{:?}", a.read_exact_bytes(&mut x)), format!("{:?}", b.read_exact_bytes(&mut y))),
                2 => (format!("{:?}", a.read_bytes(&mut x)), format!("{:?}", b.read_bytes(&mut y))),
                3 => (format!("{:?}", a.peek_bytes(&mut x)), format!("{:?}", b.peek_bytes(&mut y))),
                4 => (format!("{:?}", a.peek_exact_bytes(&mut x)), format!("{:?}", b.peek_exact_bytes(&mut y))),
                5 => {
                    let to = [ZSeekFrom::Current(-3), ZSeekFrom::Start(4), ZSeekFrom::End(-2), ZSeekFrom::Current(5)]
                        [(step as usize / 9) % 4];
                    (format!("{:?}", a.z_seek(to).ok()), format!("{:?}", b.z_seek(to).ok()))
                }
                6 => (format!("{:?}", a.is_eof().ok()), format!("{:?}", b.is_eof().ok())),
                7 => (format!("{:?}", a.z_position().ok()), format!("{:?}", b.z_position().ok())),
                _ => {
                    let (mut s, mut t) = (Vec::new(), Vec::new());
                    let r = (
                        format!("{:?}", a.read_remaining(&mut s).ok()),
                        format!("{:?}", b.read_remaining(&mut t).ok()),
                    );
                    assert_eq!(s, t, "step {step}: read_remaining");
                    a.pos = step as usize % 12;
                    b.z_seek(ZSeekFrom::Start(a.pos as u64)).unwrap();
                    r
                }
            };
            // Errors are compared by kind and counts only (`ZCursor` wraps its through `std::io`).
            let kind = |s: &str| s.split(['(', ' ']).next().unwrap_or("").to_string();
            assert!(ra == rb || (ra.starts_with("Err") && rb.starts_with("Err")), "step {step}: {ra} vs {rb}");
            assert_eq!(kind(&ra), kind(&rb), "step {step}");
            assert_eq!(x, y, "step {step}: bytes");
            assert_eq!(Some(a.pos as u64), b.z_position().ok(), "step {step}: position after");
            ops += 1;
        }
        assert_eq!(ops, 200);
    }
}
