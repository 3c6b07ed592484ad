//! Latency of an exported model on the engine alone (for profiling; `lqnets bench infer` compares with
//! libtorch): `cargo run --release -p lq-engine --example latency -- MODEL.lqm [reps] [batch]`.
use lq_engine::{Isa, Model};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: latency MODEL.lqm [reps]")?;
    let reps: usize = args.next().map_or(Ok(200), |r| r.parse())?;
    let n: usize = args.next().map_or(Ok(1), |r| r.parse())?;
    let model = Model::load(path.as_ref())?;
    let [c, h, w] = model.meta.input;
    let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919 % 255) as f32 / 128.0) - 1.0).collect();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(model.forward_batch(&x, n, Isa::best()).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("batch {n}: min {:.3} ms, median {:.3} ms ({:?})", times[0], times[reps / 2], Isa::best());
    Ok(())
}
