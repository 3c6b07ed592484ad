//! JPEG input (`lq_data::decode`, the vendored zune-jpeg). Body: `lqnets_fuzz::jpeg`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lqnets_fuzz::jpeg(data));
