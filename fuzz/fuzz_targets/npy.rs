//! The .npy reader. Body: `lqnets_fuzz::npy`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lqnets_fuzz::npy(data));
