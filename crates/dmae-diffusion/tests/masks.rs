//! Property tests of the mask strategies: partitions, exact counts, ids_restore, tubes, seeds.

use candle_core::{DType, Device, Tensor};
use dmae_diffusion::{
    BlockWise, Error, MaskIndices, MaskStrategy, PatchGrid, PatchMask, ResizeRule, RngKey,
    VideoGrid, VideoMaskStrategy,
};
use proptest::prelude::*;

type TestResult = std::result::Result<(), TestCaseError>;

fn ok<T>(r: dmae_diffusion::Result<T>) -> std::result::Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Checks every invariant of `MaskIndices` against its host masks, with `expected_masked`
/// masked patches per sample.
fn check_indices(mi: &MaskIndices, n: usize, l: usize, expected_masked: usize) -> TestResult {
    let vis = ok(mi.visible().to_vec2::<u32>().map_err(Error::from))?;
    let msk = ok(mi.masked().to_vec2::<u32>().map_err(Error::from))?;
    let restore = ok(mi.ids_restore().to_vec2::<u32>().map_err(Error::from))?;
    let shuffle = ok(ok(mi.ids_shuffle())?.to_vec2::<u32>().map_err(Error::from))?;
    prop_assert_eq!(mi.batch_size(), n);
    prop_assert_eq!(mi.num_tokens(), l);
    prop_assert_eq!(mi.num_masked(), expected_masked);
    prop_assert_eq!(mi.num_visible(), l - expected_masked);
    prop_assert_eq!(mi.masked().dims(), &[n, expected_masked]);
    prop_assert_eq!(mi.visible().dims(), &[n, l - expected_masked]);
    for i in 0..n {
        // The two sets partition 0..L: together they are a permutation of 0..L.
        let mut all: Vec<u32> = vis[i].iter().chain(&msk[i]).copied().collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..l as u32).collect::<Vec<_>>());
        prop_assert!(vis[i].windows(2).all(|w| w[0] < w[1]));
        prop_assert!(msk[i].windows(2).all(|w| w[0] < w[1]));
        // The host masks agree with the index sets.
        for &j in &msk[i] {
            prop_assert!(mi.masks()[i][j as usize]);
        }
        for &j in &vis[i] {
            prop_assert!(!mi.masks()[i][j as usize]);
        }
        // ids_restore inverts the shuffle, both ways round.
        for (pos, &j) in shuffle[i].iter().enumerate() {
            prop_assert_eq!(restore[i][j as usize] as usize, pos);
        }
        for j in 0..l {
            prop_assert_eq!(shuffle[i][restore[i][j] as usize] as usize, j);
        }
    }
    Ok(())
}

/// Tensor-level check: split then merge is the identity, and split picks the right rows.
fn check_split_merge(mi: &MaskIndices, n: usize, l: usize) -> TestResult {
    let d = 3;
    let data: Vec<f32> = (0..n * l * d).map(|v| v as f32).collect();
    let x = ok(Tensor::from_vec(data, (n, l, d), &Device::Cpu).map_err(Error::from))?;
    let (xv, xm) = ok(mi.split(&x))?;
    let back = ok(mi.merge(&xv, &xm))?;
    let a = ok(x.to_vec3::<f32>().map_err(Error::from))?;
    prop_assert_eq!(&a, &ok(back.to_vec3::<f32>().map_err(Error::from))?);
    let msk = ok(mi.masked().to_vec2::<u32>().map_err(Error::from))?;
    let xm = ok(xm.to_vec3::<f32>().map_err(Error::from))?;
    for i in 0..n {
        for (k, &j) in msk[i].iter().enumerate() {
            prop_assert_eq!(&xm[i][k], &a[i][j as usize]);
        }
    }
    Ok(())
}

/// MAE's masked count: `L − int(L (1 − r))`, with the crate's 1e-9 guard.
fn mae_count(r: f64, l: usize) -> usize {
    l - (l as f64 * (1.0 - r) + 1e-9).floor() as usize
}

fn ratio() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(0.75), Just(0.9), 0.0..0.999f64]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_masks_partition_with_exact_count(
        rows in 1usize..16, cols in 1usize..16, n in 1usize..5, r in ratio(), seed in any::<u64>(),
    ) {
        let grid = PatchGrid::new(rows, cols);
        let l = grid.len();
        let s = ok(MaskStrategy::random(r))?;
        let mi = ok(s.sample(grid, n, RngKey::new(seed, 0), &Device::Cpu))?;
        let expected = mae_count(r, l);
        prop_assert_eq!(ok(s.num_masked(grid))?, expected);
        check_indices(&mi, n, l, expected)?;
        check_split_merge(&mi, n, l)?;
    }

    #[test]
    fn block_wise_masks_partition_with_exact_count(
        rows in 2usize..16, cols in 2usize..16, n in 1usize..4, r in ratio(), seed in any::<u64>(),
        min_block in 1usize..20,
    ) {
        let grid = PatchGrid::new(rows, cols);
        let l = grid.len();
        let s = MaskStrategy::BlockWise(BlockWise { min_block_patches: min_block, ..BlockWise::new(r) });
        let mi = ok(s.sample(grid, n, RngKey::new(seed, 1), &Device::Cpu))?;
        check_indices(&mi, n, l, mae_count(r, l))?;
    }

    #[test]
    fn center_masks_are_centered_rectangles(
        rows in 1usize..16, cols in 1usize..16, n in 1usize..3, r in ratio(),
    ) {
        let grid = PatchGrid::new(rows, cols);
        let s = ok(MaskStrategy::center_block(r))?;
        let count = ok(s.num_masked(grid))?;
        let mi = ok(s.sample(grid, n, RngKey::default(), &Device::Cpu))?;
        check_indices(&mi, n, grid.len(), count)?;
        // Bounding box of the masked patches is filled and centered.
        let m = &mi.masks()[0];
        let cells: Vec<(usize, usize)> =
            (0..grid.len()).filter(|&j| m[j]).map(|j| (j / cols, j % cols)).collect();
        if let (Some(r0), Some(r1)) = (cells.iter().map(|c| c.0).min(), cells.iter().map(|c| c.0).max()) {
            let c0 = cells.iter().map(|c| c.1).min().unwrap_or(0);
            let c1 = cells.iter().map(|c| c.1).max().unwrap_or(0);
            prop_assert_eq!((r1 - r0 + 1) * (c1 - c0 + 1), count);
            prop_assert!(r0.abs_diff(rows - 1 - r1) <= 1);
            prop_assert!(c0.abs_diff(cols - 1 - c1) <= 1);
            // Area fraction rounded to whole patches per side: within one row/column of the target.
            let side = r.sqrt();
            prop_assert!(((r1 - r0 + 1) as f64 - rows as f64 * side).abs() <= 0.5 + 1e-9);
            prop_assert!(((c1 - c0 + 1) as f64 - cols as f64 * side).abs() <= 0.5 + 1e-9);
        } else {
            prop_assert_eq!(count, 0);
        }
        // Same for every sample.
        prop_assert!(mi.masks().iter().all(|x| x == m));
    }

    #[test]
    fn tube_masks_equal_across_frames(
        frames in 1usize..6, rows in 1usize..8, cols in 1usize..8, n in 1usize..4, r in ratio(),
        seed in any::<u64>(), blocky in any::<bool>(),
    ) {
        let grid = VideoGrid::new(frames, rows, cols);
        let spatial = if blocky {
            ok(MaskStrategy::block_wise(r))?
        } else {
            ok(MaskStrategy::random(r))?
        };
        let hw = rows * cols;
        let spatial_count = mae_count(r, hw);
        let s = VideoMaskStrategy::Tube(spatial);
        prop_assert_eq!(ok(s.num_masked(grid))?, frames * spatial_count);
        let mi = ok(s.sample(grid, n, RngKey::new(seed, 2), &Device::Cpu))?;
        check_indices(&mi, n, grid.len(), frames * spatial_count)?;
        for m in mi.masks() {
            for t in 1..frames {
                prop_assert_eq!(&m[t * hw..(t + 1) * hw], &m[..hw]);
            }
        }
    }

    #[test]
    fn random_space_time_masks_partition(
        frames in 1usize..6, rows in 1usize..8, cols in 1usize..8, n in 1usize..4, r in ratio(),
        seed in any::<u64>(),
    ) {
        let grid = VideoGrid::new(frames, rows, cols);
        let s = ok(VideoMaskStrategy::random_space_time(r))?;
        let mi = ok(s.sample(grid, n, RngKey::new(seed, 3), &Device::Cpu))?;
        check_indices(&mi, n, grid.len(), mae_count(r, grid.len()))?;
    }

    #[test]
    fn seeds_reproduce_and_samples_do_not_depend_on_batch_size(
        seed in any::<u64>(), step in any::<u64>(), which in 0usize..4,
    ) {
        let grid = PatchGrid::new(14, 14);
        let s = match which {
            0 => ok(MaskStrategy::random(0.75))?,
            1 => ok(MaskStrategy::block_wise(0.4))?,
            2 => ok(MaskStrategy::random(0.5))?,
            _ => ok(MaskStrategy::block_wise(0.6))?,
        };
        let key = RngKey::new(seed, step);
        let a = ok(s.sample(grid, 3, key, &Device::Cpu))?;
        let b = ok(s.sample(grid, 5, key, &Device::Cpu))?;
        prop_assert_eq!(a.masks(), &b.masks()[..3]);
        // Another step or seed gives another mask (a collision of 147-of-196 subsets is
        // astronomically unlikely).
        let c = ok(s.sample(grid, 3, RngKey::new(seed, step.wrapping_add(1)), &Device::Cpu))?;
        let d = ok(s.sample(grid, 3, RngKey::new(seed.wrapping_add(1), step), &Device::Cpu))?;
        prop_assert_ne!(a.masks(), c.masks());
        prop_assert_ne!(a.masks(), d.masks());
        // Samples within a batch differ from each other.
        prop_assert_ne!(&a.masks()[0], &a.masks()[1]);
    }
}

#[test]
fn random_masks_are_uniform_over_positions() -> dmae_diffusion::Result<()> {
    // Each of 16 positions is masked with probability 0.25; over 4000 samples each count is
    // Binomial(4000, 0.25): mean 1000, sd ≈ 27.4. Allow 5 sd.
    let grid = PatchGrid::new(4, 4);
    let mi = MaskStrategy::random(0.25)?.sample(grid, 4000, RngKey::new(9, 9), &Device::Cpu)?;
    let mut counts = [0usize; 16];
    for m in mi.masks() {
        for (j, &b) in m.iter().enumerate() {
            counts[j] += b as usize;
        }
    }
    for c in counts {
        assert!((c as f64 - 1000.0).abs() < 137.0, "counts {counts:?}");
    }
    Ok(())
}

#[test]
fn mae_setting_counts() -> dmae_diffusion::Result<()> {
    // ViT-B/16 at 224: 196 patches, 75% masked -> 147 masked, 49 visible (as MAE).
    let grid = PatchGrid::for_image(224, 224, 16)?;
    let mi = MaskStrategy::random(0.75)?.sample(grid, 2, RngKey::new(0, 0), &Device::Cpu)?;
    assert_eq!((mi.num_visible(), mi.num_masked()), (49, 147));
    // MAE-ST video: 8 x 14 x 14 tokens, 90% masked -> 1412 of 1568 (MAE-ST keeps int(156.8) = 156).
    let v = VideoGrid::new(8, 14, 14);
    let mi =
        VideoMaskStrategy::random_space_time(0.9)?.sample(v, 1, RngKey::new(0, 0), &Device::Cpu)?;
    assert_eq!(mi.num_masked(), 1412);
    assert_eq!(
        mi.mask_tensor(DType::F32)?.sum_all()?.to_scalar::<f32>()?,
        1412.0
    );
    Ok(())
}

#[test]
fn fixed_masks_from_pixels_apply_to_every_sample() -> dmae_diffusion::Result<()> {
    // A 32 x 48 pixel mask with a hole covering x in 20..30, y in 5..12 onto a 4 x 6 grid of
    // 8 x 8 patches: rows 0..2 (y 0..16), columns 2..4 (x 16..32) are touched.
    let (h, w) = (32, 48);
    let px: Vec<f32> = (0..h * w)
        .map(|k| {
            let (y, x) = (k / w, k % w);
            if (5..12).contains(&y) && (20..30).contains(&x) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let grid = PatchGrid::new(4, 6);
    let any = PatchMask::from_pixels(&px, h, w, grid, ResizeRule::Any)?;
    let expect: Vec<u32> = vec![2, 3, 8, 9];
    let mi = MaskStrategy::Fixed(any.clone()).sample(grid, 3, RngKey::new(1, 2), &Device::Cpu)?;
    for row in mi.masked().to_vec2::<u32>()? {
        assert_eq!(row, expect);
    }
    // Majority: patch (0, 2) covers x 16..24, y 0..8: hole pixels x 20..24, y 5..8 = 12 of 64.
    // Patch (1, 3) covers x 24..32, y 8..16: x 24..30, y 8..12 = 24 of 64. None is a majority.
    let maj = PatchMask::from_pixels(&px, h, w, grid, ResizeRule::Majority)?;
    assert_eq!(maj.num_masked(), 0);
    // The inverse mask swaps the sets.
    let inv =
        MaskStrategy::Fixed(any.inverted()).sample(grid, 1, RngKey::default(), &Device::Cpu)?;
    assert_eq!(inv.visible().to_vec2::<u32>()?[0], expect);
    // A fixed mask on the wrong grid is a shape error.
    let err =
        MaskStrategy::Fixed(any).sample(PatchGrid::new(6, 4), 1, RngKey::default(), &Device::Cpu);
    assert!(matches!(err, Err(Error::Shape { arg: "grid", .. })));
    Ok(())
}

#[test]
fn future_frame_masks_hide_whole_trailing_frames() -> dmae_diffusion::Result<()> {
    let grid = VideoGrid::new(5, 2, 3);
    let s = VideoMaskStrategy::FutureFrames { visible: 2 };
    assert_eq!(s.num_masked(grid)?, 18);
    let mi = s.sample(grid, 2, RngKey::new(1, 1), &Device::Cpu)?;
    assert_eq!(
        mi.visible().to_vec2::<u32>()?,
        vec![(0..12).collect::<Vec<u32>>(); 2]
    );
    assert_eq!(
        mi.masked().to_vec2::<u32>()?,
        vec![(12..30).collect::<Vec<u32>>(); 2]
    );
    assert!(matches!(
        VideoMaskStrategy::FutureFrames { visible: 6 }.sample(
            grid,
            1,
            RngKey::default(),
            &Device::Cpu
        ),
        Err(Error::InvalidArgument { arg: "visible", .. })
    ));
    Ok(())
}

#[test]
fn invalid_ratios_are_typed_errors() {
    for r in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                MaskStrategy::random(r),
                Err(Error::InvalidRatio { arg: "ratio", .. })
            ),
            "{r}"
        );
        assert!(matches!(
            MaskStrategy::center_block(r),
            Err(Error::InvalidRatio { .. })
        ));
        assert!(matches!(
            MaskStrategy::block_wise(r),
            Err(Error::InvalidRatio { .. })
        ));
        assert!(matches!(
            VideoMaskStrategy::tube(r),
            Err(Error::InvalidRatio { .. })
        ));
        assert!(matches!(
            VideoMaskStrategy::random_space_time(r),
            Err(Error::InvalidRatio { .. })
        ));
        // Building the enum directly does not bypass the check.
        let s = MaskStrategy::Random { ratio: r };
        assert!(matches!(
            s.sample(PatchGrid::new(4, 4), 1, RngKey::default(), &Device::Cpu),
            Err(Error::InvalidRatio { .. })
        ));
    }
    assert!(PatchGrid::for_image(224, 200, 16).is_err());
    assert!(PatchGrid::for_image(224, 224, 0).is_err());
}

#[test]
fn split_and_merge_are_differentiable() -> dmae_diffusion::Result<()> {
    let grid = PatchGrid::new(3, 3);
    let mi = MaskStrategy::random(0.5)?.sample(grid, 2, RngKey::new(4, 0), &Device::Cpu)?;
    let x = candle_core::Var::from_tensor(
        &Tensor::arange(0f32, 36., &Device::Cpu)?.reshape((2, 9, 2))?,
    )?;
    let (xv, xm) = mi.split(x.as_tensor())?;
    // Weight masked tokens by 3 and visible by 1: the gradient is 3 on masked rows, 1 elsewhere.
    let loss = ((xm.sum_all()? * 3.0)? + xv.sum_all()?)?;
    let g = loss.backward()?;
    let gx = g.get(x.as_tensor()).expect("gradient of x");
    let gx = gx.to_vec3::<f32>()?;
    for (i, m) in mi.masks().iter().enumerate() {
        for (j, &b) in m.iter().enumerate() {
            assert_eq!(gx[i][j], vec![if b { 3.0 } else { 1.0 }; 2]);
        }
    }
    let merged = mi.merge(&xv, &xm)?;
    let g = merged.sqr()?.sum_all()?.backward()?;
    let gx = g.get(x.as_tensor()).expect("gradient of x");
    let expect = (x.as_tensor() * 2.0)?.to_vec3::<f32>()?;
    assert_eq!(gx.to_vec3::<f32>()?, expect);
    Ok(())
}

/// MAE's `random_masking` with explicit noise: argsort order kept (what transformers' parity
/// needs), `ids_restore` its inverse, the host masks in patch order.
#[test]
fn masks_from_noise_follow_mae_random_masking() -> dmae_diffusion::Result<()> {
    let noise = Tensor::new(
        &[[0.9f32, 0.1, 0.5, 0.3], [0.2, 0.2, 0.8, 0.0]],
        &Device::Cpu,
    )?;
    let mi = MaskIndices::from_noise(&noise, 0.5)?;
    assert_eq!(mi.visible().to_vec2::<u32>()?, vec![vec![1, 3], vec![3, 0]]);
    assert_eq!(mi.masked().to_vec2::<u32>()?, vec![vec![2, 0], vec![1, 2]]);
    assert_eq!(
        mi.ids_restore().to_vec2::<u32>()?,
        vec![vec![3, 0, 2, 1], vec![1, 2, 3, 0]]
    );
    assert_eq!(mi.masks()[0], vec![true, false, true, false]);
    assert!(check_split_merge(&mi, 2, 4).is_ok());
    assert!(MaskIndices::from_order(vec![vec![0, 0, 1]], 1, &Device::Cpu).is_err());
    assert!(MaskIndices::from_noise(&noise, 1.0).is_err());
    Ok(())
}

#[test]
fn narrow_and_all_visible_keep_the_index_sets_consistent() -> dmae_diffusion::Result<()> {
    let dev = Device::Cpu;
    let mi =
        MaskStrategy::random(0.75)?.sample(PatchGrid::new(4, 4), 5, RngKey::new(1, 2), &dev)?;
    let part = mi.narrow(2, 2)?;
    assert_eq!(part.batch_size(), 2);
    assert_eq!(part.masks(), &mi.masks()[2..4]);
    assert_eq!(
        part.masked().to_vec2::<u32>()?,
        mi.masked().to_vec2::<u32>()?[2..4].to_vec()
    );
    assert!(mi.narrow(4, 2).is_err());
    let all = MaskIndices::all_visible(3, 16, &dev)?;
    assert_eq!(
        (all.num_visible(), all.num_masked(), all.batch_size()),
        (16, 0, 3)
    );
    assert_eq!(
        all.visible().to_vec2::<u32>()?[1],
        (0..16).collect::<Vec<u32>>()
    );
    Ok(())
}

#[test]
fn middle_frame_masks_hide_whole_central_frames() -> dmae_diffusion::Result<()> {
    let grid = VideoGrid::new(5, 2, 2);
    let s = VideoMaskStrategy::MiddleFrames { masked: 2 };
    assert_eq!(s.num_masked(grid)?, 8);
    let mi = s.sample(grid, 2, RngKey::new(0, 0), &Device::Cpu)?;
    // frames 0..5, start = (5 - 2) / 2 = 1: frames 1 and 2 masked.
    let want: Vec<bool> = (0..20).map(|j| (1..3).contains(&(j / 4))).collect();
    assert_eq!(mi.masks()[1], want);
    assert!(VideoMaskStrategy::MiddleFrames { masked: 6 }
        .sample(grid, 1, RngKey::new(0, 0), &Device::Cpu)
        .is_err());
    Ok(())
}
