//! Attribute macros for Kagzi (`#[workflow]`, `#[step]`); filled in by the macro work.
