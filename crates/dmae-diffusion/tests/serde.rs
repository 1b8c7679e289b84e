//! Configuration types round-trip through serde (feature `serde`):
//! `cargo test -p dmae-diffusion --features serde`.
#![cfg(feature = "serde")]

use dmae_diffusion::{
    BetaSchedule, BlockWise, MaskStrategy, NoiseSchedule, PatchGrid, PatchMask, ResizeRule,
    RhoTarget, RngKey, SamplerKind, ScheduleConfig, VideoGrid, VideoMaskStrategy, X0Loss,
};
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_string(v).expect("serialize");
    let back: T = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&back, v, "{json}");
}

#[test]
fn every_config_type_round_trips() {
    round_trip(&ScheduleConfig::default());
    round_trip(&ScheduleConfig {
        kind: BetaSchedule::cosine(),
        num_timesteps: 250,
        rho: 0.8,
        rho_target: RhoTarget::Betas,
    });
    round_trip(&SamplerKind::Ddim {
        steps: 50,
        eta: 0.5,
    });
    round_trip(&SamplerKind::Mae);
    round_trip(&X0Loss::inpainting());
    round_trip(&MaskStrategy::Random { ratio: 0.75 });
    round_trip(&MaskStrategy::BlockWise(BlockWise::new(0.4)));
    let fixed =
        PatchMask::from_patches(PatchGrid::new(1, 3), vec![true, false, true]).expect("mask");
    round_trip(&MaskStrategy::Fixed(fixed));
    round_trip(&VideoMaskStrategy::Tube(MaskStrategy::CenterBlock {
        ratio: 0.25,
    }));
    round_trip(&VideoMaskStrategy::FutureFrames { visible: 3 });
    round_trip(&VideoGrid::new(8, 14, 14));
    round_trip(&ResizeRule::Majority);
    round_trip(&RngKey::new(1, 2));
}

#[test]
fn readable_json_with_defaults() {
    // Missing fields of ScheduleConfig and X0Loss take their defaults.
    let c: ScheduleConfig = serde_json::from_str(
        r#"{"kind": {"cosine": {"s": 0.008, "max_beta": 0.999}}, "rho": 2.0}"#,
    )
    .expect("parse schedule config");
    assert_eq!(c.num_timesteps, 1000);
    assert_eq!(c.rho_target, RhoTarget::AlphaBar);
    assert!(NoiseSchedule::new(c).is_ok());
    let l: X0Loss = serde_json::from_str(r#"{"norm_pix": false}"#).expect("parse loss");
    assert_eq!(l, X0Loss::inpainting());
    let m: MaskStrategy =
        serde_json::from_str(r#"{"random": {"ratio": 0.75}}"#).expect("parse mask");
    assert_eq!(m, MaskStrategy::Random { ratio: 0.75 });
    // Deserialising does not bypass validation: a bad ratio fails when used.
    let bad: MaskStrategy = serde_json::from_str(r#"{"random": {"ratio": 1.5}}"#).expect("parse");
    assert!(bad.validate(PatchGrid::new(2, 2)).is_err());
    let broken: PatchMask =
        serde_json::from_str(r#"{"grid": {"rows": 2, "cols": 2}, "masked": [true]}"#)
            .expect("parse");
    assert!(MaskStrategy::Fixed(broken)
        .validate(PatchGrid::new(2, 2))
        .is_err());
}
