//! End-to-end tests of the `kagzi` binary: a real server in this process on both stores
//! (a fresh PostgreSQL database or SQLite file per test), a real worker, and the binary
//! run as a subprocess, as a user runs it. They assert what a user sees: the table text,
//! JSON that parses into the protocol's types, and exit codes.
//!
//! Tests of routes the server does not serve yet are `#[ignore]`d with the reason.

mod dev;
mod errors;
mod operators;
mod packaging;
mod repair;
mod runs;
mod schedules;
mod support;
