/// Why a category command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CategoryError {
    /// A category with this id exists already.
    #[error("the category exists already")]
    AlreadyExists,
    /// There is no category with this id.
    #[error("category not found")]
    NotFound,
}
