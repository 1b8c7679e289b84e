//! Patchify and unpatchify in MAE's layout, for images and (with tubelets) video.
//!
//! An image (N, C, H, W) becomes (N, L, p*p*C) with `L = (H/p) * (W/p)` patches in row-major order and
//! the channel fastest inside a patch (MAE's `einsum('nchpwq->nhwpqc')`, also Hugging Face ViTMAE's
//! layout). A video (N, C, T, H, W) becomes (N, L, t*p*p*C) with `L = (T/t) * (H/p) * (W/p)` tubelets,
//! time slowest, and `(t, p, p, C)` inside a tubelet (VideoMAE's `b c (t p0) (h p1) (w p2) ->
//! b (t h w) (p0 p1 p2 c)`). Each direction is the other's backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::{invalid, Result};

const OP: &str = "patchify";

/// Sizes of a (video) patchify: input (N, C, T, H, W), tubelet `t` frames, patch `p` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PatchDims {
    pub n: usize,
    pub c: usize,
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub tubelet: usize,
    pub patch: usize,
}

impl PatchDims {
    fn new(
        n: usize,
        (c, t, h, w): (usize, usize, usize, usize),
        tubelet: usize,
        patch: usize,
    ) -> Result<Self> {
        if patch == 0 || tubelet == 0 {
            return Err(invalid(OP, "patch and tubelet sizes must be positive"));
        }
        if h % patch != 0 || w % patch != 0 || t % tubelet != 0 {
            return Err(invalid(
                OP,
                format!(
                    "frames x height x width {t}x{h}x{w} is not divisible into {tubelet}x{patch}x{patch} patches"
                ),
            ));
        }
        if c == 0 || h == 0 || w == 0 || t == 0 {
            return Err(invalid(
                OP,
                format!("empty input: C={c}, T={t}, H={h}, W={w}"),
            ));
        }
        Ok(Self {
            n,
            c,
            t,
            h,
            w,
            tubelet,
            patch,
        })
    }

    /// Number of patches (tubelets) per sample.
    pub fn tokens(&self) -> usize {
        (self.t / self.tubelet) * (self.h / self.patch) * (self.w / self.patch)
    }

    /// Values per patch.
    pub fn patch_len(&self) -> usize {
        self.tubelet * self.patch * self.patch * self.c
    }
}

/// (N, C, H, W) -> (N, L, p*p*C), differentiable.
pub fn patchify(images: &Tensor, patch: usize) -> Result<Tensor> {
    let (n, c, h, w) = images.dims4().map_err(|_| {
        invalid(
            OP,
            format!("images must be (N, C, H, W), got {:?}", images.shape()),
        )
    })?;
    let dims = PatchDims::new(n, (c, 1, h, w), 1, patch)?;
    let x = images.reshape((n, c, 1, h, w))?;
    Ok(crate::no_grad::finish(x.contiguous()?.apply_op1(
        Patch {
            dims,
            inverse: false,
        },
    )?))
}

/// (N, L, p*p*C) -> (N, C, H, W) for images of `channels` x `height` x `width`, differentiable.
pub fn unpatchify(
    patches: &Tensor,
    patch: usize,
    (channels, height, width): (usize, usize, usize),
) -> Result<Tensor> {
    let n = patches.dims().first().copied().unwrap_or(0);
    let dims = PatchDims::new(n, (channels, 1, height, width), 1, patch)?;
    let x = Patch::inverse(patches, dims)?;
    Ok(x.reshape((n, channels, height, width))?)
}

/// (N, C, T, H, W) -> (N, L, t*p*p*C) with tubelets of `tubelet` frames, differentiable.
pub fn patchify_video(videos: &Tensor, tubelet: usize, patch: usize) -> Result<Tensor> {
    let (n, c, t, h, w) = videos.dims5().map_err(|_| {
        invalid(
            OP,
            format!("videos must be (N, C, T, H, W), got {:?}", videos.shape()),
        )
    })?;
    let dims = PatchDims::new(n, (c, t, h, w), tubelet, patch)?;
    Ok(crate::no_grad::finish(videos.contiguous()?.apply_op1(
        Patch {
            dims,
            inverse: false,
        },
    )?))
}

/// (N, L, t*p*p*C) -> (N, C, T, H, W), differentiable; `shape` is (C, T, H, W).
pub fn unpatchify_video(
    patches: &Tensor,
    tubelet: usize,
    patch: usize,
    shape: (usize, usize, usize, usize),
) -> Result<Tensor> {
    let n = patches.dims().first().copied().unwrap_or(0);
    let dims = PatchDims::new(n, shape, tubelet, patch)?;
    Patch::inverse(patches, dims)
}

struct Patch {
    dims: PatchDims,
    /// false: pixels -> patches; true: patches -> pixels.
    inverse: bool,
}

impl Patch {
    fn inverse(patches: &Tensor, dims: PatchDims) -> Result<Tensor> {
        let want = Shape::from((dims.n, dims.tokens(), dims.patch_len()));
        if patches.shape() != &want {
            return Err(crate::error::shape_mismatch(
                "unpatchify",
                "patches (N, L, t*p*p*C) vs the shape the image size implies",
                patches.shape(),
                &want,
            ));
        }
        Ok(crate::no_grad::finish(patches.contiguous()?.apply_op1(
            Patch {
                dims,
                inverse: true,
            },
        )?))
    }

    fn out_shape(&self) -> Shape {
        let d = self.dims;
        if self.inverse {
            Shape::from((d.n, d.c, d.t, d.h, d.w))
        } else {
            Shape::from((d.n, d.tokens(), d.patch_len()))
        }
    }
}

/// Moves one sample between pixel order and patch order.
fn permute_sample<T: Copy + Send + Sync>(src: &[T], dst: &mut [T], d: &PatchDims, inverse: bool) {
    let (gh, gw) = (d.h / d.patch, d.w / d.patch);
    let (p, tt, c) = (d.patch, d.tubelet, d.c);
    let mut e = 0; // position in patch order
    for ti in 0..d.t / tt {
        for hi in 0..gh {
            for wi in 0..gw {
                for a in 0..tt {
                    for pi in 0..p {
                        for qi in 0..p {
                            let frame = ti * tt + a;
                            let (y, x) = (hi * p + pi, wi * p + qi);
                            for ch in 0..c {
                                let pix = ((ch * d.t + frame) * d.h + y) * d.w + x;
                                if inverse {
                                    dst[pix] = src[e];
                                } else {
                                    dst[e] = src[pix];
                                }
                                e += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn run<T: WithDType>(
    s: &CpuStorage,
    l: &Layout,
    d: &PatchDims,
    inverse: bool,
) -> candle_core::Result<CpuStorage> {
    let src = crate::cpu::slice::<T>(s, l, OP)?;
    let per = d.c * d.t * d.h * d.w;
    let mut dst = vec![T::zero(); src.len()];
    dst.par_chunks_mut(per.max(1))
        .zip(src.par_chunks(per.max(1)))
        .for_each(|(dst, src)| permute_sample(src, dst, d, inverse));
    Ok(T::to_cpu_storage_owned(dst))
}

impl CustomOp1 for Patch {
    fn name(&self) -> &'static str {
        if self.inverse {
            "unpatchify"
        } else {
            OP
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use half::{bf16, f16};
        let (d, inv) = (&self.dims, self.inverse);
        let out = match s {
            CpuStorage::F32(_) => run::<f32>(s, l, d, inv)?,
            CpuStorage::F64(_) => run::<f64>(s, l, d, inv)?,
            CpuStorage::BF16(_) => run::<bf16>(s, l, d, inv)?,
            CpuStorage::F16(_) => run::<f16>(s, l, d, inv)?,
            CpuStorage::U8(_) => run::<u8>(s, l, d, inv)?,
            CpuStorage::U32(_) => run::<u32>(s, l, d, inv)?,
            other => candle_core::bail!(
                "{}: unsupported dtype {:?}",
                self.name(),
                candle_core::backend::BackendStorage::dtype(other)
            ),
        };
        Ok((out, self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::patchify(s, l.start_offset(), &self.dims, self.inverse)?;
        Ok((out, self.out_shape()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let back = Patch {
            dims: self.dims,
            inverse: !self.inverse,
        };
        let g = grad.contiguous()?.apply_op1_no_bwd(&back)?;
        Ok(Some(g.reshape(arg.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn image_layout_is_mae_and_round_trips() {
        let x = randn(&[2, 3, 8, 12], 1);
        let p = patchify(&x, 4).unwrap();
        assert_eq!(p.dims(), &[2, 6, 48]);
        assert_eq!(
            max_abs_diff(&p, &crate::reference::patchify(&x, 4).unwrap()),
            0.0
        );
        // Patch 4 (row 1, col 1), pixel (1, 2) of the patch, channel 2: x[n, 2, 4 + 1, 4 + 2].
        let want = x
            .get(1)
            .unwrap()
            .get(2)
            .unwrap()
            .get(5)
            .unwrap()
            .get(6)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let got = p
            .get(1)
            .unwrap()
            .get(4)
            .unwrap()
            .get((4 + 2) * 3 + 2)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(want, got);
        let back = unpatchify(&p, 4, (3, 8, 12)).unwrap();
        assert_eq!(max_abs_diff(&x, &back), 0.0);
    }

    #[test]
    fn video_layout_matches_composition_and_round_trips() {
        let x = randn(&[2, 2, 4, 6, 6], 2);
        let p = patchify_video(&x, 2, 3).unwrap();
        assert_eq!(p.dims(), &[2, 8, 36]);
        assert_eq!(
            max_abs_diff(&p, &crate::reference::patchify_video(&x, 2, 3).unwrap()),
            0.0
        );
        let back = unpatchify_video(&p, 2, 3, (2, 4, 6, 6)).unwrap();
        assert_eq!(max_abs_diff(&x, &back), 0.0);
    }

    #[test]
    fn gradients() {
        let f = |t: &[Tensor]| patchify(&t[0].transpose(2, 3)?, 2).map_err(Into::into);
        assert_grads(f, &[randn(&[2, 3, 4, 6], 3)]);
        let g = |t: &[Tensor]| unpatchify(&t[0], 2, (1, 4, 2)).map_err(Into::into);
        assert_grads(g, &[randn(&[3, 2, 4], 4)]);
        let v = |t: &[Tensor]| patchify_video(&t[0], 2, 2).map_err(Into::into);
        assert_grads(v, &[randn(&[1, 2, 4, 2, 4], 5)]);
    }

    #[test]
    fn backward_matches_candle_composition() {
        assert_matches_reference(
            |t| patchify(&t[0], 4).map_err(Into::into),
            |t| crate::reference::patchify(&t[0], 4),
            &[randn(&[3, 3, 8, 16], 9)],
            1e-7,
        );
        assert_matches_reference(
            |t| patchify_video(&t[0], 2, 2).map_err(Into::into),
            |t| crate::reference::patchify_video(&t[0], 2, 2),
            &[randn(&[2, 3, 4, 4, 6], 10)],
            1e-7,
        );
    }

    #[test]
    fn rejects_indivisible_sizes() {
        let x = randn(&[1, 1, 7, 8], 1);
        let e = patchify(&x, 4).unwrap_err().to_string();
        assert!(e.contains("not divisible"), "{e}");
        let p = randn(&[1, 4, 16], 1);
        assert!(matches!(
            unpatchify(&p, 4, (1, 8, 12)),
            Err(crate::Error::ShapeMismatch { .. })
        ));
        assert!(patchify(&randn(&[3, 4], 1), 2).is_err());
    }
}
