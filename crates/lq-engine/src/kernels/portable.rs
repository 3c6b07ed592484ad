//! Portable kernel: `u64::count_ones` (the `popcnt` instruction where the target has it).
use super::BitGemm;

/// One task: `rows` patch rows (groups of 4 interleaved) against every output channel.
pub(crate) fn gemm(g: &BitGemm, a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    let ga = g.ka * g.words * 4;
    for r in 0..rows {
        let group = &a[(r / 4) * ga..(r / 4 + 1) * ga];
        let lane = r % 4;
        let t = g.t_of(group, lane);
        for o in 0..g.c_out {
            let p = |i: usize, j: usize| -> u32 {
                let w = &g.w[(o * g.kw + i) * g.words..(o * g.kw + i + 1) * g.words];
                w.iter().enumerate().map(|(k, &wk)| (wk & group[(j * g.words + k) * 4 + lane]).count_ones()).sum()
            };
            out[r * g.c_out + o] = g.epilogue(o, p, sw[o], t);
        }
    }
}
