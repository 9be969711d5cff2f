//! The limit for cached reads: a bare axum server whose one route reads one Redis key and
//! answers its value as JSON, with nothing else on the path (no auth, no middleware, no database).
//!
//! `bare --addr 127.0.0.1:0 --redis redis://127.0.0.1:6379 [--key K]` stores a movie-sized JSON
//! body under the key, prints `listening on http://ADDR` and serves `GET /` until stopped.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

#[derive(Parser)]
#[command(name = "bare", about = "A bare axum server doing one Redis GET per request")]
struct Args {
    /// Listen address; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
    /// The Redis server.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The key read on every request (written with a movie-sized body at start).
    #[arg(long, default_value = "moviestore-bench:bare")]
    key: String,
}

#[derive(Clone)]
struct AppState {
    redis: ConnectionManager,
    key: String,
}

async fn read_key(State(state): State<AppState>) -> Response {
    let mut redis = state.redis.clone();
    match redis.get::<_, Option<Vec<u8>>>(&state.key).await {
        Ok(Some(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// About the size and shape of a movie's details as the API caches them.
fn movie_body() -> String {
    serde_json::json!({
        "id": uuid::Uuid::now_v7(),
        "title": "Silent Harbor 4711",
        "release_date": "1987-05-14",
        "rating": 7.3,
        "categories": ["Drama", "Thriller"],
        "available": true,
        "storyline": "Generated movie 4711: a quiet story of a mirror and a lighthouse in Lisbon.",
        "director": "Greta Hartmann",
        "retired": false,
        "times_rented": 12,
        "version": 25
    })
    .to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis.as_str())?;
    let mut redis = ConnectionManager::new(client).await?;
    let () = redis.set(&args.key, movie_body()).await?;
    let app = Router::new().route("/", get(read_key)).with_state(AppState { redis, key: args.key });
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
