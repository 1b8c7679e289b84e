//! `cargo xtask bench ops`: each dmae-core op, forward + backward, against the same function composed
//! from stock candle ops (`dmae_core::reference`), at ViT-tiny and ViT-B shapes.

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use dmae_core::{reference, Gelu};

#[derive(clap::Args)]
pub struct OpsArgs {
    /// Which shape sets: tiny, base or all.
    #[arg(long, default_value = "all")]
    shapes: String,
    /// Minimum measuring time per entry, in milliseconds.
    #[arg(long, default_value_t = 400)]
    min_ms: u64,
    /// Only the ops whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Device: cpu, cuda or cuda:INDEX (needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Sizes of one transformer block's activations.
struct Shapes {
    name: &'static str,
    n: usize,
    l: usize,
    d: usize,
    heads: usize,
    image: (usize, usize, usize),
    patch: usize,
}

const TINY: Shapes = Shapes {
    name: "ViT-tiny (N=64, L=50, D=192, H=3)",
    n: 64,
    l: 50,
    d: 192,
    heads: 3,
    image: (1, 28, 28),
    patch: 4,
};
const BASE: Shapes = Shapes {
    name: "ViT-B (N=8, L=197, D=768, H=12)",
    n: 8,
    l: 197,
    d: 768,
    heads: 12,
    image: (3, 224, 224),
    patch: 16,
};

type OpFn<'a> = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor> + 'a>;

struct Case<'a> {
    op: &'static str,
    inputs: Vec<Tensor>,
    ours: OpFn<'a>,
    stock: OpFn<'a>,
}

fn randn(shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, dev)?)
}

/// Median seconds of `f` over repetitions filling `min`.
fn time(min: Duration, dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed() < min && samples.len() < 200) {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Forward, then backward of a weighted sum (so every output element carries its own gradient).
fn fwd_bwd(f: &OpFn, inputs: &[Tensor], weights: &Tensor) -> Result<()> {
    let out = f(inputs)?;
    (out * weights)?.sum_all()?.backward()?;
    Ok(())
}

fn cases(s: &Shapes, dev: &Device) -> Result<Vec<Case<'static>>> {
    let (n, l, d, h) = (s.n, s.l, s.d, s.heads);
    let dh = d / h;
    let scale = 1.0 / (dh as f64).sqrt();
    let var = |t: Tensor| -> Result<Tensor> { Ok(Var::from_tensor(&t)?.as_tensor().clone()) };
    let ln_in = || -> Result<Vec<Tensor>> {
        Ok(vec![
            var(randn(&[n, l, d], dev)?)?,
            var(randn(&[d], dev)?)?,
            var(randn(&[d], dev)?)?,
        ])
    };
    let qkv = || -> Result<Vec<Tensor>> {
        Ok(vec![
            var(randn(&[n, l, h, dh], dev)?)?,
            var(randn(&[n, l, h, dh], dev)?)?,
            var(randn(&[n, l, h, dh], dev)?)?,
        ])
    };
    let k = l / 4;
    let idx: Vec<u32> = (0..n)
        .flat_map(|b| (0..k).map(move |j| ((j * 4 + b) % l) as u32))
        .collect();
    let idx = Tensor::from_vec(idx, (n, k), dev)?;
    let (c, hh, ww) = s.image;
    let patch = s.patch;
    Ok(vec![
        Case {
            op: "layer_norm",
            inputs: ln_in()?,
            ours: Box::new(|t| Ok(dmae_core::layer_norm(&t[0], &t[1], &t[2], 1e-6)?)),
            stock: Box::new(|t| reference::layer_norm(&t[0], &t[1], &t[2], 1e-6)),
        },
        Case {
            op: "softmax (N,H,L,L)",
            inputs: vec![var(randn(&[n, h, l, l], dev)?)?],
            ours: Box::new(|t| Ok(dmae_core::softmax(&t[0])?)),
            stock: Box::new(|t| reference::softmax(&t[0])),
        },
        Case {
            op: "attention",
            inputs: qkv()?,
            ours: Box::new(move |t| Ok(dmae_core::attention(&t[0], &t[1], &t[2], None, scale)?)),
            stock: Box::new(move |t| reference::attention(&t[0], &t[1], &t[2], None, scale)),
        },
        Case {
            op: "gelu (N,L,4D)",
            inputs: vec![var(randn(&[n, l, 4 * d], dev)?)?],
            ours: Box::new(|t| Ok(dmae_core::gelu(&t[0], Gelu::Erf)?)),
            stock: Box::new(|t| reference::gelu(&t[0], Gelu::Erf)),
        },
        Case {
            op: "gather_tokens (L/4)",
            inputs: vec![var(randn(&[n, l, d], dev)?)?, idx],
            ours: Box::new(|t| Ok(dmae_core::gather_tokens(&t[0], &t[1])?)),
            stock: Box::new(|t| reference::gather_tokens(&t[0], &t[1])),
        },
        Case {
            op: "patchify",
            inputs: vec![var(randn(&[n, c, hh, ww], dev)?)?],
            ours: Box::new(move |t| Ok(dmae_core::patchify(&t[0], patch)?)),
            stock: Box::new(move |t| reference::patchify(&t[0], patch)),
        },
        Case {
            // The non-matmul path of a pre-norm block: LN -> attention -> LN -> GELU (the
            // projections, which are plain matmuls either way, left out).
            op: "LN+attention+LN+GELU",
            inputs: ln_in()?,
            ours: Box::new(move |t| {
                let y = dmae_core::layer_norm(&t[0], &t[1], &t[2], 1e-6)?;
                let q = y.reshape((n, l, h, dh))?;
                let a = dmae_core::attention(&q, &q, &q, None, scale)?.reshape((n, l, d))?;
                let z = dmae_core::layer_norm(&a, &t[1], &t[2], 1e-6)?;
                Ok(dmae_core::gelu(&z, Gelu::Erf)?)
            }),
            stock: Box::new(move |t| {
                let y = reference::layer_norm(&t[0], &t[1], &t[2], 1e-6)?;
                let q = y.reshape((n, l, h, dh))?;
                let a = reference::attention(&q, &q, &q, None, scale)?.reshape((n, l, d))?;
                let z = reference::layer_norm(&a, &t[1], &t[2], 1e-6)?;
                reference::gelu(&z, Gelu::Erf)
            }),
        },
    ])
}

fn adamw_row(s: &Shapes, dev: &Device, min: Duration) -> Result<(f64, f64)> {
    // One block's worth of weights: qkv + proj + MLP = 12 D^2.
    let numel = 12 * s.d * s.d;
    let p = Var::from_tensor(&randn(&[numel], dev)?)?;
    let g = randn(&[numel], dev)?;
    let grads = {
        let loss = (p.as_tensor() * &g)?.sum_all()?;
        loss.backward()?
    };
    let mut opt = dmae_core::AdamW::from_vars(vec![p.clone()], Default::default())?;
    let ours = time(min, dev, || Ok(opt.step(&grads)?))?;
    let (mut m, mut v) = (g.zeros_like()?, g.zeros_like()?);
    let mut t = 0;
    let stock = time(min, dev, || {
        t += 1;
        let (np, nm, nv) =
            reference::adamw_step(p.as_tensor(), &g, &m, &v, 1e-4, (0.9, 0.95), 1e-8, 0.05, t)?;
        p.set(&np)?;
        (m, v) = (nm, nv);
        Ok(())
    })?;
    Ok((stock, ours))
}

pub fn run(args: OpsArgs) -> Result<()> {
    let dev = crate::device(&args.device)?;
    let min = Duration::from_millis(args.min_ms);
    let sets: Vec<&Shapes> = match args.shapes.as_str() {
        "tiny" => vec![&TINY],
        "base" => vec![&BASE],
        "all" => vec![&TINY, &BASE],
        other => anyhow::bail!("--shapes: expected tiny, base or all, got {other:?}"),
    };
    println!(
        "forward + backward, median ms; device {dev:?}, {} rayon threads",
        rayon::current_num_threads()
    );
    println!();
    println!("| shapes | op | stock candle ms | dmae-core ms | speed-up |");
    println!("|---|---|---:|---:|---:|");
    for s in sets {
        for case in cases(s, &dev)? {
            if args.only.as_deref().is_some_and(|o| !case.op.contains(o)) {
                continue;
            }
            let out = (case.ours)(&case.inputs)?;
            let w = randn(out.dims(), &dev)?;
            let stock = time(min, &dev, || fwd_bwd(&case.stock, &case.inputs, &w))?;
            let ours = time(min, &dev, || fwd_bwd(&case.ours, &case.inputs, &w))?;
            println!(
                "| {} | {} | {:.3} | {:.3} | {:.1}x |",
                s.name,
                case.op,
                stock * 1e3,
                ours * 1e3,
                stock / ours
            );
        }
        if args.only.as_deref().is_some_and(|o| !"adamw".contains(o)) {
            continue;
        }
        let (stock, ours) = adamw_row(s, &dev, min)?;
        println!(
            "| {} | adamw step (12 D^2 params) | {:.3} | {:.3} | {:.1}x |",
            s.name,
            stock * 1e3,
            ours * 1e3,
            stock / ours
        );
    }
    Ok(())
}
