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
    // -fopenmp (GCC's, emitting GOMP_* calls), and then it must call the libgomp libtorch itself uses: the wheel
    // ships one, linked here by name. Its SONAME is plain `libgomp.so.1`, so the process loads one copy, found
    // through this binary's rpath (the wheel's lib folder, `.cargo/config.toml`). Without it (another libtorch
    // build, another compiler) the cfg `lq_omp` stays off and the trainer runs the fused pass on rayon.
    println!("cargo:rustc-check-cfg=cfg(lq_omp)");
    println!("cargo:rerun-if-changed={}", lt.join("lib").display());
    let mut build = cc::Build::new();
    build.cpp(true);
    let gomp = std::fs::read_dir(lt.join("lib")).ok().and_then(|d| {
        d.filter_map(|e| e.ok()?.file_name().into_string().ok()).find(|n| n.starts_with("libgomp") && n.contains(".so"))
    });
    if let Some(g) = gomp.filter(|_| build.get_compiler().is_like_gnu()) {
        println!("cargo:rustc-link-lib=dylib:+verbatim={g}");
        println!("cargo:rustc-cfg=lq_omp");
        build.flag("-fopenmp");
    }
    build
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
