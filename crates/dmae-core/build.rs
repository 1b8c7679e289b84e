//! With feature `cuda`: compiles every `kernels/*.cu` to PTX in `OUT_DIR` with nvcc, for
//! `src/cuda/` to embed with `include_str!`. Without the feature it does nothing.
//!
//! nvcc is `$NVCC`, else `$CUDA_ROOT/bin/nvcc` (or `$CUDA_PATH`, `$CUDA_HOME`), else `nvcc` on PATH.
//! The target is `sm_$CUDA_COMPUTE_CAP` (default 90, the H100/H200). No `--use_fast_math`: the
//! kernels' `expf`/`erff`/`tanhf`, divisions and square roots must be the accurate ones, since the
//! CUDA tests compare them with the CPU kernels to 1e-5.

use std::path::{Path, PathBuf};
use std::process::Command;

const ENV_VARS: [&str; 5] = [
    "NVCC",
    "CUDA_ROOT",
    "CUDA_PATH",
    "CUDA_HOME",
    "CUDA_COMPUTE_CAP",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    for v in ENV_VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }
    // Read at run time, not `env!`: cargo may reuse a build-script binary compiled for the same
    // package at another path (a second checkout sharing the target dir), whose baked-in path
    // would then point at the other checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let kernels = Path::new(&manifest).join("kernels");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.chars().filter(char::is_ascii_digit).collect())
        .filter(|c: &String| !c.is_empty())
        .unwrap_or_else(|| "90".into());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", kernels.display()))
        .map(|e| e.expect("readable kernels/ entry").path())
        .collect();
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
    }
    // One nvcc per file, all at once: each is single-threaded and takes about a minute.
    let jobs: Vec<_> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|src| {
            let stem = src
                .file_stem()
                .expect("a .cu file has a stem")
                .to_string_lossy();
            let ptx = out.join(format!("{stem}.ptx"));
            let mut cmd = Command::new(&nvcc);
            cmd.arg("--ptx")
                .arg("-O3")
                .arg(format!("-arch=sm_{cap}"))
                .arg("-std=c++17")
                .arg("-I")
                .arg(&kernels)
                .arg("-o")
                .arg(&ptx)
                .arg(src);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| missing_nvcc(&nvcc, &e.to_string()));
            (src, cmd, child)
        })
        .collect();
    for (src, cmd, mut child) in jobs {
        let status = child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for nvcc on {}: {e}", src.display()));
        if !status.success() {
            panic!("nvcc failed ({status}) on {}: {cmd:?}", src.display());
        }
    }
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for v in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(v) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn missing_nvcc(nvcc: &Path, err: &str) -> ! {
    panic!(
        "\n\ndmae-core's `cuda` feature needs nvcc (CUDA 13.0) to compile its kernels, and running `{}` \
         failed: {err}.\nInstall a toolkit without root with\n\n    eval \"$(cargo xtask cuda-toolkit)\"\n\n\
         (it exports CUDA_ROOT, PATH and the rest), or point CUDA_ROOT at a system CUDA 13.0; see \
         docs/cuda.md.\n\n",
        nvcc.display()
    )
}
