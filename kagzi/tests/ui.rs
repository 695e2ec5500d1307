//! Compile-time behaviour of `#[workflow]` and `#[step]`: every supported form compiles,
//! and every unsupported one fails with the error text in `ui/fail/*.stderr`.
//!
//! The `.stderr` files hold compiler output, which changes between compiler releases, so the
//! failing cases only run on the compiler they were written with (rustc 1.95 stable);
//! regenerate them with `TRYBUILD=overwrite cargo test -p kagzi --test ui` and review them
//! when moving to a new one.

#[test]
fn every_supported_form_compiles() {
    trybuild::TestCases::new().pass("tests/ui/pass/*.rs");
}

#[rustversion::attr(
    not(stable(1.95)),
    ignore = "the .stderr files were written by rustc 1.95"
)]
#[test]
fn every_unsupported_form_fails_with_a_spanned_error() {
    trybuild::TestCases::new().compile_fail("tests/ui/fail/*.rs");
}
