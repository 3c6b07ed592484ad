//! `seeds DIR`: writes each target's generated seeds to `DIR/<target>/seed-N` (scripts/fuzz-smoke.sh; for long
//! runs `cargo +nightly fuzz run seeds fuzz/corpus` fills cargo-fuzz's default corpus folders). A libFuzzer
//! binary like the targets, since the whole crate is built with coverage hooks that only libFuzzer defines: the
//! work happens in its init hook, then it exits before fuzzing.
#![no_main]
#![allow(unreachable_code)] // the init hook exits before the (empty) target body
libfuzzer_sys::fuzz_target!(
    init: {
        // The first non-flag argument, so `cargo fuzz run seeds DIR` (which adds libFuzzer flags) works too.
        let dir = std::env::args().skip(1).find(|a| !a.starts_with('-')).expect("usage: seeds DIR");
        let dir = std::path::PathBuf::from(dir);
        for t in lqnets_fuzz::TARGETS {
            let d = dir.join(t);
            std::fs::create_dir_all(&d).expect("seed folder");
            for (i, s) in lqnets_fuzz::seeds(t).iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i}")), s).expect("seed file");
            }
        }
        std::process::exit(0);
    },
    |_data: &[u8]| {}
);
