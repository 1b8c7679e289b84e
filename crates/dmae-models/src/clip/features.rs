//! Which CLIP features are the second target, and how CLIP's patch grid maps onto the model's.
//!
//! The paper says only that DiffMAE, "with CLIP features as an additional target", beats the
//! MAE + CLIP combinations; which features is not given (choice). The default
//! ([`ClipFeatureConfig::default`]) is **the last block's patch tokens (tokens `1..`, the class
//! token dropped) after CLIP's own `post_layernorm`**: the deepest features, on the scale CLIP
//! itself normalises them to before its projection, one vector per CLIP patch. Other layers
//! (LLaVA-style indices) and normalisations are config values.
//!
//! [`resample_grid`] then gives one feature per patch of the model's grid by area averaging, so
//! the features at the masked positions can be gathered with the mask's indices (row-major
//! patch order, as patchify).

use candle_core::Tensor;
use dmae_diffusion::PatchGrid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the chosen layer's patch tokens are normalised (per token, before [`resample_grid`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClipFeatureNorm {
    /// CLIP's `post_layernorm` (with its learned scale and shift), which CLIP applies to the
    /// last block's class token before the projection. It was trained on the last block's
    /// output; on an earlier block it is just a fixed LayerNorm.
    #[default]
    PostLayernorm,
    /// LayerNorm without affine parameters (eps 1e-6): zero mean, unit variance per token, as
    /// MAE's normalised-pixel target treats each patch.
    Layernorm,
    /// The block's output as it is.
    None,
}

/// Which CLIP features are the target: a layer and a normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipFeatureConfig {
    /// The block whose output is taken, as an index into transformers' `hidden_states`:
    /// `k ≥ 1` is block `k`'s output, `−1` the last block, `−2` the one before (LLaVA's
    /// `vision_feature_layer`). `0` (the embeddings) is not exposed by candle-transformers.
    pub layer: i32,
    /// Per-token normalisation.
    pub norm: ClipFeatureNorm,
}

impl Default for ClipFeatureConfig {
    fn default() -> Self {
        Self {
            layer: -1,
            norm: ClipFeatureNorm::PostLayernorm,
        }
    }
}

impl ClipFeatureConfig {
    /// The 0-based block index [`Self::layer`] names in a tower of `depth` blocks.
    pub fn block(&self, depth: usize) -> Result<usize> {
        let d = depth as i64;
        let l = i64::from(self.layer);
        let b = if l > 0 { l - 1 } else { d + l };
        if l == 0 || b < 0 || b >= d {
            return Err(Error::config(
                "clip.layer",
                format!(
                    "{} is outside the tower's blocks: give 1..={depth} or -1..=-{depth}",
                    self.layer
                ),
            ));
        }
        Ok(b as usize)
    }
}

/// `(target, source)` row-stochastic matrix of the area overlap between `t` equal cells and `s`
/// equal cells covering the same interval.
fn overlap_weights(s: usize, t: usize) -> Vec<f32> {
    let mut w = vec![0f32; t * s];
    let width = s as f64 / t as f64;
    for j in 0..t {
        let (a, b) = (j as f64 * width, (j + 1) as f64 * width);
        for i in (a.floor() as usize)..(b.ceil() as usize).min(s) {
            let o = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
            w[j * s + i] = (o / width) as f32;
        }
    }
    w
}

/// Maps per-patch features `(N, from.len(), D)` on CLIP's grid to `(N, to.len(), D)` on the
/// model's grid, both row-major over the same image area.
///
/// Each target patch gets the area-weighted mean of the CLIP patches it overlaps (box
/// resampling): for an integer ratio it is plain average pooling (CLIP ViT-B/16's 14 × 14 onto
/// a 7 × 7 grid averages 2 × 2 blocks); a finer target grid repeats (and at cell borders
/// blends) the CLIP features. Equal grids return the input.
pub fn resample_grid(features: &Tensor, from: PatchGrid, to: PatchGrid) -> Result<Tensor> {
    let (n, l, d) = features.dims3().map_err(|_| {
        Error::shape(
            "clip features",
            &[usize::MAX, from.len(), usize::MAX],
            features.dims(),
        )
    })?;
    if l != from.len() || from.is_empty() {
        return Err(Error::shape(
            "clip features",
            &[n, from.len(), d],
            &[n, l, d],
        ));
    }
    if to.is_empty() {
        return Err(Error::arg("grid", "the target grid has no patch"));
    }
    if from == to {
        return Ok(features.clone());
    }
    let dev = features.device();
    let wr = Tensor::from_vec(
        overlap_weights(from.rows, to.rows),
        (to.rows, from.rows),
        dev,
    )?;
    let wc = Tensor::from_vec(
        overlap_weights(from.cols, to.cols),
        (to.cols, from.cols),
        dev,
    )?;
    let f = features
        .to_dtype(candle_core::DType::F32)?
        .reshape((n, from.rows, from.cols * d))?;
    let f = wr.broadcast_matmul(&f)?; // (N, to.rows, from.cols·D)
    let f = f.reshape((n, to.rows, from.cols, d))?;
    let f = wc.broadcast_matmul(&f)?; // (N, to.rows, to.cols, D)
    Ok(f.reshape((n, to.len(), d))?.to_dtype(features.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_index_follows_hidden_states() {
        let c = |layer| ClipFeatureConfig {
            layer,
            ..Default::default()
        };
        assert_eq!(c(-1).block(12).unwrap(), 11);
        assert_eq!(c(-2).block(12).unwrap(), 10);
        assert_eq!(c(1).block(12).unwrap(), 0);
        assert_eq!(c(12).block(12).unwrap(), 11);
        for bad in [0, 13, -13] {
            let e = c(bad).block(12).unwrap_err().to_string();
            assert!(e.contains("clip.layer") && e.contains("1..=12"), "{e}");
        }
    }

    #[test]
    fn integer_ratio_is_average_pooling() {
        let dev = Device::Cpu;
        // 4 × 4 grid, D = 2: feature 0 is the row-major index, feature 1 its negative.
        let v: Vec<f32> = (0..16).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let f = Tensor::from_vec(v, (1, 16, 2), &dev).unwrap();
        let out = resample_grid(&f, PatchGrid::new(4, 4), PatchGrid::new(2, 2)).unwrap();
        let out = out.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        // block (0,0) = mean of 0,1,4,5 = 2.5; (0,1) = 4.5; (1,0) = 10.5; (1,1) = 12.5
        let want = [2.5f32, 4.5, 10.5, 12.5];
        for (row, w) in out.iter().zip(want) {
            assert_eq!(row, &vec![w, -w]);
        }
        let same = resample_grid(&f, PatchGrid::new(4, 4), PatchGrid::new(4, 4)).unwrap();
        assert_eq!(same.to_vec3::<f32>().unwrap(), f.to_vec3::<f32>().unwrap());
    }

    #[test]
    fn non_integer_ratio_weights_by_overlap() {
        // 3 cells onto 2: cell 0 covers [0, 1.5) → (1·x0 + 0.5·x1) / 1.5.
        let w = overlap_weights(3, 2);
        let want = [2. / 3., 1. / 3., 0., 0., 1. / 3., 2. / 3.];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        // 2 cells onto 3 (upsampling): the middle target straddles both halves.
        let w = overlap_weights(2, 3);
        let want = [1., 0., 0.5, 0.5, 0., 1.];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let f = Tensor::zeros((2, 5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = resample_grid(&f, PatchGrid::new(2, 2), PatchGrid::new(1, 1)).unwrap_err();
        assert!(e.to_string().contains("clip features"), "{e}");
    }

    #[test]
    fn config_round_trips_in_kebab_case() {
        let c = ClipFeatureConfig {
            layer: -2,
            norm: ClipFeatureNorm::Layernorm,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, r#"{"layer":-2,"norm":"layernorm"}"#);
        assert_eq!(serde_json::from_str::<ClipFeatureConfig>(&j).unwrap(), c);
        let d: ClipFeatureConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(d, ClipFeatureConfig::default());
    }
}
