//! Where a daemon's files live by default, loading its TOML config, and the settings
//! both daemons' `[limits]` share.

use pmtp_proto::{NonceChecker, NonceConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, Table, Value};

/// `$XDG_DATA_HOME/app`, else `~/.local/share/app`.
pub fn default_data_dir(app: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join(app);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share").join(app)
}

/// A daemon's configuration cannot be read, parsed, accepted or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable, is not TOML, or holds a value the daemon refuses.
    #[error("configuration: {0}")]
    Invalid(String),
    /// A value TOML cannot hold (an integer over `i64::MAX`, say).
    #[error("cannot write the configuration: {0}")]
    Write(String),
}

/// Reads and parses a TOML file; the error names the file and what is wrong.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(&format_args!("{e}{}", crate::users::permission_hint(path, &e))))?;
    toml::from_str(&text).map_err(|e| invalid(&e))
}

/// Reads a daemon's config file and checks it with `validate`.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let config = load_toml(path)?;
    validate(&config)?;
    Ok(config)
}

/// Chooses a daemon's defaults for the [`PeerLimits`] in its `[limits]` (a bank serves
/// thousands of wallets; a wallet on a desktop a few shops).
pub trait PeerLimitDefaults: Sized {
    const DEFAULT: PeerLimits<Self>;
}

/// The `[limits]` settings every daemon that serves PMTP peers has: connection slots, frame
/// size, idle time and the replay window. A daemon's own `Limits` flattens this in beside
/// its own settings, so the config file keeps one `[limits]` section; `D` picks the
/// defaults (see [`PeerLimitDefaults`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, bound = "D: PeerLimitDefaults")]
pub struct PeerLimits<D> {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections from one source (IPv4 address, IPv6 /64) at once, once half the slots
    /// are in use; more are closed at accept.
    pub max_connections_per_ip: usize,
    /// Largest frame body accepted, bytes (at most 1 MiB).
    pub max_frame_bytes: usize,
    /// A connection idle this long between requests is closed.
    pub idle_timeout_secs: u64,
    /// Nonce timestamps may differ from this daemon's clock by this much, each way.
    pub nonce_window_secs: u64,
    /// Most nonces remembered in memory.
    pub nonce_cache_capacity: usize,
    /// Require a peer's nonce address to be its connection's address.
    pub nonce_check_address: bool,
    #[serde(skip)]
    pub defaults: std::marker::PhantomData<D>,
}

impl<D: PeerLimitDefaults> Default for PeerLimits<D> {
    fn default() -> Self {
        D::DEFAULT
    }
}

impl<D> PeerLimits<D> {
    /// The accept loop's limits.
    pub fn connections(&self) -> crate::net::ConnectionLimits {
        crate::net::ConnectionLimits { total: self.max_connections, per_ip: self.max_connections_per_ip }
    }

    /// The replay checker these settings describe: the clock window each way, how many
    /// nonces are remembered, whether a nonce must name the connection's address.
    pub fn nonce_checker(&self) -> NonceChecker {
        NonceChecker::new(NonceConfig {
            window_secs: self.nonce_window_secs,
            capacity: self.nonce_cache_capacity,
            check_address: self.nonce_check_address,
        })
    }

    /// Refuses settings no daemon can serve with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_bytes == 0 || self.max_frame_bytes > pmtp_proto::frame::DEFAULT_MAX_BODY {
            return Err(ConfigError::Invalid("limits.max_frame_bytes must be 1 to 1048576".into()));
        }
        Ok(())
    }
}

/// Refuses any key left over in a table whose struct flattens another in (serde's
/// `deny_unknown_fields` does not work with `flatten`): put last in the struct as
/// `#[serde(flatten, skip_serializing)] pub unknown: UnknownKeys`, it fails to parse the
/// file on the first key no field took, naming it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownKeys;

impl<'de> serde::Deserialize<'de> for UnknownKeys {
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UnknownKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("no further keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UnknownKeys, A::Error> {
                match map.next_key::<String>()? {
                    Some(k) => Err(serde::de::Error::custom(format!("unknown field `{}`", k.escape_debug()))),
                    None => Ok(UnknownKeys),
                }
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// The TOML document of `value` as people read it: a `[section]` per nested struct, an
/// `[[array]]` of tables per list of structs, one key per line. `toml_edit` writes every
/// value, so strings with quotes, backslashes or control characters come out as valid
/// TOML that reads back to the same value.
pub fn document<T: Serialize>(value: &T) -> Result<DocumentMut, ConfigError> {
    let mut doc = toml_edit::ser::to_document(value).map_err(|e| ConfigError::Write(e.to_string()))?;
    expand(doc.as_table_mut());
    Ok(doc)
}

/// Turns inline tables into `[sections]` and arrays of inline tables into `[[arrays]]`.
fn expand(table: &mut Table) {
    for (_, item) in table.iter_mut() {
        let taken = std::mem::take(item);
        *item = match taken {
            Item::Value(Value::InlineTable(t)) => Item::Table(t.into_table()),
            Item::Value(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_inline_table) => {
                match Item::Value(Value::Array(a)).into_array_of_tables() {
                    Ok(aot) => Item::ArrayOfTables(aot),
                    Err(back) => back,
                }
            }
            other => other,
        };
        match item {
            Item::Table(t) => expand(t),
            Item::ArrayOfTables(aot) => aot.iter_mut().for_each(expand),
            _ => {}
        }
    }
}

/// Puts `text` as comment lines above the key or section at dotted `path` ("listen",
/// "limits", "limits.max_connections"); an empty line of `text` stays empty. A section's
/// comment is set off by a blank line. Returns false when there is no such key.
pub fn comment(doc: &mut DocumentMut, path: &str, text: &str) -> bool {
    let lines: String = text.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("# {l}\n") }).collect();
    let (parent, key) = match path.rsplit_once('.') {
        Some((p, k)) => (Some(p), k),
        None => (None, path),
    };
    let mut table = doc.as_table_mut();
    for part in parent.into_iter().flat_map(|p| p.split('.')) {
        match table.get_mut(part) {
            Some(Item::Table(t)) => table = t,
            _ => return false,
        }
    }
    match table.get_mut(key) {
        Some(Item::Table(t)) => {
            t.decor_mut().set_prefix(format!("\n{lines}"));
            true
        }
        Some(_) => match table.key_mut(key) {
            Some(mut k) => {
                k.leaf_decor_mut().set_prefix(lines);
                true
            }
            None => false,
        },
        None => false,
    }
}

/// The commented file a daemon's `init` writes: `value` as a [`document`], with `comments`
/// (dotted path, text) put above their settings. An empty list at the top level is left
/// out: `add` commands append its `[[sections]]` later, which an `x = []` would clash with.
pub fn commented_document<T: Serialize>(value: &T, comments: &[(&str, &str)]) -> Result<DocumentMut, ConfigError> {
    let mut doc = document(value)?;
    let empty: Vec<String> = doc
        .iter()
        .filter(|(_, item)| item.as_array().is_some_and(|a| a.is_empty()))
        .map(|(k, _)| k.to_owned())
        .collect();
    for k in empty {
        doc.remove(&k);
    }
    for (path, text) in comments {
        comment(&mut doc, path, text);
    }
    Ok(doc)
}

/// One `[[name]]` section holding `item`, as an `add` command appends it to a config file.
pub fn array_section<T: Serialize>(name: &str, item: &T) -> Result<String, ConfigError> {
    let doc = document(&std::collections::BTreeMap::from([(name, [item])]))?;
    Ok(format!("\n{doc}"))
}

/// What an edit of one `[[array]]` entry (a wallet's bank, a bank's peer) found.
#[derive(Debug, PartialEq, Eq)]
pub enum Edited {
    Done,
    /// No entry with that id.
    NotFound,
}

/// Replaces (with `Some(item)`) or removes (`None`) the `[[array]]` entry of the config
/// file `text` whose `id` is `id`, keeping every other line and comment as it was; returns
/// the new text. `check` parses and validates the result before anyone writes it.
pub fn edit_array_entry<T: Serialize>(
    text: &str,
    array: &str,
    id: &str,
    item: Option<&T>,
) -> Result<(String, Edited), ConfigError> {
    let mut doc: DocumentMut = text.parse().map_err(|e| ConfigError::Invalid(format!("{e}")))?;
    let Some(aot) = doc.get_mut(array).and_then(Item::as_array_of_tables_mut) else {
        return Ok((text.to_owned(), Edited::NotFound));
    };
    let Some(index) = aot.iter().position(|t| t.get("id").and_then(Item::as_str) == Some(id)) else {
        return Ok((text.to_owned(), Edited::NotFound));
    };
    match item {
        None => {
            aot.remove(index);
            if aot.is_empty() {
                doc.remove(array);
            }
        }
        Some(item) => {
            let mut fresh = document(item)?.as_table().clone();
            let old = aot.get_mut(index).ok_or_else(|| ConfigError::Invalid("entry vanished".into()))?;
            fresh.decor_mut().clone_from(old.decor());
            *old = fresh;
        }
    }
    Ok((doc.to_string(), Edited::Done))
}

/// Writes the config file at `path` with its `[[array]]` entry `id` replaced by `item` (or
/// removed), keeping every other line and comment, once the edited file reads back as
/// `wanted` (the whole config with the change made, which the caller has validated).
/// Written whole (temporary file, rename) with mode 0600, or not at all.
pub fn rewrite_entry<C, T>(path: &Path, wanted: &C, array: &str, id: &str, item: Option<&T>) -> Result<(), ConfigError>
where
    C: DeserializeOwned + PartialEq,
    T: Serialize,
{
    let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(&format_args!("{e}{}", crate::users::permission_hint(path, &e))))?;
    let (text, found) = edit_array_entry(&text, array, id, item)?;
    let back: C =
        toml::from_str(&text).map_err(|e| invalid(&format_args!("the edited file does not read back: {e}")))?;
    if found != Edited::Done || back != *wanted {
        return Err(invalid(&format_args!(
            "the edit of [[{array}]] {id:?} does not say what was asked; nothing written"
        )));
    }
    pmtp_proto::keyfile::fs::write_atomic(path, text.as_bytes(), 0o600).map_err(|e| ConfigError::Write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
    struct Inner {
        n: u64,
        s: String,
    }

    #[test]
    fn one_array_entry_is_replaced_or_removed_and_the_rest_kept() {
        let text = "# top comment\nname = \"x\"\n\n[[item]]\nn = 1\ns = \"a\"\nid = \"one\"\n\n# the second\n[[item]]\nid = \"two\"\nn = 2\ns = \"b\"\n";
        #[derive(Serialize)]
        struct Item {
            id: &'static str,
            n: u64,
        }
        let (out, found) = edit_array_entry(text, "item", "two", Some(&Item { id: "two", n: 7 })).unwrap();
        assert_eq!(found, Edited::Done);
        assert!(out.contains("# top comment") && out.contains("# the second"), "{out}");
        assert!(out.contains("id = \"two\"\nn = 7\n") && !out.contains("s = \"b\""), "{out}");
        assert!(out.contains("n = 1\ns = \"a\"\nid = \"one\""), "the other entry is untouched: {out}");
        let (out, found) = edit_array_entry::<Item>(&out, "item", "one", None).unwrap();
        assert_eq!(found, Edited::Done);
        assert!(!out.contains("\"one\"") && out.contains("\"two\""), "{out}");
        let (same, found) = edit_array_entry::<Item>(&out, "item", "three", None).unwrap();
        assert_eq!((same.as_str(), found), (out.as_str(), Edited::NotFound));
        let (out, _) = edit_array_entry::<Item>(&out, "item", "two", None).unwrap();
        assert!(!out.contains("[[item]]"), "{out}");
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
    struct Outer {
        name: String,
        inner: Inner,
        #[serde(default)]
        item: Vec<Inner>,
    }

    #[test]
    fn control_characters_and_quotes_round_trip_with_comments_kept() {
        let nasty = "a\"b\\c\u{7}\u{1b}[31m\nd\u{0}\u{7f}'''e\t\r";
        let v = Outer {
            name: nasty.into(),
            inner: Inner { n: 3, s: nasty.into() },
            item: vec![Inner { n: 1, s: nasty.into() }, Inner::default()],
        };
        let mut doc = document(&v).unwrap();
        assert!(comment(&mut doc, "name", "what it is called"));
        assert!(comment(&mut doc, "inner", "the inner part"));
        assert!(comment(&mut doc, "inner.n", "a number\n\nafter a blank line"));
        assert!(!comment(&mut doc, "inner.missing", "x"));
        assert!(!comment(&mut doc, "nowhere.n", "x"));
        let text = doc.to_string();
        assert!(text.contains("# what it is called\nname = "), "{text}");
        assert!(text.contains("\n# the inner part\n[inner]\n# a number\n\n# after a blank line\nn = 3\n"), "{text}");
        assert!(text.contains("[[item]]"), "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "no raw control character: {text:?}");
        assert_eq!(toml::from_str::<Outer>(&text).unwrap(), v);
    }

    #[test]
    fn an_integer_toml_cannot_hold_is_an_error() {
        assert!(document(&Inner { n: u64::MAX, s: String::new() }).is_err());
    }
}
