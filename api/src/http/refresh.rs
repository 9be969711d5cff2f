//! Keeps the movie-details cache from serving what the catalogue projection replaces.
//!
//! Before a batch commits, every movie it changed is lowered in Redis to a body-less *floor* at
//! the row's new revision: from then on reads miss, and no reader can store a revision older than
//! the floor. So once the checkpoint has passed a command, no plain read shows the state before it.
//! After the commit, movies that were cached are refreshed with their new body (a compare-and-set
//! on the revision), so popular entries stay warm. Deleting instead would let a reader that read
//! the old row put it back.

use futures_util::future::join_all;
use projections::catalogue::{self, CatalogueReader};
use projections::engine::{BoxFuture, Listener, Touched};

use crate::cache::Cache;
use crate::http::routes::views;

/// The projection listener that refreshes the cache.
pub struct CacheRefresher {
    /// The cache.
    pub cache: Cache,
    /// Where the fresh rows come from.
    pub catalogue: CatalogueReader,
}

impl Listener for CacheRefresher {
    fn committing<'a>(&'a self, projection: &'a str, touched: &'a Touched) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if projection != catalogue::NAME {
                return;
            }
            // All at once: the connection is multiplexed, so the calls share one pipeline and the
            // batch's transaction waits about one Redis round trip, not one per movie.
            join_all(
                touched
                    .of(catalogue::MOVIE_TABLE)
                    .iter()
                    .map(|(movie, revision)| self.cache.floor_movie(*movie, *revision)),
            )
            .await;
        })
    }

    fn committed<'a>(&'a self, projection: &'a str, touched: &'a Touched) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let movies = touched.of(catalogue::MOVIE_TABLE);
            if projection != catalogue::NAME || movies.is_empty() {
                return;
            }
            let ids: Vec<_> = movies.iter().map(|(id, _)| *id).collect();
            match self.catalogue.movies_by_id(&ids).await {
                Ok(rows) => {
                    let bodies: Vec<_> = rows.iter().map(|row| (row, views::movie_json(row))).collect();
                    join_all(
                        bodies
                            .iter()
                            .map(|(row, body)| self.cache.refresh_movie(row.movie_id, row.revision, body)),
                    )
                    .await;
                }
                Err(error) => tracing::warn!(%error, "could not refresh cached movie details; the TTL will"),
            }
        })
    }
}
