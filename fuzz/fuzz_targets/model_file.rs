//! The model-file loader: parse (with and without the hash check), build, run. Body: `lqnets_fuzz::model_file`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lqnets_fuzz::model_file(data));
