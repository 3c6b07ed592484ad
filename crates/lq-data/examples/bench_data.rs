//! `cargo run --release -p lq-data --example bench_data -- ROOT [fb|hwgq|eval|rrc] [images] [workers,...]`
//! ROOT holds `train/<class>/*`. `rrc` = the Pillow comparison chain (random-resized crop, bilinear, flip).
//! With `--json` prints one line `{"ms": ..., "decode_ms": ...}` (for benches/pillow_chain.py).
use lq_data::{bench, Filter, ImageFolder, Split, Transform};

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--json").collect();
    let json = std::env::args().any(|a| a == "--json");
    let src = ImageFolder::open(std::path::Path::new(&args[1]), Split::Train).expect("image folder");
    let chain = args.get(2).map_or("rrc", |s| s.as_str());
    let tf = match chain {
        "rrc" => Transform { jitter: 0.0, lighting: 0.0, filter: Filter::Bilinear, ..Transform::fb(224) },
        name => Transform::by_name(name, 224).expect("fb, hwgq, eval or rrc"),
    };
    let images = args.get(3).map_or(200, |s| s.parse().unwrap());
    let workers: Vec<usize> = args.get(4).map_or(vec![1], |s| s.split(',').map(|w| w.parse().unwrap()).collect());
    let rep = bench(&src, tf, images, &workers);
    if json {
        println!(
            "{{\"ms\": {:.4}, \"read_ms\": {:.4}, \"decode_ms\": {:.4}, \"geometry_ms\": {:.4}, \"post_ms\": {:.4}}}",
            rep.total_ms(),
            rep.read_ms,
            rep.decode_ms,
            rep.geometry_ms,
            rep.post_ms
        );
    } else {
        print!("{rep}");
    }
}
