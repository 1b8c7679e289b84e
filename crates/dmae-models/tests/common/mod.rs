#![allow(dead_code)]
use candle_core::{Device, Tensor};
use dmae_models::{CrossSource, DecoderKind, ModelConfig};

/// 16 x 16 px, patch 4, 3 channels, encoder 32x3 (2 heads), decoder 16x2 (2 heads).
pub fn tiny(kind: DecoderKind, source: CrossSource) -> ModelConfig {
    let mut c = ModelConfig::mnist();
    c.image_size = [16, 16];
    c.in_channels = 3;
    c.encoder.dim = 32;
    c.encoder.depth = 3;
    c.encoder.heads = 2;
    c.decoder.dim = 16;
    c.decoder.depth = 2;
    c.decoder.heads = 2;
    c.decoder.time_embed_dim = 16;
    c.decoder.kind = kind;
    c.decoder.cross_source = source;
    c
}

pub fn all_configs() -> Vec<ModelConfig> {
    let mut v = Vec::new();
    for kind in [
        DecoderKind::Joint,
        DecoderKind::Cross,
        DecoderKind::CrossSelf,
    ] {
        for src in [CrossSource::Last, CrossSource::TopDown] {
            if kind == DecoderKind::Joint && src == CrossSource::TopDown {
                continue;
            }
            v.push(tiny(kind, src));
        }
    }
    v.push(tiny(DecoderKind::Joint, CrossSource::Last).into_mae());
    let mut m = tiny(DecoderKind::CrossSelf, CrossSource::TopDown);
    m.decoder.masked_input = dmae_models::MaskedInput::MaskToken;
    v.push(m);
    let mut nt = tiny(DecoderKind::Cross, CrossSource::TopDown);
    nt.decoder.time_conditioning = false;
    v.push(nt);
    v
}

pub fn images(n: usize, c: &ModelConfig, dev: &Device) -> Tensor {
    // Smooth deterministic images so the loss has structure to learn.
    let [h, w] = c.image_size;
    let ch = c.in_channels;
    let mut v = Vec::with_capacity(n * ch * h * w);
    for s in 0..n {
        for k in 0..ch {
            for y in 0..h {
                for x in 0..w {
                    let f = ((x as f32 * 0.4 + s as f32).sin()
                        + (y as f32 * 0.3 * (k + 1) as f32).cos())
                        * 0.5;
                    v.push(f);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, ch, h, w), dev).unwrap()
}

/// `max |a − b|` over all elements (same shapes).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
