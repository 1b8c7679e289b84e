//! Config files: `--config FILE.toml` with a `[model]` table (a [`ModelConfig`] over the chosen
//! preset) and a `[train]` table (the flags' names and meanings). Precedence: flags, then the
//! file, then the defaults. Unknown keys are errors naming the key and the file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use dmae_models::ModelConfig;
use toml::{Table, Value};

/// A parsed config file: its optional `[model]` and `[train]` tables.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    /// Where it came from (for error messages).
    pub path: String,
    /// The `[model]` table, merged over the preset by [`ConfigFile::model`].
    pub model: Option<Table>,
    /// The `[train]` table (or `[finetune]`), deserialised by the command.
    pub train: Option<Table>,
}

impl ConfigFile {
    /// Reads `path`; `section` is the command's table (`train` or `finetune`). Other top-level
    /// keys are errors.
    pub fn read(path: &Path, section: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--config {}: cannot read the file", path.display()))?;
        Self::parse(&text, &path.display().to_string(), section)
    }

    /// [`ConfigFile::read`] from text.
    pub fn parse(text: &str, path: &str, section: &str) -> Result<Self> {
        let mut table: Table = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("--config {path}: not valid TOML: {}", one_line(&e)))?;
        let mut take = |key: &str| -> Result<Option<Table>> {
            match table.remove(key) {
                None => Ok(None),
                Some(Value::Table(t)) => Ok(Some(t)),
                Some(_) => bail!("--config {path}: `{key}` must be a table ([{key}])"),
            }
        };
        let model = take("model")?;
        let train = take(section)?;
        if let Some(key) = table.keys().next() {
            bail!("--config {path}: unknown key `{key}` (expected the tables [model] and [{section}])");
        }
        Ok(Self {
            path: path.to_string(),
            model,
            train,
        })
    }

    /// `base` with the `[model]` table's values over it (nested tables merge key by key).
    pub fn model(&self, base: ModelConfig) -> Result<ModelConfig> {
        let Some(over) = &self.model else {
            return Ok(base);
        };
        let mut value = Value::try_from(&base).context("model config to TOML")?;
        merge(&mut value, over, "model", &self.path)?;
        // Validated by the caller, once the flags (--decoder, --mae) are applied too.
        value
            .try_into()
            .map_err(|e| anyhow::anyhow!("--config {}: [model]: {}", self.path, one_line(&e)))
    }

    /// The command's table as `T` (whose serde attributes reject unknown fields).
    pub fn section<T: serde::de::DeserializeOwned + Default>(&self, section: &str) -> Result<T> {
        match &self.train {
            None => Ok(T::default()),
            Some(t) => Value::Table(t.clone()).try_into().map_err(|e| {
                anyhow::anyhow!("--config {}: [{section}]: {}", self.path, one_line(&e))
            }),
        }
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Overwrites the keys of `over` in `base`; a key absent from `base` is unknown.
fn merge(base: &mut Value, over: &Table, at: &str, path: &str) -> Result<()> {
    let Value::Table(base) = base else {
        bail!("--config {path}: `{at}` is not a table");
    };
    for (k, v) in over {
        let here = format!("{at}.{k}");
        match base.get_mut(k) {
            None => bail!("--config {path}: unknown key `{here}`"),
            Some(slot @ Value::Table(_)) => match v {
                Value::Table(t) => merge(slot, t, &here, path)?,
                _ => bail!("--config {path}: `{here}` must be a table"),
            },
            Some(slot) => *slot = v.clone(),
        }
    }
    Ok(())
}

/// Writes the resolved `[model]` and `[section]` tables to `path` (atomically).
pub fn write_resolved<T: serde::Serialize>(
    path: &Path,
    model: &ModelConfig,
    section: &str,
    settings: &T,
) -> Result<()> {
    let mut top = Table::new();
    top.insert("model".into(), Value::try_from(model)?);
    top.insert(section.into(), Value::try_from(settings)?);
    let text = toml::to_string(&top)?;
    dmae_models::write_atomic(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_tables_merge_over_the_preset_and_unknown_keys_name_key_and_file() {
        let f = ConfigFile::parse(
            "[model]\nencoder = { dim = 64, depth = 2, heads = 2 }\ndecoder.depth = 1\n[train]\nsteps = 3\n",
            "a.toml",
            "train",
        )
        .unwrap();
        let c = f.model(ModelConfig::mnist()).unwrap();
        assert_eq!(
            (c.encoder.dim, c.encoder.depth, c.encoder.heads),
            (64, 2, 2)
        );
        // Untouched keys keep the preset's values, not the serde defaults.
        assert_eq!(c.in_channels, 1);
        assert_eq!(c.decoder.depth, 1);
        assert_eq!(c.decoder.dim, ModelConfig::mnist().decoder.dim);

        let e = ConfigFile::parse("[model]\nencoder = { width = 3 }\n", "b.toml", "train")
            .unwrap()
            .model(ModelConfig::mnist())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.toml") && e.contains("model.encoder.width"),
            "{e}"
        );
        let e = ConfigFile::parse("[optim]\nlr = 1\n", "c.toml", "train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("optim"), "{e}");
        let e = ConfigFile::parse("[model]\npatch_size = \"four\"\n", "d.toml", "train")
            .unwrap()
            .model(ModelConfig::mnist())
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.toml"), "{e}");
    }
}
