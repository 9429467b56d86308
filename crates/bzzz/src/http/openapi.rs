//! The OpenAPI 3.1 document, built from the route table: every API route
//! is in it with its method, and its permission as a security requirement.

use serde_json::{Map, Value, json};

use super::{Kind, Permission};

/// The OpenAPI 3.1 document of this node's API.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in super::routes() {
        let (Kind::Api, Some(mut op)) = (r.kind, r.openapi) else {
            continue;
        };
        if matches!(r.permission, Permission::Need(..) | Permission::Principal) {
            op["security"] = json!([{"apiKey": []}, {"basic": []}]);
            if let Some(resp) = op["responses"].as_object_mut() {
                resp.entry("401").or_insert(
                    json!({"description": "No credential, or a wrong, revoked or expired one"}),
                );
                resp.entry("403").or_insert(
                    json!({"description": "The caller's roles lack the permission: {error, action, resource, rule}"}),
                );
            }
        }
        op["x-bzzz-permission"] = json!(r.permission.describe());
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method.as_str().to_lowercase()] = op;
    }
    let caps = json!({
        "type": "object",
        "required": ["cpu", "memory_total_bytes", "memory_free_bytes", "disk_total_bytes", "disk_free_bytes", "gpus", "ollama", "labels", "version"],
        "properties": {
            "cpu": {"type": "object", "properties": {
                "model": {"type": "string"}, "cores": {"type": "integer"},
                "load_1m": {"type": "number"}, "load_5m": {"type": "number"}, "load_15m": {"type": "number"}}},
            "memory_total_bytes": {"type": "integer"},
            "memory_free_bytes": {"type": "integer"},
            "disk_total_bytes": {"type": "integer"},
            "disk_free_bytes": {"type": "integer"},
            "gpus": {"type": "array", "items": {"type": "object", "properties": {
                "vendor": {"type": "string"}, "model": {"type": "string"},
                "vram_total_bytes": {"type": "integer"}, "vram_free_bytes": {"type": ["integer", "null"]},
                "index": {"type": ["integer", "null"]}, "uuid": {"type": ["string", "null"]},
                "declared": {"type": "boolean"}}}},
            "ollama": {"type": "object", "properties": {
                "present": {"type": "boolean"}, "api_reachable": {"type": "boolean"},
                "endpoint": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
                "models": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "size_bytes": {"type": "integer"},
                    "digest": {"type": ["string", "null"]}}}}}},
            "labels": {"type": "object", "properties": {
                "zone": {"type": "string"}, "rack": {"type": "string"},
                "extra": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "version": {"type": "string"},
            "declared_fields": {"type": "array", "items": {"type": "string"}}
        }
    });
    json!({
        "openapi": "3.1.0",
        "info": {"title": "BZZZ node API", "version": bzzz_proto::VERSION,
                 "description": "Fields may be added in later versions, never renamed or removed. Routes marked `operator` take HTTP Basic (any user name, the operator password) or the web session cookie."},
        "paths": paths,
        "components": {"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "an API key, bzzz_…"}, "basic": {"type": "http", "scheme": "basic", "description": "a user name and password (any name that is no user: the operator, admin)"}}, "schemas": {
            "Capabilities": caps,
            "Status": {"type": "object",
                "required": ["node_id", "version", "uptime_secs", "listen_addrs", "api_addr", "peer_count", "connected_peers", "mdns", "capabilities"],
                "properties": {
                    "node_id": {"type": "string"}, "version": {"type": "string"},
                    "uptime_secs": {"type": "integer"},
                    "listen_addrs": {"type": "array", "items": {"type": "string"}},
                    "api_addr": {"type": "string"}, "peer_count": {"type": "integer"},
                    "connected_peers": {"type": "integer"}, "mdns": {"type": "boolean"},
                    "capabilities": {"$ref": "#/components/schemas/Capabilities"}}},
            "Peer": {"type": "object",
                "required": ["node_id", "addrs", "connected", "last_seen_ms_ago", "uptime_secs", "capabilities"],
                "properties": {
                    "node_id": {"type": "string"},
                    "addrs": {"type": "array", "items": {"type": "string"}},
                    "api_addr": {"type": ["string", "null"]},
                    "connected": {"type": "boolean"}, "last_seen_ms_ago": {"type": "integer"},
                    "uptime_secs": {"type": "integer"},
                    "capabilities": {"$ref": "#/components/schemas/Capabilities"}}},
            "Leader": {"type": "object",
                "required": ["leader", "term", "voters", "scores"],
                "properties": {
                    "leader": {"type": ["string", "null"]}, "term": {"type": "integer"},
                    "voters": {"type": "array", "items": {"type": "string"}},
                    "learners": {"type": "array", "items": {"type": "string"}},
                    "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                    "state": {"type": "string"}, "last_applied": {"type": ["integer", "null"]},
                    "node_id": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }}
    })
}
