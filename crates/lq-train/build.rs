//! Compiles lq-train's C++ side against the same libtorch headers torch-sys builds with (`$LIBTORCH/include`, set
//! by `.cargo/config.toml` or the environment): `csrc/dist.cpp` (process group, DDP reducer and synchronised
//! BatchNorm of `src/dist.rs`) and `csrc/ste.cpp` (the activation quantizer's one-pass STE of `src/quant.rs`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // The ABI switch torch-sys reads (default: the C++11 ABI of every current libtorch).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let lt = PathBuf::from(std::env::var("LIBTORCH").expect(
        "LIBTORCH is not set: run scripts/setup-libtorch.sh (the workspace's .cargo/config.toml points at it)",
    ));
    let inc = lt.join("include");
    // `at::parallel_for` is a header template whose OpenMP pragma only runs in parallel when compiled with
    // -fopenmp, and then it must call the libgomp libtorch itself uses (the wheel ships its own): link that one by
    // name. Without it the loop stays serial (correct, slower).
    let gomp = std::fs::read_dir(lt.join("lib")).ok().and_then(|d| {
        d.filter_map(|e| e.ok()?.file_name().into_string().ok()).find(|n| n.starts_with("libgomp") && n.contains(".so"))
    });
    if let Some(g) = &gomp {
        println!("cargo:rustc-link-lib=dylib:+verbatim={g}");
    }
    let mut build = cc::Build::new();
    if gomp.is_some() {
        build.flag("-fopenmp");
    }
    build
        .cpp(true)
        .file("csrc/dist.cpp")
        .file("csrc/ste.cpp")
        .include("csrc")
        .include(&inc)
        .include(inc.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .opt_level(3)
        .compile("lq_dist");
}
