//! The listing's conditions: live, available, after the cursor, in a category, matching words.

use super::reader::MovieFilter;
use super::*;

/// Escapes `%`, `_` and `\` so a search word matches literally inside `like`.
pub(super) fn like_pattern(word: &str) -> String {
    let mut escaped = String::with_capacity(word.len() + 2);
    escaped.push('%');
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// How many listed rows per wanted row the first strategy of [`CatalogueReader::movies`] looks
/// at: past it, matches are rarer than one in this many, and gathering them all is the cheaper
/// way.
pub(super) const WALK_PER_ROW: i64 = 50;

/// The listing's own conditions: live, availability, after the cursor. `available` is written
/// as a literal so the planner can use the partial index of available movies.
pub(super) fn push_listed(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &MovieFilter) {
    query.push("not retired");
    match filter.available {
        Some(true) => query.push(" and available"),
        Some(false) => query.push(" and not available"),
        None => query,
    };
    if let Some((title, id)) = &filter.after {
        query.push(" and (title, movie_id) > (").push_bind(title.clone()).push(", ").push_bind(*id).push(")");
    }
}

/// The category and the search words.
pub(super) fn push_matching(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &MovieFilter) {
    if let Some(category) = filter.category {
        query.push(" and category_ids @> array[").push_bind(category).push("]::uuid[]");
    }
    for word in &filter.words {
        query.push(" and search like lower(").push_bind(like_pattern(word)).push(")");
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn search_words_match_literally() {
        assert_eq!(like_pattern("lebow"), "%lebow%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
