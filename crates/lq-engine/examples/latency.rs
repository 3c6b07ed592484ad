//! Latency of an exported model on the engine alone (for profiling; `lqnets bench infer` compares with the
//! baselines): `cargo run --release -p lq-engine --example latency -- MODEL.lqm [reps] [batch] [--profile]`.
//! Threads: `RAYON_NUM_THREADS` (the calling thread is worker 0, as in `lqnets bench infer`). With `--profile`,
//! the time per image of every step (quantized convs split into input map and kernel, where a conv that quantizes
//! its output for the next one counts that in its kernel; minimum over `reps` passes, at most 5) and the totals by
//! category. `--isa avx2-lut,avx512` times those kernel choices instead of
//! the best one, interleaved rep by rep (each after one warm-up), with their ratios to the first; with
//! `--profile`, it profiles the first of them.
use lq_engine::{Isa, Model};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.iter().any(|a| a == "--profile");
    let isas: Vec<Isa> = match args.iter().position(|a| a == "--isa") {
        Some(i) => args.get(i + 1).ok_or("--isa needs a list")?.split(',').map(parse_isa).collect::<Result<_, _>>()?,
        None => vec![Isa::best()],
    };
    if let Some(i) = isas.iter().find(|i| !i.is_available()) {
        return Err(format!("{i:?} does not run on this CPU").into());
    }
    let mut pos = args.iter().enumerate().filter(|(i, a)| !a.starts_with("--") && args[i.saturating_sub(1)] != "--isa");
    let mut pos = std::iter::from_fn(move || pos.next().map(|(_, a)| a));
    let path = pos.next().ok_or("usage: latency MODEL.lqm [reps] [batch] [--profile]")?;
    let reps: usize = pos.next().map_or(Ok(200), |r| r.parse())?;
    let n: usize = pos.next().map_or(Ok(1), |r| r.parse())?;
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global()?;
    let model = Model::load(path.as_ref())?;
    let [c, h, w] = model.meta.input;
    let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919 % 255) as f32 / 128.0) - 1.0).collect();
    if profile {
        // The minimum per step and phase over `reps` passes (at most 5): the VM's noise only ever adds time.
        let mut rows = model.profile(&x, n, isas[0])?;
        for _ in 1..reps.clamp(1, 5) {
            for (r, s) in rows.iter_mut().zip(model.profile(&x, n, isas[0])?) {
                (r.input, r.kernel, r.other) = (r.input.min(s.input), r.kernel.min(s.kernel), r.other.min(s.other));
            }
        }
        let ms = |s: f64| s * 1e3 / n as f64;
        println!("per image, {threads} thread(s), {n} image(s) one after another, min of {} passes:", reps.clamp(1, 5));
        println!("{:<36} {:>9} {:>9} {:>9}", "step", "input ms", "kernel ms", "other ms");
        for r in &rows {
            println!("{:<36} {:>9.4} {:>9.4} {:>9.4}", r.label, ms(r.input), ms(r.kernel), ms(r.other));
        }
        let sum = |f: &dyn Fn(&lq_engine::StepTime) -> f64| rows.iter().map(f).sum::<f64>();
        let total = sum(&|r| r.total());
        let cat = [
            ("kernel (binary products + fused epilogue)", sum(&|r| r.kernel)),
            ("input map (quantize + operand)", sum(&|r| r.input)),
            ("conv0 / FC (full precision)", sum(&|r| if r.kind == "fp" { r.other } else { 0.0 })),
            ("glue (element-wise, pools, copies, dispatch)", sum(&|r| if r.kind != "fp" { r.other } else { 0.0 })),
        ];
        for (name, s) in cat {
            println!("{name:<46} {:>8.4} ms {:>5.1} %", ms(s), 100.0 * s / total);
        }
        println!("{:<46} {:>8.4} ms", "total", ms(total));
        return Ok(());
    }
    let run = |isa: Isa| {
        let t = Instant::now();
        std::hint::black_box(model.forward_batch(&x, n, isa).unwrap());
        t.elapsed().as_secs_f64() * 1e3
    };
    isas.iter().for_each(|&i| {
        run(i);
    });
    let mut times = vec![Vec::with_capacity(reps); isas.len()];
    for _ in 0..reps {
        isas.iter().zip(&mut times).for_each(|(&i, t)| t.push(run(i)));
    }
    let med = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        (t[0], t[t.len() / 2])
    };
    let stats: Vec<(f64, f64)> = times.iter_mut().map(med).collect();
    for (isa, &(min, median)) in isas.iter().zip(&stats) {
        println!(
            "batch {n}: {isa:?} min {min:.3} ms, median {median:.3} ms, median ratio to {:?} {:.2}",
            isas[0],
            stats[0].1 / median
        );
    }
    Ok(())
}

fn parse_isa(s: &str) -> Result<Isa, String> {
    Ok(match s {
        "portable" => Isa::Portable,
        "avx2" => Isa::Avx2,
        "avx2-lut" => Isa::Avx2Lut,
        "avx512" => Isa::Avx512,
        _ => return Err(format!("--isa: unknown kernel '{s}' (portable, avx2, avx2-lut, avx512)")),
    })
}
