//! Bounded fuzzing of config files (issue 19): any TOML text, valid or not, with any tables,
//! keys and values, goes through what `dmae train --config` and `dmae finetune --config` do with
//! it ([`ConfigFile::parse`], [`layered`], the `[model]` merge and [`ModelConfig::validate`]).
//! Never a panic; every refusal is one short line (no newline, no 309-digit float); every
//! accepted model config is within the library's limits. 256 cases per property, about a
//! second; more with `PROPTEST_CASES=20000 cargo test --release -p dmae --bin dmae fuzz`.

use proptest::prelude::*;
use toml::{Table, Value};

use super::*;
use crate::{finetune, train};

/// Longest refusal accepted: room for a path, a key, a value and what was expected (the
/// library's parameter-count refusal, which lists each part's size, is the longest, ~310).
const MAX_MESSAGE: usize = 400;

/// Keys the two commands and `[model]` know, and a few they do not.
const KEYS: &[&str] = &[
    "steps",
    "epochs",
    "batch-size",
    "lr",
    "warmup-steps",
    "weight-decay",
    "clip-grad",
    "accum-steps",
    "ema",
    "device",
    "dtype",
    "seed",
    "threads",
    "save-every",
    "log-every",
    "out",
    "resume",
    "stop-at",
    "config",
    "data",
    "model",
    "decoder",
    "mae",
    "mask-ratio",
    "mask",
    "noise-schedule",
    "rho",
    "timesteps",
    "sample-every",
    "init",
    "linear-probe",
    "layer-decay",
    "drop-path",
    "label-smoothing",
    "eval-every",
    "image_size",
    "patch_size",
    "in_channels",
    "num_frames",
    "tubelet",
    "encoder",
    "norm_eps",
    "activation",
    "norm_pix_loss",
    "diffusion",
    "dim",
    "depth",
    "heads",
    "mlp_ratio",
    "kind",
    "schedule",
    "batch_size",
    "",
    "é",
    "a.b",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_-]{1,12}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::sample::select(vec![
            0i64,
            1,
            -1,
            2,
            3,
            64,
            1024,
            1025,
            100_000,
            1 << 31,
            1 << 40,
            i64::MAX,
            i64::MIN,
        ])
        .prop_map(Value::Integer),
        any::<i64>().prop_map(Value::Integer),
        proptest::sample::select(vec![
            0.0f64,
            -0.0,
            0.5,
            1.0,
            1.5,
            -1.0,
            1e-300,
            5e-324,
            1e308,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ])
        .prop_map(Value::Float),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        proptest::sample::select(vec![
            "",
            "mnist",
            "tiny",
            "gigantic",
            "bundled",
            "imagenet:/x",
            "moving-mnist:canvas=100000",
            "moving-mnist:frames=0",
            "cpu",
            "tpu",
            "cuda:99",
            "bf16",
            "none",
            "cross",
            "linear",
            "--steps",
            "1e3",
            "NaN",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        "\\PC{0,24}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Table(kv.into_iter().collect())),
        ]
    })
}

fn table() -> impl Strategy<Value = Table> {
    proptest::collection::vec((key(), value()), 0..7).prop_map(|kv| kv.into_iter().collect())
}

/// A config document: `[model]`, the command's table, others, or top-level values.
fn document() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("model".to_string()),
        Just("train".to_string()),
        Just("finetune".to_string()),
        key(),
    ];
    let entry = (
        section,
        prop_oneof![4 => table().prop_map(Value::Table), 1 => value()],
    );
    proptest::collection::vec(entry, 0..4).prop_map(|kv| {
        let top: Table = kv.into_iter().collect();
        toml::to_string(&top).unwrap_or_default()
    })
}

/// Valid configs with bytes flipped, dropped or repeated: mostly parse errors.
fn mutated() -> impl Strategy<Value = String> {
    const BASE: &str = "[model]\nencoder = { dim = 64, depth = 2, heads = 2 }\n\
        decoder = { dim = 32, depth = 1, heads = 2 }\n[model.diffusion]\ntimesteps = 40\n\
        [train]\nbatch-size = 32\nlr = 0.02\nthreads = 2\nsteps = 5\n";
    proptest::collection::vec((0..BASE.len(), any::<u8>(), 0..3u8), 1..6).prop_map(|edits| {
        let mut b = BASE.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match op {
                0 => b[at] = byte,
                1 => {
                    b.remove(at);
                }
                _ => b.insert(at, byte),
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

fn assert_short(e: &anyhow::Error, text: &str) {
    let msg = format!("{e:#}");
    assert!(
        !msg.contains('\n') && !msg.is_empty() && msg.len() <= MAX_MESSAGE,
        "not one short line ({} bytes): {msg:?}\nconfig:\n{text}",
        msg.len()
    );
}

fn assert_within_limits(c: &ModelConfig, text: &str) {
    assert!(c.validate().is_ok(), "accepted an invalid config:\n{text}");
    assert!(
        c.param_count() <= ModelConfig::MAX_PARAMS,
        "accepted {} parameters:\n{text}",
        c.param_count()
    );
}

/// What `dmae train --config F` does with the file before opening data or building a model.
fn train_config(text: &str) {
    let file = match ConfigFile::parse(text, "f.toml", "train") {
        Ok(f) => f,
        Err(e) => return assert_short(&e, text),
    };
    let args: train::Args = match layered("train", &file, &[]) {
        Ok(a) => a,
        Err(e) => return assert_short(&e, text),
    };
    match train::model_config(&args, &file) {
        Ok(c) => assert_within_limits(&c, text),
        Err(e) => assert_short(&e, text),
    }
}

/// The same for `dmae finetune --init none --config F`.
fn finetune_config(text: &str) {
    let file = match ConfigFile::parse(text, "f.toml", "finetune") {
        Ok(f) => f,
        Err(e) => return assert_short(&e, text),
    };
    let cli: Vec<std::ffi::OsString> = vec!["--init".into(), "none".into()];
    let args: finetune::Args = match layered("finetune", &file, &cli) {
        Ok(a) => a,
        Err(e) => return assert_short(&e, text),
    };
    let config = ModelConfig::preset(&args.model)
        .map_err(anyhow::Error::from)
        .and_then(|p| file.model(p))
        .and_then(|c| c.validate().map(|()| c).map_err(Into::into));
    match config {
        Ok(c) => assert_within_limits(&c, text),
        Err(e) => assert_short(&e, text),
    }
}

// proptest's default: 256 cases per property, or PROPTEST_CASES.
proptest! {
    #[test]
    fn any_toml_document_is_accepted_within_limits_or_refused_in_one_line(text in document()) {
        train_config(&text);
        finetune_config(&text);
    }

    #[test]
    fn mutated_configs_are_accepted_within_limits_or_refused_in_one_line(text in mutated()) {
        train_config(&text);
        finetune_config(&text);
    }
}

#[test]
fn hostile_values_named_in_the_issue_are_refused_in_one_short_line() {
    for text in [
        "[train]\nweight-decay = nan\n",
        "[train]\nweight-decay = 1.7976931348623157e308\nmask-ratio = 1.7976931348623157e308\n",
        "[train]\nthreads = 100000\n",
        "[train]\nlr = inf\n",
        "[model]\nencoder = { depth = 1000000000 }\n",
        "[model]\nimage_size = [100000, 100000]\n",
        "[model]\nimage_size = [5e-324]\n",
        "[train]\neval-every = [3.0996550867792210e178]\n",
    ] {
        let file = ConfigFile::parse(text, "f.toml", "train").unwrap();
        let e = layered::<train::Args>("train", &file, &[])
            .and_then(|a| train::model_config(&a, &file))
            .expect_err(text);
        assert!(e.is::<Usage>(), "{text}: {e:#}");
        assert_short(&e, text);
        assert!(!format!("{e}").contains("17976931348623157"), "{e}");
    }
}
