//! A form generated from a kind's JSON Schema, and the posted form turned back into `args`.
//!
//! Each top-level property of an object schema becomes one labelled control: a number input
//! for integers and numbers (with the schema's bounds), a select for enums and booleans, a
//! text input for strings, and a JSON text area for anything else (objects, arrays, unions).
//! `$ref`s into `$defs` are followed, and a `null` alternative (`["integer", "null"]`, `anyOf`
//! with `{"type": "null"}`) only makes the field optional. An "args as JSON" area overrides
//! the fields when filled, for schemas the fields cannot express. Whatever the form sends,
//! the API's own validation against the catalog's schema decides.

use serde_json::{Map, Value};

/// What a control edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Whole number.
    Integer,
    /// Number.
    Number,
    /// Text.
    Text,
    /// `true` / `false`.
    Boolean,
    /// One of fixed strings.
    Choice,
    /// JSON text of any value.
    Json,
}

/// One form field.
#[derive(Debug, Clone)]
pub struct Field {
    /// Property name (the form field is `arg.<name>`).
    pub name: String,
    /// Control kind.
    pub control: Control,
    /// Must be given.
    pub required: bool,
    /// The property's description.
    pub help: String,
    /// Choices of a select.
    pub choices: Vec<String>,
    /// `min` attribute, if any.
    pub min: Option<String>,
    /// `max` attribute, if any.
    pub max: Option<String>,
    /// Default shown, if the schema has one.
    pub default: String,
}

impl Field {
    /// The HTML form field's name.
    pub fn input_name(&self) -> String {
        format!("arg.{}", self.name)
    }

    /// The input's element id.
    pub fn input_id(&self, kind: &str) -> String {
        format!("f-{kind}-{}", self.name)
    }

    /// Whether this is a number input.
    pub fn is_number(&self) -> bool {
        matches!(self.control, Control::Integer | Control::Number)
    }

    /// Whether this is a select.
    pub fn is_select(&self) -> bool {
        matches!(self.control, Control::Choice | Control::Boolean)
    }

    /// Whether this is a JSON text area.
    pub fn is_json(&self) -> bool {
        self.control == Control::Json
    }

    /// `step` of a number input.
    pub fn step(&self) -> &'static str {
        if self.control == Control::Integer {
            "1"
        } else {
            "any"
        }
    }
}

/// Follow a local `$ref` (`#/$defs/X` or `#/definitions/X`).
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or(s),
        None => s,
    }
}

/// The schema without its `null` alternative, and whether there was one.
fn without_null<'a>(root: &'a Value, s: &'a Value) -> (&'a Value, bool) {
    let s = resolve(root, s);
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = alts
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if non_null.len() == 1 && alts.len() == 2 {
                return (resolve(root, non_null[0]), true);
            }
        }
    }
    (s, false)
}

fn types(s: &Value) -> Vec<String> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// String choices of an enum (`enum: [...]` or `oneOf` of `const`s).
fn choices(s: &Value) -> Option<Vec<String>> {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    let alts = s.get("oneOf").or_else(|| s.get("anyOf"))?.as_array()?;
    alts.iter()
        .map(|a| a.get("const").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn number_attr(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| v.as_f64()).map(|f| {
        if f.fract() == 0.0 && f.abs() < 9e15 {
            format!("{}", f as i64)
        } else {
            f.to_string()
        }
    })
}

/// The fields of `schema`, in the order of its properties. A schema that is not an object
/// with properties has none (the JSON area is then the way to give args).
pub fn fields(schema: &Value) -> Vec<Field> {
    let root = schema;
    let obj = resolve(root, schema);
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(name, raw)| {
            let (s, nullable) = without_null(root, raw);
            let ts = types(s);
            let (control, options) = if let Some(c) = choices(s) {
                (Control::Choice, c)
            } else if ts.len() == 1 && ts[0] == "integer" {
                (Control::Integer, Vec::new())
            } else if ts.len() == 1 && ts[0] == "number" {
                (Control::Number, Vec::new())
            } else if ts.len() == 1 && ts[0] == "boolean" {
                (Control::Boolean, vec!["true".into(), "false".into()])
            } else if ts.len() == 1 && ts[0] == "string" {
                (Control::Text, Vec::new())
            } else {
                (Control::Json, Vec::new())
            };
            let help = raw
                .get("description")
                .or_else(|| s.get("description"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let default = raw
                .get("default")
                .or_else(|| s.get("default"))
                .filter(|d| !d.is_null())
                .map(|d| match d {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            Field {
                name: name.clone(),
                control,
                required: required.contains(&name.as_str()) && !nullable,
                help,
                choices: options,
                min: number_attr(s.get("minimum")),
                max: number_attr(s.get("maximum")),
                default,
            }
        })
        .collect()
}

/// The args a posted form describes: the `args_json` area when filled, else the fields
/// (empty optional fields are left out). A value that does not parse is an error naming the
/// field.
pub fn args_from_form(schema: &Value, form: &[(String, String)]) -> Result<Value, String> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(raw) = get("args_json").filter(|v| !v.trim().is_empty()) {
        return serde_json::from_str(raw).map_err(|e| format!("args (JSON): {e}"));
    }
    let mut args = Map::new();
    for f in fields(schema) {
        let Some(raw) = get(&f.input_name())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        let v = match f.control {
            Control::Integer => raw
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("{}: '{raw}' is not a whole number", f.name))?,
            Control::Number => raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("{}: '{raw}' is not a number", f.name))?,
            Control::Boolean => Value::Bool(raw == "true"),
            Control::Text | Control::Choice => Value::String(raw.to_string()),
            Control::Json => {
                serde_json::from_str(raw).map_err(|e| format!("{} (JSON): {e}", f.name))?
            }
        };
        args.insert(f.name.clone(), v);
    }
    Ok(Value::Object(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sleep_like() -> Value {
        json!({
            "type": "object",
            "properties": {
                "ms": {"type": "integer", "minimum": 0, "maximum": 86400000, "description": "How long"},
                "steps": {"type": ["integer", "null"], "minimum": 1},
                "on_cancel": {"anyOf": [{"$ref": "#/$defs/OnCancel"}, {"type": "null"}]},
                "meta": {"type": "object"}
            },
            "required": ["ms"],
            "$defs": {"OnCancel": {"type": "string", "enum": ["stop", "retry"]}}
        })
    }

    #[test]
    fn fields_follow_the_schema() {
        let f = fields(&sleep_like());
        let by = |n: &str| f.iter().find(|x| x.name == n).unwrap().clone();
        assert_eq!(by("ms").control, Control::Integer);
        assert!(by("ms").required);
        assert_eq!(by("ms").max.as_deref(), Some("86400000"));
        assert_eq!(by("steps").control, Control::Integer);
        assert!(!by("steps").required);
        assert_eq!(by("on_cancel").control, Control::Choice);
        assert_eq!(by("on_cancel").choices, vec!["stop", "retry"]);
        assert_eq!(by("meta").control, Control::Json);
        assert!(fields(&json!(true)).is_empty());
    }

    #[test]
    fn forms_become_args() {
        let form = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let s = sleep_like();
        let a = args_from_form(
            &s,
            &form(&[
                ("arg.ms", "5000"),
                ("arg.steps", ""),
                ("arg.on_cancel", "retry"),
            ]),
        )
        .unwrap();
        assert_eq!(a, json!({"ms": 5000, "on_cancel": "retry"}));
        assert!(args_from_form(&s, &form(&[("arg.ms", "soon")]))
            .unwrap_err()
            .contains("ms"));
        let a =
            args_from_form(&s, &form(&[("arg.ms", "1"), ("args_json", "{\"ms\": 2}")])).unwrap();
        assert_eq!(a, json!({"ms": 2}));
    }
}
