//! Layer-level benchmark (bitops.md method): each candidate interleaved with the fp32 GEMM of the same shape,
//! min of 7 reps each, reported as speed-up over fp32 measured in the same seconds.
//! `RAYON_NUM_THREADS=1 cargo bench -p lq-engine --features internals --bench layer` (one thread; matrixmultiply also runs on one).
//! Shapes: A = 3×3 conv 64→256 on 64×64 (GEMM 256×4096×576), B = 1024³ (1×1 conv 1024→1024 on 32×32);
//! with `-- --resnet20` the three 3×3 layer shapes of ResNet-20 at batch 1 (16, 32, 64 channels).
use lq_engine::internals::{avx512, im2col, lut, BitGemm};
use lq_engine::{BitConv, ChannelQuant, Isa, Planes};
use lq_quant::{CodeSet, Levels};
use std::time::Instant;

fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    // SAFETY: a is m×k, b is k×n, c is m×n, all row-major and sized by the caller.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

fn main() {
    // Measured on a pool worker, as the runtime runs (parallel loops started from outside the pool would each
    // pay a cross-thread wake-up).
    rayon::scope(|_| run());
}

fn run() {
    let isa = if std::env::args().any(|a| a == "--portable") { Isa::Portable } else { Isa::best() };
    println!(
        "layer path {isa:?}; threads {}; popc = popcount kernel, lut = table kernel",
        rayon::current_num_threads()
    );
    println!(
        "{:<6} {:<4} {:>8} {:>8} {:>7} {:>8} {:>7} {:>8} {:>7} {:>8} {:>7} {:>8} {:>7}",
        "shape",
        "W/A",
        "fp32 ms",
        "popc ms",
        "x fp32",
        "lut ms",
        "x fp32",
        "layer ms",
        "x fp32",
        "p512 ms",
        "x fp32",
        "l512 ms",
        "x fp32"
    );
    let resnet = std::env::args().any(|a| a == "--resnet20");
    let shapes: &[(&str, usize, usize, usize, usize)] = if resnet {
        &[("R16", 16, 32, 16, 3), ("R32", 32, 16, 32, 3), ("R64", 64, 8, 64, 3)]
    } else {
        &[("A", 64, 64, 256, 3), ("B", 1024, 32, 1024, 1)]
    };
    for &(name, c_in, hw, c_out, k) in shapes {
        let (m, n, kk) = (c_out, hw * hw, c_in * k * k);
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let a: Vec<f32> = (0..m * kk).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..kk * n).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..n * c_in).map(|_| rnd() + 0.5).collect();
        let mut c = vec![0.0f32; m * n];
        for (kw, ka) in [(1, 2), (2, 2), (3, 3), (1, 1)] {
            let wb: Vec<f32> = (0..c_out).flat_map(|_| (0..kw).map(|i| 0.01 * (1 << i) as f32)).collect();
            let conv = BitConv::pack(c_out, c_in, k, 1, &a, &wb).unwrap();
            let ab: Vec<f32> = (0..ka).map(|j| 0.3 * (1 << j) as f32).collect();
            let lv = Levels::from_basis(&ab, CodeSet::Binary).unwrap();
            let cq = ChannelQuant::fold(&lv, &vec![1.0; c_in], &vec![0.0; c_in]);
            let planes = Planes::quantize(&x, hw, hw, &cq).unwrap();
            let patches = im2col(&planes, k, 1, k / 2);
            let g = BitGemm {
                c_out,
                kw,
                ka,
                words: lq_engine::patch_words(c_in, k),
                w: conv.bits(),
                w_basis: conv.basis(),
                a_basis: &ab,
            };
            let mut out = vec![0.0f32; n * c_out];
            let plan = lut::plan(c_in, c_out, kw, ka).filter(|_| isa != Isa::Portable);
            let lw = plan.map_or(vec![], |p| lut::pack_weights(conv.bits(), c_out, kw, g.words, p.lanes));
            let rows = plan.map(|p| lut::input(&planes, k, 1, k / 2, &ab, p));
            let popc = if isa == Isa::Portable { Isa::Portable } else { Isa::Avx2 };
            let (mut tf, mut tk, mut tt, mut tl) = (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
            let (mut t5, mut l5) = (f64::INFINITY, f64::INFINITY);
            let avx512 = avx512::takes(c_in, kw, ka);
            let wp512 = avx512.then(|| avx512::pack_weights(conv.bits(), conv.basis(), c_out, kw, c_in, k));
            let rows512 = avx512.then(|| avx512::Rows::from_planes(&planes, &ab, k, 1, k / 2));
            for _ in 0..if resnet { 101 } else { 7 } {
                tf = tf.min(min_time(1, || sgemm(m, n, kk, &a, &b, &mut c)));
                tk = tk.min(min_time(1, || g.run(popc, &patches, n, &mut out)));
                if let Some(plan) = plan {
                    tt = tt.min(min_time(1, || lut::run(&g, plan, &lw, rows.as_ref().unwrap(), &mut out)));
                }
                // The whole layer as the runtime runs it: f32 in, quantized on the way in, f32 out.
                tl = tl.min(min_time(1, || {
                    drop(std::hint::black_box(conv.forward_f32(&x, hw, hw, &cq, &ab, isa).unwrap()))
                }));
                if avx512 {
                    t5 = t5
                        .min(min_time(1, || avx512::run(rows512.as_ref().unwrap(), wp512.as_ref().unwrap(), &mut out)));
                    l5 = l5.min(min_time(1, || {
                        drop(std::hint::black_box(conv.forward_f32(&x, hw, hw, &cq, &ab, Isa::Avx512).unwrap()))
                    }));
                }
            }
            println!(
                "{:<6} {:<4} {:>8.3} {:>8.3} {:>7.2} {:>8.3} {:>7.2} {:>8.3} {:>7.2} {:>8.3} {:>7.2} {:>8.3} {:>7.2}",
                name,
                format!("{kw}/{ka}"),
                tf * 1e3,
                tk * 1e3,
                tf / tk,
                tt * 1e3,
                tf / tt,
                tl * 1e3,
                tf / tl,
                t5 * 1e3,
                tf / t5,
                l5 * 1e3,
                tf / l5
            );
            if std::env::var_os("LQ_BENCH_GLUE").is_some() {
                let tq = min_time(25, || drop(std::hint::black_box(Planes::quantize(&x, hw, hw, &cq).unwrap())));
                let ti = min_time(25, || drop(std::hint::black_box(im2col(&planes, k, 1, k / 2))));
                let tr = plan.map_or(0.0, |p| {
                    min_time(25, || drop(std::hint::black_box(lut::input(&planes, k, 1, k / 2, &ab, p))))
                });
                let t5 = if avx512 {
                    let f = || avx512::Rows::from_f32(&x, hw, hw, &cq, &ab, k, 1, k / 2);
                    min_time(25, || drop(std::hint::black_box(f())))
                } else {
                    0.0
                };
                println!(
                    "       glue: quantize {:.2} us, im2col {:.2} us, lut input {:.2} us, avx512 rows {:.2} us",
                    tq * 1e6,
                    ti * 1e6,
                    tr * 1e6,
                    t5 * 1e6
                );
            }
        }
    }
}
