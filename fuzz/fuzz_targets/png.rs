//! PNG input (`lq_data::read_png`). Body: `lqnets_fuzz::png`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lqnets_fuzz::png(data));
