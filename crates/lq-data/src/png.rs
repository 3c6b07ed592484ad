//! One 8-bit PNG image as CHW u8 pixels (the `lqnets infer IMAGE.png` input).
use crate::error::{Error, Result};
use std::path::Path;

/// Largest image accepted, in pixels (whatever a model asks for): bounds the frame buffer for any input.
const MAX_PIXELS: usize = 1 << 24;

/// Reads an 8-bit grey, grey+alpha, RGB or RGBA PNG of exactly `expect = [c, h, w]` (c = 1 or 3) as CHW u8
/// pixels: grey is replicated to 3 channels, alpha is dropped. The header's size is checked against `expect` before
/// the frame buffer is allocated, so a tiny file declaring a huge image is an error, not an out-of-memory abort.
pub fn read_png(path: &Path, [c, h, w]: [usize; 3]) -> Result<Vec<u8>> {
    let fmt = |why: String| Error::format(path, why);
    if !matches!(c, 1 | 3) || h.checked_mul(w).is_none_or(|n| n == 0 || n > MAX_PIXELS) {
        return Err(fmt(format!("cannot read a PNG as {c}x{h}x{w}: need 1 or 3 channels and 1..={MAX_PIXELS} pixels")));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    let err = |e: png::DecodingError| match e {
        png::DecodingError::IoError(e) => Error::io(path, e),
        e => fmt(format!("not a readable PNG: {e}")),
    };
    let info = dec.read_header_info().map_err(err)?;
    let (iw, ih) = (info.width as usize, info.height as usize);
    if (iw, ih) != (w, h) {
        return Err(fmt(format!("image is {iw}x{ih} (width x height), the model needs {w}x{h}")));
    }
    if info.bit_depth != png::BitDepth::Eight {
        return Err(fmt(format!("{:?}-bit samples; only 8-bit PNGs are read", info.bit_depth as u8)));
    }
    let ch = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        t => return Err(fmt(format!("colour type {t:?} is not supported (use grey, RGB or RGBA)"))),
    };
    if c == 1 && ch > 2 {
        return Err(fmt("a colour image for a 1-channel model".into()));
    }
    let mut r = dec.read_info().map_err(err)?;
    // Sized by the checked header: w·h·ch bytes, at most 4·MAX_PIXELS.
    let mut buf = vec![0; r.output_buffer_size()];
    r.next_frame(&mut buf).map_err(err)?;
    // HWC → CHW; grey feeds every channel, alpha (the last of 2 or 4) is skipped.
    let plane = h * w;
    Ok((0..c * plane).map(|i| buf[(i % plane) * ch + if ch < 3 { 0 } else { i / plane }]).collect())
}
