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
//! | `decoder.clip_pred.{weight, bias}` | CLIP target only: `(D_clip, Dd)` |
//!
//! | `encoder.pos_embed`, `decoder.pos_embed` | optional, `(1 + L, De)`, `(1 + L, Dd)`: see below |
//!
//! Position embeddings are fixed buffers, not parameters: a network built from its config uses
//! the 2-D sin-cos of [`crate::embed::pos_embed`], and nothing is stored for them. An imported
//! network whose file holds other (fixed) position embeddings — a ViTMAE that transformers created,
//! a fine-tuned or interpolated one — keeps those: they are written as `encoder.pos_embed` /
//! `decoder.pos_embed` exactly when they differ from the sin-cos, and read back whenever present.
//! Row 0 of `encoder.pos_embed` (the cls position) is zero: a stored cls position is folded into
//! `encoder.cls_token` at import, which is the same sum.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// Name of the encoder's stored position embedding (only in files whose embedding is not the
/// fixed sin-cos; see the module docs).
pub const ENCODER_POS_EMBED: &str = "encoder.pos_embed";
/// Name of the decoder's stored position embedding.
pub const DECODER_POS_EMBED: &str = "decoder.pos_embed";

fn io(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn write_error(path: &Path, e: impl ToString) -> Error {
    Error::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads a checkpoint file whole; only a regular file (after following links) is opened, so a
/// link to a device or a FIFO is an error rather than an endless read or a hang.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    if !meta.is_file() {
        return Err(io(path, "not a regular file"));
    }
    std::fs::read(path).map_err(|e| io(path, e))
}

impl DiffMae {
    /// The checkpoint as safetensors bytes (config in the metadata).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut extra = Vec::new();
        let c = self.config();
        for (name, t, dim) in [
            (ENCODER_POS_EMBED, &self.encoder.pos_embed, c.encoder.dim),
            (DECODER_POS_EMBED, &self.decoder.pos_embed, c.decoder.dim),
        ] {
            if !is_fixed_pos_embed(c, t, dim)? {
                extra.push((name, t.to_dtype(DType::F32)?));
            }
        }
        serialize(self.named_params(), extra, metadata(self.config())?)
    }

    /// Writes the checkpoint to `path` atomically ([`write_atomic`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes()?)
    }

    /// Reads a checkpoint written by [`DiffMae::save`]; the config comes from its metadata.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        Self::from_safetensors_bytes(&read_file(path)?, device)
    }

    /// [`DiffMae::load`] from bytes.
    pub fn from_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let config = read_config(bytes)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        Self::from_tensors(config, tensors, device)
    }

    /// Builds the network of `config` with the given tensors (names as in this module's table).
    /// Every parameter must be present with its exact shape and no other tensor may be given;
    /// `encoder.pos_embed` and `decoder.pos_embed` are optional (the fixed sin-cos otherwise).
    pub fn from_tensors(
        config: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        check_holds(&tensors, config.param_count())?;
        let mut model = DiffMae::new(config, 0, device)?;
        if let Some(t) = take_pos_embed(&mut tensors, ENCODER_POS_EMBED, &model.encoder.pos_embed)?
        {
            model.encoder.pos_embed = t;
        }
        if let Some(t) = take_pos_embed(&mut tensors, DECODER_POS_EMBED, &model.decoder.pos_embed)?
        {
            model.decoder.pos_embed = t;
        }
        assign_exactly(model.named_params(), tensors)?;
        Ok(model)
    }

    /// Loads the weights of the checkpoint at `path` into this model, whose config must equal
    /// the checkpoint's. Stored position embeddings must equal the model's (they are fixed; a
    /// model that needs the file's loads with [`DiffMae::load`]).
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
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
        for (name, own) in [
            (ENCODER_POS_EMBED, &self.encoder.pos_embed),
            (DECODER_POS_EMBED, &self.decoder.pos_embed),
        ] {
            if let Some(t) = take_pos_embed(&mut tensors, name, own)? {
                let same = (t.to_dtype(DType::F32)? - own.to_dtype(DType::F32)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?
                    == 0.0;
                if !same {
                    return Err(Error::config(
                        "checkpoint",
                        format!(
                            "{} holds position embeddings `{name}` that differ from this \
                             model's; load it with DiffMae::load",
                            path.display()
                        ),
                    ));
                }
            }
        }
        assign(self.named_params(), &mut tensors)
    }
}

/// Refuses tensors that cannot be the parameters of a network that needs `needed` values, before
/// that network is built: a damaged or hostile config (in a checkpoint's metadata or a
/// `config.json`) may describe billions of parameters while the file holds a few thousand. Only a
/// gross mismatch is caught here (more than twice the values held, plus 16 M); smaller ones are
/// reported tensor by tensor once the network exists.
fn check_holds(tensors: &HashMap<String, Tensor>, needed: u64) -> Result<()> {
    let held: u64 = tensors.values().map(|t| t.elem_count() as u64).sum();
    if needed > held.saturating_mul(2).saturating_add(1 << 24) {
        return Err(Error::config(
            "checkpoint",
            format!(
                "its config describes a network of {needed} parameters but the file holds only \
                 {held} values: the config does not belong to these tensors"
            ),
        ));
    }
    Ok(())
}

/// Whether `t` is the fixed sin-cos position embedding of `config` at width `dim` (exactly what a
/// freshly built network holds).
fn is_fixed_pos_embed(config: &ModelConfig, t: &Tensor, dim: usize) -> Result<bool> {
    let (rows, cols) = config.grid();
    let fixed = crate::embed::pos_embed(config.time_steps(), rows, cols, dim, &Device::Cpu)?;
    if fixed.dims() != t.dims() {
        return Ok(false);
    }
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    Ok((fixed - t)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0)
}

/// Removes the optional position embedding `name` from `tensors` and returns it converted to the
/// dtype and device of `own` (the network's current one), after checking its shape and values.
pub(crate) fn take_pos_embed(
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
    own: &Tensor,
) -> Result<Option<Tensor>> {
    let Some(t) = tensors.remove(name) else {
        return Ok(None);
    };
    if t.dims() != own.dims() {
        return Err(Error::shape(name, own.dims(), t.dims()));
    }
    let t = t.to_dtype(own.dtype())?.to_device(own.device())?;
    let finite = t
        .to_dtype(DType::F32)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?
        .is_finite();
    if !finite {
        return Err(Error::config(
            "checkpoint",
            format!("position embedding `{name}` holds a NaN or infinite value"),
        ));
    }
    Ok(Some(t))
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
        .ok_or_else(|| write_error(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
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
        return Err(write_error(path, e));
    }
    Ok(())
}

/// What [`write_atomic`] puts between the target's name and its process id: `.NAME.tmp-PID`.
const TMP_MARK: &str = ".tmp-";

/// Removes the temporary files [`write_atomic`] left in `dir` when its process died before the
/// rename (kill -9, power loss): names `.NAME.tmp-PID` whose process is no longer running.
/// Temporaries of running processes, this one included, are left alone: another run may be
/// writing its checkpoint right now. Returns the removed paths.
///
/// Liveness is read from `/proc/PID` on Linux; elsewhere a temporary counts as stale once it is a
/// day old. A process of another PID namespace (another container sharing the directory) looks
/// dead from here: its write then fails at the rename with an error, and the file it was
/// replacing stays intact.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else {
            continue;
        };
        let path = entry.path();
        // Not followed: a link or directory with such a name is not ours.
        if !entry.file_type().is_ok_and(|t| t.is_file()) || process_may_run(pid, &path) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Removed meanwhile (by another run's cleanup): nothing left to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_error(&path, e)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// The process id in a [`write_atomic`] temporary's name `.NAME.tmp-PID`.
fn temporary_pid(name: &str) -> Option<u32> {
    let (stem, pid) = name.rsplit_once(TMP_MARK)?;
    if stem.len() < 2 || !stem.starts_with('.') || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether the process that named a temporary may still be writing it.
fn process_may_run(pid: u32, tmp: &Path) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        return Path::new("/proc").join(pid.to_string()).exists();
    }
    let age = std::fs::metadata(tmp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    age.is_none_or(|a| a < std::time::Duration::from_secs(24 * 3600))
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
        let c = self.config();
        let mut extra = Vec::new();
        if !is_fixed_pos_embed(c, &self.encoder.pos_embed, c.encoder.dim)? {
            extra.push((
                ENCODER_POS_EMBED,
                self.encoder.pos_embed.to_dtype(DType::F32)?,
            ));
        }
        serialize(self.named_params(), extra, meta)
    }

    /// Writes the classifier to `path` atomically ([`write_atomic`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes()?)
    }

    /// Reads a classifier written by [`Classifier::save`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
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
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        let d = config.encoder.dim as u64;
        let head_params = (d + 1).saturating_mul(head.num_classes as u64);
        check_holds(
            &tensors,
            config.encoder_param_count().saturating_add(head_params),
        )?;
        let mut c = Classifier::new(config, head.num_classes, head.pool, 0, device)?;
        if let Some(t) = take_pos_embed(&mut tensors, ENCODER_POS_EMBED, &c.encoder.pos_embed)? {
            c.encoder.pos_embed = t;
        }
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

/// Safetensors bytes of `params` (as f32) and the `extra` tensors with `meta`.
fn serialize(
    params: &[NamedParam],
    extra: Vec<(&str, Tensor)>,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut data: Vec<(&str, Tensor)> = params
        .iter()
        .map(|p| Ok((p.name.as_str(), p.var.as_tensor().to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    data.extend(extra);
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

    #[test]
    fn write_errors_say_write_and_name_the_file() {
        let dir = tempfile_dir("write-err");
        // The parent is a file: nothing can be created below it.
        let blocker = dir.join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let target = blocker.join("checkpoint.safetensors");
        let e = write_atomic(&target, b"abc").unwrap_err();
        assert!(matches!(e, Error::Write { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot write ") && msg.contains("not-a-dir/checkpoint.safetensors"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile_dir("stale");
        // A process that has exited: its temporaries are stale.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let stale = dir.join(format!(".checkpoint.safetensors.tmp-{dead}"));
        let stale2 = dir.join(format!(".optimizer.safetensors.tmp-{dead}"));
        let mine = dir.join(format!(".checkpoint.safetensors.tmp-{me}"));
        let keep = [
            mine.clone(),
            dir.join("checkpoint.safetensors"),
            dir.join(format!("visible.tmp-{dead}")),
            dir.join(".odd.tmp-12ab"),
            dir.join(".tmp-1"),
        ];
        for f in keep.iter().chain([&stale, &stale2]) {
            std::fs::write(f, b"partial").unwrap();
        }
        // A directory with a temporary's name is not ours to remove.
        let sub = dir.join(format!(".sub.tmp-{dead}"));
        std::fs::create_dir(&sub).unwrap();
        let removed = remove_stale_temporaries(&dir).unwrap();
        let mut want = vec![stale.clone(), stale2.clone()];
        want.sort();
        if cfg!(target_os = "linux") {
            assert_eq!(removed, want);
            assert!(!stale.exists() && !stale2.exists());
        }
        assert!(keep.iter().all(|f| f.exists()) && sub.is_dir());
        assert!(remove_stale_temporaries(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stored_position_embeddings_survive_save_and_load() {
        let dev = Device::Cpu;
        let dir = tempfile_dir("pos");
        let fresh = DiffMae::new(small(), 1, &dev).unwrap();
        // A network built from its config stores no position embedding.
        let bytes = fresh.to_safetensors_bytes().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensor(ENCODER_POS_EMBED).is_err() && st.tensor(DECODER_POS_EMBED).is_err());
        // Other fixed embeddings (an import's) are written and read back.
        let mut m = fresh.clone();
        m.encoder.pos_embed = (m.encoder.pos_embed.clone() * 0.5).unwrap();
        m.decoder.pos_embed = (m.decoder.pos_embed.clone() + 0.25).unwrap();
        let path = dir.join("m.safetensors");
        m.save(&path).unwrap();
        let back = DiffMae::load(&path, &dev).unwrap();
        for (a, b) in [
            (&m.encoder.pos_embed, &back.encoder.pos_embed),
            (&m.decoder.pos_embed, &back.decoder.pos_embed),
        ] {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
        // load_weights cannot replace them, so it refuses a file whose embeddings differ.
        let e = fresh.load_weights(&path).unwrap_err().to_string();
        assert!(e.contains("encoder.pos_embed"), "{e}");
        back.load_weights(&path).unwrap();
        // The classifier keeps them through fine-tuning and its own checkpoint.
        let c = Classifier::from_pretrained(&back, 10, Pool::Avg, 0.0, 0).unwrap();
        let cpath = dir.join("c.safetensors");
        c.save(&cpath).unwrap();
        let c2 = Classifier::load(&cpath, &dev).unwrap();
        let d = (&c2.encoder.pos_embed - &m.encoder.pos_embed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // A stored embedding of the wrong shape names the tensor.
        let mut t = candle_core::safetensors::load(&path, &dev).unwrap();
        t.insert(
            ENCODER_POS_EMBED.into(),
            Tensor::zeros((3, 16), DType::F32, &dev).unwrap(),
        );
        let e = DiffMae::from_tensors(small(), t, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoder.pos_embed"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn checkpoints_must_be_regular_files() {
        let e = DiffMae::load("/dev/zero", &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dmae-ckpt-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_config_far_larger_than_the_file_is_refused_before_building() {
        // 4.8 billion parameters described by the metadata of an empty file: this allocated
        // 19 GB before failing (or aborted).
        let mut c = ModelConfig::tiny();
        c.encoder.dim = 4096;
        c.encoder.heads = 16;
        c.encoder.depth = 24;
        c.validate().unwrap();
        let meta = metadata(&c).unwrap();
        let bytes = serialize(&[], Vec::new(), meta).unwrap();
        let e = DiffMae::from_safetensors_bytes(&bytes, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds only 0 values"), "{e}");
        // The same for a classifier whose head info claims a trillion classes.
        let mut meta = metadata(&small()).unwrap();
        let head = HeadInfo {
            num_classes: 1 << 40,
            pool: Pool::Avg,
        };
        meta.insert(HEAD_KEY.into(), serde_json::to_string(&head).unwrap());
        let dir = tempfile_dir("cls-huge");
        let path = dir.join("c.safetensors");
        std::fs::write(&path, serialize(&[], Vec::new(), meta).unwrap()).unwrap();
        let e = Classifier::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds only 0 values"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
