//! `/openapi.json`: an OpenAPI 3.1 document built from the route table ([`crate::routes::operations`]) and
//! the model's JSON Schemas (schemars, draft 2020-12, the dialect of OpenAPI 3.1). Each operation carries
//! `x-fpaas-access` (`public`, `admin`, `tenant`), which the tenant-isolation test walks.

use std::sync::OnceLock;

use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::routes::{Access, Body, operations};

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad request: invalid JSON (`bad_request`) or an unknown field (`unknown_field`)",
        401 => "Missing or unknown token (`unauthorized`)",
        403 => "The token may not call this operation (`forbidden`)",
        404 => {
            "No such resource for this caller (`not_found`): another tenant's resources are not found"
        }
        409 => "Changed concurrently or `If-Match` is stale (`conflict`)",
        413 => "Body larger than 1 MiB (`payload_too_large`)",
        422 => {
            "Invalid value (`bad_jmespath` with `position`, `bad_url`, `url_not_allowed`, `bad_filter`, `limit_exceeded`, `bad_value`)"
        }
        429 => "Quota exceeded (`quota_exceeded`)",
        502 => {
            "The webhook receiver did not accept the replay (`delivery_failed`); the dead letter is kept"
        }
        _ => "Error",
    }
}

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error = crate::routes::error_schema(&mut generator);
    let mut paths = Map::new();
    for op in operations() {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = if name == "seq" {
                    json!({"type": "integer", "minimum": 1})
                } else {
                    json!({"type": "string"})
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        for (name, description) in op.query {
            let schema = if matches!(*name, "prefix" | "after" | "from") {
                json!({"type": "string"})
            } else {
                json!({"type": "integer", "minimum": 0})
            };
            parameters.push(json!({"name": name, "in": "query", "required": false,
                "description": description, "schema": schema}));
        }
        if op.operation_id == "updateSubscription" {
            parameters.push(
                json!({"name": "If-Match", "in": "header", "required": false,
                "description": "A revision from the subscription's ETag: update only if unchanged.",
                "schema": {"type": "string"}}),
            );
        }
        let mut responses = Map::new();
        let success = match op.response {
            Body::Empty => json!({"description": status_text(op.status)}),
            Body::Json(f) => json!({"description": status_text(op.status),
                "content": {"application/json": {"schema": f(&mut generator)}}}),
            Body::RawBatch => {
                json!({"description": "The batch body exactly as POSTed to the webhook",
                "content": {"application/json": {"schema": {"type": "object"}}}})
            }
            Body::EventStream(f) => {
                json!({"description": "Server-Sent Events; each event's `data` is JSON of this schema",
                "content": {"text/event-stream": {"schema": f(&mut generator)}}})
            }
        };
        responses.insert(op.status.to_string(), success);
        let mut errors: Vec<u16> = op.errors.to_vec();
        match op.access {
            Access::Public => {}
            Access::Admin | Access::Tenant => errors.extend([401, 403]),
        }
        errors.sort_unstable();
        errors.dedup();
        for status in errors {
            responses.insert(
                status.to_string(),
                json!({"description": status_text(status),
                    "content": {"application/json": {"schema": error.clone()}}}),
            );
        }
        let mut operation = json!({
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.access.as_str()],
            "x-fpaas-access": op.access.as_str(),
            "responses": responses,
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        operation["security"] = match op.access {
            Access::Public => json!([]),
            _ => json!([{"bearer": []}]),
        };
        if let Some(f) = op.request {
            operation["requestBody"] = json!({"required": true,
                "content": {"application/json": {"schema": f(&mut generator)}}});
        }
        let item = paths
            .entry(op.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        item[op.method] = operation;
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "FPaaS API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Firehose Processor-as-a-Service: tenants, subscriptions (filter, transform, batching, signed webhooks, topics, state), stats, usage, dead letters, topics and state buckets. See docs/api.md."
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                    "description": "A tenant's API key (`fpk_…`), or the admin token for /v1/tenants."}
            },
            "schemas": schemas
        }
    })
}

/// `GET /openapi.json` (built once).
pub async fn handler() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}
