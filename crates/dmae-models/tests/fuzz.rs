//! Property tests feeding hostile checkpoints to [`DiffMae::from_safetensors_bytes`] (what
//! `DiffMae::load` runs on a file's bytes): flipped and truncated header bytes, and metadata
//! configs with arbitrary values in any field (dimensions in the billions, zero, negative, wrong
//! types). Each must return `Ok` or an error, never panic, abort, or build a network larger than
//! the file can fill.
//!
//! 256 cases per property by default (about a second); more with e.g.
//! `PROPTEST_CASES=5000 cargo test -p dmae-models --release --test fuzz`. Failing inputs are saved
//! in `crates/dmae-models/tests/fuzz.proptest-regressions` (commit them so they are replayed first).
//! The TOML config files of the `dmae` binary are fuzzed with the binary.

use std::sync::OnceLock;

use candle_core::Device;
use dmae_models::checkpoint::{read_config, CONFIG_KEY};
use dmae_models::{DiffMae, ModelConfig};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A tiny valid checkpoint to mutate (about 20 k parameters).
fn seed() -> &'static (ModelConfig, Vec<u8>) {
    static SEED: OnceLock<(ModelConfig, Vec<u8>)> = OnceLock::new();
    SEED.get_or_init(|| {
        let mut c = ModelConfig::mnist_small();
        c.encoder.dim = 16;
        c.encoder.depth = 2;
        c.encoder.heads = 2;
        c.decoder.dim = 8;
        c.decoder.depth = 1;
        c.decoder.heads = 2;
        c.decoder.time_embed_dim = 8;
        let m = DiffMae::new(c.clone(), 0, &Device::Cpu).unwrap();
        (c, m.to_safetensors_bytes().unwrap())
    })
}

/// The seed's tensors again, under new metadata.
fn with_metadata(meta: std::collections::HashMap<String, String>) -> Vec<u8> {
    let (_, bytes) = seed();
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let views: Vec<_> = st.tensors();
    safetensors::serialize(views, Some(meta)).unwrap()
}

const FIELDS: [&str; 21] = [
    "image_size",
    "patch_size",
    "in_channels",
    "num_frames",
    "tubelet",
    "encoder.dim",
    "encoder.depth",
    "encoder.heads",
    "encoder.mlp_ratio",
    "encoder.qkv_bias",
    "encoder.drop_path",
    "decoder.kind",
    "decoder.dim",
    "decoder.depth",
    "decoder.heads",
    "decoder.mlp_ratio",
    "decoder.time_embed_dim",
    "decoder.masked_input",
    "decoder.cross_source",
    "norm_eps",
    "activation",
];

fn hostile_value() -> impl Strategy<Value = Value> {
    let ints = prop::sample::select(vec![
        json!(0),
        json!(1),
        json!(2),
        json!(3),
        json!(4),
        json!(8),
        json!(16),
        json!(28),
        json!(100_000),
        json!(3_000_000),
        json!(1_000_000_000u64),
        json!(1u64 << 31),
        json!(u32::MAX),
        json!(1u64 << 53),
        json!(u64::MAX),
        json!(-1),
    ]);
    let others = prop::sample::select(vec![
        json!(1e308),
        json!(-0.5),
        json!(0.0),
        json!(1e-320),
        json!(0.999),
        json!([100_000, 100_000]),
        json!([0, 0]),
        json!([28, 28, 28]),
        json!([u64::MAX, 4]),
        json!("joint"),
        json!("cross"),
        json!("mask-token"),
        json!("gelu-tanh"),
        json!("gigantic"),
        json!(null),
        json!(true),
        json!({"dim": 3_000_000}),
    ]);
    prop_oneof![3 => ints, 2 => others, 1 => any::<i64>().prop_map(|v| json!(v))]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_config_metadata_is_refused_or_loads_consistently(
        edits in prop::collection::vec((prop::sample::select(FIELDS.to_vec()), hostile_value()), 1..4),
        raw in prop::option::weighted(0.1, "[ -~]{0,40}"),
    ) {
        let (c, _) = seed();
        let mut v = serde_json::to_value(c).unwrap();
        for (field, value) in &edits {
            let mut at = &mut v;
            let mut parts = field.split('.').peekable();
            while let Some(p) = parts.next() {
                // An earlier edit may have replaced the table with a scalar.
                if !at.is_object() {
                    break;
                }
                if parts.peek().is_none() {
                    at[p] = value.clone();
                } else {
                    at = &mut at[p];
                }
            }
        }
        let text = raw.unwrap_or_else(|| v.to_string());
        let meta = std::collections::HashMap::from([(CONFIG_KEY.to_string(), text)]);
        let bytes = with_metadata(meta);
        match DiffMae::from_safetensors_bytes(&bytes, &Device::Cpu) {
            // Only a config whose network the file fills exactly can load.
            Ok(m) => {
                prop_assert_eq!(m.config(), &read_config(&bytes).unwrap());
                prop_assert_eq!(m.config().param_count(), c.param_count());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn mutated_checkpoint_bytes_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        in_header in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (_, seed) = seed();
        let header = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
        let mut b = seed.clone();
        // Mostly the header (length, JSON: names, dtypes, shapes, offsets, metadata).
        let span = if in_header { header } else { b.len() };
        for (i, v) in &flips {
            b[i.index(span)] ^= v | 1;
        }
        let _ = DiffMae::from_safetensors_bytes(&b, &Device::Cpu);
        let _ = DiffMae::from_safetensors_bytes(&seed[..cut.index(seed.len())], &Device::Cpu);
    }
}
