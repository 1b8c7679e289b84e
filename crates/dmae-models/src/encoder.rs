//! MAE's ViT encoder over the visible patches only (paper: "exactly MAE's encoder").

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::block::{Block, BlockSpec, LayerNorm, Linear};
use crate::config::{mlp_hidden, ModelConfig};
use crate::embed::pos_embed;
use crate::error::{check_shape, Result};
use crate::params::{Init, ParamStore};

/// The encoder's outputs, kept per block for the top-down decoders.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// Raw output of every block, `(N, 1 + Lv, D)` each (cls first).
    pub hidden: Vec<Tensor>,
    /// `norm(hidden.last())`: the encoder output (MAE's `latent`, HF's `last_hidden_state`).
    pub last: Tensor,
}

/// ViT encoder: linear patch embedding of patchified pixels, fixed 2-D sin-cos positions, cls
/// token, pre-norm blocks with qkv bias, final LayerNorm.
///
/// Tensor names: `encoder.cls_token (1, 1, D)`, `encoder.patch_embed.{weight (D, p·p·C), bias}`,
/// `encoder.blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}`,
/// `encoder.norm.{weight, bias}`.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// Patch values -> tokens.
    pub patch_embed: Linear,
    /// `(1, 1, D)`.
    pub cls_token: Tensor,
    /// Fixed `(1 + L, D)` (row 0 for cls, zeros).
    pub pos_embed: Tensor,
    /// Pre-norm ViT blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: LayerNorm,
    drop_path: f64,
    patch_dim: usize,
    num_patches: usize,
}

impl Encoder {
    pub(crate) fn new(ps: &mut ParamStore, c: &ModelConfig) -> Result<Self> {
        let e = &c.encoder;
        let (rows, cols) = c.grid();
        let patch_embed = Linear::new(ps, "encoder.patch_embed", c.patch_dim(), e.dim, true)?;
        let cls_token = ps.get(
            "encoder.cls_token".into(),
            &[1, 1, e.dim],
            Init::Normal(0.02),
        )?;
        let spec = BlockSpec {
            dim: e.dim,
            heads: e.heads,
            mlp_hidden: mlp_hidden(e.dim, e.mlp_ratio),
            qkv_bias: e.qkv_bias,
            eps: c.norm_eps,
            act: c.activation,
            self_attn: true,
            cross: None,
        };
        let blocks = (0..e.depth)
            .map(|i| Block::new(ps, &format!("encoder.blocks.{i}"), spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            cls_token,
            pos_embed: pos_embed(c.time_steps(), rows, cols, e.dim, ps.device())?
                .to_dtype(ps.dtype())?,
            blocks,
            norm: LayerNorm::new(ps, "encoder.norm", e.dim, c.norm_eps)?,
            drop_path: e.drop_path,
            patch_dim: c.patch_dim(),
            num_patches: c.num_patches(),
        })
    }

    /// Token width.
    pub fn dim(&self) -> usize {
        self.norm.weight.dims()[0]
    }

    /// Encodes the visible patches `x0_v (N, Lv, p·p·C)` at patch indices `visible (N, Lv)` u32.
    ///
    /// `drop_path_seed`: `Some(seed)` enables stochastic depth (rate rising linearly to
    /// `encoder.drop_path` at the last block; per-sample keep masks from ChaCha8 seeded by
    /// `seed`), for fine-tuning; `None` for pre-training and inference.
    pub fn forward(
        &self,
        x0_v: &Tensor,
        visible: &Tensor,
        drop_path_seed: Option<u64>,
    ) -> Result<EncoderOutput> {
        let (n, lv) = visible.dims2().map_err(|_| {
            crate::error::Error::shape("visible", &[usize::MAX, usize::MAX], visible.dims())
        })?;
        check_shape("x0_v", x0_v, &[n, lv, self.patch_dim])?;
        let d = self.dim();
        let tokens = self.patch_embed.forward(x0_v)?;
        let idx = (visible.flatten_all()? + 1.0)?;
        let pos = self.pos_embed.index_select(&idx, 0)?.reshape((n, lv, d))?;
        let tokens = (tokens + pos)?;
        let cls = self.cls_token.broadcast_as((n, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?;
        let mut rng = drop_path_seed.map(ChaCha8Rng::seed_from_u64);
        let depth = self.blocks.len();
        let mut hidden = Vec::with_capacity(depth);
        for (i, b) in self.blocks.iter().enumerate() {
            let rate = if depth > 1 {
                self.drop_path * i as f64 / (depth - 1) as f64
            } else {
                self.drop_path
            };
            let keep = match rng.as_mut() {
                Some(r) if rate > 0.0 => {
                    Some(keep_scale(r, n, rate, x.device())?.to_dtype(x.dtype())?)
                }
                _ => None,
            };
            x = b.forward(&x, None, keep.as_ref())?;
            hidden.push(x.clone());
        }
        let last = self.norm.forward(&x)?;
        Ok(EncoderOutput { hidden, last })
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        self.num_patches
    }
}

/// Per-sample `(N, 1, 1)`: `1 / (1 - rate)` with probability `1 - rate`, else 0 (timm DropPath).
fn keep_scale(rng: &mut ChaCha8Rng, n: usize, rate: f64, device: &Device) -> Result<Tensor> {
    let s = (1.0 / (1.0 - rate)) as f32;
    let v: Vec<f32> = (0..n)
        .map(|_| if rng.random::<f64>() < rate { 0.0 } else { s })
        .collect();
    Ok(Tensor::from_vec(v, (n, 1, 1), device)?)
}
