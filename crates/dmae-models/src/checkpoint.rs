//! Safetensors checkpoints that carry their [`ModelConfig`] in the file's metadata, loadable
//! without knowing the config in advance.
//!
//! Metadata keys: `format = "dmae-models"`, `dmae_config` = the config JSON (serde, kebab-case
//! enums), `dmae_version` = this crate's version. Tensors are f32, named as below (timm/MAE-like;
//! stable across versions; `L = rows·cols`, `P = p·p·C`, `De`/`Dd` encoder/decoder widths):
//!
//! | name | shape |
//! |---|---|
//! | `encoder.patch_embed.{weight, bias}` | `(De, P)`, `(De)`: linear on patchified pixels (channel fastest) |
//! | `encoder.cls_token` | `(1, 1, De)` |
//! | `encoder.blocks.{i}.norm1.{weight, bias}` | `(De)` |
//! | `encoder.blocks.{i}.attn.qkv.{weight, bias}` | `(3De, De)`, `(3De)`: rows q, k, v; heads inside |
//! | `encoder.blocks.{i}.attn.proj.{weight, bias}` | `(De, De)`, `(De)` |
//! | `encoder.blocks.{i}.norm2.{weight, bias}` | `(De)` |
//! | `encoder.blocks.{i}.mlp.fc1.{weight, bias}`, `.mlp.fc2.*` | `(H, De)`, `(De, H)` |
//! | `encoder.norm.{weight, bias}` | `(De)` |
//! | `decoder.embed.{weight, bias}` | joint only: `(Dd, De)` |
//! | `decoder.patch_embed.{weight, bias}` | noisy-patch input: `(Dd, P)` |
//! | `decoder.mask_token` | mask-token input: `(1, 1, Dd)` |
//! | `decoder.time_embed.fc1.*`, `.fc2.*` | time conditioning: `(Dd, F)`, `(Dd, Dd)` |
//! | `decoder.blocks.{i}.norm1`, `.attn.qkv`, `.attn.proj` | joint / cross-self (as the encoder's) |
//! | `decoder.blocks.{i}.norm_cross`, `.cross_attn.q` `(Dd, Dd)`, `.cross_attn.kv` `(2Dd, De)`, `.cross_attn.proj` | cross / cross-self |
//! | `decoder.blocks.{i}.norm2`, `.mlp.fc1`, `.mlp.fc2` | all |
//! | `decoder.norm.{weight, bias}`, `decoder.pred.{weight, bias}` | `(Dd)`, `(P, Dd)` |
//!
//! Position embeddings are fixed sin-cos and not stored.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::DiffMae;
use crate::params::NamedParam;

/// Metadata key of the config JSON.
pub const CONFIG_KEY: &str = "dmae_config";
/// Metadata key of the format tag.
pub const FORMAT_KEY: &str = "format";
/// Value of [`FORMAT_KEY`].
pub const FORMAT: &str = "dmae-models";

fn io(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl DiffMae {
    /// The checkpoint as safetensors bytes (config in the metadata).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let meta = metadata(self.config())?;
        let data: Vec<(&str, Tensor)> = self
            .named_params()
            .iter()
            .map(|p| Ok((p.name.as_str(), p.var.as_tensor().to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(safetensors::serialize(data, Some(meta))?)
    }

    /// Writes the checkpoint to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        std::fs::write(path, bytes).map_err(|e| io(path, e))
    }

    /// Reads a checkpoint written by [`DiffMae::save`]; the config comes from its metadata.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        Self::from_safetensors_bytes(&bytes, device)
    }

    /// [`DiffMae::load`] from bytes.
    pub fn from_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let config = read_config(bytes)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        Self::from_tensors(config, tensors, device)
    }

    /// Builds the network of `config` with the given tensors (names as in this module's table).
    /// Every parameter must be present with its exact shape and no other tensor may be given.
    pub fn from_tensors(
        config: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let model = DiffMae::new(config, 0, device)?;
        assign(model.named_params(), &mut tensors)?;
        if let Some((name, t)) = tensors.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
            return Err(Error::UnexpectedTensor {
                name,
                shape: t.dims().to_vec(),
            });
        }
        Ok(model)
    }

    /// Loads the weights of the checkpoint at `path` into this model, whose config must equal
    /// the checkpoint's.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let config = read_config(&bytes)?;
        if &config != self.config() {
            return Err(Error::config(
                "checkpoint",
                format!(
                    "config of {} differs from the model's: file {} vs model {}",
                    path.display(),
                    config.to_json()?,
                    self.config().to_json()?
                ),
            ));
        }
        let mut tensors =
            candle_core::safetensors::load_buffer(&bytes, self.encoder.cls_token.device())?;
        assign(self.named_params(), &mut tensors)
    }
}

fn metadata(config: &ModelConfig) -> Result<HashMap<String, String>> {
    Ok(HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT.to_string()),
        (CONFIG_KEY.to_string(), config.to_json()?),
        (
            "dmae_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]))
}

/// The config stored in a checkpoint's metadata.
pub fn read_config(bytes: &[u8]) -> Result<ModelConfig> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_KEY))
        .ok_or_else(|| {
            Error::config(
                "checkpoint",
                format!("no `{CONFIG_KEY}` in the safetensors metadata"),
            )
        })?;
    ModelConfig::from_json(json)
}

/// Sets every parameter from `tensors` (removing the used ones), checking names and shapes.
pub(crate) fn assign(params: &[NamedParam], tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    for p in params {
        let t = tensors
            .remove(&p.name)
            .ok_or_else(|| Error::MissingTensor {
                name: p.name.clone(),
                expected: p.var.dims().to_vec(),
            })?;
        if t.dims() != p.var.dims() {
            return Err(Error::shape(&p.name, p.var.dims(), t.dims()));
        }
        p.var
            .set(&t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
    }
    Ok(())
}
