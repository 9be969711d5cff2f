//! The Redis cache of movie details (being written).
