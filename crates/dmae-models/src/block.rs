//! Transformer building blocks on dmae-core ops: linear, LayerNorm, MLP, self/cross attention and
//! the pre-norm blocks of the encoder and decoders.
//!
//! Linears apply to 2-D inputs (`(N, L, D)` is flattened to `(N·L, D)` and multiplied by `Wᵀ`),
//! LayerNorm, GELU and attention are dmae-core's fused differentiable ops.

use candle_core::Tensor;

use crate::config::Activation;
use crate::error::Result;
use crate::params::{join, Init, ParamStore};

/// `y = x Wᵀ + b` with `W: (out, in)`, applied to the last dimension of any-rank `x`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`.
    pub weight: Tensor,
    /// `(out,)`, if any.
    pub bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(
        ps: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = ps.get(join(prefix, "weight"), &[d_out, d_in], Init::Xavier)?;
        let bias = if bias {
            Some(ps.get(join(prefix, "bias"), &[d_out], Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Applies the map to the last dimension (dmae-core's fused linear op).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(dmae_core::linear(x, &self.weight, self.bias.as_ref())?)
    }
}

/// LayerNorm with affine weight and bias (dmae-core's fused op).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// `(D,)`.
    pub weight: Tensor,
    /// `(D,)`.
    pub bias: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(ps: &mut ParamStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: ps.get(join(prefix, "weight"), &[dim], Init::Const(1.0))?,
            bias: ps.get(join(prefix, "bias"), &[dim], Init::Const(0.0))?,
            eps,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(dmae_core::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

/// `fc2(gelu(fc1(x)))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `dim -> hidden`.
    pub fc1: Linear,
    /// `hidden -> dim`.
    pub fc2: Linear,
    /// GELU form.
    pub act: Activation,
}

impl Mlp {
    pub(crate) fn new(
        ps: &mut ParamStore,
        prefix: &str,
        dim: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(ps, &join(prefix, "fc1"), dim, hidden, true)?,
            fc2: Linear::new(ps, &join(prefix, "fc2"), hidden, dim, true)?,
            act,
        })
    }

    /// Applies the MLP (fc1 and GELU as one dmae-core op).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fc1 = &self.fc1;
        let h = dmae_core::linear_gelu(x, &fc1.weight, fc1.bias.as_ref(), self.act.core())?;
        self.fc2.forward(&h)
    }
}

/// Multi-head self-attention with a fused qkv projection (timm/MAE's `attn.qkv`, `attn.proj`).
#[derive(Clone, Debug)]
pub struct SelfAttention {
    /// `dim -> 3·dim`, output order (q, k, v) then heads.
    pub qkv: Linear,
    /// `dim -> dim`.
    pub proj: Linear,
    /// Heads.
    pub heads: usize,
}

impl SelfAttention {
    pub(crate) fn new(
        ps: &mut ParamStore,
        prefix: &str,
        dim: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            qkv: Linear::new(ps, &join(prefix, "qkv"), dim, 3 * dim, qkv_bias)?,
            proj: Linear::new(ps, &join(prefix, "proj"), dim, dim, true)?,
            heads,
        })
    }

    /// `(N, L, D) -> (N, L, D)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, d) = x.dims3()?;
        let h = self.heads;
        // One op over the packed projection: no per-slice views, one packed gradient.
        let o = dmae_core::attention_qkv(&self.qkv.forward(x)?, h, 1.0 / ((d / h) as f64).sqrt())?;
        self.proj.forward(&o)
    }
}

/// Keys and values of one cross-attention block for one encoder context, `(N, Lk, H, Dh)` views.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// Multi-head cross-attention: queries from the decoder tokens, keys and values from the
/// (normalised) encoder features of width `ctx_dim` (`attn.q`, `attn.kv`, `attn.proj`).
#[derive(Clone, Debug)]
pub struct CrossAttention {
    /// `dim -> dim`.
    pub q: Linear,
    /// `ctx_dim -> 2·dim`, output order (k, v) then heads.
    pub kv: Linear,
    /// `dim -> dim`.
    pub proj: Linear,
    /// Heads.
    pub heads: usize,
}

impl CrossAttention {
    pub(crate) fn new(
        ps: &mut ParamStore,
        prefix: &str,
        dim: usize,
        ctx_dim: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            q: Linear::new(ps, &join(prefix, "q"), dim, dim, qkv_bias)?,
            kv: Linear::new(ps, &join(prefix, "kv"), ctx_dim, 2 * dim, qkv_bias)?,
            proj: Linear::new(ps, &join(prefix, "proj"), dim, dim, true)?,
            heads,
        })
    }

    /// Keys and values of the context `(N, Lk, ctx_dim)`: computed once per encoded image and
    /// reused at every sampling step.
    pub fn kv(&self, ctx: &Tensor) -> Result<KvCache> {
        let (n, lk, _) = ctx.dims3()?;
        let d = self.q.weight.dim(0)?;
        let h = self.heads;
        let kv = self.kv.forward(ctx)?.reshape((n, lk, 2, h, d / h))?;
        Ok(KvCache {
            k: kv.narrow(2, 0, 1)?.squeeze(2)?,
            v: kv.narrow(2, 1, 1)?.squeeze(2)?,
        })
    }

    /// `(N, Lq, D)` queries attending to the cached keys and values.
    pub fn forward(&self, x: &Tensor, kv: &KvCache) -> Result<Tensor> {
        let (n, l, d) = x.dims3()?;
        let h = self.heads;
        let q = self.q.forward(x)?.reshape((n, l, h, d / h))?;
        let o = dmae_core::attention(&q, &kv.k, &kv.v, None, 1.0 / ((d / h) as f64).sqrt())?;
        self.proj.forward(&o.reshape((n, l, d))?)
    }
}

/// A pre-norm block: optional self-attention, optional cross-attention, MLP, each residual.
///
/// - encoder and `joint` decoder: `x += SA(norm1 x); x += MLP(norm2 x)` (ViT);
/// - `cross`: `x += CA(norm_cross x, ctx); x += MLP(norm2 x)`;
/// - `cross-self`: `x += SA(norm1 x); x += CA(norm_cross x, ctx); x += MLP(norm2 x)`.
#[derive(Clone, Debug)]
pub struct Block {
    /// Before self-attention.
    pub norm1: Option<LayerNorm>,
    /// Self-attention.
    pub attn: Option<SelfAttention>,
    /// Before cross-attention.
    pub norm_cross: Option<LayerNorm>,
    /// Cross-attention.
    pub cross: Option<CrossAttention>,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

/// What a block contains.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockSpec {
    pub dim: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    pub qkv_bias: bool,
    pub eps: f64,
    pub act: Activation,
    pub self_attn: bool,
    /// `Some(ctx_dim)` for a cross-attention block.
    pub cross: Option<usize>,
}

impl Block {
    pub(crate) fn new(ps: &mut ParamStore, prefix: &str, s: BlockSpec) -> Result<Self> {
        let (norm1, attn) = if s.self_attn {
            (
                Some(LayerNorm::new(ps, &join(prefix, "norm1"), s.dim, s.eps)?),
                Some(SelfAttention::new(
                    ps,
                    &join(prefix, "attn"),
                    s.dim,
                    s.heads,
                    s.qkv_bias,
                )?),
            )
        } else {
            (None, None)
        };
        let (norm_cross, cross) = match s.cross {
            Some(ctx_dim) => (
                Some(LayerNorm::new(
                    ps,
                    &join(prefix, "norm_cross"),
                    s.dim,
                    s.eps,
                )?),
                Some(CrossAttention::new(
                    ps,
                    &join(prefix, "cross_attn"),
                    s.dim,
                    ctx_dim,
                    s.heads,
                    s.qkv_bias,
                )?),
            ),
            None => (None, None),
        };
        Ok(Self {
            norm1,
            attn,
            norm_cross,
            cross,
            norm2: LayerNorm::new(ps, &join(prefix, "norm2"), s.dim, s.eps)?,
            mlp: Mlp::new(ps, &join(prefix, "mlp"), s.dim, s.mlp_hidden, s.act)?,
        })
    }

    /// Runs the block; `kv` is required for cross-attention blocks; `keep` is the per-sample
    /// drop-path scale `(N, 1, 1)` (0 or 1/keep_prob) applied to each residual branch.
    pub fn forward(
        &self,
        x: &Tensor,
        kv: Option<&KvCache>,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let branch = |y: Tensor| -> Result<Tensor> {
            Ok(match keep {
                Some(k) => y.broadcast_mul(k)?,
                None => y,
            })
        };
        let mut x = x.clone();
        if let (Some(n), Some(a)) = (&self.norm1, &self.attn) {
            x = (&x + branch(a.forward(&n.forward(&x)?)?)?)?;
        }
        if let (Some(n), Some(c)) = (&self.norm_cross, &self.cross) {
            let kv = kv.ok_or_else(|| {
                crate::error::Error::arg("kv", "a cross-attention block needs encoder keys/values")
            })?;
            x = (&x + branch(c.forward(&n.forward(&x)?, kv)?)?)?;
        }
        let y = self.mlp.forward(&self.norm2.forward(&x)?)?;
        Ok((&x + branch(y)?)?)
    }
}
