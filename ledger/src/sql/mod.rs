//! The SQL backends (sqlx): what they share in [`common`], one module per database.

pub(crate) mod common;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
pub(crate) mod workflows;
