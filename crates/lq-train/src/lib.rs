//! Quantization-aware training of LQ-Nets on libtorch through `tch`.

/// Runs one libtorch op; proves the link works.
pub fn smoke() -> f64 {
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    (&t * &t).sum(tch::Kind::Float).double_value(&[])
}

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_links_and_computes() {
        assert_eq!(super::smoke(), 14.0);
    }
}
