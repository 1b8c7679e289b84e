//! Model configuration (serde), presets, and the paper's (choice) switches.
//!
//! One [`ModelConfig`] describes a whole DiffMAE (or MAE) network; it is stored in every
//! checkpoint's safetensors metadata so a checkpoint loads without knowing it in advance.
//! Items the paper leaves open are fields here, with the default the project chose:
//!
//! | field | default | paper |
//! |---|---|---|
//! | [`DecoderConfig::kind`] | [`DecoderKind::CrossSelf`] | the three decoders compared (§ decoders) |
//! | [`DecoderConfig::cross_source`] | [`CrossSource::TopDown`] | "connected top-down", (choice) |
//! | [`DecoderConfig::time_conditioning`] | on | sinusoidal → MLP, added to decoder tokens (choice) |
//! | [`DecoderConfig::masked_input`] | [`MaskedInput::NoisyPatch`] | DiffMAE; [`MaskedInput::MaskToken`] is MAE |
//! | [`ModelConfig::norm_eps`] | 1e-6 | MAE's LayerNorm eps (Hugging Face uses 1e-12) |
//! | [`ModelConfig::norm_pix_loss`] | true | MAE's per-patch normalised target (choice) |

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which decoder (paper § "Decoders").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderKind {
    /// MAE-style: encoder tokens and masked tokens go through self-attention blocks together.
    Joint,
    /// Masked tokens cross-attend to encoder features; no self-attention among them.
    Cross,
    /// Self-attention among masked tokens, then cross-attention, then MLP, per block.
    #[default]
    CrossSelf,
}

/// Which encoder features the cross-attention blocks attend to (paper: (choice)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrossSource {
    /// Every decoder block attends to the encoder output (last block, final norm).
    Last,
    /// Decoder block `i` attends to encoder block `depth_e - 1 - i` (deepest first), each passed
    /// through the encoder's final norm; needs `depth_d <= depth_e`.
    #[default]
    TopDown,
}

/// What the decoder receives at the masked positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskedInput {
    /// DiffMAE: the noisy masked patches `x_t^m`, linearly embedded.
    #[default]
    NoisyPatch,
    /// MAE: one learned mask token (the decoder input carries no pixels).
    MaskToken,
}

/// GELU formula of the MLPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// Exact (erf) GELU: PyTorch's default, timm/MAE/Hugging Face ViTMAE.
    #[default]
    Gelu,
    /// tanh approximation.
    GeluTanh,
}

impl Activation {
    pub(crate) fn core(self) -> dmae_core::Gelu {
        match self {
            Activation::Gelu => dmae_core::Gelu::Erf,
            Activation::GeluTanh => dmae_core::Gelu::Tanh,
        }
    }
}

/// The ViT encoder (MAE's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncoderConfig {
    /// Token width.
    pub dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads (`dim % heads == 0`).
    pub heads: usize,
    /// MLP hidden width = `mlp_ratio * dim`.
    pub mlp_ratio: f64,
    /// Bias on the qkv projection (MAE: true).
    pub qkv_bias: bool,
    /// Stochastic depth rate of the last block (linearly increasing from 0); used only when a
    /// forward pass is given a drop-path key (fine-tuning).
    pub drop_path: f64,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            dim: 192,
            depth: 12,
            heads: 3,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_path: 0.0,
        }
    }
}

/// The decoder (paper § "Decoders").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecoderConfig {
    /// Joint, cross or cross-self.
    pub kind: DecoderKind,
    /// Token width.
    pub dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width = `mlp_ratio * dim`.
    pub mlp_ratio: f64,
    /// Bias on the q/kv projections.
    pub qkv_bias: bool,
    /// Encoder features the cross-attention blocks read (ignored by `joint`).
    pub cross_source: CrossSource,
    /// Add `MLP(sinusoidal(t))` to the masked tokens.
    pub time_conditioning: bool,
    /// Width of the sinusoidal time embedding fed to the MLP (even).
    pub time_embed_dim: usize,
    /// Noisy patches (DiffMAE) or a learned mask token (MAE) at the masked positions.
    pub masked_input: MaskedInput,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            kind: DecoderKind::CrossSelf,
            dim: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4.0,
            qkv_bias: true,
            cross_source: CrossSource::TopDown,
            time_conditioning: true,
            time_embed_dim: 256,
            masked_input: MaskedInput::NoisyPatch,
        }
    }
}

/// A whole DiffMAE / MAE network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Image height and width in pixels (multiples of `patch_size`).
    pub image_size: [usize; 2],
    /// Square patch side in pixels.
    pub patch_size: usize,
    /// Image channels.
    pub in_channels: usize,
    /// Video clips: frames per clip (1 = images). Inputs are then `(N, C, T, H, W)`.
    pub num_frames: usize,
    /// Video clips: frames per tubelet (`t x p x p` patches; divides `num_frames`).
    pub tubelet: usize,
    /// The encoder.
    pub encoder: EncoderConfig,
    /// The decoder.
    pub decoder: DecoderConfig,
    /// LayerNorm epsilon everywhere (MAE 1e-6; Hugging Face ViTMAE 1e-12).
    pub norm_eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Train on per-patch normalised pixels (MAE's norm_pix_loss); informs the loss, not the net.
    pub norm_pix_loss: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::tiny()
    }
}

fn preset(
    image: usize,
    patch: usize,
    enc: (usize, usize, usize),
    dec: (usize, usize, usize),
) -> ModelConfig {
    ModelConfig {
        image_size: [image, image],
        patch_size: patch,
        in_channels: 3,
        num_frames: 1,
        tubelet: 1,
        encoder: EncoderConfig {
            dim: enc.0,
            depth: enc.1,
            heads: enc.2,
            ..EncoderConfig::default()
        },
        decoder: DecoderConfig {
            dim: dec.0,
            depth: dec.1,
            heads: dec.2,
            ..DecoderConfig::default()
        },
        norm_eps: 1e-6,
        activation: Activation::Gelu,
        norm_pix_loss: true,
    }
}

impl ModelConfig {
    /// ViT-Ti/16 (192x12, 3 heads), decoder 128x4 (4 heads), 224 px (reference script's tiny).
    pub fn tiny() -> Self {
        preset(224, 16, (192, 12, 3), (128, 4, 4))
    }
    /// ViT-S/16 (384x12, 6 heads), decoder 256x4 (8 heads), 224 px.
    pub fn small() -> Self {
        preset(224, 16, (384, 12, 6), (256, 4, 8))
    }
    /// ViT-B/16 (768x12, 12 heads), decoder 512x8 (16 heads), 224 px (MAE's base).
    pub fn base() -> Self {
        preset(224, 16, (768, 12, 12), (512, 8, 16))
    }
    /// ViT-L/16 (1024x24, 16 heads), decoder 512x8 (16 heads), 224 px.
    pub fn large() -> Self {
        preset(224, 16, (1024, 24, 16), (512, 8, 16))
    }
    /// ViT-H/14 (1280x32, 16 heads), decoder 512x8 (16 heads), 224 px.
    pub fn huge() -> Self {
        preset(224, 14, (1280, 32, 16), (512, 8, 16))
    }
    /// 28-px MNIST: patch 4, 1 channel, encoder 192x12 (3 heads), decoder 128x4 (4 heads);
    /// the reference script's tiny widths on MNIST. Outputs are real pixels (no norm_pix).
    pub fn mnist() -> Self {
        let mut c = preset(28, 4, (192, 12, 3), (128, 4, 4));
        c.in_channels = 1;
        c.norm_pix_loss = false;
        c
    }
    /// A small `mnist` for quick runs and smoke tests: encoder 96x4 (3 heads), decoder 64x2
    /// (2 heads); about 10x fewer FLOPs than `mnist`.
    pub fn mnist_small() -> Self {
        let mut c = preset(28, 4, (96, 4, 3), (64, 2, 2));
        c.in_channels = 1;
        c.norm_pix_loss = false;
        c
    }
    /// Moving-MNIST clips (1 channel, 8 frames of 32x32, the `moving-mnist` data SPEC's default):
    /// tubelets 2x4x4 (4 x 8 x 8 = 256 tokens), encoder 128x6 (4 heads), decoder 96x3 (4 heads):
    /// the image recipe shrunk until a CPU trains it in minutes. Real-pixel targets.
    pub fn moving_mnist() -> Self {
        let mut c = preset(32, 4, (128, 6, 4), (96, 3, 4));
        c.in_channels = 1;
        c.num_frames = 8;
        c.tubelet = 2;
        c.norm_pix_loss = false;
        c
    }
    /// Colour images of 32x32 (3 channels, patch 4: 8x8 = 64 tokens) with ViT-T widths:
    /// encoder 192x12 (3 heads), decoder 128x4 (4 heads), the `mnist` network on colour. Sized
    /// so that a CPU shows a falling loss within minutes (CIFAR-sized photos, or any folder
    /// resized to 32 px). Real-pixel targets (no norm_pix), so samples are pictures.
    pub fn tiny_32() -> Self {
        let mut c = preset(32, 4, (192, 12, 3), (128, 4, 4));
        c.norm_pix_loss = false;
        c
    }
    /// `tiny-32` at 64x64 with patch 8: the same 64 tokens and network, 4x the pixels per
    /// patch (patch dim 192), about the cost of `tiny-32` per image.
    pub fn tiny_64() -> Self {
        let mut c = preset(64, 8, (192, 12, 3), (128, 4, 4));
        c.norm_pix_loss = false;
        c
    }
    /// A preset by name: `tiny`, `small`, `base`, `large`, `huge`, `tiny-32`, `tiny-64`, `mnist`,
    /// `mnist-small`, `moving-mnist`.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "tiny" => Self::tiny(),
            "small" => Self::small(),
            "base" => Self::base(),
            "large" => Self::large(),
            "huge" => Self::huge(),
            "tiny-32" => Self::tiny_32(),
            "tiny-64" => Self::tiny_64(),
            "mnist" => Self::mnist(),
            "mnist-small" => Self::mnist_small(),
            "moving-mnist" => Self::moving_mnist(),
            other => {
                return Err(Error::config(
                    "preset",
                    format!(
                        "unknown preset {other:?} (tiny, small, base, large, huge, tiny-32, tiny-64, mnist, \
                         mnist-small, moving-mnist)"
                    ),
                ))
            }
        })
    }
    /// The same network as plain MAE: joint decoder, learned mask token, no time conditioning.
    pub fn into_mae(mut self) -> Self {
        self.decoder.kind = DecoderKind::Joint;
        self.decoder.masked_input = MaskedInput::MaskToken;
        self.decoder.time_conditioning = false;
        self
    }
    /// Patch rows and columns.
    pub fn grid(&self) -> (usize, usize) {
        (
            self.image_size[0] / self.patch_size.max(1),
            self.image_size[1] / self.patch_size.max(1),
        )
    }
    /// Temporal positions `T / t` (1 for images).
    pub fn time_steps(&self) -> usize {
        self.num_frames / self.tubelet.max(1)
    }
    /// Whether inputs are video clips (`num_frames > 1`).
    pub fn is_video(&self) -> bool {
        self.num_frames > 1
    }
    /// Patches (tubelets) per sample, `L = T' x rows x cols`, time-major.
    pub fn num_patches(&self) -> usize {
        let (r, c) = self.grid();
        self.time_steps() * r * c
    }
    /// Values per patch, `t * p * p * C` (channel fastest, as dmae-core's patchify).
    pub fn patch_dim(&self) -> usize {
        self.tubelet * self.patch_size * self.patch_size * self.in_channels
    }
    /// Patchifies images `(N, C, H, W)` or, for video configs, clips `(N, C, T, H, W)`.
    pub fn patchify(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        Ok(if self.is_video() {
            dmae_core::patchify_video(x, self.tubelet, self.patch_size)?
        } else {
            dmae_core::patchify(x, self.patch_size)?
        })
    }
    /// The input shape after the batch dimension: `[C, H, W]` or `[C, T, H, W]`.
    pub fn input_dims(&self) -> Vec<usize> {
        let [h, w] = self.image_size;
        if self.is_video() {
            vec![self.in_channels, self.num_frames, h, w]
        } else {
            vec![self.in_channels, h, w]
        }
    }
    /// Checks every constraint the network relies on.
    pub fn validate(&self) -> Result<()> {
        let p = self.patch_size;
        if p == 0 || self.in_channels == 0 {
            return Err(Error::config(
                "patch_size",
                "patch size and channels must be positive",
            ));
        }
        for (i, &s) in self.image_size.iter().enumerate() {
            if s == 0 || s % p != 0 {
                return Err(Error::config(
                    "image_size",
                    format!("side {i} = {s} is not a positive multiple of patch size {p}"),
                ));
            }
        }
        for (field, dim, heads, depth, ratio) in [
            (
                "encoder",
                self.encoder.dim,
                self.encoder.heads,
                self.encoder.depth,
                self.encoder.mlp_ratio,
            ),
            (
                "decoder",
                self.decoder.dim,
                self.decoder.heads,
                self.decoder.depth,
                self.decoder.mlp_ratio,
            ),
        ] {
            if dim == 0 || heads == 0 || depth == 0 || dim % heads != 0 {
                return Err(Error::config(
                    field,
                    format!("dim {dim}, heads {heads}, depth {depth}: need positive values and dim % heads == 0"),
                ));
            }
            if !(ratio.is_finite() && ratio > 0.0) || (ratio * dim as f64).round() < 1.0 {
                return Err(Error::config(
                    field,
                    format!("mlp_ratio {ratio} must be positive"),
                ));
            }
        }
        if self.num_frames == 0 || self.tubelet == 0 || self.num_frames % self.tubelet != 0 {
            return Err(Error::config(
                "tubelet",
                format!(
                    "{} frames are not a positive multiple of tubelet {}",
                    self.num_frames, self.tubelet
                ),
            ));
        }
        // Every `dim` is split into sin/cos halves of sin/cos quarters by the 2-D embedding.
        if self.encoder.dim % 4 != 0 || self.decoder.dim % 4 != 0 {
            return Err(Error::config(
                "dim",
                "encoder and decoder widths must be multiples of 4 (2-D sin-cos)",
            ));
        }
        if self.decoder.time_embed_dim == 0 || self.decoder.time_embed_dim % 2 != 0 {
            return Err(Error::config(
                "decoder.time_embed_dim",
                "must be positive and even",
            ));
        }
        if !(0.0..1.0).contains(&self.encoder.drop_path) {
            return Err(Error::config(
                "encoder.drop_path",
                format!("{} not in [0, 1)", self.encoder.drop_path),
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::config(
                "norm_eps",
                format!("{} must be positive", self.norm_eps),
            ));
        }
        if self.decoder.kind != DecoderKind::Joint
            && self.decoder.cross_source == CrossSource::TopDown
            && self.decoder.depth > self.encoder.depth
        {
            return Err(Error::config(
                "decoder.depth",
                format!(
                    "top-down cross-attention needs decoder depth {} <= encoder depth {}",
                    self.decoder.depth, self.encoder.depth
                ),
            ));
        }
        Ok(())
    }
    /// Serialises to JSON (as stored in checkpoints).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
    /// Parses and validates JSON; missing fields take their defaults.
    pub fn from_json(json: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(json)?;
        c.validate()?;
        Ok(c)
    }
}

pub(crate) fn mlp_hidden(dim: usize, ratio: f64) -> usize {
    (dim as f64 * ratio).round() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip() {
        for name in [
            "tiny",
            "small",
            "base",
            "large",
            "huge",
            "tiny-32",
            "tiny-64",
            "mnist",
            "mnist-small",
            "moving-mnist",
        ] {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(ModelConfig::from_json(&c.to_json().unwrap()).unwrap(), c);
        }
        let mut v = ModelConfig::tiny();
        v.num_frames = 16;
        v.tubelet = 2;
        v.validate().unwrap();
        assert_eq!((v.num_patches(), v.patch_dim()), (8 * 196, 2 * 16 * 16 * 3));
        v.tubelet = 3;
        assert!(v.validate().is_err());
        let m = ModelConfig::mnist();
        assert_eq!((m.num_patches(), m.patch_dim()), (49, 16));
        let mm = ModelConfig::moving_mnist();
        assert_eq!((mm.num_patches(), mm.patch_dim()), (4 * 64, 2 * 16));
        assert_eq!(mm.input_dims(), [1, 8, 32, 32]);
        // The colour presets: 64 tokens each, 3 channels, the ViT-T encoder width.
        let t32 = ModelConfig::preset("tiny-32").unwrap();
        assert_eq!((t32.num_patches(), t32.patch_dim()), (64, 4 * 4 * 3));
        assert_eq!(t32.input_dims(), [3, 32, 32]);
        let t64 = ModelConfig::preset("tiny-64").unwrap();
        assert_eq!((t64.num_patches(), t64.patch_dim()), (64, 8 * 8 * 3));
        assert_eq!(t64.input_dims(), [3, 64, 64]);
        assert_eq!((t32.encoder.dim, t32.encoder.heads), (192, 3));
        let e = ModelConfig::preset("giant").unwrap_err().to_string();
        assert!(e.contains("tiny-32") && e.contains("tiny-64"), "{e}");
    }

    #[test]
    fn json_uses_kebab_case_and_defaults() {
        let c = ModelConfig::from_json(
            r#"{"decoder": {"kind": "joint", "masked_input": "mask-token"}}"#,
        )
        .unwrap();
        assert_eq!(c.decoder.kind, DecoderKind::Joint);
        assert_eq!(c.decoder.dim, 128);
        let mut bad = ModelConfig::tiny();
        bad.decoder.depth = 13;
        assert!(matches!(
            bad.validate(),
            Err(Error::Config {
                field: "decoder.depth",
                ..
            })
        ));
    }
}
