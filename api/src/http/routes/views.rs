//! The contract's shapes, built from read-model rows.

use chrono::{DateTime, Utc};
use domain::loan::LoanPolicy;
use projections::catalogue::{CategoryRow, MovieRow};
use projections::rentals::RentalRow;

use super::schemas::{Category, Charge, Movie, MovieSummary, Rental};

/// `MovieSummary`.
pub fn movie_summary(row: &MovieRow) -> MovieSummary {
    MovieSummary {
        id: row.movie_id,
        title: row.title.clone(),
        release_date: row.release_date,
        rating: f64::from(row.rating_tenths) / 10.0,
        categories: row.category_names.clone(),
        available: row.available,
    }
}

/// `Movie`: the summary plus storyline, director, retired, times rented and stream version.
pub fn movie(row: &MovieRow) -> Movie {
    Movie {
        summary: movie_summary(row),
        storyline: row.storyline.clone(),
        director: row.director.clone(),
        retired: row.retired,
        times_rented: row.times_rented,
        version: row.version,
    }
}

/// A category of the listing.
pub fn category(row: &CategoryRow) -> Category {
    Category { id: row.id, name: row.name.clone(), movie_count: i64::from(row.movie_count) }
}

/// A movie's title as its stream's state has it (`None` before it was added).
pub fn title(movie: &domain::movie::Movie) -> Option<String> {
    movie.details.as_ref().map(|d| d.title.as_str().to_string())
}

/// The due time of a rental: the one its stream recorded or, in the moment before the payments
/// process manager has opened the rental's stream (right after the rent), the one the loan policy
/// gives, which is what `OpenRental` will record under the same setting.
pub fn due_at(recorded: Option<DateTime<Utc>>, rented_at: DateTime<Utc>, loan: LoanPolicy) -> DateTime<Utc> {
    recorded.unwrap_or_else(|| loan.due_at(rented_at))
}

/// `Rental`, from its read-model row.
pub fn rental(row: &RentalRow, loan: LoanPolicy) -> Rental {
    let charge = match (row.charge_days, row.charge_cents, &row.currency) {
        (Some(days), Some(amount_cents), Some(currency)) => {
            Some(Charge { days: i64::from(days), amount_cents, currency: currency.clone() })
        }
        _ => None,
    };
    Rental {
        id: row.rental_id,
        movie_id: row.movie_id,
        movie_title: row.movie_title.clone(),
        customer_id: row.customer_id,
        rented_at: row.rented_at,
        due_at: due_at(row.due_at, row.rented_at, loan),
        overdue_at: row.overdue_at,
        returned_at: row.returned_at,
        status: row.status.clone(),
        charge,
        paid_at: row.paid_at,
    }
}

/// `Movie` as the JSON text the cache keeps.
pub fn movie_json(row: &MovieRow) -> String {
    serde_json::to_string(&movie(row)).expect("a movie serializes")
}
