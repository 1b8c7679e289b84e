//! Inpainting as one library call (`Inpainting`): visible pixels kept, the trajectory and the
//! per-step callback, the model's own diffusion settings read back from a checkpoint, every
//! prediction kind and pixel scaling, MAE models in one call.

mod common;

use candle_core::{Device, Tensor};
use dmae_diffusion::{Denoiser, MaskStrategy, NoiseSchedule, Prediction, RngKey, SamplerKind};
use dmae_models::{
    CrossSource, DataRange, DecoderKind, DiffMae, Inpainting, Masking, ModelConfig, Pretraining,
    ScheduleKind,
};

fn cfg() -> ModelConfig {
    common::tiny(DecoderKind::CrossSelf, CrossSource::TopDown)
}

/// The pixels of `a` where `keep` is 1 equal those of `b`.
fn kept(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let keep = mask.affine(-1.0, 1.0).unwrap();
    common::max_abs_diff(&(a * &keep).unwrap(), &(b * &keep).unwrap())
}

#[test]
fn inpainting_keeps_visible_pixels_and_reports_every_step() {
    let dev = Device::Cpu;
    let c = cfg();
    let model = DiffMae::new(c.clone(), 1, &dev).unwrap();
    let images = common::images(3, &c, &dev).clamp(0f32, 1f32).unwrap();
    let mask = Masking::spatial(&c, MaskStrategy::center_block(0.25).unwrap());
    let inpainting = Inpainting::new(&c, mask.clone(), SamplerKind::Ddim { steps: 4, eta: 0.0 })
        .unwrap()
        .with_trajectory(true);
    let drawn = mask.sample(&c, 3, RngKey::new(0, 1), &dev).unwrap();
    let mut seen = Vec::new();
    let mut on_step = |s: &dmae_models::InpaintStep| {
        assert_eq!(s.images.dims(), images.dims());
        seen.push((s.index, s.t, s.steps));
        Ok(())
    };
    let out = inpainting
        .run_with(
            &model,
            &images,
            drawn,
            RngKey::new(0, 1),
            Some(&mut on_step),
        )
        .unwrap();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        seen[0].1, 999,
        "the first step is the MAE-like one at t = T - 1"
    );
    assert_eq!(out.trajectory.len(), 4);
    assert_eq!(out.trajectory[0].0, 999);
    assert_eq!(kept(&out.sample, &images, &out.pixel_mask), 0.0);
    let (lo, hi) = (
        out.sample.min_all().unwrap().to_scalar::<f32>().unwrap(),
        out.sample.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
    // The same key gives the same result through `run`.
    let again = inpainting.run(&model, &images, RngKey::new(0, 1)).unwrap();
    assert_eq!(common::max_abs_diff(&again.sample, &out.sample), 0.0);
    // An error from the callback stops the run.
    let mut fail = |_: &dmae_models::InpaintStep| {
        Err(dmae_models::Error::InvalidArgument {
            arg: "on_step",
            reason: "stop".into(),
        })
    };
    let m = mask.sample(&c, 3, RngKey::new(0, 1), &dev).unwrap();
    assert!(inpainting
        .run_with(&model, &images, m, RngKey::new(0, 1), Some(&mut fail))
        .is_err());
}

/// A model trained with a non-default schedule samples with that schedule from its checkpoint
/// alone; checkpoints written before the settings existed load as linear / T = 1000 / ρ = 1.
#[test]
fn diffusion_settings_travel_with_the_checkpoint() {
    let dev = Device::Cpu;
    let mut c = cfg();
    c.diffusion.schedule = ScheduleKind::Cosine;
    c.diffusion.timesteps = 500;
    c.diffusion.rho = 2.0;
    let model = DiffMae::new(c.clone(), 2, &dev).unwrap();
    let dir = std::env::temp_dir().join(format!("dmae-inpaint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cosine.safetensors");
    model.save(&path).unwrap();
    let loaded = DiffMae::load(&path, &dev).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.config().diffusion, c.diffusion);
    let inpainting = Inpainting::new(
        loaded.config(),
        Masking::random(loaded.config(), 0.5).unwrap(),
        SamplerKind::Ddpm,
    )
    .unwrap();
    let want = NoiseSchedule::new(c.diffusion.schedule_config()).unwrap();
    assert_eq!(inpainting.sampler().schedule(), &want);
    assert_eq!(inpainting.sampler().timesteps().len(), 500);
    assert_eq!(
        Pretraining::for_config(loaded.config()).unwrap().schedule,
        want
    );
    let default = NoiseSchedule::new(Default::default()).unwrap();
    assert_ne!(want, default);

    let mut json: serde_json::Value = serde_json::from_str(&cfg().to_json().unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("diffusion");
    let old = ModelConfig::from_json(&json.to_string()).unwrap();
    assert_eq!(old.diffusion, dmae_models::DiffusionConfig::unstated());
    assert_eq!(old.diffusion.data_range, dmae_models::DataRange::Unit);
    assert_eq!(old.diffusion.noise_schedule().unwrap(), default);
    // A table written before `data_range` existed: [0, 1], whatever today's default.
    json["diffusion"] = serde_json::json!({ "schedule": "cosine" });
    let partial = ModelConfig::from_json(&json.to_string()).unwrap();
    assert_eq!(partial.diffusion.data_range, dmae_models::DataRange::Unit);
    assert_eq!(
        ModelConfig::mnist().diffusion.data_range,
        dmae_models::DataRange::Symmetric
    );
}

#[test]
fn every_prediction_and_pixel_scaling_trains_and_inpaints() {
    let dev = Device::Cpu;
    for (prediction, range) in [
        (Prediction::X0, DataRange::Symmetric),
        (Prediction::Eps, DataRange::Unit),
        (Prediction::V, DataRange::Symmetric),
    ] {
        let mut c = cfg();
        c.norm_pix_loss = false;
        c.diffusion.prediction = prediction;
        c.diffusion.data_range = range;
        let model = DiffMae::new(c.clone(), 3, &dev).unwrap();
        let images = common::images(2, &c, &dev).clamp(0f32, 1f32).unwrap();
        let step = Pretraining::for_config(&c)
            .unwrap()
            .step(&model, &images, RngKey::new(1, 0))
            .unwrap();
        assert!(step.loss.to_scalar::<f32>().unwrap().is_finite());
        let out = Inpainting::new(
            &c,
            Masking::random(&c, 0.5).unwrap(),
            SamplerKind::Ddim { steps: 3, eta: 0.5 },
        )
        .unwrap()
        .run(&model, &images, RngKey::new(1, 1))
        .unwrap();
        assert_eq!(
            kept(&out.sample, &images, &out.pixel_mask),
            0.0,
            "{prediction:?}"
        );
        assert!(out
            .sample
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .is_finite());
    }
    // norm_pix normalises an x0 target only.
    let mut c = cfg();
    c.norm_pix_loss = true;
    c.diffusion.prediction = Prediction::Eps;
    assert!(c.validate().is_err());
}

#[test]
fn mae_models_inpaint_in_one_call_only() {
    let dev = Device::Cpu;
    let c = cfg().into_mae();
    let mask = Masking::random(&c, 0.75).unwrap();
    assert!(Inpainting::new(&c, mask.clone(), SamplerKind::Ddim { steps: 5, eta: 0.0 }).is_err());
    assert_eq!(Inpainting::default_sampler(&c, 50, 0.0), SamplerKind::Mae);
    let model = DiffMae::new(c.clone(), 0, &dev).unwrap();
    let images = common::images(2, &c, &dev).clamp(0f32, 1f32).unwrap();
    let out = Inpainting::new(&c, mask.clone(), SamplerKind::Mae)
        .unwrap()
        .with_trajectory(true)
        .run(&model, &images, RngKey::new(0, 0))
        .unwrap();
    assert_eq!(out.trajectory.len(), 1);
    assert_eq!(kept(&out.sample, &images, &out.pixel_mask), 0.0);
    // Its decoder reads mask tokens, not noise: a temperature is checked but changes nothing.
    let cold = Inpainting::new(&c, mask.clone(), SamplerKind::Mae).unwrap();
    assert_eq!(
        cold.clone()
            .with_temperature(0.5)
            .unwrap()
            .sampler()
            .temperature(),
        1.0
    );
    assert!(cold.clone().with_temperature(-1.0).is_err());
    // Nor is there a sample to guide.
    assert!(matches!(
        cold.with_guide(model.clone(), 2.0),
        Err(dmae_models::Error::InvalidArgument { arg: "guide", .. })
    ));
    // MAE regresses [0, 1] pixels (they are never diffused): its prediction is pasted as it is,
    // whatever the diffusion's data range (by default [-1, 1]) says.
    assert_eq!(c.diffusion.data_range, DataRange::Symmetric);
    let patches = c.patchify(&images).unwrap();
    let (x0_v, x0_m) = out.mask.split(&patches).unwrap();
    let ctx = model.encode(&x0_v, &out.mask).unwrap();
    let t = vec![c.diffusion.timesteps - 1; 2];
    let raw = model
        .denoiser(&ctx, &out.mask)
        .predict_x0(&x0_m.zeros_like().unwrap(), &t)
        .unwrap();
    let want = c
        .unpatchify(&out.mask.merge(&x0_v, &raw).unwrap())
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap();
    assert!(common::max_abs_diff(&out.sample, &want) < 1e-6);
    // A video mask on an image model is refused before anything runs.
    let video = Masking::future_frames(&ModelConfig::moving_mnist(), 2).unwrap();
    assert!(Inpainting::new(&c, video, SamplerKind::Mae).is_err());
}

/// Autoguidance mixes two models' predictions: weight 1 is the model alone and weight 0 the
/// guide alone (bit for bit, same key); other weights lie on the line through them at the first
/// step; a guide that cuts images differently is refused.
#[test]
fn autoguidance_interpolates_between_model_and_guide() {
    let dev = Device::Cpu;
    let c = cfg();
    let (model, guide) = (
        DiffMae::new(c.clone(), 1, &dev).unwrap(),
        DiffMae::new(c.clone(), 2, &dev).unwrap(),
    );
    let images = common::images(2, &c, &dev).clamp(0f32, 1f32).unwrap();
    let mask = Masking::spatial(&c, MaskStrategy::center_block(0.25).unwrap());
    let kind = SamplerKind::Ddim { steps: 3, eta: 0.0 };
    let plain = Inpainting::new(&c, mask.clone(), kind).unwrap();
    let key = RngKey::new(4, 0);
    let run = |i: &Inpainting, m: &DiffMae| {
        i.clone()
            .with_trajectory(true)
            .run(m, &images, key)
            .unwrap()
    };
    let alone = run(&plain, &model);
    let guide_alone = run(&plain, &guide);
    let w1 = plain.clone().with_guide(guide.clone(), 1.0).unwrap();
    assert_eq!(w1.guidance(), Some(1.0));
    assert_eq!(
        common::max_abs_diff(&run(&w1, &model).sample, &alone.sample),
        0.0
    );
    let w0 = plain.clone().with_guide(guide.clone(), 0.0).unwrap();
    assert_eq!(
        common::max_abs_diff(&run(&w0, &model).sample, &guide_alone.sample),
        0.0
    );
    // At the first step both start from the same noise: the guided x̂_0 is guide + 2 (model −
    // guide), before clamping to [0, 1] (compare where both predictions are inside).
    let w2 = plain.clone().with_guide(guide.clone(), 2.0).unwrap();
    let first = |o: &dmae_models::Inpainted| {
        o.trajectory[0]
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, g, x) = (first(&alone), first(&guide_alone), first(&run(&w2, &model)));
    let hidden = alone
        .pixel_mask
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let inside = |v: f32| (0.01..0.99).contains(&v);
    let mut compared = 0;
    for (i, &m) in hidden.iter().enumerate() {
        let want = g[i] + 2.0 * (a[i] - g[i]);
        if m > 0.5 && inside(a[i]) && inside(g[i]) && inside(want) {
            assert!((x[i] - want).abs() < 1e-4, "{} vs {want}", x[i]);
            compared += 1;
        }
    }
    assert!(compared > 0, "no masked pixel inside the range to compare");
    assert!(plain.clone().with_guide(guide.clone(), f64::NAN).is_err());
    // A guide that cuts the images into other patches fails the run with a typed error.
    let mut other = c.clone();
    other.patch_size = c.patch_size * 2;
    let odd = DiffMae::new(other, 3, &dev).unwrap();
    let err = plain
        .clone()
        .with_guide(odd, 2.0)
        .unwrap()
        .run(&model, &images, key);
    assert!(
        matches!(
            err,
            Err(dmae_models::Error::InvalidArgument { arg: "guide", .. })
        ),
        "{err:?}"
    );
}
