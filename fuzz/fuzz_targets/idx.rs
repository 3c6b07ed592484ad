//! The MNIST IDX reader (images + labels). Body: `lqnets_fuzz::idx`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lqnets_fuzz::idx(data));
