//! `cargo xtask data ...`: download official dataset archives (verified by SHA-256), check files already on disk,
//! and summarise the bundled MNIST digits.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use dmae_data::Dataset;
use sha2::{Digest, Sha256};

#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    what: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a dataset's official archives into DIR and verify their SHA-256 checksums.
    Fetch {
        /// Which dataset.
        dataset: Remote,
        /// Destination directory (created if needed).
        #[arg(long)]
        to: PathBuf,
        /// Seconds to wait for DNS resolution and for the TCP/TLS connection of each mirror.
        #[arg(long, default_value_t = 10)]
        connect_timeout: u64,
        /// A base URL to try before the official mirrors (e.g. a local cache: http://host/path/).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Verify the SHA-256 checksums of archives already in DIR (e.g. downloaded by hand).
    Verify {
        /// Which dataset.
        dataset: Remote,
        /// Directory holding the archives.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Summarise the bundled MNIST digits (counts, label histogram, pixel statistics).
    Info,
}

#[derive(Clone, Copy, ValueEnum)]
enum Remote {
    /// MNIST: 60,000 training and 10,000 test digits (four gzipped IDX files, ~11 MB).
    Mnist,
    /// CIFAR-10, binary version (one 170 MB tar.gz, extracted to cifar-10-batches-bin/).
    Cifar10,
}

/// One file of an official distribution.
struct Archive {
    name: &'static str,
    bytes: u64,
    sha256: &'static str,
    /// Base URLs tried in order; the file name is appended.
    mirrors: &'static [&'static str],
}

const MNIST_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
];

/// Checksums as published by TensorFlow Datasets and torchvision.
const MNIST: &[Archive] = &[
    Archive {
        name: "train-images-idx3-ubyte.gz",
        bytes: 9_912_422,
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        mirrors: MNIST_MIRRORS,
    },
    Archive {
        name: "train-labels-idx1-ubyte.gz",
        bytes: 28_881,
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        mirrors: MNIST_MIRRORS,
    },
    Archive {
        name: "t10k-images-idx3-ubyte.gz",
        bytes: 1_648_877,
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        mirrors: MNIST_MIRRORS,
    },
    Archive {
        name: "t10k-labels-idx1-ubyte.gz",
        bytes: 4_542,
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        mirrors: MNIST_MIRRORS,
    },
];

/// The binary version from the dataset authors' page (MD5 c32a1d4ab5d03f1284b67883e8d87530 published there).
const CIFAR10: &[Archive] = &[Archive {
    name: "cifar-10-binary.tar.gz",
    bytes: 170_052_171,
    sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    mirrors: &["https://www.cs.toronto.edu/~kriz/"],
}];

fn archives(d: Remote) -> &'static [Archive] {
    match d {
        Remote::Mnist => MNIST,
        Remote::Cifar10 => CIFAR10,
    }
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.what {
        DataCommand::Fetch {
            dataset,
            to,
            connect_timeout,
            mirror,
        } => fetch(
            dataset,
            &to,
            Duration::from_secs(connect_timeout.max(1)),
            mirror.as_deref(),
        ),
        DataCommand::Verify { dataset, dir } => verify(dataset, &dir),
        DataCommand::Info => info(),
    }
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f =
        BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Ok(true)` if `path` exists with the right checksum, `Ok(false)` if it does not exist, an error on mismatch.
fn check(a: &Archive, path: &Path) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let (sum, n) = sha256_file(path)?;
    if sum != a.sha256 {
        bail!(
            "{}: SHA-256 mismatch ({n} bytes, sha256 {sum}; expected {} bytes, sha256 {}). Delete it and fetch again.",
            path.display(),
            a.bytes,
            a.sha256
        );
    }
    Ok(true)
}

fn verify(d: Remote, dir: &Path) -> Result<()> {
    let mut bad = Vec::new();
    for a in archives(d) {
        let p = dir.join(a.name);
        match check(a, &p) {
            Ok(true) => println!("ok        {}  {}", a.sha256, p.display()),
            Ok(false) => {
                println!("missing   {}", p.display());
                bad.push(format!("{} is missing", a.name));
            }
            Err(e) => {
                println!("MISMATCH  {}", p.display());
                bad.push(format!("{e:#}"));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} file(s) failed verification:\n  {}",
            bad.len(),
            archives(d).len(),
            bad.join("\n  ")
        );
    }
    Ok(())
}

fn fetch(d: Remote, to: &Path, connect_timeout: Duration, mirror: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(connect_timeout))
        .timeout_connect(Some(connect_timeout))
        .timeout_send_request(Some(connect_timeout))
        // A stalled transfer fails instead of hanging; no limit on the whole (slow links are fine).
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent("diffmae-xtask (https://github.com/diffmae/diffmae)")
        .build()
        .into();
    for a in archives(d) {
        let dest = to.join(a.name);
        if check(a, &dest)? {
            println!("ok (already present)  {}", dest.display());
            continue;
        }
        let mut failures = Vec::new();
        let mut done = false;
        let extra = mirror.map(|m| format!("{}/", m.trim_end_matches('/')));
        let bases: Vec<&str> = extra
            .as_deref()
            .into_iter()
            .chain(a.mirrors.iter().copied())
            .collect();
        for base in &bases {
            let url = format!("{base}{}", a.name);
            eprintln!("downloading {url}");
            match download(&agent, &url, a, &dest) {
                Ok(secs) => {
                    println!(
                        "ok       {}  {} ({:.1} MB in {secs:.1} s)",
                        a.sha256,
                        dest.display(),
                        a.bytes as f64 / 1e6
                    );
                    done = true;
                    break;
                }
                Err(e) => {
                    eprintln!("  failed: {e:#}");
                    failures.push(format!("  {url}: {e:#}"));
                }
            }
        }
        if !done {
            let urls: Vec<String> = bases.iter().map(|m| format!("{m}{}", a.name)).collect();
            bail!(
                "could not download {} from any mirror:\n{}\n\
                 This machine may have no internet access (or a proxy is needed). Download the file by other means \
                 from one of\n  {}\ninto {} and check it with `cargo xtask data verify {} --dir {}`. The bundled \
                 MNIST subset in datasets/mnist needs no download.",
                a.name,
                failures.join("\n"),
                urls.join("\n  "),
                to.display(),
                remote_name(d),
                to.display()
            );
        }
    }
    if let Remote::Cifar10 = d {
        let tgz = to.join(CIFAR10[0].name);
        extract_tar_gz(&tgz, to)?;
        let ds =
            dmae_data::Cifar::open(to, dmae_data::CifarKind::Cifar10, dmae_data::Split::Train)?;
        println!(
            "extracted {} training images to {}",
            ds.len(),
            to.join("cifar-10-batches-bin").display()
        );
    } else {
        let ds = dmae_data::Mnist::open(to, dmae_data::Split::Train)?;
        let test = dmae_data::Mnist::open(to, dmae_data::Split::Test)?;
        println!(
            "MNIST ready: {} training and {} test digits in {}",
            ds.len(),
            test.len(),
            to.display()
        );
    }
    Ok(())
}

fn remote_name(d: Remote) -> &'static str {
    match d {
        Remote::Mnist => "mnist",
        Remote::Cifar10 => "cifar10",
    }
}

/// Streams `url` into `dest.part`, hashing on the way; renames to `dest` only if size and SHA-256 match.
fn download(agent: &ureq::Agent, url: &str, a: &Archive, dest: &Path) -> Result<f64> {
    let start = Instant::now();
    let mut resp = agent.get(url).call().context("request failed")?;
    let mut body = resp.body_mut().with_config().limit(a.bytes + 1).reader();
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let mut out = File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, mut next_report) = (0u64, 16u64 << 20);
    loop {
        let k = body.read(&mut buf).context("reading the response body")?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .with_context(|| format!("writing {}", part.display()))?;
        n += k as u64;
        if n >= next_report {
            eprintln!("  {:.0} / {:.0} MB", n as f64 / 1e6, a.bytes as f64 / 1e6);
            next_report += 16 << 20;
        }
    }
    out.flush()?;
    drop(out);
    let sum = hex(&h.finalize());
    if n != a.bytes || sum != a.sha256 {
        let _ = std::fs::remove_file(&part);
        bail!(
            "checksum mismatch: got {n} bytes with sha256 {sum}, expected {} bytes with sha256 {}",
            a.bytes,
            a.sha256
        );
    }
    std::fs::rename(&part, dest)
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    Ok(start.elapsed().as_secs_f64())
}

fn extract_tar_gz(tgz: &Path, to: &Path) -> Result<()> {
    let f = File::open(tgz).with_context(|| format!("opening {}", tgz.display()))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
    for entry in ar.entries().context("reading the tar archive")? {
        let mut entry = entry.context("reading a tar entry")?;
        // `unpack_in` refuses paths that escape `to`.
        entry
            .unpack_in(to)
            .with_context(|| format!("extracting {} into {}", tgz.display(), to.display()))?;
    }
    Ok(())
}

fn info() -> Result<()> {
    let dir = dmae_data::bundled_mnist_dir()?;
    println!("bundled MNIST: {}", dir.display());
    println!("| split | digits | per class 0..9 | pixel mean | pixel std |");
    println!("|---|---|---|---|---|");
    for split in [dmae_data::Split::Train, dmae_data::Split::Val] {
        let ds = dmae_data::bundled_mnist(split)?;
        let mut hist = [0usize; 10];
        for &l in ds.labels() {
            hist[usize::from(l)] += 1;
        }
        let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
        for i in 0..ds.len() {
            for &v in ds.get(i)?.data() {
                s += f64::from(v);
                s2 += f64::from(v) * f64::from(v);
                n += 1.0;
            }
        }
        let mean = s / n;
        let std = (s2 / n - mean * mean).sqrt();
        println!(
            "| {split} | {} | {hist:?} | {mean:.4} | {std:.4} |",
            ds.len()
        );
    }
    Ok(())
}
