//! Recognition heads (paper § "Recognition", MAE's recipe): a fine-tuning classifier over the
//! encoder (all patches visible, drop path, layer-wise lr decay groups) and a linear probe.

use candle_core::{DType, Device, Tensor};
use dmae_core::Param;
use dmae_diffusion::MaskIndices;
use serde::{Deserialize, Serialize};

use crate::block::{LayerNorm, Linear};
use crate::config::ModelConfig;
use crate::encoder::Encoder;
use crate::error::{check_shape, Error, Result};
use crate::model::DiffMae;
use crate::params::{Init, NamedParam, ParamStore};

/// How the encoder tokens become one feature vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// MAE fine-tuning's `global_pool`: mean of the patch tokens (raw last block output, cls
    /// excluded), then `fc_norm`. The encoder's final norm is unused.
    #[default]
    Avg,
    /// The cls token of the normalised encoder output.
    Cls,
}

impl Encoder {
    /// Encodes whole images `(N, C, H, W)` or clips `(N, C, T, H, W)` (every patch visible) and pools them to `(N, D)`
    /// (without `fc_norm`).
    pub fn features(
        &self,
        images: &Tensor,
        config: &ModelConfig,
        pool: Pool,
        drop_path_seed: Option<u64>,
    ) -> Result<Tensor> {
        let patches = config.patchify(images)?;
        let (n, l, _) = patches.dims3()?;
        if l != self.num_patches() {
            return Err(Error::shape(
                "images (patches)",
                &[n, self.num_patches()],
                &[n, l],
            ));
        }
        let m = MaskIndices::all_visible(n, l, images.device())?;
        let out = self.forward(&patches, m.visible(), drop_path_seed)?;
        Ok(match pool {
            Pool::Avg => {
                let last = out
                    .hidden
                    .last()
                    .ok_or_else(|| Error::config("encoder.depth", "no blocks"))?;
                last.narrow(1, 1, l)?.mean(1)?
            }
            Pool::Cls => out.last.narrow(1, 0, 1)?.squeeze(1)?,
        })
    }
}

/// Fine-tuning classifier: encoder over the whole image, pooling, (`fc_norm` for average
/// pooling), linear head. Tensor names: `encoder.*` (as in [`crate::checkpoint`]),
/// `fc_norm.{weight, bias}`, `head.{weight, bias}`.
#[derive(Clone, Debug)]
pub struct Classifier {
    config: ModelConfig,
    /// The encoder (drop path from `config.encoder.drop_path`).
    pub encoder: Encoder,
    /// Norm after average pooling.
    pub fc_norm: Option<LayerNorm>,
    /// `(classes, D)` linear.
    pub head: Linear,
    /// Pooling.
    pub pool: Pool,
    params: Vec<NamedParam>,
}

impl Classifier {
    /// A fresh classifier (encoder with MAE init, head `N(0, 2e-5²)` as MAE's fine-tuning).
    pub fn new(
        config: ModelConfig,
        num_classes: usize,
        pool: Pool,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if num_classes == 0 {
            return Err(Error::arg("num_classes", "must be positive"));
        }
        let mut ps = ParamStore::new(seed, device);
        let encoder = Encoder::new(&mut ps, &config)?;
        let d = config.encoder.dim;
        let fc_norm = match pool {
            Pool::Avg => Some(LayerNorm::new(&mut ps, "fc_norm", d, config.norm_eps)?),
            Pool::Cls => None,
        };
        let weight = ps.get("head.weight".into(), &[num_classes, d], Init::Normal(2e-5))?;
        let bias = ps.get("head.bias".into(), &[num_classes], Init::Const(0.0))?;
        Ok(Self {
            config,
            encoder,
            fc_norm,
            head: Linear {
                weight,
                bias: Some(bias),
            },
            pool,
            params: ps.params,
        })
    }

    /// A classifier whose encoder starts from a pre-trained DiffMAE/MAE (weights and position
    /// embeddings copied).
    pub fn from_pretrained(
        model: &DiffMae,
        num_classes: usize,
        pool: Pool,
        drop_path: f64,
        seed: u64,
    ) -> Result<Self> {
        let mut config = model.config().clone();
        config.encoder.drop_path = drop_path;
        let mut c = Self::new(
            config,
            num_classes,
            pool,
            seed,
            model.encoder.cls_token.device(),
        )?;
        // Fixed, but not necessarily the sin-cos (an imported network keeps its file's).
        c.encoder.pos_embed = model.encoder.pos_embed.clone();
        for p in c.params.iter().filter(|p| p.name.starts_with("encoder.")) {
            let src = model
                .named_params()
                .iter()
                .find(|q| q.name == p.name)
                .ok_or_else(|| Error::MissingTensor {
                    name: p.name.clone(),
                    expected: p.var.dims().to_vec(),
                })?;
            p.var.set(&src.var.as_tensor().copy()?)?;
        }
        Ok(c)
    }

    /// Logits `(N, classes)` of images `(N, C, H, W)` (clips `(N, C, T, H, W)`); `drop_path_seed` enables stochastic depth
    /// (training).
    pub fn forward(&self, images: &Tensor, drop_path_seed: Option<u64>) -> Result<Tensor> {
        let c = &self.config;
        let n = images.dims().first().copied().unwrap_or(0);
        let mut want = vec![n];
        want.extend(c.input_dims());
        check_shape("images", images, &want)?;
        let mut f = self
            .encoder
            .features(images, c, self.pool, drop_path_seed)?;
        if let Some(norm) = &self.fc_norm {
            f = norm.forward(&f)?;
        }
        self.head.forward(&f)
    }

    /// Every parameter with its name.
    pub fn named_params(&self) -> &[NamedParam] {
        &self.params
    }

    /// The encoder's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of classes of the head.
    pub fn num_classes(&self) -> usize {
        self.head.weight.dims()[0]
    }

    /// MAE's `param_groups_lrd`: layer id 0 for `cls_token`/`patch_embed`, `i + 1` for block
    /// `i`, `depth + 1` for the rest (final norms, head); `lr_scale = layer_decay^(depth + 1 −
    /// id)`; `weight_decay` on matrices only (not on biases, norms, tokens).
    pub fn param_groups(&self, weight_decay: f64, layer_decay: f64) -> Vec<Param> {
        let depth = self.encoder.blocks.len();
        self.params
            .iter()
            .map(|p| {
                let id = layer_id(&p.name, depth);
                Param {
                    var: p.var.clone(),
                    weight_decay: if p.decays() { weight_decay } else { 0.0 },
                    lr_scale: layer_decay.powi((depth + 1 - id) as i32),
                }
            })
            .collect()
    }
}

/// MAE's `get_layer_id_for_vit`.
pub fn layer_id(name: &str, depth: usize) -> usize {
    if name == "encoder.cls_token" || name.starts_with("encoder.patch_embed") {
        0
    } else if let Some(rest) = name.strip_prefix("encoder.blocks.") {
        rest.split('.')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .map_or(depth + 1, |i| i + 1)
    } else {
        depth + 1
    }
}

/// MAE's linear probe: feature normalisation without affine parameters, then a linear layer.
/// (MAE uses BatchNorm without affine; this is the per-sample LayerNorm form, eps 1e-6.)
/// Tensor names: `head.{weight, bias}`.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// `(classes, D)` linear, init `N(0, 0.01²)` as MAE.
    pub head: Linear,
    ones: Tensor,
    zeros: Tensor,
    params: Vec<NamedParam>,
}

impl LinearProbe {
    /// A probe over `dim` features.
    pub fn new(dim: usize, num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        if dim == 0 || num_classes == 0 {
            return Err(Error::arg("dim/num_classes", "must be positive"));
        }
        let mut ps = ParamStore::new(seed, device);
        let weight = ps.get(
            "head.weight".into(),
            &[num_classes, dim],
            Init::Normal(0.01),
        )?;
        let bias = ps.get("head.bias".into(), &[num_classes], Init::Const(0.0))?;
        Ok(Self {
            head: Linear {
                weight,
                bias: Some(bias),
            },
            ones: Tensor::ones(dim, DType::F32, device)?,
            zeros: Tensor::zeros(dim, DType::F32, device)?,
            params: ps.params,
        })
    }

    /// Logits `(N, classes)` of features `(N, D)` (detach them to keep the encoder frozen).
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let n = features.dims().first().copied().unwrap_or(0);
        check_shape("features", features, &[n, self.ones.dims()[0]])?;
        let f = dmae_core::layer_norm(features, &self.ones, &self.zeros, 1e-6)?;
        self.head.forward(&f)
    }

    /// The head's parameters (weight decay on the weight only).
    pub fn param_groups(&self, weight_decay: f64) -> Vec<Param> {
        self.params
            .iter()
            .map(|p| Param::new(p.var.clone(), if p.decays() { weight_decay } else { 0.0 }))
            .collect()
    }

    /// Every parameter with its name.
    pub fn named_params(&self) -> &[NamedParam] {
        &self.params
    }
}
