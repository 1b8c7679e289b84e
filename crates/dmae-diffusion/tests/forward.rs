//! Forward process q(x_t | x_0) statistics and the x0 loss.

use candle_core::{DType, Device, Tensor, Var};
use dmae_diffusion::{
    diffuse, normalize_patches, q_sample, sample_timesteps, standard_normal, timesteps_tensor,
    Error, MaskStrategy, NoiseSchedule, PatchGrid, Result, RngKey, ScheduleConfig, X0Loss,
};

#[test]
fn q_sample_moments_match_sqrt_abar_x0_and_one_minus_abar() -> Result<()> {
    // Groups of `draws` samples share a timestep; x0 is the same vector for every sample.
    // Over the draws, each element's mean must be √ᾱ_t x0_j and its variance 1 − ᾱ_t.
    let dev = Device::Cpu;
    let d = 32;
    let draws = 4000;
    for sched in [
        NoiseSchedule::new(ScheduleConfig::default())?,
        NoiseSchedule::cosine(1000)?,
    ] {
        let ts = [0usize, 100, 500, 999];
        let t: Vec<usize> = ts
            .iter()
            .flat_map(|&t| std::iter::repeat_n(t, draws))
            .collect();
        let n = t.len();
        let x0_row: Vec<f32> = (0..d).map(|j| (j as f32 - 16.0) / 8.0).collect();
        let x0 = Tensor::from_vec(x0_row.clone(), (1, 1, d), &dev)?
            .broadcast_as((n, 1, d))?
            .contiguous()?;
        let eps = standard_normal(RngKey::new(5, 0), (n, 1, d), DType::F32, &dev)?;
        let xt = q_sample(&sched, &x0, &t, &eps)?.reshape((ts.len(), draws, d))?;
        let mean = xt.mean(1)?.to_vec2::<f32>()?;
        let var = xt.var(1)?.to_vec2::<f32>()?;
        for (g, &tt) in ts.iter().enumerate() {
            let ab = sched.alpha_bar()[tt];
            let sd = (1.0 - ab).sqrt();
            for j in 0..d {
                // Mean: 5 standard errors; variance: relative standard error sqrt(2/draws) ≈ 2.2%, allow 5x.
                let want = ab.sqrt() * x0_row[j] as f64;
                let se = sd / (draws as f64).sqrt();
                assert!(
                    (mean[g][j] as f64 - want).abs() < 5.0 * se + 1e-6,
                    "t {tt} j {j}: mean {} vs {want}",
                    mean[g][j]
                );
                let v = var[g][j] as f64;
                assert!(
                    (v - (1.0 - ab)).abs() < 0.11 * (1.0 - ab),
                    "t {tt} j {j}: var {v} vs {}",
                    1.0 - ab
                );
            }
        }
    }
    Ok(())
}

#[test]
fn q_sample_is_exact_per_sample() -> Result<()> {
    // Deterministic check of the formula with a different t per sample.
    let dev = Device::Cpu;
    let s = NoiseSchedule::cosine(1000)?;
    let x0 = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0], [4.0, 0.0]], &dev)?;
    let eps = Tensor::new(&[[0.3f32, -1.0], [2.0, 0.1], [-0.7, 1.5]], &dev)?;
    let t = [0usize, 421, 999];
    let got = q_sample(&s, &x0, &t, &eps)?.to_vec2::<f32>()?;
    let (x0v, ev) = (x0.to_vec2::<f32>()?, eps.to_vec2::<f32>()?);
    for i in 0..3 {
        for j in 0..2 {
            let ab = s.alpha_bar()[t[i]];
            let want = ab.sqrt() * x0v[i][j] as f64 + (1.0 - ab).sqrt() * ev[i][j] as f64;
            assert!(
                (got[i][j] as f64 - want).abs() < 1e-5,
                "{i},{j}: {} vs {want}",
                got[i][j]
            );
        }
    }
    // Errors: wrong t length, t out of range, noise shape.
    assert!(matches!(
        q_sample(&s, &x0, &[1, 2], &eps),
        Err(Error::Shape { arg: "t", .. })
    ));
    assert!(matches!(
        q_sample(&s, &x0, &[1, 2, 1000], &eps),
        Err(Error::TimestepOutOfRange {
            arg: "t",
            t: 1000,
            num_timesteps: 1000
        })
    ));
    assert!(matches!(
        q_sample(&s, &x0, &t, &eps.t()?),
        Err(Error::Shape { arg: "noise", .. })
    ));
    Ok(())
}

#[test]
fn diffuse_draws_t_and_noise_from_the_key() -> Result<()> {
    let dev = Device::Cpu;
    let s = NoiseSchedule::cosine(1000)?;
    let x0 = standard_normal(RngKey::new(0, 0), (6, 5, 4), DType::F32, &dev)?;
    let key = RngKey::new(42, 3);
    let d = diffuse(&s, &x0, key)?;
    assert_eq!(d.t, sample_timesteps(key, 6, 1000)?);
    assert_eq!(
        d.noise.to_vec3::<f32>()?,
        standard_normal(key, (6, 5, 4), DType::F32, &dev)?.to_vec3::<f32>()?
    );
    let want = q_sample(&s, &x0, &d.t, &d.noise)?;
    assert_eq!(d.x_t.to_vec3::<f32>()?, want.to_vec3::<f32>()?);
    // Another step draws other timesteps and noise.
    let e = diffuse(&s, &x0, RngKey::new(42, 4))?;
    assert_ne!(d.t, e.t);
    Ok(())
}

#[test]
fn q_sample_keeps_dtype() -> Result<()> {
    let s = NoiseSchedule::linear(10)?;
    let x0 = Tensor::ones((2, 3, 4), DType::BF16, &Device::Cpu)?;
    let eps = standard_normal(RngKey::new(1, 1), (2, 3, 4), DType::BF16, &Device::Cpu)?;
    assert_eq!(q_sample(&s, &x0, &[0, 9], &eps)?.dtype(), DType::BF16);
    Ok(())
}

#[test]
fn timesteps_are_uniform_and_reproducible() -> Result<()> {
    let key = RngKey::new(3, 7);
    let t = sample_timesteps(key, 20_000, 10)?;
    assert_eq!(t, sample_timesteps(key, 20_000, 10)?);
    assert_eq!(&t[..5], &sample_timesteps(key, 5, 10)?[..]);
    assert_ne!(t, sample_timesteps(RngKey::new(3, 8), 20_000, 10)?);
    let mut counts = [0usize; 10];
    for &x in &t {
        counts[x] += 1;
    }
    // Each count ~ Binomial(20000, 0.1): sd ≈ 42.4; allow 5 sd.
    for c in counts {
        assert!((c as f64 - 2000.0).abs() < 212.0, "{counts:?}");
    }
    assert_eq!(
        timesteps_tensor(&t[..3], &Device::Cpu)?.to_vec1::<u32>()?,
        t[..3].iter().map(|&x| x as u32).collect::<Vec<_>>()
    );
    assert!(sample_timesteps(key, 3, 0).is_err());
    Ok(())
}

#[test]
fn norm_pix_matches_mae() -> Result<()> {
    // One patch of 4 values: mean 2.5, unbiased variance 5/3.
    let x = Tensor::new(&[[[1.0f32, 2.0, 3.0, 4.0]]], &Device::Cpu)?;
    let y = normalize_patches(&x, 1e-6)?.to_vec3::<f32>()?;
    let sd = (5.0f64 / 3.0 + 1e-6).sqrt();
    for (k, v) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
        assert!((y[0][0][k] as f64 - (v - 2.5) / sd).abs() < 1e-6);
    }
    assert!(normalize_patches(&Tensor::ones((1, 2, 1), DType::F32, &Device::Cpu)?, 1e-6).is_err());
    Ok(())
}

#[test]
fn x0_loss_value_and_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let target = Tensor::new(&[[[1.0f32, 2.0, 3.0], [0.0, 0.0, 6.0]]], &dev)?;
    let pred = Var::new(&[[[0.0f32, 2.0, 5.0], [1.0, -1.0, 6.0]]], &dev)?;
    // Plain target: squared errors 1, 0, 4, 1, 1, 0 -> mean 7/6.
    let loss = X0Loss::inpainting().compute(pred.as_tensor(), &target)?;
    assert!((loss.to_scalar::<f32>()? - 7.0 / 6.0).abs() < 1e-6);
    // d/dpred mean((pred − target)²) = 2 (pred − target) / 6.
    let grads = loss.backward()?;
    let g = grads.get(pred.as_tensor()).expect("gradient of x");
    let want = ((pred.as_tensor() - &target)? * (2.0 / 6.0))?;
    let diff = (g - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-6);
    // norm_pix: the target is normalised per patch and gets no gradient.
    let l = X0Loss::pretraining();
    let loss = l.compute(pred.as_tensor(), &target)?;
    let nt = normalize_patches(&target, 1e-6)?;
    let manual = (pred.as_tensor() - &nt)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?;
    assert!((loss.to_scalar::<f32>()? - manual).abs() < 1e-6);
    assert_eq!(X0Loss::default(), l);
    // Shape mismatch and empty masks are errors.
    assert!(matches!(
        l.compute(pred.as_tensor(), &target.narrow(1, 0, 1)?),
        Err(Error::Shape { arg: "pred", .. })
    ));
    let empty = Tensor::zeros((1, 0, 3), DType::F32, &dev)?;
    assert!(matches!(
        l.compute(&empty, &empty),
        Err(Error::Shape { .. })
    ));
    Ok(())
}

#[test]
fn masked_loss_on_full_predictions_counts_only_masked_patches() -> Result<()> {
    let dev = Device::Cpu;
    let (n, l, d) = (3, 16, 5);
    let mi =
        MaskStrategy::random(0.75)?.sample(PatchGrid::new(4, 4), n, RngKey::new(2, 0), &dev)?;
    let x0 = standard_normal(RngKey::new(1, 0), (n, l, d), DType::F32, &dev)?;
    let pred = Var::from_tensor(&standard_normal(
        RngKey::new(1, 1),
        (n, l, d),
        DType::F32,
        &dev,
    )?)?;
    for loss_kind in [X0Loss::inpainting(), X0Loss::pretraining()] {
        let full = loss_kind.compute_masked(pred.as_tensor(), &x0, &mi)?;
        let (_, pm) = mi.split(pred.as_tensor())?;
        let (_, xm) = mi.split(&x0)?;
        let direct = loss_kind.compute(&pm, &xm)?;
        assert!((full.to_scalar::<f32>()? - direct.to_scalar::<f32>()?).abs() < 1e-6);
        // The gradient is zero on visible patches and non-zero on masked ones.
        let g = full.backward()?;
        let g = g.get(pred.as_tensor()).expect("gradient of x");
        let g = g.abs()?.sum(2)?.to_vec2::<f32>()?;
        for (i, m) in mi.masks().iter().enumerate() {
            for (j, &b) in m.iter().enumerate() {
                assert_eq!(g[i][j] > 0.0, b, "sample {i} patch {j}");
            }
        }
    }
    Ok(())
}

/// Every prediction's target, turned back into x0 at the same (x_t, t), gives x0 again.
#[test]
fn predictions_round_trip_to_x0() -> Result<()> {
    use dmae_diffusion::Prediction;
    let dev = Device::Cpu;
    let sched = NoiseSchedule::new(ScheduleConfig::default())?;
    let x0 = Tensor::randn(0f64, 1., (3, 4, 5), &dev)?;
    let key = RngKey::new(3, 1);
    let d = diffuse(&sched, &x0, key)?;
    let t = vec![0, 500, 998];
    let x_t = q_sample(&sched, &x0, &t, &d.noise)?;
    for p in [Prediction::X0, Prediction::Eps, Prediction::V] {
        let target = p.target(&sched, &x0, &d.noise, &t)?;
        let back = p.to_x0(&sched, &x_t, &target, &t)?;
        let err = (back - &x0)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-6, "{p:?}: {err}");
    }
    // v = √ᾱ ε − √(1−ᾱ) x0, spot-checked at t = 500.
    let v = Prediction::V.target(&sched, &x0, &d.noise, &t)?;
    let (a, s) = (
        sched.sqrt_alpha_bar()[500],
        sched.sqrt_one_minus_alpha_bar()[500],
    );
    let want = ((d.noise.get(1)? * a)? - (x0.get(1)? * s)?)?;
    let err = (v.get(1)? - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(err < 1e-12, "{err}");
    Ok(())
}

/// Min-SNR-γ gives every prediction the same x0-space weight min(SNR, γ); weighted losses with
/// unit weights equal the plain loss.
#[test]
fn min_snr_weights_and_weighted_losses() -> Result<()> {
    use dmae_diffusion::{LossWeighting, Prediction};
    let s = NoiseSchedule::new(ScheduleConfig::default())?;
    let w = LossWeighting::MinSnr { gamma: 5.0 };
    for t in [0, 100, 500, 999] {
        let snr = s.snr()[t];
        let x0 = w.weight(&s, Prediction::X0, t);
        assert!((x0 - snr.min(5.0)).abs() < 1e-12);
        // ‖ε − ε̂‖² = SNR ‖x0 − x̂0‖² and ‖v − v̂‖² = (1 + SNR) ‖x0 − x̂0‖².
        assert!((w.weight(&s, Prediction::Eps, t) * snr - x0).abs() < 1e-9 * x0.max(1.0));
        assert!((w.weight(&s, Prediction::V, t) * (snr + 1.0) - x0).abs() < 1e-9 * x0.max(1.0));
        assert_eq!(LossWeighting::Uniform.weight(&s, Prediction::V, t), 1.0);
    }
    assert_eq!(w.weight(&s, Prediction::X0, 0), 5.0, "low noise: capped");
    let dev = Device::Cpu;
    let pred = Tensor::randn(0f32, 1., (3, 4, 5), &dev)?;
    let x0 = Tensor::randn(0f32, 1., (3, 4, 5), &dev)?;
    let l = X0Loss::inpainting();
    let plain = l.compute(&pred, &x0)?.to_scalar::<f32>()?;
    let ones = l
        .compute_weighted(&pred, &x0, &[1.0; 3])?
        .to_scalar::<f32>()?;
    assert!((plain - ones).abs() < 1e-6 * plain, "{plain} vs {ones}");
    let first = l
        .compute_weighted(&pred, &x0, &[3.0, 0.0, 0.0])?
        .to_scalar::<f32>()?;
    let only = l
        .compute(&pred.narrow(0, 0, 1)?, &x0.narrow(0, 0, 1)?)?
        .to_scalar::<f32>()?;
    assert!((first - only).abs() < 1e-5 * only, "{first} vs {only}");
    assert!(l.compute_weighted(&pred, &x0, &[1.0; 2]).is_err());
    Ok(())
}
