//! Seeded, thread-count independent randomness.
//!
//! Every random draw in this crate (mask patterns, training timesteps, Gaussian noise,
//! sampler noise) comes from a ChaCha8 stream chosen by
//! `(seed, step, domain, sub-step, sample index)`: the seed and step come from the caller's
//! [`RngKey`], the domain separates the kinds of draw (so that the mask and the noise of one
//! step are independent), and each sample of a batch has its own stream. A sample's draws
//! therefore depend neither on the batch size nor on how many threads produce them.

use candle_core::{DType, Device, Shape, Tensor};
use dmae_core::rng::keyed_rng;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Identifies one batch's worth of randomness: the run's `seed` and the training `step`
/// (or epoch, or any counter the caller advances between batches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RngKey {
    /// The run's seed.
    pub seed: u64,
    /// The step (or epoch, or batch counter) within the run.
    pub step: u64,
}

/// Kinds of random draw; each gets an independent family of streams.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Domain {
    Mask = 1,
    Timestep = 2,
    Noise = 3,
    SamplerInit = 4,
    SamplerStep = 5,
}

impl RngKey {
    /// A key for `(seed, step)`.
    pub fn new(seed: u64, step: u64) -> Self {
        Self { seed, step }
    }

    /// The generator of sample `index` for draws of kind `domain` at sub-step `sub`
    /// (e.g. the sampler's timestep). The ChaCha key is derived from `(seed, step, domain, sub)`
    /// ([`dmae_core::rng::keyed_rng`]); the sample index is the ChaCha stream.
    pub(crate) fn rng(&self, domain: Domain, sub: u64, index: usize) -> ChaCha8Rng {
        let mut rng = keyed_rng(&[
            self.seed ^ 0x6469_6666_6d61_6521,
            self.step,
            domain as u64,
            sub,
        ]);
        rng.set_stream(index as u64);
        rng
    }
}

/// Fills `out` with independent standard normal draws (`rand_distr`'s ziggurat sampler).
pub(crate) fn fill_standard_normal(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    for v in out.iter_mut() {
        *v = rng.sample(StandardNormal);
    }
}

/// Standard normal noise `ε ~ N(0, I)` of `shape = (N, ...)` with sample `i` of the batch drawn
/// from its own stream (see the module docs), generated on the host, converted to `dtype` and
/// placed on `device`.
///
/// The same `(key, shape)` gives the same tensor on every device and thread count.
pub fn standard_normal(
    key: RngKey,
    shape: impl Into<Shape>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    normal_in(key, Domain::Noise, 0, shape.into(), dtype, device)
}

pub(crate) fn normal_in(
    key: RngKey,
    domain: Domain,
    sub: u64,
    shape: Shape,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let dims = shape.dims();
    let Some(&batch) = dims.first() else {
        return Err(Error::Shape {
            arg: "shape",
            expected: "at least one dimension (N, ...)".into(),
            got: dims.to_vec(),
        });
    };
    let per_sample: usize = dims[1..].iter().product();
    let mut data = vec![0f32; batch * per_sample];
    if per_sample > 0 {
        // One stream per sample, so the result does not depend on how rayon splits the work.
        data.par_chunks_mut(per_sample)
            .enumerate()
            .for_each(|(i, chunk)| fill_standard_normal(&mut key.rng(domain, sub, i), chunk));
    }
    Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_every_coordinate() {
        let k = RngKey::new(7, 3);
        let draw = |k: RngKey, d: Domain, sub: u64, i: usize| k.rng(d, sub, i).random::<u64>();
        let base = draw(k, Domain::Mask, 0, 0);
        assert_eq!(base, draw(k, Domain::Mask, 0, 0));
        assert_ne!(base, draw(RngKey::new(8, 3), Domain::Mask, 0, 0));
        assert_ne!(base, draw(RngKey::new(7, 4), Domain::Mask, 0, 0));
        assert_ne!(base, draw(k, Domain::Noise, 0, 0));
        assert_ne!(base, draw(k, Domain::Mask, 1, 0));
        assert_ne!(base, draw(k, Domain::Mask, 0, 1));
    }

    #[test]
    fn standard_normal_moments() {
        let mut rng = RngKey::new(1, 0).rng(Domain::Noise, 0, 0);
        let mut v = vec![0f32; 200_001];
        fill_standard_normal(&mut rng, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
        // Standard errors: mean 1/sqrt(n) ≈ 0.0022, var sqrt(2/n) ≈ 0.0032, kurtosis sqrt(24/n) ≈ 0.011.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
    }

    #[test]
    fn noise_does_not_depend_on_thread_count() -> Result<()> {
        let key = RngKey::new(2, 9);
        let draw = |threads: usize| -> Result<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::invalid("threads", "a thread pool", e))?;
            pool.install(|| {
                Ok(standard_normal(key, (16, 3, 7), DType::F32, &Device::Cpu)?
                    .flatten_all()?
                    .to_vec1()?)
            })
        };
        let one = draw(1)?;
        assert_eq!(one, draw(2)?);
        assert_eq!(one, draw(5)?);
        Ok(())
    }

    #[test]
    fn noise_of_a_sample_does_not_depend_on_batch_size() -> Result<()> {
        let key = RngKey::new(11, 5);
        let a = standard_normal(key, (2, 3, 5), DType::F32, &Device::Cpu)?;
        let b = standard_normal(key, (4, 3, 5), DType::F32, &Device::Cpu)?;
        let a1: Vec<f32> = a.get(1)?.flatten_all()?.to_vec1()?;
        let b1: Vec<f32> = b.get(1)?.flatten_all()?.to_vec1()?;
        assert_eq!(a1, b1);
        let b0: Vec<f32> = b.get(0)?.flatten_all()?.to_vec1()?;
        assert_ne!(a1, b0);
        Ok(())
    }
}
