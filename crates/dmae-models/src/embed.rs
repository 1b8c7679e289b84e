//! Embeddings: patch (a linear map on patchified pixels), fixed 2-D sin-cos positions (MAE), and
//! the diffusion time step (sinusoidal → MLP, paper (choice)).

use candle_core::{Device, Tensor};

use crate::block::Linear;
use crate::error::Result;
use crate::params::{join, ParamStore};

/// MAE's fixed 2-D sin-cos position embedding of a `rows x cols` grid, `(rows·cols, dim)` f32
/// (with a leading zero row for the cls token when `cls`).
///
/// As MAE's `get_2d_sincos_pos_embed`: the first `dim/2` channels encode the column index, the
/// last `dim/2` the row index, each as `[sin(pos·ω), cos(pos·ω)]` with
/// `ω_i = 10000^(-i / (dim/4))`, computed in f64. `dim` must be a multiple of 4.
pub fn sincos_2d(rows: usize, cols: usize, dim: usize, cls: bool) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity((rows * cols + usize::from(cls)) * dim);
    if cls {
        out.extend(std::iter::repeat_n(0.0f32, dim));
    }
    for r in 0..rows {
        for c in 0..cols {
            for pos in [c as f64, r as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// [`sincos_2d`] as a `(L (+1), dim)` tensor.
pub fn sincos_2d_tensor(
    rows: usize,
    cols: usize,
    dim: usize,
    cls: bool,
    device: &Device,
) -> Result<Tensor> {
    let l = rows * cols + usize::from(cls);
    Ok(Tensor::from_vec(
        sincos_2d(rows, cols, dim, cls),
        (l, dim),
        device,
    )?)
}

/// Fixed space-time position embedding of a `steps x rows x cols` tubelet grid (time-major
/// tokens), `(1 + L, dim)` with a zero cls row: the 2-D [`sincos_2d`] of the spatial position
/// plus a 1-D sin-cos of the temporal index (`[sin(t·ω), cos(t·ω)]`, `ω_i = 10000^(-i/(dim/2))`),
/// i.e. MAE-ST's separable space + time embedding in fixed form. With `steps = 1` it equals
/// [`sincos_2d`].
pub fn pos_embed(
    steps: usize,
    rows: usize,
    cols: usize,
    dim: usize,
    device: &Device,
) -> Result<Tensor> {
    let space = sincos_2d(rows, cols, dim, false);
    let half = dim / 2;
    let mut out = vec![0f32; dim];
    for t in 0..steps {
        let temporal: Vec<f32> = if steps > 1 {
            let w = |i: usize| 1.0 / 10000f64.powf(i as f64 / half as f64);
            (0..half)
                .map(|i| (t as f64 * w(i)).sin() as f32)
                .chain((0..half).map(|i| (t as f64 * w(i)).cos() as f32))
                .collect()
        } else {
            vec![0.0; dim]
        };
        for s in space.chunks(dim) {
            out.extend(s.iter().zip(&temporal).map(|(a, b)| a + b));
        }
    }
    Ok(Tensor::from_vec(
        out,
        (1 + steps * rows * cols, dim),
        device,
    )?)
}

/// Sinusoidal time features `[sin(t·f_i), cos(t·f_i)]`, `f_i = 10000^(-i/half)`, `(N, dim)` f32
/// (the reference script's `tstep`; DDPM's transformer embedding).
pub fn timestep_features(t: &[usize], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let f: Vec<f64> = (0..half)
            .map(|i| ti as f64 * (-(10000f64.ln()) * i as f64 / half as f64).exp())
            .collect();
        out.extend(f.iter().map(|a| a.sin() as f32));
        out.extend(f.iter().map(|a| a.cos() as f32));
    }
    Ok(Tensor::from_vec(out, (t.len(), dim), device)?)
}

/// Time-step conditioning: `fc2(silu(fc1(sinusoidal(t))))`, `(N, dim)`, added to the decoder's
/// masked tokens (paper: "sinusoidal embedding through a small MLP, added to the decoder tokens").
#[derive(Clone, Debug)]
pub struct TimeEmbed {
    /// `freq_dim -> dim`.
    pub fc1: Linear,
    /// `dim -> dim`.
    pub fc2: Linear,
    /// Width of the sinusoidal features.
    pub freq_dim: usize,
}

impl TimeEmbed {
    pub(crate) fn new(
        ps: &mut ParamStore,
        prefix: &str,
        freq_dim: usize,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(ps, &join(prefix, "fc1"), freq_dim, dim, true)?,
            fc2: Linear::new(ps, &join(prefix, "fc2"), dim, dim, true)?,
            freq_dim,
        })
    }

    /// `(N, dim)` for one 0-based timestep per sample.
    pub fn forward(&self, t: &[usize], device: &Device) -> Result<Tensor> {
        let f = timestep_features(t, self.freq_dim, device)?.to_dtype(self.fc1.weight.dtype())?;
        let h = self.fc1.forward(&f)?.silu()?;
        self.fc2.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_matches_mae_layout() {
        // 1 x 2 grid, dim 4: omega = [1]; token (r=0,c=1): [sin1, cos1, sin0, cos0].
        let e = sincos_2d(1, 2, 4, true);
        assert_eq!(&e[..4], &[0.0; 4]);
        assert_eq!(&e[4..8], &[0.0, 1.0, 0.0, 1.0]);
        let want = [1f64.sin() as f32, 1f64.cos() as f32, 0.0, 1.0];
        assert_eq!(&e[8..12], &want);
    }
}
