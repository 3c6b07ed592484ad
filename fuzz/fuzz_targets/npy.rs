//! The .npy reader on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("fuzz-{}.npy", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = lq_data::read_npy(&path);
    }
});
