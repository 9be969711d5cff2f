//! Keeps the movie-details cache fresh: after the catalogue projection commits, every movie it
//! changed is refreshed in Redis at its new revision (a compare-and-set): a cached entry gets the
//! new body, an uncached one a floor, so a reader racing with an older row can never put it back.
//! Refreshing rather than deleting is what closes that race.

use projections::catalogue::{self, CatalogueReader};
use projections::engine::{BoxFuture, Listener, Touched};

use crate::cache::Cache;
use crate::routes::views;

/// The projection listener that refreshes the cache.
pub struct CacheRefresher {
    /// The cache.
    pub cache: Cache,
    /// Where the fresh rows come from.
    pub catalogue: CatalogueReader,
}

impl Listener for CacheRefresher {
    fn committed<'a>(&'a self, projection: &'a str, touched: &'a Touched) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if projection != catalogue::NAME || touched.movies.is_empty() {
                return;
            }
            match self.catalogue.movies_by_id(&touched.movies).await {
                Ok(rows) => {
                    for row in rows {
                        self.cache
                            .refresh_movie(row.movie_id, row.revision, &views::movie(&row).to_string())
                            .await;
                    }
                }
                Err(error) => tracing::warn!(%error, "could not refresh cached movie details; the TTL will"),
            }
        })
    }
}
