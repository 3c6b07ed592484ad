//! Binary GEMM kernels behind one safe door, with the LQ epilogue fused.
//!
//! Computes, for every patch row `p` and output channel `o`,
//! `out[p·C_out + o] = Σ_ij v^w_{o,i} v^a_j (2·popc(W_{o,i} ∧ A_{p,j}) − popc(A_{p,j}))`
//! `            = 2·Σ_ij v^w_{o,i} v^a_j P_{o,i,p,j} − (Σ_i v^w_{o,i})·T_p`, with `T_p = Σ_j v^a_j popc(A_{p,j})`
//! computed once per patch (spec §3). Operands of the popcount kernels: weights `[C_out][K_w][words]` (bit = +1),
//! patches in groups of 4 rows interleaved per word, `[group][K_a][words][4]` (bit = 1); the table kernel
//! ([`lut`]) and the AVX-512 kernel ([`avx512`], implicit im2col) have their own. [`Isa::best`] picks, in order:
//! AVX-512 VPOPCNTDQ (the [`avx512`] kernel for layers whose input channels are a multiple of 8), the table kernel
//! where AVX2 is present (it falls back to the AVX2 popcount kernel per layer where its shape rules it out), else
//! the portable kernel; [`Isa`] lets tests and benchmarks force a path.
//!
//! Everything here is crate-private (the `internals` feature re-exports the pieces the benchmarks time): the one
//! public door is [`crate::BitConv`], which owns the packed weights and checks its input before a kernel runs.
use rayon::prelude::*;
use std::sync::OnceLock;

pub(crate) mod avx2;
pub mod avx512;
pub mod lut;
pub(crate) mod portable;
pub(crate) mod quant;

/// Which kernel implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, `u64::count_ones`.
    Portable,
    /// AVX2 nibble-lookup popcount with byte accumulators (x86-64).
    Avx2,
    /// AVX2 table lookup over weight nibbles (module `lut`) for layers its `plan` accepts (output channels in
    /// whole 16-channel blocks, at most 4 bits a side), the AVX2 popcount kernel for the others.
    Avx2Lut,
    /// The AVX-512 VPOPCNTDQ kernel (module `avx512`) for layers whose input channels fill whole bytes (a
    /// multiple of 8), [`Isa::Avx2Lut`]'s choice for the others.
    Avx512,
}

impl Isa {
    /// The best kernel available on this CPU, detected once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST
            .get_or_init(|| [Isa::Avx512, Isa::Avx2Lut].into_iter().find(|i| i.is_available()).unwrap_or(Isa::Portable))
    }
    /// Whether this kernel runs on this CPU.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 | Isa::Avx2Lut => avx2::is_available(),
            Isa::Avx512 => avx512::is_available(),
        }
    }
}

/// The operands of one bit GEMM.
pub struct BitGemm<'a> {
    /// Output channels.
    pub c_out: usize,
    /// Weight planes K_w.
    pub kw: usize,
    /// Activation planes K_a.
    pub ka: usize,
    /// u64 words per plane row.
    pub words: usize,
    /// Weight bits `[C_out][K_w][words]`.
    pub w: &'a [u64],
    /// Weight bases `[C_out][K_w]`.
    pub w_basis: &'a [f32],
    /// Activation basis `[K_a]`.
    pub a_basis: &'a [f32],
}

impl BitGemm<'_> {
    /// `out[p·C_out + o]` for the `rows` patch rows of `a` (`[⌈rows/4⌉][K_a][words][4]`), multi-threaded over
    /// groups of rows. Panics if the buffers are shorter than the shapes say (callers size them).
    pub fn run(&self, isa: Isa, a: &[u64], rows: usize, out: &mut [f32]) {
        let groups = rows.div_ceil(4);
        assert!(a.len() >= groups * self.ka * self.words * 4 && out.len() >= rows * self.c_out);
        assert!(self.w.len() >= self.c_out * self.kw * self.words && self.w_basis.len() >= self.c_out * self.kw);
        assert!(self.a_basis.len() >= self.ka);
        let isa = if isa.is_available() { isa } else { Isa::Portable };
        let sw = self.weight_sums();
        const GB: usize = 8; // groups per parallel task (32 patch rows)
        let ga = self.ka * self.words * 4;
        out[..rows * self.c_out].par_chunks_mut(GB * 4 * self.c_out).enumerate().for_each(|(t, o)| {
            let g0 = t * GB;
            let r = (rows - g0 * 4).min(GB * 4);
            let a = &a[g0 * ga..(g0 + r.div_ceil(4)) * ga];
            match isa {
                // SAFETY: `is_available()` passed above, and the AVX-512 paths include AVX2.
                Isa::Avx2 | Isa::Avx2Lut | Isa::Avx512 => unsafe { avx2::gemm(self, a, r, &sw, o) },
                Isa::Portable => portable::gemm(self, a, r, &sw, o),
            }
        });
    }

    /// `S_w[o] = Σ_i v^w_{o,i}` per output channel (the `T` term's weight).
    pub(crate) fn weight_sums(&self) -> Vec<f32> {
        self.w_basis.chunks(self.kw).take(self.c_out).map(|v| v.iter().sum()).collect()
    }

    /// `T_p = Σ_j v^a_j popc(A_{p,j})` for patch row `lane` of one group.
    #[inline]
    pub(crate) fn t_of(&self, group: &[u64], lane: usize) -> f32 {
        (0..self.ka)
            .map(|j| {
                let c: u32 = (0..self.words).map(|k| group[(j * self.words + k) * 4 + lane].count_ones()).sum();
                self.a_basis[j] * c as f32
            })
            .sum()
    }

    /// The epilogue for one (channel, row): `2·Σ_ij v^w_i v^a_j P_ij − S_w·T`.
    #[inline]
    pub(crate) fn epilogue(&self, o: usize, p: impl Fn(usize, usize) -> u32, sw: f32, t: f32) -> f32 {
        let vw = &self.w_basis[o * self.kw..(o + 1) * self.kw];
        let mut s = 0.0f32;
        for (i, &wi) in vw.iter().enumerate() {
            for (j, &aj) in self.a_basis.iter().enumerate() {
                s += wi * aj * p(i, j) as f32;
            }
        }
        2.0 * s - sw * t
    }
}
