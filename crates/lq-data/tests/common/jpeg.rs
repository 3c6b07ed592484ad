//! Checks of the vendored zune-jpeg's progressive refinement decoder (vendor/README.md) against the unmodified
//! zune-jpeg 0.5.15: the same pixels for every file, and for damaged copies of them, never a panic. Run by
//! tests/progressive_jpeg.rs (the search this CPU gets) and tests/progressive_jpeg_portable.rs (the portable one).
use std::path::{Path, PathBuf};
use zune_jpeg_upstream as upstream;

/// The committed progressive JPEGs (written by tests/data/make_progressive.py).
fn files() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "test JPEGs missing from {}", dir.display());
    out
}

/// `(Ah, Al)` of each scan header (SOS), found by walking the marker segments and skipping entropy-coded data.
fn scans(d: &[u8]) -> Vec<(u8, u8)> {
    let (mut i, mut out) = (2, Vec::new());
    while i + 4 <= d.len() && d[i] == 0xFF {
        let (m, len) = (d[i + 1], usize::from(u16::from_be_bytes([d[i + 2], d[i + 3]])));
        if m == 0xD9 {
            break;
        }
        i += 2 + len;
        if m == 0xDA {
            let a = d[i - 1];
            out.push((a >> 4, a & 15));
            // Entropy-coded data runs to the next marker that is neither a stuffed 0xFF00 nor a restart.
            while i + 1 < d.len() && !(d[i] == 0xFF && d[i + 1] != 0 && !(0xD0..=0xD7).contains(&d[i + 1])) {
                i += 1;
            }
        }
    }
    out
}

/// The unmodified decoder, with lq-data's options (RGB out, strict).
fn decode_upstream(bytes: &[u8]) -> Option<Vec<u8>> {
    let opts = upstream::zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(upstream::zune_core::colorspace::ColorSpace::RGB)
        .set_strict_mode(true);
    upstream::JpegDecoder::new_with_options(upstream::zune_core::bytestream::ZCursor::new(bytes), opts).decode().ok()
}

fn decode_vendored(path: &Path, bytes: &[u8]) -> Option<Vec<u8>> {
    lq_data::decode(path, bytes).ok().map(|img| img.data)
}

pub fn refinement_scans_decode_exactly_as_upstream() {
    for (path, bytes) in files() {
        let sc = scans(&bytes);
        // Not vacuous: each file has AC refinement scans at two levels (Ah = 2 → Al = 1, Ah = 1 → Al = 0).
        assert!(sc.contains(&(2, 1)) && sc.contains(&(1, 0)), "{}: scans {sc:?}", path.display());
        let want = decode_upstream(&bytes).unwrap_or_else(|| panic!("{}: upstream failed", path.display()));
        let got = decode_vendored(&path, &bytes).unwrap_or_else(|| panic!("{}: lq-data failed", path.display()));
        assert!(got == want, "{}: pixels differ from upstream zune-jpeg", path.display());
    }
}

/// Damaged copies (1-4 bytes overwritten after the frame header: scan headers, Huffman tables and entropy-coded
/// data alike): lq-data never panics, and where both decoders return an image it is the same image. Where a
/// marker cuts a refinement scan short, upstream reads one stale buffer bit in an end-of-band run and goes on,
/// the vendored decoder reports the marker (as upstream itself does outside such runs): 2 of these 2000 copies
/// decode with upstream only. The test requires such cases to stay rare.
pub fn damaged_progressive_streams_decode_as_upstream_or_fail_cleanly() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut both, mut one) = (0, 0);
    for (path, bytes) in files() {
        let start = bytes.windows(2).position(|w| w == [0xFF, 0xC2]).expect("a progressive frame header") + 4;
        for _ in 0..400 {
            let mut d = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = start + (next() as usize) % (d.len() - start);
                d[at] = next() as u8;
            }
            let got = std::panic::catch_unwind(|| decode_vendored(&path, &d))
                .unwrap_or_else(|_| panic!("{}: lq-data panicked on a damaged copy", path.display()));
            match (got, decode_upstream(&d)) {
                (Some(g), Some(w)) => {
                    assert!(g == w, "{}: a damaged copy decodes differently from upstream", path.display());
                    both += 1;
                }
                (None, None) => {}
                _ => one += 1,
            }
        }
    }
    eprintln!("damaged copies: {both} decoded by both decoders, {one} by one only");
    // Not vacuous: many damaged copies still decode (a byte in the entropy data changes pixels, not validity).
    assert!(both >= 200, "only {both} damaged copies decoded");
    assert!(one * 50 <= both, "{one} damaged copies decoded by one decoder only, {both} by both");
}
