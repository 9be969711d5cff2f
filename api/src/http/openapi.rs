//! The OpenAPI 3.1 description of the API (`GET /openapi.json`) and the page that renders it
//! (`GET /docs`, Swagger UI with its assets embedded in the binary, so it works offline).
//!
//! The spec is built from the same registrations as the router: a route exists only through
//! [`ApiRouter::routes`], which takes `utoipa_axum::routes!(handler)`, so the handler's
//! `#[utoipa::path(...)]` gives both its axum route and its operation, and neither can exist
//! without the other. What every operation shares is added here rather than on each handler:
//! the `x-request-id` request and response header, the `Idempotency-Key` header of every POST,
//! PATCH and DELETE, the 503 that any request can meet (database unavailable, timeout), and
//! `security: []` on the operations that name no scheme (they are public).
//!
//! The served document passes Redocly CLI's `recommended` lint (`redocly.yaml` at the repository
//! root; the e2e suite runs it on `/openapi.json`).

use axum::http::StatusCode;
use axum::Router;
use serde_json::{json, Map, Value};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::http::error::{problem, Problem};
use crate::http::state::AppState;

/// Where the spec is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where the docs page is served.
pub const DOCS_PATH: &str = "/docs";
/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The name of the bearer security scheme, for `security(("bearer" = []))`.
pub const BEARER: &str = "bearer";

/// Routes that are documented by construction: each is added with its operation.
pub struct ApiRouter(OpenApiRouter<AppState>);

impl Default for ApiRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiRouter {
    /// No routes yet.
    pub fn new() -> Self {
        Self(OpenApiRouter::new())
    }

    /// Adds the handlers of one path, e.g. `.routes(routes!(update, retire))`: each handler's
    /// `#[utoipa::path]` names its method and path, which become both its route and its operation.
    ///
    /// # Panics
    /// When the handlers name different paths (`routes!` would serve each of them on all the
    /// paths), so such a mistake stops the server at start instead of serving wrong routes.
    pub fn routes(self, routes: UtoipaMethodRouter<AppState>) -> Self {
        let paths: Vec<&String> = routes.1.paths.keys().collect();
        assert_eq!(paths.len(), 1, "one routes!(...) per path; got {paths:?}");
        Self(self.0.routes(routes))
    }

    /// Adds every route of another router.
    pub fn merge(self, other: ApiRouter) -> Self {
        Self(self.0.merge(other.0))
    }

    /// The axum router: these routes, `/openapi.json` describing them (and itself and the docs)
    /// and `/docs`.
    pub fn into_router(self) -> Router<AppState> {
        let (router, spec) = self.split();
        // No validator badge: it would fetch from the internet, and the page works offline.
        let config = Config::default().validator_url("none").display_request_duration(true);
        let docs: Router<AppState> =
            SwaggerUi::new(DOCS_PATH).external_url_unchecked(SPEC_PATH, spec).config(config).into();
        router.merge(docs.layer(axum::middleware::map_response(missing_file_as_problem)))
    }

    /// The routes and the document that describes them.
    fn split(self) -> (Router<AppState>, Value) {
        let (router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(self.0).split_for_parts();
        (router, finish(spec))
    }
}

/// Swagger UI answers an unknown file with a bare 404; every error of the API is a problem.
async fn missing_file_as_problem(response: axum::response::Response) -> axum::response::Response {
    if response.status() == StatusCode::NOT_FOUND {
        problem(StatusCode::NOT_FOUND, "not-found", "no such file of the documentation page")
    } else {
        response
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "moviestore",
        description = "The backend of an online video club, event-sourced: customers rent a \
            movie (each has one copy), return it and pay; admins keep the catalogue. JSON over \
            HTTP; errors are `application/problem+json` (RFC 9457) whose `type` ends in a stable \
            slug. Every command answers with the global `position` of its last event (body \
            `position`, header `x-position`); any GET given `?min_position=` that position \
            answers only once it reflects the command."
    ),
    // Relative: the paths are on the server that serves this document, wherever it runs.
    servers((url = "/", description = "The server that serves this document.")),
    modifiers(&Security),
    components(
        schemas(Problem),
        responses(
            Unauthorized,
            Forbidden,
            NotFound,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            RateLimited,
            Unavailable
        )
    ),
    tags(
        (name = "accounts", description = "Registering, tokens, the caller's account, roles."),
        (name = "catalogue", description = "Categories and movies: reads for every account, changes for admins."),
        (name = "renting", description = "Renting, returning and paying; one copy per movie."),
        (name = "audit", description = "The event log for auditors: feed, streams, state as of a time, export."),
        (name = "analytics", description = "Business questions over the analytics read models, for analysts."),
        (name = "operations", description = "Health, readiness, metrics, projections, this description.")
    )
)]
struct ApiDoc;

/// The bearer scheme every authenticated operation names.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An opaque token from register or login (`Authorization: Bearer <token>`; \
                 `Authorization: Token <token>` is accepted too). Tokens expire after 30 days; \
                 logout revokes one at once.",
            ))
            .build();
        components.add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// A problem answer: its description, and headers it carries.
fn problem_response(description: &str, headers: &[(&str, &str)]) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    let mut response = ResponseBuilder::new().description(description).content(PROBLEM_JSON, content);
    for (name, header_description) in headers {
        let header = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(*header_description));
        response = response.header(*name, header.build());
    }
    response.build().into()
}

macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident: $description:literal $(, $header:literal = $header_description:literal)*;)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), problem_response($description, &[$(($header, $header_description)),*]))
            }
        }
    )+};
}

problem_responses! {
    /// 401.
    Unauthorized: "`unauthorized`: no token, or one that is unknown, expired or revoked.",
        "WWW-Authenticate" = "`Bearer`";
    /// 403.
    Forbidden: "`forbidden`: the caller's role may not do this, or the resource is another customer's.";
    /// 404.
    NotFound: "`not-found`: no such resource (also a malformed id in the path).";
    /// 413.
    PayloadTooLarge: "`payload-too-large`: the body is over 64 KiB.";
    /// 415.
    UnsupportedMediaType: "`unsupported-media-type`: a body was sent that is not `application/json`.";
    /// 422.
    ValidationFailed: "`validation-failed` (`errors` names every invalid or missing field) or \
        `malformed-body` (the JSON does not parse; `errors.body` says why).";
    /// 429.
    RateLimited: "`rate-limited`: too many attempts; retry after `Retry-After` seconds.",
        "Retry-After" = "Seconds to wait.";
    /// 503.
    Unavailable: "`unavailable` (PostgreSQL cannot be reached, or the request ran out of time) or \
        `not-yet-consistent` (`min_position` not reached within 2 s); retry after `Retry-After`.",
        "Retry-After" = "Seconds to wait.";
}

/// Turns the generated document into the served one: adds the reusable `x-request-id`,
/// `x-position` and `Idempotency-Key` components and what every operation shares, points the
/// `x-position` header that commands declare at its component, and describes `/openapi.json` and
/// `/docs` themselves.
fn finish(spec: utoipa::openapi::OpenApi) -> Value {
    let mut spec = serde_json::to_value(spec).expect("an OpenAPI document serializes");
    let request_id_schema = json!({ "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" });
    let components = spec["components"].as_object_mut().expect("the document has components");
    components.insert(
        "headers".into(),
        json!({
            "x-request-id": {
                "description": "The request's id: the client's `x-request-id` when it is 1..=64 of \
                    `A-Za-z0-9._-`, else a generated one. Recorded with the events the request causes.",
                "schema": request_id_schema,
            },
            "x-position": {
                "description": "The global position of the command's last event.",
                "schema": { "type": "integer", "minimum": 0 },
            },
        }),
    );
    components.insert(
        "parameters".into(),
        json!({
            "RequestId": {
                "name": "x-request-id", "in": "header", "required": false,
                "description": "A request id to use instead of a generated one (1..=64 of `A-Za-z0-9._-`; \
                    anything else is replaced).",
                "schema": request_id_schema,
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "1..=255 visible ASCII characters, scoped to the caller. The same key \
                    with the same method, path and body within 24 h returns the first answer and \
                    changes nothing; with a different method, path or body it is 422; while the \
                    first call runs, a second gets 409 `idempotency-in-progress`.",
                "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$" },
            },
        }),
    );
    add_docs_paths(&mut spec);
    let paths = spec["paths"].as_object_mut().expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        let rate_limited = !crate::http::limits::is_exempt(path);
        for (method, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else { continue };
            // An operation that names no scheme needs no token: say so rather than leave it unsaid.
            operation.entry("security").or_insert_with(|| json!([]));
            let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
            if let Some(parameters) = parameters.as_array_mut() {
                parameters.push(json!({ "$ref": "#/components/parameters/RequestId" }));
                if matches!(method.as_str(), "post" | "patch" | "delete") {
                    parameters.push(json!({ "$ref": "#/components/parameters/IdempotencyKey" }));
                }
            }
            let responses = operation.entry("responses").or_insert_with(|| json!({}));
            let Some(responses) = responses.as_object_mut() else { continue };
            responses.entry("503").or_insert_with(|| json!({ "$ref": "#/components/responses/Unavailable" }));
            if rate_limited {
                responses
                    .entry("429")
                    .or_insert_with(|| json!({ "$ref": "#/components/responses/RateLimited" }));
            }
            if matches!(method.as_str(), "post" | "patch" | "delete") {
                // What an Idempotency-Key can answer on any command.
                responses
                    .entry("422")
                    .or_insert_with(|| json!({ "$ref": "#/components/responses/ValidationFailed" }));
                responses.entry("409").or_insert_with(|| {
                    json!({
                        "description": "`idempotency-in-progress`: a request with this Idempotency-Key is still running; \
                            or `idempotency-answer-lost`: it was carried out (at the position in `x-position`) but \
                            its answer was lost.",
                        "headers": { "x-position": { "$ref": "#/components/headers/x-position" } },
                        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
                    })
                });
            }
            for response in responses.values_mut() {
                if let Some(response) = response.as_object_mut().filter(|r| !r.contains_key("$ref")) {
                    let headers = response.entry("headers").or_insert_with(|| json!({}));
                    if let Some(headers) = headers.as_object_mut() {
                        headers.insert(
                            "x-request-id".into(),
                            json!({ "$ref": "#/components/headers/x-request-id" }),
                        );
                        // Handlers declare it where they send it (`with_position`); one description.
                        if let Some(position) = headers.get_mut(super::routes::POSITION_HEADER) {
                            *position = json!({ "$ref": "#/components/headers/x-position" });
                        }
                    }
                }
            }
        }
    }
    // Shared responses carry the request id too.
    if let Some(responses) = spec["components"]["responses"].as_object_mut() {
        for response in responses.values_mut() {
            let headers = response.as_object_mut().map(|r| r.entry("headers").or_insert_with(|| json!({})));
            if let Some(headers) = headers.and_then(Value::as_object_mut) {
                headers.insert("x-request-id".into(), json!({ "$ref": "#/components/headers/x-request-id" }));
            }
        }
    }
    spec
}

/// `/openapi.json` and `/docs` are served by Swagger UI's router, not by handlers, so their
/// operations are written here, next to where they are routed.
fn add_docs_paths(spec: &mut Value) {
    let get = |operation: Value| json!({ "get": operation });
    let mut docs = Map::new();
    docs.insert(
        SPEC_PATH.into(),
        get(json!({
            "tags": ["operations"],
            "summary": "This OpenAPI 3.1 document",
            "operationId": "openapi",
            "responses": { "200": { "description": "The document.", "content": { "application/json": {} } } },
        })),
    );
    docs.insert(
        DOCS_PATH.into(),
        get(json!({
            "tags": ["operations"],
            "summary": "The documentation page",
            "description": "Redirects to `/docs/`, which renders this document with Swagger UI; \
                its assets are part of the binary, so the page works offline.",
            "operationId": "docs",
            "responses": { "303": {
                "description": "To the page.",
                "headers": { "Location": { "schema": { "type": "string", "const": "/docs/" } } },
            } },
        })),
    );
    docs.insert(
        format!("{DOCS_PATH}/{{file}}"),
        get(json!({
            "tags": ["operations"],
            "summary": "The documentation page and its assets",
            "operationId": "docs_file",
            "parameters": [{
                "name": "file", "in": "path", "required": true,
                "description": "A file of the page (`index.html` or empty for the page itself).",
                "schema": { "type": "string" }, "example": "index.html",
            }],
            "responses": {
                "200": { "description": "The file.", "content": { "text/html": {}, "text/css": {}, "text/javascript": {} } },
                "404": { "$ref": "#/components/responses/NotFound" },
            },
        })),
    );
    if let Some(paths) = spec["paths"].as_object_mut() {
        paths.extend(docs);
    }
}

#[cfg(test)]
mod tests {
    use utoipa_axum::routes;

    use super::*;

    #[utoipa::path(get, path = "/things", responses((status = 200, description = "The things.")))]
    async fn list() {}

    #[utoipa::path(post, path = "/things", responses((status = 201, description = "Made.")))]
    async fn make() {}

    #[utoipa::path(delete, path = "/other", responses((status = 204, description = "Gone.")))]
    async fn other() {}

    #[utoipa::path(delete, path = "/things/{id}", security(("bearer" = [])), responses(
        (status = 204, description = "Gone.", headers(("x-position" = i64, description = "Its position."))),
    ))]
    async fn retire() {}

    #[test]
    #[should_panic(expected = "one routes!(...) per path")]
    fn one_registration_naming_two_paths_is_refused() {
        let _ = ApiRouter::new().routes(routes!(list, other));
    }

    #[test]
    fn every_operation_gets_the_request_id_the_idempotency_key_of_commands_and_the_503() {
        let (_, spec) = ApiRouter::new().routes(routes!(list, make)).split();
        let parameters = |method: &str| -> Vec<String> {
            spec["paths"]["/things"][method]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .map(|p| p["$ref"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(parameters("get"), ["#/components/parameters/RequestId"]);
        assert_eq!(
            parameters("post"),
            ["#/components/parameters/RequestId", "#/components/parameters/IdempotencyKey"]
        );
        for (method, status) in [("get", "200"), ("post", "201")] {
            let responses = &spec["paths"]["/things"][method]["responses"];
            assert_eq!(responses["503"]["$ref"], "#/components/responses/Unavailable", "{method}");
            assert_eq!(
                responses[status]["headers"]["x-request-id"]["$ref"], "#/components/headers/x-request-id",
                "{method}"
            );
        }
        assert!(spec["paths"]["/openapi.json"]["get"].is_object());
        assert!(spec["paths"]["/docs"]["get"].is_object());
    }

    #[test]
    fn an_operation_naming_no_scheme_is_public_and_a_declared_x_position_is_the_shared_header() {
        let (_, spec) = ApiRouter::new().routes(routes!(list)).routes(routes!(retire)).split();
        assert_eq!(spec["paths"]["/things"]["get"]["security"], json!([]));
        assert_eq!(spec["paths"]["/docs"]["get"]["security"], json!([]));
        let retire = &spec["paths"]["/things/{id}"]["delete"];
        assert_eq!(retire["security"], json!([{ "bearer": [] }]));
        assert_eq!(
            retire["responses"]["204"]["headers"]["x-position"]["$ref"],
            "#/components/headers/x-position"
        );
        assert_eq!(
            spec["servers"],
            json!([{ "url": "/", "description": "The server that serves this document." }])
        );
    }
}
