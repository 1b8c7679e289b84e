//! Hugging Face ViTMAE import (`facebook/vit-mae-*`, transformers' `ViTMAEForPreTraining` and
//! `ViTMAEModel`): a local directory with `config.json` + `model.safetensors`, or (feature
//! `hf-hub`, on by default) a Hub repository through the hf-hub cache.
//!
//! The import is a working MAE (joint decoder, learned mask token, no time conditioning, LayerNorm
//! eps and activation from `config.json`) and, through [`DiffMae::load_encoder_from`], a DiffMAE
//! encoder initialisation. Both decoder namings are read: `decoder.decoder_layers.N.*` (older
//! transformers) and `decoder.decoder_encoder.layer.N.*` (transformers >= 5).
//!
//! The position embeddings stored in the file (`embeddings.position_embeddings`,
//! `decoder.decoder_pos_embed`) are used as they are, as transformers does: released
//! `facebook/vit-mae-*` files hold MAE's 2-D sin-cos, but a model that transformers created,
//! fine-tuned or interpolated holds others. They stay fixed buffers ([`crate::checkpoint`] says how
//! one that is not the sin-cos is saved); the stored cls position is folded into the cls token,
//! since the encoder adds nothing there.
//!
//! [`DiffMae::mae_forward`] runs the MAE forward with an explicit masking `noise` like
//! transformers' `noise=` argument, so anyone can check parity.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use dmae_diffusion::MaskIndices;
use serde::Deserialize;

use crate::checkpoint::{assign, take_pos_embed, DECODER_POS_EMBED, ENCODER_POS_EMBED};
use crate::config::{Activation, DecoderKind, MaskedInput, ModelConfig};
use crate::error::{check_shape, Error, Result};
use crate::model::DiffMae;

/// An image side in `config.json`: one number or `[height, width]`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HfSize {
    /// Square.
    One(usize),
    /// `[height, width]`.
    Two([usize; 2]),
}

impl HfSize {
    fn pair(self) -> [usize; 2] {
        match self {
            HfSize::One(s) => [s, s],
            HfSize::Two(hw) => hw,
        }
    }
}

fn default_eps() -> f64 {
    1e-12
}
fn yes() -> bool {
    true
}
fn gelu() -> String {
    "gelu".into()
}
fn ratio() -> f64 {
    0.75
}

/// The fields of transformers' `ViTMAEConfig` the import reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HfVitMaeConfig {
    /// Encoder width.
    pub hidden_size: usize,
    /// Encoder blocks.
    pub num_hidden_layers: usize,
    /// Encoder heads.
    pub num_attention_heads: usize,
    /// Encoder MLP width.
    pub intermediate_size: usize,
    /// Decoder width.
    pub decoder_hidden_size: usize,
    /// Decoder blocks.
    pub decoder_num_hidden_layers: usize,
    /// Decoder heads.
    pub decoder_num_attention_heads: usize,
    /// Decoder MLP width.
    pub decoder_intermediate_size: usize,
    /// Image side(s).
    pub image_size: HfSize,
    /// Patch side.
    pub patch_size: usize,
    /// Channels.
    pub num_channels: usize,
    /// LayerNorm epsilon (transformers' default 1e-12).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Bias on q, k, v.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// MAE's normalised-pixel target.
    #[serde(default)]
    pub norm_pix_loss: bool,
    /// Mask ratio used in pre-training.
    #[serde(default = "ratio")]
    pub mask_ratio: f64,
    /// Activation name (`gelu`, or a tanh form).
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

impl HfVitMaeConfig {
    /// Parses `config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        Ok(serde_json::from_str(json)?)
    }

    /// The equivalent [`ModelConfig`]: MAE (joint decoder, mask token, no time conditioning).
    pub fn to_model_config(&self) -> Result<ModelConfig> {
        let activation = match self.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => {
                return Err(Error::config(
                    "hidden_act",
                    format!("unsupported activation {other:?}"),
                ))
            }
        };
        let mut c = ModelConfig::tiny().into_mae();
        c.image_size = self.image_size.pair();
        c.patch_size = self.patch_size;
        c.in_channels = self.num_channels;
        c.encoder.dim = self.hidden_size;
        c.encoder.depth = self.num_hidden_layers;
        c.encoder.heads = self.num_attention_heads;
        c.encoder.mlp_ratio = self.intermediate_size as f64 / self.hidden_size.max(1) as f64;
        c.encoder.qkv_bias = self.qkv_bias;
        c.decoder.dim = self.decoder_hidden_size;
        c.decoder.depth = self.decoder_num_hidden_layers;
        c.decoder.heads = self.decoder_num_attention_heads;
        c.decoder.mlp_ratio =
            self.decoder_intermediate_size as f64 / self.decoder_hidden_size.max(1) as f64;
        c.decoder.qkv_bias = self.qkv_bias;
        c.norm_eps = self.layer_norm_eps;
        c.activation = activation;
        c.norm_pix_loss = self.norm_pix_loss;
        c.validate()?;
        Ok(c)
    }
}

/// Output of [`DiffMae::mae_forward`], as transformers' `ViTMAEForPreTraining`.
#[derive(Clone, Debug)]
pub struct MaeOutput {
    /// Encoder output `(N, 1 + Lv, De)` (cls first, visible tokens in shuffled order).
    pub last_hidden_state: Tensor,
    /// `(N, L)` f32, 1 = masked.
    pub mask: Tensor,
    /// `(N, L)` u32.
    pub ids_restore: Tensor,
    /// Decoder predictions for every patch, `(N, L, p·p·C)`.
    pub logits: Tensor,
}

fn take(t: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    t.remove(name).ok_or_else(|| Error::MissingTensor {
        name: name.to_string(),
        expected: vec![],
    })
}

/// Renames a transformers ViTMAE state dict to this crate's names (see [`crate::checkpoint`]):
/// q/k/v are concatenated into `qkv`, the patch-embedding convolution becomes a linear map on
/// channel-fastest patches. Works for `ViTMAEForPreTraining` (`vit.` prefix, decoder) and
/// `ViTMAEModel` (no prefix, no decoder) files. Unknown tensors are an error. The position
/// embeddings become `encoder.pos_embed` `(1 + L, De)` (its cls row added to
/// `encoder.cls_token` and zeroed) and `decoder.pos_embed` `(1 + L, Dd)`.
pub fn convert_vitmae_tensors(
    mut src: HashMap<String, Tensor>,
    config: &HfVitMaeConfig,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let vit = if src.contains_key("vit.embeddings.cls_token") {
        "vit."
    } else {
        ""
    };
    let p = config.patch_size;
    let c = config.num_channels;
    let d = config.hidden_size;
    let cls = take(&mut src, &format!("{vit}embeddings.cls_token"))?;
    let pos_name = format!("{vit}embeddings.position_embeddings");
    let cls = match src.remove(&pos_name) {
        Some(pos) => {
            let (cls, pos) = fold_cls_position(&pos_name, cls, &pos)?;
            out.insert(ENCODER_POS_EMBED.into(), pos);
            cls
        }
        None => cls,
    };
    out.insert("encoder.cls_token".into(), cls);
    if let Some(pos) = src.remove("decoder.decoder_pos_embed") {
        let l = pos.dims().get(1).copied().unwrap_or(0);
        check_shape(
            "decoder.decoder_pos_embed",
            &pos,
            &[1, l, config.decoder_hidden_size],
        )?;
        out.insert(DECODER_POS_EMBED.into(), pos.squeeze(0)?.contiguous()?);
    }
    let w = take(
        &mut src,
        &format!("{vit}embeddings.patch_embeddings.projection.weight"),
    )?;
    check_shape(
        &format!("{vit}embeddings.patch_embeddings.projection.weight"),
        &w,
        &[d, c, p, p],
    )?;
    out.insert(
        "encoder.patch_embed.weight".into(),
        w.permute((0, 2, 3, 1))?.reshape((d, p * p * c))?,
    );
    out.insert(
        "encoder.patch_embed.bias".into(),
        take(
            &mut src,
            &format!("{vit}embeddings.patch_embeddings.projection.bias"),
        )?,
    );
    for i in 0..config.num_hidden_layers {
        layer(
            &mut src,
            &mut out,
            &format!("{vit}encoder.layer.{i}"),
            &format!("encoder.blocks.{i}"),
            config.qkv_bias,
        )?;
    }
    for s in ["weight", "bias"] {
        out.insert(
            format!("encoder.norm.{s}"),
            take(&mut src, &format!("{vit}layernorm.{s}"))?,
        );
    }
    if src.contains_key("decoder.mask_token") {
        out.insert(
            "decoder.mask_token".into(),
            take(&mut src, "decoder.mask_token")?,
        );
        let prefix = if src
            .keys()
            .any(|k| k.starts_with("decoder.decoder_encoder.layer."))
        {
            "decoder.decoder_encoder.layer"
        } else {
            "decoder.decoder_layers"
        };
        for i in 0..config.decoder_num_hidden_layers {
            layer(
                &mut src,
                &mut out,
                &format!("{prefix}.{i}"),
                &format!("decoder.blocks.{i}"),
                config.qkv_bias,
            )?;
        }
        for (from, to) in [
            ("decoder_embed", "embed"),
            ("decoder_norm", "norm"),
            ("decoder_pred", "pred"),
        ] {
            for s in ["weight", "bias"] {
                out.insert(
                    format!("decoder.{to}.{s}"),
                    take(&mut src, &format!("decoder.{from}.{s}"))?,
                );
            }
        }
    }
    if let Some((name, t)) = src.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(Error::UnexpectedTensor {
            name,
            shape: t.dims().to_vec(),
        });
    }
    Ok(out)
}

/// A stored encoder position embedding `pos (1, 1 + L, D)` as this crate keeps it: the cls row
/// `pos[0]` added to `cls (1, 1, D)` (ViTMAE and timm add it to the cls token; our encoder adds
/// nothing there), and the embedding `(1 + L, D)` with row 0 zero. `name` labels shape errors.
pub(crate) fn fold_cls_position(name: &str, cls: Tensor, pos: &Tensor) -> Result<(Tensor, Tensor)> {
    let d = cls.dims().last().copied().unwrap_or(0);
    check_shape("encoder.cls_token", &cls, &[1, 1, d])?;
    let l = pos.dims().get(1).copied().unwrap_or(0).max(1);
    check_shape(name, pos, &[1, l, d])?;
    let pos = pos.squeeze(0)?;
    let cls = (cls + pos.narrow(0, 0, 1)?.unsqueeze(0)?)?;
    let zero = Tensor::zeros((1, d), pos.dtype(), pos.device())?;
    let pos = Tensor::cat(&[&zero, &pos.narrow(0, 1, l - 1)?], 0)?;
    Ok((cls, pos))
}

fn layer(
    src: &mut HashMap<String, Tensor>,
    out: &mut HashMap<String, Tensor>,
    from: &str,
    to: &str,
    qkv_bias: bool,
) -> Result<()> {
    let mut suffixes = vec!["weight"];
    if qkv_bias {
        suffixes.push("bias");
    }
    for s in suffixes {
        let q = take(src, &format!("{from}.attention.attention.query.{s}"))?;
        let k = take(src, &format!("{from}.attention.attention.key.{s}"))?;
        let v = take(src, &format!("{from}.attention.attention.value.{s}"))?;
        out.insert(format!("{to}.attn.qkv.{s}"), Tensor::cat(&[&q, &k, &v], 0)?);
    }
    for (a, b) in [
        ("attention.output.dense", "attn.proj"),
        ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"),
        ("intermediate.dense", "mlp.fc1"),
        ("output.dense", "mlp.fc2"),
    ] {
        for s in ["weight", "bias"] {
            out.insert(
                format!("{to}.{b}.{s}"),
                take(src, &format!("{from}.{a}.{s}"))?,
            );
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads `config.json` and a safetensors weight file of a transformers ViTMAE model.
pub fn load_vitmae_files(
    config_json: &Path,
    weights: &Path,
    device: &Device,
) -> Result<(HfVitMaeConfig, HashMap<String, Tensor>)> {
    let text = String::from_utf8(read(config_json)?).map_err(|e| Error::Io {
        path: config_json.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = HfVitMaeConfig::from_json(&text)?;
    let tensors = candle_core::safetensors::load_buffer(&read(weights)?, device)?;
    let tensors = convert_vitmae_tensors(tensors, &config)?;
    Ok((config, tensors))
}

impl DiffMae {
    /// Imports a `ViTMAEForPreTraining` checkpoint directory (`config.json`,
    /// `model.safetensors`) as a working MAE.
    pub fn from_hf_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let (hf, tensors) = load_vitmae_files(
            &dir.join("config.json"),
            &dir.join("model.safetensors"),
            device,
        )?;
        DiffMae::from_tensors(hf.to_model_config()?, tensors, device)
    }

    /// Imports `repo_id` (e.g. `facebook/vit-mae-base`) through the hf-hub cache
    /// (`HF_HOME`). With `HF_HUB_OFFLINE=1` only the cache is read and a missing file is an
    /// error, never a network wait.
    #[cfg(feature = "hf-hub")]
    pub fn from_hf_hub(repo_id: &str, device: &Device) -> Result<Self> {
        let dir = hub_files(repo_id)?;
        let (hf, tensors) = load_vitmae_files(&dir.0, &dir.1, device)?;
        DiffMae::from_tensors(hf.to_model_config()?, tensors, device)
    }

    /// Sets this model's encoder (DiffMAE init) from imported tensors (e.g. the second value of
    /// [`load_vitmae_files`]); every `encoder.*` parameter must be present with its shape;
    /// other tensors (an MAE decoder) are ignored. A stored `encoder.pos_embed` replaces the
    /// encoder's fixed one; one of another image size is accepted only if it is MAE's sin-cos
    /// (then recomputed for this model's grid, as MAE does), otherwise it is an error naming it.
    pub fn load_encoder_from(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let enc: Vec<_> = self
            .named_params()
            .iter()
            .filter(|p| p.name.starts_with("encoder."))
            .cloned()
            .collect();
        let mut map: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| k.starts_with("encoder."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let other_size = map
            .get(ENCODER_POS_EMBED)
            .is_some_and(|t| t.dims() != self.encoder.pos_embed.dims());
        if other_size && is_square_sincos(&map[ENCODER_POS_EMBED])? {
            map.remove(ENCODER_POS_EMBED);
        }
        if let Some(t) = take_pos_embed(&mut map, ENCODER_POS_EMBED, &self.encoder.pos_embed)? {
            self.encoder.pos_embed = t;
        }
        assign(&enc, &mut map)
    }

    /// The MAE forward with explicit masking noise `(N, L)` (transformers' `noise=`):
    /// `pixel_values (N, C, H, W)`, `mask_ratio` as in the HF config. Needs the joint decoder
    /// with mask-token input (an imported or [`ModelConfig::into_mae`] model).
    pub fn mae_forward(
        &self,
        pixel_values: &Tensor,
        noise: &Tensor,
        mask_ratio: f64,
    ) -> Result<MaeOutput> {
        let c = self.config();
        if c.decoder.kind != DecoderKind::Joint
            || c.decoder.masked_input != MaskedInput::MaskToken
            || c.is_video()
        {
            return Err(Error::arg(
                "model",
                "mae_forward needs the joint decoder with a mask token",
            ));
        }
        let n = pixel_values.dims().first().copied().unwrap_or(0);
        check_shape(
            "pixel_values",
            pixel_values,
            &[n, c.in_channels, c.image_size[0], c.image_size[1]],
        )?;
        check_shape("noise", noise, &[n, c.num_patches()])?;
        let patches = dmae_core::patchify(pixel_values, c.patch_size)?;
        let mask = MaskIndices::from_noise(noise, mask_ratio)
            .map_err(|e| Error::arg("mask_ratio", e.to_string()))?;
        let (x0_v, _) = mask.split(&patches)?;
        let ctx = self.encode(&x0_v, &mask)?;
        let t = vec![0; n];
        let logits = self.decoder.forward_joint(&ctx, &x0_v, &mask, &t)?;
        Ok(MaeOutput {
            last_hidden_state: ctx.encoder.last,
            mask: mask.mask_tensor(pixel_values.dtype())?,
            ids_restore: mask.ids_restore().clone(),
            logits,
        })
    }
}

/// Whether `t (1 + g·g, D)` is MAE's 2-D sin-cos of a `g x g` grid with a zero cls row (to float
/// rounding: files hold it as computed by numpy).
fn is_square_sincos(t: &Tensor) -> Result<bool> {
    let Ok((l, d)) = t.dims2() else {
        return Ok(false);
    };
    let g = (l.saturating_sub(1) as f64).sqrt().round() as usize;
    if l == 0 || g * g + 1 != l || d % 4 != 0 {
        return Ok(false);
    }
    let want = crate::embed::sincos_2d(g, g, d, true);
    let got = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5))
}

/// `(config.json, model.safetensors)` paths of a Hub repository, from the cache or downloaded.
#[cfg(feature = "hf-hub")]
pub fn hub_files(repo_id: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    Ok((
        hub_file(repo_id, "config.json")?,
        hub_file(repo_id, "model.safetensors")?,
    ))
}

/// The local path of `file` in Hub repository `repo_id`, from the hf-hub cache (`HF_HOME`) or
/// downloaded into it. With `HF_HUB_OFFLINE=1` only the cache is read and a missing file is an
/// error, never a network wait.
#[cfg(feature = "hf-hub")]
pub fn hub_file(repo_id: &str, file: &str) -> Result<std::path::PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"));
    let err = |reason: String| Error::Io {
        path: format!("hf://{repo_id}"),
        reason,
    };
    if offline {
        return hf_hub::Cache::from_env()
            .model(repo_id.to_string())
            .get(file)
            .ok_or_else(|| {
                err(format!(
                    "{file} is not in the hf-hub cache and HF_HUB_OFFLINE is set"
                ))
            });
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| err(e.to_string()))?;
    api.model(repo_id.to_string())
        .get(file)
        .map_err(|e| err(format!("{file}: {e}")))
}
