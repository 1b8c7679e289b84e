//! Text on PNG figures without a font dependency: a built-in 5x7 pixel font (digits, letters, a little
//! punctuation) drawn at an integer scale, and label bands for picture grids, e.g. `t = 999 ... 0` above the
//! columns of a trajectory strip.
//!
//! Why a bitmap font in PNGs rather than SVG strips: a strip is a picture people paste into READMEs, issues and
//! papers, where a PNG shows everywhere and an SVG that embeds PNG cells often does not (and a separate HTML page
//! is one more file to keep). Characters the font lacks are drawn as an empty box, never dropped silently.

use image::{Rgb, RgbImage};

/// Glyph width in font pixels (plus one column of spacing between characters).
pub const GLYPH_W: u32 = 5;
/// Glyph height in font pixels.
pub const GLYPH_H: u32 = 7;

/// The font: 7 rows of 5 columns per character, `#` for ink.
const GLYPHS: &[(char, [&str; 7])] = &[
    (
        ' ',
        [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
    ),
    (
        '0',
        [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
    ),
    (
        '1',
        [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
    ),
    (
        '2',
        [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
    ),
    (
        '3',
        [
            "#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.",
        ],
    ),
    (
        '4',
        [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
    ),
    (
        '5',
        [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
    ),
    (
        '6',
        [
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ],
    ),
    (
        '7',
        [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
    ),
    (
        '8',
        [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
    ),
    (
        '9',
        [
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ],
    ),
    (
        'A',
        [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'B',
        [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
    ),
    (
        'C',
        [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
    ),
    (
        'D',
        [
            "###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..",
        ],
    ),
    (
        'E',
        [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
    ),
    (
        'F',
        [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
    ),
    (
        'G',
        [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
    ),
    (
        'H',
        [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'I',
        [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
    ),
    (
        'J',
        [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
    ),
    (
        'K',
        [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
    ),
    (
        'L',
        [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
    ),
    (
        'M',
        [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'N',
        [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
    ),
    (
        'O',
        [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
    ),
    (
        'P',
        [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
    ),
    (
        'Q',
        [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
    ),
    (
        'R',
        [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
    ),
    (
        'S',
        [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
    ),
    (
        'T',
        [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
    ),
    (
        'U',
        [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
    ),
    (
        'V',
        [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
    ),
    (
        'W',
        [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
    ),
    (
        'X',
        [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
    ),
    (
        'Y',
        [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
    ),
    (
        'Z',
        [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
    ),
    (
        'a',
        [
            ".....", ".....", ".###.", "....#", ".####", "#...#", ".####",
        ],
    ),
    (
        'b',
        [
            "#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####.",
        ],
    ),
    (
        'c',
        [
            ".....", ".....", ".###.", "#....", "#....", "#...#", ".###.",
        ],
    ),
    (
        'd',
        [
            "....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####",
        ],
    ),
    (
        'e',
        [
            ".....", ".....", ".###.", "#...#", "#####", "#....", ".###.",
        ],
    ),
    (
        'f',
        [
            "..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#...",
        ],
    ),
    (
        'g',
        [
            ".....", ".####", "#...#", "#...#", ".####", "....#", ".###.",
        ],
    ),
    (
        'h',
        [
            "#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'i',
        [
            "..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###.",
        ],
    ),
    (
        'j',
        [
            "...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##..",
        ],
    ),
    (
        'k',
        [
            "#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#.",
        ],
    ),
    (
        'l',
        [
            ".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
    ),
    (
        'm',
        [
            ".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#",
        ],
    ),
    (
        'n',
        [
            ".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'o',
        [
            ".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###.",
        ],
    ),
    (
        'p',
        [
            ".....", ".....", "####.", "#...#", "####.", "#....", "#....",
        ],
    ),
    (
        'q',
        [
            ".....", ".....", ".##.#", "#..##", ".####", "....#", "....#",
        ],
    ),
    (
        'r',
        [
            ".....", ".....", "#.##.", "##..#", "#....", "#....", "#....",
        ],
    ),
    (
        's',
        [
            ".....", ".....", ".###.", "#....", ".###.", "....#", "####.",
        ],
    ),
    (
        't',
        [
            ".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##.",
        ],
    ),
    (
        'u',
        [
            ".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#",
        ],
    ),
    (
        'v',
        [
            ".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
    ),
    (
        'w',
        [
            ".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#.",
        ],
    ),
    (
        'x',
        [
            ".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#",
        ],
    ),
    (
        'y',
        [
            ".....", ".....", "#...#", "#...#", ".####", "....#", ".###.",
        ],
    ),
    (
        'z',
        [
            ".....", ".....", "#####", "...#.", "..#..", ".#...", "#####",
        ],
    ),
    (
        '.',
        [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..",
        ],
    ),
    (
        ',',
        [
            ".....", ".....", ".....", ".....", ".##..", "..#..", ".#...",
        ],
    ),
    (
        ':',
        [
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....",
        ],
    ),
    (
        '=',
        [
            ".....", ".....", "#####", ".....", "#####", ".....", ".....",
        ],
    ),
    (
        '+',
        [
            ".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....",
        ],
    ),
    (
        '-',
        [
            ".....", ".....", ".....", "#####", ".....", ".....", ".....",
        ],
    ),
    (
        '_',
        [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ],
    ),
    (
        '/',
        [
            ".....", "....#", "...#.", "..#..", ".#...", "#....", ".....",
        ],
    ),
    (
        '(',
        [
            "...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.",
        ],
    ),
    (
        ')',
        [
            ".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...",
        ],
    ),
    (
        '%',
        [
            "##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##",
        ],
    ),
    (
        '\'',
        [
            "..#..", "..#..", ".....", ".....", ".....", ".....", ".....",
        ],
    ),
    (
        '?',
        [
            ".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#..",
        ],
    ),
];

/// The box drawn for a character the font does not have.
const MISSING: [&str; 7] = [
    "#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####",
];

fn glyph(c: char) -> &'static [&'static str; 7] {
    GLYPHS
        .iter()
        .find(|(g, _)| *g == c)
        .map_or(&MISSING, |(_, rows)| rows)
}

/// Whether the font has `c` (others are drawn as a box).
pub fn has_glyph(c: char) -> bool {
    GLYPHS.iter().any(|(g, _)| *g == c)
}

/// `(width, height)` in pixels of `text` drawn at `scale`.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let n = text.chars().count() as u32;
    let w = if n == 0 { 0 } else { n * (GLYPH_W + 1) - 1 };
    (w * scale, GLYPH_H * scale)
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale x scale` square of `colour`;
/// what falls outside the image is clipped.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, colour: Rgb<u8>) {
    let s = i64::from(scale.max(1));
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for (k, c) in text.chars().enumerate() {
        let gx = x + k as i64 * i64::from(GLYPH_W + 1) * s;
        for (r, row) in glyph(c).iter().enumerate() {
            for (col, b) in row.bytes().enumerate() {
                if b != b'#' {
                    continue;
                }
                let (x0, y0) = (gx + col as i64 * s, y + r as i64 * s);
                for py in y0.max(0)..(y0 + s).min(h) {
                    for px in x0.max(0)..(x0 + s).min(w) {
                        img.put_pixel(px as u32, py as u32, colour);
                    }
                }
            }
        }
    }
}

/// Text colour that reads on `background`: near-white on dark, near-black on light.
fn ink_on(background: Rgb<u8>) -> Rgb<u8> {
    let [r, g, b] = background.0.map(f64::from);
    if 0.2126 * r + 0.7152 * g + 0.0722 * b < 128.0 {
        Rgb([235, 235, 235])
    } else {
        Rgb([20, 20, 20])
    }
}

/// The largest scale (1 to 3) at which every label fits in `room` pixels, given the cells' height as a guide
/// (text about a sixth of a cell).
fn fit_scale(labels: &[String], room: u32, cell_h: u32) -> u32 {
    let want = (cell_h / (6 * GLYPH_H)).clamp(1, 3);
    (1..=want)
        .rev()
        .find(|&s| labels.iter().all(|l| text_size(l, s).0 + 2 * s <= room))
        .unwrap_or(1)
}

/// `grid` (columns of equal width separated and surrounded by `pad` pixels, as `dmae sample` draws them) with
/// a band above it holding `labels[i]` centered over column `i`. The band takes the grid's border colour.
pub fn label_columns(grid: &RgbImage, labels: &[String], pad: u32) -> RgbImage {
    let cols = labels.len().max(1) as u32;
    let cell_w = grid.width().saturating_sub((cols + 1) * pad) / cols;
    let bg = *grid.get_pixel(0, 0);
    let scale = fit_scale(labels, cell_w, grid.height());
    let band = GLYPH_H * scale + 2 * (2 * scale).max(pad);
    let mut out = RgbImage::from_pixel(grid.width(), grid.height() + band, bg);
    image::imageops::replace(&mut out, grid, 0, i64::from(band));
    let ink = ink_on(bg);
    for (i, label) in labels.iter().enumerate() {
        let (tw, th) = text_size(label, scale);
        let x0 = pad + i as u32 * (cell_w + pad);
        let x = i64::from(x0) + (i64::from(cell_w) - i64::from(tw)) / 2;
        let y = i64::from(band.saturating_sub(th)) / 2 + i64::from(pad / 2);
        draw_text(&mut out, x, y, label, scale, ink);
    }
    out
}

/// `grid` (rows of equal height separated and surrounded by `pad` pixels) with a band on the left holding
/// `labels[i]` vertically centered beside row `i`, right-aligned.
pub fn label_rows(grid: &RgbImage, labels: &[String], pad: u32) -> RgbImage {
    let rows = labels.len().max(1) as u32;
    let cell_h = grid.height().saturating_sub((rows + 1) * pad) / rows;
    let bg = *grid.get_pixel(0, 0);
    let scale = fit_scale(labels, u32::MAX, cell_h);
    let widest = labels
        .iter()
        .map(|l| text_size(l, scale).0)
        .max()
        .unwrap_or(0);
    let band = widest + 4 * scale + pad;
    let mut out = RgbImage::from_pixel(grid.width() + band, grid.height(), bg);
    image::imageops::replace(&mut out, grid, i64::from(band), 0);
    let ink = ink_on(bg);
    for (i, label) in labels.iter().enumerate() {
        let (tw, th) = text_size(label, scale);
        let y0 = pad + i as u32 * (cell_h + pad);
        let y = i64::from(y0) + (i64::from(cell_h) - i64::from(th)) / 2;
        let x = i64::from(band) - i64::from(tw) - i64::from(2 * scale);
        draw_text(&mut out, x, y, label, scale, ink);
    }
    out
}

/// The labels of a trajectory strip's columns: `t=999`, ..., `t=0`.
pub fn timestep_labels(timesteps: &[usize]) -> Vec<String> {
    timesteps.iter().map(|t| format!("t={t}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_5x7_and_distinct() {
        for (c, rows) in GLYPHS {
            assert!(
                rows.iter()
                    .all(|r| r.len() == GLYPH_W as usize
                        && r.bytes().all(|b| b == b'#' || b == b'.')),
                "{c:?}"
            );
        }
        for (i, (a, ra)) in GLYPHS.iter().enumerate() {
            for (b, rb) in &GLYPHS[i + 1..] {
                assert!(a != b && ra != rb, "{a:?} and {b:?}");
            }
        }
        for c in ('0'..='9')
            .chain('a'..='z')
            .chain('A'..='Z')
            .chain("t=.-%()".chars())
        {
            assert!(has_glyph(c), "{c:?}");
        }
    }

    #[test]
    fn text_lands_where_asked_with_the_font_pixels() {
        let mut img = RgbImage::from_pixel(40, 20, Rgb([0, 0, 0]));
        draw_text(&mut img, 1, 2, "1", 2, Rgb([255, 255, 255]));
        // '1' row 0 is "..#..": ink at font column 2, i.e. pixels x = 1 + 4..6, y = 2..4.
        assert_eq!(img.get_pixel(5, 2).0, [255; 3]);
        assert_eq!(img.get_pixel(6, 3).0, [255; 3]);
        assert_eq!(img.get_pixel(1, 2).0, [0; 3]);
        assert_eq!(text_size("t=999", 1), (29, 7));
        // Clipped, not panicking, at the edges.
        draw_text(&mut img, -7, 15, "W?é", 3, Rgb([9, 9, 9]));
    }

    #[test]
    fn column_labels_sit_above_their_columns() {
        let pad = 2;
        let (cols, cell) = (4u32, 64u32);
        let grid =
            RgbImage::from_pixel(cols * cell + (cols + 1) * pad, cell + 2 * pad, Rgb([40; 3]));
        let labels = timestep_labels(&[999, 666, 333, 0]);
        assert_eq!(labels[0], "t=999");
        let out = label_columns(&grid, &labels, pad);
        assert_eq!(out.width(), grid.width());
        let band = out.height() - grid.height();
        assert!(band >= GLYPH_H);
        // Ink in every column's part of the band, none in the gaps between columns, light on the dark border.
        for i in 0..cols {
            let x0 = pad + i * (cell + pad);
            let inked = (x0..x0 + cell)
                .flat_map(|x| (0..band).map(move |y| (x, y)))
                .filter(|&(x, y)| out.get_pixel(x, y).0 == [235; 3])
                .count();
            assert!(inked > 10, "column {i}: {inked}");
        }
        assert_eq!(out.get_pixel(pad + cell, 3).0, [40; 3]);
        let rows = label_rows(&grid, &["input".to_string()], pad);
        assert_eq!(rows.height(), grid.height());
        assert!(rows.width() > grid.width());
    }
}
