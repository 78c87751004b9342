//! The generic update: az's `--set path=value`, `--add path json`, `--remove path index` on a
//! resource's JSON. One mechanism serves every field; the model's parser and validation then
//! decide whether the result is acceptable, so nothing half-applies.

use crate::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum PatchOp {
    /// `--set path=value`: value is JSON if it parses, else a string.
    Set { path: String, value: String },
    /// `--add path value`: append to the list at path.
    Add { path: String, value: String },
    /// `--remove path [index]`: remove a list element, or the property at path.
    Remove {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The most segments a patch path may have (`a.b[0].c` has 4). The deepest real model path
/// has about a dozen.
pub const MAX_PATH_DEPTH: usize = 32;
/// The most operations one update may carry.
pub const MAX_OPERATIONS: usize = 256;
/// The deepest nesting a patched document may reach (objects and lists), as for request bodies.
pub const MAX_DEPTH: usize = 64;

/// How deeply `v` nests (a scalar is 0, `[]` is 1). Iterative, so any input is safe.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut todo: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = todo.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                todo.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d + 1);
                todo.extend(m.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

fn parse_path(path: &str) -> Result<Vec<Seg>, FieldError> {
    let bad = || FieldError::new(path, "is not a valid path; write it like a.b[0].c");
    let too_deep = || {
        let shown: String = path.chars().take(60).collect();
        FieldError::new(
            format!("{shown}{}", if shown.len() < path.len() { "..." } else { "" }),
            format!("the path has more than {MAX_PATH_DEPTH} segments; the limit is {MAX_PATH_DEPTH}"),
        )
    };
    // Counted before anything else, so a huge path costs no more than its length.
    if path.split('.').count() + path.matches('[').count() > MAX_PATH_DEPTH * 2 {
        return Err(too_deep());
    }
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(match name.parse::<usize>() {
                Ok(i) if !segs.is_empty() => Seg::Index(i),
                _ => Seg::Key(name.to_string()),
            });
        } else if segs.is_empty() || rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            let idx: usize = rest[1..close].parse().map_err(|_| bad())?;
            segs.push(Seg::Index(idx));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad());
            }
        }
    }
    if segs.is_empty() {
        return Err(bad());
    }
    if segs.len() > MAX_PATH_DEPTH {
        return Err(too_deep());
    }
    Ok(segs)
}

/// Parses a CLI value: JSON when it is JSON, otherwise the text as a string. When the value being
/// replaced is a string, a bare number or boolean stays a string (`version=1` means "1").
fn parse_value(text: &str, existing: Option<&Value>) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) if matches!(existing, Some(Value::String(_))) => {
            let _ = v;
            Value::String(text.to_string())
        }
        Ok(v) => v,
        Err(_) => Value::String(text.to_string()),
    }
}

fn key_in<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    if map.contains_key(key) {
        return map.keys().find(|k| *k == key).map(String::as_str);
    }
    map.keys().find(|k| k.eq_ignore_ascii_case(key)).map(String::as_str)
}

/// Walks to the parent of the last segment, creating objects for missing keys when `create`.
fn walk<'a>(root: &'a mut Value, segs: &[Seg], path: &str, create: bool) -> Result<&'a mut Value, FieldError> {
    let mut cur = root;
    for (i, seg) in segs.iter().enumerate() {
        let shown = render(&segs[..=i]);
        cur = match seg {
            Seg::Key(k) => {
                if cur.is_null() && create {
                    *cur = Value::Object(Default::default());
                }
                let map = cur
                    .as_object_mut()
                    .ok_or_else(|| FieldError::new(path, format!("'{}' is not an object", render(&segs[..i]))))?;
                let actual = key_in(map, k).map(str::to_string);
                match actual {
                    Some(a) => map.get_mut(&a).expect("key exists"),
                    None if create => map.entry(k.clone()).or_insert(Value::Null),
                    None => return Err(FieldError::new(path, format!("'{shown}' does not exist"))),
                }
            }
            Seg::Index(n) => {
                let arr = cur
                    .as_array_mut()
                    .ok_or_else(|| FieldError::new(path, format!("'{}' is not a list", render(&segs[..i]))))?;
                let len = arr.len();
                arr.get_mut(*n).ok_or_else(|| {
                    FieldError::new(path, format!("index {n} is out of range; the list has {len} items"))
                })?
            }
        };
    }
    Ok(cur)
}

fn render(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Applies `ops` in order to a copy of `doc`. Fields in `read_only` may not be touched.
pub fn apply(doc: &Value, ops: &[PatchOp], read_only: &[&str]) -> Result<Value, FieldError> {
    let mut out = doc.clone();
    for op in ops {
        let path = match op {
            PatchOp::Set { path, .. } | PatchOp::Add { path, .. } | PatchOp::Remove { path, .. } => path,
        };
        let segs = parse_path(path)?;
        if let Some(Seg::Key(root)) = segs.first() {
            if read_only.iter().any(|r| r.eq_ignore_ascii_case(root)) {
                return Err(FieldError::new(path.as_str(), "is read-only"));
            }
        }
        match op {
            PatchOp::Set { value, .. } => {
                let (last, parent_segs) = segs.split_last().expect("non-empty path");
                let parent = walk(&mut out, parent_segs, path, true)?;
                match last {
                    Seg::Key(k) => {
                        if parent.is_null() {
                            *parent = Value::Object(Default::default());
                        }
                        let map = parent
                            .as_object_mut()
                            .ok_or_else(|| FieldError::new(path.as_str(), "parent is not an object"))?;
                        let key = key_in(map, k).unwrap_or(k).to_string();
                        let v = parse_value(value, map.get(&key));
                        map.insert(key, v);
                    }
                    Seg::Index(n) => {
                        let arr = parent
                            .as_array_mut()
                            .ok_or_else(|| FieldError::new(path.as_str(), "parent is not a list"))?;
                        let len = arr.len();
                        let slot = arr.get_mut(*n).ok_or_else(|| {
                            FieldError::new(
                                path.as_str(),
                                format!("index {n} is out of range; the list has {len} items"),
                            )
                        })?;
                        *slot = parse_value(value, Some(slot));
                    }
                }
            }
            PatchOp::Add { value, .. } => {
                let target = walk(&mut out, &segs, path, true)?;
                if target.is_null() {
                    *target = Value::Array(vec![]);
                }
                let arr = target
                    .as_array_mut()
                    .ok_or_else(|| FieldError::new(path.as_str(), "is not a list; --add appends to lists"))?;
                arr.push(parse_value(value, None));
            }
            PatchOp::Remove { index, .. } => match index {
                Some(i) => {
                    let target = walk(&mut out, &segs, path, false)?;
                    let arr = target.as_array_mut().ok_or_else(|| FieldError::new(path.as_str(), "is not a list"))?;
                    if *i >= arr.len() {
                        return Err(FieldError::new(
                            path.as_str(),
                            format!("index {i} is out of range; the list has {} items", arr.len()),
                        ));
                    }
                    arr.remove(*i);
                }
                None => {
                    let (last, parent_segs) = segs.split_last().expect("non-empty path");
                    let parent = walk(&mut out, parent_segs, path, false)?;
                    match (last, parent) {
                        (Seg::Key(k), Value::Object(map)) => {
                            let key = key_in(map, k)
                                .ok_or_else(|| FieldError::new(path.as_str(), "does not exist"))?
                                .to_string();
                            map.remove(&key);
                        }
                        (Seg::Index(i), Value::Array(arr)) if *i < arr.len() => {
                            arr.remove(*i);
                        }
                        _ => return Err(FieldError::new(path.as_str(), "does not exist")),
                    }
                }
            },
        }
        if depth(&out) > MAX_DEPTH {
            // `out` may already nest too deep to drop by recursion: take it apart flat.
            drop_flat(out);
            return Err(FieldError::new(
                path.as_str(),
                format!("the result nests deeper than {MAX_DEPTH} levels; the limit is {MAX_DEPTH}"),
            ));
        }
    }
    Ok(out)
}

/// Drops a value without recursion (serde_json's own drop recurses once per level).
pub fn drop_flat(v: Value) {
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Array(a) => todo.extend(a),
            Value::Object(m) => todo.extend(m.into_iter().map(|(_, x)| x)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(p: &str, v: &str) -> PatchOp {
        PatchOp::Set { path: p.into(), value: v.into() }
    }

    #[test]
    fn set_add_remove() {
        let doc = json!({"sku": {"capacity": 3, "name": "B"}, "zones": ["1"], "v": {"version": "1.0.0"}});
        let out =
            apply(&doc, &[set("sku.capacity", "4"), set("v.version", "1.0.1"), set("tags.env", "prod")], &[]).unwrap();
        assert_eq!(out["sku"]["capacity"], json!(4));
        assert_eq!(out["v"]["version"], json!("1.0.1"));
        assert_eq!(out["tags"]["env"], json!("prod"));
        let out = apply(&doc, &[set("v.version", "2")], &[]).unwrap();
        assert_eq!(out["v"]["version"], json!("2"), "a string field stays a string");
        let out = apply(&doc, &[PatchOp::Add { path: "zones".into(), value: "2".into() }], &[]).unwrap();
        assert_eq!(out["zones"], json!(["1", 2]));
        let out = apply(&doc, &[PatchOp::Remove { path: "zones".into(), index: Some(0) }], &[]).unwrap();
        assert_eq!(out["zones"], json!([]));
        let out = apply(&doc, &[set("zones[0]", "\"3\"")], &[]).unwrap();
        assert_eq!(out["zones"], json!(["3"]));
        let out = apply(&doc, &[set("SKU.Capacity", "5")], &[]).unwrap();
        assert_eq!(out["sku"]["capacity"], json!(5), "keys match case-insensitively");
    }

    #[test]
    fn deep_paths_and_values_are_refused_not_recursed() {
        let doc = json!({"tags": {}});
        let deep = vec!["a"; 5000].join(".");
        let e = apply(&doc, &[set(&deep, "1")], &[]).unwrap_err();
        assert!(e.message.contains("more than 32 segments"), "{e}");
        assert!(e.field.len() < 80, "the field is shortened: {}", e.field);
        let path33 = vec!["a"; 33].join(".");
        assert!(apply(&doc, &[set(&path33, "1")], &[]).unwrap_err().message.contains("32"));
        let path32 = vec!["a"; 32].join(".");
        assert!(apply(&doc, &[set(&path32, "1")], &[]).is_ok());
        let idx = format!("tags{}", "[0]".repeat(40));
        assert!(apply(&doc, &[set(&idx, "1")], &[]).unwrap_err().message.contains("32 segments"));
        let value = format!("{}{}", "[".repeat(60), "]".repeat(60));
        let e = apply(&doc, &[set("tags.a.b.c.d.e", &value)], &[]).unwrap_err();
        assert!(e.message.contains("deeper than 64"), "{e}");
        assert_eq!(depth(&json!([[1], {"a": {"b": []}}])), 4);
        assert_eq!(depth(&json!(1)), 0);
    }

    #[test]
    fn errors_name_the_path() {
        let doc = json!({"zones": ["1"], "id": "x"});
        let e = apply(&doc, &[PatchOp::Remove { path: "zones".into(), index: Some(3) }], &[]).unwrap_err();
        assert_eq!(e.field, "zones");
        assert!(e.message.contains("out of range"));
        let e = apply(&doc, &[set("id", "y")], &["id"]).unwrap_err();
        assert!(e.message.contains("read-only"));
        assert!(apply(&doc, &[set("a..b", "1")], &[]).is_err());
        assert!(apply(&doc, &[set("zones.x", "1")], &[]).is_err());
    }
}
