//! `cargo xtask cuda-toolkit`: a CUDA 13.0 build toolkit (nvcc, headers, and the cuBLAS / cuRAND /
//! NVRTC / cudart link libraries) from PyPI, in a cache directory, so that `--features cuda` builds on
//! a machine with no GPU and no system CUDA. See docs/cuda.md.
//!
//! Progress goes to stderr and the environment to stdout, for `eval "$(cargo xtask cuda-toolkit)"`.
//!
//! Why 13.0 and not newer: the GPU machines run driver 580 (CUDA 13.0), and PTX from a newer nvcc
//! fails to load there (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). Why a `libcuda.so` stub: cudarc links
//! `-lcuda`, and the real driver library exists only where a GPU is; the stub carries the driver's
//! soname (`libcuda.so.1`), so a binary linked against it loads the real driver at run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The pinned CUDA 13.0 wheels.
const PACKAGES: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cublas==13.0.0.19",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
];

/// `libX.so` -> `libX.so.<major>` links the linker needs (the wheels ship only the versioned names).
const LINKS: [(&str, &str); 5] = [
    ("libcublas.so", "libcublas.so.13"),
    ("libcublasLt.so", "libcublasLt.so.13"),
    ("libcudart.so", "libcudart.so.13"),
    ("libnvrtc.so", "libnvrtc.so.13"),
    ("libcurand.so", "libcurand.so.10"),
];

#[derive(clap::Args)]
pub struct CudaToolkitArgs {
    /// Install directory [default: ~/.cache/diffmae/cuda-13.0].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Compute capability the kernels are compiled for (exported as CUDA_COMPUTE_CAP; 90 = H100/H200).
    #[arg(long, default_value_t = 90)]
    compute_cap: u32,
    /// Reinstall the wheels even if the directory already holds them.
    #[arg(long)]
    force: bool,
}

pub fn run(args: CudaToolkitArgs) -> anyhow::Result<()> {
    let dir = match args.dir {
        Some(d) => d,
        None => home()?.join(".cache/diffmae/cuda-13.0"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let site = dir.join("site-packages");
    let root = site.join("nvidia/cu13");
    let marker = dir.join("installed.txt");
    let wanted = PACKAGES.join("\n") + "\n";

    let installed = std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
        && root.join("bin/nvcc").is_file();
    if installed && !args.force {
        eprintln!(
            "cuda-toolkit: CUDA 13.0 already installed in {}",
            dir.display()
        );
    } else {
        install(&dir, &site)?;
    }

    let lib = root.join("lib");
    for (link, target) in LINKS {
        let l = lib.join(link);
        if std::fs::symlink_metadata(&l).is_err() {
            if !lib.join(target).exists() {
                bail!(
                    "{} is missing: the wheels did not install as expected",
                    lib.join(target).display()
                );
            }
            symlink(target, &l)?;
        }
    }
    if !lib.join("libcuda.so").exists() {
        libcuda_stub(&dir, &lib)?;
    }
    std::fs::write(&marker, &wanted)?;

    let r = shell_quote(&root.to_string_lossy());
    let b = shell_quote(&root.join("bin").to_string_lossy());
    let cap = args.compute_cap;
    let mut out = String::new();
    writeln!(
        out,
        "export CUDA_ROOT={r} CUDA_PATH={r} CUDA_HOME={r} CUDA_COMPUTE_CAP={cap} CUDARC_CUDA_VERSION=13000"
    )?;
    writeln!(out, "export PATH={b}:\"$PATH\"")?;
    print!("{out}");
    eprintln!("cuda-toolkit: nvcc is {}", root.join("bin/nvcc").display());
    Ok(())
}

/// `pip install --target` into a fresh directory, then moved into place, so an interrupted install
/// never looks complete.
fn install(dir: &Path, site: &Path) -> anyhow::Result<()> {
    let tmp = dir.join("site-packages.partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    eprintln!(
        "cuda-toolkit: installing {} wheels into {} (about 1.2 GB)",
        PACKAGES.len(),
        dir.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
        ])
        .arg("--target")
        .arg(&tmp)
        .args(PACKAGES)
        // Older pips ignore the variable; newer ones stop warning about running as root.
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdout(to_stderr()?)
        .status()
        .context("running `python3 -m pip` (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!(
            "`python3 -m pip install --target {} ...` failed ({status})",
            tmp.display()
        );
    }
    if site.exists() {
        std::fs::remove_dir_all(site)?;
    }
    std::fs::rename(&tmp, site)?;
    let nvcc = site.join("nvidia/cu13/bin/nvcc");
    if !nvcc.is_file() {
        bail!("{} is missing after installing the wheels", nvcc.display());
    }
    Ok(())
}

/// Builds `libcuda.so`: every driver-API function cudarc may reference, as an empty function, with
/// soname `libcuda.so.1`. The names come from cudarc's own bindings in the cargo registry.
fn libcuda_stub(dir: &Path, lib: &Path) -> anyhow::Result<()> {
    let src = match cudarc_bindings()? {
        Some(p) => p,
        None => {
            eprintln!(
                "cuda-toolkit: fetching crates (cudarc's sources are needed for the libcuda stub)"
            );
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new(cargo)
                .arg("fetch")
                .current_dir(ws)
                .stdout(to_stderr()?)
                .status()?;
            if !status.success() {
                bail!("`cargo fetch` failed ({status})");
            }
            cudarc_bindings()?.context(
                "cudarc 0.19 sources not found in the cargo registry after `cargo fetch`",
            )?
        }
    };
    let text = std::fs::read_to_string(&src)?;
    let mut names: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace))
        .filter_map(|l| l.trim_start().strip_prefix("fn cu"))
        .filter_map(|rest| {
            let end = rest.find('(')?;
            let name = &rest[..end];
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then_some(name)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 100 {
        bail!(
            "found only {} driver functions in {}",
            names.len(),
            src.display()
        );
    }
    let c: String = names
        .iter()
        .map(|n| format!("int cu{n}(void){{return 999;}}\n"))
        .collect();
    let c_file = dir.join("libcuda_stub.c");
    std::fs::write(&c_file, c)?;
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    eprintln!(
        "cuda-toolkit: building the libcuda.so link stub ({} symbols)",
        names.len()
    );
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(lib.join("libcuda.so"))
        .arg(&c_file)
        .stdout(to_stderr()?)
        .status()
        .with_context(|| format!("running the C compiler {cc:?} (set CC to pick another)"))?;
    if !status.success() {
        bail!("building the libcuda stub failed ({status})");
    }
    Ok(())
}

/// cudarc 0.19's driver bindings (`src/driver/sys/mod.rs`) in the cargo registry, newest first.
fn cudarc_bindings() -> anyhow::Result<Option<PathBuf>> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(h) => PathBuf::from(h),
        None => home()?.join(".cargo"),
    };
    let mut found = Vec::new();
    let Ok(registries) = std::fs::read_dir(cargo_home.join("registry/src")) else {
        return Ok(None);
    };
    for reg in registries.flatten() {
        let Ok(crates) = std::fs::read_dir(reg.path()) else {
            continue;
        };
        for c in crates.flatten() {
            let name = c.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("cudarc-0.19.") {
                let p = c.path().join("src/driver/sys/mod.rs");
                if p.is_file() {
                    found.push((v.parse::<u32>().unwrap_or(0), p));
                }
            }
        }
    }
    found.sort();
    Ok(found.pop().map(|(_, p)| p))
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set; pass --dir")
}

/// A handle to this process's stderr, for child processes' stdout (our stdout carries the exports).
fn to_stderr() -> anyhow::Result<Stdio> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
    }
    #[cfg(not(unix))]
    {
        Ok(Stdio::null())
    }
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

#[cfg(not(unix))]
fn symlink(_: &str, _: &Path) -> anyhow::Result<()> {
    bail!("cargo xtask cuda-toolkit supports Linux only")
}

/// `s` as one POSIX shell word.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
