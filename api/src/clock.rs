//! The clock commands are stamped with.

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at the microsecond precision PostgreSQL keeps, so a time stamped into an
/// event reads back the same from every table.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
