//! CIFAR-10 and CIFAR-100 in their official binary formats.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, each a
//! sequence of 3,073-byte records `<label u8> <1024 R> <1024 G> <1024 B>` (32x32, row-major).
//! CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`, 3,074-byte records
//! `<coarse label u8> <fine label u8> <3072 pixels>`.

use std::path::{Path, PathBuf};

use crate::dataset::Split;
use crate::dataset::{check_index, Dataset, Sample};
use crate::error::{Error, Result};

/// Side of a CIFAR image.
pub const CIFAR_SIDE: usize = 32;
/// Bytes of pixels in one CIFAR record (3 x 32 x 32).
pub const CIFAR_PIXELS: usize = 3 * CIFAR_SIDE * CIFAR_SIDE;

/// CIFAR-10 class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine class names, by label (as in `fine_label_names.txt`).
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// CIFAR-100 coarse (superclass) names, by label (as in `coarse_label_names.txt`).
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// Which CIFAR variant (and, for CIFAR-100, which label) to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// CIFAR-10: 10 classes, 1 label byte per record.
    Cifar10,
    /// CIFAR-100 with its 100 fine labels.
    Cifar100Fine,
    /// CIFAR-100 with its 20 coarse labels.
    Cifar100Coarse,
}

impl CifarKind {
    /// Bytes per record, labels included.
    pub fn record_len(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1 + CIFAR_PIXELS,
            _ => 2 + CIFAR_PIXELS,
        }
    }

    /// Number of classes of the selected label.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100Fine => 100,
            CifarKind::Cifar100Coarse => 20,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            _ => "CIFAR-100",
        }
    }

    /// Offset of the selected label inside a record.
    fn label_offset(self) -> usize {
        match self {
            CifarKind::Cifar100Fine => 1,
            _ => 0,
        }
    }

    fn default_classes(self) -> Vec<String> {
        let names: &[&str] = match self {
            CifarKind::Cifar10 => &CIFAR10_CLASSES,
            CifarKind::Cifar100Fine => &CIFAR100_FINE_CLASSES,
            CifarKind::Cifar100Coarse => &CIFAR100_COARSE_CLASSES,
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    fn meta_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "batches.meta.txt",
            CifarKind::Cifar100Fine => "fine_label_names.txt",
            CifarKind::Cifar100Coarse => "coarse_label_names.txt",
        }
    }
}

/// A CIFAR dataset held in memory (pixels as bytes, channel-planar). Samples are `(3, 32, 32)` f32 in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct Cifar {
    kind: CifarKind,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    classes: Vec<String>,
}

impl Cifar {
    /// Opens the official binary batches of `split` in `dir`, which may be the extracted folder itself
    /// (`cifar-10-batches-bin`, `cifar-100-binary`) or its parent. CIFAR has no validation split of its own:
    /// [`Split::Val`] reads the test batch, like [`Split::Test`] (the 10,000 held-out images papers report on; none
    /// of them is a training image). Class names come from the archive's label-name file when present.
    pub fn open(dir: impl AsRef<Path>, kind: CifarKind, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let sub = match kind {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            _ => "cifar-100-binary",
        };
        let root = if dir.join(sub).is_dir() {
            dir.join(sub)
        } else {
            dir.to_path_buf()
        };
        let names: Vec<String> = match (kind, split) {
            (CifarKind::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            // CIFAR ships no validation split: its test set is the held-out data everyone reports on.
            (CifarKind::Cifar10, Split::Test | Split::Val) => vec!["test_batch.bin".into()],
            (_, Split::Train) => vec!["train.bin".into()],
            (_, Split::Test | Split::Val) => vec!["test.bin".into()],
        };
        let files: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(Error::NotFound {
                path: missing.clone(),
                what: format!(
                    "{} binary batch missing; download it with `cargo xtask data fetch cifar10 --to DIR`",
                    kind.name()
                ),
            });
        }
        let mut ds = Self::from_files(kind, &files)?;
        // The class-name list is optional and small; a missing, odd or oversized one keeps the default names.
        let meta = crate::file::read_regular(&root.join(kind.meta_file()), 1 << 20).ok();
        if let Some(text) = meta.and_then(|b| String::from_utf8(b).ok()) {
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if names.len() == kind.num_classes() {
                ds.classes = names;
            }
        }
        Ok(ds)
    }

    /// Reads and concatenates binary batch files, in order.
    pub fn from_files<P: AsRef<Path>>(kind: CifarKind, files: &[P]) -> Result<Self> {
        let mut ds = Cifar {
            kind,
            pixels: Vec::new(),
            labels: Vec::new(),
            classes: kind.default_classes(),
        };
        for f in files {
            let f = f.as_ref();
            let bytes = crate::file::read_regular(f, crate::file::MAX_FILE_BYTES)?;
            ds.append(&bytes, f)?;
        }
        Ok(ds)
    }

    /// Parses one binary batch held in memory; `source` names it in errors.
    pub fn from_bytes(kind: CifarKind, bytes: &[u8], source: &Path) -> Result<Self> {
        let mut ds = Cifar {
            kind,
            pixels: Vec::new(),
            labels: Vec::new(),
            classes: kind.default_classes(),
        };
        ds.append(bytes, source)?;
        Ok(ds)
    }

    fn append(&mut self, bytes: &[u8], source: &Path) -> Result<()> {
        let rec = self.kind.record_len();
        let fmt = self.kind.name();
        if bytes.is_empty() {
            return Err(Error::format(source, fmt, 0, "empty file"));
        }
        let whole = bytes.len() / rec;
        let rem = bytes.len() - whole * rec;
        if rem > 0 {
            return Err(Error::format(
                source,
                fmt,
                (whole * rec) as u64,
                format!(
                    "truncated record {whole}: {} bytes left where a record needs {rec} (file of {} bytes is not a \
                     multiple of {rec})",
                    rem,
                    bytes.len()
                ),
            ));
        }
        let nlabels = rec - CIFAR_PIXELS;
        for (i, r) in bytes.chunks_exact(rec).enumerate() {
            let (coarse_ok, label_ok);
            match self.kind {
                CifarKind::Cifar10 => {
                    coarse_ok = true;
                    label_ok = r[0] < 10;
                }
                _ => {
                    coarse_ok = r[0] < 20;
                    label_ok = r[1] < 100;
                }
            }
            if !coarse_ok || !label_ok {
                let (off, what, limit) = if !coarse_ok {
                    (0, "coarse label", 20)
                } else if self.kind == CifarKind::Cifar10 {
                    (0, "label", 10)
                } else {
                    (1, "fine label", 100)
                };
                return Err(Error::format(
                    source,
                    fmt,
                    (i * rec + off) as u64,
                    format!("record {i}: {what} {} is not below {limit}", r[off]),
                ));
            }
            self.labels.push(r[self.kind.label_offset()]);
            self.pixels.extend_from_slice(&r[nlabels..]);
        }
        Ok(())
    }

    /// The variant and label being read.
    pub fn kind(&self) -> CifarKind {
        self.kind
    }

    /// Channel-planar bytes (R plane, G plane, B plane) of image `index`, `None` if out of range.
    pub fn image_bytes(&self, index: usize) -> Option<&[u8]> {
        self.pixels
            .get(index * CIFAR_PIXELS..(index + 1) * CIFAR_PIXELS)
    }

    /// All labels, in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len())?;
        let bytes = self.image_bytes(index).ok_or(Error::IndexOutOfRange {
            index,
            len: self.len(),
        })?;
        let data = bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
        Sample::image(
            data,
            3,
            CIFAR_SIDE,
            CIFAR_SIDE,
            u32::from(self.labels[index]),
        )
    }

    fn label_of(&self, index: usize) -> Result<u32> {
        check_index(index, self.len())?;
        Ok(u32::from(self.labels[index]))
    }
}
