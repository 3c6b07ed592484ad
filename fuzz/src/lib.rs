//! The bodies of the fuzz targets, as plain functions: `fuzz_targets/*.rs` wrap them for libFuzzer (stable or
//! nightly), and [`seeds`] builds a small valid input for each so a short run starts from real structure.
//! Any outcome but a panic, an abort or a hang is fine.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A per-process scratch folder (the readers take paths), in memory where possible: rewriting a file on ext4
/// flushes it on close (auto_da_alloc), which held the PNG target to ~300 executions per second.
/// `LQNETS_FUZZ_SCRATCH` overrides the parent folder (the smoke script points it at a folder it removes).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = match std::env::var_os("LQNETS_FUZZ_SCRATCH") {
            Some(d) => PathBuf::from(d),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let d = base.join(format!("lqnets-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

fn write(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, data).expect("scratch file");
    p
}

/// Model file bytes: parsed with the hash check, and without it (mutations rarely keep the hash) built and run.
pub fn model_file(data: &[u8]) {
    let _ = lq_engine::ModelFile::from_bytes(data);
    if let Ok(f) = lq_engine::ModelFile::from_bytes_unverified(data) {
        if let Ok(m) = lq_engine::Model::from_file(&f) {
            let [c, h, w] = m.meta.input;
            if c * h * w <= 1 << 16 {
                let x = m.normalize(&vec![100; c * h * w]);
                let _ = m.forward(&x, lq_engine::Isa::Portable);
                let _ = m.forward(&x, lq_engine::Isa::best());
            }
        }
    }
}

/// `.npy` bytes.
pub fn npy(data: &[u8]) {
    let _ = lq_data::read_npy(&write("x.npy", data));
}

/// Byte 0 bit 0 picks CIFAR-100 (else CIFAR-10); the rest is the test-split file.
pub fn cifar(data: &[u8]) {
    let Some((&sel, file)) = data.split_first() else { return };
    let (kind, name) =
        if sel & 1 == 1 { (lq_data::Cifar::Hundred, "test.bin") } else { (lq_data::Cifar::Ten, "test_batch.bin") };
    write(name, file);
    let _ = lq_data::load_cifar(scratch(), kind, false);
}

/// Byte 0 bit 0 = as CIFAR; bytes 1..3 = labels-file length L (u16 LE); then L label-file bytes; the rest is the
/// images file.
pub fn idx(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let l = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    write("t10k-labels-idx1-ubyte", &data[3..3 + l]);
    write("t10k-images-idx3-ubyte", &data[3 + l..]);
    let _ = lq_data::load_idx(scratch(), "t10k", data[0] & 1 == 1);
}

/// Expected shapes the PNG target asks for, picked by byte 0.
pub const PNG_SHAPES: [[usize; 3]; 4] = [[3, 32, 32], [1, 28, 28], [3, 4, 4], [1, 1, 1]];

/// Byte 0 picks the expected shape from [`PNG_SHAPES`]; the rest is the PNG file.
pub fn png(data: &[u8]) {
    let Some((&sel, file)) = data.split_first() else { return };
    let _ = lq_data::read_png(&write("x.png", file), PNG_SHAPES[sel as usize % PNG_SHAPES.len()]);
}

/// JPEG (or PNG) bytes through lq-data's decoder: the vendored zune-jpeg with its refinement-scan change.
pub fn jpeg(data: &[u8]) {
    let _ = lq_data::decode(Path::new("x.jpg"), data);
}

/// The targets by name, for the smoke runner and the seed writer.
pub const TARGETS: [&str; 6] = ["model_file", "npy", "cifar", "idx", "png", "jpeg"];

/// Small valid inputs per target (generated, so nothing large lives in git).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let with = |sel: u8, b: Vec<u8>| [vec![sel], b].concat();
    match target {
        "model_file" => vec![model_seed()],
        "npy" => {
            let p = scratch().join("seed.npy");
            lq_data::write_npy(&p, &[2, 3], &[1.0, -2.0, 0.5, 3.0, 0.0, 7.25]).expect("seed npy");
            vec![std::fs::read(p).expect("seed npy")]
        }
        "cifar" => {
            let rec = |lb: usize| (0..lb + 3072).map(|i| if i < lb { 3 } else { (i % 251) as u8 }).collect::<Vec<_>>();
            vec![with(0, rec(1)), with(1, rec(2))]
        }
        "idx" => {
            let file = |magic: u8, dims: &[u32], body: Vec<u8>| {
                let mut b = vec![0, 0, 8, magic];
                dims.iter().for_each(|d| b.extend_from_slice(&d.to_be_bytes()));
                [b, body].concat()
            };
            let labels = file(1, &[2], vec![3, 9]);
            let images = file(3, &[2, 5, 4], (0..40).collect());
            let l = (labels.len() as u16).to_le_bytes();
            (0..2).map(|sel| [vec![sel, l[0], l[1]], labels.clone(), images.clone()].concat()).collect()
        }
        "png" => {
            use png::ColorType::*;
            [(Rgb, 2u8, 4u32), (Grayscale, 1, 28), (Rgba, 2, 4), (GrayscaleAlpha, 3, 1)]
                .into_iter()
                .map(|(color, sel, side)| {
                    let mut out = Vec::new();
                    let mut e = png::Encoder::new(&mut out, side, side);
                    e.set_color(color);
                    e.set_depth(png::BitDepth::Eight);
                    let px: Vec<u8> = (0..side * side * color.samples() as u32).map(|i| (i * 7) as u8).collect();
                    e.write_header().and_then(|mut w| w.write_image_data(&px)).expect("seed png");
                    with(sel, out)
                })
                .collect()
        }
        // lq-data's progressive test files (successive-approximation scans, restart markers, grey, 4:2:2).
        "jpeg" => [
            &include_bytes!("../../crates/lq-data/tests/data/prog_420_q90.jpg")[..],
            include_bytes!("../../crates/lq-data/tests/data/prog_444_q95_odd.jpg"),
            include_bytes!("../../crates/lq-data/tests/data/prog_422_q75.jpg"),
            include_bytes!("../../crates/lq-data/tests/data/prog_grey_q85.jpg"),
            include_bytes!("../../crates/lq-data/tests/data/prog_420_q80_restarts.jpg"),
        ]
        .map(|b| b.to_vec())
        .to_vec(),
        _ => Vec::new(),
    }
}

/// A valid ResNet-8 (shortcut B, W1A1, 8×8 input) model file, as `lqnets export` writes one.
fn model_seed() -> Vec<u8> {
    use lq_engine::{BitConv, ChannelQuant, Meta, ModelFile, Op, Weights, FORMAT_VERSION};
    let mut s = 7u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let lv = lq_quant::Levels::from_basis(&[0.6], lq_quant::CodeSet::Binary).expect("levels");
    let mut f = ModelFile::default();
    let mut g = Vec::new();
    f.put_f32("conv0.w", vec![16, 3, 3, 3], (0..432).map(|_| rnd()).collect());
    g.push(Op::Conv {
        name: "conv0".into(),
        src: 0,
        c_out: 16,
        k: 3,
        stride: 1,
        pad: 1,
        weights: Weights::Fp,
        bias: false,
    });
    let (mut x, mut c_in) = (1, 16);
    for (st, c) in [16usize, 32, 64].into_iter().enumerate() {
        let p = format!("stage{}.block0", st + 1);
        let stride = if st > 0 { 2 } else { 1 };
        let mut act = |f: &mut ModelFile, name: &str, c: usize| {
            let (scale, shift): (Vec<f32>, Vec<f32>) = (0..c).map(|_| (rnd() + 0.7, rnd())).unzip();
            f.put_act(name, &ChannelQuant::fold(&lv, &scale, &shift), &[0.6]);
        };
        act(&mut f, &format!("{p}.pre"), c_in);
        act(&mut f, &format!("{p}.mid"), c);
        let mut conv = |f: &mut ModelFile, g: &mut Vec<Op>, name: &str, src, act: &str, ci, k, s| {
            let w: Vec<f32> = (0..c * ci * k * k).map(|_| rnd()).collect();
            f.put_conv(&format!("{p}.{name}"), &BitConv::pack(c, ci, k, s, &w, &vec![0.05; c]).expect("conv"));
            let (name, act) = (format!("{p}.{name}"), format!("{p}.{act}"));
            g.push(Op::QConv { name, src, act, c_out: c, k, stride: s, pad: k / 2, bias: false });
            g.len()
        };
        let r = conv(&mut f, &mut g, "conv1", x, "pre", c_in, 3, stride);
        let r = conv(&mut f, &mut g, "conv2", r, "mid", c, 3, 1);
        let short = if st > 0 {
            let s = conv(&mut f, &mut g, "proj", x, "pre", c_in, 1, stride);
            f.put_f32(&format!("{p}.proj_bn.scale"), vec![c], vec![1.0; c]);
            f.put_f32(&format!("{p}.proj_bn.shift"), vec![c], vec![0.0; c]);
            g.push(Op::Bn { name: format!("{p}.proj_bn"), src: s, relu: false });
            g.len()
        } else {
            x
        };
        g.push(Op::Add { a: r, b: short });
        (x, c_in) = (g.len(), c);
    }
    f.put_f32("head_bn.scale", vec![64], vec![1.0; 64]);
    f.put_f32("head_bn.shift", vec![64], vec![0.1; 64]);
    f.put_f32("fc.weight", vec![10, 64], (0..640).map(|_| rnd()).collect());
    f.put_f32("fc.bias", vec![10], vec![0.0; 10]);
    g.push(Op::Bn { name: "head_bn".into(), src: x, relu: true });
    g.push(Op::GlobalAvgPool { src: g.len() });
    g.push(Op::Linear { name: "fc".into(), src: g.len(), c_out: 10 });
    f.meta = Some(Meta {
        version: FORMAT_VERSION,
        model: r#"{"arch":"resnet_cifar","depth":8,"shortcut":"B"}"#.into(),
        classes: 10,
        w_bits: 1,
        a_bits: 1,
        input: [3, 8, 8],
        mean: vec![128.0; 3],
        scale: vec![1.0 / 64.0; 3],
        graph: g,
    });
    let p = scratch().join("seed.lqm");
    f.save(&p).expect("seed model");
    let b = std::fs::read(&p).expect("seed model");
    // The seed must load, or the fuzzer starts from a rejected file and rarely reaches the runtime.
    let parsed = ModelFile::from_bytes(&b).expect("seed model parses");
    lq_engine::Model::from_file(&parsed).expect("seed model is valid");
    model_file(&b);
    b
}
