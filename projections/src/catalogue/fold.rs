//! Folding catalogue events into rows, in memory.

use super::*;

fn apply_category(rows: &mut Rows, c: Located<CategoryEvent>) {
    match c.event {
        CategoryEvent::CategoryCreated { name } => {
            rows.categories.entry(c.id).or_insert_with(|| {
                rows.dirty_categories.insert(c.id);
                CategoryState {
                    category_id: c.id,
                    name: name.as_str().to_string(),
                    movie_count: 0,
                    revision: c.position,
                }
            });
        }
        CategoryEvent::CategoryRenamed { name } => {
            let Some(category) = rows.categories.get_mut(&c.id) else { return };
            if category.revision >= c.position {
                return;
            }
            category.name = name.as_str().to_string();
            category.revision = c.position;
            rows.dirty_categories.insert(c.id);
            // Movies carry their category names for fast listing: they change with the name.
            for movie in rows.movies.values_mut() {
                if movie.category_ids.contains(&c.id) && movie.revision < c.position {
                    movie.revision = c.position;
                    rows.dirty_movies.insert(movie.movie_id);
                }
            }
        }
    }
}

fn apply_movie(rows: &mut Rows, m: Located<MovieEvent>) -> Result<(), ProjectionError> {
    // Per-stream version guard: an event this row already reflects changes nothing.
    if rows.movies.get(&m.id).is_some_and(|movie| movie.version >= m.sequence) {
        return Ok(());
    }
    if let MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids } = m.event
    {
        rows.count(category_ids.ids(), 1);
        let movie = MovieState {
            movie_id: m.id,
            title: title.as_str().to_string(),
            storyline: storyline.as_str().to_string(),
            director: director.map(|d| d.as_str().to_string()),
            release_date,
            rating_tenths: i16::from(rating.tenths()),
            category_ids: category_ids.ids().to_vec(),
            available: true,
            retired: false,
            times_rented: 0,
            version: m.sequence,
            revision: m.position,
            added_at: m.at,
            updated_at: m.at,
        };
        rows.movies.insert(m.id, movie);
        rows.dirty_movies.insert(m.id);
        return Ok(());
    }
    let Some(movie) = rows.movies.get_mut(&m.id) else {
        return Err(ProjectionError::Decode(format!("movie {} changed before it was added", m.id)));
    };
    let mut recount = None;
    match m.event {
        MovieEvent::MovieAdded { .. } => unreachable!("handled above"),
        MovieEvent::MovieUpdated { title, storyline, release_date, rating, director, category_ids } => {
            if let Some(title) = title {
                movie.title = title.as_str().to_string();
            }
            if let Some(storyline) = storyline {
                movie.storyline = storyline.as_str().to_string();
            }
            if let Some(release_date) = release_date {
                movie.release_date = release_date;
            }
            if let Some(rating) = rating {
                movie.rating_tenths = i16::from(rating.tenths());
            }
            if let Some(director) = director {
                movie.director = director.map(|d| d.as_str().to_string());
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
    movie.revision = m.position;
    movie.updated_at = m.at;
    rows.dirty_movies.insert(m.id);
    if let Some((old, new)) = recount {
        rows.count(&old, -1);
        rows.count(&new, 1);
    }
    Ok(())
}

pub(super) fn fold(rows: &mut Rows, changes: Vec<Change>) -> Result<(), ProjectionError> {
    for change in changes {
        match change {
            Change::Category(c) => apply_category(rows, c),
            Change::Movie(m) => apply_movie(rows, m)?,
        }
    }
    Ok(())
}
