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

use dmae_diffusion::{
    BetaSchedule, LossWeighting, NoiseSchedule, Prediction, RhoTarget, ScheduleConfig,
};
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

/// The base noise schedule (paper § "Noise schedule and sampling": linear and cosine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// DDPM's linear betas from 1e-4 to 0.02 (Ho et al. 2020).
    #[default]
    Linear,
    /// Nichol & Dhariwal's cosine ᾱ (s = 0.008, β clipped at 0.999).
    Cosine,
}

/// How pixels in [0, 1] enter the diffusion process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataRange {
    /// As they are, [0, 1] (the project's first recipe; what a checkpoint that does not state
    /// its range was trained with).
    Unit,
    /// `2x − 1`, [−1, 1]: zero-mean data against unit-variance noise, as DDPM codebases do.
    /// The default: on the bundled digits it lowers the x0 loss and removes the speckle of
    /// [0, 1] samples (issue 17, docs/results.md).
    #[default]
    Symmetric,
}

impl DataRange {
    /// `(scale, shift)` with `diffusion value = scale · pixel + shift`.
    pub fn affine(self) -> (f64, f64) {
        match self {
            DataRange::Unit => (1.0, 0.0),
            DataRange::Symmetric => (2.0, -1.0),
        }
    }

    /// The interval pixels in [0, 1] map to (what samplers clamp `x̂_0` to).
    pub fn bounds(self) -> (f64, f64) {
        let (a, b) = self.affine();
        (b, a + b)
    }
}

/// How training weighs the losses of different timesteps (see
/// [`dmae_diffusion::LossWeighting`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// Every timestep alike (the paper's DiffMAE loss).
    #[default]
    Uniform,
    /// Min-SNR-γ (Hang et al. 2023) with γ = [`DiffusionConfig::min_snr_gamma`].
    MinSnr,
}

/// What pre-training regresses at the masked patches (paper: DiffMAE "with CLIP features as an
/// additional target").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The pixels, diffused (DiffMAE).
    #[default]
    #[serde(rename = "pixels")]
    Pixels,
    /// A frozen CLIP tower's patch features only (a second decoder head); the pixel head is not
    /// trained, so such a model does not inpaint.
    #[serde(rename = "clip")]
    Clip,
    /// Both: the diffused pixels and, weighted by [`ClipTarget::weight`], the CLIP features.
    #[serde(rename = "pixels+clip")]
    PixelsClip,
}

/// The CLIP features a model regresses besides (or instead of) the pixels: which tower, which
/// of its features, how wide, how much they weigh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipTarget {
    /// The tower: a local directory or a Hugging Face Hub repository id (informative once
    /// trained: sampling and fine-tuning do not need the tower).
    pub model: String,
    /// Width of its features (the second head's output size).
    pub dim: usize,
    /// Which layer and normalisation ([`crate::clip::ClipFeatureConfig`]).
    #[serde(default)]
    pub features: crate::clip::ClipFeatureConfig,
    /// Weight of the feature loss against the pixel loss.
    #[serde(default = "unit_weight")]
    pub weight: f64,
}

fn unit_weight() -> f64 {
    1.0
}

/// The diffusion settings a model is trained and sampled with; stored with the model (in
/// every checkpoint) so a sampler always uses the schedule the model learnt. A setting a
/// checkpoint does not state (it was written before the setting existed) loads as what such
/// models were trained with ([`DiffusionConfig::unstated`]), not as today's default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default = "DiffusionConfig::unstated", deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Base schedule.
    pub schedule: ScheduleKind,
    /// Number of diffusion steps `T`.
    pub timesteps: usize,
    /// The paper's noise exponent ρ (1 leaves the base schedule unchanged).
    pub rho: f64,
    /// What ρ raises: `alpha-bar` (`ᾱ_t ← ᾱ_t^ρ`, ρ > 1 adds noise) or `betas` (`β_t ← β_t^ρ`).
    pub rho_target: RhoTarget,
    /// What the decoder predicts (x0, eps or v); the loss compares it with the same quantity.
    pub prediction: Prediction,
    /// How pixels are scaled before noise is added.
    pub data_range: DataRange,
    /// How training weighs the timesteps.
    pub loss_weighting: Weighting,
    /// γ of min-SNR weighting.
    pub min_snr_gamma: f64,
    /// What the decoder regresses: pixels, CLIP features, or both.
    pub target: Target,
    /// The CLIP features, for the `clip` and `pixels+clip` targets.
    pub clip: Option<ClipTarget>,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            schedule: ScheduleKind::Linear,
            timesteps: 1000,
            rho: 1.0,
            rho_target: RhoTarget::AlphaBar,
            prediction: Prediction::X0,
            data_range: DataRange::default(),
            loss_weighting: Weighting::Uniform,
            min_snr_gamma: 5.0,
            target: Target::Pixels,
            clip: None,
        }
    }
}

impl DiffusionConfig {
    /// What a checkpoint meant by a setting it does not state: the settings of the models
    /// trained before the setting existed (linear, `T = 1000`, ρ = 1 on ᾱ, x0 prediction,
    /// [0, 1] pixels, uniform weighting).
    pub fn unstated() -> Self {
        Self {
            data_range: DataRange::Unit,
            ..Self::default()
        }
    }

    /// The [`ScheduleConfig`] of these settings.
    pub fn schedule_config(&self) -> ScheduleConfig {
        ScheduleConfig {
            kind: match self.schedule {
                ScheduleKind::Linear => BetaSchedule::linear(),
                ScheduleKind::Cosine => BetaSchedule::cosine(),
            },
            num_timesteps: self.timesteps,
            rho: self.rho,
            rho_target: self.rho_target,
        }
    }

    /// The per-timestep loss weighting of training.
    pub fn loss_weighting(&self) -> LossWeighting {
        match self.loss_weighting {
            Weighting::Uniform => LossWeighting::Uniform,
            Weighting::MinSnr => LossWeighting::MinSnr {
                gamma: self.min_snr_gamma,
            },
        }
    }

    /// The noise schedule these settings describe.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.schedule_config())
            .map_err(|e| Error::config("diffusion", e.to_string()))
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
    /// The diffusion process (schedule, prediction, pixel scaling; unused by MAE models).
    #[serde(default = "DiffusionConfig::unstated")]
    pub diffusion: DiffusionConfig,
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
        diffusion: DiffusionConfig::default(),
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
    /// A small `mnist`: encoder 96x4 (3 heads) under `mnist`'s decoder 128x4 (4 heads), about
    /// twice `mnist`'s training img/s on a CPU. The decoder keeps its width because DiffMAE's
    /// samples need it: with a 64x2 decoder they are speckle and a dot lattice (issue 17,
    /// docs/results.md, the mnist-evidence levers).
    pub fn mnist_small() -> Self {
        let mut c = preset(28, 4, (96, 4, 3), (128, 4, 4));
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
    /// Whether the decoder denoises noisy patches (DiffMAE) rather than reading a mask token
    /// (MAE, one decoder call, no diffusion).
    pub fn is_diffusion(&self) -> bool {
        self.decoder.masked_input == MaskedInput::NoisyPatch
    }
    /// The scale of the pixels the decoder regresses: the diffusion's data range for DiffMAE
    /// models; MAE models (never diffused) regress pixels in [0, 1] whatever
    /// `diffusion.data_range` says.
    pub fn pixel_range(&self) -> DataRange {
        if self.is_diffusion() {
            self.diffusion.data_range
        } else {
            DataRange::Unit
        }
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
    /// Patches `(N, L, P)` back to images `(N, C, H, W)` or clips `(N, C, T, H, W)` (the
    /// inverse of [`ModelConfig::patchify`]).
    pub fn unpatchify(&self, patches: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        let [h, w] = self.image_size;
        let c = self.in_channels;
        Ok(if self.is_video() {
            dmae_core::unpatchify_video(
                patches,
                self.tubelet,
                self.patch_size,
                (c, self.num_frames, h, w),
            )?
        } else {
            dmae_core::unpatchify(patches, self.patch_size, (c, h, w))?
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
    /// Largest network [`ModelConfig::validate`] accepts, in parameters: 10 billion, 40 GB of f32
    /// weights (160 GB with gradients and AdamW moments); ViT-H/14 with its decoder is 0.66 billion.
    /// A bound on what can be allocated at all, so that a mistyped `dim` or `depth` (in a config
    /// file or a checkpoint's metadata) is an error naming the field instead of an abort or a
    /// machine swapping.
    pub const MAX_PARAMS: u64 = 10_000_000_000;

    /// Largest activation memory of one sample [`ModelConfig::validate`] accepts, in bytes
    /// (64 GiB; see [`ModelConfig::activation_bytes_per_sample`]). ViT-H/14 at 224 px needs about
    /// 0.7 GB; `image_size = [100000, 100000]` (39 million tokens) would need terabytes.
    pub const MAX_ACTIVATION_BYTES: u64 = 64 << 30;

    /// Number of parameters of the network this config describes (exactly
    /// [`crate::DiffMae::num_params`]), computed without allocating; saturates at `u64::MAX`.
    pub fn param_count(&self) -> u64 {
        let parts = self.param_parts();
        u64::try_from(parts.iter().map(|(_, n)| n).sum::<u128>()).unwrap_or(u64::MAX)
    }

    /// Parameters of the encoder alone (patch embedding, cls token, blocks, final norm): what a
    /// [`crate::Classifier`] holds besides its head. Saturates at `u64::MAX`.
    pub fn encoder_param_count(&self) -> u64 {
        let de = self.encoder.dim as u128;
        let p = self.tubelet as u128
            * self.patch_size as u128
            * self.patch_size as u128
            * self.in_channels as u128;
        let patch_embed = p.saturating_mul(de).saturating_add(de);
        u64::try_from(patch_embed.saturating_add(self.param_parts()[1].1)).unwrap_or(u64::MAX)
    }

    /// Parameters per part, named after the config field that sizes it: `patch_size` (the patch
    /// embeddings and the pixel prediction, `p·p·C` wide), `encoder`, `decoder`.
    fn param_parts(&self) -> [(&'static str, u128); 3] {
        let lin = |i: u128, o: u128, bias: bool| i * o + if bias { o } else { 0 };
        let block = |dim: u128,
                     hidden: u128,
                     qkv_bias: bool,
                     self_attn: bool,
                     ctx: Option<u128>| {
            let attn = if self_attn {
                2 * dim + lin(dim, 3 * dim, qkv_bias) + lin(dim, dim, true)
            } else {
                0
            };
            let cross = ctx.map_or(0, |c| {
                2 * dim + lin(dim, dim, qkv_bias) + lin(c, 2 * dim, qkv_bias) + lin(dim, dim, true)
            });
            attn + cross + 2 * dim + lin(dim, hidden, true) + lin(hidden, dim, true)
        };
        let (e, d) = (&self.encoder, &self.decoder);
        let (de, dd) = (e.dim as u128, d.dim as u128);
        let p = self.tubelet as u128
            * self.patch_size as u128
            * self.patch_size as u128
            * self.in_channels as u128;
        let mut patch = lin(p, de, true) + lin(dd, p, true);
        let mut decoder = 2 * dd;
        match d.masked_input {
            MaskedInput::NoisyPatch => patch += lin(p, dd, true),
            MaskedInput::MaskToken => decoder += dd,
        }
        if d.kind == DecoderKind::Joint {
            decoder += lin(de, dd, true);
        }
        if d.time_conditioning {
            decoder += lin(d.time_embed_dim as u128, dd, true) + lin(dd, dd, true);
        }
        if let (Some(c), Target::Clip | Target::PixelsClip) =
            (&self.diffusion.clip, self.diffusion.target)
        {
            decoder += lin(dd, c.dim as u128, true);
        }
        let ctx = (d.kind != DecoderKind::Joint).then_some(de);
        let dec_block = block(
            dd,
            mlp_hidden(d.dim, d.mlp_ratio) as u128,
            d.qkv_bias,
            d.kind != DecoderKind::Cross,
            ctx,
        );
        decoder = decoder.saturating_add((d.depth as u128).saturating_mul(dec_block));
        let enc_block = block(
            de,
            mlp_hidden(e.dim, e.mlp_ratio) as u128,
            e.qkv_bias,
            true,
            None,
        );
        let encoder = (de + 2 * de).saturating_add((e.depth as u128).saturating_mul(enc_block));
        [
            ("patch_size", patch),
            ("encoder", encoder),
            ("decoder", decoder),
        ]
    }

    /// Estimated activation memory of one sample in a training step, in bytes: every block keeps
    /// about `9·dim + 2·mlp_hidden` f32 values per token for the backward pass (its input, the
    /// norms, qkv, the attention and projection outputs, the MLP's hidden layer before and after
    /// GELU); the encoder over `1 + L` tokens (all patches visible when fine-tuning), the decoder
    /// over `1 + L`. Attention itself keeps no `L x L` matrix (dmae-core's fused attention).
    /// Saturates at `u64::MAX`.
    pub fn activation_bytes_per_sample(&self) -> u64 {
        let tokens = self.token_count();
        let per_token = |dim: usize, depth: usize, ratio: f64| {
            (depth as u128) * (9 * dim as u128 + 2 * mlp_hidden(dim, ratio) as u128)
        };
        let e = per_token(self.encoder.dim, self.encoder.depth, self.encoder.mlp_ratio);
        let d = per_token(self.decoder.dim, self.decoder.depth, self.decoder.mlp_ratio);
        u64::try_from(tokens.saturating_mul(e.saturating_add(d)).saturating_mul(4))
            .unwrap_or(u64::MAX)
    }

    /// `1 + L` tokens per sample, without overflow for any field values.
    fn token_count(&self) -> u128 {
        let p = self.patch_size.max(1) as u128;
        let rows = self.image_size[0] as u128 / p;
        let cols = self.image_size[1] as u128 / p;
        let steps = self.num_frames as u128 / self.tubelet.max(1) as u128;
        steps
            .saturating_mul(rows)
            .saturating_mul(cols)
            .saturating_add(1)
    }

    /// Checks the estimated size against [`ModelConfig::MAX_PARAMS`] and
    /// [`ModelConfig::MAX_ACTIVATION_BYTES`], naming the field that makes it too large.
    fn check_size(&self) -> Result<()> {
        let parts = self.param_parts();
        let total: u128 = parts.iter().map(|(_, n)| n).sum();
        if total > u128::from(Self::MAX_PARAMS) {
            let (field, _) = parts
                .iter()
                .max_by_key(|(_, n)| *n)
                .copied()
                .unwrap_or(parts[0]);
            let (e, d) = (&self.encoder, &self.decoder);
            return Err(Error::config(
                field,
                format!(
                    "the network would have {total:.3e} parameters (patch embeddings {:.3e}: patch {} \
                     x {} channels x tubelet {}; encoder {:.3e}: dim {}, depth {}, mlp_ratio {}; decoder \
                     {:.3e}: dim {}, depth {}, mlp_ratio {}), over the limit of {:.0e} \
                     (ModelConfig::MAX_PARAMS)",
                    parts[0].1 as f64,
                    self.patch_size,
                    self.in_channels,
                    self.tubelet,
                    parts[1].1 as f64,
                    e.dim,
                    e.depth,
                    e.mlp_ratio,
                    parts[2].1 as f64,
                    d.dim,
                    d.depth,
                    d.mlp_ratio,
                    Self::MAX_PARAMS as f64,
                    total = total as f64,
                ),
            ));
        }
        let bytes = self.activation_bytes_per_sample();
        if bytes > Self::MAX_ACTIVATION_BYTES {
            let (rows, cols) = self.grid();
            let field = if self.time_steps() > rows.saturating_mul(cols) {
                "num_frames"
            } else {
                "image_size"
            };
            return Err(Error::config(
                field,
                format!(
                    "{} tokens per sample (image {}x{} in patches of {}, {} frames in tubelets of {}) \
                     would need about {} GiB of activations per sample, over the limit of {} GiB \
                     (ModelConfig::MAX_ACTIVATION_BYTES)",
                    self.token_count(),
                    self.image_size[0],
                    self.image_size[1],
                    self.patch_size,
                    self.num_frames,
                    self.tubelet,
                    bytes.div_ceil(1 << 30),
                    Self::MAX_ACTIVATION_BYTES >> 30
                ),
            ));
        }
        Ok(())
    }

    /// Checks every constraint the network relies on, and its size against
    /// [`ModelConfig::MAX_PARAMS`] and [`ModelConfig::MAX_ACTIVATION_BYTES`] (before anything is
    /// allocated: [`crate::DiffMae::new`] and checkpoint loading call this first).
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
        if self.num_frames == 0
            || self.tubelet == 0
            || !self.num_frames.is_multiple_of(self.tubelet)
        {
            return Err(Error::config(
                "tubelet",
                format!(
                    "{} frames are not a positive multiple of tubelet {}",
                    self.num_frames, self.tubelet
                ),
            ));
        }
        // Every `dim` is split into sin/cos halves of sin/cos quarters by the 2-D embedding.
        if !self.encoder.dim.is_multiple_of(4) || !self.decoder.dim.is_multiple_of(4) {
            return Err(Error::config(
                "dim",
                "encoder and decoder widths must be multiples of 4 (2-D sin-cos)",
            ));
        }
        if self.decoder.time_embed_dim == 0 || !self.decoder.time_embed_dim.is_multiple_of(2) {
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
        let d = &self.diffusion;
        if d.timesteps == 0 || d.timesteps > MAX_TIMESTEPS {
            return Err(Error::config(
                "diffusion.timesteps",
                format!("{} not in 1..={MAX_TIMESTEPS}", d.timesteps),
            ));
        }
        d.noise_schedule()?;
        match (d.target, &d.clip) {
            (Target::Pixels, _) => {}
            (_, None) => {
                return Err(Error::config(
                    "diffusion.clip",
                    "a clip target needs the tower's settings (model, dim)",
                ))
            }
            (_, Some(c)) => {
                if c.dim == 0 || !(c.weight.is_finite() && c.weight > 0.0) {
                    return Err(Error::config(
                        "diffusion.clip",
                        format!("dim {} and weight {} must be positive", c.dim, c.weight),
                    ));
                }
                if self.is_video() || !self.is_diffusion() {
                    return Err(Error::config(
                        "diffusion.target",
                        "CLIP features are a target of image DiffMAE models only",
                    ));
                }
            }
        }
        if !(d.min_snr_gamma.is_finite() && d.min_snr_gamma > 0.0) {
            return Err(Error::config(
                "diffusion.min_snr_gamma",
                format!("{} must be positive", d.min_snr_gamma),
            ));
        }
        if self.norm_pix_loss && d.prediction != Prediction::X0 && self.is_diffusion() {
            return Err(Error::config(
                "diffusion.prediction",
                "norm_pix_loss normalises the x0 target; eps and v prediction need norm_pix_loss = false",
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
        self.check_size()
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

/// The most diffusion steps a model may be configured with (the schedule is a host table of
/// `T` entries per quantity; the paper uses 1000).
pub const MAX_TIMESTEPS: usize = 100_000;

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
    fn param_count_is_exact_for_every_layout() {
        let mut configs = Vec::new();
        for kind in [
            DecoderKind::Joint,
            DecoderKind::Cross,
            DecoderKind::CrossSelf,
        ] {
            for (masked_input, time) in [
                (MaskedInput::NoisyPatch, true),
                (MaskedInput::MaskToken, false),
            ] {
                let mut c = ModelConfig::mnist_small();
                c.encoder.dim = 24;
                c.encoder.heads = 2;
                c.encoder.qkv_bias = kind != DecoderKind::Cross;
                c.decoder.dim = 16;
                c.decoder.mlp_ratio = 2.5;
                c.decoder.kind = kind;
                c.decoder.masked_input = masked_input;
                c.decoder.time_conditioning = time;
                c.decoder.qkv_bias = time;
                configs.push(c);
            }
        }
        let mut v = ModelConfig::moving_mnist();
        v.encoder.dim = 32;
        v.decoder.dim = 16;
        configs.push(v);
        for c in configs {
            let m = crate::DiffMae::new(c.clone(), 0, &candle_core::Device::Cpu).unwrap();
            assert_eq!(c.param_count(), m.num_params() as u64, "{c:?}");
        }
        // The presets, without building them: ViT-H/14 with its decoder is about 0.66 billion.
        let huge = ModelConfig::huge().param_count();
        assert!((600_000_000..700_000_000).contains(&huge), "{huge}");
        assert!(ModelConfig::huge().activation_bytes_per_sample() < 1 << 30);
    }

    #[test]
    fn absurd_sizes_are_refused_naming_the_field() {
        let field_of = |c: &ModelConfig| match c.validate() {
            Err(Error::Config { field, reason }) => (field, reason),
            other => panic!("expected a config error, got {other:?}"),
        };
        let mut c = ModelConfig::tiny();
        c.encoder.dim = 3_000_000;
        let (field, reason) = field_of(&c);
        assert_eq!(field, "encoder");
        assert!(
            reason.contains("dim 3000000") && reason.contains("MAX_PARAMS"),
            "{reason}"
        );
        let mut c = ModelConfig::tiny();
        c.encoder.depth = 1_000_000_000;
        c.decoder.kind = DecoderKind::Joint;
        assert_eq!(field_of(&c).0, "encoder");
        let mut c = ModelConfig::tiny();
        c.decoder.dim = 1 << 20;
        c.decoder.heads = 4;
        assert_eq!(field_of(&c).0, "decoder");
        let mut c = ModelConfig::tiny();
        c.decoder.mlp_ratio = 1e300;
        assert_eq!(field_of(&c).0, "decoder");
        let mut c = ModelConfig::tiny();
        c.image_size = [100_000, 100_000];
        let (field, reason) = field_of(&c);
        assert_eq!(field, "image_size");
        assert!(reason.contains("39062501 tokens"), "{reason}");
        let mut c = ModelConfig::tiny();
        c.num_frames = 1 << 40;
        assert_eq!(field_of(&c).0, "num_frames");
        let mut c = ModelConfig::tiny();
        c.patch_size = 1 << 20;
        c.image_size = [1 << 20, 1 << 20];
        assert_eq!(field_of(&c).0, "patch_size");
        let mut c = ModelConfig::tiny();
        c.image_size = [usize::MAX / 16 * 16, usize::MAX / 16 * 16];
        c.num_frames = usize::MAX;
        assert!(c.validate().is_err());
        // The same through a checkpoint's metadata: refused before any tensor is allocated.
        let json = r#"{"encoder": {"depth": 1000000000}, "decoder": {"kind": "joint"}}"#;
        assert!(matches!(
            ModelConfig::from_json(json),
            Err(Error::Config {
                field: "encoder",
                ..
            })
        ));
        // Large but real configurations pass.
        let mut big = ModelConfig::huge();
        big.image_size = [448, 448];
        big.validate().unwrap();
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
