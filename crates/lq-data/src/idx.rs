//! MNIST / Fashion-MNIST IDX files (`*-images-idx3-ubyte`, `*-labels-idx1-ubyte`, uncompressed).
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use std::path::Path;

/// Loads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte` from `dir` (prefix `train` or `t10k`).
/// With `as_cifar`, each 28×28 image is zero-padded to 32×32 and replicated to 3 channels (the CIFAR network shape).
pub fn load_idx(dir: &Path, prefix: &str, as_cifar: bool) -> Result<Dataset> {
    let (ip, lp) = (dir.join(format!("{prefix}-images-idx3-ubyte")), dir.join(format!("{prefix}-labels-idx1-ubyte")));
    let (img_dims, pixels) = read(&ip, 2051, 3)?;
    let (lab_dims, labels) = read(&lp, 2049, 1)?;
    if img_dims[0] != lab_dims[0] {
        return Err(Error::format(
            &lp,
            format!("{} labels for {} images in {}", lab_dims[0], img_dims[0], ip.display()),
        ));
    }
    let classes = 10;
    if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
        return Err(Error::format(
            &lp,
            format!("label {} at byte offset {} out of range 0..{classes}", labels[i], 8 + i),
        ));
    }
    let (h, w) = (img_dims[1], img_dims[2]);
    if h == 0 || w == 0 {
        return Err(Error::format(&ip, format!("{h}x{w} images: a zero dimension")));
    }
    let labels = labels.into_iter().map(u16::from).collect();
    if !as_cifar {
        return Ok(Dataset { images: pixels, labels, c: 1, h, w, classes });
    }
    if h > 32 || w > 32 {
        return Err(Error::format(&ip, format!("{h}x{w} images do not fit 32x32")));
    }
    let (top, left) = ((32 - h) / 2, (32 - w) / 2);
    let mut images = vec![0u8; img_dims[0] * 3 * 32 * 32];
    for (src, dst) in pixels.chunks_exact(h * w).zip(images.chunks_exact_mut(3 * 32 * 32)) {
        for ch in 0..3 {
            for y in 0..h {
                let o = ch * 1024 + (top + y) * 32 + left;
                dst[o..o + w].copy_from_slice(&src[y * w..(y + 1) * w]);
            }
        }
    }
    Ok(Dataset { images, labels, c: 3, h: 32, w: 32, classes })
}

/// Reads an IDX file of unsigned bytes with the given magic and number of dimensions.
fn read(path: &Path, magic: u32, ndim: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let b = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Missing {
                path: path.to_path_buf(),
                hint: "run ../shared/scripts/get-real-data.sh DIR (gunzipped IDX files)".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    let head = 4 + 4 * ndim;
    if b.len() < head {
        return Err(Error::format(path, format!("{} bytes is shorter than the {head}-byte IDX header", b.len())));
    }
    let be = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if b[..2] == [0x1f, 0x8b] {
        return Err(Error::format(path, "gzip-compressed; gunzip it first"));
    }
    if be(0) != magic {
        return Err(Error::format(path, format!("magic {:#x} at byte 0, expected {magic:#x}", be(0))));
    }
    let dims: Vec<usize> = (0..ndim).map(|i| be(4 + 4 * i) as usize).collect();
    // The product is checked against the file length before anything is sized by it.
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(b.len() - head) {
        let need = n.map_or("more than usize::MAX".into(), |n| n.to_string());
        let why = format!("dims {dims:?} need {need} data bytes after the header, file has {}", b.len() - head);
        return Err(Error::format(path, why));
    }
    Ok((dims, b[head..].to_vec()))
}
