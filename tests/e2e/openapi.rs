//! The OpenAPI document and the docs page, from the outside: the spec and the router agree in
//! both directions, the spec says what the contract says, Redocly's recommended lint finds
//! nothing in it, and the page renders offline in a real browser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn spec(app: &TestApp) -> Value {
    let response = app.get("/openapi.json", None).await;
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let spec = expect_status(response, StatusCode::OK).await;
    assert_eq!(content_type.as_deref(), Some("application/json"));
    spec
}

/// Every (method, path) the spec documents.
fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                operations.push((method.clone(), path.clone(), operation.clone()));
            }
        }
    }
    operations
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            let target = spec.pointer(pointer).unwrap_or_else(|| panic!("{reference} resolves"));
            resolve(spec, target)
        }
        None => value,
    }
}

/// The path with every parameter filled: its example when the spec gives one, else a UUID no
/// resource has.
fn concrete(path: &str, operation: &Value, spec: &Value) -> String {
    let mut concrete = path.to_string();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        let parameter = resolve(spec, parameter);
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().expect("parameter name");
        let value =
            parameter["example"].as_str().map(str::to_string).unwrap_or_else(|| Uuid::now_v7().to_string());
        concrete = concrete.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!concrete.contains('{'), "every path parameter of {path} is declared: {concrete}");
    concrete
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_spec_is_openapi_3_1_and_describes_every_endpoint_of_the_contract(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;

    // Act
    let spec = spec(&app).await;

    // Assert
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "version: {}", spec["openapi"]);
    assert_eq!(spec["info"]["title"], "moviestore");
    let documented: BTreeSet<(String, String)> =
        operations(&spec).into_iter().map(|(method, path, _)| (method, path)).collect();
    let contract = [
        ("post", "/api/v1/auth/register"),
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/logout"),
        ("get", "/api/v1/me"),
        ("post", "/api/v1/me/password"),
        ("patch", "/api/v1/admin/users/{id}"),
        ("get", "/api/v1/categories"),
        ("post", "/api/v1/categories"),
        ("patch", "/api/v1/categories/{id}"),
        ("get", "/api/v1/movies"),
        ("get", "/api/v1/movies/{id}"),
        ("post", "/api/v1/movies"),
        ("patch", "/api/v1/movies/{id}"),
        ("delete", "/api/v1/movies/{id}"),
        ("post", "/api/v1/movies/{id}/rent"),
        ("post", "/api/v1/rentals/{id}/return"),
        ("post", "/api/v1/rentals/{id}/pay"),
        ("get", "/api/v1/rentals/{id}"),
        ("get", "/api/v1/rentals"),
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
        ("get", "/api/v1/admin/projections"),
        ("post", "/api/v1/admin/projections/{name}/rebuild"),
        ("get", "/api/v1/admin/jobs"),
        ("post", "/api/v1/auth/password-reset"),
        ("post", "/api/v1/auth/password-reset/confirm"),
        ("get", "/api/v1/me/notifications"),
        ("patch", "/api/v1/me/notifications"),
        ("get", "/api/v1/admin/notifications"),
    ];
    for (method, path) in contract {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is in the spec"
        );
    }
    let bearer = &spec["components"]["securitySchemes"]["bearer"];
    assert_eq!((bearer["type"].as_str(), bearer["scheme"].as_str()), (Some("http"), Some("bearer")));
    let problem = &spec["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem["required"].as_array().unwrap().contains(&Value::from(field)),
            "Problem requires {field}"
        );
    }
    for field in ["errors", "request_id"] {
        assert!(problem["properties"].get(field).is_some(), "Problem has {field}");
    }
    assert!(spec.pointer("/components/headers/x-request-id/schema").is_some());
    assert!(spec.pointer("/components/parameters/IdempotencyKey/schema").is_some());
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_operation_answers_its_errors_as_problems_and_names_its_parameters(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let spec = spec(&app).await;
    let public = [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/password-reset",
        "/api/v1/auth/password-reset/confirm",
    ];

    // Act
    let operations = operations(&spec);

    // Assert
    assert!(operations.len() >= 25, "{} operations", operations.len());
    for (method, path, operation) in &operations {
        let context = format!("{method} {path}");
        let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{context}: responses"));
        assert!(responses.keys().any(|s| s.starts_with('2') || s.starts_with('3')), "{context}: a success");
        assert!(responses.contains_key("503"), "{context}: 503");
        for (status, response) in responses {
            let response = resolve(&spec, response);
            assert!(response["description"].is_string(), "{context} {status}: description");
            assert!(response.pointer("/headers/x-request-id").is_some(), "{context} {status}: x-request-id");
            // `/ready` answers its 503 with the readiness report.
            if status.starts_with('4') || (status == "503" && path != "/ready") {
                let schema = response.pointer("/content/application~1problem+json/schema/$ref");
                assert_eq!(
                    schema.and_then(Value::as_str),
                    Some("#/components/schemas/Problem"),
                    "{context} {status}: problem+json"
                );
            }
        }
        let parameters: Vec<&Value> =
            operation["parameters"].as_array().into_iter().flatten().map(|p| resolve(&spec, p)).collect();
        let named =
            |place: &str, name: &str| parameters.iter().any(|p| p["in"] == place && p["name"] == name);
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(named("path", name), "{context}: path parameter {name}");
        }
        assert!(named("header", "x-request-id"), "{context}: x-request-id parameter");
        if method != "get" {
            assert!(named("header", "Idempotency-Key"), "{context}: Idempotency-Key");
        }
        if path.starts_with("/api/v1/") {
            let secured =
                operation["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            assert_eq!(secured, !public.contains(&path.as_str()), "{context}: bearer security");
            if secured {
                assert!(responses.contains_key("401"), "{context}: 401");
            }
            if method == "get" && !path.starts_with("/api/v1/admin/") {
                assert!(named("query", "min_position"), "{context}: min_position");
            }
        }
        if operation.get("requestBody").is_some() {
            let body = resolve(&spec, &operation["requestBody"]);
            assert!(body.pointer("/content/application~1json/schema").is_some(), "{context}: body schema");
            for status in ["413", "415", "422"] {
                assert!(responses.contains_key(status), "{context}: {status}");
            }
        }
    }
    for list in ["/api/v1/movies", "/api/v1/rentals"] {
        let parameters = spec["paths"][list]["get"]["parameters"].as_array().unwrap();
        for name in ["limit", "cursor"] {
            assert!(parameters.iter().any(|p| p["name"] == name), "{list}: {name}");
        }
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_operation_in_the_spec_is_routed_and_nothing_else_is(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let spec = spec(&app).await;
    let operations = operations(&spec);

    // Act / Assert: each documented operation reaches a handler (without a token, every
    // authenticated one answers 401, the public ones their own answer), never the fallback.
    for (method, path, operation) in &operations {
        let url = concrete(path, operation, &spec);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app.raw(method.clone(), &url, None, None, Vec::new()).await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {url} ({path}) is routed: {status} {text}"
        );
    }
    // A method the spec does not document on a documented path is not served.
    for (path, item) in spec["paths"].as_object().unwrap() {
        let url = concrete(path, item.as_object().unwrap().values().next().unwrap(), &spec);
        for method in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app.raw(method.clone(), &url, None, None, Vec::new()).await;
            assert_problem_in(response, 405, "method-not-allowed", &format!("{method} {url}")).await;
        }
    }
    // Paths the spec does not document reach the fallback, with or without a token: one segment
    // more than each documented path (unless that is itself documented), and a few others.
    let token = app.admin().await;
    let templates: Vec<&String> = spec["paths"].as_object().unwrap().keys().collect();
    let documented = |url: &str| templates.iter().any(|template| matches_template(template, url));
    let mut unknown: Vec<String> = operations
        .iter()
        .filter(|(_, path, _)| path.starts_with("/api/v1/"))
        .map(|(_, path, operation)| format!("{}/unknown", concrete(path, operation, &spec)))
        .filter(|url| !documented(url))
        .collect();
    assert!(unknown.len() >= 15, "{unknown:?}");
    unknown.extend(["/api/v1", "/api/v2/movies", "/openapi.yaml", "/health/deep"].map(String::from));
    for url in unknown {
        for token in [None, Some(token.as_str())] {
            let response = app.get(&url, token).await;
            assert_problem_in(response, 404, "not-found", &format!("GET {url}")).await;
        }
    }
}

/// Whether a URL path matches a path template of the spec (`{name}` stands for one segment).
fn matches_template(template: &str, url: &str) -> bool {
    let (template, url): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), url.split('/').collect());
    template.len() == url.len()
        && template.iter().zip(&url).all(|(t, u)| t == u || (t.starts_with('{') && !u.is_empty()))
}

/// The Redocly CLI the lint test runs: `redocly` on the `PATH`, at this version (`.ci/run`
/// installs it). Another version may judge by other rules, so it is refused, not used.
const REDOCLY_VERSION: &str = "2.77.0";

fn redocly() -> &'static str {
    let install = format!("npm install -g @redocly/cli@{REDOCLY_VERSION} (puts `redocly` on the PATH)");
    let output = Command::new("redocly")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("the lint test needs Redocly CLI ({error}): {install}"));
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "`redocly --version` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(version, REDOCLY_VERSION, "the lint test runs the pinned Redocly CLI: {install}");
    "redocly"
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_spec_passes_redocly_recommended_lint_with_no_error_and_no_warning(pool: PgPool) {
    // Arrange: the served document, in a file, and the repository's lint configuration.
    let redocly = redocly();
    let app = TestApp::spawn(pool).await;
    let served = serde_json::to_string_pretty(&spec(&app).await).expect("the spec serializes");
    let dir = scratch_dir("redocly");
    let file = dir.join("openapi.json");
    std::fs::write(&file, served).expect("write the spec");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("redocly.yaml");

    // Act
    let lint = tokio::process::Command::new(redocly)
        .args(["lint", "--format=json", "--config"])
        .arg(&config)
        .arg(&file)
        // Nothing leaves the machine: no usage report, no check for a newer version.
        .env("REDOCLY_TELEMETRY", "off")
        .env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), lint)
        .await
        .expect("redocly finished in 2 minutes")
        .expect("run redocly");

    // Assert
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("redocly printed a JSON report ({error}):\n{stdout}\n{stderr}"));
    let findings: Vec<String> = report["problems"]
        .as_array()
        .expect("the report lists its problems")
        .iter()
        .map(|problem| {
            let at = problem.pointer("/location/0/pointer").and_then(Value::as_str).unwrap_or("?");
            let field = |name: &str| problem[name].as_str().unwrap_or("?").to_string();
            format!("{} {} at {at}: {}", field("severity"), field("ruleId"), field("message"))
        })
        .collect();
    let totals = &report["totals"];
    assert_eq!(
        (totals["errors"].as_u64(), totals["warnings"].as_u64()),
        (Some(0), Some(0)),
        "redocly's findings on /openapi.json:\n{}",
        findings.join("\n")
    );
    assert!(output.status.success(), "redocly lint failed:\n{stdout}\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    println!("redocly {REDOCLY_VERSION} recommended lint: 0 errors, 0 warnings");
}

/// The Chromium to drive: `CHROMIUM` when set, else `chromium` on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromium")).find(|candidate| candidate.is_file())
}

/// Loads a page in headless Chromium that can resolve no host but 127.0.0.1, lets it run for up
/// to `budget` of virtual time, and returns the DOM it rendered.
fn render(chromium: &PathBuf, url: &str, budget: Duration) -> String {
    let profile = std::env::temp_dir().join(format!("moviestore-chromium-{}", Uuid::now_v7()));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&profile);
            panic!("chromium did not finish rendering {url} in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = reader.join().expect("read chromium's output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium exited with {status}");
    dom
}

/// The (method, path) of every operation block Swagger UI rendered.
fn rendered_operations(dom: &str) -> BTreeSet<(String, String)> {
    let marker = "class=\"opblock-summary-method\">";
    let mut found = BTreeSet::new();
    let mut rest = dom;
    while let Some(start) = rest.find(marker) {
        rest = &rest[start + marker.len()..];
        let method = rest.split('<').next().unwrap_or_default().to_lowercase();
        let path = rest
            .split_once("data-path=\"")
            .and_then(|(_, after)| after.split_once('"'))
            .map(|(path, _)| path.replace("&amp;", "&"))
            .unwrap_or_default();
        found.insert((method, path));
    }
    found
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_docs_page_renders_every_operation_offline_in_headless_chromium(pool: PgPool) {
    let chromium = chromium()
        .expect("the docs page test needs Chromium: apt-get install chromium, or CHROMIUM=/path/to/chromium");
    // Arrange
    let app = TestApp::spawn(pool).await;
    let documented: BTreeSet<(String, String)> =
        operations(&spec(&app).await).into_iter().map(|(method, path, _)| (method, path)).collect();
    let url = app.url("/docs");

    // Act
    let dom = tokio::task::spawn_blocking(move || render(&chromium, &url, Duration::from_secs(20)))
        .await
        .expect("render");

    // Assert
    assert!(dom.contains("<h2 class=\"title\">moviestore"), "the page shows the spec's title");
    let rendered = rendered_operations(&dom);
    assert!(
        rendered.contains(&("post".to_string(), "/api/v1/movies/{id}/rent".to_string())),
        "the rent operation is rendered: {rendered:?}"
    );
    assert_eq!(rendered, documented, "every documented operation is rendered, and only those");
}

/// Checks a JSON value against a schema of the spec as far as the shape goes: objects have every
/// required property and none the schema does not name, arrays' items and nested objects
/// likewise, and JSON types match. Returns what differs.
fn shape_errors(spec: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(spec, schema);
    if schema.get("allOf").is_some() {
        // The parts of a flattened struct together make one object.
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        merge_parts(spec, schema, &mut properties, &mut required);
        let object = serde_json::json!({ "type": "object", "properties": properties, "required": required });
        return shape_errors(spec, &object, value, at);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        let fits = choices.iter().any(|choice| shape_errors(spec, choice, value, at).is_empty());
        return if fits { vec![] } else { vec![format!("{at}: {value} fits none of {choices:?}")] };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits =
        types.is_empty() || types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
    if !fits {
        return vec![format!("{at}: {actual} where the schema says {types:?}")];
    }
    let mut errors = Vec::new();
    match value {
        Value::Object(object) => {
            let properties = schema["properties"].as_object().cloned().unwrap_or_default();
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    errors.push(format!("{at}: missing {name}"));
                }
            }
            for (name, field) in object {
                match properties.get(name) {
                    Some(property) => {
                        errors.extend(shape_errors(spec, property, field, &format!("{at}.{name}")))
                    }
                    None if schema.get("additionalProperties").is_some() => {}
                    None => errors.push(format!("{at}: {name} is not in the schema")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                errors.extend(shape_errors(spec, &schema["items"], item, &format!("{at}[{i}]")));
            }
        }
        _ => {}
    }
    errors
}

/// Collects the properties of an object schema and of every part of its `allOf`, recursively.
fn merge_parts(
    spec: &Value,
    schema: &Value,
    properties: &mut serde_json::Map<String, Value>,
    required: &mut Vec<Value>,
) {
    let schema = resolve(spec, schema);
    properties.extend(schema["properties"].as_object().cloned().unwrap_or_default());
    required.extend(schema["required"].as_array().cloned().unwrap_or_default());
    for part in schema["allOf"].as_array().into_iter().flatten() {
        merge_parts(spec, part, properties, required);
    }
}

/// Asserts the answer has the status and the shape the spec gives that operation's answer.
async fn assert_documented(spec: &Value, method: &str, path: &str, response: reqwest::Response) -> Value {
    let status = response.status().as_u16().to_string();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body: Value = response.json().await.expect("a JSON answer");
    let documented = spec["paths"][path][method]["responses"]
        .get(&status)
        .unwrap_or_else(|| panic!("{method} {path} documents {status}; got {body}"));
    let media = content_type.split(';').next().unwrap_or_default().replace('/', "~1");
    let schema = resolve(spec, documented)
        .pointer(&format!("/content/{media}/schema"))
        .unwrap_or_else(|| panic!("{method} {path} {status} documents {content_type}"));
    let errors = shape_errors(spec, schema, &body, "body");
    assert!(errors.is_empty(), "{method} {path} {status}: {errors:#?}\n{body}");
    body
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn answers_have_exactly_the_shape_the_spec_documents(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let spec = spec(&app).await;
    let admin = app.admin().await;
    let category = app.category("Drama").await;

    // Act / Assert
    let register = app
        .post(
            "/api/v1/auth/register",
            None,
            Some(serde_json::json!({"username": "greg", "email": "greg@example.com", "password": "password-123"})),
        )
        .await;
    let registered = assert_documented(&spec, "post", "/api/v1/auth/register", register).await;
    let token = registered["token"].as_str().unwrap().to_string();
    let login = app
        .post(
            "/api/v1/auth/login",
            None,
            Some(serde_json::json!({"username": "greg", "password": "password-123"})),
        )
        .await;
    assert_documented(&spec, "post", "/api/v1/auth/login", login).await;
    let added = app.post("/api/v1/movies", Some(&admin), Some(movie_body("Heat", &[category]))).await;
    let movie = uuid(&assert_documented(&spec, "post", "/api/v1/movies", added).await["id"]);
    let renamed = app
        .patch(&format!("/api/v1/categories/{category}"), Some(&admin), serde_json::json!({"name": "Crime"}))
        .await;
    assert_documented(&spec, "patch", "/api/v1/categories/{id}", renamed).await;
    let changed = app
        .patch(&format!("/api/v1/movies/{movie}"), Some(&admin), serde_json::json!({"director": null}))
        .await;
    assert_documented(&spec, "patch", "/api/v1/movies/{id}", changed).await;
    let rented = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await;
    let rental =
        uuid(&assert_documented(&spec, "post", "/api/v1/movies/{id}/rent", rented).await["rental_id"]);
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    let position =
        assert_documented(&spec, "post", "/api/v1/rentals/{id}/return", returned).await["position"].clone();
    let fresh = format!("min_position={position}");
    let reads = [
        ("/api/v1/me", format!("/api/v1/me?{fresh}")),
        ("/api/v1/categories", format!("/api/v1/categories?{fresh}")),
        ("/api/v1/movies", format!("/api/v1/movies?available=any&{fresh}")),
        ("/api/v1/movies/{id}", format!("/api/v1/movies/{movie}?{fresh}")),
        ("/api/v1/movies/{id}", format!("/api/v1/movies/{movie}")),
        ("/api/v1/rentals", format!("/api/v1/rentals?{fresh}")),
        ("/api/v1/rentals/{id}", format!("/api/v1/rentals/{rental}?{fresh}")),
    ];
    for (path, url) in reads {
        assert_documented(&spec, "get", path, app.get(&url, Some(&token)).await).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let charged = loop {
        let url = format!("/api/v1/rentals/{rental}");
        let rental = expect_status(app.get(&url, Some(&token)).await, StatusCode::OK).await;
        if rental["status"] == "charged" {
            break rental;
        }
        assert!(Instant::now() < deadline, "the rental is charged in time: {rental}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let amount = serde_json::json!({ "amount_cents": charged["charge"]["amount_cents"] });
    let paid = app.post(&format!("/api/v1/rentals/{rental}/pay"), Some(&token), Some(amount)).await;
    assert_documented(&spec, "post", "/api/v1/rentals/{id}/pay", paid).await;
    let listed = app.get("/api/v1/admin/projections", Some(&admin)).await;
    assert_documented(&spec, "get", "/api/v1/admin/projections", listed).await;
    let rebuilding = app.post("/api/v1/admin/projections/rentals/rebuild", Some(&admin), None).await;
    assert_documented(&spec, "post", "/api/v1/admin/projections/{name}/rebuild", rebuilding).await;
    let jobs = app.get("/api/v1/admin/jobs", Some(&admin)).await;
    assert_documented(&spec, "get", "/api/v1/admin/jobs", jobs).await;
    assert_documented(&spec, "get", "/health", app.get("/health", None).await).await;
    assert_documented(&spec, "get", "/ready", app.get("/ready", None).await).await;
    let unknown = app.get(&format!("/api/v1/movies/{}", Uuid::now_v7()), Some(&token)).await;
    assert_documented(&spec, "get", "/api/v1/movies/{id}", unknown).await;
    let invalid = app.post("/api/v1/movies", Some(&admin), Some(serde_json::json!({"title": ""}))).await;
    assert_documented(&spec, "post", "/api/v1/movies", invalid).await;
}
