use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::values::CategoryName;

/// What happened to a category. Names and shapes are part of the audit contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CategoryEvent {
    /// The category was created.
    CategoryCreated {
        /// Its name.
        name: CategoryName,
    },
    /// The category was renamed.
    CategoryRenamed {
        /// Its new name.
        name: CategoryName,
    },
}

impl DomainEvent for CategoryEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CategoryCreated { .. } => "CategoryCreated",
            Self::CategoryRenamed { .. } => "CategoryRenamed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}
