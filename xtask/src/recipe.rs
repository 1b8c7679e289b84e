//! `cargo xtask run RECIPE.toml`: chains `dmae` commands (pre-train -> fine-tune -> eval ->
//! sample) from a recipe file and collects the `--json` results into tables.
//!
//! A recipe is TOML:
//! ```toml
//! description = "what it shows"
//! figures = ["{out}/figures/*.png"]          # copied by --publish
//! [vars]                                     # {name} substitutions
//! steps = 3000
//! [quick]                                    # overrides of [vars] with --quick
//! steps = 100
//! [[stage]]
//! name = "pretrain-s{seed}"                  # unique after substitution
//! foreach = { seed = [0, 1] }                # one run per value (cartesian product)
//! args = ["train", "--steps", "{steps}", "--seed", "{seed}", "--out", "{out}/pretrain-s{seed}"]
//! creates = "{out}/pretrain-s{seed}/checkpoint.safetensors"   # skipped when it exists
//! [[stage]]
//! name = "eval-s{seed}"
//! foreach = { seed = [0, 1] }
//! args = ["eval", "--checkpoint", "...", "--json"]
//! table = "Recognition"                      # stdout is JSON: a row of this table
//! row = "DiffMAE fine-tuned"                 # rows with the same label are averaged (mean ± sd)
//! ```
//! `{out}` is the run directory (`--out`, default `runs/recipes/<name>[-quick]`). Stages run in
//! order; a failing stage stops the recipe with its command line and exit status. Re-running a
//! recipe skips stages whose `creates` file exists and reuses saved JSON, so an interrupted
//! recipe resumes where it stopped (a stage caught half-way is moved to `<out>.unfinished-<k>` and
//! rerun). `--set VAR=VALUE` overrides a variable (after `[quick]`);
//! `--publish` copies the summary and figures to `docs/results/<label>/` and refreshes the
//! recipe's block in `docs/results.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

/// `cargo xtask run` arguments.
#[derive(Args)]
pub struct RunArgs {
    /// The recipe file (recipes/*.toml).
    recipe: PathBuf,
    /// Use the recipe's `[quick]` overrides (minutes instead of the full budget).
    #[arg(long)]
    quick: bool,
    /// Run directory (default `runs/recipes/<recipe>[-quick]`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `dmae` binary to run (default: build it with `cargo build --release -p dmae`).
    #[arg(long)]
    dmae: Option<PathBuf>,
    /// Print the commands without running them.
    #[arg(long)]
    dry_run: bool,
    /// Also write the tables and figures under `docs/results/<recipe>/`.
    #[arg(long)]
    publish: bool,
    /// Override a `[vars]` entry (after `--quick`), e.g. `--set pretrain_steps=500`; repeatable.
    #[arg(long = "set", value_name = "VAR=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

fn parse_set(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected VAR=VALUE, got {s:?}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    #[serde(default)]
    description: String,
    #[serde(default)]
    figures: Vec<String>,
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
    #[serde(default)]
    quick: BTreeMap<String, toml::Value>,
    #[serde(default)]
    stage: Vec<Stage>,
    #[serde(default)]
    curve: Vec<crate::curves::Curve>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stage {
    name: String,
    args: Vec<String>,
    #[serde(default)]
    foreach: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    creates: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    row: Option<String>,
}

/// One stage instance after substitution.
struct Job {
    name: String,
    args: Vec<String>,
    creates: Option<PathBuf>,
    table: Option<String>,
    row: Option<String>,
}

fn value_str(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `{name}` of `vars` in `s`; an unknown `{name}` is an error naming it.
fn substitute(s: &str, vars: &BTreeMap<String, String>, what: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .with_context(|| format!("{what}: unclosed `{{` in {s:?}"))?;
        let key = &rest[open + 1..open + close];
        let val = vars
            .get(key)
            .with_context(|| format!("{what}: unknown variable {{{key}}} in {s:?}"))?;
        out.push_str(val);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every combination of the `foreach` values (one empty combination without `foreach`).
fn combinations(foreach: &BTreeMap<String, Vec<toml::Value>>) -> Vec<BTreeMap<String, String>> {
    let mut combos = vec![BTreeMap::new()];
    for (k, values) in foreach {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(k.clone(), value_str(v));
                    c
                })
            })
            .collect();
    }
    combos
}

/// The recipe's variables: `[vars]`, then `[quick]` (with `--quick`), then `--set`, and `out`.
fn variables(
    recipe: &Recipe,
    quick: bool,
    set: &[(String, String)],
    out: &Path,
) -> Result<BTreeMap<String, String>> {
    let mut vars: BTreeMap<String, String> = recipe
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), value_str(v)))
        .collect();
    if quick {
        for (k, v) in &recipe.quick {
            if !recipe.vars.contains_key(k) {
                bail!("[quick] overrides {k:?}, which is not in [vars]");
            }
            vars.insert(k.clone(), value_str(v));
        }
    }
    for (k, v) in set {
        if !recipe.vars.contains_key(k) {
            bail!("--set {k}={v}: the recipe has no variable {k:?} in [vars]");
        }
        vars.insert(k.clone(), v.clone());
    }
    vars.insert("out".into(), out.display().to_string());
    Ok(vars)
}

/// The stage instances of `recipe` with `vars` substituted.
fn jobs(recipe: &Recipe, vars: &BTreeMap<String, String>) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut names = std::collections::HashSet::new();
    for stage in &recipe.stage {
        for combo in combinations(&stage.foreach) {
            let mut v = vars.clone();
            v.extend(combo);
            let what = format!("stage {:?}", stage.name);
            let name = substitute(&stage.name, &v, &what)?;
            if !names.insert(name.clone()) {
                bail!("two stages are named {name:?} (add the foreach variables to `name`)");
            }
            let args = stage
                .args
                .iter()
                .map(|a| substitute(a, &v, &what))
                .collect::<Result<Vec<_>>>()?;
            let creates = stage
                .creates
                .as_deref()
                .map(|c| substitute(c, &v, &what).map(PathBuf::from))
                .transpose()?;
            let row = stage
                .row
                .as_deref()
                .map(|r| substitute(r, &v, &what))
                .transpose()?;
            let table = stage
                .table
                .as_deref()
                .map(|t| substitute(t, &v, &what))
                .transpose()?;
            jobs.push(Job {
                name,
                args,
                creates,
                table,
                row,
            });
        }
    }
    Ok(jobs)
}

/// Builds the release `dmae` binary and returns its path.
pub(crate) fn build_dmae() -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "dmae"])
        .status()
        .context("running cargo build -p dmae")?;
    if !status.success() {
        bail!("cargo build --release -p dmae failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("release").join("dmae"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Results of one table: row label -> the JSON objects of its runs.
/// Rows keep the order of their first stage in the recipe, as do the tables.
type Table = Vec<(String, Vec<serde_json::Map<String, serde_json::Value>>)>;

/// The value under `key` in an insertion-ordered list, appended when missing.
fn entry<'a, T: Default>(list: &'a mut Vec<(String, T)>, key: &str) -> &'a mut T {
    let i = match list.iter().position(|(k, _)| k == key) {
        Some(i) => i,
        None => {
            list.push((key.to_string(), T::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

pub fn run(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.recipe)
        .with_context(|| format!("reading recipe {}", args.recipe.display()))?;
    let recipe: Recipe =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.recipe.display()))?;
    let stem = args
        .recipe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recipe".into());
    let label = if args.quick {
        format!("{stem}-quick")
    } else {
        stem.clone()
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/recipes").join(&label));
    let vars = variables(&recipe, args.quick, &args.set, &out)?;
    let jobs = jobs(&recipe, &vars)?;
    if args.dry_run {
        for j in &jobs {
            println!("[{}] dmae {}", j.name, j.args.join(" "));
        }
        return Ok(());
    }
    let dmae = match &args.dmae {
        Some(p) => p.clone(),
        None => build_dmae()?,
    };
    let results_dir = out.join("results");
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    println!("recipe {label}: {} stages -> {}", jobs.len(), out.display());
    let start = Instant::now();
    let mut tables: Vec<(String, Table)> = Vec::new();
    let mut log = String::new();
    for (i, j) in jobs.iter().enumerate() {
        let stem = j.name.replace([':', '/'], "_");
        let json_path = results_dir.join(format!("{stem}.json"));
        // Present from a stage's start to its success: `dmae train` saves checkpoint.safetensors
        // every --save-every steps, so a stage killed after its first save has its `creates`
        // file and only this marker tells it from a finished one.
        let running = results_dir.join(format!("{stem}.running"));
        let done = match (&j.creates, &j.table) {
            (_, Some(_)) => json_path.exists(),
            (Some(c), None) => c.exists() && !running.exists(),
            (None, None) => false,
        };
        let cmdline = format!("dmae {}", j.args.join(" "));
        writeln!(log, "{cmdline}")?;
        if done {
            println!("[{}/{}] {} (done, skipped)", i + 1, jobs.len(), j.name);
        } else {
            println!("[{}/{}] {}: {cmdline}", i + 1, jobs.len(), j.name);
            if let Some(aside) = set_aside_unfinished(j, running.exists())? {
                println!(
                    "    an unfinished earlier attempt was moved to {}",
                    aside.display()
                );
            }
            if j.creates.is_some() {
                std::fs::write(&running, &cmdline)
                    .with_context(|| format!("writing {}", running.display()))?;
            }
            let t0 = Instant::now();
            let mut cmd = Command::new(&dmae);
            cmd.args(&j.args);
            let output = if j.table.is_some() {
                let o = cmd
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .with_context(|| format!("starting {}", dmae.display()))?;
                if o.status.success() {
                    let v: serde_json::Value =
                        serde_json::from_slice(&o.stdout).with_context(|| {
                            format!("stage {}: stdout is not one JSON object", j.name)
                        })?;
                    let tmp = json_path.with_extension("json.tmp");
                    std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
                    std::fs::rename(&tmp, &json_path)?;
                }
                o.status
            } else {
                cmd.status()
                    .with_context(|| format!("starting {}", dmae.display()))?
            };
            if !output.success() {
                bail!("stage {} failed ({output}): {cmdline}", j.name);
            }
            if running.exists() {
                std::fs::remove_file(&running)
                    .with_context(|| format!("removing {}", running.display()))?;
            }
            println!("    {:.1} s", t0.elapsed().as_secs_f64());
        }
        if let Some(table) = &j.table {
            let text = std::fs::read(&json_path)
                .with_context(|| format!("reading {}", json_path.display()))?;
            let v: serde_json::Value = serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", json_path.display()))?;
            let serde_json::Value::Object(obj) = v else {
                bail!("{}: expected a JSON object", json_path.display());
            };
            let row = j.row.clone().unwrap_or_else(|| j.name.clone());
            entry(entry(&mut tables, table), &row).push(obj);
        }
    }
    let mut curves = String::new();
    for c in &recipe.curve {
        let what = format!("curve {:?}", c.title);
        let mut groups = Vec::new();
        for r in &c.runs {
            groups.push((
                r.label.clone(),
                glob_simple(&substitute(&r.dirs, &vars, &what)?)?,
            ));
        }
        let svg = out.join("figures/curves").join(format!("{}.svg", c.file));
        curves.push_str(&crate::curves::render(c, &groups, &svg)?);
    }
    let summary = summary_markdown(&recipe, &label, &args, &tables, &curves, &log);
    std::fs::write(out.join("summary.md"), &summary)?;
    std::fs::write(out.join("commands.txt"), &log)?;
    println!(
        "\n{summary}\nrecipe {label} finished in {:.1} min; summary: {}",
        start.elapsed().as_secs_f64() / 60.0,
        out.join("summary.md").display()
    );
    if args.publish {
        publish(&recipe, &label, &out, &summary)?;
    }
    Ok(())
}

/// A stage whose `--out` directory exists with something in it but which did not finish (its
/// `creates` file is missing, or `interrupted`: its start marker is still there, so the file is
/// only a periodic checkpoint) is set aside: `dmae` refuses to write into such a directory, so it
/// is renamed to `<out>.unfinished-<k>` (kept, never deleted) and the stage starts afresh.
fn set_aside_unfinished(job: &Job, interrupted: bool) -> Result<Option<PathBuf>> {
    let Some(creates) = &job.creates else {
        return Ok(None);
    };
    let Some(out) = job
        .args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| job.args.get(i + 1))
        .map(PathBuf::from)
    else {
        return Ok(None);
    };
    let occupied = std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some());
    if !occupied || (creates.exists() && !interrupted) {
        return Ok(None);
    }
    let name = out
        .file_name()
        .map_or_else(|| "stage".to_string(), |n| n.to_string_lossy().into_owned());
    let aside = (1..)
        .map(|k| out.with_file_name(format!("{name}.unfinished-{k}")))
        .find(|p| !p.exists())
        .context("no free name to set an unfinished run aside")?;
    std::fs::rename(&out, &aside)
        .with_context(|| format!("moving {} to {}", out.display(), aside.display()))?;
    Ok(Some(aside))
}

/// Numeric fields of a table, in first-seen order.
fn columns(table: &Table) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for (_, runs) in table {
        for obj in runs {
            for (k, v) in obj {
                if v.is_number() && !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    cols
}

/// `mean ± sd (n)` of `values` (sample standard deviation; just the value for one run).
pub(crate) fn aggregate(values: &[f64]) -> String {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let integers = values.iter().all(|v| v.fract() == 0.0);
    let prec = |x: f64| {
        if integers && x.fract() == 0.0 {
            format!("{x:.0}")
        } else if x.abs() >= 100.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.4}")
        }
    };
    if values.len() < 2 {
        return prec(mean);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{} ± {} (n={})", prec(mean), prec(var.sqrt()), values.len())
}

fn summary_markdown(
    recipe: &Recipe,
    label: &str,
    args: &RunArgs,
    tables: &[(String, Table)],
    curves: &str,
    log: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## {label}\n");
    if !recipe.description.is_empty() {
        let _ = writeln!(s, "{}\n", recipe.description.trim());
    }
    let _ = writeln!(
        s,
        "Produced by `cargo xtask run {}{}{}` on {}, {}.\n",
        args.recipe.display(),
        if args.quick { " --quick" } else { "" },
        args.set
            .iter()
            .map(|(k, v)| format!(" --set {k}={v}"))
            .collect::<String>(),
        machine(),
        utc_now()
    );
    for (title, table) in tables {
        let cols = columns(table);
        let _ = writeln!(s, "### {title}\n");
        let _ = writeln!(s, "| run | {} |", cols.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(cols.len()));
        for (row, runs) in table {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| {
                    let vals: Vec<f64> = runs
                        .iter()
                        .filter_map(|o| o.get(c).and_then(|v| v.as_f64()))
                        .collect();
                    if vals.is_empty() {
                        "–".into()
                    } else {
                        aggregate(&vals)
                    }
                })
                .collect();
            let _ = writeln!(s, "| {row} | {} |", cells.join(" | "));
        }
        s.push('\n');
    }
    s.push_str(curves);
    let _ = writeln!(
        s,
        "<details><summary>commands</summary>\n\n```\n{log}```\n</details>"
    );
    s
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (from `date`; unix seconds where it is missing).
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("unix time {secs}")
        })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

/// Copies the summary and figures to `docs/results/<label>/` and refreshes the recipe's block in
/// `docs/results.md` (between `<!-- recipe:LABEL -->` and `<!-- /recipe:LABEL -->`), so the
/// numbers there are always the ones this run produced. Figures are named `<folder>-<file>`:
/// runs keep one folder per model and the same file names in each.
fn publish(recipe: &Recipe, label: &str, out: &Path, summary: &str) -> Result<()> {
    let root = workspace_root();
    let dir = root.join("docs/results").join(label);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The run directory is machine-specific; the published commands name it `$OUT`.
    let summary = summary.replace(&out.display().to_string(), "$OUT");
    std::fs::write(dir.join("summary.md"), &summary)?;
    let vars = BTreeMap::from([("out".to_string(), out.display().to_string())]);
    let mut copied = 0;
    let curves = format!("{}/figures/curves/*.svg", out.display());
    let curves = (!recipe.curve.is_empty()).then_some(&curves);
    for pattern in recipe.figures.iter().chain(curves) {
        let pattern = substitute(pattern, &vars, "figures")?;
        for path in glob_simple(&pattern)? {
            let name = path.file_name().context("figure without a file name")?;
            let folder = path
                .parent()
                .and_then(Path::file_name)
                .map(|f| format!("{}-", f.to_string_lossy()))
                .unwrap_or_default();
            let to = dir.join(format!("{folder}{}", name.to_string_lossy()));
            std::fs::copy(&path, &to).with_context(|| format!("copying {}", path.display()))?;
            copied += 1;
        }
    }
    println!("published to {} ({copied} figures)", dir.display());
    let results = root.join("docs/results.md");
    if let Ok(text) = std::fs::read_to_string(&results) {
        match splice(&text, label, &summary) {
            Some(new) => {
                std::fs::write(&results, new)?;
                println!("updated the {label} block of {}", results.display());
            }
            None => println!(
                "{} has no <!-- recipe:{label} --> block; left as it is",
                results.display()
            ),
        }
    }
    Ok(())
}

/// `text` with the lines between `<!-- recipe:LABEL -->` and `<!-- /recipe:LABEL -->` replaced
/// by `summary` (its headings one level deeper); `None` without both markers.
fn splice(text: &str, label: &str, summary: &str) -> Option<String> {
    let open = format!("<!-- recipe:{label} -->");
    let close = format!("<!-- /recipe:{label} -->");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    let body: String = summary
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("#{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    Some(format!("{}\n{body}{}", &text[..start], &text[end..]))
}

/// `DIR/prefix*suffix` patterns (one `*` in the file name), enough for figure lists.
fn glob_simple(pattern: &str) -> Result<Vec<PathBuf>> {
    let p = Path::new(pattern);
    let dir = p.parent().unwrap_or(Path::new("."));
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((pre, suf)) = name.split_once('*') else {
        return Ok(if p.exists() {
            vec![p.to_path_buf()]
        } else {
            vec![]
        });
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|e| {
            e.file_name()
                .map(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(pre) && n.ends_with(suf) && n.len() >= pre.len() + suf.len()
                })
                .unwrap_or(false)
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(r: &Recipe, quick: bool, set: &[(String, String)]) -> Result<Vec<Job>> {
        jobs(r, &variables(r, quick, set, Path::new("/o"))?)
    }

    const RECIPE: &str = r#"
description = "t"
[vars]
steps = 100
[quick]
steps = 5
[[stage]]
name = "pre-s{seed}"
foreach = { seed = [0, 1] }
args = ["train", "--steps", "{steps}", "--seed", "{seed}", "--out", "{out}/pre-s{seed}"]
creates = "{out}/pre-s{seed}/checkpoint.safetensors"
table = "Runs of {steps} steps"
"#;

    #[test]
    fn stages_expand_over_foreach_and_quick_overrides_vars() {
        let r: Recipe = toml::from_str(RECIPE).unwrap();
        let j = expand(&r, true, &[]).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j[1].name, "pre-s1");
        assert_eq!(
            j[1].args,
            ["train", "--steps", "5", "--seed", "1", "--out", "/o/pre-s1"]
        );
        assert_eq!(j[0].table.as_deref(), Some("Runs of 5 steps"));
        let full = expand(&r, false, &[]).unwrap();
        assert_eq!(full[0].args[2], "100");
        // --set wins over [quick]; it may only name variables of [vars].
        let set = [("steps".to_string(), "7".to_string())];
        assert_eq!(expand(&r, true, &set).unwrap()[0].args[2], "7");
        let typo = [("stpes".to_string(), "7".to_string())];
        let e = expand(&r, true, &typo).err().unwrap().to_string();
        assert!(e.contains("stpes"), "{e}");
        assert!(parse_set("steps").is_err() && parse_set("=3").is_err());
    }

    #[test]
    fn unknown_variables_and_duplicate_names_are_errors() {
        let bad = RECIPE.replace("{steps}", "{stpes}");
        let r: Recipe = toml::from_str(&bad).unwrap();
        let e = expand(&r, false, &[]).err().unwrap().to_string();
        assert!(e.contains("{stpes}"), "{e}");
        let dup = RECIPE.replace("pre-s{seed}\"\nforeach", "pre\"\nforeach");
        let r: Recipe = toml::from_str(&dup).unwrap();
        let e = expand(&r, false, &[]).err().unwrap().to_string();
        assert!(e.contains("two stages"), "{e}");
    }

    #[test]
    fn splice_replaces_only_the_recipe_block() {
        let doc = "intro\n<!-- recipe:a -->\nold\n<!-- /recipe:a -->\nprose\n";
        let new = splice(doc, "a", "## a\n| t |\n").unwrap();
        assert_eq!(
            new,
            "intro\n<!-- recipe:a -->\n### a\n| t |\n<!-- /recipe:a -->\nprose\n"
        );
        assert_eq!(splice(&new, "a", "## a\n| t |\n").unwrap(), new);
        assert!(splice(doc, "b", "x").is_none());
    }

    #[test]
    fn an_interrupted_stage_is_set_aside_not_deleted() {
        let root = std::env::temp_dir().join(format!("dmae-aside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let out = root.join("pre");
        std::fs::create_dir_all(&out).unwrap();
        let job = |creates: &Path| Job {
            name: "pre".into(),
            args: vec!["train".into(), "--out".into(), out.display().to_string()],
            creates: Some(creates.to_path_buf()),
            table: None,
            row: None,
        };
        let ckpt = out.join("checkpoint.safetensors");
        // Empty directory: nothing to set aside.
        assert!(set_aside_unfinished(&job(&ckpt), false).unwrap().is_none());
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let aside = set_aside_unfinished(&job(&ckpt), false).unwrap().unwrap();
        assert_eq!(aside, root.join("pre.unfinished-1"));
        assert!(aside.join("metrics.jsonl").is_file() && !out.exists());
        // A finished stage is left alone.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(&ckpt, "x").unwrap();
        assert!(set_aside_unfinished(&job(&ckpt), false).unwrap().is_none());
        assert!(ckpt.is_file());
        // One killed after a periodic save has the checkpoint but not its finish.
        let aside = set_aside_unfinished(&job(&ckpt), true).unwrap().unwrap();
        assert_eq!(aside, root.join("pre.unfinished-2"));
        assert!(aside.join("checkpoint.safetensors").is_file() && !out.exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn aggregate_reports_mean_and_sample_sd() {
        assert_eq!(aggregate(&[0.5]), "0.5000");
        assert_eq!(aggregate(&[1.0, 3.0]), "2 ± 1.4142 (n=2)");
        assert_eq!(aggregate(&[0.5, 1.5]), "1.0000 ± 0.7071 (n=2)");
        assert_eq!(aggregate(&[2000.0]), "2000");
    }
}
