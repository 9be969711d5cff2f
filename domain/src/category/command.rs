use crate::values::CategoryName;

/// What can be asked of a category.
#[derive(Debug, Clone, PartialEq)]
pub enum CategoryCommand {
    /// Create the category with this name.
    CreateCategory {
        /// The name.
        name: CategoryName,
    },
    /// Give the category a new name.
    RenameCategory {
        /// The new name.
        name: CategoryName,
    },
}
