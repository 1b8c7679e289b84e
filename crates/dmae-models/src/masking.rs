//! Token index sets the networks take: which patches the encoder sees, which the decoder
//! predicts, and how to put them back in order.

use candle_core::{DType, Device, Tensor};
use dmae_diffusion::MaskIndices;

use crate::error::{check_shape, Error, Result};

/// `visible (N, Lv)`, `masked (N, Lm)`, `ids_restore (N, L)`, all u32 on one device, with
/// `gather(concat(x_v, x_m), ids_restore) = x`.
///
/// Built from a [`MaskIndices`] (dmae-diffusion's masks, ascending order) or from a masking noise
/// tensor ([`TokenMask::from_noise`], Hugging Face ViTMAE's `random_masking`, shuffled order).
#[derive(Clone, Debug)]
pub struct TokenMask {
    /// Visible patch indices, in the order the encoder sees them.
    pub visible: Tensor,
    /// Masked patch indices, in the order the decoder outputs them.
    pub masked: Tensor,
    /// Inverse of `concat(visible, masked)`.
    pub ids_restore: Tensor,
}

impl From<&MaskIndices> for TokenMask {
    fn from(m: &MaskIndices) -> Self {
        Self {
            visible: m.visible().clone(),
            masked: m.masked().clone(),
            ids_restore: m.ids_restore().clone(),
        }
    }
}

impl TokenMask {
    /// MAE / Hugging Face `random_masking` with explicit noise `(N, L)`: `ids_shuffle =
    /// argsort(noise)` (ascending, ties by index), keep the first `floor(L (1 - ratio))`.
    /// Also returns MAE's binary mask `(N, L)` f32 (1 = masked).
    pub fn from_noise(noise: &Tensor, mask_ratio: f64) -> Result<(Self, Tensor)> {
        let (n, l) = noise
            .dims2()
            .map_err(|_| Error::shape("noise", &[usize::MAX, usize::MAX], noise.dims()))?;
        if !(0.0..1.0).contains(&mask_ratio) {
            return Err(Error::arg(
                "mask_ratio",
                format!("{mask_ratio} not in [0, 1)"),
            ));
        }
        let keep = (l as f64 * (1.0 - mask_ratio)) as usize;
        let rows = noise.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let (mut vis, mut msk, mut restore, mut mask) =
            (Vec::new(), Vec::new(), vec![0u32; n * l], vec![0f32; n * l]);
        for (i, row) in rows.iter().enumerate() {
            let mut ids: Vec<usize> = (0..l).collect();
            ids.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
            for (j, &id) in ids.iter().enumerate() {
                restore[i * l + id] = j as u32;
                if j < keep {
                    vis.push(id as u32);
                } else {
                    msk.push(id as u32);
                    mask[i * l + id] = 1.0;
                }
            }
        }
        let dev = noise.device();
        Ok((
            Self {
                visible: Tensor::from_vec(vis, (n, keep), dev)?,
                masked: Tensor::from_vec(msk, (n, l - keep), dev)?,
                ids_restore: Tensor::from_vec(restore, (n, l), dev)?,
            },
            Tensor::from_vec(mask, (n, l), dev)?,
        ))
    }

    /// Every patch visible, none masked (classification, feature extraction).
    pub fn all_visible(n: usize, l: usize, device: &Device) -> Result<Self> {
        let ids: Vec<u32> = (0..n).flat_map(|_| 0..l as u32).collect();
        let ids = Tensor::from_vec(ids, (n, l), device)?;
        Ok(Self {
            visible: ids.clone(),
            masked: Tensor::zeros((n, 0), DType::U32, device)?,
            ids_restore: ids,
        })
    }

    /// Samples `start..start + len` of the batch (views, no copies).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            visible: self.visible.narrow(0, start, len)?,
            masked: self.masked.narrow(0, start, len)?,
            ids_restore: self.ids_restore.narrow(0, start, len)?,
        })
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.visible.dims().first().copied().unwrap_or(0)
    }

    /// `(N, Lv, Lm, L)`.
    pub(crate) fn sizes(&self) -> Result<(usize, usize, usize, usize)> {
        let (n, lv) = self.visible.dims2()?;
        let (n2, lm) = self.masked.dims2()?;
        let (n3, l) = self.ids_restore.dims2()?;
        if n2 != n || n3 != n || lv + lm != l {
            return Err(Error::shape(
                "masking.masked",
                &[n, l - lv.min(l)],
                &[n2, lm],
            ));
        }
        Ok((n, lv, lm, l))
    }

    /// Checks the sets against a model of `l` patches.
    pub(crate) fn check(&self, l: usize) -> Result<(usize, usize, usize)> {
        let (n, lv, lm, l2) = self.sizes()?;
        check_shape("masking.ids_restore", &self.ids_restore, &[n, l])?;
        let _ = l2;
        Ok((n, lv, lm))
    }
}
