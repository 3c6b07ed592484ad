//! The CIFAR-10/100 binary reader. Body: `lqnets_fuzz::cifar`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lqnets_fuzz::cifar(data));
