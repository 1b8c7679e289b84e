//! Noise schedules: closed-form spot values, monotonicity and range, the exponent ρ.

use dmae_diffusion::{BetaSchedule, Error, NoiseSchedule, Result, RhoTarget, ScheduleConfig};
use proptest::prelude::*;
use std::f64::consts::FRAC_PI_2;

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn linear_spot_values() -> Result<()> {
    let s = NoiseSchedule::new(ScheduleConfig::default())?;
    assert_eq!(s.num_timesteps(), 1000);
    // β_t = 1e-4 + (0.02 − 1e-4) t / 999.
    for t in [0usize, 1, 10, 499, 998, 999] {
        let beta = 1e-4 + (0.02 - 1e-4) * t as f64 / 999.0;
        assert!(
            close(s.betas()[t], beta, 1e-12),
            "beta[{t}] = {} vs {beta}",
            s.betas()[t]
        );
        assert!(close(s.alphas()[t], 1.0 - beta, 1e-12));
    }
    // ᾱ_t = ∏_{s≤t} (1 − β_s), in closed form through the log-sum, and the literature values
    // of DDPM's schedule: ᾱ_999 ≈ 4.04e-5, √ᾱ_999 ≈ 6.36e-3.
    for t in [0usize, 1, 10, 100, 500, 999] {
        let log: f64 = (0..=t)
            .map(|k| (1.0 - (1e-4 + (0.02 - 1e-4) * k as f64 / 999.0)).ln())
            .sum();
        let ab = log.exp();
        assert!(
            close(s.alpha_bar()[t], ab, 1e-10),
            "abar[{t}] = {} vs {ab}",
            s.alpha_bar()[t]
        );
        assert!(close(s.sqrt_alpha_bar()[t], ab.sqrt(), 1e-10));
        assert!(close(
            s.sqrt_one_minus_alpha_bar()[t],
            (1.0 - ab).sqrt(),
            1e-10
        ));
        assert!(close(s.snr()[t], ab / (1.0 - ab), 1e-9));
    }
    assert!(close(s.alpha_bar()[0], 0.9999, 1e-12));
    assert!(
        (s.alpha_bar()[999] - 4.0358e-5).abs() < 1e-9,
        "{}",
        s.alpha_bar()[999]
    );
    // t = 1: ᾱ = 0.9999 · (1 − (1e-4 + 1.991e-2/999)).
    let b1 = 1e-4 + 0.0199 / 999.0;
    assert!(close(s.alpha_bar()[1], 0.9999 * (1.0 - b1), 1e-12));
    Ok(())
}

#[test]
fn cosine_spot_values() -> Result<()> {
    let s = NoiseSchedule::cosine(1000)?;
    let f = |u: f64| (((u / 1000.0 + 0.008) / 1.008) * FRAC_PI_2).cos().powi(2);
    // Without clipping ᾱ_t = f(t + 1) / f(0) (0-based t is the paper's t + 1).
    for t in [0usize, 1, 100, 250, 500, 750, 900, 990] {
        let ab = f(t as f64 + 1.0) / f(0.0);
        assert!(
            close(s.alpha_bar()[t], ab, 1e-9),
            "abar[{t}] = {} vs {ab}",
            s.alpha_bar()[t]
        );
        let beta = 1.0 - f(t as f64 + 1.0) / f(t as f64);
        assert!(close(s.betas()[t], beta, 1e-9));
    }
    // Midpoint: ᾱ at paper step 500 is cos²((0.5 + 0.008)/1.008 · π/2)/f(0) ≈ 0.4938.
    assert!(
        (s.alpha_bar()[499] - 0.493844).abs() < 1e-6,
        "{}",
        s.alpha_bar()[499]
    );
    // The last β is clipped at 0.999 (f(T) = 0), so ᾱ_{T−1} = ᾱ_{T−2} · 0.001 > 0.
    assert!(close(s.betas()[999], 0.999, 1e-12));
    assert!(close(s.alpha_bar()[999], s.alpha_bar()[998] * 0.001, 1e-9));
    Ok(())
}

#[test]
fn posterior_coefficients_match_their_formulas() -> Result<()> {
    for s in [
        NoiseSchedule::new(ScheduleConfig::default())?,
        NoiseSchedule::cosine(200)?,
    ] {
        for t in 1..s.num_timesteps() {
            let (b, a, ab, abp) = (
                s.betas()[t],
                s.alphas()[t],
                s.alpha_bar()[t],
                s.alpha_bar()[t - 1],
            );
            assert_eq!(s.alpha_bar_prev()[t], abp);
            assert!(close(
                s.posterior_variance()[t],
                b * (1.0 - abp) / (1.0 - ab),
                1e-10
            ));
            assert!(close(
                s.posterior_coef_x0()[t],
                b * abp.sqrt() / (1.0 - ab),
                1e-10
            ));
            assert!(close(
                s.posterior_coef_xt()[t],
                (1.0 - abp) * a.sqrt() / (1.0 - ab),
                1e-10
            ));
            // β̃_t < β_t, and the posterior of x_0 ~ δ reproduces q(x_{t−1} | x_0):
            // c0 + c1 √α_t ... mean coefficient on x_0 after one step: c0 + c1 √ᾱ_t = √ᾱ_{t−1}.
            assert!(s.posterior_variance()[t] < b);
            let m = s.posterior_coef_x0()[t] + s.posterior_coef_xt()[t] * ab.sqrt();
            assert!(close(m, abp.sqrt(), 1e-10));
            // Variance: c1² (1 − ᾱ_t) + β̃_t = 1 − ᾱ_{t−1}.
            let v = s.posterior_coef_xt()[t].powi(2) * (1.0 - ab) + s.posterior_variance()[t];
            assert!(close(v, 1.0 - abp, 1e-9));
        }
    }
    Ok(())
}

fn check_monotone_in_range(s: &NoiseSchedule) -> std::result::Result<(), TestCaseError> {
    let t = s.num_timesteps();
    for k in 0..t {
        prop_assert!(
            s.betas()[k] > 0.0 && s.betas()[k] < 1.0,
            "beta[{}] = {}",
            k,
            s.betas()[k]
        );
        prop_assert!(s.alpha_bar()[k] > 0.0 && s.alpha_bar()[k] <= 1.0);
        prop_assert!(s.alphas()[k] > 0.0 && s.alphas()[k] <= 1.0);
        prop_assert!(s.sqrt_alpha_bar()[k] > 0.0 && s.sqrt_alpha_bar()[k] <= 1.0);
        prop_assert!(
            s.sqrt_one_minus_alpha_bar()[k] > 0.0 && s.sqrt_one_minus_alpha_bar()[k] <= 1.0
        );
        prop_assert!(s.posterior_variance()[k] >= 0.0 && s.posterior_variance()[k] < 1.0);
        prop_assert!(s.snr()[k] > 0.0);
    }
    for k in 1..t {
        prop_assert!(
            s.alpha_bar()[k] < s.alpha_bar()[k - 1],
            "abar not decreasing at {}",
            k
        );
        prop_assert!(s.snr()[k] < s.snr()[k - 1]);
        // Non-strict: once ᾱ < 1e-16, 1 − ᾱ rounds to 1 in f64.
        prop_assert!(s.sqrt_one_minus_alpha_bar()[k] >= s.sqrt_one_minus_alpha_bar()[k - 1]);
    }
    Ok(())
}

fn kind() -> impl Strategy<Value = BetaSchedule> {
    prop_oneof![
        Just(BetaSchedule::linear()),
        Just(BetaSchedule::cosine()),
        (1e-5..1e-2f64, 1e-3..0.05f64).prop_map(|(a, d)| BetaSchedule::Linear {
            beta_start: a,
            beta_end: a + d
        }),
        (1e-3..0.1f64, 0.5..0.999f64).prop_map(|(s, m)| BetaSchedule::Cosine { s, max_beta: m }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn schedules_are_monotone_and_in_range(
        k in kind(), t in 1usize..1200, rho in 0.3..3.0f64, on_betas in any::<bool>(),
    ) {
        let target = if on_betas { RhoTarget::Betas } else { RhoTarget::AlphaBar };
        let s = NoiseSchedule::new(ScheduleConfig { kind: k, num_timesteps: t, rho, rho_target: target })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(s.num_timesteps(), t);
        check_monotone_in_range(&s)?;
    }

    /// ρ on ᾱ: ᾱ_t(ρ) = ᾱ_t(1)^ρ, so log ᾱ scales by exactly ρ, and SNR follows.
    #[test]
    fn rho_raises_alpha_bar(k in kind(), rho in 0.2..4.0f64) {
        let base = NoiseSchedule::new(ScheduleConfig { kind: k, num_timesteps: 300, ..Default::default() })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let s = NoiseSchedule::new(ScheduleConfig { kind: k, num_timesteps: 300, rho, ..Default::default() })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for t in 0..300 {
            let want = base.alpha_bar()[t].powf(rho);
            prop_assert!(close(s.alpha_bar()[t], want, 1e-9), "t {}: {} vs {}", t, s.alpha_bar()[t], want);
            prop_assert!(close(s.snr()[t], want / (1.0 - want), 1e-8));
            prop_assert!(close(s.alphas()[t], base.alphas()[t].powf(rho), 1e-9));
        }
    }

    /// ρ on β: β_t(ρ) = β_t(1)^ρ and ᾱ is their product again. A large ρ can make the first,
    /// tiny β_t^ρ vanish next to 1 in f64 (ᾱ no longer strictly decreasing): then the schedule
    /// must be refused with a `rho` error, and only then.
    #[test]
    fn rho_raises_betas(k in kind(), rho in 0.2..4.0f64) {
        let base = NoiseSchedule::new(ScheduleConfig { kind: k, num_timesteps: 300, ..Default::default() })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut ab = 1.0;
        let want: Vec<f64> = base.betas().iter().map(|b| { ab *= 1.0 - b.powf(rho); ab }).collect();
        let valid = want.iter().all(|&a| a > 0.0 && a < 1.0) && want.windows(2).all(|w| w[1] < w[0]);
        let s = NoiseSchedule::new(ScheduleConfig {
            kind: k, num_timesteps: 300, rho, rho_target: RhoTarget::Betas,
        });
        let s = match s {
            Ok(s) => s,
            Err(Error::InvalidArgument { arg: "rho", .. }) if !valid => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert!(valid, "rho {} accepted although alpha_bar is not strictly decreasing", rho);
        for (t, &ab) in want.iter().enumerate() {
            prop_assert!(close(s.betas()[t], base.betas()[t].powf(rho), 1e-12));
            prop_assert!(close(s.alpha_bar()[t], ab, 1e-12));
        }
    }
}

#[test]
fn rho_direction_and_identity() -> Result<()> {
    let cfg = |rho, rho_target| ScheduleConfig {
        rho,
        rho_target,
        ..Default::default()
    };
    let base = NoiseSchedule::new(cfg(1.0, RhoTarget::AlphaBar))?;
    assert_eq!(base, NoiseSchedule::new(ScheduleConfig::default())?);
    let on_betas = NoiseSchedule::new(cfg(1.0, RhoTarget::Betas))?;
    for t in 0..1000 {
        assert!(close(on_betas.alpha_bar()[t], base.alpha_bar()[t], 1e-12));
    }
    // ρ > 1 on ᾱ: more noise at every step; on β: less.
    let more = NoiseSchedule::new(cfg(2.0, RhoTarget::AlphaBar))?;
    let less = NoiseSchedule::new(cfg(2.0, RhoTarget::Betas))?;
    for t in 0..1000 {
        assert!(more.alpha_bar()[t] < base.alpha_bar()[t]);
        assert!(less.alpha_bar()[t] > base.alpha_bar()[t]);
    }
    // Spot value: ᾱ_499 of the linear schedule is ≈ 0.078587; with ρ = 2 it is its square.
    assert!(
        (base.alpha_bar()[499] - 0.078587).abs() < 1e-5,
        "{}",
        base.alpha_bar()[499]
    );
    assert!(close(
        more.alpha_bar()[499],
        base.alpha_bar()[499].powi(2),
        1e-10
    ));
    Ok(())
}

#[test]
fn invalid_configs_are_typed_errors() {
    let with = |f: fn(&mut ScheduleConfig)| {
        let mut c = ScheduleConfig::default();
        f(&mut c);
        NoiseSchedule::new(c)
    };
    let arg_of = |r: Result<NoiseSchedule>| match r {
        Err(Error::InvalidArgument { arg, .. }) => arg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert_eq!(arg_of(with(|c| c.num_timesteps = 0)), "num_timesteps");
    assert_eq!(arg_of(with(|c| c.rho = 0.0)), "rho");
    assert_eq!(arg_of(with(|c| c.rho = f64::NAN)), "rho");
    assert_eq!(
        arg_of(with(|c| c.kind = BetaSchedule::Linear {
            beta_start: 0.0,
            beta_end: 0.02
        })),
        "beta_start"
    );
    assert_eq!(
        arg_of(with(|c| c.kind = BetaSchedule::Linear {
            beta_start: 0.1,
            beta_end: 0.02
        })),
        "beta_end"
    );
    assert_eq!(
        arg_of(with(|c| c.kind = BetaSchedule::Linear {
            beta_start: 0.1,
            beta_end: 1.0
        })),
        "beta_end"
    );
    assert_eq!(
        arg_of(with(|c| c.kind = BetaSchedule::Cosine {
            s: 0.008,
            max_beta: 1.0
        })),
        "max_beta"
    );
    assert_eq!(
        arg_of(with(|c| c.kind = BetaSchedule::Cosine {
            s: -1.0,
            max_beta: 0.999
        })),
        "s"
    );
    // ρ so large that ᾱ underflows to 0.
    assert_eq!(arg_of(with(|c| c.rho = 1e6)), "rho");
}
