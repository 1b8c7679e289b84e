//! Parity with transformers' ViTMAEForPreTraining on tiny random checkpoints made by
//! tests/fixtures/make_vitmae_fixtures.py: same pixels, same masking noise, encoder
//! last_hidden_state and decoder logits within 1e-4. `vitmae-tiny-24-stored-pos` stores position
//! embeddings that are not MAE's sin-cos, which the import must use as transformers does.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use dmae_models::DiffMae;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn vitmae_parity() {
    let dev = Device::Cpu;
    for (name, ratio) in [
        ("vitmae-tiny-32", 0.75),
        ("vitmae-tiny-40", 0.6),
        ("vitmae-tiny-24-stored-pos", 0.5),
    ] {
        let model = DiffMae::from_hf_dir(fixture(name), &dev).unwrap();
        let r = candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &dev)
            .unwrap();
        let out = model
            .mae_forward(&r["pixel_values"], &r["noise"], ratio)
            .unwrap();
        let e_h = max_err(&out.last_hidden_state, &r["last_hidden_state"]);
        let e_l = max_err(&out.logits, &r["logits"]);
        let e_m = max_err(&out.mask, &r["mask"]);
        let e_i = max_err(
            &out.ids_restore.to_dtype(DType::F32).unwrap(),
            &r["ids_restore"],
        );
        eprintln!("{name}: last_hidden_state max err {e_h:.2e}, logits max err {e_l:.2e}");
        assert!(e_h < 1e-4 && e_l < 1e-4, "{name}: {e_h} {e_l}");
        assert_eq!((e_m, e_i), (0.0, 0.0));
    }
}

#[test]
fn vitmae_encoder_inits_a_diffmae() {
    let dev = Device::Cpu;
    let dir = fixture("vitmae-tiny-32");
    let (hf, tensors) = dmae_models::hf::load_vitmae_files(
        &dir.join("config.json"),
        &dir.join("model.safetensors"),
        &dev,
    )
    .unwrap();
    let mut cfg = hf.to_model_config().unwrap();
    cfg.decoder = dmae_models::DecoderConfig {
        dim: 16,
        heads: 2,
        depth: 2,
        ..Default::default()
    };
    let mut model = DiffMae::new(cfg, 0, &dev).unwrap();
    model.load_encoder_from(&tensors).unwrap();
    let a = model
        .named_params()
        .iter()
        .find(|p| p.name == "encoder.blocks.1.attn.qkv.weight")
        .unwrap();
    assert_eq!(
        max_err(
            a.var.as_tensor(),
            &tensors["encoder.blocks.1.attn.qkv.weight"]
        ),
        0.0
    );
    // A mismatched encoder names the tensor and both shapes.
    let mut small = model.config().clone();
    small.encoder.dim = 16;
    small.encoder.heads = 2;
    let e = DiffMae::new(small, 0, &dev)
        .unwrap()
        .load_encoder_from(&tensors)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder.") && e.contains("16") && e.contains("32"),
        "{e}"
    );
}

#[cfg(feature = "hf-hub")]
#[test]
fn hub_offline_without_cache_is_a_clear_error() {
    // SAFETY of env mutation: this is the only test in this binary touching these variables.
    let dir = std::env::temp_dir().join(format!("dmae-empty-hf-{}", std::process::id()));
    std::env::set_var("HF_HOME", &dir);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let e = DiffMae::from_hf_hub("facebook/vit-mae-base", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HF_HUB_OFFLINE") && e.contains("facebook/vit-mae-base"),
        "{e}"
    );
}

#[test]
fn original_mae_checkpoint_matches_the_hf_import() {
    let dev = Device::Cpu;
    let hf = DiffMae::from_hf_dir(fixture("vitmae-tiny-32"), &dev).unwrap();
    let mae = DiffMae::from_mae_checkpoint(fixture("mae-tiny-32.pth"), hf.config().clone(), &dev)
        .unwrap();
    let r = candle_core::safetensors::load(
        fixture("vitmae-tiny-32").join("reference.safetensors"),
        &dev,
    )
    .unwrap();
    let out = mae
        .mae_forward(&r["pixel_values"], &r["noise"], 0.75)
        .unwrap();
    assert!(max_err(&out.logits, &r["logits"]) < 1e-4);
    assert!(max_err(&out.last_hidden_state, &r["last_hidden_state"]) < 1e-4);
}

#[test]
fn stored_position_embeddings_are_imported_saved_and_reloaded() {
    let dev = Device::Cpu;
    let name = "vitmae-tiny-24-stored-pos";
    let model = DiffMae::from_hf_dir(fixture(name), &dev).unwrap();
    let r =
        candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &dev).unwrap();
    let errors = |m: &DiffMae| {
        let out = m.mae_forward(&r["pixel_values"], &r["noise"], 0.5).unwrap();
        (
            max_err(&out.last_hidden_state, &r["last_hidden_state"]),
            max_err(&out.logits, &r["logits"]),
        )
    };
    let (e_h, e_l) = errors(&model);
    assert!(e_h < 1e-4 && e_l < 1e-4, "{e_h} {e_l}");
    // The fixture discriminates: the same weights with MAE's sin-cos (what the import used to
    // substitute) are far off.
    let mut sincos = model.clone();
    let fresh = DiffMae::new(model.config().clone(), 0, &dev).unwrap();
    sincos.encoder.pos_embed = fresh.encoder.pos_embed.clone();
    sincos.decoder.pos_embed = fresh.decoder.pos_embed.clone();
    let (s_h, s_l) = errors(&sincos);
    eprintln!("{name}: stored {e_h:.2e} {e_l:.2e}; with sin-cos instead {s_h:.2e} {s_l:.2e}");
    assert!(s_h > 1e-2 && s_l > 1e-2, "{s_h} {s_l}");
    // What `dmae import-hf` writes loads back with the same outputs (sample, finetune --init).
    let dir = std::env::temp_dir().join(format!("dmae-hf-pos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("imported.safetensors");
    model.save(&path).unwrap();
    let back = DiffMae::load(&path, &dev).unwrap();
    assert_eq!(errors(&back), (e_h, e_l));
    std::fs::remove_dir_all(&dir).unwrap();
    // As a DiffMAE encoder initialisation, the stored encoder embedding comes along.
    let (hf, tensors) = dmae_models::hf::load_vitmae_files(
        &fixture(name).join("config.json"),
        &fixture(name).join("model.safetensors"),
        &dev,
    )
    .unwrap();
    let mut cfg = hf.to_model_config().unwrap();
    cfg.decoder = dmae_models::DecoderConfig {
        dim: 16,
        heads: 2,
        depth: 2,
        ..Default::default()
    };
    let mut diffmae = DiffMae::new(cfg, 0, &dev).unwrap();
    diffmae.load_encoder_from(&tensors).unwrap();
    assert_eq!(
        max_err(&diffmae.encoder.pos_embed, &model.encoder.pos_embed),
        0.0
    );
    // Of another image size, they cannot be used: an error naming the tensor.
    let mut other = diffmae.config().clone();
    other.image_size = [36, 36];
    let e = DiffMae::new(other, 0, &dev)
        .unwrap()
        .load_encoder_from(&tensors)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder.pos_embed"), "{e}");
}

#[test]
fn sincos_position_embeddings_of_another_size_still_init_an_encoder() {
    // MAE's sin-cos is recomputed for the new grid (the released files' case).
    let dev = Device::Cpu;
    let dir = fixture("vitmae-tiny-32");
    let (hf, tensors) = dmae_models::hf::load_vitmae_files(
        &dir.join("config.json"),
        &dir.join("model.safetensors"),
        &dev,
    )
    .unwrap();
    let mut cfg = hf.to_model_config().unwrap();
    cfg.image_size = [48, 48];
    let mut model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
    model.load_encoder_from(&tensors).unwrap();
    let fresh = DiffMae::new(cfg, 0, &dev).unwrap();
    assert_eq!(
        max_err(&model.encoder.pos_embed, &fresh.encoder.pos_embed),
        0.0
    );
}
