//! Fused quantize pass vs a plain copy of the same buffer (16 M floats), K = 1..4, one row (activation layout), on
//! every kernel this CPU has. `cargo bench -p lq-quant --bench fused` (set RAYON_NUM_THREADS=1 for the one-core
//! figure). The ratios to the copy and between kernels are what matter: absolute times drift on this shared machine.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lq_quant::{quantize_with, CodeSet, Isa, Levels, QemState};
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    let n = 16 << 20;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x: Vec<f32> = (0..n).map(|_| rng.gen::<f32>() * 2.0 - 0.5).collect();
    let mut y = vec![0.0f32; n];
    let mut g = c.benchmark_group("fused_16M");
    g.throughput(Throughput::Bytes((n * 4) as u64)).sample_size(10);
    g.bench_function("copy", |b| b.iter(|| y.copy_from_slice(&x)));
    for k in 1..=4 {
        let lv = Levels::from_basis(&QemState::activation(k).unwrap().basis, CodeSet::Binary).unwrap();
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.is_available()) {
            g.bench_function(format!("K{k}_fit_{isa:?}"), |b| {
                b.iter(|| quantize_with(isa, std::slice::from_ref(&lv), &x, &mut y, None, true).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
