//! `ImageFolder`: one sub-directory per class, one image file per sample (the torchvision layout).

use std::path::{Path, PathBuf};

use crate::dataset::{check_index, Dataset, Sample};
use crate::decode::{read_image, Channels};
use crate::error::{Error, Result};

/// File extensions (lower-case) that [`ImageFolder`] and [`crate::FrameFolder`] pick up.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "gif"];

/// An image classification dataset laid out as `root/<class>/<image>`.
///
/// Classes are the sub-directories of `root` in sorted order (label = position); files are sorted by name inside
/// each class; hidden entries (names starting with `.`) and files without an image extension are ignored. Images
/// are decoded on [`Dataset::get`], converted to the requested [`Channels`], as `(C, H, W)` f32 in `[0, 1]`;
/// their sizes may differ, so a loader needs a resize or crop transform.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
    channels: Channels,
}

impl ImageFolder {
    /// Scans `root`; errors if it holds no class directory or no image at all.
    pub fn open(root: impl AsRef<Path>, channels: Channels) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let classes = sorted_subdirs(&root)?;
        if classes.is_empty() {
            return Err(Error::NotFound {
                path: root,
                what: "no class sub-directory (expected root/<class>/<image files>)".into(),
            });
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
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
        Ok(ImageFolder {
            root,
            classes,
            items,
            channels,
        })
    }

    /// The scanned root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path and label of sample `index`.
    pub fn item(&self, index: usize) -> Option<(&Path, u32)> {
        self.items.get(index).map(|(p, l)| (p.as_path(), *l))
    }
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
    use super::natural_cmp;

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
