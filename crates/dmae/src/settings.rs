//! Config files: `--config FILE.toml` with a `[model]` table (a [`ModelConfig`] over the chosen
//! preset) and a `[train]` (or `[finetune]`) table whose keys are the command's flags. The table
//! is parsed as command-line arguments placed before the real ones ([`layered`]), so each flag
//! is declared once (its clap attribute holds its default and its checks) and precedence is:
//! flags, then the file, then the defaults. Unknown keys are errors naming the key and the file.

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
    /// The command's table (`[train]` or `[finetune]`): its flags' long names and values.
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
            .map_err(|e| Usage(format!("--config {path}: not valid TOML: {}", one_line(&e))))?;
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
        // The keys a [model] table may hold: those of `base`, plus its optional tables that are
        // absent when unset (`diffusion.clip`, which a CLIP run's config.toml holds).
        let mut full = base.clone();
        full.diffusion
            .clip
            .get_or_insert_with(|| dmae_models::ClipTarget {
                model: String::new(),
                dim: 0,
                features: Default::default(),
                weight: 1.0,
            });
        let schema = Value::try_from(&full).context("model config to TOML")?;
        // What the file says is what the user typed: a refusal is a usage error.
        merge(&mut value, &schema, over, "model", &self.path)
            .map_err(|e| Usage(format!("{e:#}")))?;
        // Validated by the caller, once the flags (--decoder, --mae) are applied too.
        value
            .try_into()
            .map_err(|e| Usage(format!("--config {}: [model]: {}", self.path, one_line(&e))).into())
    }

    /// The command's table as command-line arguments of `command` (`key = value` becomes
    /// `--key value`, `key = true` becomes `--key`), checked by parsing them alone so that an
    /// invalid value is reported with the file's name. Unknown keys are errors naming the key.
    /// Keys whose flag (or a flag that conflicts with it, like `epochs` for `steps`) is in
    /// `given` are left out: the command line wins.
    pub fn args(
        &self,
        command: &clap::Command,
        section: &str,
        given: &[&str],
    ) -> Result<Vec<String>> {
        let Some(table) = &self.train else {
            return Ok(Vec::new());
        };
        let mut args = Vec::new();
        for (key, value) in table {
            let Some(arg) = command
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()) && !a.is_hide_set())
            else {
                return Err(Usage(format!(
                    "--config {}: [{section}]: unknown key `{key}`",
                    self.path
                ))
                .into());
            };
            let overridden = given.contains(&arg.get_id().as_str())
                || command
                    .get_arg_conflicts_with(arg)
                    .iter()
                    .any(|c| given.contains(&c.get_id().as_str()));
            if overridden {
                continue;
            }
            let flag = format!("--{key}");
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            match value {
                Value::Boolean(true) if !takes_value => args.push(flag),
                Value::Boolean(false) if !takes_value => {}
                Value::String(s) => args.extend([flag, s.clone()]),
                Value::Integer(i) => args.extend([flag, i.to_string()]),
                // Debug, not Display: 1e308 stays "1e308" (Display writes all 309 digits).
                Value::Float(f) => args.extend([flag, format!("{f:?}")]),
                Value::Boolean(b) => args.extend([flag, b.to_string()]),
                other => {
                    return Err(Usage(format!(
                        "--config {}: [{section}]: `{key}` must be a number, a string or a boolean, got {} {}",
                        self.path,
                        if other.is_array() { "an" } else { "a" },
                        other.type_str()
                    ))
                    .into())
                }
            }
        }
        // A flag required on the command line (finetune's `--init`) may be missing from the file.
        match command
            .clone()
            .no_binary_name(true)
            .try_get_matches_from(&args)
        {
            Err(e) if e.kind() != clap::error::ErrorKind::MissingRequiredArgument => {
                return Err(Usage(format!(
                    "--config {}: [{section}]: {}",
                    self.path,
                    clap_line(&e)
                ))
                .into())
            }
            _ => {}
        }
        Ok(args)
    }
}

/// Parses a command's flags with a config file's table in front of the command line: the
/// flags given on the command line win over the file's, which win over the defaults (clap's
/// `default_value`s: one place for each default).
pub fn layered<T: clap::Parser>(
    section: &str,
    file: &ConfigFile,
    cli: &[std::ffi::OsString],
) -> Result<T> {
    let command = T::command();
    let on_cli = command
        .clone()
        .no_binary_name(true)
        .try_get_matches_from(cli)
        .map_err(|e| Usage(clap_line(&e)))?;
    let given: Vec<&str> = command
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| on_cli.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .collect();
    let mut argv: Vec<std::ffi::OsString> = vec![section.into()];
    argv.extend(
        file.args(&command, section, &given)?
            .into_iter()
            .map(Into::into),
    );
    argv.extend(cli.iter().cloned());
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| Usage(clap_line(&e)))?;
    Ok(T::from_arg_matches(&matches).map_err(|e| Usage(clap_line(&e)))?)
}

/// A value the user typed that cannot be used: `main` prints it as one `error:` line and
/// exits with 2, as clap does for the command line.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The first paragraph of a clap error on one line, without its `error: ` prefix (a missing
/// required flag is named on the lines after the first).
fn clap_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = one_line(&text.split("\n\n").next().unwrap_or(""));
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// `e` as one line, with numbers over 24 characters written short (serde prints the float
/// `5e-324` with all its 323 zeros).
fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
            .unwrap_or(rest.len());
        let number = &rest[..len];
        match number.parse::<f64>() {
            Ok(x) if len > 24 => out.push_str(&format!("{x:?}")),
            _ => out.push_str(number),
        }
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

/// Overwrites the keys of `over` in `base`; a key absent from `schema` (`base` with its
/// optional tables filled) is unknown, one absent from `base` only is inserted whole.
fn merge(base: &mut Value, schema: &Value, over: &Table, at: &str, path: &str) -> Result<()> {
    let Value::Table(base) = base else {
        bail!("--config {path}: `{at}` is not a table");
    };
    for (k, v) in over {
        let here = format!("{at}.{k}");
        let Some(known) = schema.get(k) else {
            bail!("--config {path}: unknown key `{here}`");
        };
        match base.get_mut(k) {
            None => {
                base.insert(k.clone(), v.clone());
            }
            Some(slot @ Value::Table(_)) => match v {
                Value::Table(t) => merge(slot, known, t, &here, path)?,
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
        // An optional table absent from the preset (a CLIP run's config.toml holds it).
        let c = ConfigFile::parse(
            "[model.diffusion]\ntarget = \"pixels+clip\"\n\
             [model.diffusion.clip]\nmodel = \"t\"\ndim = 8\nweight = 0.5\n",
            "e.toml",
            "train",
        )
        .unwrap()
        .model(ModelConfig::mnist())
        .unwrap();
        assert_eq!(c.diffusion.clip.map(|t| (t.dim, t.weight)), Some((8, 0.5)));
        let e = ConfigFile::parse("[model.diffusion.clip]\nwidth = 8\n", "f.toml", "train")
            .unwrap()
            .model(ModelConfig::mnist())
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.toml") && e.contains("width"), "{e}");
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

    /// `finetune --config` used to fail ("required arguments were not provided") because its
    /// table was checked without the command line's `--init`.
    #[test]
    fn a_table_without_a_required_flag_layers_under_the_command_line() {
        #[derive(clap::Parser, Debug)]
        struct Cmd {
            #[arg(long)]
            init: String,
            #[arg(long, default_value_t = 1)]
            steps: u64,
        }
        let f = ConfigFile::parse("[finetune]\nsteps = 3\n", "f.toml", "finetune").unwrap();
        let c: Cmd = layered("finetune", &f, &["--init".into(), "none".into()]).unwrap();
        assert_eq!((c.init.as_str(), c.steps), ("none", 3));
        let e = layered::<Cmd>("finetune", &f, &[]).unwrap_err().to_string();
        assert!(e.contains("--init"), "{e}");
        let bad = ConfigFile::parse("[finetune]\nsteps = -1\n", "g.toml", "finetune").unwrap();
        let e = layered::<Cmd>("finetune", &bad, &["--init".into(), "x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.toml"), "{e}");
    }
}

#[cfg(test)]
mod fuzz;
