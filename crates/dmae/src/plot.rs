//! Line plots as SVG text, with no dependency: a title, axes with round-numbered ticks and labels, a legend when
//! there are several lines, and a log y axis when the values span more than a decade.
//!
//! ```
//! let svg = dmae::plot::Plot::new("Training loss", "step", "loss")
//!     .line("train", [(1.0, 2.0), (100.0, 0.5), (200.0, 0.1)])
//!     .to_svg();
//! assert!(svg.contains("Training loss"));
//! ```
//!
//! SVG because every browser and most viewers show it, text stays text (searchable, sharp at any zoom, checked
//! by tests), and it needs no font in the binary. Points that are not finite (and, on a log axis, not positive)
//! are left out; a line with more points than twice the plot's width in pixels is thinned to the minimum and
//! maximum of each pixel column, which draws the same picture.

use std::fmt::Write as _;
use std::path::Path;

/// Line colours in order (matplotlib's "tab10").
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// The y axis's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Log when every value is positive and the largest is more than 10x the smallest, linear otherwise.
    Auto,
    /// Linear.
    Linear,
    /// Base-10 logarithmic (non-positive values are left out).
    Log,
}

/// One labelled line of `(x, y)` points, drawn in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Its legend entry.
    pub label: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// A line plot; build it with the methods, then [`Plot::to_svg`] or [`Plot::write`].
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    /// Title above the plot.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label beside the y axis.
    pub y_label: String,
    /// The lines, coloured from [`PALETTE`] in order.
    pub lines: Vec<Line>,
    /// The y scale.
    pub y_scale: Scale,
    /// A fixed y range (e.g. `0..1` for accuracies); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// Stretch a fitted linear y axis to include 0 (learning rates, throughput).
    pub y_zero: bool,
    /// Size in pixels.
    pub width: u32,
    /// Size in pixels.
    pub height: u32,
}

/// Space around the plotting area: left (tick labels and y label), right, top (title), bottom.
const MARGIN: (f64, f64, f64, f64) = (78.0, 24.0, 44.0, 52.0);
/// Lines with at most this many points also get a dot at each point.
const MARKER_MAX: usize = 30;
/// Font size of tick labels and legend; the title and axis labels are larger.
const FONT: f64 = 12.0;
/// A rough average character width of a sans-serif font, in ems (for the legend's box).
const CHAR_EM: f64 = 0.6;

impl Plot {
    /// An empty plot, 720 x 420 pixels, automatic y scale.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Plot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            lines: Vec::new(),
            y_scale: Scale::Auto,
            y_range: None,
            y_zero: false,
            width: 720,
            height: 420,
        }
    }

    /// Adds a line.
    pub fn line(
        mut self,
        label: impl Into<String>,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Self {
        self.lines.push(Line {
            label: label.into(),
            points: points.into_iter().collect(),
        });
        self
    }

    /// Sets the y scale.
    pub fn y_scale(mut self, scale: Scale) -> Self {
        self.y_scale = scale;
        self
    }

    /// Fixes the y range to `lo..hi`.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// Makes a fitted linear y axis include 0.
    pub fn y_from_zero(mut self) -> Self {
        self.y_zero = true;
        self
    }

    /// Sets the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// Whether the y axis is drawn logarithmic (resolves [`Scale::Auto`]).
    pub fn is_log(&self) -> bool {
        match self.y_scale {
            Scale::Linear => false,
            Scale::Log => true,
            Scale::Auto => {
                if let Some((lo, hi)) = self.y_range {
                    return lo > 0.0 && hi / lo > 10.0;
                }
                let ys = self.finite_points(false).map(|p| p.1);
                let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                    (a.min(y), b.max(y))
                });
                lo > 0.0 && hi.is_finite() && hi / lo > 10.0
            }
        }
    }

    fn finite_points(&self, log: bool) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.lines
            .iter()
            .flat_map(|l| l.points.iter().copied())
            .filter(move |&(x, y)| x.is_finite() && y.is_finite() && (!log || y > 0.0))
    }

    /// The SVG document.
    pub fn to_svg(&self) -> String {
        let log = self.is_log();
        let (w, h) = (
            f64::from(self.width.max(200)),
            f64::from(self.height.max(150)),
        );
        let (ml, mr, mt, mb) = MARGIN;
        let (px0, px1, py0, py1) = (ml, w - mr, mt, h - mb);
        let any = self.finite_points(log).next().is_some();

        // Axis ranges and ticks.
        let (xlo, xhi) = self
            .finite_points(log)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.0), b.max(p.0))
            });
        let (xlo, xhi) = if any { (xlo, xhi) } else { (0.0, 1.0) };
        let xaxis = LinearAxis::fit(xlo, xhi, 8);
        let (ylo, yhi) = match self.y_range {
            Some(r) => r,
            None => self
                .finite_points(log)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                    (a.min(p.1), b.max(p.1))
                }),
        };
        let (ylo, yhi) = if any || self.y_range.is_some() {
            (ylo, yhi)
        } else {
            (0.0, 1.0)
        };
        let (ylo, yhi) = if self.y_zero && !log && self.y_range.is_none() {
            (ylo.min(0.0), yhi.max(0.0))
        } else {
            (ylo, yhi)
        };
        let yaxis: Box<dyn Axis> = if log {
            Box::new(LogAxis::fit(ylo, yhi))
        } else if self.y_range.is_some() {
            Box::new(LinearAxis::exact(ylo, yhi, 6))
        } else {
            Box::new(LinearAxis::fit(ylo, yhi, 6))
        };
        let sx = |x: f64| px0 + (x - xaxis.lo) / (xaxis.hi - xaxis.lo) * (px1 - px0);
        let sy = |y: f64| py1 - yaxis.unit(y) * (py1 - py0);

        let mut s = String::new();
        let id = format!("p{:016x}", self.fingerprint());
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{title}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="{FONT}">
<rect width="{w}" height="{h}" fill="#ffffff"/>
<clipPath id="{id}"><rect x="{px0}" y="{py0}" width="{pw}" height="{ph}"/></clipPath>
<text x="{tx}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{title}</text>
"##,
            title = escape(&self.title),
            pw = px1 - px0,
            ph = py1 - py0,
            tx = (px0 + px1) / 2.0,
        );

        // Grid and ticks.
        s.push_str("<g stroke=\"#e3e3e3\" stroke-width=\"1\">\n");
        for &t in &xaxis.ticks {
            let x = sx(t);
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{py0}" x2="{x:.1}" y2="{py1}"/>"#
            );
        }
        for t in yaxis.ticks() {
            let y = sy(t.value);
            let _ = writeln!(
                s,
                r#"<line x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}"/>"#
            );
        }
        s.push_str("</g>\n<g fill=\"#333333\">\n");
        for &t in &xaxis.ticks {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{py1}" x2="{x:.1}" y2="{}" stroke="#333333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                py1 + 5.0,
                py1 + 19.0,
                escape(&format_tick(t, xaxis.step))
            );
        }
        for t in yaxis.ticks() {
            let y = sy(t.value);
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{y:.1}" x2="{px0}" y2="{y:.1}" stroke="#333333"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                px0 - 5.0,
                px0 - 8.0,
                y + 4.0,
                escape(&t.label)
            );
        }
        s.push_str("</g>\n");
        let _ = writeln!(
            s,
            r##"<rect x="{px0}" y="{py0}" width="{}" height="{}" fill="none" stroke="#333333"/>"##,
            px1 - px0,
            py1 - py0
        );
        // Axis labels.
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            (px0 + px1) / 2.0,
            h - 12.0,
            escape(&self.x_label)
        );
        let (ly, lx) = ((py0 + py1) / 2.0, 18.0);
        let _ = writeln!(
            s,
            r#"<text x="{lx}" y="{ly}" text-anchor="middle" font-size="13" transform="rotate(-90 {lx} {ly})">{}{}</text>"#,
            escape(&self.y_label),
            if log { " (log scale)" } else { "" }
        );

        // Lines.
        let _ = writeln!(
            s,
            r#"<g clip-path="url(#{id})" fill="none" stroke-width="2">"#
        );
        let columns = (2.0 * (px1 - px0)) as usize;
        for (k, line) in self.lines.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let pts: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log || y > 0.0))
                .collect();
            let pts = thin(&pts, columns, xaxis.lo, xaxis.hi);
            if pts.len() > 1 {
                let _ = write!(s, r#"<polyline stroke="{colour}" points=""#);
                for &(x, y) in &pts {
                    let _ = write!(s, "{:.1},{:.1} ", sx(x), sy(y));
                }
                s.push_str("\"/>\n");
            }
            if pts.len() <= MARKER_MAX {
                for &(x, y) in &pts {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}" stroke="none"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            }
        }
        s.push_str("</g>\n");
        if !any {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#777777">no data yet</text>"##,
                (px0 + px1) / 2.0,
                (py0 + py1) / 2.0
            );
        }

        // Legend (inside the plot, in the corner that hides the fewest points) when there is more than one
        // line.
        if self.lines.len() > 1 {
            let longest = self
                .lines
                .iter()
                .map(|l| l.label.chars().count())
                .max()
                .unwrap_or(0);
            let bw = 40.0 + longest as f64 * FONT * CHAR_EM;
            let bh = 8.0 + 18.0 * self.lines.len() as f64;
            let corners = [
                (px1 - bw - 8.0, py0 + 8.0),
                (px0 + 8.0, py0 + 8.0),
                (px1 - bw - 8.0, py1 - bh - 8.0),
                (px0 + 8.0, py1 - bh - 8.0),
            ];
            // Where the lines run, in screen space: the points and 8 steps along each segment
            // (sparse curves, e.g. one accuracy every 100 steps, cross a corner between points).
            let mut drawn = Vec::new();
            for l in &self.lines {
                let pts: Vec<(f64, f64)> = l
                    .points
                    .iter()
                    .filter(|&&(x, y)| x.is_finite() && y.is_finite() && (!log || y > 0.0))
                    .map(|&(x, y)| (sx(x), sy(y)))
                    .collect();
                drawn.extend(pts.first().copied());
                for w in pts.windows(2) {
                    let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                    drawn.extend((1..=8).map(|k| {
                        let f = f64::from(k) / 8.0;
                        (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f)
                    }));
                }
            }
            let hidden = |&(bx, by): &(f64, f64)| {
                drawn
                    .iter()
                    .filter(|&&(x, y)| {
                        x >= bx - 6.0 && x <= bx + bw + 6.0 && y >= by - 6.0 && y <= by + bh + 6.0
                    })
                    .count()
            };
            let (bx, by) = corners
                .iter()
                .min_by_key(|c| hidden(c))
                .copied()
                .unwrap_or(corners[0]);
            let _ = writeln!(
                s,
                r##"<g class="legend"><rect x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{bh:.1}" fill="#ffffff" fill-opacity="0.85" stroke="#bbbbbb"/>"##
            );
            for (k, line) in self.lines.iter().enumerate() {
                let y = by + 16.0 + 18.0 * k as f64;
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                    bx + 8.0,
                    y - 4.0,
                    bx + 28.0,
                    y - 4.0,
                    PALETTE[k % PALETTE.len()],
                    bx + 34.0,
                    y,
                    escape(&line.label)
                );
            }
            s.push_str("</g>\n");
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes [`Plot::to_svg`] to `path` (through a temporary file and a rename, so a reader never sees half a
    /// plot), creating the parent directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, self.to_svg().as_bytes())
    }

    /// A hash of the content, for ids that stay unique when several plots share one HTML page.
    fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(self.title.as_bytes());
        eat(self.y_label.as_bytes());
        for l in &self.lines {
            eat(l.label.as_bytes());
            for (x, y) in &l.points {
                eat(&x.to_le_bytes());
                eat(&y.to_le_bytes());
            }
        }
        h
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// At most the first, minimum, maximum and last point of each of `columns` equal x intervals (in order), when
/// there are more points than `2 * columns`.
fn thin(pts: &[(f64, f64)], columns: usize, lo: f64, hi: f64) -> Vec<(f64, f64)> {
    if pts.len() <= 2 * columns.max(1) || hi <= lo {
        return pts.to_vec();
    }
    let col = |x: f64| (((x - lo) / (hi - lo) * columns as f64) as usize).min(columns);
    let mut out = Vec::new();
    let mut start = 0;
    while start < pts.len() {
        let c = col(pts[start].0);
        let mut end = start + 1;
        while end < pts.len() && col(pts[end].0) == c {
            end += 1;
        }
        let run = &pts[start..end];
        let (mut imin, mut imax) = (0, 0);
        for (i, p) in run.iter().enumerate() {
            if p.1 < run[imin].1 {
                imin = i;
            }
            if p.1 > run[imax].1 {
                imax = i;
            }
        }
        let mut keep = vec![0, imin, imax, run.len() - 1];
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| run[i]));
        start = end;
    }
    out
}

/// One labelled tick.
#[derive(Clone, Debug, PartialEq)]
struct Tick {
    /// Where (in data units).
    value: f64,
    /// What it says.
    label: String,
}

trait Axis {
    /// `v`'s position along the axis, 0 at the low end and 1 at the high end.
    fn unit(&self, v: f64) -> f64;
    fn ticks(&self) -> Vec<Tick>;
}

/// A linear axis from `lo` to `hi` with ticks every `step`.
#[derive(Clone, Debug, PartialEq)]
struct LinearAxis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

impl LinearAxis {
    /// The range widened to whole multiples of a nice step, about `target` ticks.
    fn fit(lo: f64, hi: f64, target: usize) -> Self {
        let (lo, hi) = widen(lo, hi);
        let step = nice_step((hi - lo) / target as f64);
        let lo = (lo / step).floor() * step;
        let hi = (hi / step).ceil() * step;
        Self::with_step(lo, hi, step)
    }

    /// Exactly `lo..hi`, ticks at the nice multiples inside.
    fn exact(lo: f64, hi: f64, target: usize) -> Self {
        let (lo, hi) = widen(lo, hi);
        Self::with_step(lo, hi, nice_step((hi - lo) / target as f64))
    }

    fn with_step(lo: f64, hi: f64, step: f64) -> Self {
        let ticks = linear_ticks(lo, hi, step);
        LinearAxis {
            lo,
            hi,
            step,
            ticks,
        }
    }
}

impl Axis for LinearAxis {
    fn unit(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }
    fn ticks(&self) -> Vec<Tick> {
        self.ticks
            .iter()
            .map(|&v| Tick {
                value: v,
                label: format_tick(v, self.step),
            })
            .collect()
    }
}

/// A base-10 log axis from the decade below the data to the decade above.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn fit(lo: f64, hi: f64) -> Self {
        let lo = if lo > 0.0 && lo.is_finite() { lo } else { 1e-3 };
        let hi = if hi > lo && hi.is_finite() {
            hi
        } else {
            lo * 10.0
        };
        // From the largest 1, 2 or 5 times a power of ten at or below `lo` to the smallest at or above `hi`.
        let below = |v: f64| {
            let p = 10f64.powf(v.log10().floor());
            [5.0, 2.0, 1.0]
                .iter()
                .map(|m| m * p)
                .find(|&c| c <= v * (1.0 + 1e-9))
                .unwrap_or(p)
        };
        let above = |v: f64| {
            let p = 10f64.powf(v.log10().floor());
            [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * p)
                .find(|&c| c >= v * (1.0 - 1e-9))
                .unwrap_or(10.0 * p)
        };
        LogAxis {
            lo: below(lo),
            hi: above(hi),
        }
    }
}

impl Axis for LogAxis {
    fn unit(&self, v: f64) -> f64 {
        (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
    }
    fn ticks(&self) -> Vec<Tick> {
        log_ticks(self.lo, self.hi)
            .into_iter()
            .map(|v| Tick {
                value: v,
                label: format_log_tick(v),
            })
            .collect()
    }
}

/// A zero-width range gets some room: `±1` around 0, `±10%` around anything else.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return (0.0, 1.0);
    }
    if hi - lo > 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        return (lo, hi);
    }
    let d = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
    (lo - d, hi + d)
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= raw * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// The multiples of `step` in `lo..=hi` (values snapped to the step, so `0.1 * 3` prints as `0.3`).
pub fn linear_ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if step.is_nan() || step <= 0.0 || lo.is_nan() || hi.is_nan() || hi < lo {
        return Vec::new();
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Ticks of a log axis over `lo..=hi` (powers of ten): every power of ten, every second or third one when there
/// are more than 8 decades, and 2x and 5x multiples too when there are at most 2.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if lo.is_nan() || hi.is_nan() || lo <= 0.0 || hi < lo {
        return Vec::new();
    }
    let (a, b) = (
        (lo.log10() - 1e-9).ceil() as i32,
        (hi.log10() + 1e-9).floor() as i32,
    );
    let decades = (b - a).max(0) as usize;
    let every = decades.div_ceil(8).max(1) as i32;
    let mut out = Vec::new();
    for k in (a - 1)..=b {
        let p = 10f64.powi(k);
        let mults: &[f64] = if decades <= 2 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        for &m in mults {
            let v = m * p;
            let on_grid = m != 1.0 || (k - a).rem_euclid(every) == 0;
            if on_grid && v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                out.push(v);
            }
        }
    }
    out
}

/// A tick value with as many decimals as `step` needs: `0.25`, `1,500`; `2e-5` when the step is below 0.001.
pub fn format_tick(v: f64, step: f64) -> String {
    // -0.0 + 0.0 is +0.0: no "-0.0" tick.
    let v = v + 0.0;
    let a = v.abs();
    // Small steps (learning rates) read better as 2e-4 than as 0.0002.
    if a != 0.0 && (a >= 1e6 || step < 1e-3) {
        return sci(v);
    }
    if a == 0.0 && step < 1e-3 {
        return "0".into();
    }
    let decimals = if step >= 1.0 {
        usize::from((step - 2.5).abs() < 1e-9)
    } else {
        (-(step.log10()) - 1e-9).ceil().max(0.0) as usize + usize::from(is_quarter(step))
    };
    let s = format!("{v:.decimals$}");
    group_thousands(&s)
}

/// Whether `step` is 2.5 times a power of ten (its ticks need one more decimal: 0.25, 0.5, 0.75).
fn is_quarter(step: f64) -> bool {
    let m = step / 10f64.powf(step.log10().floor());
    (m - 2.5).abs() < 1e-6
}

/// A log tick: plain for `1e-4 ..= 1e5`, otherwise `2e-6`.
fn format_log_tick(v: f64) -> String {
    let a = v.abs();
    if (1e-4..1e6).contains(&a) {
        let decimals = (-(a.log10()) - 1e-9).ceil().max(0.0) as usize;
        group_thousands(&format!("{v:.decimals$}"))
    } else {
        sci(v)
    }
}

/// `2e-5`, `1.5e6`: the shortest mantissa that round-trips to 3 significant digits.
fn sci(v: f64) -> String {
    let e = v.abs().log10().floor() as i32;
    let m = v / 10f64.powi(e);
    let m = format!("{m:.2}");
    let m = m.trim_end_matches('0').trim_end_matches('.');
    format!("{m}e{e}")
}

/// `12345.5` as `12,345.5` (integer parts of five digits or more only, so years and steps like 2000 stay).
fn group_thousands(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if int.len() < 5 {
        return s.to_string();
    }
    let mut out = String::from(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// Escapes text for SVG/HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].to_string())
            })
            .collect()
    }

    #[test]
    fn the_svg_holds_title_axis_labels_ticks_and_legend() {
        let svg = Plot::new("Loss <train & val>", "step", "loss")
            .line(
                "train",
                (1..=100).map(|s| (f64::from(s), 1.0 / f64::from(s))),
            )
            .line("val", [(50.0, 0.05), (100.0, 0.02)])
            .to_svg();
        let t = texts(&svg);
        assert!(
            t.contains(&"Loss &lt;train &amp; val&gt;".to_string()),
            "{t:?}"
        );
        assert!(t.contains(&"step".to_string()), "{t:?}");
        assert!(t.contains(&"loss (log scale)".to_string()), "{t:?}");
        assert!(t.contains(&"train".to_string()) && t.contains(&"val".to_string()));
        assert!(svg.contains("class=\"legend\""));
        // x ticks are round: 0, 20, ..., 100; y ticks are powers of ten over the data's decades.
        for want in ["0", "20", "100", "0.01", "0.1", "1"] {
            assert!(t.contains(&want.to_string()), "{want} not in {t:?}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // One line: no legend.
        let one = Plot::new("t", "x", "y")
            .line("only", [(0.0, 1.0), (1.0, 2.0)])
            .to_svg();
        assert!(!one.contains("class=\"legend\""));
    }

    #[test]
    fn log_scale_only_when_the_values_span_more_than_a_decade() {
        let p = |ys: &[f64]| {
            Plot::new("t", "x", "y").line("a", ys.iter().enumerate().map(|(i, &y)| (i as f64, y)))
        };
        assert!(p(&[2.0, 0.1]).is_log());
        assert!(!p(&[2.0, 0.3]).is_log());
        assert!(
            !p(&[2.0, -0.1, 0.001]).is_log(),
            "negative values stay linear"
        );
        assert!(!p(&[2.0, 0.1]).y_scale(Scale::Linear).is_log());
        assert!(p(&[2.0, 1.5]).y_scale(Scale::Log).is_log());
        // Log drops non-positive points instead of drawing at -inf.
        let svg = p(&[1.0, 0.0, 0.01]).y_scale(Scale::Log).to_svg();
        assert!(!svg.contains("inf") && !svg.contains("NaN"));
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(230.0), 250.0);
        assert_eq!(nice_step(1.0), 1.0);
        let a = LinearAxis::fit(0.37, 2.91, 6);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 3.0, 0.5));
        let labels: Vec<String> = a.ticks().into_iter().map(|t| t.label).collect();
        assert_eq!(labels, ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0"]);
        let a = LinearAxis::fit(1.0, 12_000.0, 8);
        assert_eq!(a.step, 2000.0);
        assert_eq!(format_tick(12_000.0, 2000.0), "12,000");
        assert_eq!(format_tick(0.3, 0.1), "0.3");
        assert_eq!(format_tick(0.75, 0.25), "0.75");
        assert_eq!(format_tick(2e-5, 1e-5), "2e-5");
        let tenths: Vec<String> = linear_ticks(0.0, 1.0, 0.1)
            .into_iter()
            .map(|t| format_tick(t, 0.1))
            .collect();
        assert_eq!(tenths.len(), 11);
        assert_eq!((tenths[3].as_str(), tenths[10].as_str()), ("0.3", "1.0"));
        assert_eq!(format_tick(7.5, 2.5), "7.5");
        assert_eq!(format_tick(-0.0, 0.5), "0.0");
        assert_eq!(format_tick(0.0, 1e-4), "0");
        assert_eq!(format_tick(5e-4, 1e-4), "5e-4");
        assert_eq!(format_tick(2.5e-4, 5e-5), "2.5e-4");
        assert_eq!(log_ticks(0.01, 10.0), [0.01, 0.1, 1.0, 10.0]);
        assert_eq!(log_ticks(0.1, 10.0), [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]);
        assert_eq!(format_log_tick(0.001), "0.001");
        assert_eq!(format_log_tick(1e-7), "1e-7");
        assert_eq!(format_log_tick(100_000.0), "100,000");
        // A constant series still gets a readable range.
        let flat = LinearAxis::fit(3.0, 3.0, 6);
        assert!(flat.lo < 3.0 && flat.hi > 3.0 && flat.ticks.len() >= 2);
    }

    /// The legend box's top-left corner in an SVG.
    fn legend_at(svg: &str) -> (f64, f64) {
        let legend = &svg[svg.find("class=\"legend\"").unwrap()..];
        let attr = |name: &str| -> f64 {
            let at = legend.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            legend[at..].split('"').next().unwrap().parse().unwrap()
        };
        (attr("x"), attr("y"))
    }

    #[test]
    fn the_legend_avoids_the_lines_and_zero_is_kept_when_asked() {
        // Accuracies climbing to the top right: the legend leaves that corner for an empty one.
        let rise = |k: f64| (1..=20).map(move |s| (f64::from(s), 1.0 - k / f64::from(s)));
        let svg = Plot::new("acc", "step", "top-1")
            .y_range(0.0, 1.0)
            .line("a", rise(0.5))
            .line("b", rise(0.3))
            .to_svg();
        let (x, y) = legend_at(&svg);
        assert!(x < 200.0 || y > 100.0, "legend at {x}, {y}");
        // Sparse points (an evaluation every 100 steps) ending high: the segments into the top
        // right count, so the legend goes to the empty bottom right.
        let sparse = |a: f64| (1..=6).map(move |s| (f64::from(s * 100), a + 0.01 * f64::from(s)));
        let svg = Plot::new("acc", "step", "top-1")
            .y_range(0.0, 1.0)
            .line("a", sparse(0.90))
            .line("b", sparse(0.86))
            .to_svg();
        let (x, y) = legend_at(&svg);
        assert!(x > 300.0 && y > 200.0, "legend at {x}, {y}");
        let lr = Plot::new("lr", "step", "lr")
            .line("lr", [(1.0, 5e-4), (2.0, 4e-4)])
            .y_from_zero()
            .to_svg();
        assert!(texts(&lr).contains(&"0".to_string()), "{:?}", texts(&lr));
        // A log axis ends at the 1-2-5 value around the data, not at the next power of ten.
        let a = LogAxis::fit(0.07, 2.1);
        assert_eq!((a.lo, a.hi), (0.05, 5.0));
    }

    #[test]
    fn empty_and_huge_plots_render() {
        let svg = Plot::new("nothing", "x", "y").to_svg();
        assert!(svg.contains("no data yet"));
        let many: Vec<(f64, f64)> = (0..200_000).map(|i| (i as f64, (i % 7) as f64)).collect();
        let svg = Plot::new("many", "x", "y").line("a", many).to_svg();
        assert!(svg.len() < 200_000, "{} bytes", svg.len());
        assert!(escape("a<'\"&>") == "a&lt;&#39;&quot;&amp;&gt;");
    }
}
