//! Samplers: oracle recovery, posterior variance, DDIM/DDPM agreement, Gaussian data,
//! trajectories and errors.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};
use dmae_diffusion::{
    ddim_timesteps, ddpm_posterior, ddpm_step, q_sample, standard_normal, Error, NoiseSchedule,
    Result, RngKey, Sampler, SamplerKind, ScheduleConfig,
};
use proptest::prelude::*;

/// Per-element mean and (population) variance over the batch dimension of `(N, D)`, averaged
/// over `D`.
fn batch_moments(x: &Tensor) -> Result<(f64, f64)> {
    let x = x.flatten_from(1)?.to_dtype(DType::F64)?;
    let mean = x.mean(0)?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean(0)?;
    Ok((
        mean.mean_all()?.to_scalar::<f64>()?,
        var.mean_all()?.to_scalar::<f64>()?,
    ))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn kinds(t_max: usize) -> Vec<SamplerKind> {
    vec![
        SamplerKind::Ddpm,
        SamplerKind::Ddim {
            steps: 10,
            eta: 0.0,
        },
        SamplerKind::Ddim {
            steps: 10,
            eta: 0.5,
        },
        SamplerKind::Ddim {
            steps: t_max,
            eta: 1.0,
        },
        SamplerKind::Mae,
    ]
}

#[test]
fn oracle_model_recovers_x0_exactly_and_keeps_q_marginals() -> Result<()> {
    // A model that returns the true x0. Every sampler must return x0 exactly, and every x_t it
    // feeds the model must be distributed as q(x_t | x0) = N(√ᾱ_t x0, 1 − ᾱ_t): the DDPM
    // posterior and DDIM (any η) preserve these marginals when x̂0 is exact.
    let dev = Device::Cpu;
    let sched = NoiseSchedule::cosine(100)?;
    let (n, d) = (3000, 4);
    let x0 = Tensor::full(0.8f32, (n, d), &dev)?;
    for kind in kinds(100) {
        let sampler = Sampler::new(sched.clone(), kind)?.with_trajectory(true);
        let seen = RefCell::new(Vec::new());
        let mut oracle = |x_t: &Tensor, t: &[usize]| -> Result<Tensor> {
            assert_eq!(t.len(), n);
            assert!(t.iter().all(|&s| s == t[0]));
            seen.borrow_mut().push((t[0], batch_moments(x_t)?));
            Ok(x0.clone())
        };
        let out = sampler.sample(&mut oracle, (n, d), DType::F32, &dev, RngKey::new(1, 0))?;
        assert_eq!(max_abs_diff(&out.x0, &x0)?, 0.0, "{kind:?}");
        let traj = out.trajectory.expect("trajectory requested");
        assert_eq!(traj.len(), sampler.timesteps().len());
        for (step, &t) in traj.iter().zip(sampler.timesteps()) {
            assert_eq!(step.t, t);
            assert_eq!(max_abs_diff(&step.x0_pred, &x0)?, 0.0);
        }
        let seen = seen.into_inner();
        assert_eq!(
            seen.len(),
            sampler.timesteps().len(),
            "{kind:?}: one model call per step"
        );
        for (t, (mean, var)) in seen {
            let ab = sched.alpha_bar()[t];
            // Standard errors over n·d = 12000 values (correlated within a sample only through
            // x0, which is constant): mean ≈ sd/110, var ≈ 1.3% relative. Allow ~5x.
            let sd = (1.0 - ab).sqrt();
            assert!(
                (mean - ab.sqrt() * 0.8).abs() < 0.05 * sd + 1e-4,
                "{kind:?} t {t}: mean {mean}"
            );
            assert!(
                (var - (1.0 - ab)).abs() < 0.07 * (1.0 - ab) + 1e-9,
                "{kind:?} t {t}: var {var} vs {}",
                1.0 - ab
            );
        }
    }
    Ok(())
}

#[test]
fn ddpm_step_with_a_data_mean_model_has_the_posterior_variance() -> Result<()> {
    // Data x0 with mean μ; the model always returns μ. Given one fixed x_t, x_{t−1} =
    // c0 μ + c1 x_t + √β̃_t z, so over many draws of z its mean is c0 μ + c1 x_t and its
    // variance β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
    let dev = Device::Cpu;
    let mu = 0.3f64;
    let (n, d) = (20_000, 2);
    for sched in [
        NoiseSchedule::new(ScheduleConfig::default())?,
        NoiseSchedule::cosine(1000)?,
    ] {
        for t in [1usize, 10, 300, 700, 999] {
            let x0 = standard_normal(RngKey::new(7, t as u64), (1, d), DType::F32, &dev)?
                .affine(0.5, mu)?;
            let eps = standard_normal(RngKey::new(8, t as u64), (1, d), DType::F32, &dev)?;
            let x_t = q_sample(&sched, &x0, &[t], &eps)?
                .broadcast_as((n, d))?
                .contiguous()?;
            let model_mean = Tensor::full(mu as f32, (n, d), &dev)?;
            let z = standard_normal(RngKey::new(9, t as u64), (n, d), DType::F32, &dev)?;
            let x_prev = ddpm_step(&sched, &x_t, &model_mean, t, &z)?;
            let (post_mean, post_var) = ddpm_posterior(&sched, &x_t, &model_mean, t)?;
            let b = sched.betas()[t];
            let formula = b * (1.0 - sched.alpha_bar()[t - 1]) / (1.0 - sched.alpha_bar()[t]);
            assert!(
                (post_var - formula).abs() <= 1e-12 * formula,
                "t {t}: {post_var} vs {formula}"
            );
            let xs = x_t.get(0)?.to_vec1::<f32>()?;
            let pm = post_mean.get(0)?.to_vec1::<f32>()?;
            for j in 0..d {
                let want =
                    sched.posterior_coef_x0()[t] * mu + sched.posterior_coef_xt()[t] * xs[j] as f64;
                assert!(
                    (pm[j] as f64 - want).abs() < 1e-5,
                    "t {t}: mean {} vs {want}",
                    pm[j]
                );
            }
            let x_prev = x_prev.to_dtype(DType::F64)?;
            let emp_mean = x_prev.mean(0)?;
            let emp_var = x_prev
                .broadcast_sub(&emp_mean)?
                .sqr()?
                .mean(0)?
                .to_vec1::<f64>()?;
            let emp_mean = emp_mean.to_vec1::<f64>()?;
            for j in 0..d {
                let se = (formula / n as f64).sqrt();
                assert!(
                    (emp_mean[j] - pm[j] as f64).abs() < 5.0 * se + 1e-6,
                    "t {t}: mean"
                );
                // Relative standard error of a variance estimate: sqrt(2/n) = 1%.
                assert!(
                    (emp_var[j] - formula).abs() < 0.05 * formula,
                    "t {t}: var {} vs {formula}",
                    emp_var[j]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn ddpm_chain_with_a_data_mean_model_follows_the_variance_recursion() -> Result<()> {
    // Through the whole chain, with the model returning μ, the spread of x_t over the batch
    // obeys m_{t−1} = c0 μ + c1 m_t and v_{t−1} = c1² v_t + β̃_t, from m = 0, v = 1 at T − 1.
    let dev = Device::Cpu;
    let sched = NoiseSchedule::linear(200)?;
    let (n, d, mu) = (4000, 4, -0.4f64);
    let seen = RefCell::new(Vec::new());
    let mut mean_model = |x_t: &Tensor, t: &[usize]| -> Result<Tensor> {
        seen.borrow_mut().push((t[0], batch_moments(x_t)?));
        Ok(Tensor::full(mu as f32, x_t.dims(), x_t.device())?)
    };
    let out = Sampler::new(sched.clone(), SamplerKind::Ddpm)?.sample(
        &mut mean_model,
        (n, d),
        DType::F32,
        &dev,
        RngKey::new(3, 3),
    )?;
    assert_eq!(
        max_abs_diff(&out.x0, &Tensor::full(mu as f32, (n, d), &dev)?)?,
        0.0
    );
    let (mut m, mut v) = (0.0f64, 1.0f64);
    for (t, (emp_m, emp_v)) in seen.into_inner() {
        if t % 20 == 0 || t == 199 {
            assert!(
                (emp_m - m).abs() < 0.05 * v.sqrt(),
                "t {t}: mean {emp_m} vs {m}"
            );
            assert!((emp_v - v).abs() < 0.07 * v, "t {t}: var {emp_v} vs {v}");
        }
        let (c0, c1) = (sched.posterior_coef_x0()[t], sched.posterior_coef_xt()[t]);
        m = c0 * mu + c1 * m;
        v = c1 * c1 * v + sched.posterior_variance()[t];
    }
    Ok(())
}

/// Variance of the final sample for Gaussian data `N(μ, s²)` under the exact posterior-mean
/// predictor, propagated in closed form through the linear-Gaussian updates of DDPM
/// (`x_{t−1} = c0 x̂0 + c1 x_t + √β̃ z`) or DDIM (Song et al. eq. 12 with σ from eq. 16),
/// starting from `Var(x_{T−1}) = 1`.
fn predicted_final_variance(
    sched: &NoiseSchedule,
    ts: &[usize],
    kind: SamplerKind,
    s2: f64,
) -> f64 {
    let ab = sched.alpha_bar();
    let mut v = 1.0;
    for (k, &t) in ts.iter().enumerate() {
        let gain = s2 * ab[t].sqrt() / (ab[t] * s2 + 1.0 - ab[t]); // x̂0 = μ + gain (x_t − √ᾱ μ)
        let Some(&tp) = ts.get(k + 1) else {
            return gain * gain * v;
        };
        let (c, noise_var) = match kind {
            SamplerKind::Ddpm => (
                sched.posterior_coef_x0()[t] * gain + sched.posterior_coef_xt()[t],
                sched.posterior_variance()[t],
            ),
            SamplerKind::Ddim { eta, .. } => {
                let (a, ap) = (ab[t], ab[tp]);
                let sigma2 = eta * eta * (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
                // x_prev = √ᾱ' x̂0 + √(1 − ᾱ' − σ²) ε̂ + σ z, ε̂ = (x_t − √ᾱ x̂0) / √(1 − ᾱ).
                let dir = (1.0 - ap - sigma2).sqrt() / (1.0 - a).sqrt();
                (ap.sqrt() * gain + dir * (1.0 - a.sqrt() * gain), sigma2)
            }
            SamplerKind::Mae => unreachable!(),
        };
        v = c * c * v + noise_var;
    }
    v
}

#[test]
fn exact_denoiser_of_gaussian_data_gives_the_predicted_sample_distribution() -> Result<()> {
    // Data x0 ~ N(μ, s²) per element; its exact x0-predictor is the Gaussian posterior mean
    // E[x0 | x_t] = μ + s² √ᾱ (x_t − √ᾱ μ) / (ᾱ s² + 1 − ᾱ). Every update is then linear in
    // x_t plus Gaussian noise, so the samples are N(μ, v) with v computable in closed form.
    // (v is slightly below s²: fixed-variance DDPM and few-step DDIM are not exact for
    // non-degenerate data, and the different samplers give measurably different v.)
    let dev = Device::Cpu;
    let sched = NoiseSchedule::cosine(500)?;
    let (mu, s2) = (0.7f64, 0.25f64);
    let (n, d) = (4000, 3);
    let abar = sched.alpha_bar().to_vec();
    let mut exact = |x_t: &Tensor, t: &[usize]| -> Result<Tensor> {
        let ab = abar[t[0]];
        let k = s2 * ab.sqrt() / (ab * s2 + 1.0 - ab);
        Ok(x_t.affine(k, mu - k * ab.sqrt() * mu)?)
    };
    for kind in [
        SamplerKind::Ddpm,
        SamplerKind::Ddim {
            steps: 50,
            eta: 0.0,
        },
        SamplerKind::Ddim {
            steps: 50,
            eta: 1.0,
        },
    ] {
        let sampler = Sampler::new(sched.clone(), kind)?;
        let want = predicted_final_variance(&sched, sampler.timesteps(), kind, s2);
        assert!((want - s2).abs() < 0.15 * s2, "{kind:?}: predicted {want}");
        let out = sampler.sample(&mut exact, (n, d), DType::F32, &dev, RngKey::new(21, 0))?;
        let (m, v) = batch_moments(&out.x0)?;
        // Standard errors over 12000 values: mean ≈ 0.0046, variance ≈ 1.3% relative.
        assert!((m - mu).abs() < 0.025, "{kind:?}: mean {m}");
        assert!(
            (v - want).abs() < 0.05 * want,
            "{kind:?}: var {v} vs predicted {want}"
        );
    }
    // MAE mode returns the posterior mean at T − 1: almost exactly μ for every sample (blurry).
    let out = Sampler::new(sched.clone(), SamplerKind::Mae)?.sample(
        &mut exact,
        (n, d),
        DType::F32,
        &dev,
        RngKey::new(21, 0),
    )?;
    let (m, v) = batch_moments(&out.x0)?;
    assert!(
        (m - mu).abs() < 0.01 && v < 1e-3 * s2,
        "MAE mode: mean {m} var {v}"
    );
    Ok(())
}

#[test]
fn ddim_with_eta_one_and_all_steps_is_ddpm() -> Result<()> {
    // Same noise per timestep (drawn from (key, t)) and σ² = β̃_t: the two chains coincide.
    let dev = Device::Cpu;
    let sched = NoiseSchedule::linear(300)?;
    let model =
        |x_t: &Tensor, _t: &[usize]| -> Result<Tensor> { Ok(x_t.affine(0.5, 0.1)?.tanh()?) };
    let key = RngKey::new(4, 2);
    let a = Sampler::new(sched.clone(), SamplerKind::Ddpm)?.sample(
        &mut { model },
        (8, 6),
        DType::F32,
        &dev,
        key,
    )?;
    let b = Sampler::new(
        sched.clone(),
        SamplerKind::Ddim {
            steps: 300,
            eta: 1.0,
        },
    )?
    .sample(&mut { model }, (8, 6), DType::F32, &dev, key)?;
    let diff = max_abs_diff(&a.x0, &b.x0)?;
    assert!(diff < 1e-4, "max diff {diff}");
    // And a different key gives a different DDPM result; DDIM η = 0 ignores the step noise.
    let c = Sampler::new(sched.clone(), SamplerKind::Ddpm)?.sample(
        &mut { model },
        (8, 6),
        DType::F32,
        &dev,
        RngKey::new(4, 3),
    )?;
    assert!(max_abs_diff(&a.x0, &c.x0)? > 1e-3);
    let x_start = Tensor::ones((8, 6), DType::F32, &dev)?;
    let ddim0 = Sampler::new(
        sched,
        SamplerKind::Ddim {
            steps: 20,
            eta: 0.0,
        },
    )?;
    let e = ddim0.sample_from(&mut { model }, x_start.clone(), RngKey::new(0, 0))?;
    let f = ddim0.sample_from(&mut { model }, x_start, RngKey::new(99, 99))?;
    assert_eq!(max_abs_diff(&e.x0, &f.x0)?, 0.0);
    Ok(())
}

#[test]
fn trajectories_start_with_the_mae_prediction() -> Result<()> {
    let dev = Device::Cpu;
    let sched = NoiseSchedule::cosine(1000)?;
    let key = RngKey::new(12, 0);
    let model = |x_t: &Tensor, t: &[usize]| -> Result<Tensor> {
        Ok(x_t.affine(1.0 / (1.0 + t[0] as f64), 0.0)?)
    };
    let mae = Sampler::new(sched.clone(), SamplerKind::Mae)?.with_trajectory(true);
    assert_eq!(mae.timesteps(), &[999]);
    let m = mae.sample(&mut { model }, (2, 5, 3), DType::F32, &dev, key)?;
    let ddim = Sampler::new(
        sched.clone(),
        SamplerKind::Ddim {
            steps: 50,
            eta: 0.0,
        },
    )?
    .with_trajectory(true);
    let out = ddim.sample(&mut { model }, (2, 5, 3), DType::F32, &dev, key)?;
    let traj = out.trajectory.expect("trajectory requested");
    assert_eq!(traj.len(), 50);
    assert_eq!((traj[0].t, traj[49].t), (999, 0));
    assert_eq!(max_abs_diff(&traj[0].x0_pred, &m.x0)?, 0.0);
    assert_eq!(max_abs_diff(&traj[49].x0_pred, &out.x0)?, 0.0);
    // Without the flag no trajectory is kept.
    let plain = Sampler::new(sched, SamplerKind::Ddpm)?.sample(
        &mut { model },
        (1, 2),
        DType::F32,
        &dev,
        key,
    )?;
    assert!(plain.trajectory.is_none());
    Ok(())
}

#[test]
fn clipping_bounds_every_prediction() -> Result<()> {
    let dev = Device::Cpu;
    let sched = NoiseSchedule::linear(50)?;
    let s = Sampler::new(sched, SamplerKind::Ddim { steps: 5, eta: 0.0 })?
        .with_clip_x0(Some((-1.0, 1.0)))?
        .with_trajectory(true);
    let out = s.sample(
        &mut |x: &Tensor, _: &[usize]| Ok(x.affine(10.0, 0.0)?),
        (4, 4),
        DType::F32,
        &dev,
        RngKey::default(),
    )?;
    for step in out.trajectory.unwrap_or_default() {
        let v = step
            .x0_pred
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(v <= 1.0);
    }
    let sched = NoiseSchedule::linear(50)?;
    assert!(Sampler::new(sched, SamplerKind::Mae)?
        .with_clip_x0(Some((1.0, -1.0)))
        .is_err());
    Ok(())
}

#[test]
fn temperature_scales_every_draw_of_a_linear_denoiser() -> Result<()> {
    // The exact denoiser of zero-mean Gaussian data is linear in x_t, so every sampler is a
    // linear map of the noise it draws: at temperature τ each draw is τ times the draw at 1.
    let dev = Device::Cpu;
    let sched = NoiseSchedule::linear(100)?;
    let ab = sched.alpha_bar().to_vec();
    let s2 = 0.3f64;
    let model = |x_t: &Tensor, t: &[usize]| -> Result<Tensor> {
        let a = ab[t[0]];
        Ok(x_t.affine(a.sqrt() * s2 / (a * s2 + 1.0 - a), 0.0)?)
    };
    let key = RngKey::new(5, 1);
    for kind in kinds(100) {
        let base = Sampler::new(sched.clone(), kind)?;
        assert_eq!(base.temperature(), 1.0);
        let one = base
            .sample(&mut { model }, (3, 7), DType::F32, &dev, key)?
            .x0;
        for tau in [0.0, 0.5] {
            let s = base.clone().with_temperature(tau)?;
            let x = s.sample(&mut { model }, (3, 7), DType::F32, &dev, key)?.x0;
            let want = one.affine(tau, 0.0)?;
            assert!(max_abs_diff(&x, &want)? < 1e-5, "{kind:?} at {tau}");
        }
    }
    for tau in [-0.5, f64::INFINITY, f64::NAN] {
        assert!(matches!(
            Sampler::new(sched.clone(), SamplerKind::Ddpm)?.with_temperature(tau),
            Err(Error::InvalidArgument {
                arg: "temperature",
                ..
            })
        ));
    }
    Ok(())
}

#[test]
fn invalid_sampler_arguments_are_typed_errors() -> Result<()> {
    let sched = NoiseSchedule::new(ScheduleConfig::default())?;
    for steps in [0usize, 1001, 5000] {
        match Sampler::new(sched.clone(), SamplerKind::Ddim { steps, eta: 0.0 }) {
            Err(Error::InvalidSteps {
                arg: "steps",
                steps: s,
                num_timesteps: 1000,
            }) => assert_eq!(s, steps),
            other => panic!("steps {steps}: {other:?}"),
        }
    }
    assert!(Sampler::new(
        sched.clone(),
        SamplerKind::Ddim {
            steps: 1000,
            eta: 0.0
        }
    )
    .is_ok());
    for eta in [-0.1, f64::NAN] {
        assert!(matches!(
            Sampler::new(sched.clone(), SamplerKind::Ddim { steps: 50, eta }),
            Err(Error::InvalidArgument { arg: "eta", .. })
        ));
    }
    // A model error is passed through as Error::Denoiser, a wrong output shape as Error::Shape.
    let s = Sampler::new(sched.clone(), SamplerKind::Ddim { steps: 5, eta: 0.0 })?;
    let mut failing = |_: &Tensor, _: &[usize]| -> Result<Tensor> {
        Err(Error::denoiser(std::io::Error::other("model exploded")))
    };
    let err = s.sample(
        &mut failing,
        (1, 2),
        DType::F32,
        &Device::Cpu,
        RngKey::default(),
    );
    assert!(
        matches!(&err, Err(Error::Denoiser(e)) if e.to_string() == "model exploded"),
        "{err:?}"
    );
    let mut wrong = |x: &Tensor, _: &[usize]| -> Result<Tensor> { Ok(x.flatten_all()?) };
    assert!(matches!(
        s.sample(
            &mut wrong,
            (2, 3),
            DType::F32,
            &Device::Cpu,
            RngKey::default()
        ),
        Err(Error::Shape {
            arg: "predict_x0",
            ..
        })
    ));
    // Step functions check their timesteps.
    let x = Tensor::zeros((1, 2), DType::F32, &Device::Cpu)?;
    assert!(matches!(
        ddpm_step(&sched, &x, &x, 1000, &x),
        Err(Error::TimestepOutOfRange { .. })
    ));
    assert!(dmae_diffusion::ddim_step(&sched, &x, &x, 10, Some(10), 0.0, &x).is_err());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ddim_timesteps_are_distinct_descending_and_span_the_schedule(t_max in 1usize..2000, frac in 0.0..1.0f64) {
        let steps = 1 + ((t_max - 1) as f64 * frac) as usize;
        let ts = ddim_timesteps(t_max, steps);
        prop_assert_eq!(ts.len(), steps);
        prop_assert_eq!(ts[0], t_max - 1);
        if steps > 1 {
            prop_assert_eq!(*ts.last().unwrap_or(&usize::MAX), 0);
        }
        prop_assert!(ts.windows(2).all(|w| w[0] > w[1]));
    }
}

#[test]
fn ddim_50_of_1000() {
    let ts = ddim_timesteps(1000, 50);
    assert_eq!(&ts[..3], &[999, 979, 958]);
    assert_eq!(ts[49], 0);
    assert_eq!(
        ddim_timesteps(1000, 1000),
        (0..1000).rev().collect::<Vec<_>>()
    );
}
