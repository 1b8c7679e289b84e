//! A frozen CLIP vision tower (candle-transformers' `clip::vision_model`), the source of the
//! paper's second target: DiffMAE "with CLIP features as an additional target".
//!
//! [`ClipVision`] loads Hugging Face safetensors in the `openai/clip-vit-base-patch16` layout —
//! `config.json` + `model.safetensors` (+ `preprocessor_config.json` when present) — from a
//! local directory ([`ClipVision::from_dir`]) or a Hub repository through the hf-hub cache
//! ([`ClipVision::from_hf_hub`], feature `hf-hub`, `HF_HUB_OFFLINE=1` honoured). Both a
//! `CLIPModel` checkpoint (text and vision towers, model_type `clip`, sizes in `vision_config`)
//! and a `CLIPVisionModel` one (model_type `clip_vision_model`) are read; only the
//! `vision_model.*` tensors are loaded. The sizes come from the config, not from ViT-B/16.
//!
//! The tower is inference-only: its weights are plain tensors (not variables), so no optimiser
//! sees them, and [`ClipVision::target`] detaches its output.
//!
//! | step | function | choice |
//! |---|---|---|
//! | images `[0, 1]` → `pixel_values` | [`ClipPreprocess::apply`] | bicubic squash to `S × S`, CLIP mean/std ([`preprocess`]) |
//! | `pixel_values` → tokens | [`ClipVision::forward`] | `last_hidden_state`, `pooler_output`, every block's output |
//! | tokens → per-patch features | [`ClipVision::patch_features`] | last block, `post_layernorm` ([`ClipFeatureConfig`]) |
//! | CLIP grid → model grid | [`resample_grid`] | area averaging |
//!
//! candle-transformers' CLIP has only `quick_gelu` and LayerNorm eps 1e-5 (every OpenAI CLIP
//! checkpoint's); a config asking for anything else is refused rather than run wrongly.

pub mod features;
pub mod preprocess;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::clip::{text_model, vision_model};
use dmae_diffusion::PatchGrid;
use serde::Deserialize;

pub use features::{resample_grid, ClipFeatureConfig, ClipFeatureNorm};
pub use preprocess::ClipPreprocess;

use crate::block::LayerNorm;
use crate::error::{check_shape, Error, Result};

/// candle-transformers hard-codes this LayerNorm eps in its CLIP.
const CLIP_LAYER_NORM_EPS: f64 = 1e-5;

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_projection() -> usize {
    512
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    CLIP_LAYER_NORM_EPS
}

/// The fields of transformers' `CLIPVisionConfig` the tower reads (`vision_config` of a
/// `CLIPModel` config, or the whole config of a `CLIPVisionModel`); a missing field takes
/// transformers' default, as transformers does.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HfClipVisionConfig {
    /// Token width `D`.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Width of the (unused here) image-text projection.
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
    /// Blocks.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Input channels (3: CLIP's pre-processing is RGB).
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Input side `S` (square).
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Patch side.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// MLP activation (only `quick_gelu` runs).
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// LayerNorm eps (only 1e-5 runs).
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

impl HfClipVisionConfig {
    /// Reads the vision config from a transformers CLIP `config.json` (`path` names the file in
    /// errors). Refuses other architectures (e.g. a ViTMAE config), a `clip` config without
    /// `vision_config`, and sizes or activations the tower cannot run.
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let io = |reason: String| Error::Io {
            path: path.to_string(),
            reason,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| io(e.to_string()))?;
        let model_type = v.get("model_type").and_then(|m| m.as_str());
        let vision =
            match (model_type, v.get("vision_config")) {
                (Some("clip") | None, Some(vc)) if vc.is_object() => vc.clone(),
                (Some("clip"), _) => return Err(io(
                    "model_type \"clip\" but no vision_config object: not a CLIP checkpoint config"
                        .into(),
                )),
                (Some("clip_vision_model"), _) => v.clone(),
                (Some(other), _) => {
                    return Err(io(format!(
                        "model_type {other:?} is not a CLIP model (expected \"clip\" with a \
                     vision_config, or \"clip_vision_model\")"
                    )))
                }
                (None, _) => {
                    return Err(io(
                        "no model_type and no vision_config: not a CLIP checkpoint config".into(),
                    ))
                }
            };
        let c: Self =
            serde_json::from_value(vision).map_err(|e| io(format!("vision_config: {e}")))?;
        c.validate().map_err(io)?;
        Ok(c)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
        ];
        if let Some((f, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("vision_config.{f} must be positive"));
        }
        if self.num_channels != 3 {
            return Err(format!(
                "vision_config.num_channels {}: CLIP towers read RGB (3)",
                self.num_channels
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.image_size < self.patch_size {
            return Err(format!(
                "vision_config.image_size {} is smaller than patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.hidden_act != "quick_gelu" {
            return Err(format!(
                "vision_config.hidden_act {:?}: candle-transformers' CLIP runs only \"quick_gelu\"",
                self.hidden_act
            ));
        }
        if (self.layer_norm_eps - CLIP_LAYER_NORM_EPS).abs() > 1e-12 {
            return Err(format!(
                "vision_config.layer_norm_eps {}: candle-transformers' CLIP runs only 1e-5",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// CLIP's patch grid (`image_size / patch_size` on each side, the remainder dropped as the
    /// patch convolution does).
    pub fn grid(&self) -> PatchGrid {
        let g = self.image_size / self.patch_size;
        PatchGrid::new(g, g)
    }

    /// Every tensor of the vision tower, transformers' names without the `vision_model.` prefix,
    /// with its shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, m, c, p) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_channels,
            self.patch_size,
        );
        let mut v = vec![
            ("embeddings.class_embedding".to_string(), vec![d]),
            ("embeddings.patch_embedding.weight".into(), vec![d, c, p, p]),
            (
                "embeddings.position_embedding.weight".into(),
                vec![self.grid().len() + 1, d],
            ),
        ];
        for ln in ["pre_layrnorm", "post_layernorm"] {
            v.push((format!("{ln}.weight"), vec![d]));
            v.push((format!("{ln}.bias"), vec![d]));
        }
        for i in 0..self.num_hidden_layers {
            let l = format!("encoder.layers.{i}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                v.push((format!("{l}.self_attn.{proj}.weight"), vec![d, d]));
                v.push((format!("{l}.self_attn.{proj}.bias"), vec![d]));
            }
            for ln in ["layer_norm1", "layer_norm2"] {
                v.push((format!("{l}.{ln}.weight"), vec![d]));
                v.push((format!("{l}.{ln}.bias"), vec![d]));
            }
            v.push((format!("{l}.mlp.fc1.weight"), vec![m, d]));
            v.push((format!("{l}.mlp.fc1.bias"), vec![m]));
            v.push((format!("{l}.mlp.fc2.weight"), vec![d, m]));
            v.push((format!("{l}.mlp.fc2.bias"), vec![d]));
        }
        v
    }

    fn candle(&self) -> vision_model::ClipVisionConfig {
        vision_model::ClipVisionConfig {
            embed_dim: self.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
        }
    }
}

/// The tower's outputs for a batch, as transformers' `CLIPVisionModel` returns them.
#[derive(Clone, Debug)]
pub struct ClipVisionOutput {
    /// The last block's output `(N, 1 + L, D)`, class token first (no `post_layernorm`).
    pub last_hidden_state: Tensor,
    /// `post_layernorm` of the class token of `last_hidden_state`, `(N, D)`.
    pub pooler_output: Tensor,
    /// Every block's output, `(N, 1 + L, D)` each: `blocks[i]` is transformers'
    /// `hidden_states[i + 1]` (the embeddings, `hidden_states[0]`, are not exposed).
    pub blocks: Vec<Tensor>,
}

/// A frozen CLIP vision tower with its pre-processing.
#[derive(Clone, Debug)]
pub struct ClipVision {
    config: HfClipVisionConfig,
    preprocess: ClipPreprocess,
    tower: vision_model::ClipVisionTransformer,
    /// CLIP's final LayerNorm, through dmae-core's fused op (the tower's own blocks run inside
    /// candle-transformers, frozen).
    post_layernorm: LayerNorm,
    device: Device,
}

/// The transformers prefix of the vision tensors in `names`: `vision_model.` (`CLIPModel`,
/// `CLIPVisionModel`) or none (a bare vision-transformer state dict).
fn vision_prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> &'static str {
    if names.any(|n| n == "vision_model.embeddings.class_embedding") {
        "vision_model."
    } else {
        ""
    }
}

impl ClipVision {
    /// Builds the tower from transformers-named tensors (`vision_model.*` as in a checkpoint,
    /// or without the prefix); other tensors outside the prefix (a text tower, projections) are
    /// ignored, and so is the `embeddings.position_ids` buffer. Every tower tensor must be there
    /// with its shape; an unknown tensor under the prefix is an error.
    pub fn from_tensors(
        config: HfClipVisionConfig,
        preprocess: ClipPreprocess,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(|reason| Error::Config {
            field: "clip vision_config",
            reason,
        })?;
        if preprocess.image_size != config.image_size {
            return Err(Error::config(
                "clip preprocess",
                format!(
                    "made for {} px, the tower reads {} px",
                    preprocess.image_size, config.image_size
                ),
            ));
        }
        let prefix = vision_prefix(tensors.keys().map(String::as_str));
        let mut src: HashMap<String, Tensor> = tensors
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v)))
            .collect();
        if prefix.is_empty() {
            // A bare state dict may still carry a CLIPModel's other parts: not the tower's.
            src.retain(|k, _| {
                !(k.starts_with("text_model.")
                    || k.ends_with("_projection.weight")
                    || k == "logit_scale")
            });
        }
        src.remove("embeddings.position_ids");
        let mut ts = HashMap::new();
        for (name, shape) in config.tensor_shapes() {
            let t = src.remove(&name).ok_or_else(|| Error::MissingTensor {
                name: format!("{prefix}{name}"),
                expected: shape.clone(),
            })?;
            check_shape(&format!("{prefix}{name}"), &t, &shape)?;
            ts.insert(name, t.to_dtype(DType::F32)?.to_device(device)?);
        }
        if let Some((name, t)) = src.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
            return Err(Error::UnexpectedTensor {
                name: format!("{prefix}{name}"),
                shape: t.dims().to_vec(),
            });
        }
        let post_layernorm = LayerNorm {
            weight: ts["post_layernorm.weight"].clone(),
            bias: ts["post_layernorm.bias"].clone(),
            eps: CLIP_LAYER_NORM_EPS,
        };
        let vb = candle_nn::VarBuilder::from_tensors(ts, DType::F32, device);
        let tower = vision_model::ClipVisionTransformer::new(vb, &config.candle())?;
        Ok(Self {
            config,
            preprocess,
            tower,
            post_layernorm,
            device: device.clone(),
        })
    }

    /// Loads `config.json`, `model.safetensors` and, if given, `preprocessor_config.json` (else
    /// OpenAI's mean/std). The config is checked before the weights are read.
    pub fn from_files(
        config_json: &Path,
        weights: &Path,
        preprocessor_json: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let config = HfClipVisionConfig::from_json(
            &read_text(config_json)?,
            &config_json.display().to_string(),
        )?;
        let preprocess = match preprocessor_json {
            Some(p) => ClipPreprocess::from_json(
                &read_text(p)?,
                &p.display().to_string(),
                config.image_size,
            )?,
            None => ClipPreprocess::openai(config.image_size),
        };
        let in_file = |e: Error| Error::Io {
            path: weights.display().to_string(),
            reason: e.to_string(),
        };
        let bytes = std::fs::read(weights).map_err(|e| Error::Io {
            path: weights.display().to_string(),
            reason: e.to_string(),
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| in_file(e.into()))?;
        let prefix = vision_prefix(st.names().into_iter());
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if name.starts_with(prefix) {
                let t = candle_core::safetensors::Load::load(&view, device)
                    .map_err(|e| in_file(e.into()))?;
                tensors.insert(name, t);
            }
        }
        Self::from_tensors(config, preprocess, tensors, device).map_err(|e| match e {
            Error::MissingTensor { .. } | Error::UnexpectedTensor { .. } | Error::Shape { .. } => {
                in_file(e)
            }
            e => e,
        })
    }

    /// Loads a checkpoint directory: `config.json`, `model.safetensors` and the optional
    /// `preprocessor_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let pre = dir.join("preprocessor_config.json");
        Self::from_files(
            &dir.join("config.json"),
            &dir.join("model.safetensors"),
            pre.is_file().then_some(pre.as_path()),
            device,
        )
    }

    /// Loads `repo_id` (e.g. `openai/clip-vit-base-patch16`) through the hf-hub cache
    /// (`HF_HOME`); with `HF_HUB_OFFLINE=1` only the cache is read. A repository without a
    /// readable `preprocessor_config.json` gets OpenAI's mean/std.
    #[cfg(feature = "hf-hub")]
    pub fn from_hf_hub(repo_id: &str, device: &Device) -> Result<Self> {
        let config = crate::hf::hub_file(repo_id, "config.json")?;
        // Check the architecture before a 600 MB download.
        HfClipVisionConfig::from_json(
            &read_text(&config)?,
            &format!("hf://{repo_id}/config.json"),
        )?;
        let weights = crate::hf::hub_file(repo_id, "model.safetensors")?;
        let pre = crate::hf::hub_file(repo_id, "preprocessor_config.json").ok();
        Self::from_files(&config, &weights, pre.as_deref(), device)
    }

    /// The vision config read from `config.json`.
    pub fn config(&self) -> &HfClipVisionConfig {
        &self.config
    }

    /// The pre-processing (input side, mean, std) of this tower.
    pub fn preprocess(&self) -> &ClipPreprocess {
        &self.preprocess
    }

    /// CLIP's patch grid.
    pub fn grid(&self) -> PatchGrid {
        self.config.grid()
    }

    /// The feature width `D`.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tower on pre-processed `pixel_values` `(N, C, S, S)` (see [`ClipPreprocess::apply`]),
    /// as transformers' `CLIPVisionModel(pixel_values, output_hidden_states=True)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<ClipVisionOutput> {
        let s = self.config.image_size;
        let n = pixel_values.dims().first().copied().unwrap_or(0);
        check_shape(
            "pixel_values",
            pixel_values,
            &[n, self.config.num_channels, s, s],
        )?;
        let x = pixel_values.to_dtype(DType::F32)?.to_device(&self.device)?;
        let mut blocks = self.tower.output_hidden_states(&x)?;
        let pooler_output = blocks
            .pop()
            .ok_or_else(|| Error::arg("clip", "the tower returned no output"))?;
        let last_hidden_state = blocks
            .last()
            .cloned()
            .ok_or_else(|| Error::arg("clip", "the tower has no block"))?;
        Ok(ClipVisionOutput {
            last_hidden_state,
            pooler_output,
            blocks,
        })
    }

    /// The per-patch features `(N, L, D)` on CLIP's grid that `choice` names: tokens `1..` of
    /// the chosen block, normalised per token (see [`features`] for the default and why).
    pub fn patch_features(
        &self,
        out: &ClipVisionOutput,
        choice: &ClipFeatureConfig,
    ) -> Result<Tensor> {
        let b = choice.block(out.blocks.len())?;
        let tokens = &out.blocks[b];
        let l = tokens.dim(1)?.saturating_sub(1);
        let x = tokens.narrow(1, 1, l)?;
        Ok(match choice.norm {
            ClipFeatureNorm::PostLayernorm => self.post_layernorm.forward(&x)?,
            ClipFeatureNorm::Layernorm => {
                let mean = x.mean_keepdim(2)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(2)?;
                xc.broadcast_div(&(var + 1e-6)?.sqrt()?)?
            }
            ClipFeatureNorm::None => x,
        })
    }

    /// The CLIP target of a batch: `images (N, C, H, W)` in `[0, 1]` (any size, `C` = 1 or 3)
    /// → pre-process → tower → [`Self::patch_features`] → [`resample_grid`] onto `grid` (the
    /// model's patch grid over the same image) → `(N, grid.len(), D)`, detached. Gather the
    /// masked positions with the mask's indices (`dmae_core::gather_tokens`).
    pub fn target(
        &self,
        images: &Tensor,
        choice: &ClipFeatureConfig,
        grid: PatchGrid,
    ) -> Result<Tensor> {
        let x = self.preprocess.apply(&images.to_device(&self.device)?)?;
        let out = self.forward(&x)?;
        let f = self.patch_features(&out, choice)?;
        Ok(resample_grid(&f, self.grid(), grid)?.detach())
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> HfClipVisionConfig {
        HfClipVisionConfig::from_json(
            r#"{"model_type": "clip_vision_model", "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 8, "patch_size": 4}"#,
            "c.json",
        )
        .unwrap()
    }

    fn random(c: &HfClipVisionConfig, prefix: &str) -> HashMap<String, Tensor> {
        c.tensor_shapes()
            .into_iter()
            .map(|(n, s)| {
                let t = Tensor::randn(0f32, 0.1, s, &Device::Cpu).unwrap();
                (format!("{prefix}{n}"), t)
            })
            .collect()
    }

    #[test]
    fn config_defaults_are_transformers() {
        let c =
            HfClipVisionConfig::from_json(r#"{"model_type": "clip", "vision_config": {}}"#, "c")
                .unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.patch_size,
                c.image_size
            ),
            (768, 12, 32, 224)
        );
        assert_eq!(c.hidden_act, "quick_gelu");
        assert_eq!(c.grid(), PatchGrid::new(7, 7));
        assert_eq!(tiny().grid(), PatchGrid::new(2, 2));
    }

    #[test]
    fn config_refusals_name_the_file_and_field() {
        for (json, want) in [
            (
                r#"{"model_type": "vit_mae", "hidden_size": 8}"#,
                "\"vit_mae\"",
            ),
            (
                r#"{"model_type": "clip", "text_config": {}}"#,
                "no vision_config",
            ),
            (r#"{"hidden_size": 8}"#, "no model_type"),
            (
                r#"{"model_type": "clip", "vision_config": {"hidden_act": "gelu"}}"#,
                "hidden_act \"gelu\"",
            ),
            (
                r#"{"model_type": "clip_vision_model", "layer_norm_eps": 1e-6}"#,
                "layer_norm_eps",
            ),
            (
                r#"{"model_type": "clip_vision_model", "hidden_size": 10, "num_attention_heads": 3}"#,
                "num_attention_heads",
            ),
            (
                r#"{"model_type": "clip_vision_model", "num_channels": 1}"#,
                "num_channels 1",
            ),
            ("not json", "c.json"),
        ] {
            let e = HfClipVisionConfig::from_json(json, "c.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("c.json") && e.contains(want), "{json}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn both_layouts_load_and_a_missing_or_foreign_tensor_is_named() {
        let c = tiny();
        let pre = ClipPreprocess::openai(8);
        let dev = Device::Cpu;
        let mut full = random(&c, "vision_model.");
        full.insert(
            "text_model.embeddings.token_embedding.weight".into(),
            Tensor::zeros((4, 8), DType::F32, &dev).unwrap(),
        );
        full.insert(
            "logit_scale".into(),
            Tensor::zeros((), DType::F32, &dev).unwrap(),
        );
        let a = ClipVision::from_tensors(c.clone(), pre.clone(), full.clone(), &dev).unwrap();
        // The same weights without the prefix give the same outputs.
        let bare: HashMap<_, _> = full
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("vision_model.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let b = ClipVision::from_tensors(c.clone(), pre.clone(), bare, &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev).unwrap();
        let (oa, ob) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
        assert_eq!(oa.last_hidden_state.dims(), &[2, 5, 8]);
        assert_eq!(oa.pooler_output.dims(), &[2, 8]);
        assert_eq!(oa.blocks.len(), 2);
        let diff = (&oa.last_hidden_state - &ob.last_hidden_state)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);

        let mut missing = full.clone();
        missing.remove("vision_model.encoder.layers.1.mlp.fc2.bias");
        let e = ClipVision::from_tensors(c.clone(), pre.clone(), missing, &dev).unwrap_err();
        assert!(
            e.to_string()
                .contains("vision_model.encoder.layers.1.mlp.fc2.bias"),
            "{e}"
        );
        let mut extra = full.clone();
        extra.insert(
            "vision_model.encoder.layers.2.mlp.fc2.bias".into(),
            Tensor::zeros(8, DType::F32, &dev).unwrap(),
        );
        let e = ClipVision::from_tensors(c.clone(), pre.clone(), extra, &dev).unwrap_err();
        assert!(e.to_string().contains("layers.2"), "{e}");
        let mut wrong = full;
        wrong.insert(
            "vision_model.embeddings.class_embedding".into(),
            Tensor::zeros(9, DType::F32, &dev).unwrap(),
        );
        let e = ClipVision::from_tensors(c, pre, wrong, &dev).unwrap_err();
        assert!(e.to_string().contains("class_embedding"), "{e}");
    }

    #[test]
    fn target_has_one_feature_per_model_patch() {
        let c = tiny();
        let dev = Device::Cpu;
        let v =
            ClipVision::from_tensors(c.clone(), ClipPreprocess::openai(8), random(&c, ""), &dev)
                .unwrap();
        let images = Tensor::rand(0f32, 1., (3, 1, 28, 28), &dev).unwrap();
        let t = v
            .target(&images, &ClipFeatureConfig::default(), PatchGrid::new(7, 7))
            .unwrap();
        assert_eq!(t.dims(), &[3, 49, 8]);
        // post_layernorm: on CLIP's own grid, layer −1 equals post_layernorm(last_hidden_state).
        let out = v.forward(&v.preprocess().apply(&images).unwrap()).unwrap();
        let f = v
            .patch_features(&out, &ClipFeatureConfig::default())
            .unwrap();
        assert_eq!(f.dims(), &[3, 4, 8]);
        // Our post_layernorm (dmae-core's op) on the class token is the tower's pooled output
        // (candle-transformers' own LayerNorm).
        let cls = out
            .last_hidden_state
            .narrow(1, 0, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let pooled = v.post_layernorm.forward(&cls).unwrap();
        let d = (pooled - &out.pooler_output)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let ln = ClipFeatureConfig {
            layer: 1,
            norm: ClipFeatureNorm::Layernorm,
        };
        let f = v.patch_features(&out, &ln).unwrap();
        let m = f.mean_keepdim(2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(m.to_scalar::<f32>().unwrap() < 1e-5);
        let bad = ClipFeatureConfig {
            layer: 3,
            ..Default::default()
        };
        assert!(v.patch_features(&out, &bad).is_err());
        let e = v.forward(&images).unwrap_err().to_string();
        assert!(e.contains("pixel_values"), "{e}");
    }
}
