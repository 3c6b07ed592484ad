//! The model-file loader on arbitrary bytes: parse, build, run; any outcome but a panic is fine.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = lq_engine::ModelFile::from_bytes(data) {
        if let Ok(m) = lq_engine::Model::from_file(&f) {
            let [c, h, w] = m.meta.arch.input;
            if c * h * w <= 1 << 16 {
                let x = vec![0.5; c * h * w];
                let _ = m.forward(&x, lq_engine::Isa::Portable);
                let _ = m.forward(&x, lq_engine::Isa::best());
            }
        }
    }
});
