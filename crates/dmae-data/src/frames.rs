//! Video clips stored as folders of frame images: `root/<class>/<clip>/<frame files>`.

use std::path::{Path, PathBuf};

use crate::dataset::{check_index, Dataset, Sample};
use crate::decode::{read_image, Channels};
use crate::error::{Error, Result};
use crate::folder::{sorted_image_files, sorted_subdirs};

/// How [`FrameFolder`] picks `num_frames` frames out of a clip of `n` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSampling {
    /// `num_frames` indices evenly spaced over the whole clip, `round(i * (n - 1) / (num_frames - 1))`
    /// (frames repeat when the clip is shorter than `num_frames`).
    Uniform,
    /// Every `stride`-th frame, centred in the clip; short clips repeat their last frame.
    Strided {
        /// Distance between consecutive picked frames (>= 1).
        stride: usize,
    },
}

/// Options of [`FrameFolder::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFolderOptions {
    /// Frames per sample, `T`.
    pub num_frames: usize,
    /// How frames are picked.
    pub sampling: FrameSampling,
    /// Colour layout of the output.
    pub channels: Channels,
}

impl Default for FrameFolderOptions {
    fn default() -> Self {
        FrameFolderOptions {
            num_frames: 16,
            sampling: FrameSampling::Strided { stride: 4 },
            channels: Channels::Rgb,
        }
    }
}

#[derive(Debug, Clone)]
struct Clip {
    dir: PathBuf,
    frames: Vec<PathBuf>,
    label: u32,
}

/// A video dataset of frame folders. Samples are `(C, T, H, W)` f32 in `[0, 1]`; every frame of a clip must have
/// the size of its first picked frame (an error names the odd file otherwise).
///
/// Classes are the sub-directories of `root` (sorted); each clip is a sub-directory of a class holding image
/// files, ordered by natural name order (`frame2.png` before `frame10.png`). Clip directories without any image
/// are skipped when scanning.
#[derive(Debug, Clone)]
pub struct FrameFolder {
    root: PathBuf,
    classes: Vec<String>,
    clips: Vec<Clip>,
    options: FrameFolderOptions,
}

impl FrameFolder {
    /// Scans `root`.
    pub fn open(root: impl AsRef<Path>, options: FrameFolderOptions) -> Result<Self> {
        if options.num_frames == 0 {
            return Err(Error::Config("num_frames must be at least 1".into()));
        }
        if let FrameSampling::Strided { stride: 0 } = options.sampling {
            return Err(Error::Config("frame stride must be at least 1".into()));
        }
        let root = root.as_ref().to_path_buf();
        let classes = sorted_subdirs(&root)?;
        let mut clips = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let label =
                u32::try_from(label).map_err(|_| Error::Config("more than 2^32 classes".into()))?;
            let cdir = root.join(class);
            for clip in sorted_subdirs(&cdir)? {
                let dir = cdir.join(clip);
                let frames = sorted_image_files(&dir)?;
                if !frames.is_empty() {
                    clips.push(Clip { dir, frames, label });
                }
            }
        }
        if clips.is_empty() {
            return Err(Error::NotFound {
                path: root,
                what: "no clip (expected root/<class>/<clip>/<frame images>)".into(),
            });
        }
        Ok(FrameFolder {
            root,
            classes,
            clips,
            options,
        })
    }

    /// The scanned root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory, frame count and label of clip `index`.
    pub fn clip(&self, index: usize) -> Option<(&Path, usize, u32)> {
        self.clips
            .get(index)
            .map(|c| (c.dir.as_path(), c.frames.len(), c.label))
    }

    /// The frame indices picked from a clip of `n` frames (`n >= 1`).
    pub fn frame_indices(&self, n: usize) -> Vec<usize> {
        pick_frames(n, self.options.num_frames, self.options.sampling)
    }
}

/// Frame indices for a clip of `n >= 1` frames.
pub(crate) fn pick_frames(n: usize, t: usize, sampling: FrameSampling) -> Vec<usize> {
    match sampling {
        FrameSampling::Uniform => {
            if t == 1 {
                return vec![(n - 1) / 2];
            }
            (0..t)
                .map(|i| ((i * (n - 1) * 2 + (t - 1)) / (2 * (t - 1))).min(n - 1))
                .collect()
        }
        FrameSampling::Strided { stride } => {
            let span = (t - 1).saturating_mul(stride) + 1;
            let start = n.saturating_sub(span) / 2;
            (0..t)
                .map(|i| start.saturating_add(i.saturating_mul(stride)).min(n - 1))
                .collect()
        }
    }
}

impl Dataset for FrameFolder {
    fn len(&self) -> usize {
        self.clips.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len())?;
        let clip = &self.clips[index];
        let picks = self.frame_indices(clip.frames.len());
        let t = picks.len();
        let mut decoded: Vec<crate::decode::Planes> = Vec::with_capacity(t);
        for &k in &picks {
            // Reuse a frame already decoded for a repeated index.
            if let Some(pos) = picks[..decoded.len()].iter().position(|&j| j == k) {
                let again = decoded[pos].clone();
                decoded.push(again);
                continue;
            }
            let path = &clip.frames[k];
            let p = read_image(path, self.options.channels)?;
            if let Some(first) = decoded.first() {
                if (p.height, p.width) != (first.height, first.width) {
                    return Err(Error::Decode {
                        path: path.clone(),
                        reason: format!(
                            "frame is {}x{} but the clip's first picked frame {} is {}x{}",
                            p.width,
                            p.height,
                            clip.frames[picks[0]].display(),
                            first.width,
                            first.height
                        ),
                    });
                }
            }
            decoded.push(p);
        }
        let (c, h, w) = (
            self.options.channels.count(),
            decoded[0].height,
            decoded[0].width,
        );
        let plane = h * w;
        // (T, C, H, W) frames -> (C, T, H, W).
        let mut data = vec![0f32; c * t * plane];
        for (ti, f) in decoded.iter().enumerate() {
            for ci in 0..c {
                let dst = (ci * t + ti) * plane;
                data[dst..dst + plane].copy_from_slice(&f.data[ci * plane..(ci + 1) * plane]);
            }
        }
        Sample::video(data, c, t, h, w, clip.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_picking() {
        assert_eq!(pick_frames(10, 4, FrameSampling::Uniform), vec![0, 3, 6, 9]);
        assert_eq!(pick_frames(1, 3, FrameSampling::Uniform), vec![0, 0, 0]);
        assert_eq!(pick_frames(9, 1, FrameSampling::Uniform), vec![4]);
        // span 7 in 11 frames: start 2.
        assert_eq!(
            pick_frames(11, 4, FrameSampling::Strided { stride: 2 }),
            vec![2, 4, 6, 8]
        );
        // Too short: repeat the last frame.
        assert_eq!(
            pick_frames(3, 4, FrameSampling::Strided { stride: 2 }),
            vec![0, 2, 2, 2]
        );
    }
}
