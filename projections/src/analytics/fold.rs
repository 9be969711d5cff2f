//! Folding analytics events into rows, in memory.

use super::*;

pub(super) fn utc_day(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

pub(super) fn apply_category(rows: &mut Rows, e: &LogEvent, event: &CategoryEvent) {
    let (id, position, at) = (e.stream, e.position, e.recorded_at);
    match event {
        CategoryEvent::CategoryCreated { name } => {
            rows.categories.entry(id).or_insert_with(|| {
                rows.dirty_categories.insert(id);
                CategoryState {
                    category_id: id,
                    name: name.as_str().to_string(),
                    created_at: at,
                    revision: position,
                }
            });
        }
        CategoryEvent::CategoryRenamed { name } => {
            if let Some(category) = rows.categories.get_mut(&id).filter(|c| c.revision < position) {
                category.name = name.as_str().to_string();
                category.revision = position;
                rows.dirty_categories.insert(id);
            }
        }
    }
}

pub(super) fn apply_movie(rows: &mut Rows, e: &LogEvent, event: &MovieEvent) {
    let (id, sequence, at, position) = (e.stream, e.sequence, e.recorded_at, e.position);
    match event {
        MovieEvent::MovieAdded { title, category_ids, .. } => {
            rows.movies.entry(id).or_insert_with(|| {
                rows.dirty_movies.insert(id);
                MovieState {
                    movie_id: id,
                    title: title.as_str().to_string(),
                    category_ids: category_ids.ids().to_vec(),
                    added_at: at,
                    retired_at: None,
                    version: sequence,
                }
            });
        }
        MovieEvent::MovieUpdated { title, category_ids, .. } => {
            if title.is_none() && category_ids.is_none() {
                return;
            }
            // Per-stream version guard: an event this row already reflects changes nothing.
            let Some(movie) = rows.movies.get_mut(&id).filter(|m| m.version < sequence) else { return };
            if let Some(title) = title {
                movie.title = title.as_str().to_string();
            }
            if let Some(ids) = category_ids {
                movie.category_ids = ids.ids().to_vec();
            }
            movie.version = sequence;
            rows.dirty_movies.insert(id);
        }
        MovieEvent::MovieRetired {} => {
            let Some(movie) = rows.movies.get_mut(&id).filter(|m| m.version < sequence) else { return };
            movie.retired_at = Some(at);
            movie.version = sequence;
            rows.dirty_movies.insert(id);
        }
        MovieEvent::MovieRented { rental_id, rented_at, .. } => {
            let (rental_id, rented_at) = (*rental_id, *rented_at);
            if rows.rentals.contains_key(&rental_id) {
                return;
            }
            rows.rentals.insert(
                rental_id,
                RentalState {
                    rental_id,
                    movie_id: id,
                    rented_at,
                    returned_at: None,
                    overdue_at: None,
                    charge_cents: None,
                    paid_cents: None,
                    revision: position,
                },
            );
            rows.dirty_rentals.insert(rental_id);
            rows.days.entry((utc_day(rented_at), id)).or_default().rentals_started += 1;
        }
        // A rental comes back once: guarded by the row's state, not by the revision, which follows
        // the rental's own stream (in the feed, the return can follow an event of that stream with
        // a higher position: positions need not grow with the order of the transactions).
        MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
            if let Some(rental) = rows.rentals.get_mut(rental_id).filter(|r| r.returned_at.is_none()) {
                rental.returned_at = Some(*returned_at);
                rows.dirty_rentals.insert(*rental_id);
            }
        }
    }
}

pub(super) fn apply_rental(
    rows: &mut Rows,
    e: &LogEvent,
    event: &RentalEvent,
) -> Result<(), ProjectionError> {
    let (id, position) = (e.stream, e.position);
    // The row was made from `MovieRented`, which comes first in the log.
    let Some(rental) = rows.rentals.get_mut(&id).filter(|r| r.revision < position) else { return Ok(()) };
    let returned_day = |rental: &RentalState| {
        rental.returned_at.map(utc_day).ok_or_else(|| {
            ProjectionError::Decode(format!("rental {id} was charged or paid before it was returned"))
        })
    };
    match event {
        RentalEvent::RentalOpened { .. } => return Ok(()),
        RentalEvent::RentalOverdue { due_at } => {
            // Counted on the UTC day of the due time it passed.
            if rental.overdue_at.replace(*due_at).is_none() {
                rows.days.entry((utc_day(*due_at), rental.movie_id)).or_default().overdues += 1;
            }
        }
        RentalEvent::RentalClosed { returned_at } => {
            rental.returned_at.get_or_insert(*returned_at);
        }
        RentalEvent::ChargeAssessed { amount_cents, .. } => {
            let day = returned_day(rental)?;
            let facts = rows.days.entry((day, rental.movie_id)).or_default();
            match rental.charge_cents.replace(*amount_cents) {
                None => {
                    facts.charges += 1;
                    facts.revenue_cents += amount_cents;
                }
                Some(earlier) => facts.revenue_cents += amount_cents - earlier,
            }
        }
        RentalEvent::RentalPaid { amount_cents, .. } => {
            let day = returned_day(rental)?;
            let earlier = rental.paid_cents.replace(*amount_cents).unwrap_or(0);
            rows.days.entry((day, rental.movie_id)).or_default().paid_cents += amount_cents - earlier;
        }
    }
    rental.revision = position;
    rows.dirty_rentals.insert(id);
    Ok(())
}
