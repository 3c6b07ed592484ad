//! NumPy `.npy` files holding little-endian float32 arrays (format versions 1–3), read and write.
use crate::error::{Error, Result};
use std::path::Path;

/// A float32 array with its shape (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
}

/// Reads a `<f4`, C-order `.npy` file; any other dtype or layout is an error naming the field.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes).map_err(|why| Error::format(path, why))
}

fn parse_npy(b: &[u8]) -> std::result::Result<NpyArray, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b.get(start..start.saturating_add(hlen)).ok_or("header runs past the end of the file")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    if !descr.starts_with("'<f4'") && !descr.starts_with("'float32'") {
        return Err(format!(
            "dtype must be little-endian float32 '<f4', header says {}",
            descr.split(',').next().unwrap_or("")
        ));
    }
    if !field("fortran_order")?.starts_with("False") {
        return Err("fortran_order arrays are not supported; save with C order".into());
    }
    let s = field("shape")?;
    let inner = s.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("malformed shape")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<usize>().map_err(|_| format!("malformed shape entry '{t}'")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bytes = shape.iter().try_fold(4usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let body = &b[start + hlen..];
    if body.len() != bytes {
        return Err(format!("shape {shape:?} needs {bytes} data bytes, file has {}", body.len()));
    }
    let data = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(NpyArray { shape, data })
}

/// Writes a float32 array as a version-1 `.npy` file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}
