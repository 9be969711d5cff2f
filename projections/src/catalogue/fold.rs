//! Folding catalogue events into rows, in memory.

use super::*;

/// A movie row's revision after a change by the event at `position`: it grows with every change
/// (the details cache keeps the newest revision it has seen), even when the event's position is
/// below the revision. The feed's order is the order of the appending transactions, and positions
/// need not grow with it across streams: a category renamed while one of its movies was rented
/// can come first in the feed with the higher position.
fn next_revision(revision: i64, position: i64) -> i64 {
    (revision + 1).max(position)
}

fn apply_category(rows: &mut Rows, c: &LogEvent, event: &CategoryEvent) {
    let id = c.stream;
    match event {
        CategoryEvent::CategoryCreated { name } => {
            rows.categories.entry(id).or_insert_with(|| {
                rows.dirty_categories.insert(id);
                CategoryState {
                    category_id: id,
                    name: name.as_str().to_string(),
                    movie_count: 0,
                    revision: c.position,
                }
            });
        }
        CategoryEvent::CategoryRenamed { name } => {
            let Some(category) = rows.categories.get_mut(&id) else { return };
            if category.revision >= c.position {
                return;
            }
            category.name = name.as_str().to_string();
            category.revision = c.position;
            rows.dirty_categories.insert(id);
            // Movies carry their category names for fast listing: they change with the name.
            for movie in rows.movies.values_mut() {
                if movie.category_ids.contains(&id) {
                    movie.revision = next_revision(movie.revision, c.position);
                    rows.dirty_movies.insert(movie.movie_id);
                }
            }
        }
    }
}

fn apply_movie(rows: &mut Rows, m: &LogEvent, event: &MovieEvent) -> Result<(), ProjectionError> {
    let (id, at) = (m.stream, m.recorded_at);
    // Per-stream version guard: an event this row already reflects changes nothing.
    if rows.movies.get(&id).is_some_and(|movie| movie.version >= m.sequence) {
        return Ok(());
    }
    if let MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids } = event {
        rows.count(category_ids.ids(), 1);
        let movie = MovieState {
            movie_id: id,
            title: title.as_str().to_string(),
            storyline: storyline.as_str().to_string(),
            director: director.as_ref().map(|d| d.as_str().to_string()),
            release_date: *release_date,
            rating_tenths: i16::from(rating.tenths()),
            category_ids: category_ids.ids().to_vec(),
            available: true,
            retired: false,
            times_rented: 0,
            version: m.sequence,
            revision: m.position,
            added_at: at,
            updated_at: at,
        };
        rows.movies.insert(id, movie);
        rows.dirty_movies.insert(id);
        return Ok(());
    }
    let Some(movie) = rows.movies.get_mut(&id) else {
        return Err(ProjectionError::Decode(format!("movie {id} changed before it was added")));
    };
    let mut recount = None;
    match event {
        MovieEvent::MovieAdded { .. } => unreachable!("handled above"),
        MovieEvent::MovieUpdated { title, storyline, release_date, rating, director, category_ids } => {
            if let Some(title) = title {
                movie.title = title.as_str().to_string();
            }
            if let Some(storyline) = storyline {
                movie.storyline = storyline.as_str().to_string();
            }
            if let Some(release_date) = release_date {
                movie.release_date = *release_date;
            }
            if let Some(rating) = rating {
                movie.rating_tenths = i16::from(rating.tenths());
            }
            if let Some(director) = director {
                movie.director = director.as_ref().map(|d| d.as_str().to_string());
            }
            if let Some(ids) = category_ids {
                let old = std::mem::replace(&mut movie.category_ids, ids.ids().to_vec());
                if !movie.retired {
                    recount = Some((old, movie.category_ids.clone()));
                }
            }
        }
        MovieEvent::MovieRetired {} => {
            if !movie.retired {
                recount = Some((movie.category_ids.clone(), vec![]));
            }
            movie.retired = true;
            movie.available = false;
        }
        MovieEvent::MovieRented { .. } => {
            movie.available = false;
            movie.times_rented += 1;
        }
        MovieEvent::MovieReturned { .. } => movie.available = !movie.retired,
    }
    movie.version = m.sequence;
    movie.revision = next_revision(movie.revision, m.position);
    movie.updated_at = at;
    rows.dirty_movies.insert(id);
    if let Some((old, new)) = recount {
        rows.count(&old, -1);
        rows.count(&new, 1);
    }
    Ok(())
}

pub(super) fn fold(rows: &mut Rows, events: &[LogEvent]) -> Result<(), ProjectionError> {
    for e in events {
        match &e.event {
            Event::Category(event) => apply_category(rows, e, event),
            Event::Movie(event) => apply_movie(rows, e, event)?,
            Event::Rental(_) => {}
        }
    }
    Ok(())
}
