//! The three DiffMAE decoders (paper § "Decoders"): `joint`, `cross`, `cross-self`, with the
//! masked positions fed either noisy patches `x_t` (DiffMAE) or a learned mask token (MAE).
//!
//! Output: pixels (`p·p·C` values) of the masked patches, the `x̂_0` of `L = ‖x_0^m − D(x_t^m, t,
//! E(x_0^v))‖²`.

use candle_core::{Device, Tensor};
use dmae_diffusion::MaskIndices;

use crate::block::{Block, BlockSpec, KvCache, LayerNorm, Linear};
use crate::config::{mlp_hidden, CrossSource, DecoderKind, MaskedInput, ModelConfig, Target};
use crate::embed::{pos_embed, TimeEmbed};
use crate::encoder::{Encoder, EncoderOutput};
use crate::error::{check_mask, check_shape, Error, Result};
use crate::params::{Init, ParamStore};

/// The decoder.
///
/// Tensor names: `decoder.embed` (joint: encoder width -> decoder width, MAE's `decoder_embed`),
/// `decoder.patch_embed` (noisy-patch input), `decoder.mask_token (1, 1, Dd)` (mask-token input),
/// `decoder.time_embed.{fc1, fc2}`, `decoder.blocks.{i}.{norm1, attn.qkv, attn.proj, norm_cross,
/// cross_attn.q, cross_attn.kv, cross_attn.proj, norm2, mlp.fc1, mlp.fc2}`, `decoder.norm`,
/// `decoder.pred` (decoder width -> `p·p·C`), `decoder.clip_pred` (decoder width -> CLIP features;
/// models with a CLIP target only).
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Joint, cross or cross-self.
    pub kind: DecoderKind,
    /// Joint decoder: encoder tokens to decoder width.
    pub embed: Option<Linear>,
    /// Noisy-patch input: patch values to decoder width.
    pub patch_embed: Option<Linear>,
    /// Mask-token input: `(1, 1, Dd)`.
    pub mask_token: Option<Tensor>,
    /// Time conditioning.
    pub time_embed: Option<TimeEmbed>,
    /// Fixed `(1 + L, Dd)` sin-cos positions (row 0: cls, zeros).
    pub pos_embed: Tensor,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: LayerNorm,
    /// Decoder width -> pixels per patch.
    pub pred: Linear,
    /// Decoder width -> CLIP features per patch (models with a CLIP target).
    pub clip_pred: Option<Linear>,
    cross_source: CrossSource,
    patch_dim: usize,
    num_patches: usize,
}

/// Everything the decoder needs from one encoder pass: the encoder output, the features each
/// cross-attention block reads, and (optionally) their cached keys and values.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// The encoder's outputs.
    pub encoder: EncoderOutput,
    /// Per decoder block, the normalised encoder features it cross-attends to (empty for joint).
    pub contexts: Vec<Tensor>,
    /// Per decoder block, keys and values of `contexts` (computed once; `None`: recomputed at
    /// every decode).
    pub kv: Option<Vec<KvCache>>,
    /// Joint decoder: `decoder.embed(encoder.last)`, `(N, 1 + Lv, Dd)`.
    pub joint_tokens: Option<Tensor>,
}

impl Encoded {
    /// The same context without the K/V cache (every decode recomputes keys and values).
    pub fn without_cache(&self) -> Self {
        Self {
            kv: None,
            ..self.clone()
        }
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.encoder.last.dims()[0]
    }

    /// Samples `start..start + len` of the batch (views, no copies).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        let rows = |t: &Tensor| t.narrow(0, start, len);
        Ok(Self {
            encoder: EncoderOutput {
                hidden: self
                    .encoder
                    .hidden
                    .iter()
                    .map(rows)
                    .collect::<candle_core::Result<_>>()?,
                last: rows(&self.encoder.last)?,
            },
            contexts: self
                .contexts
                .iter()
                .map(rows)
                .collect::<candle_core::Result<_>>()?,
            kv: self
                .kv
                .as_ref()
                .map(|kv| {
                    kv.iter()
                        .map(|c| {
                            Ok::<_, candle_core::Error>(KvCache {
                                k: rows(&c.k)?,
                                v: rows(&c.v)?,
                            })
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                })
                .transpose()?,
            joint_tokens: self.joint_tokens.as_ref().map(rows).transpose()?,
        })
    }
}

impl Decoder {
    pub(crate) fn new(ps: &mut ParamStore, c: &ModelConfig) -> Result<Self> {
        let d = &c.decoder;
        let (rows, cols) = c.grid();
        let embed = if d.kind == DecoderKind::Joint {
            Some(Linear::new(
                ps,
                "decoder.embed",
                c.encoder.dim,
                d.dim,
                true,
            )?)
        } else {
            None
        };
        let (patch_embed, mask_token) = match d.masked_input {
            MaskedInput::NoisyPatch => (
                Some(Linear::new(
                    ps,
                    "decoder.patch_embed",
                    c.patch_dim(),
                    d.dim,
                    true,
                )?),
                None,
            ),
            MaskedInput::MaskToken => (
                None,
                Some(ps.get(
                    "decoder.mask_token".into(),
                    &[1, 1, d.dim],
                    Init::Normal(0.02),
                )?),
            ),
        };
        let time_embed = if d.time_conditioning {
            Some(TimeEmbed::new(
                ps,
                "decoder.time_embed",
                d.time_embed_dim,
                d.dim,
            )?)
        } else {
            None
        };
        let spec = BlockSpec {
            dim: d.dim,
            heads: d.heads,
            mlp_hidden: mlp_hidden(d.dim, d.mlp_ratio),
            qkv_bias: d.qkv_bias,
            eps: c.norm_eps,
            act: c.activation,
            self_attn: d.kind != DecoderKind::Cross,
            cross: (d.kind != DecoderKind::Joint).then_some(c.encoder.dim),
        };
        let blocks = (0..d.depth)
            .map(|i| Block::new(ps, &format!("decoder.blocks.{i}"), spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kind: d.kind,
            embed,
            patch_embed,
            mask_token,
            time_embed,
            pos_embed: pos_embed(c.time_steps(), rows, cols, d.dim, ps.device())?
                .to_dtype(ps.dtype())?,
            blocks,
            norm: LayerNorm::new(ps, "decoder.norm", d.dim, c.norm_eps)?,
            pred: Linear::new(ps, "decoder.pred", d.dim, c.patch_dim(), true)?,
            clip_pred: match (&c.diffusion.clip, c.diffusion.target) {
                (Some(clip), Target::Clip | Target::PixelsClip) => {
                    Some(Linear::new(ps, "decoder.clip_pred", d.dim, clip.dim, true)?)
                }
                _ => None,
            },
            cross_source: d.cross_source,
            patch_dim: c.patch_dim(),
            num_patches: c.num_patches(),
        })
    }

    /// Token width.
    pub fn dim(&self) -> usize {
        self.norm.weight.dims()[0]
    }

    /// Builds the decoder context of one encoder pass; `cache` computes every cross-attention
    /// block's K/V now (reused by every [`Decoder::forward`]).
    ///
    /// Cross source (paper (choice)): `last` gives every block the encoder output; `top-down`
    /// gives block `i` the output of encoder block `depth_e − 1 − i` through the encoder's final
    /// norm (deepest first; block 0 reads exactly the encoder output).
    pub fn prepare(&self, encoder: &Encoder, out: EncoderOutput, cache: bool) -> Result<Encoded> {
        let mut contexts = Vec::new();
        let mut joint_tokens = None;
        if let Some(embed) = &self.embed {
            joint_tokens = Some(embed.forward(&out.last)?);
        } else {
            let de = out.hidden.len();
            for i in 0..self.blocks.len() {
                let ctx = match self.cross_source {
                    CrossSource::Last => out.last.clone(),
                    CrossSource::TopDown => {
                        let j = de.checked_sub(1 + i).ok_or_else(|| {
                            Error::config(
                                "decoder.depth",
                                format!(
                                    "top-down block {i} has no encoder block (encoder depth {de})"
                                ),
                            )
                        })?;
                        if j + 1 == de {
                            out.last.clone()
                        } else {
                            encoder.norm.forward(&out.hidden[j])?
                        }
                    }
                };
                contexts.push(ctx);
            }
        }
        let kv = if cache && self.embed.is_none() {
            Some(self.compute_kv(&contexts)?)
        } else {
            None
        };
        Ok(Encoded {
            encoder: out,
            contexts,
            kv,
            joint_tokens,
        })
    }

    fn compute_kv(&self, contexts: &[Tensor]) -> Result<Vec<KvCache>> {
        self.blocks
            .iter()
            .zip(contexts)
            .map(|(b, ctx)| match &b.cross {
                Some(c) => c.kv(ctx),
                None => Err(Error::arg("contexts", "block without cross-attention")),
            })
            .collect()
    }

    /// Decoder inputs at the masked positions, before positions: `embed(x_t)` or the mask token,
    /// plus the time embedding.
    fn masked_tokens(
        &self,
        x_t: &Tensor,
        t: &[usize],
        n: usize,
        lm: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let d = self.dim();
        let mut h = match (&self.patch_embed, &self.mask_token) {
            (Some(pe), _) => {
                check_shape("x_t", x_t, &[n, lm, self.patch_dim])?;
                pe.forward(x_t)?
            }
            (None, Some(tok)) => tok.broadcast_as((n, lm, d))?.contiguous()?,
            (None, None) => return Err(Error::arg("decoder", "no masked-token input")),
        };
        if let Some(te) = &self.time_embed {
            if t.len() != n {
                return Err(Error::shape("t", &[n], &[t.len()]));
            }
            h = h.broadcast_add(&te.forward(t, device)?.unsqueeze(1)?)?;
        }
        Ok(h)
    }

    /// Predicts the masked patches `(N, Lm, p·p·C)` from `x_t (N, Lm, p·p·C)` (ignored in
    /// mask-token mode, any shape), 0-based timesteps `t` (one per sample; ignored without time
    /// conditioning) and the encoder context.
    pub fn forward(
        &self,
        ctx: &Encoded,
        x_t: &Tensor,
        mask: &MaskIndices,
        t: &[usize],
    ) -> Result<Tensor> {
        self.pred.forward(&self.hidden(ctx, x_t, mask, t)?)
    }

    /// [`Decoder::forward`] and, for models with a CLIP target, the CLIP features of the
    /// masked patches `(N, Lm, D_clip)` from the same pass.
    pub fn forward_targets(
        &self,
        ctx: &Encoded,
        x_t: &Tensor,
        mask: &MaskIndices,
        t: &[usize],
    ) -> Result<(Tensor, Option<Tensor>)> {
        let h = self.hidden(ctx, x_t, mask, t)?;
        let clip = self.clip_pred.as_ref().map(|c| c.forward(&h)).transpose()?;
        Ok((self.pred.forward(&h)?, clip))
    }

    /// The normalised output tokens at the masked positions `(N, Lm, Dd)`, before the heads.
    pub fn hidden(
        &self,
        ctx: &Encoded,
        x_t: &Tensor,
        mask: &MaskIndices,
        t: &[usize],
    ) -> Result<Tensor> {
        let (n, _lv, lm) = check_mask(mask, self.num_patches)?;
        if ctx.batch_size() != n {
            return Err(Error::shape(
                "encoded.last",
                &[n, usize::MAX, usize::MAX],
                ctx.encoder.last.dims(),
            ));
        }
        if self.kind == DecoderKind::Joint {
            let full = self.hidden_joint(ctx, x_t, mask, t)?;
            return Ok(dmae_core::gather_tokens(&full, mask.masked())?);
        }
        let d = self.dim();
        let device = ctx.encoder.last.device();
        let h = self.masked_tokens(x_t, t, n, lm, device)?;
        let idx = (mask.masked().flatten_all()? + 1.0)?;
        let pos = self.pos_embed.index_select(&idx, 0)?.reshape((n, lm, d))?;
        let mut x = (h + pos)?;
        let computed;
        let kv = match &ctx.kv {
            Some(kv) => kv,
            None => {
                computed = self.compute_kv(&ctx.contexts)?;
                &computed
            }
        };
        if kv.len() != self.blocks.len() {
            return Err(Error::shape(
                "encoded.kv",
                &[self.blocks.len()],
                &[kv.len()],
            ));
        }
        for (b, kv) in self.blocks.iter().zip(kv) {
            x = b.forward(&x, Some(kv), None)?;
        }
        self.norm.forward(&x)
    }

    /// Joint decoder over the whole sequence: `(N, L, p·p·C)` predictions for every patch (MAE's
    /// and Hugging Face's `logits`), visible ones included.
    pub fn forward_joint(
        &self,
        ctx: &Encoded,
        x_t: &Tensor,
        mask: &MaskIndices,
        t: &[usize],
    ) -> Result<Tensor> {
        self.pred.forward(&self.hidden_joint(ctx, x_t, mask, t)?)
    }

    /// The joint decoder's normalised output tokens of every patch `(N, L, Dd)` (cls dropped).
    fn hidden_joint(
        &self,
        ctx: &Encoded,
        x_t: &Tensor,
        mask: &MaskIndices,
        t: &[usize],
    ) -> Result<Tensor> {
        let (n, lv, lm) = check_mask(mask, self.num_patches)?;
        let vis = ctx
            .joint_tokens
            .as_ref()
            .ok_or_else(|| Error::arg("decoder", "forward_joint needs the joint decoder"))?;
        check_shape("encoded.joint_tokens", vis, &[n, 1 + lv, self.dim()])?;
        let device = vis.device();
        let h = self.masked_tokens(x_t, t, n, lm, device)?;
        let cls = vis.narrow(1, 0, 1)?;
        let seq = Tensor::cat(&[&vis.narrow(1, 1, lv)?, &h], 1)?;
        let seq = dmae_core::gather_tokens(&seq, mask.ids_restore())?;
        let mut x = Tensor::cat(&[&cls, &seq], 1)?.broadcast_add(&self.pos_embed.unsqueeze(0)?)?;
        for b in &self.blocks {
            x = b.forward(&x, None, None)?;
        }
        Ok(self.norm.forward(&x)?.narrow(1, 1, self.num_patches)?)
    }
}
