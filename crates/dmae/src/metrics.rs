//! Inpainting and recognition metrics, as pure functions over host slices.
//!
//! Images are channel-planar `(C, H, W)` f32 slices with values in [0, 1] (data range 1);
//! region masks are `H x W` booleans (`true` = a masked, generated pixel), shared by every
//! channel. Every region metric returns `None` when the region is empty.
//!
//! | metric | definition |
//! |---|---|
//! | [`masked_mse`] / [`psnr`] | `MSE = mean over masked pixels and channels of (x − y)²`; `PSNR = 10 log10(1 / max(MSE, 1e-10))` dB |
//! | [`ssim_map`] / [`masked_ssim`] | SSIM (Wang et al. 2004, eq. 13) with an 11x11 Gaussian window, σ = 1.5, `C1 = 0.01²`, `C2 = 0.03²`, computed at **every pixel of the full image** (the window truncated at the border and renormalised), then averaged over the masked pixels and the channels |
//! | [`gradient_magnitude`] / [`masked_sharpness`] | `|∇I| = √(gx² + gy²)` with forward differences (0 past the last row/column), channel mean, averaged over the masked pixels |
//! | [`masked_frame_change`] | clips: `Σ |x_{f+1} − x_f|` (channel mean) over consecutive frame pairs and the pixels masked in both frames, with the number of such pixels (its mean is how much the generated region moves) |
//! | [`frechet_distance`] | `FD = |μ1 − μ2|² + tr(S1 + S2 − 2 (S1^½ S2 S1^½)^½)` (Dowson & Landau 1982; FID's formula) over feature sets, f64, symmetric square roots by Jacobi eigen-decomposition |
//! | [`top_k_hit`] | the label is among the `k` largest logits (ties resolved in the label's favour) |

/// SSIM constants for data range 1 (Wang et al.: `K1 = 0.01`, `K2 = 0.03`).
const SSIM_C1: f64 = 0.01 * 0.01;
const SSIM_C2: f64 = 0.03 * 0.03;
/// Gaussian window of SSIM: standard deviation and radius (11 x 11).
const SSIM_SIGMA: f64 = 1.5;
const SSIM_RADIUS: usize = 5;
/// Smallest MSE PSNR uses (caps identical images at 100 dB).
const MIN_MSE: f64 = 1e-10;

/// Mean squared error over the masked pixels of every channel of `(C, H, W)` images `x`, `y`.
pub fn masked_mse(x: &[f32], y: &[f32], mask: &[bool]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "masked_mse: images of different sizes");
    let hw = mask.len();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (xc, yc) in x.chunks(hw).zip(y.chunks(hw)) {
        for ((&a, &b), &m) in xc.iter().zip(yc).zip(mask) {
            if m {
                let d = f64::from(a) - f64::from(b);
                sum += d * d;
                count += 1;
            }
        }
    }
    (count > 0).then(|| sum / count as f64)
}

/// `PSNR = 10 log10(1 / max(mse, 1e-10))` in dB, for data range 1.
pub fn psnr(mse: f64) -> f64 {
    -10.0 * mse.max(MIN_MSE).log10()
}

/// The 1-D Gaussian window of SSIM at position `i` of a signal of length `n`: weights for
/// `i − r ..= i + r` clipped to `0..n`, renormalised to sum 1. Returns `(first index, weights)`.
fn window(i: usize, n: usize) -> (usize, Vec<f64>) {
    let lo = i.saturating_sub(SSIM_RADIUS);
    let hi = (i + SSIM_RADIUS).min(n - 1);
    let w: Vec<f64> = (lo..=hi)
        .map(|j| {
            let d = j as f64 - i as f64;
            (-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp()
        })
        .collect();
    let s: f64 = w.iter().sum();
    (lo, w.into_iter().map(|v| v / s).collect())
}

/// Separable weighted local mean of an `h x w` plane with [`window`].
fn blur(p: &[f64], h: usize, w: usize) -> Vec<f64> {
    let mut tmp = vec![0.0; h * w];
    for x in 0..w {
        let (lo, k) = window(x, w);
        for y in 0..h {
            tmp[y * w + x] = k
                .iter()
                .enumerate()
                .map(|(j, kv)| kv * p[y * w + lo + j])
                .sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        let (lo, k) = window(y, h);
        for x in 0..w {
            out[y * w + x] = k
                .iter()
                .enumerate()
                .map(|(j, kv)| kv * tmp[(lo + j) * w + x])
                .sum();
        }
    }
    out
}

/// The SSIM map of one `h x w` plane pair (Wang et al. 2004, eq. 13):
/// `((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))` with Gaussian-weighted
/// local statistics (11x11, σ = 1.5; the window truncated at the border and renormalised, so the
/// map has a value at every pixel).
pub fn ssim_map(x: &[f32], y: &[f32], h: usize, w: usize) -> Vec<f64> {
    assert_eq!(x.len(), h * w, "ssim_map: x is not h x w");
    assert_eq!(y.len(), h * w, "ssim_map: y is not h x w");
    let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let yf: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    let prod = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).collect::<Vec<_>>();
    let (mx, my) = (blur(&xf, h, w), blur(&yf, h, w));
    let (mxx, myy, mxy) = (
        blur(&prod(&xf, &xf), h, w),
        blur(&prod(&yf, &yf), h, w),
        blur(&prod(&xf, &yf), h, w),
    );
    (0..h * w)
        .map(|i| {
            let (ux, uy) = (mx[i], my[i]);
            let vx = (mxx[i] - ux * ux).max(0.0);
            let vy = (myy[i] - uy * uy).max(0.0);
            let cxy = mxy[i] - ux * uy;
            ((2.0 * ux * uy + SSIM_C1) * (2.0 * cxy + SSIM_C2))
                / ((ux * ux + uy * uy + SSIM_C1) * (vx + vy + SSIM_C2))
        })
        .collect()
}

/// Mean of [`ssim_map`] over the masked pixels of every channel of `(C, h, w)` images.
pub fn masked_ssim(x: &[f32], y: &[f32], mask: &[bool], h: usize, w: usize) -> Option<f64> {
    assert_eq!(mask.len(), h * w, "masked_ssim: mask is not h x w");
    let (mut sum, mut count) = (0.0, 0usize);
    for (xc, yc) in x.chunks(h * w).zip(y.chunks(h * w)) {
        for (s, &m) in ssim_map(xc, yc, h, w).iter().zip(mask) {
            if m {
                sum += s;
                count += 1;
            }
        }
    }
    (count > 0).then(|| sum / count as f64)
}

/// Per-pixel gradient magnitude `√(gx² + gy²)` of a `(C, h, w)` image, averaged over channels;
/// `gx = I(y, x+1) − I(y, x)`, `gy = I(y+1, x) − I(y, x)`, each 0 on the last column/row.
pub fn gradient_magnitude(img: &[f32], h: usize, w: usize) -> Vec<f64> {
    let c = img.len() / (h * w).max(1);
    let mut out = vec![0.0; h * w];
    for p in img.chunks(h * w) {
        for y in 0..h {
            for x in 0..w {
                let v = f64::from(p[y * w + x]);
                let gx = if x + 1 < w {
                    f64::from(p[y * w + x + 1]) - v
                } else {
                    0.0
                };
                let gy = if y + 1 < h {
                    f64::from(p[(y + 1) * w + x]) - v
                } else {
                    0.0
                };
                out[y * w + x] += (gx * gx + gy * gy).sqrt() / c as f64;
            }
        }
    }
    out
}

/// Mean [`gradient_magnitude`] over the masked pixels (the sharpness of the generated region).
pub fn masked_sharpness(img: &[f32], mask: &[bool], h: usize, w: usize) -> Option<f64> {
    let g = gradient_magnitude(img, h, w);
    let (sum, count) = g
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .fold((0.0, 0usize), |(s, n), (v, _)| (s + v, n + 1));
    (count > 0).then(|| sum / count as f64)
}

/// The frame-to-frame change of a clip inside its masked region: `(Σ |x_{f+1} − x_f|, pixels)`
/// over consecutive frames `(C, H, W)` and the pixels masked in both (channel mean). Comparing
/// the sample's mean with the truth's tells a frozen fill (below) from a flickering one (above).
pub fn masked_frame_change(
    frames: &[Vec<f32>],
    masks: &[Vec<bool>],
    h: usize,
    w: usize,
) -> (f64, usize) {
    let (mut sum, mut count) = (0.0, 0usize);
    for (pair, m) in frames.windows(2).zip(masks.windows(2)) {
        let c = pair[0].len() / (h * w).max(1);
        for p in 0..h * w {
            if !(m[0][p] && m[1][p]) {
                continue;
            }
            let d: f64 = (0..c)
                .map(|k| {
                    (f64::from(pair[1][k * h * w + p]) - f64::from(pair[0][k * h * w + p])).abs()
                })
                .sum();
            sum += d / c.max(1) as f64;
            count += 1;
        }
    }
    (sum, count)
}

/// The centre of mass `(row, col)` of a frame `(C, H, W)` inside its mask (intensity, channel
/// mean, negatives as 0); `None` when the masked region holds less than one full pixel of ink.
fn masked_centroid(frame: &[f32], mask: &[bool], h: usize, w: usize) -> Option<(f64, f64)> {
    let c = frame.len() / (h * w).max(1);
    let (mut mass, mut row, mut col) = (0.0, 0.0, 0.0);
    for p in (0..h * w).filter(|&p| mask[p]) {
        let v: f64 = (0..c)
            .map(|k| f64::from(frame[k * h * w + p]).max(0.0))
            .sum::<f64>()
            / c.max(1) as f64;
        mass += v;
        row += v * (p / w) as f64;
        col += v * (p % w) as f64;
    }
    (mass >= 1.0).then(|| (row / mass, col / mass))
}

/// How far a clip's sample strays from the truth's motion inside the masked region:
/// `(Σ ‖Δc_sample − Δc_truth‖, Σ ‖Δc_sample‖, Σ ‖Δc_truth‖, pairs)` over consecutive frames that are both
/// masked, where `Δc` is the step of the centre of mass (pixels) from one frame to the next.
/// A fill that stands still errs by exactly the truth's step, so the error over the truth's
/// step reads 0 = moves along the truth's track, 1 = no better than standing still; unlike
/// [`masked_frame_change`], flicker without displacement does not count as motion.
pub fn masked_motion_error(
    sample: &[Vec<f32>],
    truth: &[Vec<f32>],
    masks: &[Vec<bool>],
    h: usize,
    w: usize,
) -> MotionSums {
    let centroids = |frames: &[Vec<f32>]| -> Vec<Option<(f64, f64)>> {
        frames
            .iter()
            .zip(masks)
            .map(|(f, m)| masked_centroid(f, m, h, w))
            .collect()
    };
    let (cs, ct) = (centroids(sample), centroids(truth));
    let mut sums = MotionSums::default();
    for f in 1..masks.len().min(cs.len()).min(ct.len()) {
        let (Some(s0), Some(s1), Some(t0), Some(t1)) = (cs[f - 1], cs[f], ct[f - 1], ct[f]) else {
            continue;
        };
        let (ds, dt) = ((s1.0 - s0.0, s1.1 - s0.1), (t1.0 - t0.0, t1.1 - t0.1));
        sums.error += (ds.0 - dt.0).hypot(ds.1 - dt.1);
        sums.sample_step += ds.0.hypot(ds.1);
        sums.truth_step += dt.0.hypot(dt.1);
        sums.pairs += 1;
    }
    sums
}

/// Sums of [`masked_motion_error`] (pixels) and the number of frame pairs they cover.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MotionSums {
    /// Σ ‖Δc_sample − Δc_truth‖.
    pub error: f64,
    /// Σ ‖Δc_sample‖: how far the fill's centre of mass moves.
    pub sample_step: f64,
    /// Σ ‖Δc_truth‖.
    pub truth_step: f64,
    /// Frame pairs.
    pub pairs: usize,
}

impl std::ops::AddAssign for MotionSums {
    fn add_assign(&mut self, other: Self) {
        self.error += other.error;
        self.sample_step += other.sample_step;
        self.truth_step += other.truth_step;
        self.pairs += other.pairs;
    }
}

/// Whether `label` is among the `k` largest `logits`: fewer than `k` logits are strictly
/// greater than the label's.
pub fn top_k_hit(logits: &[f32], label: usize, k: usize) -> bool {
    match logits.get(label) {
        Some(&l) => logits.iter().filter(|&&v| v > l).count() < k,
        None => false,
    }
}

/// Mean `(d)` and unbiased covariance `(d x d)`, row-major, of `n` feature rows of length `d`
/// (`features.len() == n·d`, `n >= 2`).
pub fn mean_cov(features: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = features.len() / d;
    assert!(
        n >= 2 && n * d == features.len(),
        "mean_cov: need n >= 2 rows of length d"
    );
    let mut mu = vec![0.0; d];
    for row in features.chunks(d) {
        for (m, v) in mu.iter_mut().zip(row) {
            *m += v / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in features.chunks(d) {
        for i in 0..d {
            let a = row[i] - mu[i];
            for j in i..d {
                cov[i * d + j] += a * (row[j] - mu[j]);
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mu, cov)
}

/// Eigen-decomposition of a symmetric `d x d` matrix (row-major) by the cyclic Jacobi method:
/// returns `(eigenvalues, V)` with `A = V diag(λ) Vᵀ`, eigenvectors in V's columns.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                // Rotation zeroing a[p][q] (Golub & Van Loan, Algorithm 8.4.1).
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The symmetric positive semi-definite square root `A^½ = V diag(√max(λ, 0)) Vᵀ` of a symmetric
/// matrix (negative round-off eigenvalues clamped to 0).
pub fn sqrtm_psd(a: &[f64], d: usize) -> Vec<f64> {
    let (lam, v) = symmetric_eigen(a, d);
    let s: Vec<f64> = lam.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let x: f64 = (0..d).map(|k| v[i * d + k] * s[k] * v[j * d + k]).sum();
            out[i * d + j] = x;
            out[j * d + i] = x;
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// The Fréchet distance between the Gaussians `N(μ1, S1)` and `N(μ2, S2)`:
/// `|μ1 − μ2|² + tr(S1) + tr(S2) − 2 tr((S1^½ S2 S1^½)^½)` (the symmetric form of FID's
/// `tr((S1 S2)^½)`, equal to it and computable with symmetric eigen-decompositions only).
pub fn frechet_distance_gaussians(mu1: &[f64], s1: &[f64], mu2: &[f64], s2: &[f64]) -> f64 {
    let d = mu1.len();
    let dm: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let r1 = sqrtm_psd(s1, d);
    let m = matmul(&matmul(&r1, s2, d), &r1, d);
    // Symmetrise against round-off before the second decomposition.
    let mut sym = m.clone();
    for i in 0..d {
        for j in 0..d {
            sym[i * d + j] = 0.5 * (m[i * d + j] + m[j * d + i]);
        }
    }
    let (lam, _) = symmetric_eigen(&sym, d);
    let tr_sqrt: f64 = lam.iter().map(|l| l.max(0.0).sqrt()).sum();
    let tr = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    (dm + tr(s1) + tr(s2) - 2.0 * tr_sqrt).max(0.0)
}

/// [`frechet_distance_gaussians`] of the Gaussians fitted ([`mean_cov`]) to two feature sets of
/// `d`-dimensional rows (each at least 2 rows).
pub fn frechet_distance(a: &[f64], b: &[f64], d: usize) -> f64 {
    let (m1, s1) = mean_cov(a, d);
    let (m2, s2) = mean_cov(b, d);
    frechet_distance_gaussians(&m1, &s1, &m2, &s2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-0.5, 0.5) (a small LCG; no test RNG crate).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// A digit-like square that moves 2 px right per frame: the truth itself scores 0, a copy
    /// that stands still scores exactly the truth's step, one moving the other way twice that,
    /// and frames without ink (or without masked pixels) are skipped.
    #[test]
    fn motion_error_follows_the_centre_of_mass() {
        let (h, w) = (12, 12);
        let square = |left: usize| -> Vec<f32> {
            (0..h * w)
                .map(|p| {
                    f32::from(u8::from(
                        (3..7).contains(&(p / w)) && (left..left + 3).contains(&(p % w)),
                    ))
                })
                .collect()
        };
        let moving: Vec<Vec<f32>> = (0..4).map(|f| square(1 + 2 * f)).collect();
        let still: Vec<Vec<f32>> = (0..4).map(|_| square(1)).collect();
        let back: Vec<Vec<f32>> = (0..4).map(|f| square(7 - 2 * f)).collect();
        // Frame 0 visible (no masked pixels), frames 1-3 masked everywhere: pairs (1,2), (2,3).
        let mut masks = vec![vec![true; h * w]; 4];
        masks[0] = vec![false; h * w];
        let m = masked_motion_error(&moving, &moving, &masks, h, w);
        assert_eq!((m.pairs, m.error), (2, 0.0));
        assert!((m.truth_step - 4.0).abs() < 1e-9, "{m:?}");
        assert!((m.sample_step - 4.0).abs() < 1e-9, "{m:?}");
        let m = masked_motion_error(&still, &moving, &masks, h, w);
        assert!(
            (m.error - 4.0).abs() < 1e-9 && m.sample_step == 0.0,
            "{m:?}"
        );
        let m = masked_motion_error(&back, &moving, &masks, h, w);
        assert!(
            (m.error - 8.0).abs() < 1e-9 && (m.sample_step - 4.0).abs() < 1e-9,
            "{m:?}"
        );
        let empty = vec![vec![0.0f32; h * w]; 4];
        assert_eq!(masked_motion_error(&empty, &moving, &masks, h, w).pairs, 0);
    }

    #[test]
    fn psnr_of_a_known_mse() {
        let x = vec![0.5f32; 8];
        let mut y = x.clone();
        y[0] = 0.6;
        y[1] = 0.4; // two of four masked pixels off by 0.1: MSE = 0.02 / 4 = 0.005
        let mask = [true, true, true, true, false, false, false, false];
        let mse = masked_mse(&x, &y, &mask).unwrap();
        assert!((mse - 0.005).abs() < 1e-9, "{mse}");
        assert!((psnr(mse) - 10.0 * (1.0f64 / 0.005).log10()).abs() < 1e-5);
        assert!((psnr(0.01) - 20.0).abs() < 1e-12);
        assert_eq!(psnr(0.0), 100.0);
        assert!(masked_mse(&x, &y, &[false; 8]).is_none());
    }

    #[test]
    fn ssim_is_one_on_identical_images_and_falls_with_noise() {
        let (h, w) = (16, 20);
        let base: Vec<f32> = (0..h * w)
            .map(|i| ((i % w) as f32 / w as f32 + (i / w) as f32 / h as f32) / 2.0)
            .collect();
        let mask = vec![true; h * w];
        let s0 = masked_ssim(&base, &base, &mask, h, w).unwrap();
        assert!((s0 - 1.0).abs() < 1e-12, "{s0}");
        let nz = noise(h * w, 3);
        let mut last = s0;
        for amp in [0.05f32, 0.2, 0.5] {
            let y: Vec<f32> = base.iter().zip(&nz).map(|(b, n)| b + amp * n).collect();
            let s = masked_ssim(&base, &y, &mask, h, w).unwrap();
            assert!(
                s < last && s > -1.0 && s <= 1.0,
                "amp {amp}: {s} after {last}"
            );
            last = s;
        }
        // Constant images: SSIM reduces to the luminance term (2ab + C1) / (a² + b² + C1).
        let (a, b) = (0.2f32, 0.6f32);
        let s = ssim_map(&[a; 9], &[b; 9], 3, 3);
        let want = (2.0 * 0.2 * 0.6 + SSIM_C1) / (0.04 + 0.36 + SSIM_C1);
        assert!(s.iter().all(|v| (v - want).abs() < 1e-6), "{s:?} vs {want}");
    }

    #[test]
    fn sharpness_of_a_step_edge() {
        // A vertical step 0 -> 1 between columns 1 and 2 of a 3 x 4 image.
        let img: Vec<f32> = (0..12)
            .map(|i| if i % 4 >= 2 { 1.0 } else { 0.0 })
            .collect();
        let g = gradient_magnitude(&img, 3, 4);
        assert_eq!(g[1], 1.0);
        assert_eq!(g[0] + g[2] + g[3], 0.0);
        let mask: Vec<bool> = (0..12).map(|i| i % 4 <= 1).collect();
        assert_eq!(masked_sharpness(&img, &mask, 3, 4), Some(0.5));
        assert_eq!(masked_sharpness(&[0.3; 12], &mask, 3, 4), Some(0.0));
    }

    #[test]
    fn frame_change_counts_pixels_masked_in_both_frames() {
        // 1 channel, 1 x 2 pixels, 3 frames; pixel 0 masked in frames 0-1, pixel 1 in all.
        let frames = vec![vec![0.0, 0.0], vec![0.5, 1.0], vec![0.5, 0.25]];
        let masks = vec![vec![true, true], vec![true, true], vec![false, true]];
        let (sum, n) = masked_frame_change(&frames, &masks, 1, 2);
        assert_eq!(n, 3);
        assert!((sum - (0.5 + 1.0 + 0.75)).abs() < 1e-12);
        assert_eq!(
            masked_frame_change(&frames[..1], &masks[..1], 1, 2),
            (0.0, 0)
        );
    }

    #[test]
    fn top_k() {
        let l = [0.1f32, 2.0, 0.5, -1.0];
        assert!(top_k_hit(&l, 1, 1));
        assert!(!top_k_hit(&l, 2, 1));
        assert!(top_k_hit(&l, 2, 2));
        assert!(!top_k_hit(&l, 3, 3));
        assert!(top_k_hit(&l, 3, 4));
        assert!(!top_k_hit(&l, 9, 4));
    }

    #[test]
    fn jacobi_reconstructs_a_symmetric_matrix() {
        let d = 5;
        let r = noise(d * d, 11);
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = f64::from(r[i * d + j] + r[j * d + i]);
            }
        }
        let (lam, v) = symmetric_eigen(&a, d);
        for i in 0..d {
            for j in 0..d {
                let x: f64 = (0..d).map(|k| v[i * d + k] * lam[k] * v[j * d + k]).sum();
                assert!((x - a[i * d + j]).abs() < 1e-10);
            }
        }
        let spd = matmul(&a, &a, d);
        let root = sqrtm_psd(&spd, d);
        let back = matmul(&root, &root, d);
        for (x, y) in back.iter().zip(&spd) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn frechet_distance_closed_forms() {
        // 1-D: (m1 - m2)² + (σ1 - σ2)².
        let fd = frechet_distance_gaussians(&[1.0], &[4.0], &[3.0], &[9.0]);
        assert!((fd - (4.0 + 1.0)).abs() < 1e-12, "{fd}");
        // Diagonal: the sum over dimensions.
        let s1 = [1.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.25];
        let s2 = [9.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.25];
        let fd = frechet_distance_gaussians(&[0.0, 1.0, 0.0], &s1, &[1.0, 1.0, 2.0], &s2);
        let want = (1.0 + 4.0) + (4.0 + 1.0 + 0.0);
        assert!((fd - want).abs() < 1e-10, "{fd} vs {want}");
        // Commuting non-diagonal covariances R D Rᵀ: Σ (√d1 − √d2)².
        let (c, s) = (0.6f64, 0.8f64);
        let rot = |d: [f64; 2]| {
            [
                c * c * d[0] + s * s * d[1],
                c * s * (d[0] - d[1]),
                c * s * (d[0] - d[1]),
                s * s * d[0] + c * c * d[1],
            ]
        };
        let fd =
            frechet_distance_gaussians(&[0.0; 2], &rot([4.0, 1.0]), &[0.0; 2], &rot([1.0, 9.0]));
        assert!((fd - (1.0 + 4.0)).abs() < 1e-10, "{fd}");
        // Identical feature sets: 0.
        let f: Vec<f64> = noise(40 * 4, 5).iter().map(|&v| f64::from(v)).collect();
        assert!(frechet_distance(&f, &f, 4).abs() < 1e-9);
        // A shifted set: the squared shift (covariances equal).
        let g: Vec<f64> = f.iter().map(|v| v + 0.5).collect();
        assert!((frechet_distance(&f, &g, 4) - 4.0 * 0.25).abs() < 1e-9);
    }
}
