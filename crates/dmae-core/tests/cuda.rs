//! CUDA kernels against the CPU kernels (feature `cuda`, a GPU at index 0; skipped without one).
//!
//! ```text
//! cargo test --release -p dmae-core --features cuda --test cuda -- --nocapture
//! ```
//!
//! Every op runs forward and backward on both devices from the same random inputs (rounded to the
//! dtype under test first, so both sides see the same values), with the same random output gradient
//! (the loss is `sum(out * r)`). The error of a tensor is normwise relative, `max|gpu - cpu| /
//! max|cpu|`, which stays meaningful where elements cross zero. Bounds: 1e-5 in f32, 1e-2 in bf16
//! and f16 (the CPU reference computes in f32). The test prints one line per compared tensor, then
//! fails if any is over its bound.

#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor, Var};
use dmae_core::{AdamW, AdamWConfig, Gelu, Param};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One compared tensor.
struct Row {
    case: String,
    dtype: DType,
    what: String,
    err: f64,
    tol: f64,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, case: &str, dtype: DType, what: &str, err: f64, tol: f64) {
        self.rows.push(Row {
            case: case.to_string(),
            dtype,
            what: what.to_string(),
            err,
            tol,
        });
    }

    fn print_and_check(&self) {
        println!();
        println!(
            "{:<44} {:<5} {:<10} {:>10} {:>8}  ok",
            "case", "dtype", "tensor", "rel.err", "bound"
        );
        for r in &self.rows {
            let ok = r.err <= r.tol;
            println!(
                "{:<44} {:<5} {:<10} {:>10.2e} {:>8.0e}  {}",
                r.case,
                format!("{:?}", r.dtype).to_lowercase(),
                r.what,
                r.err,
                r.tol,
                if ok { "ok" } else { "FAIL" }
            );
        }
        let bad: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r.err.is_nan() || r.err > r.tol)
            .collect();
        let worst = |dt: DType| {
            self.rows
                .iter()
                .filter(|r| r.dtype == dt)
                .map(|r| r.err)
                .fold(0.0f64, f64::max)
        };
        println!(
            "\n{} tensors compared; worst f32 {:.2e}, bf16 {:.2e}, f16 {:.2e}; {} over bound",
            self.rows.len(),
            worst(DType::F32),
            worst(DType::BF16),
            worst(DType::F16),
            bad.len()
        );
        assert!(
            bad.is_empty(),
            "{} CUDA results differ from the CPU beyond their bound",
            bad.len()
        );
    }
}

fn tol(dt: DType) -> f64 {
    match dt {
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// `max|a - b| / max|b|` over all elements (both brought to f32 on the CPU); NaN anywhere gives inf.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(a.len(), b.len());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(&b) {
        if x.is_nan() || y.is_nan() {
            return Ok(f64::INFINITY);
        }
        if y.is_finite() {
            norm = norm.max((y as f64).abs());
        }
        if x != y {
            // (equal infinities count as equal; any other difference involving one is infinite)
            diff = diff.max((x as f64 - y as f64).abs());
        }
    }
    Ok(if diff == 0.0 {
        0.0
    } else {
        diff / norm.max(1e-30)
    })
}

fn uniform(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// `t` rounded to `dt` and back to f32 (what both devices then see).
fn rounded(t: &Tensor, dt: DType) -> Result<Tensor> {
    t.to_dtype(dt)?.to_dtype(DType::F32)
}

type OpFn = dyn Fn(&[Tensor], &[Tensor]) -> dmae_core::Result<Tensor>;

/// Runs `f(inputs, consts)` forward and backward on the CPU (f32) and on `gpu` (dtype `dt`) and
/// records the error of the output and of the gradient of every input.
fn check_op(
    rep: &mut Report,
    gpu: &Device,
    case: &str,
    dt: DType,
    inputs: &[(&str, Tensor)],
    consts: &[Tensor],
    f: &OpFn,
) -> Result<()> {
    let run = |dev: &Device, dtype: DType| -> Result<(Tensor, Vec<Tensor>)> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(_, t)| Var::from_tensor(&rounded(t, dt)?.to_dtype(dtype)?.to_device(dev)?))
            .collect::<Result<_>>()?;
        let cs: Vec<Tensor> = consts
            .iter()
            .map(|c| {
                let c = if c.dtype() == DType::U32 {
                    c.clone()
                } else {
                    rounded(c, dt)?.to_dtype(dtype)?
                };
                c.to_device(dev)
            })
            .collect::<Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts, &cs).map_err(candle_core::Error::from)?;
        // A fixed pseudo-random output gradient, the same on both devices.
        let mut rng = StdRng::seed_from_u64(7);
        let r = rounded(&uniform(&mut rng, out.dims(), -1.0, 1.0)?, dt)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let grads = (&out * &r)?.sum_all()?.backward()?;
        let gs = vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => candle_core::bail!("{case}: no gradient for an input"),
            })
            .collect::<Result<_>>()?;
        Ok((out, gs))
    };
    let (out_c, g_c) = run(&Device::Cpu, DType::F32)?;
    let (out_g, g_g) = run(gpu, dt)?;
    assert_eq!(out_g.dtype(), dt, "{case}: output dtype");
    rep.add(case, dt, "out", rel_err(&out_g, &out_c)?, tol(dt));
    for (((name, _), gc), gg) in inputs.iter().zip(&g_c).zip(&g_g) {
        rep.add(case, dt, &format!("d{name}"), rel_err(gg, gc)?, tol(dt));
    }
    Ok(())
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn layer_norm_cases(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    for (rows, cols) in [(7, 33), (300, 100), (4, 768), (2, 1)] {
        let x = uniform(rng, &[rows, cols], -2.0, 3.0)?;
        let w = uniform(rng, &[cols], 0.5, 1.5)?;
        let b = uniform(rng, &[cols], -0.5, 0.5)?;
        for dt in DTYPES {
            check_op(
                rep,
                gpu,
                &format!("layer_norm {rows}x{cols}"),
                dt,
                &[("x", x.clone()), ("w", w.clone()), ("b", b.clone())],
                &[],
                &|t, _| dmae_core::layer_norm(&t[0], &t[1], &t[2], 1e-6),
            )?;
        }
    }
    Ok(())
}

fn softmax_cases(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    // Row 1 partly -inf, row 2 entirely -inf (zeros, no gradient).
    let mut v = uniform(rng, &[6, 37], -4.0, 4.0)?.to_vec2::<f32>()?;
    for (j, x) in v[1].iter_mut().enumerate() {
        if j % 3 == 0 {
            *x = f32::NEG_INFINITY;
        }
    }
    v[2].fill(f32::NEG_INFINITY);
    let masked = Tensor::new(v, &Device::Cpu)?;
    let wide = uniform(rng, &[3, 1000], -8.0, 8.0)?;
    for dt in DTYPES {
        // The -inf inputs enter as constants plus a finite variable, so the finite part gets a gradient.
        check_op(
            rep,
            gpu,
            "softmax 6x37 (-inf entries and row)",
            dt,
            &[("x", uniform(rng, &[6, 37], -1.0, 1.0)?)],
            std::slice::from_ref(&masked),
            &|t, c| dmae_core::softmax(&(&t[0] + &c[0])?),
        )?;
        check_op(
            rep,
            gpu,
            "softmax 3x1000",
            dt,
            &[("x", wide.clone())],
            &[],
            &|t, _| dmae_core::softmax(&t[0]),
        )?;
    }
    Ok(())
}

fn gelu_cases(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    let x = uniform(rng, &[1001], -5.0, 5.0)?;
    for dt in DTYPES {
        for kind in [Gelu::Erf, Gelu::Tanh] {
            check_op(
                rep,
                gpu,
                &format!("gelu {kind:?} 1001"),
                dt,
                &[("x", x.clone())],
                &[],
                &move |t, _| dmae_core::gelu(&t[0], kind),
            )?;
        }
    }
    Ok(())
}

/// An additive mask with `-inf` where `(i * 7 + j * 3) % 5 == 0`, query row `full` entirely -inf.
fn mask(lq: usize, lk: usize, full: Option<usize>, rng: &mut StdRng) -> Result<Tensor> {
    let mut v = vec![0f32; lq * lk];
    for i in 0..lq {
        for j in 0..lk {
            v[i * lk + j] = if (i * 7 + j * 3) % 5 == 0 || Some(i) == full {
                f32::NEG_INFINITY
            } else {
                rng.random_range(-1.0..1.0)
            };
        }
    }
    Tensor::from_vec(v, (lq, lk), &Device::Cpu)
}

fn attention_cases(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    for dt in DTYPES {
        // Contiguous self-attention, no mask.
        let (n, l, h, d) = (2, 9, 3, 16);
        check_op(
            rep,
            gpu,
            "attention self 2x9x3x16",
            dt,
            &[
                ("q", uniform(rng, &[n, l, h, d], -1.0, 1.0)?),
                ("k", uniform(rng, &[n, l, h, d], -1.0, 1.0)?),
                ("v", uniform(rng, &[n, l, h, d], -1.0, 1.0)?),
            ],
            &[],
            &|t, _| dmae_core::attention(&t[0], &t[1], &t[2], None, 0.25),
        )?;

        // q, k, v as strided views of one qkv projection (offsets, non-unit token/head strides), a
        // (Lq, Lk) mask broadcast over batch and heads, with one fully masked query row.
        let (n, l, h, d) = (2, 13, 2, 24);
        check_op(
            rep,
            gpu,
            "attention qkv views, (L,L) mask, masked row",
            dt,
            &[("qkv", uniform(rng, &[n, l, h, 3 * d], -1.5, 1.5)?)],
            &[mask(l, l, Some(4), rng)?],
            &move |t, c| {
                let q = t[0].narrow(3, 0, d)?;
                let k = t[0].narrow(3, d, d)?;
                let v = t[0].narrow(3, 2 * d, d)?;
                dmae_core::attention(&q, &k, &v, Some(&c[0]), 1.0 / (d as f64).sqrt())
            },
        )?;

        // Cross-attention, Lq != Lk, Dv != D, k a transposed (N, H, Lk, D) tensor, key-padding mask
        // (N, 1, 1, Lk).
        let (n, lq, lk, h, d, dv) = (3, 5, 37, 2, 32, 20);
        let mut pad = vec![0f32; n * lk];
        for (b, row) in pad.chunks_mut(lk).enumerate() {
            for x in &mut row[lk - 3 * b..] {
                *x = f32::NEG_INFINITY;
            }
        }
        check_op(
            rep,
            gpu,
            "attention cross 5x37, D 32 Dv 20, k^T, pad mask",
            dt,
            &[
                ("q", uniform(rng, &[n, lq, h, d], -1.0, 1.0)?),
                ("kt", uniform(rng, &[n, h, lk, d], -1.0, 1.0)?),
                ("v", uniform(rng, &[n, lk, h, dv], -1.0, 1.0)?),
            ],
            &[Tensor::from_vec(pad, (n, 1, 1, lk), &Device::Cpu)?],
            &|t, c| dmae_core::attention(&t[0], &t[1].transpose(1, 2)?, &t[2], Some(&c[0]), 0.2),
        )?;

        // Long keys (video-sized), head dim 64.
        let (n, lq, lk, h, d) = (1, 40, 1600, 2, 64);
        check_op(
            rep,
            gpu,
            "attention long 40x1600, D 64",
            dt,
            &[
                ("q", uniform(rng, &[n, lq, h, d], -1.0, 1.0)?),
                ("k", uniform(rng, &[n, lk, h, d], -1.0, 1.0)?),
                ("v", uniform(rng, &[n, lk, h, d], -1.0, 1.0)?),
            ],
            &[],
            &|t, _| dmae_core::attention(&t[0], &t[1], &t[2], None, 0.125),
        )?;

        // Head dim 128, odd lengths, a full (N, H, Lq, Lk) mask.
        let (n, lq, lk, h, d) = (2, 33, 70, 3, 128);
        let full = mask(lq, lk, None, rng)?
            .unsqueeze(0)?
            .unsqueeze(0)?
            .broadcast_as((n, h, lq, lk))?
            .contiguous()?;
        let full = (&full + uniform(rng, &[n, h, lq, lk], -0.5, 0.5)?)?;
        check_op(
            rep,
            gpu,
            "attention 33x70, D 128, (N,H,Lq,Lk) mask",
            dt,
            &[
                ("q", uniform(rng, &[n, lq, h, d], -1.0, 1.0)?),
                ("k", uniform(rng, &[n, lk, h, d], -1.0, 1.0)?),
                ("v", uniform(rng, &[n, lk, h, d], -1.0, 1.0)?),
            ],
            &[full],
            &|t, c| dmae_core::attention(&t[0], &t[1], &t[2], Some(&c[0]), 1.0 / (128f64).sqrt()),
        )?;
    }
    Ok(())
}

fn token_cases(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    let (n, l, d) = (3, 20, 17);
    // Gather with repeated indices (their gradients accumulate).
    let gidx: Vec<u32> = vec![
        0, 5, 5, 19, 2, 2, 2, 7, 1, 1, 0, 18, 3, 4, 5, 6, 9, 9, 9, 9, 10, 11, 12, 19,
    ];
    let gidx = Tensor::from_vec(gidx, (n, 8), &Device::Cpu)?;
    // Scatter with distinct indices per sample.
    let sidx: Vec<u32> = vec![3, 1, 4, 15, 9, 2, 0, 19, 18, 5, 6, 7, 11, 12, 13, 14, 10, 8];
    let sidx = Tensor::from_vec(sidx, (n, 6), &Device::Cpu)?;
    for dt in DTYPES {
        check_op(
            rep,
            gpu,
            "gather_tokens 3x20x17 k8, repeated idx",
            dt,
            &[("x", uniform(rng, &[n, l, d], -2.0, 2.0)?)],
            std::slice::from_ref(&gidx),
            &|t, c| dmae_core::gather_tokens(&t[0], &c[0]),
        )?;
        check_op(
            rep,
            gpu,
            "scatter_tokens 3x20x17 k6",
            dt,
            &[
                ("base", uniform(rng, &[n, l, d], -2.0, 2.0)?),
                ("src", uniform(rng, &[n, 6, d], -2.0, 2.0)?),
            ],
            std::slice::from_ref(&sidx),
            &|t, c| dmae_core::scatter_tokens(&t[0], &t[1], &c[0]),
        )?;
    }
    // On CUDA an out-of-range index gathers a zero row (the CPU rejects it).
    let x = uniform(rng, &[1, 4, 5], 1.0, 2.0)?.to_device(gpu)?;
    let idx = Tensor::new(&[[2u32, 4, 1]], gpu)?;
    let out = dmae_core::gather_tokens(&x, &idx).map_err(candle_core::Error::from)?;
    let oob = out.narrow(1, 1, 1)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let inb = rel_err(&out.narrow(1, 0, 1)?, &x.narrow(1, 2, 1)?)?;
    rep.add(
        "gather_tokens out-of-range idx -> zero row",
        DType::F32,
        "out",
        oob.max(inb),
        0.0,
    );
    Ok(())
}

fn patch_cases(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    for dt in DTYPES {
        check_op(
            rep,
            gpu,
            "patchify 2x3x8x12 p4",
            dt,
            &[("x", uniform(rng, &[2, 3, 8, 12], -1.0, 1.0)?)],
            &[],
            &|t, _| dmae_core::patchify(&t[0], 4),
        )?;
        check_op(
            rep,
            gpu,
            "unpatchify 2x4x48 -> 3x8x8 p4",
            dt,
            &[("p", uniform(rng, &[2, 4, 48], -1.0, 1.0)?)],
            &[],
            &|t, _| dmae_core::unpatchify(&t[0], 4, (3, 8, 8)),
        )?;
        check_op(
            rep,
            gpu,
            "patchify_video 2x3x4x8x8 t2 p4",
            dt,
            &[("x", uniform(rng, &[2, 3, 4, 8, 8], -1.0, 1.0)?)],
            &[],
            &|t, _| dmae_core::patchify_video(&t[0], 2, 4),
        )?;
        check_op(
            rep,
            gpu,
            "unpatchify_video 1x16x96 -> 3x4x8x16 t2 p4",
            dt,
            &[("p", uniform(rng, &[1, 16, 96], -1.0, 1.0)?)],
            &[],
            &|t, _| dmae_core::unpatchify_video(&t[0], 2, 4, (3, 4, 8, 16)),
        )?;
    }
    // Integer images move bit for bit.
    let v: Vec<u8> = (0..2 * 3 * 8 * 8).map(|i| (i * 37 % 251) as u8).collect();
    let img = Tensor::from_vec(v, (2, 3, 8, 8), &Device::Cpu)?;
    let c = dmae_core::patchify(&img, 4).map_err(candle_core::Error::from)?;
    let g = dmae_core::patchify(&img.to_device(gpu)?, 4).map_err(candle_core::Error::from)?;
    rep.add(
        "patchify u8 2x3x8x8 p4",
        DType::U8,
        "out",
        rel_err(&g, &c)?,
        0.0,
    );
    let img32 = img.to_dtype(DType::U32)?;
    let c = dmae_core::patchify(&img32, 2).map_err(candle_core::Error::from)?;
    let g = dmae_core::patchify(&img32.to_device(gpu)?, 2).map_err(candle_core::Error::from)?;
    rep.add(
        "patchify u32 2x3x8x8 p2",
        DType::U32,
        "out",
        rel_err(&g, &c)?,
        0.0,
    );
    Ok(())
}

fn adamw_case(rep: &mut Report, gpu: &Device, rng: &mut StdRng) -> Result<()> {
    let shapes: [&[usize]; 3] = [&[37, 5], &[1000], &[3]];
    let init: Vec<Tensor> = shapes
        .iter()
        .map(|s| uniform(rng, s, -1.0, 1.0))
        .collect::<Result<_>>()?;
    let targets: Vec<Tensor> = shapes
        .iter()
        .map(|s| uniform(rng, s, -1.0, 1.0))
        .collect::<Result<_>>()?;
    let config = AdamWConfig {
        lr: 1e-2,
        ..AdamWConfig::default()
    };
    let make = |dev: &Device| -> Result<(Vec<Var>, AdamW)> {
        let vars: Vec<Var> = init
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev)?))
            .collect::<Result<_>>()?;
        let params = vars
            .iter()
            .enumerate()
            .map(|(i, v)| Param {
                var: v.clone(),
                weight_decay: if i == 2 { 0.0 } else { 0.05 },
                lr_scale: if i == 1 { 0.5 } else { 1.0 },
            })
            .collect();
        Ok((
            vars,
            AdamW::new(params, config).map_err(candle_core::Error::from)?,
        ))
    };
    // loss = sum(p * r) + sum(p^2): gradients r + 2p, exact on both devices.
    let step = |vars: &[Var], opt: &mut AdamW, dev: &Device| -> Result<()> {
        let mut loss = Tensor::zeros((), DType::F32, dev)?;
        for (v, r) in vars.iter().zip(&targets) {
            let r = r.to_device(dev)?;
            loss =
                (loss + ((v.as_tensor() * &r)?.sum_all()? + v.as_tensor().sqr()?.sum_all()?)?)?;
        }
        opt.step(&loss.backward()?)
            .map_err(candle_core::Error::from)
    };
    let (vc, mut oc) = make(&Device::Cpu)?;
    let (vg, mut og) = make(gpu)?;
    for _ in 0..5 {
        step(&vc, &mut oc, &Device::Cpu)?;
        step(&vg, &mut og, gpu)?;
    }
    // Round-trip the moments through tensors into a fresh GPU optimiser, then one more step each.
    let (vg2, mut og2) = make(gpu)?;
    for (a, b) in vg2.iter().zip(&vg) {
        a.set(b.as_tensor())?;
    }
    og2.load_state(
        og.step_count(),
        &og.moments().map_err(candle_core::Error::from)?,
    )
    .map_err(candle_core::Error::from)?;
    step(&vc, &mut oc, &Device::Cpu)?;
    step(&vg2, &mut og2, gpu)?;
    let mc = oc.moments().map_err(candle_core::Error::from)?;
    let mg = og2.moments().map_err(candle_core::Error::from)?;
    for (i, (c, g)) in vc.iter().zip(&vg2).enumerate() {
        let case = format!("adamw 6 steps, param {i} {:?}", shapes[i]);
        rep.add(
            &case,
            DType::F32,
            "p",
            rel_err(g.as_tensor(), c.as_tensor())?,
            1e-5,
        );
        rep.add(&case, DType::F32, "m", rel_err(&mg[i].0, &mc[i].0)?, 1e-5);
        rep.add(&case, DType::F32, "v", rel_err(&mg[i].1, &mc[i].1)?, 1e-5);
    }
    Ok(())
}

#[test]
fn cuda_kernels_match_cpu() -> Result<()> {
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            let why = e.to_string();
            let why = why.lines().next().unwrap_or("");
            println!("skipping the CUDA kernel tests: no CUDA device 0 ({why})");
            return Ok(());
        }
    };
    let mut rng = StdRng::seed_from_u64(2024);
    let mut rep = Report::default();
    layer_norm_cases(&mut rep, &gpu, &mut rng)?;
    softmax_cases(&mut rep, &gpu, &mut rng)?;
    gelu_cases(&mut rep, &gpu, &mut rng)?;
    attention_cases(&mut rep, &gpu, &mut rng)?;
    token_cases(&mut rep, &gpu, &mut rng)?;
    patch_cases(&mut rep, &gpu, &mut rng)?;
    adamw_case(&mut rep, &gpu, &mut rng)?;
    rep.print_and_check();
    Ok(())
}

/// An unsupported dtype is a clear error naming the op, not a crash.
#[test]
fn cuda_rejects_unsupported_dtypes() -> Result<()> {
    let Ok(gpu) = Device::new_cuda(0) else {
        println!("skipping: no CUDA device 0");
        return Ok(());
    };
    let x = Tensor::zeros((2, 3), DType::F64, &gpu)?;
    let err = dmae_core::softmax(&x).expect_err("f64 softmax on CUDA must fail");
    assert!(err.to_string().contains("softmax"), "{err}");
    Ok(())
}
