//! Store behaviour tests: writer, deduplication, retention, opening checks.
