//! Import of the original facebookresearch/mae checkpoints (timm naming: `patch_embed.proj`,
//! `blocks.N.attn.qkv`, `decoder_blocks.N`, ...), as `.pth` (PyTorch pickle, state dict under
//! `model` as MAE saves it, or at the top level) or `.safetensors`.
//!
//! The files carry no config, so the caller gives the [`ModelConfig`] (e.g.
//! `ModelConfig::base().into_mae()` for `mae_pretrain_vit_base_full.pth`; widths, depths and
//! heads must match). The stored position embeddings are kept as the Hugging Face import keeps
//! them ([`crate::hf`]): MAE's pre-training files hold its fixed sin-cos, but a fine-tuned
//! encoder's were learned.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::{DECODER_POS_EMBED, ENCODER_POS_EMBED};
use crate::config::ModelConfig;
use crate::error::{check_shape, Error, Result};
use crate::hf::fold_cls_position;
use crate::model::DiffMae;

/// Renames an MAE (timm) state dict to this crate's names (see [`crate::checkpoint`]). Decoder
/// tensors are optional (fine-tuning checkpoints have none; their `fc_norm`/`head` are dropped).
pub fn convert_mae_tensors(
    src: HashMap<String, Tensor>,
    config: &ModelConfig,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let (d, p, c) = (config.encoder.dim, config.patch_size, config.in_channels);
    let mut pos_embed = None;
    for (name, t) in src {
        let new = match name.as_str() {
            "fc_norm.weight" | "fc_norm.bias" | "head.weight" | "head.bias" => continue,
            "pos_embed" => {
                pos_embed = Some(t);
                continue;
            }
            "decoder_pos_embed" => {
                let l = t.dims().get(1).copied().unwrap_or(0);
                check_shape("decoder_pos_embed", &t, &[1, l, config.decoder.dim])?;
                out.insert(DECODER_POS_EMBED.to_string(), t.squeeze(0)?);
                continue;
            }
            "patch_embed.proj.weight" => {
                check_shape("patch_embed.proj.weight", &t, &[d, c, p, p])?;
                out.insert(
                    "encoder.patch_embed.weight".to_string(),
                    t.permute((0, 2, 3, 1))?.reshape((d, p * p * c))?,
                );
                continue;
            }
            "patch_embed.proj.bias" => "encoder.patch_embed.bias".to_string(),
            "cls_token" => "encoder.cls_token".to_string(),
            "mask_token" => "decoder.mask_token".to_string(),
            n if n.starts_with("blocks.") || n.starts_with("norm.") => format!("encoder.{n}"),
            n if n.starts_with("decoder_blocks.") => {
                format!("decoder.blocks.{}", &n["decoder_blocks.".len()..])
            }
            n if n.starts_with("decoder_embed.") => {
                format!("decoder.embed.{}", &n["decoder_embed.".len()..])
            }
            n if n.starts_with("decoder_norm.") => {
                format!("decoder.norm.{}", &n["decoder_norm.".len()..])
            }
            n if n.starts_with("decoder_pred.") => {
                format!("decoder.pred.{}", &n["decoder_pred.".len()..])
            }
            _ => {
                return Err(Error::UnexpectedTensor {
                    name,
                    shape: t.dims().to_vec(),
                })
            }
        };
        out.insert(new, t);
    }
    if let Some(pos) = pos_embed {
        let cls = out
            .remove("encoder.cls_token")
            .ok_or_else(|| Error::MissingTensor {
                name: "cls_token".into(),
                expected: vec![1, 1, d],
            })?;
        let (cls, pos) = fold_cls_position("pos_embed", cls, &pos)?;
        out.insert("encoder.cls_token".to_string(), cls);
        out.insert(ENCODER_POS_EMBED.to_string(), pos);
    }
    Ok(out)
}

/// Reads an MAE checkpoint (`.pth` or `.safetensors`) into this crate's names.
pub fn load_mae_tensors(
    path: &Path,
    config: &ModelConfig,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let io = |e: String| Error::Io {
        path: path.display().to_string(),
        reason: e,
    };
    let tensors: HashMap<String, Tensor> = if path.extension().is_some_and(|e| e == "safetensors") {
        candle_core::safetensors::load(path, device)?
    } else {
        let mut v = candle_core::pickle::read_all_with_key(path, Some("model"))
            .map_err(|e| io(e.to_string()))?;
        if v.is_empty() {
            v = candle_core::pickle::read_all(path).map_err(|e| io(e.to_string()))?;
        }
        v.into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<Result<_>>()?
    };
    convert_mae_tensors(tensors, config)
}

impl DiffMae {
    /// Imports a full MAE pre-training checkpoint (encoder and decoder) as an MAE of `config`
    /// (which must be [`ModelConfig::into_mae`]-style: joint decoder, mask token).
    pub fn from_mae_checkpoint(
        path: impl AsRef<Path>,
        config: ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let tensors = load_mae_tensors(path.as_ref(), &config, device)?;
        DiffMae::from_tensors(config, tensors, device)
    }
}
