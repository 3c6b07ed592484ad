//! Streamed u8 batches to the network's f32 input on the CPU, three ways, alternated over rounds (the first
//! dropped): `to_batch` then a tensor copy (before), `Pixels::tensors` (the host loop straight into the tensor, what
//! the trainer does on the CPU) and `Pixels::on_device` (libtorch's permute, convert, subtract, scale: what it does
//! on a GPU). `cargo run --release -p lq-train --example normalise [batch] [rounds]`.
use lq_data::{Normalize, U8Batch, IMAGENET_MEAN, IMAGENET_STD};
use lq_train::trainer::{Input, Pixels};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("batch and rounds are numbers"));
    let (n, rounds) = (args.next().unwrap_or(64), args.next().unwrap_or(6).max(2));
    let (h, w, c) = (224, 224, 3);
    let x: Vec<u8> = (0..n * h * w * c).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    let px = Pixels::new(
        U8Batch { x, y: vec![0; n], shape: [n, h, w, c], skipped: 0 },
        Arc::new(Normalize::per_channel(&IMAGENET_MEAN, &IMAGENET_STD, h, w)),
    );
    let norm = Normalize::per_channel(&IMAGENET_MEAN, &IMAGENET_STD, h, w);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        let t = Instant::now();
        let a = px.batch.to_batch(&norm).tensors(tch::Device::Cpu).0;
        let t0 = ms(t);
        let t = Instant::now();
        let b = px.tensors(tch::Device::Cpu).0;
        let t1 = ms(t);
        let t = Instant::now();
        let d = px.on_device(tch::Device::Cpu);
        let t2 = ms(t);
        assert!(a.equal(&b) && a.equal(&d), "the three ways disagree");
        if round > 0 {
            for (v, x) in times.iter_mut().zip([t0, t1, t2]) {
                v.push(x);
            }
        }
    }
    println!("batch {n} x {h}x{w}x{c}, {} rounds: median (min-max) ms", rounds - 1);
    for (name, v) in ["to_batch + tensor copy", "host loop into the tensor", "libtorch ops"].iter().zip(&mut times) {
        v.sort_by(f64::total_cmp);
        println!("{name:<28} {:>7.1} ({:.1}-{:.1})", v[v.len() / 2], v[0], v[v.len() - 1]);
    }
}
