//! The OpenAPI 3.1 document, generated from the handlers' annotations, served at `/openapi.json`
//! and browsable at `/docs` (Swagger UI, vendored: it renders with no internet).

use actix_web::web;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use utoipa::Modify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::routes::{
    self, admin, deliveries, event_log, event_types, events, ingest, keys, metrics, organization,
    sources, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay",
        description = "Multi-tenant webhook delivery: register webhooks, publish events, read every delivery attempt."
    ),
    paths(
        routes::health::healthz, routes::health::readyz, routes::health::metrics,
        admin::create_organization, admin::list_organizations,
        organization::get_organization, organization::update_organization,
        keys::check, keys::list_scopes, keys::create, keys::list, keys::get, keys::update, keys::revoke,
        event_types::available, event_types::list, event_types::create, event_types::remove,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::remove,
        webhooks::get_secret, webhooks::rotate_secret,
        events::publish, events::publish_batch,
        deliveries::history, deliveries::get_delivery, deliveries::retry, deliveries::recover, deliveries::test,
        sources::create, sources::list, sources::get, sources::update, sources::remove,
        ingest::hubble_push, ingest::signed_push, ingest::verify,
        metrics::webhook_metrics, metrics::packet_metrics,
        event_log::list_events, event_log::get_event, event_log::list_deliveries,
    ),
    components(schemas(crate::problem::Problem, crate::problem::FieldError)),
    modifiers(&SecuritySchemes, &CommonResponses, &ExactSchemas, &Links),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "admin", description = "Organizations, for the operator (HOOKRELAY_ADMIN_TOKEN)"),
        (name = "organization", description = "The caller's organization"),
        (name = "keys", description = "API keys: opaque bearer tokens with scopes"),
        (name = "event-types", description = "An organization's own event types"),
        (name = "webhooks", description = "Endpoints that receive events"),
        (name = "events", description = "Publishing events"),
        (name = "deliveries", description = "Delivery history, attempts and redelivery"),
        (name = "sources", description = "What feeds an organization: Hubble packets (push or pull) and signed inbound webhooks"),
        (name = "metrics", description = "Delivery and packet metrics per hour or day (scope metrics:read)"),
        (name = "ingest", description = "Ingest URLs called by senders, authenticated by the source's token or signature"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Responses every operation can give, added here once instead of on every handler: problem
/// bodies are `application/problem+json`; every authenticated operation may answer 401, 429 (rate
/// limit) and 503 (database unavailable); one with a body also 400, 413 and 415.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // Ingest URLs declare their own responses; only their problem bodies need the type.
            let is_api = path.starts_with("/api/");
            if !is_api && !path.starts_with("/ingest/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                for (_, response) in responses.iter_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response
                        && response
                            .content
                            .get("application/json")
                            .is_some_and(is_problem)
                        && let Some(content) = response.content.shift_remove("application/json")
                    {
                        response
                            .content
                            .insert("application/problem+json".into(), content);
                    }
                }
                if !is_api {
                    continue;
                }
                let mut common = vec![
                    ("401", "Missing, invalid, expired or revoked credentials"),
                    ("429", "Rate limit exceeded; see Retry-After"),
                    (
                        "503",
                        "Database unavailable or the service at capacity; retry after Retry-After",
                    ),
                ];
                if has_body {
                    common.extend([
                        ("400", "Malformed or invalid body"),
                        ("413", "Body larger than HOOKRELAY_MAX_BODY"),
                        ("415", "Body is not application/json"),
                    ]);
                }
                if path.contains('{') {
                    common.push(("404", "No such resource in this organization"));
                }
                if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    common.push(("400", "Invalid query parameters"));
                }
                for (status, description) in common {
                    responses
                        .entry(status.into())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// Schemas no derive can state: the NUL-free `JsonValue` the request schemas refer to, and a
/// source's create body as one shape per `kind` (which fields a kind takes is part of its shape,
/// so a field for the other kind is a 400 the document predicts).
struct ExactSchemas;

impl Modify for ExactSchemas {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use crate::schema;
        use serde_json::json;
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert("JsonValue".into(), schema::json_value_component().into());
        let to_json = |o: utoipa::openapi::schema::Object| {
            serde_json::to_value(o).expect("a schema serializes")
        };
        let pull = json!({"oneOf": [{"$ref": "#/components/schemas/PullIn"}, {"type": "null"}],
            "description": "Pull from Hubble's packets API as well as receiving pushes."});
        let null_only = json!({"type": "null"});
        let hubble = json!({
            "type": "object",
            "title": "Hubble source",
            "additionalProperties": false,
            "required": ["kind", "name"],
            "properties": {
                "kind": {"type": "string", "const": "hubble"},
                "name": to_json(schema::key_name()),
                "ip_allowlist": to_json(schema::allowlist_opt()),
                "token": to_json(schema::credential_opt()),
                "pull": pull,
                "event_type": null_only.clone(),
                "secret": null_only.clone(),
            },
        });
        let signed = json!({
            "type": "object",
            "title": "Signed source",
            "additionalProperties": false,
            "required": ["kind", "name", "event_type"],
            "properties": {
                "kind": {"type": "string", "const": "signed"},
                "name": to_json(schema::key_name()),
                "ip_allowlist": to_json(schema::allowlist_opt()),
                "event_type": to_json(schema::publishable_event()),
                "secret": to_json(schema::credential_opt()),
                "token": null_only.clone(),
                "pull": null_only,
            },
        });
        components.schemas.insert(
            "CreateSource".into(),
            schema::from_json(json!({
                "description": "A Hubble source (`token`: the `HTTP-X-HUBBLE-TOKEN` Hubble sends, \
                    generated when absent; optionally `pull`) or a signed source (`event_type` it \
                    publishes; `secret`: the shared HMAC key, generated when absent).",
                "oneOf": [hubble, signed],
                "discriminator": {"propertyName": "kind"},
            }))
            .into(),
        );
    }
}

/// OpenAPI links from each create to the operations on what it created, so a client (and
/// schemathesis' stateful phase) can follow an id from one answer to the next request.
struct Links;

/// Links to add: (name, target path under /api/v1, target method).
type Targets = &'static [(&'static str, &'static str, &'static str)];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, link::LinkBuilder};
        const V1: &str = "/api/v1";
        const ON_WEBHOOK: Targets = &[
            ("GetWebhook", "/webhooks/{id}", "get"),
            ("UpdateWebhook", "/webhooks/{id}", "patch"),
            ("DeleteWebhook", "/webhooks/{id}", "delete"),
            ("GetWebhookSecret", "/webhooks/{id}/secret", "get"),
            (
                "RotateWebhookSecret",
                "/webhooks/{id}/rotate-secret",
                "post",
            ),
            ("ListWebhookDeliveries", "/webhooks/{id}/deliveries", "get"),
            ("RecoverWebhookDeliveries", "/webhooks/{id}/recover", "post"),
            ("TestWebhook", "/webhooks/{id}/test", "post"),
        ];
        // (POST path, answer's status, parameter, where the answer holds it, targets)
        let plan: [(&str, &str, &str, &str, Targets); 5] = [
            (
                "/keys",
                "201",
                "id",
                "$response.body#/id",
                &[
                    ("GetKey", "/keys/{id}", "get"),
                    ("UpdateKey", "/keys/{id}", "patch"),
                    ("RevokeKey", "/keys/{id}", "delete"),
                ],
            ),
            ("/webhooks", "201", "id", "$response.body#/id", ON_WEBHOOK),
            (
                "/sources",
                "201",
                "id",
                "$response.body#/id",
                &[
                    ("GetSource", "/sources/{id}", "get"),
                    ("UpdateSource", "/sources/{id}", "patch"),
                    ("DeleteSource", "/sources/{id}", "delete"),
                ],
            ),
            (
                "/event-types",
                "201",
                "name",
                "$response.body#/name",
                &[("DeleteEventType", "/event-types/{name}", "delete")],
            ),
            (
                "/webhooks/{id}/test",
                "200",
                "id",
                "$response.body#/delivery_id",
                &[
                    ("GetDelivery", "/deliveries/{id}", "get"),
                    ("RetryDelivery", "/deliveries/{id}/retry", "post"),
                ],
            ),
        ];
        for (path, status, parameter, expression, targets) in plan {
            let Some(item) = openapi.paths.paths.get_mut(&format!("{V1}{path}")) else {
                continue;
            };
            let Some(RefOr::T(response)) = item
                .post
                .as_mut()
                .and_then(|o| o.responses.responses.get_mut(status))
            else {
                continue;
            };
            for (name, target, target_method) in targets {
                // A JSON pointer into the document: `/` in the path escaped as `~1`.
                let pointer = format!("{V1}{target}")
                    .replace('~', "~0")
                    .replace('/', "~1");
                response.links.insert(
                    (*name).to_owned(),
                    LinkBuilder::new()
                        .operation_ref(format!("#/paths/{pointer}/{target_method}"))
                        .parameter(parameter, expression)
                        .build()
                        .into(),
                );
            }
        }
    }
}

fn is_problem(content: &utoipa::openapi::RefOr<utoipa::openapi::Content>) -> bool {
    matches!(content, utoipa::openapi::RefOr::T(c)
        if matches!(&c.schema, Some(utoipa::openapi::RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")))
}

/// The methods the document lists for a concrete request path, if the path is known at all.
pub fn allowed_methods(path: &str) -> Option<Vec<&'static str>> {
    static TEMPLATES: std::sync::OnceLock<Vec<(Vec<String>, Vec<&'static str>)>> =
        std::sync::OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        document()
            .paths
            .paths
            .iter()
            .map(|(template, item)| {
                let segments = template.split('/').map(str::to_owned).collect();
                let mut methods = Vec::new();
                for (present, name) in [
                    (item.get.is_some(), "GET"),
                    (item.post.is_some(), "POST"),
                    (item.patch.is_some(), "PATCH"),
                    (item.put.is_some(), "PUT"),
                    (item.delete.is_some(), "DELETE"),
                ] {
                    if present {
                        methods.push(name);
                    }
                }
                (segments, methods)
            })
            .collect()
    });
    let wanted: Vec<&str> = path.split('/').collect();
    let matching: Vec<&(Vec<String>, Vec<&'static str>)> = templates
        .iter()
        .filter(|(segments, _)| {
            segments.len() == wanted.len()
                && segments
                    .iter()
                    .zip(&wanted)
                    .all(|(t, w)| t.starts_with('{') || t == w)
        })
        .collect();
    // A literal path (`/keys/check`) wins over a template that also matches (`/keys/{id}`).
    let literal: Vec<_> = matching
        .iter()
        .filter(|(segments, _)| !segments.iter().any(|s| s.starts_with('{')))
        .collect();
    let chosen: Vec<_> = if literal.is_empty() {
        matching.iter().collect()
    } else {
        literal
    };
    let mut allowed: Vec<&'static str> = chosen
        .iter()
        .flat_map(|(_, methods)| methods.iter().copied())
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    (!allowed.is_empty()).then_some(allowed)
}

/// The document as committed at `openapi/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON, byte for byte what `openapi/openapi.json` holds. Keys are
/// sorted (through `serde_json::Value`): the schemas written as JSON in [`crate::schema`] keep
/// their keywords in a hash map, whose order changes from run to run.
pub fn json() -> String {
    let value = serde_json::to_value(document()).expect("the OpenAPI document serializes");
    serde_json::to_string_pretty(&value).expect("a JSON value serializes")
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Swagger UI resolves its assets relative to `/docs/`; `/docs` (what people type, and what
    // `make run` prints) is sent there.
    cfg.route(
        "/docs",
        web::get().to(|| async {
            actix_web::HttpResponse::PermanentRedirect()
                .insert_header((actix_web::http::header::LOCATION, "/docs/"))
                .finish()
        }),
    )
    .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document()));
}
