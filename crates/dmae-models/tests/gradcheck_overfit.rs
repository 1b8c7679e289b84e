//! Finite-difference gradient check of the full tiny DiffMAE forward (all three decoders, f64),
//! and a 100-step overfit on 8 real MNIST digits (datasets/mnist) where the loss falls 10x.

mod common;

use std::io::Read;

use candle_core::{DType, Device, Tensor};
use dmae_core::{AdamW, AdamWConfig};
use dmae_diffusion::{
    diffuse, MaskStrategy, NoiseSchedule, PatchGrid, RngKey, ScheduleConfig, X0Loss,
};
use dmae_models::{CrossSource, DecoderKind, DiffMae, ModelConfig};

#[test]
fn full_forward_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    for kind in [
        DecoderKind::Joint,
        DecoderKind::Cross,
        DecoderKind::CrossSelf,
    ] {
        let src = if kind == DecoderKind::Joint {
            CrossSource::Last
        } else {
            CrossSource::TopDown
        };
        let cfg = common::tiny(kind, src);
        let model = DiffMae::new_with_dtype(cfg.clone(), 11, &dev, DType::F64).unwrap();
        let (rows, cols) = cfg.grid();
        let mask = MaskStrategy::random(0.75)
            .unwrap()
            .sample(PatchGrid::new(rows, cols), 2, RngKey::new(2, 0), &dev)
            .unwrap();
        let patches =
            Tensor::randn(0f64, 1., (2, cfg.num_patches(), cfg.patch_dim()), &dev).unwrap();
        let x_t = Tensor::randn(0f64, 1., (2, mask.num_masked(), cfg.patch_dim()), &dev).unwrap();
        let r = Tensor::randn(0f64, 1., x_t.dims(), &dev).unwrap();
        let t = [17usize, 640];
        let loss = || {
            model
                .forward(&mask.split(&patches).unwrap().0, &mask, &x_t, &t)
                .unwrap()
                .mul(&r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss().backward().unwrap();
        let last = cfg.decoder.depth - 1;
        let mut names = vec![
            "encoder.patch_embed.weight".to_string(),
            "encoder.cls_token".to_string(),
            "encoder.blocks.0.attn.qkv.weight".to_string(),
            "encoder.blocks.2.norm1.weight".to_string(),
            "encoder.norm.bias".to_string(),
            "decoder.patch_embed.weight".to_string(),
            "decoder.time_embed.fc1.weight".to_string(),
            format!("decoder.blocks.{last}.mlp.fc2.weight"),
            "decoder.pred.bias".to_string(),
        ];
        if kind != DecoderKind::Joint {
            names.push("decoder.blocks.0.cross_attn.kv.weight".into());
            names.push(format!("decoder.blocks.{last}.cross_attn.q.bias"));
        } else {
            names.push("decoder.embed.weight".into());
        }
        let h = 1e-5;
        let mut worst = 0f64;
        for name in &names {
            let p = model
                .named_params()
                .iter()
                .find(|p| &p.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            let g = grads
                .get(p.var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = p
                .var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for k in [0, base.len() / 3, base.len() - 1] {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[k] += delta;
                    p.var
                        .set(&Tensor::from_vec(v, p.var.dims(), &dev).unwrap())
                        .unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                let num = (at(h) - at(-h)) / (2.0 * h);
                p.var
                    .set(&Tensor::from_vec(base.clone(), p.var.dims(), &dev).unwrap())
                    .unwrap();
                let err = (num - g[k]).abs() / num.abs().max(g[k].abs()).max(1e-3);
                worst = worst.max(err);
                assert!(
                    err < 1e-4,
                    "{kind:?} {name}[{k}]: analytic {} vs numeric {num}",
                    g[k]
                );
            }
        }
        eprintln!("{kind:?}: worst relative gradient error {worst:.2e}");
    }
}

fn mnist_images(n: usize) -> Tensor {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../datasets/mnist/train-images-idx3-ubyte.gz"
    );
    let file = std::fs::File::open(path).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(&bytes[..4], &[0, 0, 8, 3], "IDX u8 rank-3 magic");
    let px: Vec<f32> = bytes[16..16 + n * 784]
        .iter()
        .map(|&b| b as f32 / 255.0)
        .collect();
    Tensor::from_vec(px, (n, 1, 28, 28), &Device::Cpu).unwrap()
}

#[test]
fn overfits_eight_mnist_digits() {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::mnist();
    cfg.encoder.dim = 64;
    cfg.encoder.depth = 4;
    cfg.encoder.heads = 4;
    cfg.decoder.dim = 64;
    cfg.decoder.depth = 2;
    cfg.decoder.heads = 4;
    let model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
    let imgs = mnist_images(8);
    let patches = dmae_core::patchify(&imgs, 4).unwrap();
    let key = RngKey::new(0, 0);
    let mask = MaskStrategy::random(0.75)
        .unwrap()
        .sample(PatchGrid::new(7, 7), 8, key, &dev)
        .unwrap();
    let (_, x0_m) = mask.split(&patches).unwrap();
    let schedule = NoiseSchedule::new(ScheduleConfig::default()).unwrap();
    let d = diffuse(&schedule, &x0_m, key).unwrap();
    let loss_fn = X0Loss::inpainting();
    let mut opt = AdamW::new(
        model.optimizer_params(0.0),
        AdamWConfig {
            lr: 2e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let loss = || {
        loss_fn
            .compute(
                &model
                    .forward(&mask.split(&patches).unwrap().0, &mask, &d.x_t, &d.t)
                    .unwrap(),
                &x0_m,
            )
            .unwrap()
    };
    let first = loss().to_scalar::<f32>().unwrap();
    for _ in 0..100 {
        opt.step(&loss().backward().unwrap()).unwrap();
    }
    let last = loss().to_scalar::<f32>().unwrap();
    eprintln!(
        "MNIST overfit: loss {first:.4} -> {last:.5} ({:.1}x)",
        first / last
    );
    assert!(last * 10.0 < first, "{first} -> {last}");
}
