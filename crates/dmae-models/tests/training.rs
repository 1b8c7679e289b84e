//! One training step of tiny DiffMAE / MAE models on the CPU: finite loss, a gradient for every
//! parameter, AdamW lowers the loss, cached K/V decode equals uncached, the samplers drive it.

mod common;

use candle_core::{DType, Device, Tensor};
use dmae_core::{AdamW, AdamWConfig};
use dmae_diffusion::{
    diffuse, MaskIndices, MaskStrategy, NoiseSchedule, PatchGrid, RngKey, Sampler, SamplerKind,
    ScheduleConfig, X0Loss,
};
use dmae_models::{DiffMae, ModelConfig};

fn step_loss(model: &DiffMae, images: &Tensor, seed: u64) -> (Tensor, MaskIndices) {
    let c = model.config();
    let dev = images.device();
    let patches = dmae_core::patchify(images, c.patch_size).unwrap();
    let (rows, cols) = c.grid();
    let key = RngKey::new(seed, 0);
    let mask = MaskStrategy::random(0.75)
        .unwrap()
        .sample(PatchGrid::new(rows, cols), images.dim(0).unwrap(), key, dev)
        .unwrap();
    let (_x0_v, x0_m) = mask.split(&patches).unwrap();
    let schedule = NoiseSchedule::new(ScheduleConfig::default()).unwrap();
    let d = diffuse(&schedule, &x0_m, key).unwrap();
    let pred = model
        .forward(&mask.split(&patches).unwrap().0, &mask, &d.x_t, &d.t)
        .unwrap();
    let loss = X0Loss::inpainting().compute(&pred, &x0_m).unwrap();
    (loss, mask)
}

#[test]
fn one_step_gives_every_parameter_a_gradient() {
    let dev = Device::Cpu;
    for cfg in common::all_configs() {
        let model = DiffMae::new(cfg.clone(), 1, &dev).unwrap();
        let imgs = common::images(2, &cfg, &dev);
        let (loss, _) = step_loss(&model, &imgs, 3);
        let l = loss.to_scalar::<f32>().unwrap();
        assert!(l.is_finite(), "{:?}: loss {l}", cfg.decoder);
        let grads = loss.backward().unwrap();
        for p in model.named_params() {
            let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| {
                panic!(
                    "{:?} {:?}: no gradient for {}",
                    cfg.decoder.kind, cfg.decoder.cross_source, p.name
                )
            });
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: gradient norm {norm}",
                p.name
            );
        }
    }
}

#[test]
fn adamw_steps_reduce_the_loss_on_a_fixed_batch() {
    let dev = Device::Cpu;
    for cfg in [
        common::tiny(
            dmae_models::DecoderKind::CrossSelf,
            dmae_models::CrossSource::TopDown,
        ),
        common::tiny(
            dmae_models::DecoderKind::Joint,
            dmae_models::CrossSource::Last,
        )
        .into_mae(),
    ] {
        let model = DiffMae::new(cfg.clone(), 2, &dev).unwrap();
        let imgs = common::images(4, &cfg, &dev);
        let mut opt = AdamW::new(
            model.optimizer_params(0.0),
            AdamWConfig {
                lr: 3e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let first = step_loss(&model, &imgs, 5).0.to_scalar::<f32>().unwrap();
        for _ in 0..30 {
            let (loss, _) = step_loss(&model, &imgs, 5);
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let last = step_loss(&model, &imgs, 5).0.to_scalar::<f32>().unwrap();
        eprintln!("{:?}: loss {first:.4} -> {last:.4}", cfg.decoder.kind);
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }
}

#[test]
fn cached_kv_decode_equals_uncached() {
    let dev = Device::Cpu;
    for cfg in common::all_configs() {
        let model = DiffMae::new(cfg.clone(), 4, &dev).unwrap();
        let imgs = common::images(2, &cfg, &dev);
        let patches = dmae_core::patchify(&imgs, cfg.patch_size).unwrap();
        let (rows, cols) = cfg.grid();
        let mask = MaskStrategy::random(0.5)
            .unwrap()
            .sample(PatchGrid::new(rows, cols), 2, RngKey::new(1, 1), &dev)
            .unwrap();
        let (x0_v, x0_m) = mask.split(&patches).unwrap();
        let ctx = model.encode(&x0_v, &mask).unwrap();
        let a = model.decode(&ctx, &x0_m, &mask, &[10, 500]).unwrap();
        let b = model
            .decode(&ctx.without_cache(), &x0_m, &mask, &[10, 500])
            .unwrap();
        let err = common::max_abs_diff(&a, &b);
        assert!(err <= 1e-5, "{:?}: {err}", cfg.decoder.kind);
    }
}

#[test]
fn samplers_drive_the_model() {
    let dev = Device::Cpu;
    let cfg = common::tiny(
        dmae_models::DecoderKind::CrossSelf,
        dmae_models::CrossSource::TopDown,
    );
    let model = DiffMae::new(cfg.clone(), 4, &dev).unwrap();
    let imgs = common::images(2, &cfg, &dev);
    let patches = dmae_core::patchify(&imgs, cfg.patch_size).unwrap();
    let (rows, cols) = cfg.grid();
    let mask = MaskStrategy::center_block(0.25)
        .unwrap()
        .sample(PatchGrid::new(rows, cols), 2, RngKey::new(1, 1), &dev)
        .unwrap();
    let (x0_v, x0_m) = mask.split(&patches).unwrap();
    let ctx = model.encode(&x0_v, &mask).unwrap();
    let sampler = Sampler::new(
        NoiseSchedule::new(ScheduleConfig::default()).unwrap(),
        SamplerKind::Ddim { steps: 5, eta: 0.0 },
    )
    .unwrap();
    let mut den = model.denoiser(&ctx, &mask);
    let out = sampler
        .sample(&mut den, x0_m.dims(), DType::F32, &dev, RngKey::new(0, 0))
        .unwrap();
    assert_eq!(out.x0.dims(), x0_m.dims());
}

#[test]
fn shape_errors_name_both_shapes() {
    let dev = Device::Cpu;
    let cfg = common::tiny(
        dmae_models::DecoderKind::Cross,
        dmae_models::CrossSource::Last,
    );
    let model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
    let mask = MaskIndices::all_visible(2, cfg.num_patches(), &dev).unwrap();
    let bad = Tensor::zeros((2, 16, 47), DType::F32, &dev).unwrap();
    let e = model.encode(&bad, &mask).unwrap_err().to_string();
    assert!(
        e.contains("x0_v") && e.contains("[2, 16, 48]") && e.contains("[2, 16, 47]"),
        "{e}"
    );
    assert!(DiffMae::new(
        ModelConfig {
            patch_size: 5,
            ..cfg
        },
        0,
        &dev
    )
    .is_err());
}

#[test]
fn checkpoint_round_trip_and_errors() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("dmae-models-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cfg in common::all_configs() {
        let model = DiffMae::new(cfg.clone(), 9, &dev).unwrap();
        let path = dir.join("m.safetensors");
        model.save(&path).unwrap();
        let back = DiffMae::load(&path, &dev).unwrap();
        assert_eq!(back.config(), &cfg);
        for (a, b) in model.named_params().iter().zip(back.named_params()) {
            assert_eq!(a.name, b.name);
            let d = common::max_abs_diff(a.var.as_tensor(), b.var.as_tensor());
            assert_eq!(d, 0.0, "{}", a.name);
        }
    }
    // Wrong shape, missing tensor, extra tensor, config mismatch.
    let cfg = common::tiny(
        dmae_models::DecoderKind::CrossSelf,
        dmae_models::CrossSource::TopDown,
    );
    let model = DiffMae::new(cfg.clone(), 9, &dev).unwrap();
    let mut map: std::collections::HashMap<String, Tensor> = model
        .named_params()
        .iter()
        .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
        .collect();
    map.insert(
        "encoder.norm.weight".into(),
        Tensor::ones(31, DType::F32, &dev).unwrap(),
    );
    let e = DiffMae::from_tensors(cfg.clone(), map.clone(), &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder.norm.weight") && e.contains("[32]") && e.contains("[31]"),
        "{e}"
    );
    map.remove("encoder.norm.weight");
    let e = DiffMae::from_tensors(cfg.clone(), map.clone(), &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing") && e.contains("encoder.norm.weight") && e.contains("[32]"),
        "{e}"
    );
    map.insert(
        "encoder.norm.weight".into(),
        Tensor::ones(32, DType::F32, &dev).unwrap(),
    );
    map.insert(
        "encoder.extra".into(),
        Tensor::ones(3, DType::F32, &dev).unwrap(),
    );
    let e = DiffMae::from_tensors(cfg.clone(), map, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder.extra") && e.contains("[3]"), "{e}");
    let path = dir.join("m.safetensors");
    model.save(&path).unwrap();
    let other = DiffMae::new(
        ModelConfig {
            norm_eps: 1e-5,
            ..cfg
        },
        0,
        &dev,
    )
    .unwrap();
    assert!(other
        .load_weights(&path)
        .unwrap_err()
        .to_string()
        .contains("differs"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn video_tubelets_train_and_classify() {
    let dev = Device::Cpu;
    let mut cfg = common::tiny(
        dmae_models::DecoderKind::CrossSelf,
        dmae_models::CrossSource::TopDown,
    );
    cfg.num_frames = 4;
    cfg.tubelet = 2;
    let model = DiffMae::new(cfg.clone(), 1, &dev).unwrap();
    let clips = Tensor::randn(0f32, 1., (2, 3, 4, 16, 16), &dev).unwrap();
    let patches = cfg.patchify(&clips).unwrap();
    assert_eq!(patches.dims(), &[2, 32, 96]);
    let grid = dmae_diffusion::VideoGrid::new(2, 4, 4);
    let mask = dmae_diffusion::VideoMaskStrategy::tube(0.75)
        .unwrap()
        .sample(grid, 2, RngKey::new(0, 0), &dev)
        .unwrap();
    let (_, x0_m) = mask.split(&patches).unwrap();
    let pred = model
        .forward(&mask.split(&patches).unwrap().0, &mask, &x0_m, &[3, 900])
        .unwrap();
    let loss = X0Loss::inpainting().compute(&pred, &x0_m).unwrap();
    let grads = loss.backward().unwrap();
    for p in model.named_params() {
        assert!(grads.get(p.var.as_tensor()).is_some(), "{}", p.name);
    }
    let clf = dmae_models::Classifier::from_pretrained(&model, 3, dmae_models::Pool::Avg, 0.1, 0)
        .unwrap();
    assert_eq!(clf.forward(&clips, None).unwrap().dims(), &[2, 3]);
    // Space-time positions differ across time and reduce to the 2-D embedding for one step.
    let pe = dmae_models::embed::pos_embed(2, 4, 4, 32, &dev).unwrap();
    assert_ne!(
        pe.get(1).unwrap().to_vec1::<f32>().unwrap(),
        pe.get(17).unwrap().to_vec1::<f32>().unwrap()
    );
    let flat = dmae_models::embed::pos_embed(1, 4, 4, 32, &dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(flat, dmae_models::embed::sincos_2d(4, 4, 32, true));
}

/// A decode split over CPU shards gives the whole batch's prediction, for every decoder kind,
/// with and without the K/V cache, and the sampler's output does not depend on the split.
#[test]
fn sharded_decode_equals_the_whole_batch() {
    use dmae_diffusion::Denoiser;
    let dev = Device::Cpu;
    for (kind, source) in [
        (
            dmae_models::DecoderKind::CrossSelf,
            dmae_models::CrossSource::TopDown,
        ),
        (
            dmae_models::DecoderKind::Cross,
            dmae_models::CrossSource::Last,
        ),
        (
            dmae_models::DecoderKind::Joint,
            dmae_models::CrossSource::Last,
        ),
    ] {
        let cfg = common::tiny(kind, source);
        let model = DiffMae::new(cfg.clone(), 5, &dev).unwrap();
        let n = 5;
        let imgs = common::images(n, &cfg, &dev);
        let patches = dmae_core::patchify(&imgs, cfg.patch_size).unwrap();
        let (rows, cols) = cfg.grid();
        let mask = MaskStrategy::random(0.75)
            .unwrap()
            .sample(PatchGrid::new(rows, cols), n, RngKey::new(3, 0), &dev)
            .unwrap();
        let (x0_v, x0_m) = mask.split(&patches).unwrap();
        let ctx = model.encode(&x0_v, &mask).unwrap();
        let x_t = Tensor::randn(0f32, 1., x0_m.dims(), &dev).unwrap();
        let t = [999, 500, 3, 250, 0];
        let whole = model.denoiser(&ctx, &mask).predict_x0(&x_t, &t).unwrap();
        let shards = dmae_core::DataParallel::new(3, 48).unwrap();
        for c in [ctx.clone(), ctx.without_cache()] {
            let mut den = model.denoiser(&c, &mask).sharded(&shards);
            let split = den.predict_x0(&x_t, &t).unwrap();
            let err = common::max_abs_diff(&split, &whole);
            assert!(err <= 1e-5, "{kind:?}: {err}");
        }
        // A wrong x_t is still reported, not split.
        let bad = Tensor::zeros((n, 3, cfg.patch_dim()), DType::F32, &dev).unwrap();
        assert!(model
            .denoiser(&ctx, &mask)
            .sharded(&shards)
            .predict_x0(&bad, &t)
            .is_err());
    }
}
