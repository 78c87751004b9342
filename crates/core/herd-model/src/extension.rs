//! VM extensions: the Custom Script extension, how it is validated, and how each instance
//! records what ran.
//!
//! Why a module of its own: an extension is part of the model (`extensionProfile`, Azure's
//! shape and names), half of it is secret (`protectedSettings`, taken out of the model and
//! sealed like the admin password), and each instance keeps a status per extension that the
//! instance view shows. herd runs one extension type, `CustomScript`, under either publisher
//! `Microsoft.Azure.Extensions` (so `az`-style commands work as written) or `Herd.Extensions`.
//!
//! An extension runs again on an instance when its *fingerprint* changes: its public settings,
//! `forceUpdateTag`, type and version, plus a keyed digest of its protected settings (so a
//! new password re-runs it without the password ever being stored in the clear).
//!
//! ```text
//!   (none) ── boot after create/reimage, or update-instances ──▶ Transitioning
//!   Transitioning ── script exit 0 ──▶ Succeeded
//!   Transitioning ── exit ≠ 0, timeout, download error ──▶ Failed (instance provisioningState Failed)
//!   Succeeded | Failed ── fingerprint changes + update-instances ──▶ Transitioning
//! ```

use crate::error::FieldError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Publishers whose `CustomScript` herd runs.
pub const PUBLISHERS: &[&str] = &["Microsoft.Azure.Extensions", "Herd.Extensions"];
/// The one extension type herd runs.
pub const CUSTOM_SCRIPT: &str = "CustomScript";
const PUBLIC_KEYS: &[&str] = &["fileUris", "commandToExecute", "script", "skipDos2Unix", "timestamp"];
const PROTECTED_KEYS: &[&str] = &["fileUris", "commandToExecute", "script"];
const UNSUPPORTED_PROTECTED: &[&str] = &["storageAccountName", "storageAccountKey", "managedIdentity"];

/// `virtualMachineProfile.extensionProfile`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProfile {
    #[serde(default)]
    pub extensions: Vec<Extension>,
    /// Azure's overall budget for extension provisioning (ISO 8601), e.g. `PT1H30M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions_time_budget: Option<String>,
}

/// One extension of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Extension {
    pub name: String,
    pub properties: ExtensionProperties,
}

/// `extensions[].properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProperties {
    pub publisher: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub type_handler_version: String,
    #[serde(default = "yes")]
    pub auto_upgrade_minor_version: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Value>,
    /// Write-only: taken out of the model on every write, sealed, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub protected_settings: Option<Value>,
    /// Changing it re-runs the extension even if nothing else changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_update_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provision_after_extensions: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Extension {
    /// A Custom Script extension as `herd vmss extension set` builds it.
    pub fn custom_script(name: &str, publisher: &str, version: &str, settings: Option<Value>) -> Extension {
        Extension {
            name: name.into(),
            properties: ExtensionProperties {
                publisher: publisher.into(),
                kind: CUSTOM_SCRIPT.into(),
                type_handler_version: version.into(),
                auto_upgrade_minor_version: true,
                settings,
                protected_settings: None,
                force_update_tag: None,
                provision_after_extensions: vec![],
            },
        }
    }

    /// `Publisher.Type`, as Azure's instance view names it.
    pub fn full_type(&self) -> String {
        format!("{}.{}", self.properties.publisher, self.properties.kind)
    }

    /// The public `fileUris`, in order.
    pub fn file_uris(&self, protected: Option<&Value>) -> Vec<String> {
        let mut out = Vec::new();
        for s in [self.properties.settings.as_ref(), protected].into_iter().flatten() {
            if let Some(a) = s.get("fileUris").and_then(Value::as_array) {
                out.extend(a.iter().filter_map(Value::as_str).map(String::from));
            }
        }
        out
    }

    /// What to run: `commandToExecute` (protected first), or a base64 `script`.
    pub fn command(&self, protected: Option<&Value>) -> Option<Command> {
        for s in [protected, self.properties.settings.as_ref()].into_iter().flatten() {
            if let Some(c) = s.get("commandToExecute").and_then(Value::as_str) {
                return Some(Command::Shell(c.to_string()));
            }
            if let Some(c) = s.get("script").and_then(Value::as_str) {
                return Some(Command::Script(c.to_string()));
            }
        }
        None
    }

    /// The fingerprint of everything public that defines this extension's run (see module docs);
    /// the caller appends the keyed digest of the protected settings.
    pub fn public_fingerprint(&self) -> String {
        let p = &self.properties;
        let doc = serde_json::json!([
            p.publisher.to_ascii_lowercase(),
            p.kind,
            p.type_handler_version,
            p.settings,
            p.force_update_tag
        ]);
        format!("{:016x}", fnv64(doc.to_string().as_bytes()))
    }
}

/// The command of an extension.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `commandToExecute`: a shell command line.
    Shell(String),
    /// `script`: a base64-encoded (optionally gzip'd, which herd does not support) script.
    Script(String),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command(<redacted>)")
    }
}

/// FNV-1a, 64 bits: a stable, dependency-free digest for fingerprints (not for secrets alone).
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

impl ExtensionProfile {
    /// Checks names, publishers, types, versions and settings keys. Whether each extension has
    /// a command is checked by [`ExtensionProfile::check_commands`], once the stored protected
    /// settings are merged in.
    pub fn validate(&self) -> Result<(), FieldError> {
        let base = "virtualMachineProfile.extensionProfile.extensions";
        let mut seen: Vec<String> = Vec::new();
        for (i, e) in self.extensions.iter().enumerate() {
            let f = format!("{base}[{i}]");
            crate::network::check_child_name(&format!("{f}.name"), &e.name)?;
            if seen.contains(&e.name.to_ascii_lowercase()) {
                return Err(FieldError::new(format!("{f}.name"), format!("extension '{}' appears twice", e.name)));
            }
            seen.push(e.name.to_ascii_lowercase());
            let p = &e.properties;
            if !PUBLISHERS.iter().any(|x| x.eq_ignore_ascii_case(&p.publisher)) {
                return Err(FieldError::new(
                    format!("{f}.properties.publisher"),
                    format!("'{}' is not supported; allowed: {}", p.publisher, PUBLISHERS.join(", ")),
                ));
            }
            if !p.kind.eq_ignore_ascii_case(CUSTOM_SCRIPT) {
                return Err(FieldError::new(
                    format!("{f}.properties.type"),
                    format!("'{}' is not supported; allowed: {CUSTOM_SCRIPT}", p.kind),
                ));
            }
            let major = p.type_handler_version.split('.').next().unwrap_or("");
            if major != "2" {
                return Err(FieldError::new(
                    format!("{f}.properties.typeHandlerVersion"),
                    format!(
                        "'{}' is not supported; allowed: 2.0, 2.1 (Custom Script for Linux v2)",
                        p.type_handler_version
                    ),
                ));
            }
            check_settings(&format!("{f}.properties.settings"), p.settings.as_ref(), PUBLIC_KEYS, &[])?;
            check_settings(
                &format!("{f}.properties.protectedSettings"),
                p.protected_settings.as_ref(),
                PROTECTED_KEYS,
                UNSUPPORTED_PROTECTED,
            )?;
            for (j, after) in p.provision_after_extensions.iter().enumerate() {
                if !self.extensions.iter().any(|x| x.name.eq_ignore_ascii_case(after))
                    || after.eq_ignore_ascii_case(&e.name)
                {
                    return Err(FieldError::new(
                        format!("{f}.properties.provisionAfterExtensions[{j}]"),
                        format!("'{after}' is not another extension of this profile"),
                    ));
                }
            }
        }
        if let Some(b) = &self.extensions_time_budget {
            crate::duration::parse_iso8601(b)
                .filter(|d| *d >= chrono::Duration::minutes(15) && *d <= chrono::Duration::hours(2))
                .ok_or_else(|| {
                    FieldError::new(
                        "virtualMachineProfile.extensionProfile.extensionsTimeBudget",
                        format!("'{b}' is not an ISO 8601 duration between PT15M and PT2H (e.g. PT1H30M)"),
                    )
                })?;
        }
        Ok(())
    }

    /// Every extension needs exactly one command, public or protected.
    pub fn check_commands(&self, protected: &std::collections::BTreeMap<String, Value>) -> Result<(), FieldError> {
        for (i, e) in self.extensions.iter().enumerate() {
            let prot = protected.get(&e.name.to_ascii_lowercase());
            let count = [e.properties.settings.as_ref(), prot]
                .into_iter()
                .flatten()
                .map(|s| usize::from(s.get("commandToExecute").is_some()) + usize::from(s.get("script").is_some()))
                .sum::<usize>();
            if count != 1 {
                return Err(FieldError::new(
                    format!("virtualMachineProfile.extensionProfile.extensions[{i}].properties"),
                    format!(
                        "extension '{}' needs exactly one of commandToExecute or script, in settings or protectedSettings ({count} given)",
                        e.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The run order: `provisionAfterExtensions` first, otherwise as listed.
    pub fn ordered(&self) -> Vec<&Extension> {
        let mut out: Vec<&Extension> = Vec::new();
        let mut guard = 0;
        while out.len() < self.extensions.len() && guard <= self.extensions.len() {
            guard += 1;
            for e in &self.extensions {
                if out.iter().any(|o| o.name == e.name) {
                    continue;
                }
                let ready = e
                    .properties
                    .provision_after_extensions
                    .iter()
                    .all(|a| out.iter().any(|o| o.name.eq_ignore_ascii_case(a)));
                if ready {
                    out.push(e);
                }
            }
        }
        // A cycle: run the rest as listed.
        for e in &self.extensions {
            if !out.iter().any(|o| o.name == e.name) {
                out.push(e);
            }
        }
        out
    }
}

fn check_settings(field: &str, v: Option<&Value>, allowed: &[&str], unsupported: &[&str]) -> Result<(), FieldError> {
    let Some(v) = v else { return Ok(()) };
    if v.is_null() {
        return Ok(());
    }
    let Some(map) = v.as_object() else {
        return Err(FieldError::new(field, "must be a JSON object"));
    };
    check_keys(field, map, allowed, unsupported)?;
    if let Some(uris) = map.get("fileUris") {
        let Some(list) = uris.as_array() else {
            return Err(FieldError::new(format!("{field}.fileUris"), "must be a list of URLs"));
        };
        for (i, u) in list.iter().enumerate() {
            let s = u.as_str().unwrap_or("");
            let scheme_ok = ["http://", "https://", "file://"].iter().any(|p| s.to_ascii_lowercase().starts_with(p));
            let name_ok = s.rsplit('/').next().is_some_and(|n| !n.is_empty() && n != "." && n != "..");
            if !scheme_ok || !name_ok {
                return Err(FieldError::new(
                    format!("{field}.fileUris[{i}]"),
                    format!("'{s}' is not a URL to a file; allowed schemes: http, https, file"),
                ));
            }
        }
    }
    for k in ["commandToExecute", "script", "timestamp"] {
        if let Some(x) = map.get(k) {
            let ok = match k {
                "timestamp" => x.is_i64() || x.is_u64(),
                _ => x.as_str().is_some_and(|s| !s.trim().is_empty()),
            };
            if !ok {
                let want = if k == "timestamp" { "an integer" } else { "a non-empty string" };
                return Err(FieldError::new(format!("{field}.{k}"), format!("must be {want}")));
            }
        }
    }
    Ok(())
}

fn check_keys(field: &str, map: &Map<String, Value>, allowed: &[&str], unsupported: &[&str]) -> Result<(), FieldError> {
    for k in map.keys() {
        if unsupported.contains(&k.as_str()) {
            return Err(FieldError::not_supported(
                format!("{field}.{k}"),
                "storage-account and managed-identity downloads; use http(s) or file URLs",
            ));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(FieldError::new(
                format!("{field}.{k}"),
                format!("unknown setting; allowed: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

string_enum!(
    /// How an extension's last run on an instance went.
    ExtensionRunState { Transitioning = "Transitioning", Succeeded = "Succeeded", Failed = "Failed" } default Transitioning
);

/// One extension's status on one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionStatus {
    pub name: String,
    /// `Publisher.Type`.
    #[serde(rename = "type")]
    pub kind: String,
    pub type_handler_version: String,
    pub state: ExtensionRunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What happened, with the stdout and stderr tails (secrets redacted).
    pub message: String,
    pub time: DateTime<Utc>,
    /// Internal: what ran (see the module docs). Not shown by the API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(ignore)]
    pub fingerprint: String,
}

/// The shortest protected value herd masks: shorter ones would mangle ordinary output.
pub const MIN_SECRET_CHARS: usize = 6;

/// Command words that are never masked, even when they are arguments (`sudo bash x`).
const COMMON_WORDS: &[&str] =
    &["bash", "sudo", "exec", "python", "python3", "export", "source", "printf", "function", "readonly", "declare"];

/// Masks protected values in script output before it is stored.
///
/// What is masked, every occurrence, whatever surrounds it (`;`, `&&`, quotes, newlines,
/// `$()`), each only when it has at least [`MIN_SECRET_CHARS`] characters:
/// - every protected string value whole (a `commandToExecute`, a `fileUris` entry, the
///   decoded `script` when the caller passes it);
/// - read as shell, the parts of each protected command that a script would print: the
///   arguments of each simple command together (`echo V3 SEKRIT; echo end` masks `V3 SEKRIT`),
///   each argument alone (quotes removed), and the value of each `NAME=value` or
///   `--opt=value`. Not masked: command names, `-flags`, plain paths (only `[A-Za-z0-9._/~+-]`
///   with a `/`), `keep` words such as downloaded file names, and a few common command words.
///
/// A secret the script computes or reads from elsewhere (not written in its settings) cannot
/// be known, so it shows as the script prints it, as in Azure.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is masked whole.
    patterns: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    /// Never the values themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.patterns.len())
    }
}

impl Redactor {
    /// `values`: the protected string values (see [`secret_strings`]); `keep`: words never
    /// masked (the names of downloaded files).
    pub fn new(values: &[String], keep: &[String]) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut add = |w: &str| {
            let w = w.trim_matches(|c: char| c.is_whitespace());
            if w.chars().count() >= MIN_SECRET_CHARS && !keep.iter().any(|k| k == w) && !COMMON_WORDS.contains(&w) {
                patterns.push(w.to_string());
            }
        };
        for v in values {
            add(v);
            for words in shell_commands(v) {
                let first = words.iter().position(|w| !is_assignment(w)).unwrap_or(words.len());
                let mut args = Vec::new();
                for (i, w) in words.iter().enumerate() {
                    if let Some((_, value)) = w.split_once('=').filter(|_| !w.starts_with('=')) {
                        if !is_plain_path(value) {
                            add(value);
                        }
                    }
                    if i < first {
                        continue; // NAME=value before the command: only the value counts.
                    }
                    if i == first {
                        continue; // the command name
                    }
                    args.push(w.as_str());
                    if !w.starts_with('-') && !is_plain_path(w) {
                        add(w);
                    }
                }
                if args.len() > 1 {
                    add(&args.join(" "));
                }
            }
        }
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        patterns.dedup();
        Self { patterns }
    }

    /// `text` with every pattern replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), "***");
            }
        }
        out
    }
}

/// Replaces protected values in `text` with `***` (see [`Redactor`]).
pub fn redact(text: &str, secrets: &[String], keep: &[String]) -> String {
    Redactor::new(secrets, keep).redact(text)
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// A file path and nothing else: a `/` and only characters paths usually have.
fn is_plain_path(w: &str) -> bool {
    w.contains('/') && w.chars().all(|c| c.is_ascii_alphanumeric() || "._/~+-".contains(c))
}

/// Reads `text` as POSIX shell, well enough to find what a script prints: the words (quotes
/// and backslashes removed) of each simple command. Commands end at newlines, `;`, `&`, `|`,
/// parentheses, backquotes, `$(` and redirections; `#` at a word's start comments out the
/// rest of the line. Never fails: unbalanced quotes run to the end.
fn shell_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    fn end_word(words: &mut Vec<String>, word: &mut String, in_word: &mut bool) {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    fn end_command(commands: &mut Vec<Vec<String>>, words: &mut Vec<String>) {
        if !words.is_empty() {
            commands.push(std::mem::take(words));
        }
    }
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => end_word(&mut words, &mut word, &mut in_word),
            '\n' | ';' | '&' | '|' | '(' | ')' | '`' | '<' | '>' => {
                end_word(&mut words, &mut word, &mut in_word);
                end_command(&mut commands, &mut words);
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                end_word(&mut words, &mut word, &mut in_word);
                end_command(&mut commands, &mut words);
            }
            '#' if !in_word => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                end_command(&mut commands, &mut words);
            }
            '\'' => {
                in_word = true;
                for n in chars.by_ref() {
                    if n == '\'' {
                        break;
                    }
                    word.push(n);
                }
            }
            '"' => {
                in_word = true;
                while let Some(n) = chars.next() {
                    match n {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some(&e @ ('"' | '\\' | '$' | '`')) => {
                                word.push(e);
                                chars.next();
                            }
                            Some('\n') => {
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        _ => word.push(n),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(n) => {
                    in_word = true;
                    word.push(n);
                }
            },
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    end_command(&mut commands, &mut words);
    commands
}

/// Every string inside a JSON value (protected settings), for redaction.
pub fn secret_strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(secret_strings).collect(),
        Value::Object(m) => m.values().flat_map(secret_strings).collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ext(v: Value) -> ExtensionProfile {
        serde_json::from_value(json!({"extensions": [v]})).unwrap()
    }

    #[test]
    fn azure_shape_parses_and_validates() {
        let p = ext(json!({"name": "CustomScript", "properties": {
            "publisher": "Microsoft.Azure.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0",
            "settings": {"fileUris": ["http://127.0.0.1:8000/installapp-v1.sh"]},
            "protectedSettings": {"commandToExecute": "bash installapp-v1.sh db user secret"}}}));
        p.validate().unwrap();
        let prot = p.extensions[0].properties.protected_settings.clone();
        assert_eq!(
            p.extensions[0].command(prot.as_ref()),
            Some(Command::Shell("bash installapp-v1.sh db user secret".into()))
        );
        assert_eq!(p.extensions[0].file_uris(None), vec!["http://127.0.0.1:8000/installapp-v1.sh".to_string()]);
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (
                json!({"name": "x", "properties": {"publisher": "Acme", "type": "CustomScript", "typeHandlerVersion": "2.0"}}),
                "properties.publisher",
                "allowed: Microsoft.Azure.Extensions",
            ),
            (
                json!({"name": "x", "properties": {"publisher": "Herd.Extensions", "type": "DSC", "typeHandlerVersion": "2.0"}}),
                "properties.type",
                "allowed: CustomScript",
            ),
            (
                json!({"name": "x", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "1.5"}}),
                "typeHandlerVersion",
                "2.0",
            ),
            (
                json!({"name": "x", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0", "settings": {"fileUris": ["ftp://h/x"]}}}),
                "settings.fileUris[0]",
                "http, https, file",
            ),
            (
                json!({"name": "x", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0", "settings": {"colour": 1}}}),
                "settings.colour",
                "allowed: fileUris",
            ),
            (
                json!({"name": "x", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0", "protectedSettings": {"storageAccountKey": "k"}}}),
                "protectedSettings.storageAccountKey",
                "not supported",
            ),
            (
                json!({"name": "../x", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0"}}),
                "[0].name",
                "not a valid name",
            ),
        ];
        for (v, field, msg) in cases {
            let e = ext(v).validate().unwrap_err();
            assert!(e.field.ends_with(field), "{} vs {field}", e.field);
            assert!(e.message.contains(msg), "{}", e.message);
        }
    }

    #[test]
    fn exactly_one_command_counting_protected() {
        let p = ext(
            json!({"name": "cs", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1"}}),
        );
        assert!(p.check_commands(&Default::default()).unwrap_err().message.contains("exactly one"));
        let prot = [("cs".to_string(), json!({"commandToExecute": "true"}))].into_iter().collect();
        p.check_commands(&prot).unwrap();
    }

    #[test]
    fn fingerprint_follows_settings_and_force_update_tag() {
        let mut p = ext(
            json!({"name": "cs", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1", "settings": {"commandToExecute": "true"}}}),
        );
        let a = p.extensions[0].public_fingerprint();
        p.extensions[0].properties.force_update_tag = Some("2".into());
        let b = p.extensions[0].public_fingerprint();
        assert_ne!(a, b);
        assert_eq!(b, p.extensions[0].public_fingerprint());
    }

    #[test]
    fn redaction_hides_secrets_and_their_words() {
        let secrets = vec!["bash installapp-v1.sh todo labuser s3cr3t-pw".to_string()];
        let keep = vec!["installapp-v1.sh".to_string()];
        let out = redact("connecting as labuser with s3cr3t-pw via installapp-v1.sh", &secrets, &keep);
        assert!(!out.contains("s3cr3t-pw") && !out.contains("labuser"), "{out}");
        assert!(out.contains("installapp-v1.sh"));
    }

    /// Issue 13: `echo V3 SEKRIT; echo end` showed `V3 SEKRIT` (the `;` glued to the word).
    /// Every protected command below prints its secret; the output must not hold it, whatever
    /// surrounds it in the command or in the output.
    #[test]
    fn secrets_are_masked_whatever_surrounds_them() {
        let cases: &[(&str, &str, &str)] = &[
            ("echo V3 SEKRIT; echo end", "V3 SEKRIT\nend\n", "V3 SEKRIT"),
            ("echo V3 SEKRIT;echo end", "V3 SEKRIT\nend\n", "SEKRIT"),
            ("echo hunter22&&echo end", "hunter22\nend\n", "hunter22"),
            ("echo hunter22 && echo end", "hunter22\nend\n", "hunter22"),
            ("echo 'pass word9'; true", "pass word9\n", "pass word9"),
            ("echo \"dq-secret\"|cat", "dq-secret\n", "dq-secret"),
            ("echo \"a=\\\"quoted1\\\"\"", "a=\"quoted1\"\n", "quoted1"),
            ("echo line1\necho tok3n-xyz\n", "line1\ntok3n-xyz\n", "tok3n-xyz"),
            ("echo $(echo subsh3ll)", "subsh3ll\n", "subsh3ll"),
            ("echo pre$(printf inn3r-val)post", "preinn3r-valpost\n", "inn3r-val"),
            ("echo `echo b4ckt1ck`", "b4ckt1ck\n", "b4ckt1ck"),
            ("PASSWORD=pa55w0rd ./run.sh", "using pa55w0rd\n", "pa55w0rd"),
            ("./run.sh --token=abcdef123", "token abcdef123;\n", "abcdef123"),
            ("printf '%s\\n' 'x-SECRET-y' >out.txt; cat out.txt", "x-SECRET-y\n", "x-SECRET-y"),
        ];
        for (command, output, secret) in cases {
            let out = redact(&format!("[stdout]\n{output}(;{output})"), &[command.to_string()], &[]);
            assert!(!out.contains(secret), "{command:?}: {out:?}");
            assert!(out.contains("***"), "{command:?}: {out:?}");
        }
        // A whole protected value, glued to anything, and every occurrence.
        let out = redact("x;S3CRET-VALUE;S3CRET-VALUE&&", &["S3CRET-VALUE".into()], &[]);
        assert_eq!(out, "x;***;***&&");
    }

    #[test]
    fn short_values_names_flags_paths_and_kept_words_stay() {
        let secrets = vec!["bash ./install.sh --verbose -x /opt/app/bin ab 12345".to_string()];
        let keep = vec!["install.sh".to_string()];
        let text = "bash ran ./install.sh --verbose in /opt/app/bin: ab 12345";
        let r = Redactor::new(&secrets, &keep);
        assert_eq!(r.redact(text), text);
        assert_eq!(format!("{r:?}"), "Redactor(2 values)", "the whole value and the arguments together; never shown");
        // But a URL holding a token is masked.
        let out = redact("fetching https://h/x.sh?sig=AbC123", &["https://h/x.sh?sig=AbC123".into()], &[]);
        assert_eq!(out, "fetching ***");
        assert!(Redactor::new(&["ls; echo short".into()], &[]).redact("short").contains("short"));
    }

    #[test]
    fn provision_after_orders_runs() {
        let p: ExtensionProfile = serde_json::from_value(json!({"extensions": [
            {"name": "b", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0", "provisionAfterExtensions": ["a"]}},
            {"name": "a", "properties": {"publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0"}}]})).unwrap();
        p.validate().unwrap();
        let names: Vec<&str> = p.ordered().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
