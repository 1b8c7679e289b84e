//! `ImageFolder`: one sub-directory per class, one image file per sample (the torchvision layout), and its
//! train / validation / test splits ([`ImageFolder::open_split`]).
//!
//! Splits of `folder:DIR`, in order of preference:
//! - `DIR/train`, `DIR/val`, `DIR/test` when they exist (labels follow `DIR/train`'s classes, so a `val/` with
//!   fewer classes keeps the right labels);
//! - a held-out `val_fraction` of the training images ([`ImageFolder::hold_out`]): stratified per class and
//!   deterministic (chosen by a hash of each file's name, the same on every machine and for every seed);
//! - `DIR/test` as the validation split when there is no `val/` and no fraction (like CIFAR's test batch).
//!
//! Without any of these, opening the validation split is an error that says what to do: evaluating on training
//! images would report memorisation as accuracy.

use std::path::{Path, PathBuf};

use crate::dataset::{check_index, Dataset, Sample, Split};
use crate::decode::{read_image, Channels};
use crate::error::{Error, Result};

/// File extensions (lower-case) that [`ImageFolder`] and [`crate::FrameFolder`] pick up.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "gif"];

/// An image classification dataset laid out as `root/<class>/<image>`.
///
/// Classes are the sub-directories of `root` in sorted order (label = position); files are sorted by name inside
/// each class; hidden entries (names starting with `.`) and files without an image extension are ignored. Images
/// are decoded on [`Dataset::get`], converted to the requested [`Channels`], as `(C, H, W)` f32 in `[0, 1]`;
/// their sizes may differ, so a loader needs a resize or crop transform ([`crate::Pipeline`]).
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
    channels: Channels,
    origin: String,
}

impl ImageFolder {
    /// Scans `root`; errors if it holds no class directory or no image at all.
    pub fn open(root: impl AsRef<Path>, channels: Channels) -> Result<Self> {
        Self::open_with_classes(root.as_ref(), channels, None)
    }

    /// Scans `root` with labels from `classes` (the training split's) when given: every class directory of
    /// `root` must be one of them; classes without a directory here simply have no sample.
    fn open_with_classes(
        root: &Path,
        channels: Channels,
        classes: Option<Vec<String>>,
    ) -> Result<Self> {
        let root = root.to_path_buf();
        let here = sorted_subdirs(&root)?;
        if here.is_empty() {
            return Err(Error::NotFound {
                path: root,
                what: "no class sub-directory (expected root/<class>/<image files>)".into(),
            });
        }
        let classes = match classes {
            None => here.clone(),
            Some(classes) => {
                if let Some(extra) = here.iter().find(|c| !classes.contains(c)) {
                    return Err(Error::NotFound {
                        path: root.join(extra),
                        what: format!(
                            "class {extra:?} is not among the training split's {} classes",
                            classes.len()
                        ),
                    });
                }
                classes
            }
        };
        let mut items = Vec::new();
        for class in &here {
            let label = classes.iter().position(|c| c == class).unwrap_or(0);
            let label =
                u32::try_from(label).map_err(|_| Error::Config("more than 2^32 classes".into()))?;
            for file in sorted_image_files(&root.join(class))? {
                items.push((file, label));
            }
        }
        if items.is_empty() {
            return Err(Error::NotFound {
                path: root,
                what: format!(
                    "no image file ({}) in any class directory",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        let origin = root.display().to_string();
        Ok(ImageFolder {
            root,
            classes,
            items,
            channels,
            origin,
        })
    }

    /// Opens `split` of an image folder `root` (rules in the module docs). `val_fraction` in `(0, 1)` holds out
    /// that part of the training images as the validation split, when `root` has no `val/`; [`Split::Train`]
    /// then leaves those images out, so both calls must pass the same fraction. Errors: no validation data and
    /// no fraction, a fraction beside a `val/` folder (ambiguous), a `val/` or `test/` without `train/`.
    pub fn open_split(
        root: impl AsRef<Path>,
        split: Split,
        channels: Channels,
        val_fraction: Option<f64>,
    ) -> Result<Self> {
        let root = root.as_ref();
        if let Some(f) = val_fraction {
            check_fraction(f)?;
        }
        let sub = |name: &str| Some(root.join(name)).filter(|d| d.is_dir());
        let (train_dir, val_dir, test_dir) = (sub("train"), sub("val"), sub("test"));
        if train_dir.is_none() {
            if let Some(d) = val_dir.as_ref().or(test_dir.as_ref()) {
                return Err(Error::NotFound {
                    path: root.join("train"),
                    what: format!(
                        "missing beside {}: put the training images in train/<class>/ (with val/ and test/ \
                         beside it), or all of them in <class>/ folders without split folders",
                        d.display()
                    ),
                });
            }
        }
        if let (Some(d), Some(_)) = (&val_dir, val_fraction) {
            return Err(Error::Config(format!(
                "{} exists, so no validation fraction applies (it would hold out training images as well); \
                 drop the fraction or the val/ folder",
                d.display()
            )));
        }
        let training = || match &train_dir {
            Some(d) => Self::open(d, channels),
            None => Self::open(root, channels),
        };
        let beside_train = |dir: &Path| -> Result<Self> {
            let train = train_dir.as_deref().unwrap_or(root);
            Self::open_with_classes(dir, channels, Some(sorted_subdirs(train)?))
        };
        match (split, val_dir.as_deref(), val_fraction) {
            (Split::Train, _, None) => training(),
            (Split::Train, _, Some(f)) => Ok(training()?.hold_out(f)?.0),
            (Split::Val, Some(val), _) => beside_train(val),
            (Split::Val, None, Some(f)) => Ok(training()?.hold_out(f)?.1),
            (Split::Val, None, None) => match &test_dir {
                Some(d) => {
                    let mut ds = beside_train(d)?;
                    ds.origin = format!("{} (no val/ folder: the test images)", d.display());
                    Ok(ds)
                }
                None => Err(Error::NotFound {
                    path: root.to_path_buf(),
                    what: format!(
                        "no validation images: {} and no validation fraction was given. Add {}/<class>/ \
                         images, or hold out a stratified fraction of the training images (dmae: \
                         --val-fraction 0.1); evaluating on training images would report memorisation",
                        if train_dir.is_some() {
                            "no val/ or test/ folder beside train/"
                        } else {
                            "the class folders are all training images (no train/ and val/ folders)"
                        },
                        root.join("val").display()
                    ),
                }),
            },
            (Split::Test, _, _) => match &test_dir {
                Some(d) => beside_train(d),
                None => Err(Error::NotFound {
                    path: root.join("test"),
                    what: "no test split: add test/<class>/ images beside train/".into(),
                }),
            },
        }
    }

    /// Splits the images into `(train, val)`: per class, `round(fraction * n)` images (at least 1 and at most
    /// `n - 1` for a class of `n >= 2`; a class of one image stays in training) go to validation, those whose
    /// file name has the smallest hash (FNV-1a then a SplitMix64 finaliser). Deterministic, independent of
    /// seeds and machines, and stable: adding an image to a class moves at most one other. Both parts keep the
    /// class list and dataset order. Errors unless `0 < fraction < 1`, or when nothing would be held out.
    pub fn hold_out(self, fraction: f64) -> Result<(Self, Self)> {
        check_fraction(fraction)?;
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.classes.len()];
        for (i, (_, label)) in self.items.iter().enumerate() {
            by_class[*label as usize].push(i);
        }
        let mut is_val = vec![false; self.items.len()];
        for members in &by_class {
            let n = members.len();
            if n < 2 {
                continue;
            }
            let k = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
            let mut keyed: Vec<(u64, usize)> = members
                .iter()
                .map(|&i| (name_hash(&self.items[i].0), i))
                .collect();
            keyed.sort_unstable();
            for &(_, i) in &keyed[..k] {
                is_val[i] = true;
            }
        }
        let n_val = is_val.iter().filter(|&&v| v).count();
        if n_val == 0 {
            return Err(Error::Config(format!(
                "{}: a validation fraction of {fraction} holds out no image (every class has fewer than 2)",
                self.root.display()
            )));
        }
        // 0.07 * 100 is 7.000000000000001: print percentages with at most 2 decimals.
        let pct = format!("{:.2}", fraction * 100.0)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string();
        let part = |keep: bool, origin: String| ImageFolder {
            root: self.root.clone(),
            classes: self.classes.clone(),
            items: self
                .items
                .iter()
                .zip(&is_val)
                .filter(|(_, &v)| v == keep)
                .map(|(it, _)| it.clone())
                .collect(),
            channels: self.channels,
            origin,
        };
        let train = part(
            false,
            format!(
                "{} less its {pct}% validation hold-out (stratified by class)",
                self.origin
            ),
        );
        let val = part(
            true,
            format!(
                "{pct}% of {} held out for validation (stratified by class, chosen by file-name hash)",
                self.origin
            ),
        );
        Ok((train, val))
    }

    /// The scanned root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the samples come from, for people: the directory, or which part of it a hold-out kept.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Path and label of sample `index`.
    pub fn item(&self, index: usize) -> Option<(&Path, u32)> {
        self.items.get(index).map(|(p, l)| (p.as_path(), *l))
    }
}

fn check_fraction(f: f64) -> Result<()> {
    if f.is_finite() && f > 0.0 && f < 1.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "validation fraction {f}: expected a number strictly between 0 and 1"
        )))
    }
}

/// FNV-1a over the file name's bytes, then SplitMix64's finaliser (FNV alone orders similar names similarly).
fn name_hash(path: &Path) -> u64 {
    let name = path.file_name().map_or_else(
        || path.as_os_str().as_encoded_bytes(),
        |n| n.as_encoded_bytes(),
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len())?;
        let (path, label) = &self.items[index];
        let p = read_image(path, self.channels)?;
        Sample::image(p.data, p.channels, p.height, p.width, *label)
    }

    fn label_of(&self, index: usize) -> Result<u32> {
        check_index(index, self.len())?;
        Ok(self.items[index].1)
    }

    /// Photos flip; a folder whose classes are exactly the digits `0`-`9` (or a subset) holds digits, which
    /// do not.
    fn default_flip(&self) -> bool {
        !self
            .classes
            .iter()
            .all(|c| c.len() == 1 && c.as_bytes()[0].is_ascii_digit())
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: a class directory or image may be a link.
        let is_dir = path.is_dir();
        // Directory names become class names (text in checkpoints and reports) and are joined back
        // onto the root by name; image files are opened by their path, so any name works for them.
        if is_dir && file_name.to_str().is_none() {
            return Err(Error::NonUtf8Name { path });
        }
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    Ok(out)
}

/// Non-hidden sub-directories of `dir`, in natural order.
pub(crate) fn sorted_subdirs(dir: &Path) -> Result<Vec<String>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|(_, _, is_dir)| *is_dir)
        .map(|(name, _, _)| name)
        .collect())
}

/// Image files of `dir` in natural order (`frame2.png` before `frame10.png`).
pub(crate) fn sorted_image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|(_, p, is_dir)| !is_dir && has_image_extension(p))
        .map(|(_, p, _)| p)
        .collect())
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Orders names by their text with digit runs compared as numbers, then byte-wise as a tie-break.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                // Compare numerically without parsing (any length): strip leading zeros, then length, then digits.
                let tx = &dx[dx.iter().take_while(|&&c| c == b'0').count()..];
                let ty = &dy[dy.iter().take_while(|&&c| c == b'0').count()..];
                let ord = tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::spread_over_classes;

    /// Empty `.png` files under `root/<class>/` (scanning never decodes).
    fn layout(root: &Path, classes: &[(&str, usize)]) {
        for (class, n) in classes {
            let d = root.join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..*n {
                std::fs::write(d.join(format!("{class}{i}.png")), b"").unwrap();
            }
        }
    }

    fn names(ds: &ImageFolder) -> Vec<String> {
        (0..ds.len())
            .map(|i| {
                let (p, l) = ds.item(i).unwrap();
                format!("{l}:{}", p.file_name().unwrap().to_string_lossy())
            })
            .collect()
    }

    #[test]
    fn a_folder_without_val_is_never_evaluated_on_its_training_images() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path(), &[("cat", 8), ("dog", 4), ("eel", 1)]);
        let open = |split, f| ImageFolder::open_split(dir.path(), split, Channels::Rgb, f);
        assert_eq!(open(Split::Train, None).unwrap().len(), 13);
        let e = open(Split::Val, None).unwrap_err().to_string();
        assert!(
            e.contains("no validation images") && e.contains("--val-fraction"),
            "{e}"
        );
        assert!(open(Split::Test, None).is_err());

        // A 25% hold-out: 2 of 8 cats, 1 of 4 dogs, the single eel stays in training.
        let train = open(Split::Train, Some(0.25)).unwrap();
        let val = open(Split::Val, Some(0.25)).unwrap();
        let (t, v) = (names(&train), names(&val));
        assert_eq!((t.len(), v.len()), (10, 3), "{v:?}");
        assert_eq!(v.iter().filter(|n| n.starts_with("0:")).count(), 2);
        assert_eq!(v.iter().filter(|n| n.starts_with("1:")).count(), 1);
        assert!(t.iter().all(|n| !v.contains(n)), "overlap: {t:?} {v:?}");
        let mut all = [t.clone(), v.clone()].concat();
        all.sort();
        let mut whole = names(&open(Split::Train, None).unwrap());
        whole.sort();
        assert_eq!(all, whole);
        // Deterministic, and stable when a class grows: the old hold-out of `dog` keeps its image.
        assert_eq!(names(&open(Split::Val, Some(0.25)).unwrap()), v);
        assert!(val.origin().contains("25% of") && train.origin().contains("less its 25%"));
        let (_, v7) = open(Split::Train, None).unwrap().hold_out(0.07).unwrap();
        assert!(v7.origin().starts_with("7% of"), "{}", v7.origin());
        std::fs::write(dir.path().join("cat/cat8.png"), b"").unwrap();
        let v2 = names(&open(Split::Val, Some(0.25)).unwrap());
        assert!(v
            .iter()
            .filter(|n| n.starts_with("1:"))
            .all(|n| v2.contains(n)));
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(open(Split::Val, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_folders_keep_the_training_labels() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        layout(&root.join("train"), &[("a", 3), ("b", 3), ("c", 3)]);
        layout(&root.join("val"), &[("c", 2)]);
        let open = |split, f| ImageFolder::open_split(root, split, Channels::Gray, f);
        let val = open(Split::Val, None).unwrap();
        assert_eq!(val.classes(), ["a", "b", "c"]);
        assert_eq!(names(&val), ["2:c0.png", "2:c1.png"]);
        assert_eq!(open(Split::Train, None).unwrap().len(), 9);
        // A fraction beside val/ is ambiguous.
        assert!(open(Split::Val, Some(0.1)).is_err());
        assert!(open(Split::Train, Some(0.1)).is_err());
        // A class the training split does not have.
        layout(&root.join("val"), &[("zebra", 1)]);
        let e = open(Split::Val, None).unwrap_err().to_string();
        assert!(e.contains("zebra"), "{e}");
        std::fs::remove_dir_all(root.join("val")).unwrap();
        // No val/: a test/ folder serves, and says so.
        layout(&root.join("test"), &[("a", 1)]);
        let val = open(Split::Val, None).unwrap();
        assert!(val.origin().contains("test"), "{}", val.origin());
        assert_eq!(open(Split::Test, None).unwrap().len(), 1);
        // A fraction beside test/ holds out training images instead.
        assert_eq!(open(Split::Val, Some(0.34)).unwrap().len(), 3);
        // val/ or test/ without train/ is an error, not a class called "val".
        std::fs::remove_dir_all(root.join("train")).unwrap();
        let e = open(Split::Train, None).unwrap_err().to_string();
        assert!(e.contains("train"), "{e}");
    }

    #[test]
    fn previews_spread_over_classes_and_digit_folders_do_not_flip() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path(), &[("a", 4), ("b", 2), ("c", 1)]);
        let ds = ImageFolder::open(dir.path(), Channels::Rgb).unwrap();
        let picks = spread_over_classes(&ds, 5).unwrap();
        let labels: Vec<u32> = picks.iter().map(|&i| ds.label_of(i).unwrap()).collect();
        assert_eq!(labels, [0, 1, 2, 0, 1]);
        assert_eq!(picks, [0, 4, 6, 1, 5]);
        let mut all = spread_over_classes(&ds, 100).unwrap();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert!(ds.default_flip());
        let digits = tempfile::tempdir().unwrap();
        layout(digits.path(), &[("0", 1), ("1", 1), ("7", 1)]);
        assert!(!ImageFolder::open(digits.path(), Channels::Gray)
            .unwrap()
            .default_flip());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_class_directory_with_a_non_utf8_name_is_named_in_the_error() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::create_dir_all(dir.path().join("ok")).unwrap();
        let e = super::ImageFolder::open(dir.path(), crate::Channels::Gray).unwrap_err();
        assert!(matches!(e, crate::Error::NonUtf8Name { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("caf\u{FFFD}") && msg.contains("UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["f10.png", "f2.png", "f1.png", "f02.png", "g.png", "f.png"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            ["f.png", "f1.png", "f02.png", "f2.png", "f10.png", "g.png"]
        );
    }
}
