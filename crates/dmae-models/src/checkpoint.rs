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
use crate::heads::{Classifier, Pool};
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
        serialize(self.named_params(), metadata(self.config())?)
    }

    /// Writes the checkpoint to `path` atomically ([`write_atomic`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes()?)
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
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let model = DiffMae::new(config, 0, device)?;
        assign_exactly(model.named_params(), tensors)?;
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

/// Writes `bytes` to `path` so that `path` always holds either its old content or all of the
/// new one: a temporary file beside it is written and fsynced, then renamed over `path` (and the
/// directory fsynced where the platform allows). An interrupted write leaves at most the
/// temporary file behind, never a truncated `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(&dir) {
            // Persists the rename itself; failure here cannot lose data already renamed.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path, e));
    }
    Ok(())
}

/// Metadata key of a [`Classifier`] checkpoint's head description (JSON of [`HeadInfo`]).
pub const HEAD_KEY: &str = "dmae_head";

/// What a classifier checkpoint holds besides the encoder config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadInfo {
    /// Number of classes of `head`.
    pub num_classes: usize,
    /// Pooling of the encoder tokens.
    pub pool: Pool,
}

impl Classifier {
    /// The classifier as safetensors bytes: config and [`HeadInfo`] in the metadata, tensors
    /// `encoder.*` (as in this module's table), `fc_norm.*` (average pooling), `head.*`.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut meta = metadata(self.config())?;
        let head = HeadInfo {
            num_classes: self.num_classes(),
            pool: self.pool,
        };
        meta.insert(HEAD_KEY.to_string(), serde_json::to_string(&head)?);
        serialize(self.named_params(), meta)
    }

    /// Writes the classifier to `path` atomically ([`write_atomic`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes()?)
    }

    /// Reads a classifier written by [`Classifier::save`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let config = read_config(&bytes)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let head = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEAD_KEY))
            .ok_or_else(|| {
                Error::config(
                    "checkpoint",
                    format!(
                        "{} has no `{HEAD_KEY}` metadata: not a classifier checkpoint \
                         (pre-training checkpoints load with DiffMae::load)",
                        path.display()
                    ),
                )
            })?;
        let head: HeadInfo = serde_json::from_str(head)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        let c = Classifier::new(config, head.num_classes, head.pool, 0, device)?;
        assign_exactly(c.named_params(), tensors)?;
        Ok(c)
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

/// Safetensors bytes of `params` (as f32) with `meta`.
fn serialize(params: &[NamedParam], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let data: Vec<(&str, Tensor)> = params
        .iter()
        .map(|p| Ok((p.name.as_str(), p.var.as_tensor().to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(data, Some(meta))?)
}

/// [`assign`], then rejects any tensor no parameter took (a checkpoint of another model).
fn assign_exactly(params: &[NamedParam], mut tensors: HashMap<String, Tensor>) -> Result<()> {
    assign(params, &mut tensors)?;
    match tensors.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
        Some((name, t)) => Err(Error::UnexpectedTensor {
            name,
            shape: t.dims().to_vec(),
        }),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        let mut c = ModelConfig::mnist();
        c.encoder.dim = 16;
        c.encoder.depth = 2;
        c.encoder.heads = 2;
        c.decoder.dim = 8;
        c.decoder.depth = 1;
        c.decoder.heads = 2;
        c
    }

    #[test]
    fn classifier_round_trips_and_is_told_apart_from_a_pretraining_checkpoint() {
        let dev = Device::Cpu;
        let dir = std::env::temp_dir().join(format!("dmae-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Classifier::new(small(), 10, Pool::Avg, 3, &dev).unwrap();
        let path = dir.join("cls.safetensors");
        c.save(&path).unwrap();
        let back = Classifier::load(&path, &dev).unwrap();
        assert_eq!(back.num_classes(), 10);
        assert_eq!(back.pool, Pool::Avg);
        for (a, b) in c.named_params().iter().zip(back.named_params()) {
            assert_eq!(a.name, b.name);
            let d = (a.var.as_tensor() - b.var.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{}", a.name);
        }
        let m = DiffMae::new(small(), 0, &dev).unwrap();
        let mpath = dir.join("model.safetensors");
        m.save(&mpath).unwrap();
        let e = Classifier::load(&mpath, &dev).unwrap_err().to_string();
        assert!(e.contains("not a classifier checkpoint"), "{e}");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
