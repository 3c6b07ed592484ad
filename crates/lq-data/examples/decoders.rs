//! Decoder / resizer measurement behind the choices in `image_folder.rs` (run with `--release`).
//! `cargo run --release -p lq-data --example decoders -- DIR [rounds]`
use fast_image_resize as fr;
use std::time::Instant;

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out)
        } else {
            out.push(p)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "--pixel" {
        // Cross-check against another decoder: prints pixel (3, 3) of the file as RGB.
        let img = lq_data::read_image(std::path::Path::new(&args[2])).unwrap();
        println!("{:?}", &img.data[(3 * img.w + 3) * 3..][..3]);
        return;
    }
    let mut paths = Vec::new();
    files(std::path::Path::new(&args[1]), &mut paths);
    paths.sort();
    let rounds: usize = args.get(2).map_or(7, |s| s.parse().unwrap());
    let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let (mut tz, mut tr, mut tn) = (vec![], vec![], vec![]);
    let mut resizer = fr::Resizer::new();
    let mut dst = fr::images::Image::new(224, 224, fr::PixelType::U8x3);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut dec = Vec::new();
        for d in &data {
            let opts = zune_jpeg::zune_core::options::DecoderOptions::default()
                .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::RGB);
            let mut j = zune_jpeg::JpegDecoder::new_with_options(
                zune_jpeg::zune_core::bytestream::ZCursor::new(d.as_slice()),
                opts,
            );
            let px = j.decode().unwrap();
            let i = j.info().unwrap();
            dec.push((i.width as u32, i.height as u32, px));
        }
        tz.push(t.elapsed().as_secs_f64() / data.len() as f64);
        for (alg, tv) in
            [(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear), &mut tr), (fr::ResizeAlg::Nearest, &mut tn)]
        {
            let t = Instant::now();
            for (w, h, px) in &dec {
                let src = fr::images::ImageRef::new(*w, *h, px, fr::PixelType::U8x3).unwrap();
                // a 54 %-area crop (the random-resized-crop mean)
                let s = (*w as f64) * 0.735;
                let o = fr::ResizeOptions::new().resize_alg(alg).crop(20.0, 30.0, s, s.min(*h as f64 - 30.0));
                resizer.resize(&src, &mut dst, &o).unwrap();
            }
            tv.push(t.elapsed().as_secs_f64() / data.len() as f64);
        }
    }
    let ms = |v: Vec<f64>| median(v[1..].to_vec()) * 1e3;
    println!(
        "per image (ms, median of {} rounds): zune-jpeg {:.3}  fir bilinear crop->224 {:.3}  fir nearest {:.3}  [{:?}]",
        rounds - 1,
        ms(tz),
        ms(tr),
        ms(tn),
        resizer.cpu_extensions()
    );
}
