//! The configuration file (`--config FILE`, TOML): every flag, grouped in tables by its
//! `help_heading`. The tables and keys are read from clap's own description of the flags
//! (heading lowercased -> table, long name with `_` -> key), so a new flag is in the file the
//! moment it has a heading, with no second list to keep.
//!
//! Precedence is flag, then `MACHAT_*` variable, then file, then default: the file's values
//! are handed to clap as flags, but only for the flags whose value would otherwise be clap's
//! default. Every value in the file is still checked, so `machat config check` finds a bad one
//! even when a flag hides it. Every error names the file, the line and the key.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::{go_style_args, Config};

/// The groups of `machat --help` and the tables of the file, in their order.
pub const HEADINGS: [&str; 10] = [
    "Chat",
    "Web",
    "TLS",
    "History",
    "Limits",
    "Accounts",
    "Moderation",
    "Cluster",
    "Proxy",
    "Data",
];

/// Flags that are not settings of the server (and so not in the file).
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// A configuration, and where each of its values came from.
pub struct Loaded {
    pub config: Config,
    /// The flags as finally parsed (the file's values included), for the effective values.
    pub matches: ArgMatches,
    /// The file, when there is one.
    pub file: Option<PathBuf>,
    /// The flags (ids) the file set, each with its line.
    pub from_file: BTreeMap<String, usize>,
    /// The flags (ids) set on the command line or by a `MACHAT_*` variable.
    pub from_flags: BTreeMap<String, &'static str>,
}

/// Why a configuration cannot be made.
pub enum Failure {
    /// Clap's own (a bad flag, `--help`, `--version`): clap prints and exits.
    Usage(clap::Error),
    /// A file or a value: the message names the file, the line and the key.
    Bad(String),
}

impl From<clap::Error> for Failure {
    fn from(e: clap::Error) -> Self {
        Failure::Usage(e)
    }
}

/// What a flag takes, and so what TOML type its key needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    List,
    Number,
    Path,
    Text,
}

fn kind(arg: &Arg) -> Kind {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Kind::Bool;
    }
    if arg.get_value_delimiter().is_some() || matches!(arg.get_action(), ArgAction::Append) {
        return Kind::List;
    }
    let id = arg.get_value_parser().type_id();
    let numbers = [
        TypeId::of::<f64>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i64>(),
    ];
    if numbers.iter().any(|n| id == *n) {
        Kind::Number
    } else if id == TypeId::of::<PathBuf>() {
        Kind::Path
    } else {
        Kind::Text
    }
}

/// The file's table and key of a flag, if it has a place in the file.
fn place(arg: &Arg) -> Option<(String, String)> {
    if NOT_IN_FILE.contains(&arg.get_id().as_str()) || arg.is_positional() {
        return None;
    }
    let heading = arg.get_help_heading()?;
    let long = arg.get_long()?;
    Some((heading.to_lowercase(), long.replace('-', "_")))
}

/// Every flag that has a place in the file, by table then key.
fn places(cmd: &clap::Command) -> Vec<(String, String, Arg)> {
    let mut out: Vec<(String, String, Arg)> = cmd
        .get_arguments()
        .filter_map(|a| place(a).map(|(t, k)| (t, k, a.clone())))
        .collect();
    let rank = |t: &str| HEADINGS.iter().position(|h| h.eq_ignore_ascii_case(t));
    out.sort_by_key(|(t, _, _)| rank(t).unwrap_or(HEADINGS.len()));
    out
}

/// Parses `args` (the process's, Go-style flags accepted), reads the `--config` file if one is
/// given, and makes the configuration, checked.
pub fn load(args: &[OsString]) -> Result<Loaded, Failure> {
    let cmd = Config::command();
    let args = go_style_args(args.iter().cloned(), &cmd);
    let first = cmd.clone().try_get_matches_from(&args)?;
    let path = first.get_one::<PathBuf>("config").cloned();
    let mut from_file = BTreeMap::new();
    let mut injected = Vec::new();
    let mut where_ = BTreeMap::new();
    if let Some(path) = &path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Bad(format!("cannot read {}: {e}", path.display())))?;
        let file = File { path, text: &text };
        for (id, value) in file.values(&cmd, &first)? {
            from_file.insert(id.clone(), value.line);
            where_.insert(id, (value.line, value.table, value.key));
            injected.extend(value.args);
        }
    }
    let mut argv = vec![args.first().cloned().unwrap_or_else(|| "machat".into())];
    argv.extend(injected);
    argv.extend(args.iter().skip(1).cloned());
    let matches = cmd.try_get_matches_from(&argv)?;
    let config = Config::from_arg_matches(&matches)?;
    if let Err(e) = config.validate() {
        let blamed = e.flags().iter().find_map(|id| where_.get(*id));
        return Err(Failure::Bad(match (blamed, &path) {
            (Some((line, table, key)), Some(path)) => {
                let text = e.to_string();
                let long = format!("--{} ", key.replace('_', "-"));
                let reason = match text.strip_prefix(&long) {
                    Some(rest) if rest.starts_with("must") => rest,
                    _ => &text,
                };
                format!("{}:{line}: [{table}] {key}: {reason}", path.display())
            }
            _ => e.to_string(),
        }));
    }
    let from_flags = Config::command()
        .get_arguments()
        .filter_map(|a| {
            let id = a.get_id().as_str();
            let source = match first.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                _ => return None,
            };
            Some((id.to_owned(), source))
        })
        .collect();
    Ok(Loaded {
        config,
        matches,
        file: path,
        from_file,
        from_flags,
    })
}

/// One value of the file, as the flags that give it to clap.
struct Value {
    line: usize,
    table: String,
    key: String,
    /// `--long=value`, or nothing when a flag or variable already set it.
    args: Vec<OsString>,
}

/// The file being read: its name and text, for the lines of errors.
struct File<'a> {
    path: &'a Path,
    text: &'a str,
}

impl File<'_> {
    fn line(&self, at: usize) -> usize {
        let at = at.min(self.text.len());
        self.text.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error_at(&self, at: usize, what: impl std::fmt::Display) -> Failure {
        Failure::Bad(format!("{}:{}: {what}", self.path.display(), self.line(at)))
    }

    /// Each flag the file sets (by id), checked: known table and key, the right TOML type, a
    /// value the flag's parser takes.
    fn values(
        &self,
        cmd: &clap::Command,
        first: &ArgMatches,
    ) -> Result<Vec<(String, Value)>, Failure> {
        let doc = DeTable::parse(self.text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            self.error_at(at, e.message().trim())
        })?;
        let places = places(cmd);
        let mut tables: Vec<&str> = Vec::new();
        for (t, _, _) in &places {
            if !tables.contains(&t.as_str()) {
                tables.push(t);
            }
        }
        let mut out = Vec::new();
        for (name, value) in doc.get_ref() {
            let (name, at) = (name.get_ref().as_ref(), name.span().start);
            let DeValue::Table(table) = value.get_ref() else {
                let hint = match places.iter().find(|(_, k, _)| k == name) {
                    Some((t, _, _)) => format!(" (it belongs in [{t}])"),
                    None => String::new(),
                };
                return Err(self.error_at(at, format!("{name}: a key outside a table{hint}")));
            };
            if !tables.contains(&name) {
                return Err(self.error_at(
                    at,
                    format!(
                        "unknown table [{name}] (the tables are {})",
                        tables.join(", ")
                    ),
                ));
            }
            for (key, value) in table {
                let (key, at) = (key.get_ref().as_ref(), key.span().start);
                let Some((_, _, arg)) = places.iter().find(|(t, k, _)| t == name && k == key)
                else {
                    let hint = match places.iter().find(|(_, k, _)| k == key) {
                        Some((t, _, _)) => format!(" (it belongs in [{t}])"),
                        None => String::new(),
                    };
                    return Err(self.error_at(at, format!("[{name}] {key}: unknown key{hint}")));
                };
                let args = self.flag_args(arg, value).map_err(|why| {
                    self.error_at(value.span().start, format!("[{name}] {key}: {why}"))
                })?;
                let id = arg.get_id().as_str();
                let set_elsewhere = matches!(
                    first.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
                out.push((
                    id.to_owned(),
                    Value {
                        line: self.line(at),
                        table: name.to_owned(),
                        key: key.to_owned(),
                        args: if set_elsewhere { Vec::new() } else { args },
                    },
                ));
            }
        }
        Ok(out)
    }

    /// The flags that give `value` to `arg`, once its TOML type and the flag's parser take it.
    fn flag_args(&self, arg: &Arg, value: &Spanned<DeValue<'_>>) -> Result<Vec<OsString>, String> {
        let long = arg.get_long().unwrap_or_default();
        let kind = kind(arg);
        let texts: Vec<String> = match (kind, value.get_ref()) {
            (Kind::Bool, DeValue::Boolean(true)) => return Ok(vec![format!("--{long}").into()]),
            (Kind::Bool, DeValue::Boolean(false)) => return Ok(Vec::new()),
            (Kind::Bool, v) => return Err(format!("must be true or false, not {}", kind_of(v))),
            (Kind::Number, DeValue::Integer(i)) => {
                let n = i128::from_str_radix(i.as_str(), i.radix())
                    .map_err(|e| format!("not a number: {e}"))?;
                vec![n.to_string()]
            }
            (Kind::Number, DeValue::Float(f)) => vec![f.as_str().to_owned()],
            (Kind::Number, v) => return Err(format!("must be a number, not {}", kind_of(v))),
            (Kind::List, DeValue::String(s)) => vec![s.to_string()],
            (Kind::List, DeValue::Array(items)) => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Ok(s.to_string()),
                    v => Err(format!(
                        "must be an array of strings (or a string), not an array holding {}",
                        kind_of(v)
                    )),
                })
                .collect::<Result<_, _>>()?,
            (Kind::List, v) => {
                return Err(format!(
                    "must be an array of strings (or a string), not {}",
                    kind_of(v)
                ))
            }
            (Kind::Path | Kind::Text, DeValue::String(s)) => vec![s.to_string()],
            (Kind::Path | Kind::Text, v) => {
                return Err(format!("must be a string, not {}", kind_of(v)))
            }
        };
        let texts: Vec<String> = match kind {
            Kind::Path => texts.into_iter().map(|t| self.resolve(&t)).collect(),
            _ => texts,
        };
        // The flag's own parser judges the value, alone (the others may be anything).
        let alone = clap::Command::new("machat")
            .no_binary_name(true)
            .arg(arg.clone());
        for text in &texts {
            for part in text.split(arg.get_value_delimiter().unwrap_or('\0')) {
                let flag = format!("--{long}={part}");
                if let Err(e) = alone.clone().try_get_matches_from([flag]) {
                    return Err(value_error(part, &e));
                }
            }
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let delimiter = arg.get_value_delimiter().unwrap_or(',').to_string();
        Ok(vec![format!("--{long}={}", texts.join(&delimiter)).into()])
    }

    /// A path from the file: relative ones are relative to the file's directory.
    fn resolve(&self, text: &str) -> String {
        let p = Path::new(text);
        if p.is_absolute() || text.is_empty() {
            return text.to_owned();
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        dir.join(p).to_string_lossy().into_owned()
    }
}

/// The TOML type of a value, for an error.
fn kind_of(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// What clap's value parser said about `text`, in one line.
fn value_error(text: &str, e: &clap::Error) -> String {
    use std::error::Error as _;
    let why = match e.source() {
        Some(source) => source.to_string(),
        None => {
            let all = e.to_string();
            let first = all.lines().next().unwrap_or_default();
            let first = first.trim_start_matches("error: ").to_owned();
            match all.lines().find(|l| l.contains("possible values")) {
                Some(possible) => format!("{first} {}", possible.trim()),
                None => first,
            }
        }
    };
    format!("bad value {text:?}: {why}")
}

/// A TOML string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `machat config default`: a complete file, every key commented out at its default, so that
/// as printed it means exactly the defaults (and passes `machat config check`).
pub fn default_file() -> String {
    let cmd = Config::command();
    let mut out = String::from(
        "# machat configuration (machat --config FILE, or MACHAT_CONFIG=FILE).\n\
         # Every key below is commented out at its default: uncomment and change what you need.\n\
         # A flag or a MACHAT_* variable overrides the file. Relative paths in this file are\n\
         # relative to this file's directory. SIGHUP re-reads it: limits, allowed origins and\n\
         # hosts, and the TLS certificate apply at once; the log names what needs a restart.\n",
    );
    let mut table = String::new();
    for (t, key, arg) in places(&cmd) {
        if t != table {
            let _ = write!(out, "\n[{t}]\n");
            table = t;
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut help = help.trim().to_owned();
        if !help.ends_with(['.', ')', '!', '?']) {
            help.push('.');
        }
        out.push('\n');
        for line in wrap(&help, 92) {
            let _ = writeln!(out, "# {line}");
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let value = match (kind(&arg), defaults.first()) {
            (Kind::Bool, _) => "false".to_owned(),
            (Kind::List, _) => {
                let items: Vec<String> = defaults.iter().map(|d| quoted(d)).collect();
                format!("[{}]", items.join(", "))
            }
            (Kind::Number, Some(d)) => d.clone(),
            (_, Some(d)) => quoted(d),
            (_, None) => {
                let name = arg
                    .get_value_names()
                    .and_then(|n| n.first())
                    .map_or("VALUE".to_owned(), |n| n.to_string());
                let _ = writeln!(out, "# (not set by default)");
                match kind(&arg) {
                    Kind::Number => "0".to_owned(),
                    _ => quoted(&name),
                }
            }
        };
        let _ = writeln!(out, "# {key} = {value}");
    }
    out
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split("\n\n") {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// The effective configuration, one line per group (`config chat: addr=... tls_addr=off`),
/// as the start-up log and `machat config check` show it. Nothing secret is in a flag's value
/// but a NATS URL's password, which is redacted.
pub fn effective(loaded: &Loaded) -> Vec<String> {
    let cmd = Config::command();
    let mut lines: Vec<(String, String)> = Vec::new();
    for (table, key, arg) in places(&cmd) {
        let id = arg.get_id().as_str();
        let raw: Vec<String> = loaded
            .matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let mut value = match (kind(&arg), raw.is_empty()) {
            (Kind::Bool, true) => "false".to_owned(),
            (Kind::List, true) => "none".to_owned(),
            (_, true) => "off".to_owned(),
            (_, false) => raw.join(","),
        };
        if id == "nats" {
            value = machat::cluster::redact_url(&value);
        }
        if value.is_empty() || value.contains(char::is_whitespace) {
            value = format!("{value:?}");
        }
        match lines.last_mut() {
            Some((t, line)) if *t == table => {
                let _ = write!(line, " {key}={value}");
            }
            _ => lines.push((table.clone(), format!("config {table}: {key}={value}"))),
        }
    }
    let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    let ids_key = |id: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(place)
            .map_or(id.to_owned(), |(_, k)| k)
    };
    let mut from = Vec::new();
    if let Some(file) = &loaded.file {
        let keys: Vec<String> = loaded
            .from_file
            .keys()
            .filter(|id| !loaded.from_flags.contains_key(*id))
            .map(|id| ids_key(id))
            .collect();
        let keys = match keys.is_empty() {
            true => "nothing set".to_owned(),
            false => keys.join(" "),
        };
        from.push(format!("file {} ({keys})", file.display()));
    }
    for (name, label) in [("env", "MACHAT_* variables"), ("flag", "flags")] {
        let keys: Vec<String> = loaded
            .from_flags
            .iter()
            .filter(|(id, s)| **s == name && *id != "config")
            .map(|(id, _)| ids_key(id))
            .collect();
        if !keys.is_empty() {
            from.push(format!("{label} ({})", keys.join(" ")));
        }
    }
    if from.is_empty() {
        from.push("defaults only".to_owned());
    }
    out.push(format!("config from: {}", from.join("; ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_args(args: &[&str]) -> Loaded {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match load(&args) {
            Ok(loaded) => loaded,
            Err(Failure::Usage(e)) => panic!("{e}"),
            Err(Failure::Bad(why)) => panic!("{why}"),
        }
    }

    /// A flag without a heading would be missing from the file and from `--help`'s groups.
    #[test]
    fn every_flag_has_a_heading_of_the_list() {
        let cmd = Config::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if NOT_IN_FILE.contains(&id) || arg.is_positional() {
                continue;
            }
            let heading = arg.get_help_heading();
            assert!(
                heading.is_some_and(|h| HEADINGS.contains(&h)),
                "--{id} has heading {heading:?}"
            );
            assert!(place(arg).is_some());
        }
    }

    #[test]
    fn the_effective_configuration_hides_a_nats_password() {
        let loaded = load_args(&[
            "machat",
            "--nats",
            "nats://u:secret@h:4222",
            "config",
            "default",
        ]);
        let lines = effective(&loaded).join("\n");
        assert!(lines.contains("nats=nats://***@h:4222"), "{lines}");
        assert!(!lines.contains("secret"));
        assert!(lines.contains("config from: flags (nats)"), "{lines}");
    }

    #[test]
    fn kinds_follow_the_flags_types() {
        let cmd = Config::command();
        let kind_of = |id: &str| kind(cmd.get_arguments().find(|a| a.get_id() == id).unwrap());
        assert_eq!(kind_of("require_auth"), Kind::Bool);
        assert_eq!(kind_of("allowed_hosts"), Kind::List);
        assert_eq!(kind_of("max_line_rate"), Kind::Number);
        assert_eq!(kind_of("max_per_ip"), Kind::Number);
        assert_eq!(kind_of("data_dir"), Kind::Path);
        assert_eq!(kind_of("history"), Kind::Text);
        assert_eq!(kind_of("history_max_age"), Kind::Text);
    }
}
