//! The JSON shapes of the contract, built from read-model rows.

use projections::catalogue::MovieRow;
use projections::rentals::RentalRow;
use serde_json::{json, Value};

/// `MovieSummary`.
pub fn movie_summary(row: &MovieRow) -> Value {
    json!({
        "id": row.movie_id,
        "title": row.title,
        "release_date": row.release_date,
        "rating": f64::from(row.rating_tenths) / 10.0,
        "categories": row.category_names,
        "available": row.available,
    })
}

/// `Movie`: the summary plus storyline, director, retired, times rented and stream version.
pub fn movie(row: &MovieRow) -> Value {
    let mut body = movie_summary(row);
    body["storyline"] = json!(row.storyline);
    body["director"] = json!(row.director);
    body["retired"] = json!(row.retired);
    body["times_rented"] = json!(row.times_rented);
    body["version"] = json!(row.version);
    body
}

/// `Rental`.
pub fn rental(row: &RentalRow) -> Value {
    let charge = match (row.charge_days, row.charge_cents, &row.currency) {
        (Some(days), Some(amount_cents), Some(currency)) => {
            json!({ "days": days, "amount_cents": amount_cents, "currency": currency })
        }
        _ => Value::Null,
    };
    json!({
        "id": row.rental_id,
        "movie_id": row.movie_id,
        "movie_title": row.movie_title,
        "customer_id": row.customer_id,
        "rented_at": row.rented_at,
        "returned_at": row.returned_at,
        "status": row.status,
        "charge": charge,
        "paid_at": row.paid_at,
    })
}
