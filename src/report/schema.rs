//! The JSON Schema of the result JSON, generated from the report types (schemars): `tpprof schema`
//! prints it, and results/schema.json is its committed copy (a test keeps the two equal).
//!
//! It describes what the loader (`summary::load`) accepts: a field with `#[serde(default)]` or of
//! an `Option` type may be absent (results of earlier builds lack the fields added since). Every
//! object is closed (`additionalProperties: false`), except the free-form ones the types hold as
//! `serde_json::Value` (engine options, engine details, model config, engine stats): a renamed or
//! misspelt field fails validation, although the loader itself would ignore it.

use schemars::generate::SchemaSettings;
use schemars::transform::{transform_subschemas, Transform};
use schemars::Schema;

use super::RunReport;

/// The schema of a `tpprof.run/1` JSON (draft 2020-12).
pub fn generate() -> Schema {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .with_transform(Closed)
        .with_transform(Unwrapped)
        .into_generator()
        .into_root_schema_for::<RunReport>()
}

/// The schema as `tpprof schema` prints it and results/schema.json holds it: pretty, one final
/// newline.
pub fn pretty() -> String {
    let mut s = serde_json::to_string_pretty(&generate()).expect("a schema is plain JSON");
    s.push('\n');
    s
}

/// Sets `additionalProperties: false` on every object schema that lists its properties and says
/// nothing of others: the report types' structs and the variants of their tagged enums.
#[derive(Clone)]
struct Closed;

impl Transform for Closed {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(obj) = schema.as_object_mut() {
            if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
                obj.insert("additionalProperties".into(), false.into());
            }
        }
        transform_subschemas(self, schema);
    }
}

/// Joins the lines of each description (doc comments wrap at 100 columns; a blank line, a new
/// paragraph, stays).
#[derive(Clone)]
struct Unwrapped;

impl Transform for Unwrapped {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(serde_json::Value::String(d)) = schema.get_mut("description") {
            *d = d
                .split("\n\n")
                .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n\n");
        }
        transform_subschemas(self, schema);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_with_a_default_is_not_required() {
        let s = generate().to_value();
        let required = |def: &str| -> Vec<String> {
            serde_json::from_value(s["$defs"][def]["required"].clone()).unwrap_or_default()
        };
        // `#[serde(default)]` (config.warmup) and Option (summary.itl_p50_by_tenth_ms): optional.
        assert!(!required("ConfigReport").contains(&"warmup".to_string()));
        assert!(required("ConfigReport").contains(&"engine".to_string()));
        assert!(!required("Summary").contains(&"itl_p50_by_tenth_ms".to_string()));
        assert_eq!(s["properties"]["schema"]["const"], super::super::SCHEMA);
        assert_eq!(s["additionalProperties"], false);
    }
}
