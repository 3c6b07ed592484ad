//! Scalar oracles: dense f32/f64 convolution of the dequantized values. Never optimised; tests use them as truth.

/// Dense NHWC convolution, OIHW weights, zero padding, f64 accumulation.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    x: &[f32],
    h: usize,
    w: usize,
    c_in: usize,
    wt: &[f32],
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let mut out = vec![0.0f32; oh * ow * c_out];
    for oy in 0..oh {
        for ox in 0..ow {
            for o in 0..c_out {
                let mut s = 0.0f64;
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) =
                            ((oy * stride + ky) as isize - pad as isize, (ox * stride + kx) as isize - pad as isize);
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for ci in 0..c_in {
                            s += x[(iy as usize * w + ix as usize) * c_in + ci] as f64
                                * wt[((o * c_in + ci) * k + ky) * k + kx] as f64;
                        }
                    }
                }
                out[(oy * ow + ox) * c_out + o] = s as f32;
            }
        }
    }
    out
}
