//! The ops of this crate composed from plain, differentiable candle ops.
//!
//! These are what a candle user would write without dmae-core. They are the ground truth the tests
//! compare against (forward and backward) and the baseline of `cargo xtask bench ops`. Slow on purpose:
//! no fusion.

use candle_core::{Result, Tensor, D};

use crate::Gelu;

/// Layer norm over the last dimension from mean/var/broadcast ops (like `candle_nn::ops::layer_norm_slow`).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xh = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xh.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension as `exp(x - max) / sum` (like `candle_nn::ops::softmax`).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Attention in the (N, L, H, D) layout via transposes, two batched matmuls and [`softmax`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let q = q.transpose(1, 2)?.contiguous()?;
    let k = k.transpose(1, 2)?.contiguous()?;
    let v = v.transpose(1, 2)?.contiguous()?;
    let mut s = (q.matmul(&k.t()?)? * scale)?;
    if let Some(m) = mask {
        s = s.broadcast_add(m)?;
    }
    let p = softmax(&s)?;
    p.matmul(&v)?.transpose(1, 2)?.contiguous()
}

/// candle's element-wise GELU ops (they do have a backward).
pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Tensor> {
    match kind {
        Gelu::Erf => x.gelu_erf(),
        Gelu::Tanh => x.gelu(),
    }
}

/// Patchify as reshape + permute + copy.
pub fn patchify(images: &Tensor, p: usize) -> Result<Tensor> {
    let (n, c, h, w) = images.dims4()?;
    images
        .reshape((n, c, h / p, p, w / p, p))?
        .permute((0, 2, 4, 3, 5, 1))?
        .reshape((n, (h / p) * (w / p), p * p * c))
}

/// Video patchify as reshape + permute + copy.
pub fn patchify_video(videos: &Tensor, t: usize, p: usize) -> Result<Tensor> {
    let (n, c, tt, h, w) = videos.dims5()?;
    videos
        .reshape(vec![n, c, tt / t, t, h / p, p, w / p, p])?
        .permute(vec![0, 2, 4, 6, 3, 5, 7, 1])?
        .reshape((n, (tt / t) * (h / p) * (w / p), t * p * p * c))
}

/// Token gather through candle's `gather` with a broadcast index.
pub fn gather_tokens(x: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (n, k) = idx.dims2()?;
    let d = x.dim(2)?;
    let idx = idx.unsqueeze(2)?.broadcast_as((n, k, d))?.contiguous()?;
    x.gather(&idx, 1)
}

/// Token scatter as `base * (1 - written) + onehot @ src`, with `onehot` (N, L, K) built from `idx`.
/// (candle's own `scatter_add` backward fails on these shapes in 0.11.)
pub fn scatter_tokens(base: &Tensor, src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (n, l, _) = base.dims3()?;
    let k = idx.dim(1)?;
    let idx = idx.to_vec2::<u32>()?;
    let mut onehot = vec![0f32; n * l * k];
    for (b, row) in idx.iter().enumerate() {
        for (j, &i) in row.iter().enumerate() {
            onehot[(b * l + i as usize) * k + j] = 1.0;
        }
    }
    let onehot = Tensor::from_vec(onehot, (n, l, k), base.device())?.to_dtype(base.dtype())?;
    let written = onehot.sum_keepdim(2)?;
    base.broadcast_mul(&written.affine(-1.0, 1.0)?)?
        .add(&onehot.matmul(src)?)
}

/// One AdamW step with candle tensor ops, returning `(p, m, v)`; `t` is 1-based.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    lr: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    weight_decay: f64,
    t: i32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * beta1)? + (g * (1.0 - beta1))?)?;
    let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
    let mh = (&m / (1.0 - beta1.powi(t)))?;
    let vh = (&v / (1.0 - beta2.powi(t)))?;
    let p = (p * (1.0 - lr * weight_decay))?;
    let p = (p - ((mh / (vh.sqrt()? + eps)?)? * lr)?)?;
    Ok((p, m, v))
}
