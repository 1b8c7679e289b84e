//! Parity with transformers' CLIP vision tower on tiny random checkpoints made by
//! tests/fixtures/make_clip_fixtures.py: the same raw images give the same pixel_values
//! (Pillow's bicubic, CLIP mean/std), and the same pixel_values give the same
//! last_hidden_state, pooler_output, first block output and default patch features, within 1e-4.
//! Plus the refusals: missing files, a ViTMAE directory, another model_type.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::max_abs_diff;
use dmae_models::{ClipFeatureConfig, ClipVision};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn close(name: &str, ours: &Tensor, theirs: &Tensor, tol: f32) {
    assert_eq!(ours.dims(), theirs.dims(), "{name}");
    let e = max_abs_diff(ours, theirs);
    eprintln!("{name}: max abs diff {e:.2e}");
    assert!(e < tol, "{name}: {e}");
}

#[test]
fn clip_parity_both_layouts() {
    let dev = Device::Cpu;
    let r = candle_core::safetensors::load(fixture("clip-tiny-16/reference.safetensors"), &dev)
        .unwrap();
    // CLIPModel (vision_model.* + text tower, preprocessor_config.json with its own mean/std)
    // and CLIPVisionModel (bare names, OpenAI mean/std): same vision weights.
    for (dir, tag) in [("clip-tiny-16", ""), ("clip-vision-tiny-16", "_openai")] {
        let tower = ClipVision::from_dir(fixture(dir), &dev).unwrap();
        assert_eq!(tower.grid(), dmae_diffusion::PatchGrid::new(4, 4));
        for kind in ["rgb", "grey"] {
            let px = tower
                .preprocess()
                .apply(&r[&format!("images_{kind}")])
                .unwrap();
            let want = &r[&format!("pixel_values_{kind}{tag}")];
            close(&format!("{dir} {kind} pixel_values"), &px, want, 1e-5);

            let out = tower.forward(&r[&format!("pixel_values_{kind}")]).unwrap();
            for (what, ours) in [
                ("last_hidden_state", &out.last_hidden_state),
                ("pooler_output", &out.pooler_output),
                ("hidden_states_1", &out.blocks[0]),
            ] {
                close(
                    &format!("{dir} {kind} {what}"),
                    ours,
                    &r[&format!("{what}_{kind}")],
                    1e-4,
                );
            }
            let f = tower
                .patch_features(&out, &ClipFeatureConfig::default())
                .unwrap();
            close(
                &format!("{dir} {kind} patch_features"),
                &f,
                &r[&format!("patch_features_{kind}")],
                1e-4,
            );
        }
        // End to end: raw images → target on CLIP's own grid is the default patch features of
        // the pre-processed images.
        let t = tower
            .target(
                &r["images_rgb"],
                &ClipFeatureConfig::default(),
                tower.grid(),
            )
            .unwrap();
        let out = tower
            .forward(&tower.preprocess().apply(&r["images_rgb"]).unwrap())
            .unwrap();
        let f = tower
            .patch_features(&out, &ClipFeatureConfig::default())
            .unwrap();
        close(&format!("{dir} target"), &t, &f, 1e-6);
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmae-clip-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn refusal(dir: &Path) -> String {
    let e = ClipVision::from_dir(dir, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn clip_refuses_missing_files_and_other_architectures() {
    // No such directory / no weights.
    let e = refusal(Path::new("/nonexistent/clip"));
    assert!(e.contains("/nonexistent/clip/config.json"), "{e}");
    let d = scratch("noweights");
    std::fs::copy(fixture("clip-tiny-16/config.json"), d.join("config.json")).unwrap();
    let e = refusal(&d);
    assert!(e.contains("model.safetensors"), "{e}");

    // A ViTMAE checkpoint directory: refused on its config, before the weights are read.
    let e = refusal(&fixture("vitmae-tiny-32"));
    assert!(
        e.contains("config.json") && e.contains("\"vit_mae\"") && e.contains("not a CLIP"),
        "{e}"
    );

    // Another model_type, and a clip config without vision_config.
    for (json, want) in [
        (
            r#"{"model_type": "siglip", "vision_config": {}}"#,
            "\"siglip\"",
        ),
        (
            r#"{"model_type": "clip", "text_config": {}}"#,
            "no vision_config",
        ),
    ] {
        let d = scratch("othertype");
        std::fs::write(d.join("config.json"), json).unwrap();
        let e = refusal(&d);
        assert!(e.contains("config.json") && e.contains(want), "{e}");
    }

    // A CLIP config over ViTMAE weights: the first missing tower tensor and the file are named.
    let d = scratch("wrongweights");
    std::fs::copy(
        fixture("clip-vision-tiny-16/config.json"),
        d.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("vitmae-tiny-32/model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let e = refusal(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("embeddings.class_embedding"),
        "{e}"
    );
    for n in ["noweights", "othertype", "wrongweights"] {
        std::fs::remove_dir_all(scratch(n)).unwrap();
    }
}
